"""Model soups (SALSA, Chegini et al. 2024, "Soup-based Alignment Learning for Stronger
Adaptation in RLHF"): the parameter-wise weighted average of checkpoints that share one
architecture, theta = sum_i w_i theta_i with sum_i w_i = 1."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from alignment.schema import ConfigError


class SoupError(ConfigError):
    """The checkpoints cannot be averaged: different architectures or integer buffers.
    A recipe's problem (`reference.models`), so the command line reports it as a config error."""


def _check_member(first: Mapping[str, Tensor], member: Mapping[str, Tensor], names: tuple[str, str]) -> None:
    if list(member) != list(first):
        differ = sorted(set(first) ^ set(member))[:5]
        raise SoupError(f"{names[1]} does not have the architecture of {names[0]}: tensors differ ({differ})")
    for key, value in member.items():
        if value.shape != first[key].shape:
            raise SoupError(
                f"{key}: shape {list(value.shape)} in {names[1]} but {list(first[key].shape)} in {names[0]}"
            )
        if not value.is_floating_point() and not torch.equal(value, first[key]):
            raise SoupError(
                f"{key}: the integer buffer differs between {names[0]} and {names[1]}; it cannot be averaged"
            )


def average_state_dicts(
    states: Sequence[Mapping[str, Tensor]], weights: Sequence[float], names: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """sum_i w_i * state_i for floating-point tensors (accumulated in float64, cast back
    to each tensor's dtype); integer and boolean tensors must be equal in every member."""
    names = list(names or [f"checkpoint {i}" for i in range(len(states))])
    if len(states) != len(weights) or not states:
        raise SoupError(f"{len(states)} checkpoints for {len(weights)} weights")
    total = _Accumulator(states[0], weights[0])
    for state, weight, name in zip(states[1:], weights[1:], names[1:], strict=True):
        _check_member(states[0], state, (names[0], name))
        total.add(state, weight)
    return total.result()


class _Accumulator:
    def __init__(self, first: Mapping[str, Tensor], weight: float) -> None:
        self.dtypes = {k: v.dtype for k, v in first.items()}
        self.sums = {k: weight * v.double() if v.is_floating_point() else v.clone() for k, v in first.items()}

    def add(self, state: Mapping[str, Tensor], weight: float) -> None:
        for key, value in state.items():
            if value.is_floating_point():
                self.sums[key] += weight * value.double()

    def result(self) -> dict[str, Tensor]:
        return {k: v.to(self.dtypes[k]) for k, v in self.sums.items()}


def load_soup(load: Callable[[str], nn.Module], paths: Sequence[str], weights: Sequence[float]) -> nn.Module:
    """The first member, holding the weighted average of every member's weights. Members
    are loaded one at a time: at most one more copy than the soup is in memory."""
    soup = load(paths[0])
    first = soup.state_dict()
    total = _Accumulator(first, weights[0])
    for path, weight in zip(paths[1:], weights[1:], strict=True):
        member = load(path)
        state = member.state_dict()
        _check_member(first, state, (paths[0], path))
        total.add(state, weight)
        del member, state
    soup.load_state_dict(total.result())
    return soup
