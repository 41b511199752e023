"""Policy-gradient losses on scalar rewards: K samples of the policy per prompt, each
scored by a reward (feedback "rewards": `scores` holds one reward per completion), and
the other samples of the same prompt as the baseline (no value model).

`policy` and `reference` are sequence log-probs, rho = policy - reference the
sequence log-ratio; token-level losses read `tokens` ([B, K, T]). Only real items
(mask True) enter a baseline, and a prompt with fewer than two real items has no
baseline and is left out of the loss."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from alignment.losses.base import (
    LossOutput,
    LossParameterError,
    PreferenceLoss,
    SequenceLogps,
    check_choice,
    check_range,
    register_loss,
)
from alignment.losses.groups import OptionalKL, item_mean, prompt_groups
from alignment.losses.metrics import reward_metrics


@register_loss("rloo")
@dataclass
class RLOOLoss(OptionalKL, PreferenceLoss):
    """REINFORCE Leave-One-Out, RLOO (Ahmadian et al. 2024).

    K samples y_i ~ pi per prompt with rewards r_i (`scores`). The reward is shaped by
    the per-sequence KL estimate, and each sample's baseline is the mean shaped reward
    of the other samples of its prompt (an unbiased baseline: it does not depend on y_i):

        R_i  = r_i - beta * stopgrad(rho_i)
        A_i  = R_i - 1/(K-1) * sum_{j != i} R_j
        loss = -(1/K) * sum_i stopgrad(A_i) * log pi(y_i),   mean over prompts

    K counts the real items of the prompt. beta = 0 needs no reference. Same as TRL
    1.16's RLOOTrainer with its defaults: rewards minus beta * sum_t (log pi_old -
    log mu) (the sampling policy's log-probs, which are the current ones with one
    update per batch), the same leave-one-out baseline, and a loss whose gradient is
    -mean_i A_i grad log pi(y_i) (TRL writes it as a clipped sequence-level ratio
    exp(log pi - log pi_old) * A, equal to 1 * A in value at one update per batch, so
    its loss value is mean(-A) = 0 where this one reports -mean(A log pi); the
    gradients agree). TRL's options: `reward_clip_range` [min, max] clamps the rewards
    before the KL shaping; `normalize_advantages` rescales the advantages to mean 0 and
    (unbiased) std 1 over the whole batch, on all processes, with std + 1e-4.
    beta defaults to TRL 1.16's RLOOConfig.beta = 0.05; the paper tunes the KL
    coefficient per task."""

    trl = "RLOOTrainer"
    paper = (
        "Ahmadian et al. 2024, Back to Basics: Revisiting REINFORCE Style Optimization for Learning from "
        "Human Feedback in LLMs"
    )
    formula = "-(1/K) sum_i stopgrad(R_i - mean_{j != i} R_j) log pi(y_i), R_i = r_i - beta stopgrad(rho_i)"
    online_only = True
    feedback = "rewards"

    beta: float = 0.05
    normalize_advantages: bool = False
    reward_clip_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        self.beta = check_range(self.name, "beta", self.beta, ge=0)
        check_choice(self.name, "normalize_advantages", self.normalize_advantages, (False, True))
        if self.reward_clip_range is not None:
            bounds = self.reward_clip_range
            numbers = isinstance(bounds, (list, tuple)) and len(bounds) == 2
            numbers = numbers and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
            if not numbers or not all(math.isfinite(b) for b in bounds) or bounds[0] > bounds[1]:
                raise LossParameterError(
                    f"{self.name}: reward_clip_range must be [min, max], two finite numbers with min <= max, "
                    f"got {bounds!r}"
                )
            self.reward_clip_range = (float(bounds[0]), float(bounds[1]))

    @property
    def reads(self) -> frozenset[str]:  # type: ignore[override]
        # Normalized over the whole batch, as TRL's (its rewards are gathered from every process).
        return super().reads | ({"across_processes"} if self.normalize_advantages else set())

    def shaped_rewards(self, logps: SequenceLogps) -> Tensor:
        """[B, K] R_i = r_i - beta * stopgrad(rho_i) (0 for padded items)."""
        logps = logps.masked()
        rewards = logps.scores.to(logps.policy.dtype)
        if self.reward_clip_range is not None:
            rewards = rewards.clamp(*self.reward_clip_range)
        if self.beta > 0:
            if logps.reference is None:
                raise ValueError(f"{self.name}: beta = {self.beta:g} > 0 needs reference log-probs; got None")
            rewards = rewards - self.beta * logps.logratios().detach()
        return torch.where(logps.mask, rewards, 0.0)

    def advantages(self, logps: SequenceLogps) -> Tensor:
        """[B, K] leave-one-out advantages A_i (0 for padded items and lone items)."""
        logps = logps.masked()
        shaped = self.shaped_rewards(logps)
        n, weight, _ = prompt_groups(logps.mask, shaped.dtype)
        baseline = (shaped.sum(-1, keepdim=True) - shaped) / (n[:, None] - 1).clamp(min=1)
        keep = logps.mask & (weight[:, None] > 0)
        advantage = torch.where(keep, shaped - baseline, 0.0).detach()
        if not self.normalize_advantages:
            return advantage
        summed = logps.across_processes or (lambda t: t)
        count, total, squares = summed(
            torch.stack([keep.sum().to(advantage.dtype), advantage.sum(), (advantage**2).sum()])
        )
        mean = total / count.clamp(min=1)
        std = ((squares - count * mean**2) / (count - 1).clamp(min=1)).clamp(min=0).sqrt()
        return torch.where(keep, (advantage - mean) / (std + 1e-4), 0.0)

    def __call__(self, logps: SequenceLogps) -> LossOutput:
        logps = logps.masked()
        mask, log_pi = logps.mask, logps.policy
        advantage = self.advantages(logps).to(log_pi.dtype)
        n, weight, prompts = prompt_groups(mask, log_pi.dtype)
        per_prompt = -(advantage * log_pi).sum(-1) / n.clamp(min=1)
        loss = (weight * per_prompt).sum() / prompts

        metrics, counts = reward_metrics(logps, self.reward_scale)
        parts = {"rloo/reward": logps.scores.to(log_pi.dtype), "rloo/advantage_abs": advantage.abs()}
        if self.beta > 0:
            parts["rloo/kl"] = logps.logratios().detach()
        for key, value in parts.items():
            metrics[key], counts[key] = item_mean(value, mask, weight)
        return LossOutput(loss=loss, metrics=metrics, counts=counts)
