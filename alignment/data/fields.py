"""One row's fields: each value read with its type checked, and the reason keys of the
bad rows the adapters find. A problem raises `RowProblem`; `adapt_row` adds the row's
source and index."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from alignment.data.example import Text

# Reason keys of the bad rows this module finds (the tokenizer adds "prompt_fills_max_length").
MISSING_COLUMN = "missing_column"
WRONG_TYPE = "wrong_type"
TOO_FEW_COMPLETIONS = "too_few_completions"
EMPTY_COMPLETION = "empty_completion"
EMPTY_PROMPT = "empty_prompt"
NONFINITE_SCORE = "nonfinite_score"
SCORE_LENGTH_MISMATCH = "score_length_mismatch"
MISSING_SCORE = "missing_score"
ALL_TIED = "all_tied"
DUPLICATE_COMPLETION = "duplicate_completion"


class RowProblem(Exception):
    """Raised inside the adapters; `adapt_row` adds the row's source and index."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def get(row: Mapping[str, Any], column: str, where: str | None = None) -> Any:
    name = f"{where}.{column}" if where else column
    if column not in row:
        raise RowProblem(MISSING_COLUMN, f"column '{name}' is missing")
    if row[column] is None:
        raise RowProblem(MISSING_COLUMN, f"column '{name}' is None")
    return row[column]


def text(value: Any, column: str) -> Text:
    """A string, or a list of {"role", "content"} messages (other keys dropped)."""
    if value is None:
        raise RowProblem(MISSING_COLUMN, f"column '{column}' is None")
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence) and not isinstance(value, (bytes, Mapping)):
        messages = []
        for i, message in enumerate(value):
            if not (
                isinstance(message, Mapping)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)
            ):
                raise RowProblem(
                    WRONG_TYPE,
                    f"column '{column}' message {i} should have string 'role' and 'content', got {message!r}",
                )
            messages.append({"role": message["role"], "content": message["content"]})
        return messages
    raise RowProblem(WRONG_TYPE, f"column '{column}' should be a string or a list of messages, got {kind(value)}")


def as_list(value: Any, column: str) -> list[Any]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise RowProblem(WRONG_TYPE, f"column '{column}' should be a list, got {kind(value)}")
    return list(value)


def number(value: Any, column: str) -> float:
    if value is None:
        raise RowProblem(MISSING_COLUMN, f"column '{column}' is None")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise RowProblem(WRONG_TYPE, f"column '{column}' should be a number, got {kind(value)}")
    if not math.isfinite(float(value)):
        raise RowProblem(NONFINITE_SCORE, f"column '{column}' is {value}")
    return float(value)


def kind(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"
