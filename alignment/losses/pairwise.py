"""Pairwise losses: a function of the two log-ratios of each selected pair (w preferred).

On lists, `pairs` picks the pairs (see `alignment.losses.pairs`); the loss is the mean
over all selected pairs of the batch, so a list contributes in proportion to its pairs.
Notation: L(x) = softplus(-x) = -log sigmoid(x), computed stably for any |x|;
r = policy - reference per completion, h = r_w - r_l.

Three options apply to every pairwise loss, as in TRL's DPOTrainer:

- `ld_alpha` (LD-DPO, Liu et al. 2024, "Length Desensitization in Direct Preference
  Optimization"): each log-prob of a pair is the sum over the first
  min(|y_w|, |y_l|) tokens plus ld_alpha times the sum over the rest, so the verbose
  tail of the longer completion weighs less. None (the default) is plain DPO
  (ld_alpha = 1); the paper's values are 0.2-0.8. It reads per-token log-probs.
- `wpo` (WPO, Zhou et al. 2024, "WPO: Enhancing RLHF with Weighted Preference
  Optimization", Eq. 2): each pair's loss is multiplied by w(y_w) w(y_l), w(y) =
  exp((1/|y|) sum_t [log pi(y_t) - log sum_v pi(v)^2]) under the current policy, held
  constant: off-policy pairs the policy would not produce count less.
- for the margin losses (`MarginLoss`: functions of h), `f_divergence` (f-DPO, Wang
  et al. 2023, "Beyond Reverse KL"): each log-ratio r becomes f'(exp(r)) before the
  difference, for the reverse KL (f'(u) = log u: DPO), forward KL, Jensen-Shannon or
  alpha divergence; see `alignment.losses.divergences`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
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
from alignment.losses.divergences import F_DIVERGENCES, FDivergence, f_prime
from alignment.losses.metrics import reward_metrics
from alignment.losses.pairs import PAIR_MODES, PairMode, pair_mask


def neg_logsigmoid(x: Tensor) -> Tensor:
    """L(x) = -log sigmoid(x); softplus keeps value and gradient finite at |x| = 1e4."""
    return F.softplus(-x)


def length_desensitized(per_token: Tensor, lengths: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """LD-DPO's log-probs of every ordered pair (i, j), ([B, K, K] for i, [B, K, K] for j):
    the sum of each completion's first min(|y_i|, |y_j|) tokens plus alpha times the
    sum of its remaining tokens. `per_token` is [B, K, T] (0 past each completion's end)."""
    total = per_token.sum(-1)
    shared_len = torch.minimum(lengths[:, :, None], lengths[:, None, :]).clamp(min=1)  # [B, K, K]
    prefix = per_token.cumsum(-1)  # prefix[b, k, t] = sum of tokens 0..t
    index = (shared_len - 1).clamp(max=per_token.size(-1) - 1)
    shared_i = prefix.gather(2, index)  # [b, i, j] = prefix[b, i, m_ij - 1]
    shared_j = prefix.gather(2, index.transpose(1, 2)).transpose(1, 2)  # [b, i, j] = prefix[b, j, m_ij - 1]
    return (
        shared_i + alpha * (total[:, :, None] - shared_i),
        shared_j + alpha * (total[:, None, :] - shared_j),
    )


@dataclass
class PairwiseLoss(PreferenceLoss):
    """Base of pairwise losses: for each selected pair (i preferred over j) the log-ratios
    r_w = r_i and r_l = r_j ([B, K, K], `pair_logratios`), `pair_loss(r_w, r_l)`
    elementwise, mean over the selected pairs of the batch."""

    pairs: PairMode = "best_vs_worst"
    ld_alpha: float | None = None
    wpo: bool = False

    def __post_init__(self) -> None:
        check_choice(self.name, "pairs", self.pairs, PAIR_MODES)
        if self.ld_alpha is not None:
            self.ld_alpha = check_range(self.name, "ld_alpha", self.ld_alpha, ge=0, le=1)
        check_choice(self.name, "wpo", self.wpo, (False, True))

    @property
    def reads(self) -> frozenset[str]:  # type: ignore[override]
        extra = {"wpo_log_weights"} if self.wpo else set()
        if self.ld_alpha is not None:  # LD-DPO splits each completion at the pair's shared length
            extra.add("tokens")
        return frozenset({"reference", *extra})

    def pair_logratios(self, logps: SequenceLogps) -> tuple[Tensor, Tensor]:
        """(r_w, r_l), [B, K, K]: entry [b, i, j] holds the log-ratios of items i and j."""
        if self.ld_alpha is None:
            r = logps.logratios()
            k = r.size(-1)
            return r[:, :, None].expand(-1, -1, k), r[:, None, :].expand(-1, k, -1)
        if logps.tokens is None:
            raise LossParameterError(f"{self.name}: ld_alpha needs per-token log-probs (SequenceLogps.tokens)")
        tokens = logps.tokens
        policy_w, policy_l = length_desensitized(tokens.policy, logps.lengths, self.ld_alpha)
        if tokens.reference is None:
            return policy_w, policy_l
        reference_w, reference_l = length_desensitized(tokens.reference, logps.lengths, self.ld_alpha)
        return policy_w - reference_w, policy_l - reference_l

    def pair_loss(self, r_w: Tensor, r_l: Tensor, logps: SequenceLogps) -> Tensor:
        """[B, K, K] loss of each (i preferred over j) pair."""
        raise NotImplementedError

    def pair_parts(self, r_w: Tensor, r_l: Tensor, logps: SequenceLogps) -> dict[str, Tensor]:
        """Named [B, K, K] quantities reported as metrics (mean over selected pairs)."""
        return {}

    def __call__(self, logps: SequenceLogps) -> LossOutput:
        logps = logps.masked()
        selected = pair_mask(logps.scores, logps.mask, self.pairs)
        r_w, r_l = self.pair_logratios(logps)
        # Unselected entries (padding, ties, reversed pairs) are zeroed before any
        # nonlinearity so they can never feed inf/NaN into the backward pass.
        r_w, r_l = torch.where(selected, r_w, 0.0), torch.where(selected, r_l, 0.0)
        n_pairs = selected.sum()
        denom = n_pairs.clamp(min=1).to(r_w.dtype)
        pair_loss = self.pair_loss(r_w, r_l, logps)
        if self.wpo:
            if logps.wpo_log_weights is None:
                raise LossParameterError(f"{self.name}: wpo needs SequenceLogps.wpo_log_weights")
            log_w = torch.where(logps.mask, logps.wpo_log_weights.detach(), 0.0)
            pair_loss = pair_loss * torch.exp(log_w[:, :, None] + log_w[:, None, :])
        # With no pair the sum is an exact 0 that still has a grad_fn through policy.
        loss = torch.where(selected, pair_loss, 0.0).sum() / denom

        metrics, counts = reward_metrics(logps, self.reward_scale)
        for key, part in self.pair_parts(r_w, r_l, logps).items():
            metrics[key] = (torch.where(selected, part, 0.0).sum() / denom).detach()
            counts[key] = n_pairs
        return LossOutput(loss=loss, metrics=metrics, counts=counts)


@dataclass
class MarginLoss(PairwiseLoss):
    """A pairwise loss of the margin h = s_w - s_l alone (`margin_loss(h)`), where
    s = f'(exp(r)) for the chosen `f_divergence` (s = r for the reverse KL, DPO's), then
    divided by the completion length by losses that normalise (`length_normalized`).

    `f_alpha` is the alpha divergence's alpha in TRL's parameterisation
    (f'(u) = (u^(alpha-1) - 1)/(alpha-1)); the f-DPO paper's alpha is 1 - f_alpha."""

    f_divergence: FDivergence = "reverse_kl"
    f_alpha: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.name, "f_divergence", self.f_divergence, F_DIVERGENCES)
        self.f_alpha = check_range(self.name, "f_alpha", self.f_alpha, gt=0)

    def length_normalized(self) -> bool:
        """Whether s is divided by the completion length (IPO, sigmoid_norm)."""
        return False

    def margin(self, r_w: Tensor, r_l: Tensor, logps: SequenceLogps) -> Tensor:
        s_w, s_l = (f_prime(r, self.f_divergence, self.f_alpha) for r in (r_w, r_l))
        if self.length_normalized():
            lengths = logps.lengths.to(s_w.dtype)
            s_w, s_l = s_w / lengths[:, :, None], s_l / lengths[:, None, :]
        return s_w - s_l

    def margin_loss(self, h: Tensor, logps: SequenceLogps) -> Tensor:
        """[B, K, K] loss of each pair from its margin h."""
        raise NotImplementedError

    def margin_parts(self, h: Tensor, logps: SequenceLogps) -> dict[str, Tensor]:
        return {}

    def pair_loss(self, r_w: Tensor, r_l: Tensor, logps: SequenceLogps) -> Tensor:
        return self.margin_loss(self.margin(r_w, r_l, logps), logps)

    def pair_parts(self, r_w: Tensor, r_l: Tensor, logps: SequenceLogps) -> dict[str, Tensor]:
        return self.margin_parts(self.margin(r_w, r_l, logps), logps)


