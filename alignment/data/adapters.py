"""Public dataset layouts -> PreferenceExample.

These layouts cover the common preference datasets:

- `pairwise`: `chosen`, `rejected` (+ optional `prompt`, `score_chosen`, `score_rejected`),
  strings or chat messages; the prompt may be implicit in the messages.
- `ranked`: `prompt`, `completions` and `scores` (higher is better) or `ranks` (1 is best).
- `ultrafeedback`: `instruction` (or `prompt`) and `completions` as a list of
  `{response, overall_score, annotations}` records (openbmb/UltraFeedback).
- `sharegpt`: LLaMA-Factory's DPO format: `conversations` (the history, `{from, value}`
  messages), `chosen` and `rejected` (a message or a list), optional `system` and `tools`.
- `hh`: Anthropic HH: `chosen` and `rejected` as whole `\n\nHuman: ... \n\nAssistant: ...`
  transcripts; the turns they share are the prompt.
- `unpaired`: TRL's unpaired preference layout (KTO): `prompt`, `completion` and a
  boolean `label` (desirable or not), strings or chat messages.
- `unpaired_messages`: LLaMA-Factory's KTO layout: `messages` (a conversation whose
  last turn is the assistant's, {role, content} or ShareGPT {from, value} messages) and
  `label`.

An unpaired row becomes a list of one completion with score 1.0 (desirable) or 0.0
(undesirable); only losses that learn from such rows (`accepts_unpaired`: kto) take them.

In every conversational layout the prompt is the history and only the final assistant
turn (the part where chosen and rejected differ) is trained.

Every problem with a row raises `BadRowError` with a short `reason` key, so the
pipeline's bad-row policy can stop on it or count it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from alignment.data.conversations import hh_messages, is_hh_transcript, sharegpt_messages
from alignment.data.example import BadRowError, Message, PreferenceExample, Text
from alignment.data.fields import (
    ALL_TIED,
    DUPLICATE_COMPLETION,
    EMPTY_COMPLETION,
    EMPTY_PROMPT,
    MISSING_COLUMN,
    MISSING_SCORE,
    SCORE_LENGTH_MISMATCH,
    TOO_FEW_COMPLETIONS,
    WRONG_TYPE,
    RowProblem,
    as_list,
    get,
    kind,
    number,
    text,
)

Layout = Literal["pairwise", "ranked", "ultrafeedback", "sharegpt", "hh", "unpaired", "unpaired_messages", "prompt"]
UNPAIRED_LAYOUTS = ("unpaired", "unpaired_messages")

LAYOUT_COLUMNS: dict[str, str] = {
    "pairwise": "chosen, rejected (optional: prompt, score_chosen, score_rejected)",
    "sharegpt": "conversations, chosen, rejected as {from, value} messages (optional: system, tools)",
    "hh": "chosen, rejected as '\\n\\nHuman: ... \\n\\nAssistant: ...' transcripts",
    "ranked": "prompt, completions, and scores or ranks",
    "ultrafeedback": "instruction or prompt, completions (records with response and overall_score or annotations)",
    "unpaired": "prompt, completion, label (true: desirable; KTO)",
    "unpaired_messages": "messages ending in the assistant's turn, label (LLaMA-Factory's KTO layout)",
    "prompt": "prompt only (online training)",
}


def detect_layout(columns: Iterable[str], first_row: Mapping[str, Any] | None = None) -> Layout:
    """Pick the layout from the column names (sharegpt, then pairwise or hh, ranked,
    ultrafeedback, prompt); `first_row` tells an HH transcript from a plain pair."""
    cols = set(columns)
    if {"conversations", "chosen", "rejected"} <= cols:
        return "sharegpt"
    if {"chosen", "rejected"} <= cols:
        hh = "prompt" not in cols and first_row is not None and is_hh_transcript(first_row.get("chosen"))
        return "hh" if hh else "pairwise"
    if {"prompt", "completions"} <= cols and cols & {"scores", "ranks"}:
        return "ranked"
    if "completions" in cols and cols & {"instruction", "prompt"}:
        return "ultrafeedback"
    if {"prompt", "completion", "label"} <= cols:
        return "unpaired"
    if {"messages", "label"} <= cols:
        return "unpaired_messages"
    if "prompt" in cols and not cols & {"chosen", "rejected", "completions"}:
        return "prompt"
    expected = "; ".join(f"{name}: {needs}" for name, needs in LAYOUT_COLUMNS.items())
    raise ValueError(
        f"cannot tell the data layout from the columns {sorted(cols)}; expected one of -- {expected}. "
        "Rename the columns or set the source's `layout`."
    )


def renamed(row: Mapping[str, Any], columns: Mapping[str, str] | None) -> Mapping[str, Any]:
    """A source's `columns: {our name: its name}` applied to a row (or column names)."""
    if not columns:
        return row
    theirs = set(columns.values())
    out = {k: v for k, v in row.items() if k not in theirs}
    out.update({ours: row[name] for ours, name in columns.items() if name in row})
    return out


