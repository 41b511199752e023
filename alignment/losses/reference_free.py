"""Reference-free preference losses: SimPO, CPO, ORPO, and the SFT term.

None of them reads the reference (`needs_reference = False`), so the trainer never runs
a reference forward for them, and the implicit reward is beta times the policy's own
log-prob (length-averaged where the loss averages). Notation: for a pair (w preferred),
logp = summed completion log-prob, avg = logp / |y| (per-token mean),
L(x) = softplus(-x).

The NLL terms of CPO and ORPO, and `sft`, are the token-level mean over the preferred
completions of the batch's selected pairs: sum(-logp_w) / sum(|y_w|), as TRL computes
its cross-entropy."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

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
from alignment.losses.metrics import reward_metrics
from alignment.losses.pairs import PAIR_MODES, PairMode, pair_mask
from alignment.losses.pairwise import neg_logsigmoid

LN2 = 0.6931471805599453


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, accurate near 0 and for large |x| (Maechler 2012)."""
    x = x.clamp(max=-torch.finfo(x.dtype).tiny)
    near_zero = x > -LN2
    # Each branch sees only the inputs it is chosen for: the other branch's gradient at
    # x -> 0 is 0/0, and torch.where would send that NaN back through the discarded side.
    near = torch.log(-torch.expm1(torch.where(near_zero, x, -LN2)))
    far = torch.log1p(-torch.exp(torch.where(near_zero, -LN2, x)))
    return torch.where(near_zero, near, far)


def chosen_token_nll(logps: SequenceLogps, selected: Tensor) -> Tensor:
    """Token-level mean NLL of the preferred item of every selected pair [B, K, K]."""
    count = selected.sum(-1).to(logps.policy.dtype)  # an item that wins several pairs counts once per pair
    tokens = (count * logps.lengths.to(logps.policy.dtype)).sum().clamp(min=1)
    return (-logps.policy * count).sum() / tokens


def per_token(logps: SequenceLogps) -> SequenceLogps:
    """A copy whose `policy` is the per-token mean log-prob and has no reference."""
    return dataclasses.replace(logps, policy=logps.policy / logps.lengths.to(logps.policy.dtype), reference=None)


@dataclass
class ReferenceFreeLoss(PreferenceLoss):
    """Base: selected pairs, a per-pair preference loss of the policy's own (summed or
    averaged) log-probs, plus `nll_weight` times the chosen completions' token NLL."""

    reads = frozenset()
    averages_tokens = False  # whether the preference term sees avg instead of logp

    pairs: PairMode = "best_vs_worst"

    def __post_init__(self) -> None:
        check_choice(self.name, "pairs", self.pairs, PAIR_MODES)

    @property
    def nll_weight(self) -> float:
        return 0.0

    def preference_loss(self, chosen: Tensor, rejected: Tensor) -> Tensor:
        """[B, K, K] preference loss from the two (summed or averaged) log-probs."""
        raise NotImplementedError

    def __call__(self, logps: SequenceLogps) -> LossOutput:
        logps = logps.masked()
        selected = pair_mask(logps.scores, logps.mask, self.pairs)
        seen = per_token(logps) if self.averages_tokens else dataclasses.replace(logps, reference=None)
        p = seen.policy
        k = p.size(-1)
        chosen = torch.where(selected, p[:, :, None].expand(-1, -1, k), 0.0)
        rejected = torch.where(selected, p[:, None, :].expand(-1, k, -1), 0.0)
        n_pairs = selected.sum()
        preference = torch.where(selected, self.preference_loss(chosen, rejected), 0.0).sum() / n_pairs.clamp(min=1)
        metrics, counts = reward_metrics(seen, self.reward_scale)
        metrics["loss/preference"], counts["loss/preference"] = preference.detach(), n_pairs
        loss = preference
        if self.nll_weight:
            nll = chosen_token_nll(logps, selected)
            metrics["loss/nll"], counts["loss/nll"] = nll.detach(), n_pairs
            loss = loss + self.nll_weight * nll
        return LossOutput(loss=loss, metrics=metrics, counts=counts)