@register_loss("dpo")
@dataclass
class DPOLoss(MarginLoss):
    """Direct Preference Optimization (Rafailov et al. 2023).

    loss = L(beta h); with label smoothing eps (conservative DPO, for labels flipped
    with rate eps): (1 - eps) L(beta h) + eps L(-beta h)."""

    trl = "DPOTrainer loss_type='sigmoid' (label_smoothing > 0: cDPO)"
    aliases = ("sigmoid",)
    paper = "Rafailov et al. 2023, Direct Preference Optimization: Your Language Model is Secretly a Reward Model"
    formula = "(1 - eps) L(beta h) + eps L(-beta h), L(x) = softplus(-x), eps = label_smoothing"

    beta: float = 0.1
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.beta = check_range(self.name, "beta", self.beta, gt=0)
        self.label_smoothing = check_range(self.name, "label_smoothing", self.label_smoothing, ge=0, lt=0.5)

    def margin_loss(self, h: Tensor, logps: SequenceLogps) -> Tensor:
        eps = self.label_smoothing
        return (1 - eps) * neg_logsigmoid(self.beta * h) + eps * neg_logsigmoid(-self.beta * h)


@register_loss("ipo")
@dataclass
class IPOLoss(MarginLoss):
    """Identity Preference Optimization, IPO (Azar et al. 2023).

    loss = (h' - 1/(2 tau))^2, where h' is h computed from per-token log-ratios (each
    item's log-ratio divided by its completion length) when `length_normalize` (the
    authors' practice), else h. The implicit reward scale is tau."""

    trl = "DPOTrainer loss_type='ipo' (TRL's beta is tau)"
    paper = "Azar et al. 2023, A General Theoretical Paradigm to Understand Learning from Human Preferences"
    formula = "(h' - 1/(2 tau))^2, h' = h on length-normalised log-ratios if length_normalize"

    tau: float = 0.1
    length_normalize: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.tau = check_range(self.name, "tau", self.tau, gt=0)
        check_choice(self.name, "length_normalize", self.length_normalize, (True, False))

    @property
    def reward_scale(self) -> float:
        return self.tau

    def length_normalized(self) -> bool:
        return self.length_normalize

    def margin_loss(self, h: Tensor, logps: SequenceLogps) -> Tensor:
        return (h - 1 / (2 * self.tau)) ** 2


