"""Policy-gradient losses on scalar rewards: K samples of the policy per prompt, each
scored by a reward (feedback "rewards": `scores` holds one reward per completion), and
the other samples of the same prompt as the baseline (no value model).

`policy` and `reference` are sequence log-probs, rho = policy - reference the
sequence log-ratio; token-level losses read `tokens` ([B, K, T]). Only real items
(mask True) enter a baseline, and a prompt with fewer than two real items has no
baseline and is left out of the loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from alignment.losses.base import LossOutput, PreferenceLoss, SequenceLogps, check_range, register_loss
from alignment.losses.groups import OptionalKL, item_mean, prompt_groups
from alignment.losses.metrics import reward_metrics

# Above this per-token log-ratio (a ratio of 4.9e8) exp continues along its tangent, so
# that values and gradients stay finite in float32 at any input; below it is exact.
EXP_CAP = 20.0


def exp_capped(x: Tensor, cap: float = EXP_CAP) -> Tensor:
    """exp(x) for x <= cap, exp(cap) * (1 + x - cap) above (C1 at cap, no overflow)."""
    e = torch.exp(x.clamp(max=cap))
    return torch.where(x <= cap, e, e * (1 + x - cap))


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
    gradients agree). `normalize_advantages` (TRL, off by default) is not applied.
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

    def __post_init__(self) -> None:
        self.beta = check_range(self.name, "beta", self.beta, ge=0)

    def shaped_rewards(self, logps: SequenceLogps) -> Tensor:
        """[B, K] R_i = r_i - beta * stopgrad(rho_i) (0 for padded items)."""
        logps = logps.masked()
        rewards = logps.scores.to(logps.policy.dtype)
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
        return torch.where(keep, shaped - baseline, 0.0).detach()

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


@register_loss("grpo")
@dataclass
class GRPOLoss(OptionalKL, PreferenceLoss):
    """Group Relative Policy Optimization, GRPO (Shao et al. 2024, DeepSeekMath, eq. 3
    with outcome supervision).

    K samples per prompt with rewards r_i (`scores`); the group-normalised reward is
    the advantage of every token of y_i:

        A_i      = (r_i - mean(r)) / (std(r) + std_eps)     (over the prompt's real items)
        ratio_t  = exp(log pi_t - log pi_old_t)
        surr_t   = min(ratio_t * A_i, clip(ratio_t, 1 - epsilon, 1 + epsilon) * A_i)
        KL_t     = exp(ref_t - log pi_t) - (ref_t - log pi_t) - 1     (k3: unbiased, >= 0)
        J        = mean over prompts of (1/K) sum_i (1/|y_i|) sum_t (surr_t - beta * KL_t)
        loss     = -J

    std is the unbiased (n - 1) standard deviation, as in TRL's GRPOTrainer; a group
    whose rewards are all equal has A = 0. log pi_old are the log-probs under the
    policy that sampled (`tokens.old_policy`); None means the current policy, detached
    (ratio 1 with the policy-gradient gradient A grad log pi). Tokens whose ratio is
    clipped in the direction of A get no gradient from the surrogate. Per-token
    log-ratios above 20 continue exp along its tangent (see `exp_capped`) so that the
    loss stays finite; nothing below that changes.

    Defaults: epsilon 0.2 and beta 0.04 (the paper's KL coefficient), std_eps 1e-4 (as
    TRL). TRL 1.16's GRPOConfig differs: beta 0.0 (no reference) and loss_type "dapo"
    (token sum over the whole batch's tokens); this loss is its loss_type "grpo" with
    scale_rewards "group", importance_sampling_level "token" and
    use_bias_correction_kl False. beta = 0 needs no reference."""

    trl = "GRPOTrainer"
    paper = (
        "Shao et al. 2024, DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models "
        "(GRPO, eq. 3)"
    )
    formula = (
        "-mean_prompts (1/K) sum_i (1/|y_i|) sum_t [min(ratio_t A_i, clip(ratio_t, 1 +- epsilon) A_i) - beta KL_t], "
        "A_i = (r_i - mean r) / (std r + std_eps)"
    )
    online_only = True
    feedback = "rewards"
    reads_with_kl = frozenset({"reference", "tokens"})  # the ratio to the sampling policy, per token
    reuses_samples = True

    epsilon: float = 0.2
    beta: float = 0.04
    std_eps: float = 1e-4

    def __post_init__(self) -> None:
        self.epsilon = check_range(self.name, "epsilon", self.epsilon, gt=0, lt=1)
        self.beta = check_range(self.name, "beta", self.beta, ge=0)
        self.std_eps = check_range(self.name, "std_eps", self.std_eps, gt=0)

    def advantages(self, logps: SequenceLogps) -> Tensor:
        """[B, K] group-normalised advantages (0 for padded items and lone items)."""
        logps = logps.masked()
        mask = logps.mask
        rewards = logps.scores.detach().to(torch.promote_types(logps.policy.dtype, torch.float32))
        n, weight, _ = prompt_groups(mask, rewards.dtype)
        mean = torch.where(mask, rewards, 0.0).sum(-1, keepdim=True) / n[:, None].clamp(min=1)
        centred = torch.where(mask, rewards - mean, 0.0)
        std = ((centred**2).sum(-1, keepdim=True) / (n[:, None] - 1).clamp(min=1)).sqrt()
        keep = mask & (weight[:, None] > 0)
        return torch.where(keep, centred / (std + self.std_eps), 0.0).to(logps.policy.dtype)

    def __call__(self, logps: SequenceLogps) -> LossOutput:
        logps = logps.masked()
        tokens = logps.tokens
        if tokens is None:
            raise ValueError(f"{self.name}: needs per-token log-probs SequenceLogps.tokens [B, K, T]; got None")
        mask = logps.mask
        tmask = tokens.mask
        log_pi = tokens.policy
        old = log_pi.detach() if tokens.old_policy is None else tokens.old_policy.detach()
        advantage = self.advantages(logps).to(log_pi.dtype)[:, :, None]
        n, weight, prompts = prompt_groups(mask, log_pi.dtype)

        ratio = exp_capped(log_pi - old)
        clipped_ratio = ratio.clamp(1 - self.epsilon, 1 + self.epsilon)
        surrogate = torch.minimum(ratio * advantage, clipped_ratio * advantage)
        kl = None
        if tokens.reference is not None:
            x = tokens.reference.detach() - log_pi
            kl = exp_capped(x) - x - 1
        if self.beta > 0:
            if kl is None:
                raise ValueError(f"{self.name}: beta = {self.beta:g} > 0 needs per-token reference log-probs; got None")
            per_token = surrogate - self.beta * kl
        else:
            per_token = surrogate
        per_token = torch.where(tmask, per_token, 0.0)
        length = tmask.sum(-1).clamp(min=1).to(log_pi.dtype)
        per_item = torch.where(mask, per_token.sum(-1) / length, 0.0)
        objective = (weight * per_item.sum(-1) / n.clamp(min=1)).sum() / prompts
        loss = -objective

        metrics, counts = reward_metrics(logps, self.reward_scale)
        counted = tmask & (weight[:, None, None] > 0)
        n_tokens = counted.sum()
        with torch.no_grad():
            is_clipped = ((ratio > 1 + self.epsilon) & (advantage > 0)) | ((ratio < 1 - self.epsilon) & (advantage < 0))
            token_parts = {"grpo/clip_fraction": is_clipped.to(log_pi.dtype), "grpo/ratio": ratio}
            if kl is not None:
                token_parts["grpo/kl"] = kl
            for key, value in token_parts.items():
                metrics[key] = (torch.where(counted, value, 0.0).sum() / n_tokens.clamp(min=1)).detach()
                counts[key] = n_tokens
        metrics["grpo/advantage_abs"], counts["grpo/advantage_abs"] = item_mean(advantage[:, :, 0].abs(), mask, weight)
        return LossOutput(loss=loss, metrics=metrics, counts=counts)
