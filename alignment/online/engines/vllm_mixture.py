"""The geometric mixture of the policy and the reference, sampled inside vLLM.

Nash-MD and IPO-MD sample from (m = the request's mixture coefficient)

    pi_m(y_t | x, y_<t)  ∝  pi(y_t | ...)^(1 - m) * mu(y_t | ...)^m
    log pi_m = log_softmax((1 - m) * log_softmax(policy_logits) + m * log_softmax(reference_logits))

exactly as the native sampler does (`alignment.online.sampler.mixture_logprobs`).

How it runs in vLLM (V1 model runner, 0.32):

* `AlignmentMixtureForCausalLM` is a vLLM model holding two copies of the real
  architecture (e.g. `LlamaForCausalLM`), `policy` and `reference`. Their attention
  layers are registered under distinct prefixes (`policy.model.layers.0.self_attn.attn`,
  `reference.model.layers.0...`), so each copy has its own KV cache (both indexed by the
  request's one block table). `forward` runs both over the batch's tokens and returns the
  two final hidden states side by side, [T, 2H]; `compute_logits` splits them and
  returns, per row, the normalised log pi_m of that row's request.
* Each request carries its m in `SamplingParams(extra_args={"mixture_coef": m})`.
  `MixtureCoefs`, a V1 custom logits processor, reads it when the request joins the
  persistent batch and follows the batch's adds, removals and moves (`BatchUpdate`), so
  it knows the m of every row. vLLM calls `update_state` in `_update_states`, before the
  forward, and row i of the logits is the request at batch index i (the rows the built-in
  processors such as logit bias index), so `forward` and `compute_logits` read this
  step's m per row from it. Its own `apply` is the identity: the mixing cannot happen in
  a logits processor because vLLM records the raw log-probs before processors run.
* Log-probs: with `logprobs_mode="raw_logprobs"` vLLM's sampler returns
  `log_softmax(compute_logits(...))` gathered at the sampled token, before temperature,
  top-k/top-p and processors. `compute_logits` already returns log pi_m (normalised), so
  that is log pi_m of the token: what the native sampler records. Temperature and the
  filters then act on log pi_m, as `filter_logprobs` does natively.
* Compute: when every request in the step has m = 0 the reference is not run (m = 1: the
  policy is not run). Their KV caches then miss those tokens, so the engine gives such
  requests a prefix-cache salt of their own (`cache_salt`): a mixture request never
  reuses a prefix cached by a one-model batch.
* Weights go through vLLM's `reload_weights` (`collective_rpc`): bare transformers names
  (`model.layers.0...`, `lm_head.weight`) load into the policy, names prefixed
  `reference.` into the reference. Each copy must be sent its full `state_dict()` (tied
  `lm_head.weight` included), or vLLM leaves fused layers (qkv, gate_up) half loaded; a
  copy sent nothing keeps its weights.

The model class is registered with vLLM's `ModelRegistry` in this process, so the engine
must run in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, as `VLLMColocateEngine` does).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from alignment.online.engines.base import REFERENCE_PREFIX, vllm_available

if TYPE_CHECKING:
    from vllm.config import VllmConfig

MIXTURE_ARCHITECTURE = "AlignmentMixtureForCausalLM"
# The config.json key naming the architecture the mixture holds two copies of.
INNER_ARCHITECTURE_KEY = "alignment_mixture_of"
# SamplingParams.extra_args key with the request's m.
COEF_KEY = "mixture_coef"
# Weight names with this prefix go to the reference; the others to the policy.
POLICY_SALT, REFERENCE_SALT = "alignment-mixture-policy-only", "alignment-mixture-reference-only"


@functools.lru_cache(maxsize=1)
def mixture_supported() -> str | None:
    """None when the installed vLLM can sample the mixture in-process, else the reason
    (one line, for the trainer to refuse `engine: vllm` with a mixture sampler at load)."""
    if not vllm_available():
        return "vLLM is not installed"
    try:
        from vllm import ModelRegistry  # noqa: F401
        from vllm.model_executor.model_loader.reload import inplace  # noqa: F401
        from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor  # noqa: F401
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    except ImportError as e:
        return f"this vLLM ({_vllm_version()}) lacks what the mixture engine needs: {e}"
    if not hasattr(GPUModelRunner, "reload_weights"):
        return f"this vLLM ({_vllm_version()}) cannot reload weights in place"
    return None


def _vllm_version() -> str:
    try:
        import vllm

        return str(vllm.__version__)
    except Exception:  # pragma: no cover - only for the message
        return "unknown version"


def register() -> None:
    """Register `AlignmentMixtureForCausalLM` with vLLM's ModelRegistry (this process)."""
    from vllm import ModelRegistry

    if MIXTURE_ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(MIXTURE_ARCHITECTURE, AlignmentMixtureForCausalLM)


