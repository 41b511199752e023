"""Public dataset layouts -> PreferenceExample.

Three layouts cover the common preference datasets:

- `pairwise`: `chosen`, `rejected` (+ optional `prompt`, `score_chosen`, `score_rejected`),
  strings or chat messages; the prompt may be implicit in the messages.
- `ranked`: `prompt`, `completions` and `scores` (higher is better) or `ranks` (1 is best).
- `ultrafeedback`: `instruction` (or `prompt`) and `completions` as a list of
  `{response, overall_score, annotations}` records (openbmb/UltraFeedback).

Every problem with a row raises `BadRowError` with a short `reason` key, so the
pipeline's bad-row policy can stop on it or count it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from alignment.data.example import BadRowError, Message, PreferenceExample, Text

Layout = Literal["pairwise", "ranked", "ultrafeedback", "prompt"]

LAYOUT_COLUMNS: dict[str, str] = {
    "pairwise": "chosen, rejected (optional: prompt, score_chosen, score_rejected)",
    "ranked": "prompt, completions, and scores or ranks",
    "ultrafeedback": "instruction or prompt, completions (records with response and overall_score or annotations)",
    "prompt": "prompt only (online training)",
}

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


class _RowProblem(Exception):
    """Raised inside the adapters; `adapt_row` adds the row's source and index."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def detect_layout(columns: Iterable[str]) -> Layout:
    """Pick the layout from the column names (pairwise, then ranked, then ultrafeedback)."""
    cols = set(columns)
    if {"chosen", "rejected"} <= cols:
        return "pairwise"
    if {"prompt", "completions"} <= cols and cols & {"scores", "ranks"}:
        return "ranked"
    if "completions" in cols and cols & {"instruction", "prompt"}:
        return "ultrafeedback"
    if "prompt" in cols and not cols & {"chosen", "rejected", "completions"}:
        return "prompt"
    expected = "; ".join(f"{name}: {needs}" for name, needs in LAYOUT_COLUMNS.items())
    raise ValueError(
        f"cannot tell the data layout from the columns {sorted(cols)}; expected one of -- {expected}. "
        "Rename the columns or set the source's `layout`."
    )


def adapt_row(
    row: Mapping[str, Any], layout: str, source: str, index: int, require_order: bool = True
) -> PreferenceExample:
    """Turn one row of `layout` into a PreferenceExample, or raise BadRowError naming
    the row (`index` within `source`), the column and a reason key.

    `require_order`: the row must teach an order -- its scores are not all tied and no
    two of its completions are identical. Off when only the prompt is wanted."""
    try:
        if layout == "pairwise":
            example, names = _pairwise(row)
        elif layout == "ranked":
            example, names = _ranked(row)
        elif layout == "ultrafeedback":
            example, names = _ultrafeedback(row)
        else:
            raise ValueError(f"unknown layout {layout!r}; layouts: {', '.join(LAYOUT_COLUMNS)}")
        _check(example, names, require_order)
    except _RowProblem as problem:
        raise BadRowError(source, index, problem.reason, problem.detail) from None
    return example


def adapt_prompt(row: Mapping[str, Any], layout: str, source: str, index: int) -> Text:
    """The prompt of a row, for online training. A `prompt`-layout row is only checked
    for its prompt; a preference row is adapted (and checked) in full, which is also
    how an implicit prompt is cut out of chosen/rejected conversations."""
    if layout != "prompt":
        return adapt_row(row, layout, source, index, require_order=False).prompt
    try:
        prompt = _text(_get(row, "prompt"), "prompt")
        _check_prompt(prompt)
    except _RowProblem as problem:
        raise BadRowError(source, index, problem.reason, problem.detail) from None
    return prompt


# ----------------------------------------------------------------------------- layouts


def _pairwise(row: Mapping[str, Any]) -> tuple[PreferenceExample, list[str]]:
    chosen = _text(_get(row, "chosen"), "chosen")
    rejected = _text(_get(row, "rejected"), "rejected")
    prompt = _text(_get(row, "prompt"), "prompt") if "prompt" in row else None
    prompt, completions = _split_prompt(prompt, [chosen, rejected], "chosen/rejected")
    if "score_chosen" in row or "score_rejected" in row:
        scores = [
            _number(_get(row, "score_chosen"), "score_chosen"),
            _number(_get(row, "score_rejected"), "score_rejected"),
        ]
    else:
        scores = [1.0, 0.0]
    return PreferenceExample(prompt, completions, scores), ["chosen", "rejected"]


