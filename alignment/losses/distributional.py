"""AOT: distributional preference alignment by optimal transport (Melnyk et al. 2024).

Instead of asking every chosen completion to beat its own rejected one, AOT asks the
distribution of chosen rewards to dominate the distribution of rejected rewards
(first-order stochastic dominance). In one dimension the optimal transport plan pairs
the sorted samples, so the loss is DPO's logistic loss on sorted quantities across the
batch: the selected pairs of all lists are pooled, sorted, and matched rank to rank.

- `aot` (paired): u = sort over pairs of (policy_w - policy_l), v = sort of
  (reference_w - reference_l), delta = u - v;
- `aot_unpaired`: delta = sort(r_w) - sort(r_l), r = policy - reference.

loss = mean (1 - eps) L(beta delta) + eps L(-beta delta), eps = label_smoothing. The sort
is over one process's batch, as in TRL."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from alignment.losses.base import LossOutput, PreferenceLoss, SequenceLogps, check_choice, check_range, register_loss
from alignment.losses.metrics import reward_metrics
from alignment.losses.pairs import PAIR_MODES, PairMode, pair_mask
from alignment.losses.pairwise import neg_logsigmoid


@dataclass
class _SortedPairsLoss(PreferenceLoss):
    pairs: PairMode = "best_vs_worst"
    beta: float = 0.1
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        check_choice(self.name, "pairs", self.pairs, PAIR_MODES)
        self.beta = check_range(self.name, "beta", self.beta, gt=0)
        self.label_smoothing = check_range(self.name, "label_smoothing", self.label_smoothing, ge=0, lt=0.5)

    def sorted_delta(self, policy_w: Tensor, policy_l: Tensor, ref_w: Tensor, ref_l: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, logps: SequenceLogps) -> LossOutput:
        logps = logps.masked()
        b, i, j = pair_mask(logps.scores, logps.mask, self.pairs).nonzero(as_tuple=True)
        metrics, counts = reward_metrics(logps, self.beta)
        if len(b) == 0:  # an exact 0 that keeps the graph
            return LossOutput(loss=logps.policy.sum() * 0.0, metrics=metrics, counts=counts)
        delta = self.sorted_delta(logps.policy[b, i], logps.policy[b, j], logps.reference[b, i], logps.reference[b, j])
        eps = self.label_smoothing
        loss = ((1 - eps) * neg_logsigmoid(self.beta * delta) + eps * neg_logsigmoid(-self.beta * delta)).mean()
        return LossOutput(loss=loss, metrics=metrics, counts=counts)


@register_loss("aot")
@dataclass
class AOTLoss(_SortedPairsLoss):
    """AOT, paired (Melnyk et al. 2024).

    The policy's sorted log-prob margins against the reference's sorted margins."""

    trl = "DPOTrainer loss_type='aot'"
    paper = "Melnyk et al. 2024, Distributional Preference Alignment of LLMs via Optimal Transport"
    formula = "mean L(beta delta), delta = sort(policy_w - policy_l) - sort(reference_w - reference_l)"

    def sorted_delta(self, policy_w: Tensor, policy_l: Tensor, ref_w: Tensor, ref_l: Tensor) -> Tensor:
        return torch.sort(policy_w - policy_l).values - torch.sort(ref_w - ref_l).values


@register_loss("aot_unpaired")
@dataclass
class AOTUnpairedLoss(_SortedPairsLoss):
    """AOT, unpaired (Melnyk et al. 2024).

    The sorted chosen log-ratios against the sorted rejected log-ratios, so that no chosen
    completion is tied to one rejected completion."""

    trl = "DPOTrainer loss_type='aot_unpaired'"
    paper = "Melnyk et al. 2024, Distributional Preference Alignment of LLMs via Optimal Transport"
    formula = "mean L(beta delta), delta = sort(r_w) - sort(r_l)"

    def sorted_delta(self, policy_w: Tensor, policy_l: Tensor, ref_w: Tensor, ref_l: Tensor) -> Tensor:
        return torch.sort(policy_w - ref_w).values - torch.sort(policy_l - ref_l).values