def inner_architecture(config: dict[str, Any]) -> str:
    """The causal LM class the policy's config names (or its model type's default)."""
    architectures = config.get("architectures") or []
    if architectures:
        return architectures[0]
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.get("model_type", ""))
    if name is None:
        raise ValueError(f"the policy's config names no architecture (model_type {config.get('model_type')!r})")
    return name


def mixture_config(config: dict[str, Any]) -> dict[str, Any]:
    """The policy's transformers config, naming the mixture as its architecture."""
    inner = inner_architecture(config)
    if inner == MIXTURE_ARCHITECTURE:
        return dict(config)
    return {**config, "architectures": [MIXTURE_ARCHITECTURE], INNER_ARCHITECTURE_KEY: inner}


def request_salt(coef: float) -> str | None:
    """The prefix-cache salt for a request with mixture coefficient `coef`: requests
    that may run one model alone never share cached prefixes with those that need both."""
    if coef == 0.0:
        return POLICY_SALT
    if coef == 1.0:
        return REFERENCE_SALT
    return None


def split_weights(weights: Iterable[tuple[str, Tensor]]) -> tuple[list[tuple[str, Tensor]], list[tuple[str, Tensor]]]:
    """(policy weights, reference weights), the `reference.` prefix stripped."""
    policy, reference = [], []
    for name, tensor in weights:
        if name.startswith(REFERENCE_PREFIX):
            reference.append((name[len(REFERENCE_PREFIX) :], tensor))
        else:
            policy.append((name, tensor))
    return policy, reference


# ----------------------------------------------------------------------------- per-request m

# The live `MixtureCoefs` of each engine, by its model path (a temporary directory, unique
# per engine). The logits processor and the model are built separately by vLLM's worker;
# this is how the model finds the processor built for the same engine.
_COEFS: dict[str, MixtureCoefs] = {}


def _engine_key(vllm_config: VllmConfig) -> str:
    return str(vllm_config.model_config.model)


def forget(model_path: str) -> None:
    """Drop the engine's per-request state (when it closes)."""
    _COEFS.pop(str(model_path), None)


def _logits_processor_base() -> type:
    try:
        from vllm.v1.sample.logits_processor import LogitsProcessor

        return LogitsProcessor
    except ImportError:  # vLLM absent: the class is defined but never used
        return object


