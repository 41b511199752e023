"""What a judge says about a prompt's K sampled completions, in the two shapes losses
read: preferences P [B, K, K] (P_ij = P(y_i > y_j), P_ji = 1 - P_ij, diagonal 1/2) and
scalar rewards [B, K]. A preference judge answers the K(K-1)/2 pairs of each prompt; a
reward judge one reward per completion, turned into preferences by Bradley-Terry."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import torch
from torch import Tensor

from alignment.online.judges import Judge, Prompt


def win_rates(preferences: Tensor) -> Tensor:
    """Leave-one-out win rates [B, K]: w_i = 1/(K-1) sum_{j != i} P_ij. For K = 2 these
    are [P(y0 > y1), P(y1 > y0)]."""
    k = preferences.size(-1)
    off_diagonal = preferences.sum(-1) - preferences.diagonal(dim1=-2, dim2=-1)
    return off_diagonal / (k - 1)


def bradley_terry(rewards: Tensor) -> Tensor:
    """P_ij = sigmoid(r_i - r_j) [B, K, K] (the diagonal is 1/2)."""
    return torch.sigmoid(rewards[..., :, None] - rewards[..., None, :])


def preference_matrix(pairs: Tensor, k: int) -> Tensor:
    """[B, K, K] from the answers P(y_i > y_j) to the pairs i < j in `combinations` order
    [B, K(K-1)/2], filled by P_ji = 1 - P_ij and 1/2 on the diagonal."""
    matrix = torch.full((pairs.size(0), k, k), 0.5, dtype=pairs.dtype, device=pairs.device)
    for n, (i, j) in enumerate(combinations(range(k), 2)):
        matrix[:, i, j] = pairs[:, n]
        matrix[:, j, i] = 1 - pairs[:, n]
    return matrix


@dataclass
class Feedback:
    """The judge's answer for B prompts x K completions. `rewards` is None for a
    preference judge."""

    preferences: Tensor
    rewards: Tensor | None = None

    def scores(self, kind: str) -> Tensor:
        """What a loss with `feedback = kind` reads as `scores`: rewards for "rewards" (a
        preference judge's win rates stand in), win rates for "preferences", and the
        judge's own shape for "any"."""
        if kind == "preferences" or self.rewards is None:
            return win_rates(self.preferences)
        return self.rewards

    def penalised(self, missing_eos: Tensor, penalty: float) -> Feedback:
        """A completion cut at max_new_tokens loses `penalty`: from each of its
        preferences (P_ij += penalty * (missing_j - missing_i), clipped to [0, 1], which
        keeps P_ji = 1 - P_ij), or from its reward."""
        if not penalty:
            return self
        missing = missing_eos.to(self.preferences.dtype)
        if self.rewards is not None:
            rewards = self.rewards - penalty * missing
            return Feedback(bradley_terry(rewards), rewards)
        shifted = self.preferences + penalty * (missing[:, None, :] - missing[:, :, None])
        return Feedback(shifted.clamp(0.0, 1.0), None)


def judge_samples(judge: Judge, prompts: Sequence[Prompt], completions: Sequence[Sequence[str]]) -> Feedback:
    """Ask `judge` about each prompt's K completions, in one call: a reward judge for B*K
    rewards, a preference judge for the B*K(K-1)/2 pairs."""
    k = len(completions[0])
    if any(len(c) != k for c in completions):
        raise ValueError("every prompt needs the same number of completions")
    if judge.feedback == "rewards":
        flat_prompts = [p for p in prompts for _ in range(k)]
        rewards = judge.rewards(flat_prompts, [y for row in completions for y in row]).view(len(prompts), k)
        return Feedback(bradley_terry(rewards), rewards)
    pairs = list(combinations(range(k), 2))
    asked = [(row[i], row[j]) for row in completions for i, j in pairs]
    answers = judge([p for p in prompts for _ in pairs], asked).view(len(prompts), len(pairs))
    return Feedback(preference_matrix(answers, k))
