"""The one row format every layout is adapted to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

Message = dict[str, str]
Text = Union[str, list[Message]]


@dataclass
class PreferenceExample:
    """A prompt with K >= 2 scored completions (higher score is better, equal is a tie).

    `prompt` is a string or a list of chat messages; each completion is a string or a
    list of (assistant) messages. Pairwise data is K = 2 with scores [1, 0]. `tools`,
    when given, is passed to the chat template with every rendering of the row.
    `margin` and `user_id` are read by reward-model training only."""

    prompt: Text
    completions: list[Text]
    scores: list[float]
    tools: list[dict] | None = None  # function definitions for the chat template (ShareGPT's `tools`)
    margin: float = 0.0  # a reward-model margin (the optional `margin` column): r_w - r_l should exceed it
    user_id: str = ""  # who labelled the row (the optional `user_id` column), for VPL's per-user contexts


class DataError(ValueError):
    """The recipe's data cannot be used as it is: the message says which source and why."""


class BadRowError(DataError):
    """A dataset row that cannot become a PreferenceExample. Names the row, its source
    and what is wrong, so that a user can find and fix it."""

    def __init__(self, source: str, index: int, reason: str, detail: str) -> None:
        self.source = source
        self.index = index
        self.reason = reason  # short machine-readable key, e.g. "missing_column"
        self.detail = detail
        super().__init__(f"bad row {index} in {source}: {detail} [{reason}]")