class MixtureCoefs(_logits_processor_base()):
    """Tracks each persistent-batch row's mixture coefficient m (from
    `SamplingParams.extra_args["mixture_coef"]`, 0 when absent). Changes no logits."""

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        coef = (sampling_params.extra_args or {}).get(COEF_KEY, 0.0)
        if not isinstance(coef, (int, float)) or not 0.0 <= float(coef) <= 1.0:
            raise ValueError(f"extra_args[{COEF_KEY!r}] must be a number in [0, 1], got {coef!r}")

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        self.device = device
        self.coefs: dict[int, float] = {}  # batch index -> m
        self.batch_size = 0
        self._rows: Tensor | None = None  # [batch_size] m, rebuilt after a batch change
        _COEFS[_engine_key(vllm_config)] = self

    def is_argmax_invariant(self) -> bool:
        return True  # the identity

    def apply(self, logits: Tensor) -> Tensor:
        return logits

    def update_state(self, batch_update) -> None:
        if batch_update is None:
            return
        from vllm.v1.sample.logits_processor import MoveDirectionality

        # vLLM's order: removed, then added, then moved.
        for index in batch_update.removed:
            self.coefs.pop(index, None)
        for index, params, _, _ in batch_update.added:
            self.coefs[index] = float((params.extra_args or {}).get(COEF_KEY, 0.0))
        for a, b, direction in batch_update.moved:
            a_coef, b_coef = self.coefs.pop(a, None), self.coefs.pop(b, None)
            if a_coef is not None:
                self.coefs[b] = a_coef
            if b_coef is not None and direction == MoveDirectionality.SWAP:
                self.coefs[a] = b_coef
        self.batch_size = batch_update.batch_size
        self._rows = None

    def active(self) -> list[float]:
        """m of batch rows 0 .. batch_size - 1."""
        return [self.coefs.get(i, 0.0) for i in range(self.batch_size)]

    def rows(self, n: int) -> list[float]:
        """m for `n` logits rows. Rows are the batch's requests in batch order; a run
        with no requests (vLLM's warm-up and profiling) samples the policy."""
        if n == self.batch_size:
            return self.active()
        if self.batch_size == 0:
            return [0.0] * n
        distinct = set(self.active())
        if len(distinct) == 1:  # e.g. prompt log-probs of a batch with one m
            return [distinct.pop()] * n
        raise RuntimeError(
            f"the mixture model got {n} logits rows for a batch of {self.batch_size} requests with "
            "different mixture coefficients (prompt log-probs and speculative decoding are not supported)"
        )


# ----------------------------------------------------------------------------- the model


def _model_tag(tag: str):
    """vLLM's compilation tag, so the two copies' compiled graphs are kept apart."""
    try:
        from vllm.compilation.backends import set_model_tag

        return set_model_tag(tag)
    except ImportError:
        return contextlib.nullcontext()


def _keep_weights(module: nn.Module) -> None:
    """vLLM's in-place reload moves every layer's tensors to the meta device and expects
    them all to be sent; for a copy that was sent nothing, put its own tensors back now,
    as vLLM's `finalize_layerwise_reload` would (minus its warning for every layer).
    Attention layers are left to vLLM (they need post-processing, and warn nothing)."""
    try:
        from vllm.model_executor.layers.attention import is_deferred_attention_layer
        from vllm.model_executor.model_loader.reload.layerwise import LAYERWISE_INFO, _place_kernel_tensors
    except ImportError:  # another vLLM: its finalize restores them (with warnings)
        return
    for layer in module.modules():
        info = LAYERWISE_INFO.get(layer)
        if info is None or not info.can_load() or info.load_numel > 0 or info.kernel_tensors is None:
            continue
        if is_deferred_attention_layer(layer):
            continue
        _place_kernel_tensors(layer, info)
        info.reset()


