"""DAPO's dynamic sampling (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement
Learning System at Scale", section 3.2): a prompt whose K completions all get the same
score has a group-relative advantage of 0 for every completion, so it carries no policy
gradient and only shrinks the batch's effective size. Such groups are dropped and more
prompts are drawn until the batch holds its size in informative groups,

    0 < |{y_i : score(y_i) differs within the group}|,   i.e. not all K scores equal,

with a cap on the draws (verl's `max_num_gen_batches`). The trainer draws; this module
says which groups are informative and assembles the batch from the draws."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from alignment.online.feedback import Feedback
from alignment.online.sampler import GroupSamples


def informative_groups(scores: Tensor, scorable: Tensor | None = None) -> Tensor:
    """[B] true for a group with at least two scored completions whose scores are not all
    equal (exactly: any difference gives a nonzero advantage)."""
    valid = torch.ones_like(scores, dtype=torch.bool) if scorable is None else scorable.to(torch.bool)
    high = torch.where(valid, scores, -torch.inf).amax(-1)
    low = torch.where(valid, scores, torch.inf).amin(-1)
    return (valid.sum(-1) >= 2) & (high > low)


@dataclass
class Draw:
    """One micro-batch of prompts (the collated inputs), its samples and their feedback."""

    inputs: dict[str, Any]
    samples: GroupSamples
    feedback: Feedback


@dataclass
class DynamicBatch:
    """The assembled batch: `trained` [B] is false for the groups that filled a short
    batch after the last draw (they are masked out of the loss)."""

    inputs: dict[str, Any]
    samples: GroupSamples
    feedback: Feedback
    trained: Tensor
    filtered: int  # groups drawn whose scores were all equal
    draws: int
    short: int  # informative groups missing after the last draw


def padded_cat(tensors: Sequence[Tensor], value: int | bool = 0) -> Tensor:
    """Concatenate along dim 0, right-padding the last dim to the widest."""
    width = max(t.size(-1) for t in tensors)
    return torch.cat([nn.functional.pad(t, (0, width - t.size(-1)), value=value) for t in tensors])


def assemble(draws: Sequence[Draw], size: int, kind: str, pad_token_id: int) -> DynamicBatch:
    """`size` groups from `draws`, in draw order: the informative ones first, then (if
    short) the others, which are not to be trained. `kind` is the loss's feedback."""
    flags = [informative_groups(d.feedback.scores(kind), d.feedback.scorable).cpu() for d in draws]
    good = [(i, b) for i, f in enumerate(flags) for b in f.nonzero().flatten().tolist()]
    other = [(i, b) for i, f in enumerate(flags) for b in (~f).nonzero().flatten().tolist()]
    chosen = (good + other)[:size]
    by_draw: dict[int, list[int]] = {}
    for i, b in sorted(chosen):  # each draw's picks together, in its own order
        by_draw.setdefault(i, []).append(b)
    good_set = set(good)
    trained = torch.tensor([(i, b) in good_set for i in sorted(by_draw) for b in by_draw[i]], dtype=torch.bool)
    parts = [(draws[i], torch.tensor(rows, dtype=torch.long)) for i, rows in sorted(by_draw.items())]

    def rows_of(name: str) -> list[Tensor]:
        return [d.inputs[name][rows.to(d.inputs[name].device)] for d, rows in parts]

    inputs: dict[str, Any] = {
        "prompt_input_ids": padded_cat(rows_of("prompt_input_ids"), pad_token_id),
        "prompt_attention_mask": padded_cat(rows_of("prompt_attention_mask"), 0),
    }
    for key in ("prompts", "columns"):
        if all(key in d.inputs for d, _ in parts):
            inputs[key] = [d.inputs[key][b] for d, rows in parts for b in rows.tolist()]

    def samples_of(name: str) -> list[Tensor]:
        return [getattr(d.samples, name)[rows.to(d.samples.finished.device)] for d, rows in parts]

    samples = GroupSamples(
        completion_ids=padded_cat(samples_of("completion_ids"), 0),
        completion_mask=padded_cat(samples_of("completion_mask"), 0),
        finished=torch.cat(samples_of("finished")),
        from_policy=draws[0].samples.from_policy,
        logprobs=None if any(d.samples.logprobs is None for d, _ in parts) else padded_cat(samples_of("logprobs"), 0.0),
    )
    feedback = Feedback.cat([d.feedback.select(rows.to(d.feedback.preferences.device)) for d, rows in parts])
    filtered = sum(int((~f).sum()) for f in flags)
    return DynamicBatch(
        inputs, samples, feedback, trained, filtered=filtered, draws=len(draws), short=max(0, size - len(good))
    )
