"""The implicit-reward metrics every loss reports, in one vocabulary.

r = scale * (policy - reference) (scale * policy without a reference) is the implicit
reward of each completion.

- `rewards/chosen`, `rewards/rejected`: mean r of the best- and worst-scored real item
  of each list (first position on ties); `rewards/margins`: mean of their difference.
  Lists whose scores are all tied have no chosen/rejected and are left out; the count
  of lists used is `counts[...]` for these three.
- `reward_accuracy`: over every ordered pair of real items with s_i > s_j in the
  batch, the fraction with r_i > r_j, a tie counting 1/2. So at policy == reference
  (step 0) it is exactly 0.5, the chance level, rather than 0;
  `counts["reward_accuracy"]` is the number of such pairs.

  A tie is |r_i - r_j| <= scale * TIE_RTOL * (|pi_i| + |ref_i| + |pi_j| + |ref_j|):
  a difference within float32 rounding of the four summed log-probs it comes from.
  Why: a precomputed reference and the policy at step 0 are the same model run on
  batches of different composition, and their sums round differently: under `packed`
  a sequence's attention is computed at its offset in one long row, shared with its
  neighbours; under `shared_prompt` a row's width depends on the batch; and with more
  than one thread the BLAS splits a GEMM by its row count, which changes the rounding
  of every forward (`baseline` on one thread is the only bit-exact case measured). On
  SmolLM2-135M the step-0 log-ratios differ from 0 by up to 4.2e-7 of those
  magnitudes, which an exact comparison would score
  as 0.56 instead of 0.5. Real preferences are far larger: after one DPO step at
  lr 5e-7 the margins are ~1e-5 of them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignment.losses.base import SequenceLogps
from alignment.losses.pairs import best_vs_worst, ordered_pairs

TIE_RTOL = 16 * torch.finfo(torch.float32).eps  # ~1.9e-6, 4.5x the rounding measured under `packed`


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
    size = logps.policy.detach().abs() + (0 if logps.reference is None else logps.reference.detach().abs())
    size = size.to(r.dtype)
    tie = abs(scale) * TIE_RTOL * (size[:, :, None] + size[:, None, :])
    right = (diff > tie).to(r.dtype) + 0.5 * (diff.abs() <= tie).to(r.dtype)
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
