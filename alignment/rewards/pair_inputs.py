"""The input of a pairwise preference model: a prompt and two completions laid out by a
template, built from token pieces so that training (from a tokenized batch) and the
judge (from text) give the model identical ids."""

from __future__ import annotations

from typing import Any

from alignment.schema.online import PAIR_PLACEHOLDERS as PLACEHOLDERS


def template_segments(template: str, tokenizer: Any) -> list[list[int]]:
    """The token ids of the template's four literal parts: before {prompt}, between
    {prompt} and {completion_a}, between {completion_a} and {completion_b}, and after.
    Each placeholder must appear once, in that order."""
    pieces, rest = [], template
    for placeholder in PLACEHOLDERS:
        if template.count(placeholder) != 1 or placeholder not in rest:
            raise ValueError(
                f"the pair template must hold {', '.join(PLACEHOLDERS)} once each, in that order; got {template!r}"
            )
        before, rest = rest.split(placeholder, 1)
        pieces.append(before)
    pieces.append(rest)
    return [list(tokenizer(piece, add_special_tokens=False)["input_ids"]) if piece else [] for piece in pieces]


def pair_ids(prompt: list[int], a: list[int], b: list[int], segments: list[list[int]]) -> list[int]:
    """segment 0 + prompt + segment 1 + a + segment 2 + b + segment 3, where the prompt
    and completions are the policy's tokenization (BOS or chat template; EOS or end of turn)."""
    return [*segments[0], *prompt, *segments[1], *a, *segments[2], *b, *segments[3]]
