"""Built-in reward functions for online training, judged like a user's reward function
(`online.judge: {type: format | overlong | exact_match, ...}`). Each is called TRL's way,
with keywords (`completions`, `completion_ids`, the prompt row's columns), returns one
float per completion, and None for a completion it does not apply to."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any


class FormatReward:
    """1.0 when the completion matches `pattern` whole (`re.fullmatch`, with `.` matching
    newlines), else 0.0: a check of the answer's form, e.g. `<think>.*</think>.*` or `\\d+`."""

    def __init__(self, pattern: str):
        self.pattern = re.compile(pattern, re.DOTALL)
        self.__name__ = "format"

    def __call__(self, completions: Sequence[str], **_: Any) -> list[float]:
        return [1.0 if self.pattern.fullmatch(text) else 0.0 for text in completions]


class SoftOverlongPunishment:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), from the completion's
    token count |y|, with L_max = `max_completion_length` and L_cache = `soft_punish_cache`:

        R(y) = 0                              if |y| <= L_max - L_cache
             = ((L_max - L_cache) - |y|) / L_cache   if L_max - L_cache < |y| <= L_max
             = -1                             if |y| > L_max

    so a completion is punished more the further it runs into the last L_cache tokens,
    and a shorter one is not rewarded for being short. (TRL: `get_soft_overlong_punishment`.)"""

    def __init__(self, max_completion_length: int, soft_punish_cache: int):
        if not 0 <= soft_punish_cache < max_completion_length:
            raise ValueError(
                f"overlong reward: soft_punish_cache ({soft_punish_cache}) must be in [0, max_completion_length "
                f"= {max_completion_length})"
            )
        self.max_length, self.cache = max_completion_length, soft_punish_cache
        self.__name__ = "overlong"

    def __call__(self, completion_ids: Sequence[Sequence[int]], **_: Any) -> list[float]:
        start = self.max_length - self.cache
        rewards = []
        for ids in completion_ids:
            n = len(ids)
            rewards.append(0.0 if n <= start else (start - n) / self.cache if n <= self.max_length else -1.0)
        return rewards


class ExactMatch:
    """1.0 when the completion's answer equals the row's `column`, else 0.0, both as
    stripped text; None for a row whose column is missing or empty (the reward does not
    apply). The answer is the whole completion, or with `pattern` the first group of its
    last match (e.g. `=\\s*(-?\\d+)` reads "3 + 4 = 7." as "7"); no match answers nothing (0.0)."""

    def __init__(self, column: str, pattern: str | None = None):
        self.column = column
        self.pattern = re.compile(pattern) if pattern else None
        self.__name__ = f"exact_match_{column}"

    def answer(self, completion: str) -> str | None:
        if self.pattern is None:
            return completion.strip()
        matches = list(self.pattern.finditer(completion))
        return matches[-1].group(1).strip() if matches else None

    def __call__(self, completions: Sequence[str], **columns: Any) -> list[float | None]:
        if self.column not in columns:
            raise KeyError(
                f"the prompt rows have no column {self.column!r} (their columns: {sorted(columns) or 'none'})"
            )
        rewards: list[float | None] = []
        for text, truth in zip(completions, columns[self.column], strict=True):
            if truth is None or str(truth).strip() == "":
                rewards.append(None)
            else:
                rewards.append(float(self.answer(text) == str(truth).strip()))
        return rewards
