"""Which ordered pairs of a scored list a pairwise loss trains on.

Every function here returns a bool tensor [B, K, K] whose entry [b, i, j] is True when
item i is preferred over item j (s_i > s_j, both real) and the pair is selected. Ties
never form a pair: equal scores carry no preference."""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

PairMode = Literal["best_vs_worst", "all", "adjacent"]
PAIR_MODES: tuple[str, ...] = get_args(PairMode)


def ordered_pairs(scores: Tensor, mask: Tensor) -> Tensor:
    """[b, i, j] = both items real and s_i > s_j."""
    mask = mask.bool()
    real = mask[:, :, None] & mask[:, None, :]
    return real & (scores[:, :, None] > scores[:, None, :])


def _first_where(flags: Tensor) -> Tensor:
    """One-hot [B, K] of the first True position of each row (all False if none)."""
    k = flags.shape[-1]
    pos = torch.arange(k, device=flags.device)
    first = torch.where(flags, pos, k).amin(-1, keepdim=True)
    return pos == first


def best_vs_worst(scores: Tensor, mask: Tensor) -> Tensor:
    """The highest-scored real item against the lowest-scored one; the first position
    wins ties at either end, so each list gives at most one pair."""
    mask = mask.bool()
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    top = torch.where(mask, scores, float("-inf")).amax(-1, keepdim=True)
    bottom = torch.where(mask, scores, float("inf")).amin(-1, keepdim=True)
    best = _first_where(mask & (scores == top))
    worst = _first_where(mask & (scores == bottom))
    # `ordered_pairs` drops the pair when top == bottom (an all-tied list).
    return best[:, :, None] & worst[:, None, :] & ordered_pairs(scores, mask)


def adjacent(scores: Tensor, mask: Tensor) -> Tensor:
    """Each item against the items one distinct score level below it: (i, j) is kept
    when no real item k has s_i > s_k > s_j."""
    better = ordered_pairs(scores, mask)
    step = better.to(torch.float32)
    # (better @ better)[i, j] counts the items strictly between i and j.
    between = torch.bmm(step, step) > 0
    return better & ~between


def pair_mask(scores: Tensor, mask: Tensor, mode: str = "best_vs_worst") -> Tensor:
    """Selected preference pairs [B, K, K] for `mode` (see `PAIR_MODES`)."""
    if mode == "best_vs_worst":
        return best_vs_worst(scores, mask)
    if mode == "all":
        return ordered_pairs(scores, mask)
    if mode == "adjacent":
        return adjacent(scores, mask)
    raise ValueError(f"unknown pair selection {mode!r}; allowed: {', '.join(map(repr, PAIR_MODES))}")
