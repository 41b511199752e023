"""KTO: Kahneman-Tversky Optimization (Ethayarajh et al. 2024), on unpaired data.

Each completion is only labelled desirable or undesirable; there is no pair. Its
implicit reward r = policy - reference is compared with a reference point z_0, the
KL(pi || pi_ref) of the batch, estimated from mismatched prompt-completion pairs: each
completion's log-ratio under another list's prompt, averaged, clamped at 0 and held
constant (no gradient), as in the paper and TRL. The trainer computes it
(`SequenceLogps.kl_baseline`, averaged over processes).

Which items are desirable: a single-completion list (an unpaired row) is desirable when
its score is 1 (its label) and undesirable when 0. A list of K >= 2 (paired or ranked
data) gives two unpaired items, as TRL's `unpair_preference_dataset` does: its
best-scored item is desirable and its worst undesirable; items in between and all-tied
lists are not used."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from alignment.losses.base import (
    LossOutput,
    LossParameterError,
    PreferenceLoss,
    SequenceLogps,
    check_range,
    register_loss,
)
from alignment.losses.metrics import reward_metrics
from alignment.losses.pairs import best_vs_worst


def desirability(scores: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(desirable, undesirable) bool [B, K] by the rule in the module docstring."""
    mask = mask.bool()
    single = mask.sum(-1, keepdim=True) == 1
    ends = best_vs_worst(scores, mask)  # [B, K, K]: at most one (best, worst) pair per list
    desirable = torch.where(single, mask & (scores == 1), ends.any(-1))
    undesirable = torch.where(single, mask & (scores == 0), ends.any(-2))
    return desirable, undesirable


@register_loss("kto")
@dataclass
class KTOLoss(PreferenceLoss):
    """Kahneman-Tversky Optimization, KTO (Ethayarajh et al. 2024, Eq. 7).

    z_0 = max(0, mean of r over mismatched (prompt, completion) pairs), no gradient;
    desirable: w_D (1 - sigma(beta (r - z_0))), undesirable: w_U (1 - sigma(beta (z_0 - r))),
    mean over the batch's labelled items. beta 0.1 and weights 1 are the paper's and
    TRL's; with unbalanced data the paper keeps w_D n_D / (w_U n_U) in [1, 4/3]."""

    trl = "KTOTrainer loss_type='kto'"
    paper = "Ethayarajh et al. 2024, KTO: Model Alignment as Prospect Theoretic Optimization"
    formula = "w_D (1 - sigma(beta (r - z0))) | w_U (1 - sigma(beta (z0 - r))), z0 = max(0, KL estimate)"
    reads = frozenset({"reference", "kl_baseline"})
    accepts_unpaired = True

    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    def __post_init__(self) -> None:
        self.beta = check_range(self.name, "beta", self.beta, gt=0)
        self.desirable_weight = check_range(self.name, "desirable_weight", self.desirable_weight, gt=0)
        self.undesirable_weight = check_range(self.name, "undesirable_weight", self.undesirable_weight, gt=0)

    def __call__(self, logps: SequenceLogps) -> LossOutput:
        if logps.kl_baseline is None:
            raise LossParameterError("kto needs the KL baseline (SequenceLogps.kl_baseline) from mismatched pairs")
        logps = logps.masked()
        desirable, undesirable = desirability(logps.scores, logps.mask)
        z0 = logps.kl_baseline.detach().clamp(min=0)
        r = logps.logratios()
        desirable_term = self.desirable_weight * (1 - torch.sigmoid(self.beta * (r - z0)))
        undesirable_term = self.undesirable_weight * (1 - torch.sigmoid(self.beta * (z0 - r)))
        per_item = torch.where(desirable, desirable_term, torch.where(undesirable, undesirable_term, 0.0))
        n_items = (desirable | undesirable).sum()
        loss = per_item.sum() / n_items.clamp(min=1)
        metrics, counts = reward_metrics(logps, self.beta)
        metrics["kl"] = z0.detach().to(metrics["reward_accuracy"].dtype)
        counts["kl"] = torch.ones((), dtype=torch.long)
        return LossOutput(loss=loss, metrics=metrics, counts=counts)
