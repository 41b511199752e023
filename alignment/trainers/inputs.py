"""The loss inputs of the policy trainers: for each name a loss may declare in `reads`
(`alignment.losses.INPUTS`), the one function that provides it.

`loss_inputs` runs one forward of the policy (per token when the loss reads `tokens`,
with WPO's sums when it reads `wpo_log_weights`), the reference's forward of the same
kind when it reads `reference`, then each provider the loss reads. A new input is a new
entry in `PROVIDERS` (and, if it constrains the run, in `LIVE_REFERENCE` or `MIN_LISTS`,
which the config checks at load); nothing else branches on it. The judges' losses get
theirs from their model head instead (`alignment.rewards.heads`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from alignment.logprobs import PolicyForward
from alignment.losses import PreferenceLoss, SequenceLogps
from alignment.losses.base import TokenLogps

# Inputs that need the reference model itself, not precomputed log-probs: per-token
# log-probs are not stored, and KTO's baseline scores completions under other prompts.
LIVE_REFERENCE = frozenset({"tokens", "kl_baseline"})
# Inputs that need more than one list per batch on each process.
MIN_LISTS = {"kl_baseline": 2}


@dataclass
class Sources:
    """What the providers draw on for one batch: the policy's forward, the reference's
    log-probs of the same kind (None when the loss does not read them), the sampling
    policy's token log-probs (online, several updates per batch) and what the caller
    passed in (online: the judge's `preferences`)."""

    trainer: Any
    model: nn.Module
    inputs: Mapping[str, Tensor]
    forward: PolicyForward
    reference: Tensor | None
    old_policy: Tensor | None = None
    given: dict[str, Any] = field(default_factory=dict)


def _tokens(s: Sources) -> TokenLogps:
    mask = s.inputs["completion_attention_mask"].bool()
    return TokenLogps(policy=s.forward.logps, reference=s.reference, old_policy=s.old_policy, mask=mask)


def _wpo_log_weights(s: Sources) -> Tensor:
    """WPO's weight of a completion is the mean over its tokens, hence / |y|."""
    return s.forward.wpo_sums / s.inputs["lengths"].clamp(min=1).to(s.forward.wpo_sums.dtype)


@torch.no_grad()
def _kl_baseline(s: Sources) -> Tensor:
    """KTO's KL estimate: the mean log-ratio of every completion under the next list's
    prompt (the pairs TRL's rotation of completions makes), over all processes. The
    reference is a live one (`LIVE_REFERENCE`: the config refuses precomputed log-probs)."""
    shifted = {key: value for key, value in s.inputs.items() if key != "reference_logps"}
    for key in ("prompt_input_ids", "prompt_attention_mask"):
        shifted[key] = s.inputs[key].roll(-1, dims=0)
    logratios = s.trainer._logps(s.model, shifted) - s.trainer.reference.logps(s.model, shifted, s.trainer._logps)
    mask = s.inputs["mask"].to(logratios.dtype)
    totals = torch.stack([(logratios * mask).sum(), mask.sum()])
    accelerator = s.trainer.accelerator
    if accelerator.num_processes > 1:
        totals = accelerator.reduce(totals, "sum")
    return totals[0] / totals[1].clamp(min=1)


def _given(name: str) -> Callable[[Sources], Any]:
    def provide(s: Sources) -> Any:
        if name not in s.given:
            raise ValueError(f"the loss reads {name!r}, which only the online trainer provides")
        return s.given[name]

    return provide


def _across_processes(s: Sources) -> Callable[[Tensor], Tensor]:
    """The sum over processes (a collective: every process's loss calls it alike)."""
    accelerator = s.trainer.accelerator
    if accelerator.num_processes == 1:
        return lambda t: t
    return lambda t: accelerator.reduce(t.detach(), "sum")


def _gathered(s: Sources) -> Callable[[Tensor], Tensor]:
    """Concatenate a 1-D tensor's values from every process (they may differ in length:
    padded with a sentinel no value takes, as TRL does for its entropy quantile)."""
    accelerator = s.trainer.accelerator
    if accelerator.num_processes == 1:
        return lambda t: t
    sentinel = -1e9

    def gather(values: Tensor) -> Tensor:
        padded = accelerator.pad_across_processes(values.detach(), dim=0, pad_index=sentinel)
        everything = accelerator.gather(padded)
        return everything[everything != sentinel]

    return gather


def _engine_ratio(s: Sources) -> Tensor | None:
    """An external engine's importance-sampling correction, against the sampling policy
    as the trainer computes it: the log-probs kept when the samples were drawn (several
    updates per batch), else this forward's, detached (the same values; TRL computes
    them in a second, no-grad forward)."""
    correction = s.given.get("engine_correction")
    if correction is None:
        return None
    trainer_logps = s.old_policy if s.old_policy is not None else s.forward.logps.detach()
    return correction.ratio(trainer_logps, s.inputs["completion_attention_mask"])


PROVIDERS: dict[str, Callable[[Sources], Any]] = {
    "tokens": _tokens,
    "wpo_log_weights": _wpo_log_weights,
    "kl_baseline": _kl_baseline,
    "preferences": _given("preferences"),
    "truncated": _given("truncated"),
    "completion_budget": _given("completion_budget"),
    "across_processes": _across_processes,
    "entropies": lambda s: s.forward.entropies,
    "gathered": _gathered,
    "margins": lambda s: s.inputs.get("margins"),
    "engine_ratio": _engine_ratio,
}


def loss_inputs(
    trainer: Any,
    loss: PreferenceLoss,
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    forward_fn: Callable[..., PolicyForward],
    reference_fn: Callable[[nn.Module, Mapping[str, Tensor], bool], Tensor | None],
    old_policy: Tensor | None = None,
    **given: Any,
) -> SequenceLogps:
    """The loss's input for a collated batch: `forward_fn(model, inputs, per_token, wpo)`
    is the policy's forward, `reference_fn(model, inputs, per_token)` the reference's."""
    reads = loss.reads
    per_token = "tokens" in reads
    forward = forward_fn(
        model, inputs, per_token=per_token, wpo="wpo_log_weights" in reads, entropy="entropies" in reads
    )
    reference = reference_fn(model, inputs, per_token) if "reference" in reads else None
    sources = Sources(trainer, model, inputs, forward, reference, old_policy, given)
    unprovided = sorted(reads - {"reference"} - set(PROVIDERS))
    if unprovided:
        raise ValueError(
            f"loss {loss.name!r} reads {unprovided}, which a judge's model head provides, not a policy trainer"
        )
    fields = {name: PROVIDERS[name](sources) for name in sorted(reads - {"reference"})}
    policy = forward.logps.sum(-1) if per_token else forward.logps
    if per_token and reference is not None:
        reference = reference.sum(-1)
    return SequenceLogps(
        policy=policy,
        reference=reference,
        scores=inputs["scores"],
        mask=inputs["mask"],
        lengths=inputs["lengths"],
        **fields,
    )
