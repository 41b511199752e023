"""Pairwise losses: a function of h = r_w - r_l for each selected pair (w preferred).

On lists, `pairs` picks the pairs (see `alignment.losses.pairs`); the loss is the mean
over all selected pairs of the batch, so a list contributes in proportion to its pairs.
Notation: L(x) = softplus(-x) = -log sigmoid(x), computed stably for any |x|."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
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


def neg_logsigmoid(x: Tensor) -> Tensor:
    """L(x) = -log sigmoid(x); softplus keeps value and gradient finite at |x| = 1e4."""
    return F.softplus(-x)


@dataclass
class PairwiseLoss(PreferenceLoss):
    """Base of pairwise losses: per-item log-ratios r (`item_logratios`), h[b, i, j] =
    r_i - r_j, `pair_loss(h)` elementwise, mean over the selected pairs of the batch."""

    pairs: PairMode = "best_vs_worst"

    def __post_init__(self) -> None:
        check_choice(self.name, "pairs", self.pairs, PAIR_MODES)

    def item_logratios(self, logps: SequenceLogps) -> Tensor:
        """[B, K] per-item quantity whose differences the loss sees."""
        return logps.logratios()

    def pair_loss(self, h: Tensor, logps: SequenceLogps) -> Tensor:
        """[B, K, K] loss of each (i preferred over j) pair from h = r_i - r_j."""
        raise NotImplementedError

    def pair_parts(self, h: Tensor, logps: SequenceLogps) -> dict[str, Tensor]:
        """Named [B, K, K] quantities reported as metrics (mean over selected pairs)."""
        return {}

    def __call__(self, logps: SequenceLogps) -> LossOutput:
        logps = logps.masked()
        selected = pair_mask(logps.scores, logps.mask, self.pairs)
        r = self.item_logratios(logps)
        # Unselected entries (padding, ties, reversed pairs) are zeroed before any
        # nonlinearity so they can never feed inf/NaN into the backward pass.
        h = torch.where(selected, r[:, :, None] - r[:, None, :], 0.0)
        n_pairs = selected.sum()
        denom = n_pairs.clamp(min=1).to(h.dtype)
        # With no pair the sum is an exact 0 that still has a grad_fn through policy.
        loss = torch.where(selected, self.pair_loss(h, logps), 0.0).sum() / denom

        metrics, counts = reward_metrics(logps, self.reward_scale)
        for key, part in self.pair_parts(h, logps).items():
            metrics[key] = (torch.where(selected, part, 0.0).sum() / denom).detach()
            counts[key] = n_pairs
        return LossOutput(loss=loss, metrics=metrics, counts=counts)


@register_loss("dpo")
@dataclass
class DPOLoss(PairwiseLoss):
    """Direct Preference Optimization (Rafailov et al. 2023).

    loss = L(beta h); with label smoothing eps (conservative DPO, for labels flipped
    with rate eps): (1 - eps) L(beta h) + eps L(-beta h)."""

    paper = "Rafailov et al. 2023, Direct Preference Optimization: Your Language Model is Secretly a Reward Model"
    formula = "(1 - eps) L(beta h) + eps L(-beta h), L(x) = softplus(-x), eps = label_smoothing"

    beta: float = 0.1
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.beta = check_range(self.name, "beta", self.beta, gt=0)
        self.label_smoothing = check_range(self.name, "label_smoothing", self.label_smoothing, ge=0, lt=0.5)

    def pair_loss(self, h: Tensor, logps: SequenceLogps) -> Tensor:
        eps = self.label_smoothing
        return (1 - eps) * neg_logsigmoid(self.beta * h) + eps * neg_logsigmoid(-self.beta * h)


@register_loss("ipo")
@dataclass
class IPOLoss(PairwiseLoss):
    """Identity Preference Optimization, IPO (Azar et al. 2023).

    loss = (h' - 1/(2 tau))^2, where h' is h computed from per-token log-ratios (each
    item's log-ratio divided by its completion length) when `length_normalize` (the
    authors' practice), else h. The implicit reward scale is tau."""

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

    def item_logratios(self, logps: SequenceLogps) -> Tensor:
        r = logps.logratios()
        return r / logps.lengths.to(r.dtype) if self.length_normalize else r

    def pair_loss(self, h: Tensor, logps: SequenceLogps) -> Tensor:
        return (h - 1 / (2 * self.tau)) ** 2


@register_loss("rdpo")
@dataclass
class RobustDPOLoss(PairwiseLoss):
    """Provably Robust DPO (Chowdhury et al. 2024).

    loss = ((1 - eps) L(beta h) - eps L(-beta h)) / (1 - 2 eps): an unbiased estimate of
    the DPO loss when labels are flipped with rate eps, i.e.
    (1 - eps) rdpo(h) + eps rdpo(-h) = dpo(h). Requires 0 <= eps < 0.5."""

    paper = "Chowdhury et al. 2024, Provably Robust DPO: Aligning Language Models with Noisy Feedback"
    formula = "((1 - eps) L(beta h) - eps L(-beta h)) / (1 - 2 eps), eps = epsilon"

    beta: float = 0.1
    epsilon: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        self.beta = check_range(self.name, "beta", self.beta, gt=0)
        self.epsilon = check_range(self.name, "epsilon", self.epsilon, ge=0, lt=0.5)

    def pair_loss(self, h: Tensor, logps: SequenceLogps) -> Tensor:
        eps = self.epsilon
        return ((1 - eps) * neg_logsigmoid(self.beta * h) - eps * neg_logsigmoid(-self.beta * h)) / (1 - 2 * eps)


@register_loss("rpo")
@dataclass
class RPOLoss(PairwiseLoss):
    """RPO: DPO plus an SFT (NLL) term on the preferred item (Liu et al. 2024).

    loss = L(beta h) + eta * beta * NLL(w), NLL(w) = -policy_w (summed over tokens), or
    -policy_w / length_w with `nll: mean`. w is the preferred item of each pair.
    Metrics: `loss/preference` = mean L(beta h), `loss/nll` = mean NLL(w) (unscaled)."""

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

    def pair_loss(self, h: Tensor, logps: SequenceLogps) -> Tensor:
        return neg_logsigmoid(self.beta * h) + self.eta * self.beta * self._nll_winner(h, logps)

    def pair_parts(self, h: Tensor, logps: SequenceLogps) -> dict[str, Tensor]:
        return {"loss/preference": neg_logsigmoid(self.beta * h), "loss/nll": self._nll_winner(h, logps)}


@register_loss("hinge")
@dataclass
class HingeLoss(PairwiseLoss):
    """SLiC hinge loss (Zhao et al. 2023) on the DPO log-ratio margin.

    loss = max(0, 1 - beta h)."""

    paper = "Zhao et al. 2023, SLiC-HF: Sequence Likelihood Calibration with Human Feedback"
    formula = "max(0, 1 - beta h)"

    beta: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        self.beta = check_range(self.name, "beta", self.beta, gt=0)

    def pair_loss(self, h: Tensor, logps: SequenceLogps) -> Tensor:
        return torch.relu(1 - self.beta * h)
