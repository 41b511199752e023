"""What a judge says about a prompt's K sampled completions, in the two shapes losses
read: preferences P [B, K, K] (P_ij = P(y_i > y_j), P_ji = 1 - P_ij, diagonal 1/2) and
scalar rewards [B, K]. A preference judge answers the K(K-1)/2 pairs of each prompt; a
reward judge one reward per completion, turned into preferences by Bradley-Terry."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import combinations
from typing import Any

import torch
from torch import Tensor

from alignment.online.judges import Judge, Prompt, RewardJudge, RewardPanel


def win_rates(preferences: Tensor, scorable: Tensor | None = None) -> Tensor:
    """Leave-one-out win rates [B, K]: w_i = 1/(K-1) sum_{j != i} P_ij. For K = 2 these
    are [P(y0 > y1), P(y1 > y0)]. With `scorable` [B, K], only the judged j count
    (1/2 for an item with no judged other)."""
    if scorable is None:
        k = preferences.size(-1)
        off_diagonal = preferences.sum(-1) - preferences.diagonal(dim1=-2, dim2=-1)
        return off_diagonal / (k - 1)
    others = scorable[..., None, :] & ~torch.eye(preferences.size(-1), dtype=torch.bool, device=preferences.device)
    count = others.sum(-1)
    total = torch.where(others, preferences, 0.0).sum(-1)
    return torch.where(count > 0, total / count.clamp(min=1), 0.5)


def nanstd(values: Tensor, dim: int, keepdim: bool = False) -> Tensor:
    """The unbiased std over `dim` of the values that are not NaN (NaN with fewer than two),
    as TRL's `nanstd`."""
    mean = values.nanmean(dim, keepdim=True)
    count = (~values.isnan()).sum(dim, keepdim=True).to(values.dtype)
    variance = ((values - mean) ** 2).nanmean(dim, keepdim=True) * count / (count - 1)
    std = torch.where(count > 1, variance.sqrt(), math.nan)
    return std if keepdim else std.squeeze(dim)


