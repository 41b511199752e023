"""The checks that need more than the recipe: the loaded policy (its positions) and the
launcher's backend (DeepSpeed ZeRO-3). Run once by `alignment.run` before step 1; every
other check runs when the recipe loads (`alignment.config.loading`)."""

from __future__ import annotations

from typing import Any

from transformers.integrations import is_deepspeed_zero3_enabled

from alignment.config.recipe import Config
from alignment.schema import ConfigError


def check_backend(config: Config) -> None:
    """Combinations that only show once the launcher's backend is known: called as soon as
    the training arguments exist, before anything is loaded."""
    if config.quantization is not None and is_deepspeed_zero3_enabled():
        raise ConfigError(
            "quantization: 4/8-bit weights cannot be sharded by DeepSpeed ZeRO-3; launch QLoRA with "
            "recipes/accelerate_configs/ddp.yaml or zero2.yaml, or remove `quantization:`"
        )


def check_loaded(config: Config, model: Any) -> None:
    """What the loaded policy must allow: the prompt plus the sampled tokens fit its positions."""
    if config.online is None:
        return
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    longest = (config.data.max_prompt_length or 0) + config.online.max_new_tokens
    if limit is not None and config.data.max_prompt_length is not None and longest > limit:
        raise ConfigError(
            f"data.max_prompt_length ({config.data.max_prompt_length}) + online.max_new_tokens "
            f"({config.online.max_new_tokens}) = {longest} exceeds the model's {limit} positions"
        )