def _ranked(row: Mapping[str, Any]) -> tuple[PreferenceExample, list[str]]:
    prompt = _text(_get(row, "prompt"), "prompt")
    raw = _list(_get(row, "completions"), "completions")
    completions = [_text(item, f"completions[{i}]") for i, item in enumerate(raw)]
    if row.get("scores") is not None or "ranks" not in row:
        values = _list(_get(row, "scores"), "scores")
        scores = [_number(v, f"scores[{i}]") for i, v in enumerate(values)]
    else:
        values = _list(_get(row, "ranks"), "ranks")
        ranks = [_number(v, f"ranks[{i}]") for i, v in enumerate(values)]
        # Rank 1 is best: shift so the best gets the highest score and equal ranks stay ties.
        scores = [max(ranks) - r for r in ranks] if ranks else []
    prompt, completions = _split_prompt(prompt, completions, "completions")
    return PreferenceExample(prompt, completions, scores), [f"completions[{i}]" for i in range(len(completions))]


def _ultrafeedback(row: Mapping[str, Any]) -> tuple[PreferenceExample, list[str]]:
    prompt_column = "instruction" if "instruction" in row else "prompt"
    prompt = _text(_get(row, prompt_column), prompt_column)
    records = _list(_get(row, "completions"), "completions")
    completions: list[Text] = []
    scores: list[float] = []
    for i, record in enumerate(records):
        where = f"completions[{i}]"
        if not isinstance(record, Mapping):
            raise _RowProblem(WRONG_TYPE, f"column '{where}' should be a record with a 'response', got {_kind(record)}")
        completions.append(_text(_get(record, "response", where), f"{where}.response"))
        scores.append(_ultrafeedback_score(record, where))
    prompt, completions = _split_prompt(prompt, completions, "completions")
    return PreferenceExample(prompt, completions, scores), [f"completions[{i}].response" for i in range(len(records))]


def _ultrafeedback_score(record: Mapping[str, Any], where: str) -> float:
    """`overall_score` when present, else the mean of the numeric annotation ratings."""
    if record.get("overall_score") is not None:
        return _number(record["overall_score"], f"{where}.overall_score")
    ratings = []
    for aspect in (record.get("annotations") or {}).values():
        if isinstance(aspect, Mapping):
            rating = _parse_rating(aspect.get("Rating"))
            if rating is not None:
                ratings.append(rating)
    if not ratings:
        raise _RowProblem(
            MISSING_SCORE, f"column '{where}' has neither an overall_score nor a numeric annotations rating"
        )
    return sum(ratings) / len(ratings)