def aggregate_rewards(per_function: Tensor, weights: Tensor, how: str, eps: float = 1e-4) -> Tensor:
    """Several reward functions' rewards [B, K, F] (NaN: the function answered None) as
    one reward per completion [B, K] (NaN where no function answered), as TRL 1.16's
    `multi_objective_aggregation`:

        sum_then_normalize:  r = sum_f w_f r_f
        normalize_then_sum:  r = sum_f w_f (r_f - mean_K r_f) / (std_K r_f + eps)   (GDPO)

    sums skipping NaN, means and unbiased stds over each prompt's K completions that the
    function scored. The loss then normalizes r within the group (or the batch) itself."""
    w = weights.to(per_function)
    if how == "normalize_then_sum":
        mean = per_function.nanmean(1, keepdim=True)
        per_function = (per_function - mean) / (nanstd(per_function, 1, keepdim=True) + eps)
    elif how != "sum_then_normalize":
        raise ValueError(f"multi_objective_aggregation: {how!r}; allowed: sum_then_normalize, normalize_then_sum")
    total = (per_function * w).nansum(-1)
    return torch.where(per_function.isnan().all(-1), math.nan, total)


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
    preference judge. `scorable` [B, K] is false where no reward function answered (the
    item is left out of the loss; its reward and preferences hold placeholders).
    `per_function` [B, K, F] holds each reward function's own rewards (NaN: None) when
    several are weighed (`weights` [F], `names`)."""

    preferences: Tensor
    rewards: Tensor | None = None
    scorable: Tensor | None = None
    per_function: Tensor | None = None
    names: tuple[str, ...] = ()
    weights: Tensor | None = None

    @classmethod
    def of_rewards(cls, rewards: Tensor, **functions) -> Feedback:
        """Feedback from rewards [B, K] that may hold NaN (not scored)."""
        scorable = ~rewards.isnan()
        rewards = rewards.nan_to_num(0.0)
        return cls(bradley_terry(rewards), rewards, None if scorable.all() else scorable, **functions)

    def scores(self, kind: str) -> Tensor:
        """What a loss with `feedback = kind` reads as `scores`: rewards for "rewards" (a
        preference judge's win rates stand in), win rates for "preferences", and the
        judge's own shape for "any"."""
        if kind == "preferences" or self.rewards is None:
            return win_rates(self.preferences, self.scorable)
        return self.rewards

    def to(self, device: torch.device) -> Feedback:
        """On `device`, float32 (the names stay)."""

        def moved(t: Tensor | None, dtype=torch.float32) -> Tensor | None:
            return None if t is None else t.to(device, dtype)

        return replace(
            self,
            preferences=moved(self.preferences),
            rewards=moved(self.rewards),
            scorable=moved(self.scorable, torch.bool),
            per_function=moved(self.per_function),
            weights=moved(self.weights),
        )

    def penalised(self, missing_eos: Tensor, penalty: float) -> Feedback:
        """A completion cut at max_new_tokens loses `penalty`: from each of its
        preferences (P_ij += penalty * (missing_j - missing_i), clipped to [0, 1], which
        keeps P_ji = 1 - P_ij), or from its reward."""
        if not penalty:
            return self
        missing = missing_eos.to(self.preferences.dtype)
        if self.rewards is not None:
            rewards = self.rewards - penalty * missing
            return replace(self, preferences=bradley_terry(rewards), rewards=rewards)
        shifted = self.preferences + penalty * (missing[:, None, :] - missing[:, :, None])
        return replace(self, preferences=shifted.clamp(0.0, 1.0))

    def select(self, rows: Tensor) -> Feedback:
        """The feedback of prompts `rows` (indices into B)."""

        def picked(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[rows]

        return replace(
            self,
            preferences=self.preferences[rows],
            rewards=picked(self.rewards),
            scorable=picked(self.scorable),
            per_function=picked(self.per_function),
        )

    @staticmethod
    def cat(parts: Sequence[Feedback]) -> Feedback:
        """Feedback of several batches of prompts, in order."""
        first = parts[0]

        def joined(name: str) -> Tensor | None:
            values = [getattr(p, name) for p in parts]
            if all(v is None for v in values):
                return None
            if name == "scorable":
                values = [
                    torch.ones(p.preferences.shape[:2], dtype=torch.bool, device=p.preferences.device)
                    if v is None
                    else v
                    for p, v in zip(parts, values, strict=True)
                ]
            return torch.cat([v.to(values[0].device) for v in values])

        return replace(
            first,
            preferences=torch.cat([p.preferences for p in parts]),
            rewards=joined("rewards"),
            scorable=joined("scorable"),
            per_function=joined("per_function"),
        )


def judge_samples(
    judge: Judge,
    prompts: Sequence[Prompt],
    completions: Sequence[Sequence[str]],
    context: Mapping[str, Any] | None = None,
) -> Feedback:
    """Ask `judge` about each prompt's K completions, in one call: a reward judge for B*K
    rewards, a preference judge for the B*K(K-1)/2 pairs. `context` (reward functions'
    keyword arguments) holds per-prompt lists, repeated here for each completion,
    `completion_ids` [B][K] lists of token ids, and other values given as they are."""
    k = len(completions[0])
    if any(len(c) != k for c in completions):
        raise ValueError("every prompt needs the same number of completions")
    if judge.feedback == "rewards":
        flat_prompts = [p for p in prompts for _ in range(k)]
        flat = [y for row in completions for y in row]
        per_completion = _per_completion(context or {}, len(prompts), k)
        if isinstance(judge, RewardPanel):
            per_function = judge.rewards_per_function(flat_prompts, flat, per_completion).view(len(prompts), k, -1)
            rewards = aggregate_rewards(per_function, judge.weights, judge.aggregation)
            return Feedback.of_rewards(
                rewards, per_function=per_function, names=tuple(judge.names), weights=judge.weights
            )
        assert isinstance(judge, RewardJudge)
        return Feedback.of_rewards(judge.rewards(flat_prompts, flat, per_completion).view(len(prompts), k))
    pairs = list(combinations(range(k), 2))
    asked = [(row[i], row[j]) for row in completions for i, j in pairs]
    answers = judge([p for p in prompts for _ in pairs], asked).view(len(prompts), len(pairs))
    return Feedback(preference_matrix(answers, k))


def _per_completion(context: Mapping[str, Any], batch: int, k: int) -> dict[str, Any]:
    """Reward-function keywords with one value per completion: per-prompt lists repeated K
    times, `completion_ids` [B][K] flattened, anything else (e.g. `trainer_state`) as is."""
    out: dict[str, Any] = {}
    for key, value in context.items():
        if key == "completion_ids":
            out[key] = [ids for row in value for ids in row]
        elif isinstance(value, list) and len(value) == batch:
            out[key] = [v for v in value for _ in range(k)]
        else:
            out[key] = value
    return out
