"""Pairwise losses that anchor each completion's own log-ratio, not only the margin:
NCA, BCO, SPPO (hard labels) and APO.

DPO's loss depends on r_w - r_l alone, so both log-probs may fall together; these
losses also push r_w up (or down) and r_l down on their own. Notation: r = policy -
reference per completion, L(x) = softplus(-x), sigma the logistic function. Because
their rewards are not shifted by a term in x alone, f-divergences do not apply (TRL
refuses them too)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from alignment.losses.base import SequenceLogps, check_range, register_loss
from alignment.losses.pairwise import PairwiseLoss, neg_logsigmoid


@dataclass
class AnchoredLoss(PairwiseLoss):
    beta: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        self.beta = check_range(self.name, "beta", self.beta, gt=0)


@register_loss("nca_pair")
@dataclass
class NCAPairLoss(AnchoredLoss):
    """NCA for a pair (Chen et al. 2024, Noise Contrastive Alignment).

    L(beta r_w) + 1/2 L(-beta r_w) + 1/2 L(-beta r_l): the chosen completion's reward
    is pushed up absolutely, not only relative to the rejected one."""

    trl = "DPOTrainer loss_type='nca_pair'"
    paper = "Chen et al. 2024, Noise Contrastive Alignment of Language Models with Explicit Rewards"
    formula = "L(beta r_w) + 0.5 L(-beta r_w) + 0.5 L(-beta r_l)"

    def pair_loss(self, r_w: Tensor, r_l: Tensor, logps: SequenceLogps) -> Tensor:
        chosen, rejected = self.beta * r_w, self.beta * r_l
        return neg_logsigmoid(chosen) + 0.5 * neg_logsigmoid(-chosen) + 0.5 * neg_logsigmoid(-rejected)


@register_loss("bco_pair")
@dataclass
class BCOPairLoss(AnchoredLoss):
    """BCO for a pair (Jung et al. 2024, Binary Classifier Optimization).

    L(beta r_w) + L(-beta r_l): a binary classifier whose logit is the implicit reward,
    chosen = 1 and rejected = 0. The pairwise form (TRL's `bco_pair`) has no reward
    shift delta."""

    trl = "DPOTrainer loss_type='bco_pair'"
    paper = "Jung et al. 2024, Binary Classifier Optimization for Large Language Model Alignment"
    formula = "L(beta r_w) + L(-beta r_l)"

    def pair_loss(self, r_w: Tensor, r_l: Tensor, logps: SequenceLogps) -> Tensor:
        return neg_logsigmoid(self.beta * r_w) + neg_logsigmoid(-self.beta * r_l)


@register_loss("sppo_hard")
@dataclass
class SPPOHardLoss(AnchoredLoss):
    """SPPO with hard labels (Wu et al. 2024, Eq. 4.7).

    P = 1 for the chosen and 0 for the rejected completion: (r_w - 1/(2 beta))^2 + (r_l + 1/(2 beta))^2. The soft-probability SPPO, with the
    judge's P against the previous iterate, is the online `sppo` loss."""

    trl = "DPOTrainer loss_type='sppo_hard'"
    paper = "Wu et al. 2024, Self-Play Preference Optimization for Language Model Alignment"
    formula = "(r_w - 1/(2 beta))^2 + (r_l + 1/(2 beta))^2"

    def pair_loss(self, r_w: Tensor, r_l: Tensor, logps: SequenceLogps) -> Tensor:
        half = 0.5 / self.beta
        return (r_w - half) ** 2 + (r_l + half) ** 2


@register_loss("apo_zero")
@dataclass
class APOZeroLoss(AnchoredLoss):
    """APO-zero (D'Oosterlinck et al. 2024, Anchored Preference Optimization, Eq. 7).

    (1 - sigma(beta r_w)) + sigma(beta r_l): raises the chosen and lowers the rejected
    likelihood. For chosen completions better than the model's own outputs."""

    trl = "DPOTrainer loss_type='apo_zero'"
    paper = "D'Oosterlinck et al. 2024, Anchored Preference Optimization and Contrastive Revisions"
    formula = "1 - sigma(beta r_w) + sigma(beta r_l)"

    def pair_loss(self, r_w: Tensor, r_l: Tensor, logps: SequenceLogps) -> Tensor:
        return 1 - torch.sigmoid(self.beta * r_w) + torch.sigmoid(self.beta * r_l)


@register_loss("apo_down")
@dataclass
class APODownLoss(AnchoredLoss):
    """APO-down (D'Oosterlinck et al. 2024, Eq. 8).

    sigma(beta r_w) + (1 - sigma(beta (r_w - r_l))): lowers both likelihoods, the
    rejected one more. For chosen completions worse than the model's own outputs."""

    trl = "DPOTrainer loss_type='apo_down'"
    paper = "D'Oosterlinck et al. 2024, Anchored Preference Optimization and Contrastive Revisions"
    formula = "sigma(beta r_w) + 1 - sigma(beta (r_w - r_l))"

    def pair_loss(self, r_w: Tensor, r_l: Tensor, logps: SequenceLogps) -> Tensor:
        return torch.sigmoid(self.beta * r_w) + 1 - torch.sigmoid(self.beta * (r_w - r_l))
