"""Generation engines for online training (`online.engine`): `native` (the trainer's own
model) and `vllm` (colocated in the trainer's process, or a server started with
`alignment vllm-serve`). `build_engine` makes the recipe's."""

from __future__ import annotations

from typing import Any

import torch

from alignment.online.engines.base import Completion, GenerationEngine, group_samples, merge_slots, select_rows
from alignment.online.engines.native import NativeEngine
from alignment.schema import OnlineConfig

__all__ = [
    "Completion",
    "GenerationEngine",
    "NativeEngine",
    "build_engine",
    "group_samples",
    "merge_slots",
    "select_rows",
]


def _policy_config(model: torch.nn.Module) -> dict[str, Any]:
    """The bare transformers model's config (a PEFT model's base's)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = inner.config.to_dict()
    if not config.get("architectures"):  # a model built from a config names no class; vLLM needs it
        config["architectures"] = [type(inner).__name__]
    return config


def _dtype_name(model: torch.nn.Module, requested: str) -> str:
    if requested != "auto":
        return requested
    dtype = next(model.parameters()).dtype
    return {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(dtype, "auto")


def build_engine(online: OnlineConfig, model: torch.nn.Module, args: Any, max_model_len: int) -> GenerationEngine:
    """The recipe's engine for this process: native, or vLLM colocated or as a client of
    a server. `max_model_len` is the longest prompt + completion (the recipe's
    `vllm_max_model_len` overrides it)."""
    if online.engine == "native":
        return NativeEngine()
    device = "cuda" if torch.device(args.device).type == "cuda" else "cpu"
    if online.vllm_mode == "server":
        from alignment.online.engines.vllm_server import VLLMServerEngine  # start-up time (vLLM's code)

        return VLLMServerEngine(online.vllm_server_base_url, online.vllm_server_timeout, device)
    from alignment.online.engines.vllm import VLLMColocateEngine, VLLMSettings  # start-up time (vLLM's code)

    settings = VLLMSettings(
        config=_policy_config(model),
        dtype=_dtype_name(model, online.vllm_dtype),
        max_model_len=online.vllm_max_model_len or max_model_len,
        # Each process samples its own prompts, from a stream of its own (TRL seeds by process too).
        seed=int(args.seed) + int(args.process_index),
        gpu_memory_utilization=online.vllm_gpu_memory_utilization,
        cpu_kvcache_space_gib=online.vllm_cpu_kvcache_space_gib,
        enable_sleep_mode=online.vllm_enable_sleep_mode,
    )
    # Nash-MD and IPO-MD sample from the reference too: the model class that holds both.
    return VLLMColocateEngine(settings, device, mixture=online.sampler != "policy")