@register_loss("rdpo")
@dataclass
class RobustDPOLoss(MarginLoss):
    """Provably Robust DPO (Chowdhury et al. 2024).

    loss = ((1 - eps) L(beta h) - eps L(-beta h)) / (1 - 2 eps): an unbiased estimate of
    the DPO loss when labels are flipped with rate eps, i.e.
    (1 - eps) rdpo(h) + eps rdpo(-h) = dpo(h). Requires 0 <= eps < 0.5."""

    trl = "DPOTrainer loss_type='robust' (TRL's label_smoothing is epsilon)"
    aliases = ("robust",)
    paper = "Chowdhury et al. 2024, Provably Robust DPO: Aligning Language Models with Noisy Feedback"
    formula = "((1 - eps) L(beta h) - eps L(-beta h)) / (1 - 2 eps), eps = epsilon"

    beta: float = 0.1
    epsilon: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        self.beta = check_range(self.name, "beta", self.beta, gt=0)
        self.epsilon = check_range(self.name, "epsilon", self.epsilon, ge=0, lt=0.5)

    def margin_loss(self, h: Tensor, logps: SequenceLogps) -> Tensor:
        eps = self.epsilon
        return ((1 - eps) * neg_logsigmoid(self.beta * h) - eps * neg_logsigmoid(-self.beta * h)) / (1 - 2 * eps)


