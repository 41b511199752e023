"""Pair selection on scored lists, checked against hand-written pair sets."""

from __future__ import annotations

import pytest
import torch

from alignment.losses.pairs import PAIR_MODES, pair_mask


def pairs_of(selected: torch.Tensor, b: int = 0) -> set[tuple[int, int]]:
    return {(int(i), int(j)) for i, j in selected[b].nonzero().tolist()}


# Levels 3 > 1 > 0 with ties at 3 (items 0, 2) and 1 (items 1, 4); item 5 is padding
# with the highest score of all, which must be ignored.
SCORES = torch.tensor([[3.0, 1.0, 3.0, 0.0, 1.0, 9.0]])
MASK = torch.tensor([[True, True, True, True, True, False]])


def test_all_pairs_with_ties():
    expected = {(0, 1), (0, 3), (0, 4), (2, 1), (2, 3), (2, 4), (1, 3), (4, 3)}
    assert pairs_of(pair_mask(SCORES, MASK, "all")) == expected


def test_adjacent_pairs_with_ties():
    # Each item against the next lower distinct level only: 3 -> 1 -> 0.
    expected = {(0, 1), (0, 4), (2, 1), (2, 4), (1, 3), (4, 3)}
    assert pairs_of(pair_mask(SCORES, MASK, "adjacent")) == expected


def test_best_vs_worst_first_position_wins_ties():
    # Best: items 0 and 2 tie at 3 -> item 0; worst: item 3 (score 0).
    assert pairs_of(pair_mask(SCORES, MASK)) == {(0, 3)}
    scores = torch.tensor([[0.0, 2.0, 0.0, 2.0]])
    assert pairs_of(pair_mask(scores, torch.ones(1, 4, dtype=torch.bool), "best_vs_worst")) == {(1, 0)}


def test_adjacent_without_ties_is_consecutive_neighbours():
    scores = torch.tensor([[0.5, 4.0, 2.0, -1.0]])  # order: 1, 2, 0, 3
    selected = pair_mask(scores, torch.ones(1, 4, dtype=torch.bool), "adjacent")
    assert pairs_of(selected) == {(1, 2), (2, 0), (0, 3)}


@pytest.mark.parametrize("mode", PAIR_MODES)
def test_ties_and_padding_never_form_pairs(mode):
    scores = torch.tensor([[1.0, 1.0, 1.0], [2.0, 5.0, 2.0], [7.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, True], [True, False, False]])
    assert not pair_mask(scores, mask, mode).any()


def test_batch_rows_are_independent():
    scores = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 1.0]])
    selected = pair_mask(scores, torch.ones(2, 3, dtype=torch.bool), "all")
    assert pairs_of(selected, 0) == {(0, 1), (2, 0), (2, 1)}
    assert pairs_of(selected, 1) == {(2, 0), (2, 1)}


def test_unknown_mode_lists_allowed():
    with pytest.raises(ValueError, match="best_vs_worst.*all.*adjacent"):
        pair_mask(SCORES, MASK, "every")
