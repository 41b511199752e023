"""The implicit-reward metrics every loss reports, in one vocabulary.

r = scale * (policy - reference) (scale * policy without a reference) is the implicit
reward of each completion.

- `rewards/chosen`, `rewards/rejected`: mean r of the best- and worst-scored real item
  of each list (first position on ties); `rewards/margins`: mean of their difference.
  Lists whose scores are all tied have no chosen/rejected and are left out; the count
  of lists used is `counts[...]` for these three.
- `reward_accuracy`: over every ordered pair of real items with s_i > s_j in the
  batch, the fraction with r_i > r_j, an exact tie r_i == r_j counting 1/2. So at
  policy == reference (step 0) it is exactly 0.5, the chance level, rather than 0;
  `counts["reward_accuracy"]` is the number of such pairs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignment.losses.base import SequenceLogps
from alignment.losses.pairs import best_vs_worst, ordered_pairs


def _safe_mean(total: Tensor, count: Tensor) -> Tensor:
    # 0 for an empty set; its count of 0 tells accumulators to ignore it.
    return total / count.clamp(min=1).to(total.dtype)


@torch.no_grad()
def reward_metrics(logps: SequenceLogps, scale: float) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(metrics, counts) for the shared reward vocabulary; all values detached."""
    logps = logps.masked()
    r = scale * logps.logratios().detach()
    r = r.to(torch.promote_types(r.dtype, torch.float32))

    ends = best_vs_worst(logps.scores, logps.mask)  # [B, K, K], at most one pair per list
    has_pair = ends.flatten(1).any(-1)
    chosen = (ends.any(-1) * r).sum(-1)  # the row of the pair is the chosen item
    rejected = (ends.any(-2) * r).sum(-1)
    lists = has_pair.sum()

    pairs = ordered_pairs(logps.scores, logps.mask)
    diff = r[:, :, None] - r[:, None, :]
    right = (diff > 0).to(r.dtype) + 0.5 * (diff == 0).to(r.dtype)
    n_pairs = pairs.sum()

    metrics = {
        "rewards/chosen": _safe_mean((chosen * has_pair).sum(), lists),
        "rewards/rejected": _safe_mean((rejected * has_pair).sum(), lists),
        "rewards/margins": _safe_mean(((chosen - rejected) * has_pair).sum(), lists),
        "reward_accuracy": _safe_mean((right * pairs).sum(), n_pairs),
    }
    counts = {
        "rewards/chosen": lists,
        "rewards/rejected": lists,
        "rewards/margins": lists,
        "reward_accuracy": n_pairs,
    }
    return metrics, counts
