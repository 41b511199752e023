"""The importance-sampling correction of an engine's samples (TRL 1.16's
`vllm_importance_sampling_correction`).

An engine other than the trainer's own model (vLLM) samples from pi_engine, which is
the policy only up to its kernels' numerics. The correction weighs each token's loss by

    rho_t = pi_trainer(y_t) / pi_engine(y_t) = exp(log pi_trainer - log pi_engine)   (token_*)
    rho   = exp(sum_t log pi_trainer - log pi_engine)                                 (sequence_*)

truncated (`*_truncate`: clamp(rho, C_min, C_max)) or masked (`*_mask`: 0 outside
[C_min, C_max]), where pi_trainer is the sampling policy as the trainer computes it
(detached; TRL's `old_per_token_logps`). Tokens outside the completion have a zero
log-difference (ratio 1), and a NaN engine log-prob counts as no difference, as in TRL."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
ImportanceSamplingMode = Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]


def importance_sampling_ratio(
    trainer_logps: Tensor,
    engine_logps: Tensor,
    mask: Tensor,
    mode: str = "sequence_mask",
    clip_min: float | None = None,
    clip_max: float | None = 3.0,
) -> Tensor:
    """rho per token [..., T] (token modes) or per sequence [..., 1] (sequence modes), as
    TRL 1.16's GRPOTrainer computes `importance_sampling_ratio` (no gradient)."""
    if mode not in IS_MODES:
        raise ValueError(f"unknown importance sampling mode {mode!r}; available: {', '.join(IS_MODES)}")
    diff = ((trainer_logps.detach() - engine_logps) * mask).nan_to_num(nan=0.0)
    if mode.startswith("sequence"):
        diff = diff.sum(-1, keepdim=True)
    ratio = torch.exp(diff)
    if mode.endswith("truncate"):
        return ratio.clamp(min=clip_min, max=clip_max)
    low = -math.inf if clip_min is None else clip_min
    high = math.inf if clip_max is None else clip_max
    return ratio.masked_fill((ratio < low) | (ratio > high), 0.0)


@dataclass
class EngineCorrection:
    """An engine's token log-probs [B, K, T] for the slots it sampled from the policy
    (`from_policy` [K]; the other slots are not the policy's samples and keep ratio 1),
    and how to correct for them (None `mode`: only measured)."""

    engine_logps: Tensor
    from_policy: Tensor
    mode: str | None = "sequence_mask"
    clip_min: float | None = None
    clip_max: float | None = 3.0

    def ratio(self, trainer_logps: Tensor, mask: Tensor) -> Tensor | None:
        """rho [B, K, T] or [B, K, 1]; 1 in slots not sampled from the policy."""
        if self.mode is None:
            return None
        engine = self.engine_logps.to(trainer_logps.device, trainer_logps.dtype)
        rho = importance_sampling_ratio(trainer_logps, engine, mask, self.mode, self.clip_min, self.clip_max)
        mine = self.from_policy.to(rho.device)[None, :, None]
        return torch.where(mine, rho, torch.ones_like(rho))


def logp_mismatch(trainer_logps: Tensor, engine_logps: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """|log pi_trainer - log pi_engine| over the real tokens: mean and max (TRL's
    `sampling/sampling_logp_difference/{mean,max}`)."""
    delta = (trainer_logps.detach().float() - engine_logps.float().to(trainer_logps.device)).abs()
    delta = delta[mask.bool() & ~delta.isnan()]
    if delta.numel() == 0:
        zero = torch.zeros((), device=trainer_logps.device)
        return {"mean": zero, "max": zero}
    return {"mean": delta.mean(), "max": delta.max()}