@register_loss("simpo")
@dataclass
class SimPOLoss(ReferenceFreeLoss):
    """SimPO: Simple Preference Optimization with a reference-free reward (Meng et al. 2024).

    L(beta avg_w - beta avg_l - gamma): the length-averaged log-prob is the implicit
    reward and gamma a target margin. With label smoothing eps (as TRL's CPOTrainer):
    (1 - eps) L(x) + eps L(-x). The paper tunes beta in [2, 2.5] and gamma/beta near
    0.5; the defaults are beta 2.0, gamma 1.0 (TRL's CPOConfig: beta 0.1,
    simpo_gamma 0.5)."""

    trl = "CPOTrainer loss_type='simpo', cpo_alpha=0 (trl.experimental; simpo_gamma is gamma)"
    paper = "Meng et al. 2024, SimPO: Simple Preference Optimization with a Reference-Free Reward"
    formula = "(1 - eps) L(x) + eps L(-x), x = beta (avg_w - avg_l) - gamma, avg = logp / |y|"
    averages_tokens = True

    beta: float = 2.0
    gamma: float = 1.0
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.beta = check_range(self.name, "beta", self.beta, gt=0)
        self.gamma = check_range(self.name, "gamma", self.gamma, ge=0)
        self.label_smoothing = check_range(self.name, "label_smoothing", self.label_smoothing, ge=0, lt=0.5)

    def preference_loss(self, chosen: Tensor, rejected: Tensor) -> Tensor:
        x = self.beta * (chosen - rejected) - self.gamma
        eps = self.label_smoothing
        return (1 - eps) * neg_logsigmoid(x) + eps * neg_logsigmoid(-x)


@register_loss("cpo")
@dataclass
class CPOLoss(ReferenceFreeLoss):
    """CPO: Contrastive Preference Optimization (Xu et al. 2024).

    L(beta (logp_w - logp_l)) + alpha NLL(w): DPO with the reference dropped (a uniform
    reference prior) plus behaviour cloning of the chosen completions. With label
    smoothing eps: (1 - eps) L(x) + eps L(-x). beta 0.1 and alpha 1 are the paper's (and
    TRL's `beta`, `cpo_alpha`)."""

    trl = "CPOTrainer loss_type='sigmoid' (trl.experimental; cpo_alpha is alpha)"
    paper = "Xu et al. 2024, Contrastive Preference Optimization: Pushing the Boundaries of LLM Performance"
    formula = "(1 - eps) L(x) + eps L(-x) + alpha NLL(w), x = beta (logp_w - logp_l)"

    beta: float = 0.1
    alpha: float = 1.0
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.beta = check_range(self.name, "beta", self.beta, gt=0)
        self.alpha = check_range(self.name, "alpha", self.alpha, ge=0)
        self.label_smoothing = check_range(self.name, "label_smoothing", self.label_smoothing, ge=0, lt=0.5)

    @property
    def nll_weight(self) -> float:
        return self.alpha

    def preference_loss(self, chosen: Tensor, rejected: Tensor) -> Tensor:
        x = self.beta * (chosen - rejected)
        eps = self.label_smoothing
        return (1 - eps) * neg_logsigmoid(x) + eps * neg_logsigmoid(-x)


@register_loss("orpo")
@dataclass
class ORPOLoss(ReferenceFreeLoss):
    """ORPO: Monolithic Preference Optimization without Reference Model (Hong et al. 2024).

    NLL(w) + lambda L(log odds_w - log odds_l), odds = p / (1 - p) of the per-token mean
    probability p = exp(avg): log odds = avg - log(1 - exp(avg)). `beta` is the paper's
    lambda (0.1; TRL calls it beta too)."""

    trl = "ORPOTrainer (trl.experimental; its NLL also covers the prompt tokens)"
    paper = "Hong et al. 2024, ORPO: Monolithic Preference Optimization without Reference Model"
    formula = "NLL(w) + beta L((avg_w - log(1 - e^avg_w)) - (avg_l - log(1 - e^avg_l)))"
    averages_tokens = True

    beta: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        self.beta = check_range(self.name, "beta", self.beta, gt=0)

    @property
    def nll_weight(self) -> float:
        return 1.0

    def preference_loss(self, chosen: Tensor, rejected: Tensor) -> Tensor:
        log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
        return self.beta * neg_logsigmoid(log_odds)


@register_loss("sft")
@dataclass
class SFTLoss(PreferenceLoss):
    """The SFT term: the token-level mean NLL of the preferred completions.

    sum(-logp_w) / sum(|y_w|) over the selected pairs (TRL's `sft` loss type). Combined with `dpo`
    in a loss list it is TRL's `loss_type: [sigmoid, sft]`."""

    trl = "DPOTrainer loss_type='sft'"
    paper = "Ouyang et al. 2022 (supervised fine-tuning on the chosen completions)"
    formula = "sum(-logp_w) / sum(|y_w|) over the selected pairs"
    reads = frozenset()

    pairs: PairMode = "best_vs_worst"

    def __post_init__(self) -> None:
        check_choice(self.name, "pairs", self.pairs, PAIR_MODES)

    def __call__(self, logps: SequenceLogps) -> LossOutput:
        logps = logps.masked()
        selected = pair_mask(logps.scores, logps.mask, self.pairs)
        metrics, counts = reward_metrics(dataclasses.replace(logps, reference=None), 1.0)
        return LossOutput(loss=chosen_token_nll(logps, selected), metrics=metrics, counts=counts)
