"""The policy's weights as an external generation engine loads them: the transformers
model's full state dict (tied entries included: vLLM's in-place reload counts every
checkpoint tensor of a layer before it processes the layer), with a LoRA adapter merged
into its base and the names of the bare model (TRL's `_move_model_to_vllm` does the same)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import Tensor, nn

from alignment.online.engines.base import REFERENCE_PREFIX
from alignment.schema.values import ConfigError


def _is_peft(model: nn.Module) -> bool:
    return hasattr(model, "merge_adapter") and hasattr(model, "peft_config")


def _bare_name(name: str) -> str | None:
    """A PEFT model's state-dict name as the base model's, or None for the adapter's own."""
    name = name.removeprefix("base_model.model.").replace(".base_layer", "")
    if "lora_" in name or "original_module" in name:
        return None
    return name.replace("modules_to_save.default.", "")


@contextlib.contextmanager
def policy_weights(model: nn.Module) -> Iterator[list[tuple[str, Tensor]]]:
    """(name, tensor) of the policy, valid inside the block (with LoRA the adapter is
    merged in for its duration). `model` is the bare policy, its ZeRO-3 or FSDP shards
    already gathered (the trainer's generation context)."""
    if not _is_peft(model):
        yield list(model.state_dict().items())
        return
    if any(getattr(module, "quant_state", None) is not None for module in model.modules()):
        raise ConfigError("online.engine vllm: a quantized (QLoRA) policy cannot be sent to vLLM yet")
    model.merge_adapter()
    try:
        weights = [(bare, tensor) for name, tensor in model.state_dict().items() if (bare := _bare_name(name))]
        yield weights
    finally:
        model.unmerge_adapter()


def reference_weights(reference: Any, unwrapped_policy: nn.Module) -> list[tuple[str, Tensor]]:
    """The reference's full state dict, its names prefixed `reference.`: a separate
    reference model's (a frozen copy, a soup), or with `reference: adapter` the LoRA
    policy's base (its adapters left out, not merged)."""
    weights = reference.weights()
    if weights is not None:
        items = list(weights.items())
    elif _is_peft(unwrapped_policy):
        items = [(bare, t) for name, t in unwrapped_policy.state_dict().items() if (bare := _bare_name(name))]
    else:
        raise ConfigError(f"online.engine vllm: the {reference.type!r} reference has no weights to send to vLLM")
    return [(REFERENCE_PREFIX + name, tensor) for name, tensor in items]
