"""A reference that follows the policy (`reference.update`): SPPO's previous iterate and
TR-DPO's hard and soft updates (Gorbatovski et al. 2024), theta_ref <- alpha theta +
(1 - alpha) theta_ref every N steps or every epoch."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from transformers import TrainerCallback


@torch.no_grad()
def mix_into(reference: nn.Module, policy: nn.Module, alpha: float) -> None:
    """reference <- alpha * policy + (1 - alpha) * reference, parameter by parameter;
    under ZeRO-3 each parameter is gathered first, as TRL's SyncRefModelCallback does."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    ours, theirs = dict(reference.named_parameters()), dict(policy.named_parameters())
    if set(ours) != set(theirs):
        raise ValueError("reference.update: the policy and the reference have different parameters")
    params = [(ours[name], theirs[name]) for name in ours]
    gathered = contextlib.nullcontext()
    if is_deepspeed_zero3_enabled():
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters([p for pair in params for p in pair], modifier_rank=0)
    with gathered:
        for ref, pol in params:
            ref.data.mul_(1.0 - alpha).add_(pol.data.to(ref.dtype), alpha=alpha)


class ReferenceUpdate(TrainerCallback):
    """Calls `mix_into` every `every` optimizer steps, or at each epoch's end for 'epoch'."""

    def __init__(self, reference: nn.Module, policy: nn.Module, every: int | str, alpha: float) -> None:
        self.reference, self.policy, self.every, self.alpha = reference, policy, every, alpha
        self.updates = 0

    def _update(self) -> None:
        mix_into(self.reference, self.policy, self.alpha)
        self.updates += 1

    def on_step_end(self, args, state, control, **kwargs):
        if self.every != "epoch" and state.global_step % self.every == 0:
            self._update()

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.every == "epoch":
            self._update()
