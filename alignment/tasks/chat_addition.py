"""The SmolLM2 recipes' task: one-digit addition asked in chat ("What is 3+4?",
"Add 3 and 4.", ...), graded by the answer the completion gives.

The answer is the first integer after the first '=' ("3 + 4 = 7."), else the last
integer in the text ("The sum of 3 and 4 is 7."); a completion with no integer gives no
answer. `score` is the recipes' evaluation, `judge` their online judge:

    evaluation:
      score: alignment.tasks.chat_addition:score
    online:
      judge: alignment.tasks.chat_addition:judge
"""

from __future__ import annotations

import re

PHRASINGS = ("What is {a}+{b}?", "What is {a} plus {b}?", "Add {a} and {b}.", "What's {a} + {b}?", "Compute {a}+{b}.")

_OPERANDS = re.compile(r"(\d+)\s*(?:\+|plus|and)\s*(\d+)")
_AFTER_EQUALS = re.compile(r"=\s*(-?\d+)")
_INTEGER = re.compile(r"-?\d+")


def true_sum(prompt: str | list[dict[str, str]]) -> int:
    """a + b for a prompt in one of the PHRASINGS (the last message of a chat prompt)."""
    text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
    match = _OPERANDS.search(text)
    if match is None:
        raise ValueError(f"the chat-addition task expects prompts like 'What is 3+4?', got {text!r}")
    return int(match.group(1)) + int(match.group(2))


def answer(completion: str) -> int | None:
    match = _AFTER_EQUALS.search(completion)
    if match is not None:
        return int(match.group(1))
    integers = _INTEGER.findall(completion)
    return int(integers[-1]) if integers else None


def is_right(prompt: str | list[dict[str, str]], completion: str) -> bool:
    return answer(completion) == true_sum(prompt)


def score(prompts: list, completions: list[str]) -> list[float]:
    """1.0 for a right answer, else 0.0: the mean is the greedy accuracy."""
    return [float(is_right(p, c)) for p, c in zip(prompts, completions, strict=True)]


def judge(prompts: list, completions: list[tuple[str, str]]) -> list[float]:
    """P(y0 > y1): 1 when only y0 is right, 0 when only y1 is, 1/2 otherwise."""
    out = []
    for prompt, (y0, y1) in zip(prompts, completions, strict=True):
        r0, r1 = is_right(prompt, y0), is_right(prompt, y1)
        out.append(0.5 if r0 == r1 else float(r0))
    return out
