"""PreferenceExample -> token ids: the prompt once, each completion after it.

Plain text: the prompt gets the tokenizer's own special tokens (BOS, if any) and each
completion ends with EOS. Chat messages: the chat template renders the prompt with the
generation prompt, and each completion is what the template adds after it.
Truncation keeps the end of the prompt and cuts the end of completions; every cut is
counted in the row's stats columns, never silent.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets

from alignment.data.example import BadRowError, DataError, PreferenceExample

PROMPT_FILLS_MAX_LENGTH = "prompt_fills_max_length"

# Fixed output types of a tokenized row (`tokenize_example`'s fields and the bookkeeping
# the bad-row policy reads): the same features for every source, so sources concatenate,
# and bad rows (empty values) never leave a column without a type.
TOKENIZED_FEATURES = datasets.Features(
    {
        "prompt_input_ids": datasets.List(datasets.Value("int32")),
        "completion_input_ids": datasets.List(datasets.List(datasets.Value("int32"))),
        "scores": datasets.List(datasets.Value("float64")),
        "prompt_truncated": datasets.Value("bool"),
        "completions_truncated": datasets.Value("int32"),
        "tokens_dropped": datasets.Value("int64"),
        "margin": datasets.Value("float64"),
        "user_id": datasets.Value("string"),
        "_index": datasets.Value("int64"),
        "_bad_reason": datasets.Value("string"),
        "_bad_detail": datasets.Value("string"),
    }
)
STATS_COLUMNS = ("prompt_truncated", "completions_truncated", "tokens_dropped")

# `datasets` fingerprints a module-level function by its name only; salting the data
# pipeline's map with this module's source makes an edited tokenization step recompute
# instead of reusing a stale cache.
CODE_VERSION = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def resolve_chat_template(value: str | None) -> str | None:
    """`data.chat_template` is a Jinja template or a path to a file holding one."""
    if value is not None and os.path.isfile(value):
        with open(value, encoding="utf-8") as handle:
            return handle.read()
    return value


def tokenize_example(
    example: PreferenceExample | Mapping[str, Any],
    tokenizer: Any,
    *,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    chat_template: str | None = None,
) -> dict[str, Any]:
    """Token ids of one example plus its truncation stats.

    Returns `prompt_input_ids`, `completion_input_ids` (one list per completion),
    `scores`, `prompt_truncated`, `completions_truncated`, `tokens_dropped`, and the
    reward-model fields `margin` and `user_id`.
    Raises BadRowError("prompt_fills_max_length") when the prompt leaves no room for a
    completion, and DataError when conversational data has no chat template."""
    if isinstance(example, Mapping):
        example = PreferenceExample(
            example["prompt"],
            list(example["completions"]),
            list(example["scores"]),
            example.get("tools"),
            example.get("margin", 0.0),
            example.get("user_id", ""),
        )
    if isinstance(example.prompt, str):
        prompt_ids, completion_ids = _tokenize_text(example, tokenizer)
    else:
        prompt_ids, completion_ids = _tokenize_chat(example, tokenizer, chat_template)

    dropped = 0
    prompt_truncated = max_prompt_length is not None and len(prompt_ids) > max_prompt_length
    if prompt_truncated:
        # Keep the end: the last turn, right before the answer, matters most.
        dropped += len(prompt_ids) - max_prompt_length
        prompt_ids = prompt_ids[-max_prompt_length:]
    completions_truncated = 0
    if max_length is not None:
        room = max_length - len(prompt_ids)
        if room <= 0:
            raise BadRowError(
                "<example>",
                -1,
                PROMPT_FILLS_MAX_LENGTH,
                f"the prompt has {len(prompt_ids)} tokens and max_length is {max_length}: no room for a completion",
            )
        for i, ids in enumerate(completion_ids):
            if len(ids) > room:
                completions_truncated += 1
                dropped += len(ids) - room
                completion_ids[i] = ids[:room]
    return {
        "prompt_input_ids": prompt_ids,
        "completion_input_ids": completion_ids,
        "scores": [float(s) for s in example.scores],
        "prompt_truncated": prompt_truncated,
        "completions_truncated": completions_truncated,
        "tokens_dropped": dropped,
        "margin": float(example.margin),
        "user_id": example.user_id,
    }


def prompt_token_ids(prompt: Any, tokenizer: Any, chat_template: str | None = None) -> list[int]:
    """The prompt's tokens as a completion would follow them: the tokenizer's own
    special tokens for plain text, the chat template with its generation prompt for
    messages. Online training generates after exactly these tokens."""
    if isinstance(prompt, str):
        return list(tokenizer(prompt)["input_ids"])
    _require_chat_template(tokenizer, chat_template)
    text = _render(tokenizer, list(prompt), chat_template, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _require_chat_template(tokenizer: Any, chat_template: str | None) -> None:
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"the data is conversational but the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat "
            "template; set `data.chat_template` in the recipe (a Jinja template or a file holding one)"
        )


def _tokenize_text(example: PreferenceExample, tokenizer: Any) -> tuple[list[int], list[list[int]]]:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token: plain-text completions need one to end on")
    prompt_ids = list(tokenizer(example.prompt)["input_ids"])
    completion_ids = [
        list(tokenizer(completion, add_special_tokens=False)["input_ids"]) + [eos] for completion in example.completions
    ]
    return prompt_ids, completion_ids


def _tokenize_chat(
    example: PreferenceExample, tokenizer: Any, chat_template: str | None
) -> tuple[list[int], list[list[int]]]:
    _require_chat_template(tokenizer, chat_template)
    prompt = list(example.prompt)
    prompt_text = _render(tokenizer, prompt, chat_template, add_generation_prompt=True, tools=example.tools)
    completion_texts = []
    for completion in example.completions:
        conversation = prompt + list(completion)
        full_text = _render(tokenizer, conversation, chat_template, add_generation_prompt=False, tools=example.tools)
        if not full_text.startswith(prompt_text):
            raise ValueError(
                "the chat template does not render the conversation as the prompt (with generation prompt) "
                f"followed by the completion, so the completion cannot be cut out; prompt: {prompt_text[-80:]!r}, "
                f"conversation: {full_text[: len(prompt_text) + 40][-120:]!r}. Use a template that does, via "
                "`data.chat_template`"
            )
        completion_texts.append(full_text[len(prompt_text) :])
    # The template writes the special tokens itself: no BOS/EOS added on top.
    prompt_ids = list(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    completion_ids = [list(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in completion_texts]
    return prompt_ids, completion_ids


def _render(
    tokenizer: Any,
    messages: list[Any],
    chat_template: str | None,
    add_generation_prompt: bool,
    tools: list[dict] | None = None,
) -> str:
    return tokenizer.apply_chat_template(
        messages,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        chat_template=chat_template,
        tools=tools,
    )
