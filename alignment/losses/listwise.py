"""Listwise losses: the whole scored list at once (they ignore `pairs`).

s = beta * (policy - reference) is the policy's implicit ranking score of each item and
the scores psi are the labels. Padded items never enter: they are excluded from pairs,
from ranks, from the tails of the Plackett-Luce product and from every count."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from alignment.losses.base import LossOutput, PreferenceLoss, SequenceLogps, check_range, register_loss
from alignment.losses.metrics import reward_metrics
from alignment.losses.pairs import ordered_pairs
from alignment.losses.pairwise import neg_logsigmoid


def current_ranks(s: Tensor, mask: Tensor) -> Tensor:
    """1-based rank of each item among its list's real items by s (descending, the
    earlier position first on ties). No gradient: ranks are piecewise constant."""
    s = s.detach()
    pos = torch.arange(s.shape[-1], device=s.device)
    # ahead[b, i, j]: real item j is ranked before item i
    earlier = pos[None, :] < pos[:, None]
    ahead = (s[:, None, :] > s[:, :, None]) | ((s[:, None, :] == s[:, :, None]) & earlier)
    return 1 + (ahead & mask[:, None, :]).sum(-1)


@register_loss("lipo")
@dataclass
class LiPOLoss(PreferenceLoss):
    """LiPO-lambda: lambda-weighted pairwise logistic loss over the list (Liu et al. 2024).

    s = beta (policy - reference). For every pair of real items with psi_i > psi_j:
    weight_ij * L(s_i - s_j), L(x) = softplus(-x), with the LambdaMART weight

        weight_ij = n * |G_i - G_j| * |1/D_i - 1/D_j|,  G = 2^psi - 1,  D = log2(1 + rank),

    rank = 1-based rank of the item among the list's real items by the current s
    (descending, ties by position), computed without gradient. The loss is the mean of
    weight * L over all such pairs of the batch.

    Normalisation (n), following TF-Ranking, the reference implementation of the
    LambdaLoss weights (Wang et al. 2018) that LiPO-lambda adopts:
    - its pairwise losses multiply lambda weights by the list size, "a heuristic to
      scale it up to the same magnitude as standard pairwise loss"
      (`_PairwiseLoss._compute_unreduced_loss_impl`); TF-Ranking uses the padded list
      size, we use n = the number of *real* items, so padding never changes the loss;
    - no max-DCG normalisation of the gain (`DCGLambdaWeight(normalized=False)`) and the
      absolute-rank LambdaMART discount |1/D_i - 1/D_j|, as the LiPO formula writes;
    - its default reduction (SUM_BY_NONZERO_WEIGHTS) averages over pairs with nonzero
      weight, which here are exactly the valid pairs: the mean over pairs above.

    Gains grow as 2^psi: scores are expected to be small grades (ratings, ranks), as in
    the paper; large reward-model scores would give very large weights."""

    paper = "Liu et al. 2024, LiPO: Listwise Preference Optimization through Learning-to-Rank"
    formula = "mean over psi_i > psi_j of n |G_i - G_j| |1/D_i - 1/D_j| L(s_i - s_j), G = 2^psi - 1, D = log2(1 + rank)"

    beta: float = 0.05

    def __post_init__(self) -> None:
        self.beta = check_range(self.name, "beta", self.beta, gt=0)

    def __call__(self, logps: SequenceLogps) -> LossOutput:
        logps = logps.masked()
        mask, psi = logps.mask, logps.scores
        s = self.beta * logps.logratios()
        selected = ordered_pairs(psi, mask)

        with torch.no_grad():
            gain = torch.pow(2.0, psi.to(s.dtype)) - 1
            inv_discount = 1 / torch.log2(1 + current_ranks(s, mask).to(s.dtype))
            n_real = mask.sum(-1).to(s.dtype)[:, None, None]
            weight = (
                n_real
                * (gain[:, :, None] - gain[:, None, :]).abs()
                * (inv_discount[:, :, None] - inv_discount[:, None, :]).abs()
            )

        margin = torch.where(selected, s[:, :, None] - s[:, None, :], 0.0)
        n_pairs = selected.sum()
        per_pair = torch.where(selected, weight * neg_logsigmoid(margin), 0.0)
        loss = per_pair.sum() / n_pairs.clamp(min=1).to(s.dtype)

        metrics, counts = reward_metrics(logps, self.reward_scale)
        return LossOutput(loss=loss, metrics=metrics, counts=counts)


@register_loss("listmle")
@dataclass
class ListMLELoss(PreferenceLoss):
    """ListMLE: Plackett-Luce likelihood of the labelled order (DPO-PL / PRO).

    Xia et al. 2008 (ListMLE); for preferences, DPO-PL (Rafailov et al. 2023, appendix)
    and PRO (Song et al. 2024).

    s = beta (policy - reference). With the real items sorted by score, best first
    (ties by position), the per-list loss is the Plackett-Luce negative log-likelihood
    -sum_k [s_(k) - logsumexp_{j >= k} s_(j)]; the loss is its mean over the lists with
    at least two real items. For K = 2 it equals DPO."""

    paper = "Plackett-Luce / ListMLE (Xia et al. 2008); DPO-PL (Rafailov et al. 2023), PRO (Song et al. 2024)"
    formula = "-sum_k [s_(k) - logsumexp_{j >= k} s_(j)], s = beta (policy - reference), items in label order"

    beta: float = 0.1

    def __post_init__(self) -> None:
        self.beta = check_range(self.name, "beta", self.beta, gt=0)

    def __call__(self, logps: SequenceLogps) -> LossOutput:
        logps = logps.masked()
        per_list, lists = plackett_luce_nll(self.beta * logps.logratios(), logps.scores, logps.mask)
        loss = per_list.sum() / lists.sum().clamp(min=1).to(per_list.dtype)
        metrics, counts = reward_metrics(logps, self.reward_scale)
        return LossOutput(loss=loss, metrics=metrics, counts=counts)


def plackett_luce_nll(s: Tensor, scores: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-list Plackett-Luce negative log-likelihood of the labelled order of the real
    items, -sum_k [s_(k) - logsumexp_{j >= k} s_(j)] (best first, ties by position), and
    which lists count (>= 2 real items). Inputs are masked (padding holds finite values)."""
    b, k = s.shape
    # Stable descending sort keeps position order on ties; padding sorts last.
    key = torch.where(mask, scores.to(torch.promote_types(scores.dtype, torch.float32)), float("-inf"))
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices
    s_sorted, real = s.gather(-1, order), mask.gather(-1, order)

    pos = torch.arange(k, device=s.device)
    tail = pos[None, :] >= pos[:, None]  # [k, j]: j at or after k
    # The diagonal is always kept so a padded row still has one finite entry:
    # an all -inf logsumexp would send NaN into the backward pass.
    keep = tail & (real[:, None, :] | (pos[None, :] == pos[:, None]))
    tails = torch.where(keep, s_sorted[:, None, :].expand(b, k, k), float("-inf"))
    terms = torch.where(real, s_sorted - torch.logsumexp(tails, dim=-1), 0.0)

    lists = mask.sum(-1) >= 2
    return torch.where(lists, -terms.sum(-1), 0.0), lists