def adapt_row(
    row: Mapping[str, Any],
    layout: str,
    source: str,
    index: int,
    require_order: bool = True,
    system: str | None = None,
) -> PreferenceExample:
    """Turn one row of `layout` into a PreferenceExample, or raise BadRowError naming
    the row (`index` within `source`), the column and a reason key.

    `require_order`: the row must teach an order -- its scores are not all tied and no
    two of its completions are identical. Off when only the prompt is wanted.
    `system`: the source's system prompt, for rows whose prompt has none."""
    try:
        if layout not in LAYOUT_READERS:
            raise ValueError(f"unknown layout {layout!r}; layouts: {', '.join(LAYOUT_COLUMNS)}")
        example, names = LAYOUT_READERS[layout](row)
        if system:
            example = _with_system(example, system)
        _check(example, names, require_order, minimum=1 if layout in UNPAIRED_LAYOUTS else 2)
        _reward_model_fields(example, row)
    except RowProblem as problem:
        raise BadRowError(source, index, problem.reason, problem.detail) from None
    return example


def adapt_prompt(row: Mapping[str, Any], layout: str, source: str, index: int, system: str | None = None) -> Text:
    """The prompt of a row, for online training. A `prompt`-layout row is only checked
    for its prompt; a preference row is adapted (and checked) in full, which is also
    how an implicit prompt is cut out of chosen/rejected conversations."""
    if layout != "prompt":
        return adapt_row(row, layout, source, index, require_order=False, system=system).prompt
    try:
        prompt = text(get(row, "prompt"), "prompt")
        if system:
            prompt = _with_system(PreferenceExample(prompt, [], []), system).prompt
        _check_prompt(prompt)
    except RowProblem as problem:
        raise BadRowError(source, index, problem.reason, problem.detail) from None
    return prompt


def _reward_model_fields(example: PreferenceExample, row: Mapping[str, Any]) -> None:
    """The optional columns of reward-model data, in any layout: `margin` (a number)
    and `user_id` (who labelled the row: a string or an integer)."""
    if row.get("margin") is not None:
        example.margin = number(row["margin"], "margin")
    user = row.get("user_id")
    if user is not None:
        if isinstance(user, bool) or not isinstance(user, (str, int)) or str(user) == "":
            raise RowProblem(
                WRONG_TYPE, f"column 'user_id' should be a non-empty string or an integer, got {kind(user)}"
            )
        example.user_id = str(user)


# ----------------------------------------------------------------------------- layouts


def _pairwise(row: Mapping[str, Any]) -> tuple[PreferenceExample, list[str]]:
    chosen = text(get(row, "chosen"), "chosen")
    rejected = text(get(row, "rejected"), "rejected")
    prompt = text(get(row, "prompt"), "prompt") if "prompt" in row else None
    prompt, completions = _split_prompt(prompt, [chosen, rejected], "chosen/rejected")
    if "score_chosen" in row or "score_rejected" in row:
        scores = [
            number(get(row, "score_chosen"), "score_chosen"),
            number(get(row, "score_rejected"), "score_rejected"),
        ]
    else:
        scores = [1.0, 0.0]
    return PreferenceExample(prompt, completions, scores), ["chosen", "rejected"]


def _label(row: Mapping[str, Any]) -> float:
    """An unpaired row's `label` as its score: true (or 1) is 1.0, false (or 0) is 0.0."""
    value = get(row, "label")
    if isinstance(value, bool) or value in (0, 1):
        return float(value)
    raise RowProblem(WRONG_TYPE, f"column 'label' should be true or false (desirable or not), got {value!r}")


