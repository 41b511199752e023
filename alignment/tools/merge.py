"""Merge a trained LoRA adapter into its base model and save plain safetensors weights.

The base is found from the run's own `alignment_config.yaml`, so models built from a
config (tiny recipe, benchmarks) merge exactly like Hub checkpoints. A QLoRA adapter
is merged into the base loaded unquantized in `--dtype`: merging into 4-bit weights
would round the update away."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from alignment.config import ModelConfig
from alignment.config.loading import CONFIG_FILENAME
from alignment.models import load_policy, load_tokenizer
from alignment.schema.values import ConfigError, build_section

logger = logging.getLogger(__name__)


def merge_adapter(adapter_dir: str | Path, output_dir: str | Path, dtype: str | None = None) -> Path:
    import peft

    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ConfigError(f"{adapter_dir} holds no LoRA adapter (adapter_config.json); nothing to merge")
    if not (adapter_dir / CONFIG_FILENAME).is_file():
        # A checkpoint-N directory: the run's config sits one level up.
        config_file = adapter_dir.parent / CONFIG_FILENAME
    else:
        config_file = adapter_dir / CONFIG_FILENAME
    if not config_file.is_file():
        raise ConfigError(f"no {CONFIG_FILENAME} in {adapter_dir} or its parent: cannot tell which base model to load")
    resolved = yaml.safe_load(config_file.read_text())
    model_cfg = build_section(ModelConfig, resolved["model"], "model")
    if dtype is not None:
        model_cfg.dtype = dtype
    base = load_policy(model_cfg)  # full precision, no adapters
    model = peft.PeftModel.from_pretrained(base, str(adapter_dir))
    merged = model.merge_and_unload()
    merged.config.use_cache = True
    output_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(output_dir, safe_serialization=True)
    tokenizer = load_tokenizer(model_cfg)
    tokenizer.save_pretrained(output_dir)
    logger.info("merged %s into its base; wrote %s", adapter_dir, output_dir)
    return output_dir


def merge_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="alignment merge", description="Merge a LoRA/QLoRA adapter into its base model (safetensors)."
    )
    parser.add_argument("adapter_dir", help="a run's output directory or one of its checkpoint-N directories")
    parser.add_argument("output_dir", help="where to write the merged model")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        merge_adapter(args.adapter_dir, args.output_dir, args.dtype)
    except ConfigError as err:
        print(f"alignment merge: {err}", file=sys.stderr)
        return 2
    return 0
