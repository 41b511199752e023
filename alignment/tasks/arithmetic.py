"""The rule-based judge of the tiny task ("3+4=" -> "7"), for the tiny online recipes.

A completion is read as the integer its leading digits spell ("7", "7!" and "71" read
as 7, 7 and 71); one that does not start with a digit is no answer. The closer answer
to the true sum wins; no answer loses to any answer; equally good answers tie at 1/2.

    online:
      judge: alignment.tasks.arithmetic:closer_to_sum
"""

from __future__ import annotations

import math
import re

_PROMPT = re.compile(r"(\d+)\s*\+\s*(\d+)\s*=\s*$")
_ANSWER = re.compile(r"\s*(\d+)")


def true_sum(prompt: str | list[dict[str, str]]) -> int:
    text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
    match = _PROMPT.search(text)
    if match is None:
        raise ValueError(f"the arithmetic judge expects prompts like '3+4=', got {text!r}")
    return int(match.group(1)) + int(match.group(2))


def distance(completion: str, truth: int) -> float:
    """|answer - truth|, or inf when the completion gives no answer."""
    match = _ANSWER.match(completion)
    return math.inf if match is None else float(abs(int(match.group(1)) - truth))


def closer_to_sum(prompts: list[str | list[dict[str, str]]], completions: list[tuple[str, str]]) -> list[float]:
    """P(y0 > y1): 1 when y0's answer is closer to the sum, 0 when farther, 1/2 on a tie."""
    out = []
    for prompt, (y0, y1) in zip(prompts, completions, strict=True):
        truth = true_sum(prompt)
        d0, d1 = distance(y0, truth), distance(y1, truth)
        out.append(0.5 if d0 == d1 else float(d0 < d1))
    return out


def exact_sum(prompts: list[str | list[dict[str, str]]], completions: list[str]) -> list[float]:
    """A score for `evaluation.score`: 1 when the answer is the sum, else 0."""
    return [float(distance(y, true_sum(p)) == 0) for p, y in zip(prompts, completions, strict=True)]