def _unpaired(row: Mapping[str, Any]) -> tuple[PreferenceExample, list[str]]:
    prompt = text(get(row, "prompt"), "prompt")
    completion = text(get(row, "completion"), "completion")
    if isinstance(prompt, list) != isinstance(completion, list):
        raise RowProblem(
            WRONG_TYPE, "columns 'prompt' and 'completion' should both be strings or both be message lists"
        )
    return PreferenceExample(prompt, [completion], [_label(row)]), ["completion"]


def _unpaired_messages(row: Mapping[str, Any]) -> tuple[PreferenceExample, list[str]]:
    value = get(row, "messages")
    first = value[0] if isinstance(value, list) and value else None
    if isinstance(first, Mapping) and "from" in first:
        messages = _converted(sharegpt_messages, row, "messages")
    else:
        messages = text(value, "messages")
        if isinstance(messages, str):
            raise RowProblem(WRONG_TYPE, "column 'messages' should be a list of messages, got a string")
    if not messages or messages[-1]["role"] != "assistant":
        last = messages[-1]["role"] if messages else "nothing"
        raise RowProblem(
            WRONG_TYPE, f"column 'messages' should end with the assistant's turn (the completion), ends with {last}"
        )
    if len(messages) == 1:
        raise RowProblem(EMPTY_PROMPT, "column 'messages' holds only the assistant's turn; the prompt is missing")
    return PreferenceExample(messages[:-1], [messages[-1:]], [_label(row)]), ["messages"]


def _sharegpt(row: Mapping[str, Any]) -> tuple[PreferenceExample, list[str]]:
    history, chosen, rejected = (_converted(sharegpt_messages, row, c) for c in ("conversations", "chosen", "rejected"))
    if row.get("system"):
        history = [{"role": "system", "content": text(row["system"], "system")}, *history]
    prompt, completions = _split_prompt(history, [chosen, rejected], "chosen/rejected")
    return PreferenceExample(prompt, completions, [1.0, 0.0], _tools(row.get("tools"))), ["chosen", "rejected"]


def _hh(row: Mapping[str, Any]) -> tuple[PreferenceExample, list[str]]:
    chosen, rejected = (_converted(hh_messages, row, c) for c in ("chosen", "rejected"))
    prompt, completions = _split_prompt(None, [chosen, rejected], "chosen/rejected")
    return PreferenceExample(prompt, completions, [1.0, 0.0]), ["chosen", "rejected"]


def _converted(convert: Any, row: Mapping[str, Any], column: str) -> list[Message]:
    value = get(row, column)
    if convert is hh_messages and not isinstance(value, str):
        raise RowProblem(WRONG_TYPE, f"column '{column}' should be an HH transcript string, got {kind(value)}")
    try:
        return convert(value, column)
    except ValueError as err:
        raise RowProblem(WRONG_TYPE, str(err)) from None


def _tools(value: Any) -> list[dict] | None:
    """ShareGPT's `tools`: a JSON string (LLaMA-Factory) or a list of function definitions."""
    if value in (None, "", []):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise RowProblem(WRONG_TYPE, f"column 'tools' is not valid JSON: {err}") from None
    value = [value] if isinstance(value, Mapping) else value
    if not isinstance(value, list) or not all(isinstance(t, Mapping) for t in value):
        raise RowProblem(WRONG_TYPE, f"column 'tools' should be a list of function definitions, got {kind(value)}")
    return [dict(t) for t in value]


def _with_system(example: PreferenceExample, system: str) -> PreferenceExample:
    """The source's system prompt in front of a prompt that has none; a plain-text row
    becomes a conversation (a system prompt only means something to a chat template)."""
    prompt = example.prompt
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
        completions = [c if isinstance(c, list) else [{"role": "assistant", "content": c}] for c in example.completions]
    else:
        completions = example.completions
    if not (prompt and prompt[0]["role"] == "system"):
        prompt = [{"role": "system", "content": system}, *prompt]
    return PreferenceExample(prompt, completions, example.scores, example.tools)


