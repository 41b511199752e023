"""The GRPO family: K samples of the policy per prompt, scored by rewards (`scores`),
group-relative advantages, a clipped (or soft, or truncated) importance ratio to the
sampling policy per token or per sequence, an optional KL to the reference, and a
normalization of the token losses. Each of TRL 1.16's GRPOTrainer `loss_type`s is a
loss here under TRL's name, with its paper's defaults; the options TRL's GRPOConfig
shares across them are parameters of every one.

With rewards r_i of a prompt's K real samples and the sampling policy pi_old:

    A_i    = (r_i - mean r) / (std r + std_eps)    scale_rewards "group" (unbiased std);
             "batch": the std of every reward of the batch (on all processes); "none": r_i - mean r
    w      = pi / pi_old per token (importance_sampling_level "token"), or
             exp(mean_t log(pi / pi_old)) per sequence ("sequence", GSPO)
    KL_t   = exp(ref_t - log pi_t) - (ref_t - log pi_t) - 1    (k3), times w with use_bias_correction_kl
    l_t    = the loss's policy term from w, A_i and log pi_t, + beta KL_t

and the loss is l_t summed over the real tokens and normalized as the loss says. A
prompt with fewer than two real samples has no baseline and is left out. Importance
log-ratios above 20 continue exp along its tangent (`exp_capped`), so that everything
stays finite; nothing below that changes.

Every loss equals TRL 1.16's `GRPOTrainer._compute_loss` in value and gradient on the
same tensors (tests/test_grpo_losses.py calls TRL's own code) for one process and no
gradient accumulation. The normalizations that span the batch (dapo, cispo, vespo; the
"batch" std) are taken over all processes (`across_processes`); with gradient
accumulation they span the micro-batch, where TRL's span the optimizer step."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from alignment.losses.base import (
    LossOutput,
    PreferenceLoss,
    SequenceLogps,
    check_choice,
    check_range,
    register_loss,
)
from alignment.losses.groups import OptionalKL, item_mean, prompt_groups
from alignment.losses.metrics import reward_metrics

# Above this per-token log-ratio (a ratio of 4.9e8) exp continues along its tangent, so
# that values and gradients stay finite in float32 at any input; below it is exact.
EXP_CAP = 20.0
LEVELS = ("token", "sequence")
SCALES = ("group", "batch", "none")


def _required(value, owner: str, name: str):
    if value is None:
        raise ValueError(f"{owner}: needs SequenceLogps.{name}; got None")
    return value


def exp_capped(x: Tensor, cap: float = EXP_CAP) -> Tensor:
    """exp(x) for x <= cap, exp(cap) * (1 + x - cap) above (C1 at cap, no overflow)."""
    e = torch.exp(x.clamp(max=cap))
    return torch.where(x <= cap, e, e * (1 + x - cap))


@dataclass
class GroupPolicyLoss(OptionalKL, PreferenceLoss):
    """The shared pipeline (see the module docstring). A loss sets `policy_term` and its
    `normalization`: "sequence_mean" (each sample's token mean, then the mean over
    samples), "local_tokens" (the token mean over this process's batch),
    "completion_budget" (the sum over the samples' tokens / (samples * max new tokens)),
    "batch_tokens" (the sum / the real tokens of the batch on all processes, per process) or
    "sequence_sum" (each sample's token sum, then the mean over samples)."""

    online_only = True
    feedback = "rewards"
    reuses_samples = True
    reads_with_kl = frozenset({"reference", "tokens"})
    normalization: ClassVar[str] = "sequence_mean"
    # True where the importance weight is a stop-gradient coefficient of A log pi (CISPO,
    # VESPO): the gradient flows through log pi only, not through the weight's value.
    detached_weight: ClassVar[bool] = False
    # True where the engine's importance-sampling ratio enters the weight itself (VESPO)
    # rather than multiplying the token losses.
    engine_ratio_in_weight: ClassVar[bool] = False

    epsilon: float = 0.2
    epsilon_high: float | None = None
    delta: float | None = None
    beta: float = 0.04
    importance_sampling_level: Literal["token", "sequence"] = "token"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    use_bias_correction_kl: bool = False
    mask_truncated_completions: bool = False
    std_eps: float = 1e-4
    top_entropy_quantile: float = 1.0
    entropy_coef: float = 0.0
    use_adaptive_entropy: bool = False
    entropy_coef_min: float = 0.0
    entropy_coef_max: float = 1.0
    entropy_coef_delta: float = 0.005
    entropy_target: float = 0.2

    def __post_init__(self) -> None:
        self.epsilon = check_range(self.name, "epsilon", self.epsilon, gt=0, lt=1)
        if self.epsilon_high is not None:
            self.epsilon_high = check_range(self.name, "epsilon_high", self.epsilon_high, gt=0)
        if self.delta is not None:
            self.delta = check_range(self.name, "delta", self.delta, gt=1)
        self.beta = check_range(self.name, "beta", self.beta, ge=0)
        check_choice(self.name, "importance_sampling_level", self.importance_sampling_level, LEVELS)
        check_choice(self.name, "scale_rewards", self.scale_rewards, SCALES)
        check_choice(self.name, "use_bias_correction_kl", self.use_bias_correction_kl, (False, True))
        check_choice(self.name, "mask_truncated_completions", self.mask_truncated_completions, (False, True))
        self.std_eps = check_range(self.name, "std_eps", self.std_eps, gt=0)
        self.top_entropy_quantile = check_range(
            self.name, "top_entropy_quantile", self.top_entropy_quantile, ge=0, le=1
        )
        check_choice(self.name, "use_adaptive_entropy", self.use_adaptive_entropy, (False, True))
        for key in ("entropy_coef", "entropy_coef_min", "entropy_coef_delta", "entropy_target"):
            setattr(self, key, check_range(self.name, key, getattr(self, key), ge=0))
        self.entropy_coef_max = check_range(
            self.name, "entropy_coef_max", self.entropy_coef_max, ge=self.entropy_coef_min
        )
        # The adaptive controller's state (Skywork-OR1, as TRL's): the coefficient, the last
        # optimizer step's entropy over all processes, and this step's running sums.
        self._coef = self.entropy_coef
        self._last_entropy = math.inf
        self._window: Tensor | None = None

    @property
    def entropy_bonus(self) -> bool:
        return self.entropy_coef != 0.0 or self.use_adaptive_entropy

    @property
    def reads(self) -> frozenset[str]:  # type: ignore[override]
        extra = {"truncated"} if self.mask_truncated_completions else set()
        if self.top_entropy_quantile < 1.0:
            extra |= {"entropies", "gathered"}
        if self.entropy_bonus:
            extra |= {"entropies", "across_processes"} if self.use_adaptive_entropy else {"entropies"}
        if self.normalization == "completion_budget":
            extra.add("completion_budget")
        if self.normalization == "batch_tokens" or self.scale_rewards == "batch":
            extra.add("across_processes")
        extra.add("engine_ratio")  # None unless an external engine sampled (online.engine)
        return super().reads | extra

    @property
    def upper(self) -> float:
        """The upper clipping bound's epsilon (epsilon_high, or epsilon)."""
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    # ------------------------------------------------------------------ advantages

    def advantages(self, logps: SequenceLogps) -> Tensor:
        """[B, K] group-relative advantages (0 for padded items and lone items)."""
        logps = logps.masked()
        mask = logps.mask
        rewards = logps.scores.detach().to(torch.promote_types(logps.policy.dtype, torch.float32))
        n, weight, _ = prompt_groups(mask, rewards.dtype)
        keep = mask & (weight[:, None] > 0)
        mean = torch.where(mask, rewards, 0.0).sum(-1, keepdim=True) / n[:, None].clamp(min=1)
        centred = torch.where(mask, rewards - mean, 0.0)
        if self.scale_rewards == "group":
            std = ((centred**2).sum(-1, keepdim=True) / (n[:, None] - 1).clamp(min=1)).sqrt()
            centred = centred / (std + self.std_eps)
        elif self.scale_rewards == "batch":
            centred = centred / (self._batch_std(rewards, keep, logps) + self.std_eps)
        return torch.where(keep, centred, 0.0).to(logps.policy.dtype)

    @staticmethod
    def _batch_std(rewards: Tensor, keep: Tensor, logps: SequenceLogps) -> Tensor:
        """The unbiased std of every counted reward of the batch, on all processes."""
        summed = logps.across_processes or (lambda t: t)
        values = torch.where(keep, rewards, 0.0)
        count, total, squares = summed(torch.stack([keep.sum().to(rewards.dtype), values.sum(), (values**2).sum()]))
        mean = total / count.clamp(min=1)
        return ((squares - count * mean**2) / (count - 1).clamp(min=1)).clamp(min=0).sqrt()

    # ------------------------------------------------------------------ the loss

    def policy_term(
        self,
        ratio: Tensor,
        advantage: Tensor,
        log_pi: Tensor,
        log_ratio: Tensor,
        mask: Tensor,
        engine_ratio: Tensor | None = None,
    ) -> Tensor:
        """The clipped surrogate -min(w A, clip(w, 1 - epsilon, 1 + epsilon_high) A), with
        w capped at `delta` in the first term (two-sided clipping, INTELLECT-2)."""
        clipped = ratio.clamp(1 - self.epsilon, 1 + self.upper)
        if self.delta is not None:
            ratio = ratio.clamp(max=self.delta)
        return -torch.minimum(ratio * advantage, clipped * advantage)

    def clipped(self, ratio: Tensor, advantage: Tensor) -> Tensor:
        """Where the surrogate stops the gradient (the ratio clipped in the direction of A)."""
        return ((ratio > 1 + self.upper) & (advantage > 0)) | ((ratio < 1 - self.epsilon) & (advantage < 0))

    def __call__(self, logps: SequenceLogps) -> LossOutput:
        logps = logps.masked()
        tokens = logps.tokens
        if tokens is None:
            raise ValueError(f"{self.name}: needs per-token log-probs SequenceLogps.tokens [B, K, T]; got None")
        n, weight, prompts = prompt_groups(logps.mask, tokens.policy.dtype)
        sampled = logps.mask & (weight[:, None] > 0)  # the samples with a baseline
        counted = sampled
        if self.mask_truncated_completions:  # they keep their place in the group's baseline, not in the loss
            if logps.truncated is None:
                raise ValueError(f"{self.name}: mask_truncated_completions needs SequenceLogps.truncated")
            counted = sampled & ~logps.truncated.bool()
        tmask = tokens.mask & counted[:, :, None]
        log_pi = tokens.policy
        old = log_pi.detach() if tokens.old_policy is None else tokens.old_policy.detach()
        advantage = self.advantages(logps).to(log_pi.dtype)[:, :, None]

        log_ratio = torch.where(tmask, log_pi - old, 0.0)
        if self.importance_sampling_level == "sequence":
            length = tmask.sum(-1, keepdim=True).clamp(min=1).to(log_pi.dtype)
            log_ratio_w = log_ratio.sum(-1, keepdim=True) / length
        else:
            log_ratio_w = log_ratio
        ratio = exp_capped(log_ratio_w)
        engine = logps.engine_ratio
        per_token = self.policy_term(ratio, advantage, log_pi, log_ratio, tmask, engine)
        high_entropy = self.high_entropy_tokens(logps, tmask) if self.top_entropy_quantile < 1.0 else None
        if high_entropy is not None:  # the policy term of the top-rho tokens only (Wang et al. 2025)
            per_token = per_token * high_entropy
        if engine is not None and not self.engine_ratio_in_weight:
            # An external engine sampled: its mismatch with the trainer's policy corrected (TRL's
            # vllm_importance_sampling_correction), on the policy term only, not the KL.
            per_token = per_token * engine.to(per_token.dtype)
        kl = None
        if tokens.reference is not None:
            x = torch.where(tmask, tokens.reference.detach() - log_pi, 0.0)
            kl = exp_capped(x) - x - 1
        if self.beta > 0:
            if kl is None:
                raise ValueError(f"{self.name}: beta = {self.beta:g} > 0 needs per-token reference log-probs; got None")
            per_token = per_token + self.beta * (kl * ratio if self.use_bias_correction_kl else kl)
        per_token = torch.where(tmask, per_token.expand_as(log_pi), 0.0)
        loss = self.normalized(per_token, tmask, sampled, logps)
        if self.entropy_bonus:
            loss = loss - self.entropy_term(logps, tmask if high_entropy is None else tmask & high_entropy)

        metrics, counts = reward_metrics(logps, self.reward_scale)
        self._token_metrics(metrics, counts, tmask, ratio.expand_as(log_pi), advantage, kl)
        prefix = self.name
        metrics[f"{prefix}/advantage_abs"], counts[f"{prefix}/advantage_abs"] = item_mean(
            advantage[:, :, 0].abs(), logps.mask, weight
        )
        return LossOutput(loss=loss, metrics=metrics, counts=counts)

    # ------------------------------------------------------------------ entropy

    def high_entropy_tokens(self, logps: SequenceLogps, tmask: Tensor) -> Tensor:
        """The tokens whose entropy is at least the (1 - top_entropy_quantile) quantile of
        every counted token's entropy on all processes (Wang et al. 2025, "Beyond the 80/20
        Rule"; TRL's get_high_entropy_mask, in float32 as it)."""
        entropies = _required(logps.entropies, self.name, "entropies")
        gathered = (logps.gathered or (lambda t: t))(entropies.detach()[tmask].float())
        if gathered.numel() == 0:
            return torch.zeros_like(tmask)
        threshold = torch.quantile(gathered, 1 - self.top_entropy_quantile)
        return (entropies.detach() * tmask >= threshold) & tmask

    def entropy_term(self, logps: SequenceLogps, tokens: Tensor) -> Tensor:
        """coef * the mean entropy of `tokens` (the bonus the loss subtracts); with the adaptive
        controller, the coefficient of the end of the previous optimizer step, applied only
        while the entropy was at or below the target, and this step's sums kept for `end_step`."""
        entropies = _required(logps.entropies, self.name, "entropies")
        mean = (entropies * tokens).sum() / tokens.sum().clamp(min=1)
        if not self.use_adaptive_entropy:
            return self.entropy_coef * mean
        stats = torch.stack([(entropies * tokens).sum(), tokens.sum().to(entropies.dtype)]).detach()
        self._window = stats if self._window is None else self._window + stats
        self._summed = logps.across_processes or (lambda t: t)
        return (self._coef if self._last_entropy <= self.entropy_target else 0.0) * mean

    def end_step(self, summed=None) -> None:
        """After an optimizer step: the step's entropy over all processes moves the
        coefficient by entropy_coef_delta, up when it is at or below the target, else down."""
        if not self.use_adaptive_entropy or self._window is None:
            return
        total, count = (summed or self._summed)(self._window)
        entropy = (total / count.clamp(min=1)).item()
        if entropy <= self.entropy_target:
            self._coef = min(self._coef + self.entropy_coef_delta, self.entropy_coef_max)
        else:
            self._coef = max(self._coef - self.entropy_coef_delta, self.entropy_coef_min)
        self._last_entropy, self._window = entropy, None

    def state_dict(self) -> dict[str, float]:
        return (
            {"entropy_coef": self._coef, "last_world_entropy": self._last_entropy} if self.use_adaptive_entropy else {}
        )

    def load_state_dict(self, state: dict[str, float]) -> None:
        if self.use_adaptive_entropy and state:
            self._coef, self._last_entropy = float(state["entropy_coef"]), float(state["last_world_entropy"])

    def normalized(self, per_token: Tensor, tmask: Tensor, sampled: Tensor, logps: SequenceLogps) -> Tensor:
        """The token losses (0 outside `tmask`) normalized; `sampled` are the samples a mean
        over samples counts (a masked truncated one counts, with 0, as in TRL)."""
        items = sampled.sum().clamp(min=1).to(per_token.dtype)
        tokens = tmask.sum().to(per_token.dtype)
        if self.normalization == "sequence_mean":
            length = tmask.sum(-1).clamp(min=1).to(per_token.dtype)
            return (per_token.sum(-1) / length).sum() / items
        if self.normalization == "sequence_sum":
            return per_token.sum() / items
        if self.normalization == "local_tokens":
            return per_token.sum() / tokens.clamp(min=1)
        if self.normalization == "completion_budget":
            if logps.completion_budget is None:
                raise ValueError(f"{self.name}: needs completion_budget (the maximum number of new tokens)")
            return per_token.sum() / (items * float(logps.completion_budget))
        # TRL's normalizer: the real tokens of the batch on all processes, per process (DDP then
        # averages the processes' gradients: the loss is the mean over every token of the batch).
        summed = logps.across_processes or (lambda t: t)
        total, processes = summed(torch.stack([tokens.detach(), torch.ones_like(tokens)]))
        return per_token.sum() / (total / processes).clamp(min=1)

    def _token_metrics(self, metrics, counts, tmask, ratio, advantage, kl) -> None:
        n_tokens = tmask.sum()
        with torch.no_grad():
            parts = {f"{self.name}/clip_fraction": self.clipped(ratio, advantage), f"{self.name}/ratio": ratio}
            if kl is not None:
                parts[f"{self.name}/kl"] = kl
            for key, value in parts.items():
                metrics[key] = (torch.where(tmask, value.to(ratio.dtype), 0.0).sum() / n_tokens.clamp(min=1)).detach()
                counts[key] = n_tokens


@register_loss("grpo")
@dataclass
class GRPOLoss(GroupPolicyLoss):
    """Group Relative Policy Optimization, GRPO (Shao et al. 2024, DeepSeekMath, eq. 3
    with outcome supervision): the clipped surrogate, each sample's loss the mean over
    its tokens, then the mean over samples.

        loss = -mean_i (1/|y_i|) sum_t [min(w_t A_i, clip(w_t, 1 - epsilon, 1 + epsilon) A_i) - beta KL_t]

    Defaults are the paper's: epsilon 0.2, beta 0.04, no bias correction of the KL (TRL
    1.16's GRPOConfig defaults to beta 0, loss_type "dapo" and use_bias_correction_kl
    true; this is its loss_type "grpo"). beta = 0 needs no reference."""

    trl = "GRPOTrainer loss_type='grpo'"
    paper = (
        "Shao et al. 2024, DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models "
        "(GRPO, eq. 3)"
    )
    formula = (
        "-mean_i (1/|y_i|) sum_t [min(w_t A_i, clip(w_t, 1 - epsilon, 1 + epsilon_high) A_i) - beta KL_t], "
        "A_i = (r_i - mean r) / (std r + std_eps)"
    )


@register_loss("bnpo")
@dataclass
class BNPOLoss(GroupPolicyLoss):
    """The clipped surrogate averaged over every real token of this process's batch
    (TRL's `bnpo`: with one prompt per batch it is GRPO's token mean; named after BNPO,
    Xiao et al. 2025, whose reward normalization it does not include)."""

    trl = "GRPOTrainer loss_type='bnpo'"
    paper = "Xiao et al. 2025, BNPO: Beta Normalization Policy Optimization (TRL's loss_type 'bnpo')"
    formula = "-(sum_{i,t} [min(w_t A_i, clip(w_t) A_i) - beta KL_t]) / (real tokens of the local batch)"
    normalization = "local_tokens"


@register_loss("dr_grpo")
@dataclass
class DrGRPOLoss(GroupPolicyLoss):
    """Dr. GRPO (Liu et al. 2025): GRPO without its two biases. No length normalization:
    the token losses are summed and divided by a constant, the number of samples times
    the maximum number of new tokens (`online.max_new_tokens`); no std normalization of
    the rewards (scale_rewards "none", the paper's default here; TRL's is "group")."""

    trl = "GRPOTrainer loss_type='dr_grpo' (with scale_rewards='none')"
    paper = "Liu et al. 2025, Understanding R1-Zero-Like Training: A Critical Perspective (Dr. GRPO)"
    formula = "-(sum_{i,t} [min(w_t A_i, clip(w_t) A_i) - beta KL_t]) / (samples * max_new_tokens), A_i = r_i - mean r"
    normalization = "completion_budget"

    beta: float = 0.0
    scale_rewards: Literal["group", "batch", "none"] = "none"


@register_loss("dapo")
@dataclass
class DAPOLoss(GroupPolicyLoss):
    """DAPO (Yu et al. 2025): clip-higher (epsilon 0.2 below, epsilon_high 0.28 above),
    no KL, and the token-level loss: the sum over every real token of the batch divided
    by their number, counted on all processes. Its dynamic sampling is
    `online.dynamic_sampling`, its overlong punishment a reward function. TRL's dapo
    defaults to epsilon_high = epsilon; the paper's 0.28 is the default here."""

    trl = "GRPOTrainer loss_type='dapo' (TRL's default; epsilon_high=0.28)"
    paper = "Yu et al. 2025, DAPO: An Open-Source LLM Reinforcement Learning System at Scale"
    formula = "-(sum_{i,t} min(w_t A_i, clip(w_t, 1 - epsilon, 1 + epsilon_high) A_i)) / (real tokens of the batch)"
    normalization = "batch_tokens"

    epsilon_high: float | None = 0.28
    beta: float = 0.0


@register_loss("cispo")
@dataclass
class CISPOLoss(GroupPolicyLoss):
    """CISPO (MiniMax-M1, Chen et al. 2025): the importance weight is truncated and
    detached, and multiplies A log pi, so every token keeps a gradient (none is clipped
    away); the batch's token sum divided by its real tokens. epsilon_high is the
    truncation eps_max: 5.0, ScaleRL's (Khatri et al. 2025) recommendation, as TRL's docs."""

    trl = "GRPOTrainer loss_type='cispo' (epsilon_high is eps_max)"
    paper = "MiniMax 2025, MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention (CISPO)"
    formula = "-(sum_{i,t} stopgrad(min(w_t, epsilon_high)) A_i log pi_t) / (real tokens of the batch)"
    normalization = "batch_tokens"
    detached_weight = True

    epsilon_high: float | None = 5.0
    beta: float = 0.0

    def policy_term(self, ratio, advantage, log_pi, log_ratio, mask, engine_ratio=None):
        return -ratio.clamp(max=self.upper).detach() * advantage * log_pi

    def clipped(self, ratio, advantage):
        return (ratio > self.upper) & (advantage > 0)


@register_loss("sapo")
@dataclass
class SAPOLoss(GroupPolicyLoss):
    """Soft Adaptive Policy Optimization, SAPO (Gao et al. 2025): a smooth gate in place
    of the hard clip, sigmoid(tau (w - 1)) * 4 / tau, with a higher temperature for
    negative advantages; GRPO's aggregation."""

    trl = "GRPOTrainer loss_type='sapo'"
    paper = "Gao et al. 2025, Soft Adaptive Policy Optimization (SAPO)"
    formula = (
        "-mean_i (1/|y_i|) sum_t sigmoid(tau_i (w_t - 1)) (4 / tau_i) A_i, tau_i = tau_pos if A_i > 0 else tau_neg"
    )

    beta: float = 0.0
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("sapo_temperature_pos", "sapo_temperature_neg"):
            setattr(self, key, check_range(self.name, key, getattr(self, key), gt=0))

    def policy_term(self, ratio, advantage, log_pi, log_ratio, mask, engine_ratio=None):
        tau = torch.where(advantage > 0, self.sapo_temperature_pos, self.sapo_temperature_neg).to(ratio.dtype)
        return -torch.sigmoid(tau * (ratio - 1)) * 4 / tau * advantage

    def clipped(self, ratio, advantage):
        return torch.zeros_like(ratio, dtype=torch.bool)


@register_loss("luspo")
@dataclass
class LUSPOLoss(GroupPolicyLoss):
    """Length-Unbiased Sequence Policy Optimization, LUSPO (2026): GSPO's sequence-level
    clipped ratio, each sample's loss the sum over its tokens (scaled by its length
    rather than averaged), then the mean over samples. Sequence level by default, as the
    method requires."""

    trl = "GRPOTrainer loss_type='luspo' (importance_sampling_level='sequence')"
    paper = "LUSPO 2026, Length-Unbiased Sequence Policy Optimization (arXiv 2602.05261)"
    formula = "-mean_i sum_t min(s_i A_i, clip(s_i) A_i), s_i = exp(mean_t log(pi_t / pi_old_t))"
    normalization = "sequence_sum"

    beta: float = 0.0
    importance_sampling_level: Literal["token", "sequence"] = "sequence"


@register_loss("vespo")
@dataclass
class VESPOLoss(GroupPolicyLoss):
    """Variational Sequence-Level Soft Policy Optimization, VESPO (2026): no clip; each
    sequence's gradient A log pi is scaled by a Gamma weight of its importance ratio
    w = exp(sum_t log(pi_t / pi_old_t)) (clamped to [1e-8, e^20]),
    phi(w) = exp(lambda + k log w - lambda w) (phi(1) = 1; k, lambda by the sign of A),
    without gradient; the batch's token sum divided by its real tokens."""

    trl = "GRPOTrainer loss_type='vespo'"
    paper = "VESPO 2026, Variational Sequence-Level Soft Policy Optimization (arXiv 2602.10693)"
    formula = (
        "-(sum_{i,t} stopgrad(phi(w_i)) A_i log pi_t) / (real tokens of the batch), phi(w) = e^(l + k log w - l w)"
    )
    normalization = "batch_tokens"
    detached_weight = True
    engine_ratio_in_weight = True

    beta: float = 0.0
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg"):
            setattr(self, key, check_range(self.name, key, getattr(self, key), ge=0))

    def policy_term(self, ratio, advantage, log_pi, log_ratio, mask, engine_ratio=None):
        return -self.gamma_weights(log_ratio, advantage, mask, engine_ratio) * advantage * log_pi

    @torch.no_grad()
    def gamma_weights(
        self, log_ratio: Tensor, advantage: Tensor, mask: Tensor, engine_ratio: Tensor | None = None
    ) -> Tensor:
        """phi(w); with an engine's token ratio rho, log w gains sum_t log rho_t (clamped to
        [log 1e-8, 20]): w = pi / pi_engine, as TRL's get_gamma_weights."""
        lower = math.log(1e-8)
        total = (log_ratio.clamp(-20.0, 20.0) * mask).sum(-1, keepdim=True)
        if engine_ratio is not None:
            log_rho = torch.where(mask.bool(), engine_ratio, 1.0).log().clamp(lower, 20.0)
            total = total + (log_rho * mask).sum(-1, keepdim=True)
        log_w = total.clamp(lower, 20.0)
        nonneg = advantage >= 0
        k = torch.where(nonneg, self.vespo_k_pos, self.vespo_k_neg).to(log_w.dtype)
        lam = torch.where(nonneg, self.vespo_lambda_pos, self.vespo_lambda_neg).to(log_w.dtype).clamp(min=1e-4)
        phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w))
        return phi.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)

    def clipped(self, ratio, advantage):
        return torch.zeros_like(ratio, dtype=torch.bool)