class AlignmentMixtureForCausalLM(nn.Module):
    """Two copies of the config's real architecture, `policy` and `reference`, sampled
    from as pi_m ∝ pi^(1 - m) mu^m with each request's m (see the module docstring)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        from vllm.model_executor.models import ModelRegistry
        from vllm.model_executor.models.utils import maybe_prefix

        config = vllm_config.model_config.hf_config
        inner = getattr(config, INNER_ARCHITECTURE_KEY, None)
        if not inner:
            raise ValueError(f"{MIXTURE_ARCHITECTURE} needs {INNER_ARCHITECTURE_KEY!r} in the model's config")
        inner_cls, _ = ModelRegistry.resolve_model_cls([inner], vllm_config.model_config)
        self.config = config
        with _model_tag("alignment_policy"):
            self.policy = inner_cls(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "policy"))
        with _model_tag("alignment_reference"):
            self.reference = inner_cls(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "reference"))
        self._key = _engine_key(vllm_config)

    def _coefs(self) -> MixtureCoefs | None:
        return _COEFS.get(self._key)

    def _needed(self) -> tuple[bool, bool]:
        """(run the policy, run the reference) for this step's batch."""
        state = self._coefs()
        coefs = state.active() if state is not None else []
        if not coefs:  # warm-up / profiling: run both
            return True, True
        return any(m < 1.0 for m in coefs), any(m > 0.0 for m in coefs)

    def embed_input_ids(self, input_ids: Tensor) -> Tensor:
        return self.policy.embed_input_ids(input_ids)

    def forward(
        self,
        input_ids: Tensor | None,
        positions: Tensor,
        intermediate_tensors: Any = None,
        inputs_embeds: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        if inputs_embeds is not None or intermediate_tensors is not None:
            # Embeddings would be the policy's only; pipeline stages would need both halves.
            raise NotImplementedError(f"{MIXTURE_ARCHITECTURE} takes token ids only (no prompt embeds, no PP)")
        run_policy, run_reference = self._needed()
        policy = self.policy(input_ids, positions) if run_policy else None
        reference = self.reference(input_ids, positions) if run_reference else None
        # The copy no request needs: zeros of the right shape (its logits are never used).
        if policy is None:
            policy = torch.zeros_like(reference)
        if reference is None:
            reference = torch.zeros_like(policy)
        return torch.cat([policy, reference], dim=-1)

    def compute_logits(self, hidden_states: Tensor) -> Tensor | None:
        """log pi_m per row: log_softmax((1 - m) log_softmax(policy_logits) + m log_softmax(reference_logits)),
        exactly log_softmax(policy_logits) for m = 0 and log_softmax(reference_logits) for m = 1."""
        width = hidden_states.size(-1) // 2
        state = self._coefs()
        coefs = state.rows(hidden_states.size(0)) if state is not None else [0.0] * hidden_states.size(0)
        need_policy = not coefs or any(m < 1.0 for m in coefs)
        need_reference = any(m > 0.0 for m in coefs)
        policy = reference = None
        if need_policy:
            logits = self.policy.compute_logits(hidden_states[..., :width])
            if logits is None:  # a tensor-parallel rank other than the first
                return None
            policy = torch.log_softmax(logits.float(), -1)
        if need_reference:
            logits = self.reference.compute_logits(hidden_states[..., width:])
            if logits is None:
                return None
            reference = torch.log_softmax(logits.float(), -1)
        if reference is None:
            return policy
        if policy is None:
            return reference
        m = torch.tensor(coefs, dtype=torch.float32, device=policy.device)[:, None]
        mixed = torch.log_softmax((1 - m) * policy + m * reference, -1)
        # The pure rows as the native sampler computes them (no second normalisation).
        return torch.where(m == 0.0, policy, torch.where(m == 1.0, reference, mixed))

    def load_weights(self, weights: Iterable[tuple[str, Tensor]]) -> set[str]:
        """Bare transformers names load into the policy, `reference.`-prefixed ones into
        the reference; a copy sent nothing keeps its weights. Returns the names (as this
        module's parameters) that now hold the intended weights."""
        policy_weights, reference_weights = split_weights(weights)
        done: set[str] = set()
        for name, copy, sent in (
            ("policy", self.policy, policy_weights),
            ("reference", self.reference, reference_weights),
        ):
            if sent:
                loaded = copy.load_weights(sent) or set()
                done |= {f"{name}.{n}" for n in loaded}
            else:
                _keep_weights(copy)
                done |= {f"{name}.{n}" for n, _ in copy.named_parameters()}
        return done


__all__ = [
    "COEF_KEY",
    "MIXTURE_ARCHITECTURE",
    "REFERENCE_PREFIX",
    "AlignmentMixtureForCausalLM",
    "MixtureCoefs",
    "mixture_config",
    "mixture_supported",
    "register",
    "request_salt",
    "split_weights",
]