def _ranked(row: Mapping[str, Any]) -> tuple[PreferenceExample, list[str]]:
    prompt = text(get(row, "prompt"), "prompt")
    raw = as_list(get(row, "completions"), "completions")
    completions = [text(item, f"completions[{i}]") for i, item in enumerate(raw)]
    if row.get("scores") is not None or "ranks" not in row:
        values = as_list(get(row, "scores"), "scores")
        scores = [number(v, f"scores[{i}]") for i, v in enumerate(values)]
    else:
        values = as_list(get(row, "ranks"), "ranks")
        ranks = [number(v, f"ranks[{i}]") for i, v in enumerate(values)]
        # Rank 1 is best: shift so the best gets the highest score and equal ranks stay ties.
        scores = [max(ranks) - r for r in ranks] if ranks else []
    prompt, completions = _split_prompt(prompt, completions, "completions")
    return PreferenceExample(prompt, completions, scores), [f"completions[{i}]" for i in range(len(completions))]


def _ultrafeedback(row: Mapping[str, Any]) -> tuple[PreferenceExample, list[str]]:
    prompt_column = "instruction" if "instruction" in row else "prompt"
    prompt = text(get(row, prompt_column), prompt_column)
    records = as_list(get(row, "completions"), "completions")
    completions: list[Text] = []
    scores: list[float] = []
    for i, record in enumerate(records):
        where = f"completions[{i}]"
        if not isinstance(record, Mapping):
            raise RowProblem(WRONG_TYPE, f"column '{where}' should be a record with a 'response', got {kind(record)}")
        completions.append(text(get(record, "response", where), f"{where}.response"))
        scores.append(_ultrafeedback_score(record, where))
    prompt, completions = _split_prompt(prompt, completions, "completions")
    return PreferenceExample(prompt, completions, scores), [f"completions[{i}].response" for i in range(len(records))]


def _ultrafeedback_score(record: Mapping[str, Any], where: str) -> float:
    """`overall_score` when present, else the mean of the numeric annotation ratings."""
    if record.get("overall_score") is not None:
        return number(record["overall_score"], f"{where}.overall_score")
    ratings = []
    for aspect in (record.get("annotations") or {}).values():
        if isinstance(aspect, Mapping):
            rating = _parse_rating(aspect.get("Rating"))
            if rating is not None:
                ratings.append(rating)
    if not ratings:
        raise RowProblem(
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


LAYOUT_READERS = {
    "pairwise": _pairwise,
    "ranked": _ranked,
    "ultrafeedback": _ultrafeedback,
    "sharegpt": _sharegpt,
    "hh": _hh,
    "unpaired": _unpaired,
    "unpaired_messages": _unpaired_messages,
}


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
                raise RowProblem(
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
        raise RowProblem(MISSING_COLUMN, f"no 'prompt' column, and {columns} share no leading messages")
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
        raise RowProblem(EMPTY_PROMPT, "column 'prompt' is empty")
    if isinstance(prompt, list) and not any(m["content"].strip() for m in prompt):
        raise RowProblem(EMPTY_PROMPT, "the prompt messages are empty")


def _check(example: PreferenceExample, names: list[str], require_order: bool, minimum: int = 2) -> None:
    _check_prompt(example.prompt)
    k = len(example.completions)
    column = "chosen/rejected" if names[:1] == ["chosen"] else "completions"
    if k < minimum:
        raise RowProblem(TOO_FEW_COMPLETIONS, f"column '{column}' has {k} completion(s); at least 2 are needed")
    if len(example.scores) != k:
        raise RowProblem(
            SCORE_LENGTH_MISMATCH, f"{len(example.scores)} scores for {k} completions in column '{column}'"
        )
    for name, completion in zip(names, example.completions, strict=True):
        if _is_empty(completion):
            raise RowProblem(EMPTY_COMPLETION, f"column '{name}' is empty")
    if not require_order or k == 1:  # an unpaired row's label is its whole lesson
        return
    # Two identical completions have identical log-ratios, so a pair of them carries no
    # signal whatever their scores: equal scores are a tie, unequal ones contradict.
    seen: dict[str, int] = {}
    for i, completion in enumerate(example.completions):
        key = completion if isinstance(completion, str) else repr(completion)
        if key in seen:
            raise RowProblem(
                DUPLICATE_COMPLETION,
                f"column '{names[i]}' is identical to column '{names[seen[key]]}': a pair of equal completions "
                "carries no preference",
            )
        seen[key] = i
    if len(set(example.scores)) == 1:
        raise RowProblem(
            ALL_TIED, f"all {k} scores are equal ({example.scores[0]}): no preference order (the loss needs one)"
        )


def _is_empty(completion: Text) -> bool:
    if isinstance(completion, str):
        return not completion.strip()
    return not any(m["content"].strip() for m in completion)