@register_loss("rpo")
@dataclass
class RPOLoss(MarginLoss):
    """RPO: DPO plus an SFT (NLL) term on the preferred item (Liu et al. 2024).

    loss = L(beta h) + eta * beta * NLL(w), NLL(w) = -policy_w (summed over tokens), or
    -policy_w / length_w with `nll: mean`. w is the preferred item of each pair.
    Metrics: `loss/preference` = mean L(beta h), `loss/nll` = mean NLL(w) (unscaled)."""

    trl = "DPOTrainer loss_type=['sigmoid', 'sft'] with loss_weights (a token-mean NLL; rpo sums it, times eta * beta)"
    paper = (
        "Liu et al. 2024, Provably Mitigating Overoptimization in RLHF: "
        "Your SFT Loss is Implicitly an Adversarial Regularizer"
    )
    formula = "L(beta h) + eta * beta * NLL(w), NLL(w) = -policy_w (or / length_w with nll: mean)"

    beta: float = 0.1
    eta: float = 0.005
    nll: Literal["sum", "mean"] = "sum"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.beta = check_range(self.name, "beta", self.beta, gt=0)
        self.eta = check_range(self.name, "eta", self.eta, ge=0)
        check_choice(self.name, "nll", self.nll, ("sum", "mean"))

    def _nll_winner(self, h: Tensor, logps: SequenceLogps) -> Tensor:
        nll = -logps.policy
        if self.nll == "mean":
            nll = nll / logps.lengths.to(nll.dtype)
        return nll[:, :, None].expand_as(h)  # row i of a pair is the preferred item

    def margin_loss(self, h: Tensor, logps: SequenceLogps) -> Tensor:
        return neg_logsigmoid(self.beta * h) + self.eta * self.beta * self._nll_winner(h, logps)

    def margin_parts(self, h: Tensor, logps: SequenceLogps) -> dict[str, Tensor]:
        return {"loss/preference": neg_logsigmoid(self.beta * h), "loss/nll": self._nll_winner(h, logps)}


@register_loss("hinge")
@dataclass
class HingeLoss(MarginLoss):
    """SLiC hinge loss (Zhao et al. 2023) on the DPO log-ratio margin.

    loss = max(0, 1 - beta h)."""

    trl = "DPOTrainer loss_type='hinge'"
    paper = "Zhao et al. 2023, SLiC-HF: Sequence Likelihood Calibration with Human Feedback"
    formula = "max(0, 1 - beta h)"

    beta: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        self.beta = check_range(self.name, "beta", self.beta, gt=0)

    def margin_loss(self, h: Tensor, logps: SequenceLogps) -> Tensor:
        return torch.relu(1 - self.beta * h)
