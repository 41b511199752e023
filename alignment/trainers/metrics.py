"""Exact metric averages across batches and processes."""

from __future__ import annotations

import torch
from torch import Tensor

from alignment.losses import LossOutput


class MetricAccumulator:
    """Sums `value * weight` and `weight` per metric between two logs. A metric's weight
    is its count in `LossOutput.counts` (e.g. scored pairs for reward_accuracy), else
    the number of real lists in the batch; so the logged value is the exact mean over
    everything seen, not a mean of batch means."""

    def __init__(self) -> None:
        self._sums: dict[str, Tensor] = {}
        self._weights: dict[str, Tensor] = {}

    def add(self, output: LossOutput, mask: Tensor) -> None:
        lists = mask.any(-1).sum().to(torch.float64)
        for name, value in output.metrics.items():
            weight = output.counts.get(name, lists).detach().to(torch.float64)
            value = value.detach().to(torch.float64)
            if name in self._sums:
                self._sums[name] = self._sums[name] + value * weight
                self._weights[name] = self._weights[name] + weight
            else:
                self._sums[name], self._weights[name] = value * weight, weight

    def compute(self, reduce=None) -> dict[str, float]:
        """Means since the last reset. `reduce` sums a 1-D tensor across processes (every
        process must call this, with the same metric names)."""
        names = sorted(self._sums)
        if not names:
            return {}
        packed = torch.stack([self._sums[n] for n in names] + [self._weights[n] for n in names])
        if reduce is not None:
            packed = reduce(packed)
        sums, weights = packed[: len(names)], packed[len(names) :]
        return {n: (s / w).item() for n, s, w in zip(names, sums, weights, strict=True) if w > 0}

    def reset(self) -> None:
        self._sums.clear()
        self._weights.clear()
