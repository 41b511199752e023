"""Conversations written in other people's formats, as `{"role", "content"}` messages.

- **ShareGPT** (LLaMA-Factory's `sharegpt` format, and many DPO sets built with it):
  messages `{"from", "value"}` with the roles `human`, `gpt`, `system`,
  `function_call` and `observation`.
- **Anthropic HH** (Anthropic/hh-rlhf): one string per conversation,
  `"\\n\\nHuman: ...\\n\\nAssistant: ..."`.

A malformed value raises ValueError with what is wrong; the adapters turn it into a
bad row naming the column."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from alignment.data.example import Message

# ShareGPT's `from` -> the chat template's role. A function call is the assistant's own
# turn (its text is the call, as LLaMA-Factory renders it); an observation is what the
# tool answered.
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}

HH_TURN = re.compile(r"\n\n(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def is_sharegpt_message(value: Any) -> bool:
    return isinstance(value, Mapping) and "from" in value and "value" in value


def sharegpt_messages(value: Any, column: str) -> list[Message]:
    """A ShareGPT message, or a list of them, as messages."""
    items = [value] if isinstance(value, Mapping) else value
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise ValueError(f"column '{column}' should be a {{from, value}} message or a list of them, got {items!r:.60}")
    messages = []
    for i, item in enumerate(items):
        if not is_sharegpt_message(item) or not isinstance(item["value"], str):
            raise ValueError(f"column '{column}' message {i} should have 'from' and a string 'value', got {item!r:.80}")
        role = SHAREGPT_ROLES.get(str(item["from"]))
        if role is None:
            roles = ", ".join(sorted(SHAREGPT_ROLES))
            raise ValueError(f"column '{column}' message {i} has the role {item['from']!r}; ShareGPT roles: {roles}")
        messages.append({"role": role, "content": item["value"]})
    return messages


def is_hh_transcript(value: Any) -> bool:
    return isinstance(value, str) and value.lstrip(" ").startswith(("\n\nHuman:", "Human:"))


def hh_messages(transcript: str, column: str) -> list[Message]:
    """`\\n\\nHuman: q\\n\\nAssistant: a ...` as user and assistant messages."""
    text = transcript if transcript.startswith("\n\n") else "\n\n" + transcript.lstrip(" ")
    parts = HH_TURN.split(text)
    if parts[0].strip() or parts[1:2] != ["Human"]:
        raise ValueError(f"column '{column}' does not start with a 'Human:' turn: {transcript[:60]!r}")
    # split() keeps the speakers: ['', 'Human', ' q', 'Assistant', ' a', ...]
    return [
        {"role": HH_ROLES[speaker], "content": content.strip()}
        for speaker, content in zip(parts[1::2], parts[2::2], strict=True)
    ]
