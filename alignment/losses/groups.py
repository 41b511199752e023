"""Helpers shared by the losses over a prompt's K samples (self-play and policy
gradient): which prompts count, per-item means, and an optional KL weight."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor


def prompt_groups(mask: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """(real items per prompt [B], weight of each prompt [B] (1 with >= 2 real items),
    number of such prompts (>= 1, to divide by))."""
    n = mask.sum(-1).to(dtype)
    weight = (n >= 2).to(dtype)
    return n, weight, weight.sum().clamp(min=1)


def item_mean(value: Tensor, mask: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """Mean of `value` [B, K] over the real items of the counted prompts, and their count."""
    items = mask.to(value.dtype) * weight[:, None]
    count = items.sum()
    return ((items * value).sum() / count.clamp(min=1)).detach(), count


class OptionalKL:
    """A loss whose KL weight (the parameter named `kl_weight`) may be 0: then it does not
    read the reference, and its implicit-reward metrics use scale 1. `reads_with_kl` are
    its inputs with a KL weight > 0."""

    kl_weight: ClassVar[str] = "beta"
    reads_with_kl: ClassVar[frozenset[str]] = frozenset({"reference"})

    @property
    def reads(self) -> frozenset[str]:
        if getattr(self, self.kl_weight) > 0:
            return self.reads_with_kl
        return self.reads_with_kl - {"reference"}

    @property
    def reward_scale(self) -> float:
        weight = getattr(self, self.kl_weight)
        return weight if weight > 0 else 1.0