def _parse_rating(value: Any) -> float | None:
    """Ratings are strings like "4"; "N/A" and other non-numbers are not ratings."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        rating = float(value)
    except (TypeError, ValueError):
        return None
    return rating if math.isfinite(rating) else None


# ----------------------------------------------------------------------------- prompts


def _split_prompt(prompt: Text | None, completions: list[Text], columns: str) -> tuple[Text, list[Text]]:
    """Settle the prompt and make prompt and completions the same kind (text or messages).

    Conversations that share leading turns carry the prompt in those turns (TRL's
    extract_prompt; also HuggingFaceH4/ultrafeedback_binarized, whose `prompt` string
    repeats the user turn that starts `chosen` and `rejected`)."""
    conversational = isinstance(prompt, list) or any(isinstance(c, list) for c in completions)
    if not conversational:
        if prompt is None:
            prompt = _shared_text_prefix([c for c in completions if isinstance(c, str)])
            if not prompt:
                raise _RowProblem(
                    MISSING_COLUMN, f"no 'prompt' column, and {columns} share no leading text to take it from"
                )
            completions = [c[len(prompt) :] for c in completions]  # type: ignore[index]
        return prompt, completions

    conversations = [c if isinstance(c, list) else [{"role": "assistant", "content": c}] for c in completions]
    if isinstance(prompt, list):
        n = len(prompt)
        if n and all(c[:n] == prompt for c in conversations):
            conversations = [c[n:] for c in conversations]
        return prompt, conversations
    shared = _shared_message_prefix(conversations)
    if shared:
        return conversations[0][:shared], [c[shared:] for c in conversations]
    if prompt is None:
        raise _RowProblem(MISSING_COLUMN, f"no 'prompt' column, and {columns} share no leading messages")
    return [{"role": "user", "content": prompt}], conversations


def _shared_message_prefix(conversations: list[list[Message]]) -> int:
    """Length of the leading turns all conversations share, ending before the model's
    turn: a prompt ends where an assistant turn would be generated."""
    shortest = min((len(c) for c in conversations), default=0)
    n = 0
    while n < shortest and all(c[n] == conversations[0][n] for c in conversations):
        n += 1
    while n and conversations[0][n - 1]["role"] == "assistant":
        n -= 1
    return n


def _shared_text_prefix(texts: list[str]) -> str:
    """Longest common prefix, backed off over a trailing space as TRL does, so that the
    completion keeps its leading space (it matters to most tokenizers)."""
    if len(texts) < 2:
        return ""
    first = texts[0]
    n = 0
    while n < len(first) and all(n < len(t) and t[n] == first[n] for t in texts):
        n += 1
    if n < min(len(t) for t in texts) and n and first[n - 1] == " ":
        n -= 1
    return first[:n]


# ----------------------------------------------------------------------------- checks


def _check_prompt(prompt: Text) -> None:
    if isinstance(prompt, str) and not prompt.strip():
        raise _RowProblem(EMPTY_PROMPT, "column 'prompt' is empty")
    if isinstance(prompt, list) and not any(m["content"].strip() for m in prompt):
        raise _RowProblem(EMPTY_PROMPT, "the prompt messages are empty")


def _check(example: PreferenceExample, names: list[str], require_order: bool) -> None:
    _check_prompt(example.prompt)
    k = len(example.completions)
    column = "chosen/rejected" if names[:1] == ["chosen"] else "completions"
    if k < 2:
        raise _RowProblem(TOO_FEW_COMPLETIONS, f"column '{column}' has {k} completion(s); at least 2 are needed")
    if len(example.scores) != k:
        raise _RowProblem(
            SCORE_LENGTH_MISMATCH, f"{len(example.scores)} scores for {k} completions in column '{column}'"
        )
    for name, completion in zip(names, example.completions, strict=True):
        if _is_empty(completion):
            raise _RowProblem(EMPTY_COMPLETION, f"column '{name}' is empty")
    if not require_order:
        return
    # Two identical completions have identical log-ratios, so a pair of them carries no
    # signal whatever their scores: equal scores are a tie, unequal ones contradict.
    seen: dict[str, int] = {}
    for i, completion in enumerate(example.completions):
        key = completion if isinstance(completion, str) else repr(completion)
        if key in seen:
            raise _RowProblem(
                DUPLICATE_COMPLETION,
                f"column '{names[i]}' is identical to column '{names[seen[key]]}': a pair of equal completions "
                "carries no preference",
            )
        seen[key] = i
    if len(set(example.scores)) == 1:
        raise _RowProblem(
            ALL_TIED, f"all {k} scores are equal ({example.scores[0]}): no preference order (the loss needs one)"
        )


def _is_empty(completion: Text) -> bool:
    if isinstance(completion, str):
        return not completion.strip()
    return not any(m["content"].strip() for m in completion)


# ----------------------------------------------------------------------------- values


def _get(row: Mapping[str, Any], column: str, where: str | None = None) -> Any:
    name = f"{where}.{column}" if where else column
    if column not in row:
        raise _RowProblem(MISSING_COLUMN, f"column '{name}' is missing")
    if row[column] is None:
        raise _RowProblem(MISSING_COLUMN, f"column '{name}' is None")
    return row[column]


def _text(value: Any, column: str) -> Text:
    """A string, or a list of {"role", "content"} messages (other keys dropped)."""
    if value is None:
        raise _RowProblem(MISSING_COLUMN, f"column '{column}' is None")
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
                raise _RowProblem(
                    WRONG_TYPE,
                    f"column '{column}' message {i} should have string 'role' and 'content', got {message!r}",
                )
            messages.append({"role": message["role"], "content": message["content"]})
        return messages
    raise _RowProblem(WRONG_TYPE, f"column '{column}' should be a string or a list of messages, got {_kind(value)}")


def _list(value: Any, column: str) -> list[Any]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise _RowProblem(WRONG_TYPE, f"column '{column}' should be a list, got {_kind(value)}")
    return list(value)


def _number(value: Any, column: str) -> float:
    if value is None:
        raise _RowProblem(MISSING_COLUMN, f"column '{column}' is None")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _RowProblem(WRONG_TYPE, f"column '{column}' should be a number, got {_kind(value)}")
    if not math.isfinite(float(value)):
        raise _RowProblem(NONFINITE_SCORE, f"column '{column}' is {value}")
    return float(value)


def _kind(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"
