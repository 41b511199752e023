"""From (model, token batch) to per-completion log-probs.

Every forward strategy lives behind `sequence_logps`, so faster ones can replace the
baseline without touching losses or trainers. The batch is the collator's compact
layout: the prompt once per list ([B, P]) and the K completions ([B, K, C])."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

STRATEGIES = ("baseline",)


def concatenated_rows(batch: Mapping[str, Tensor], pad_token_id: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One right-padded row `prompt + completion` per real list item.

    Returns (input_ids [N, L], attention_mask [N, L], completion_mask [N, L], index [N, 2])
    where `index` holds the (b, k) of each row and `completion_mask` marks the tokens
    whose log-probs are summed."""
    prompt_ids = batch["prompt_input_ids"]
    completion_ids = batch["completion_input_ids"]
    index = batch["mask"].nonzero()
    b, k = index[:, 0], index[:, 1]
    prompt_len = batch["prompt_attention_mask"].sum(-1)[b, None]
    completion_len = batch["completion_attention_mask"].sum(-1)[b, k][:, None]
    width = int((prompt_len + completion_len).max())
    t = torch.arange(width, device=prompt_ids.device)[None, :]
    from_prompt = prompt_ids[b].gather(1, t.clamp(max=prompt_ids.size(1) - 1).expand(len(b), -1))
    offset = (t - prompt_len).clamp(0, completion_ids.size(2) - 1)
    from_completion = completion_ids[b, k].gather(1, offset)
    in_completion = (t >= prompt_len) & (t < prompt_len + completion_len)
    input_ids = torch.where(t < prompt_len, from_prompt, torch.where(in_completion, from_completion, pad_token_id))
    attention_mask = (t < prompt_len + completion_len).long()
    return input_ids, attention_mask, in_completion, index


def token_logps(logits: Tensor, input_ids: Tensor) -> Tensor:
    """log p(x_t | x_<t) for t >= 1, in float32: [N, L-1]."""
    logits = logits[:, :-1].float()
    targets = input_ids[:, 1:, None]
    return logits.gather(-1, targets).squeeze(-1) - logits.logsumexp(-1)


def baseline_logps(model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    """Each real (prompt, completion) as its own row, one forward: [B, K] summed
    completion log-probs (0 for padded items)."""
    input_ids, attention_mask, in_completion, index = concatenated_rows(batch)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    per_token = token_logps(logits, input_ids)
    sums = (per_token * in_completion[:, 1:]).sum(-1)
    out = torch.zeros(batch["mask"].shape, dtype=sums.dtype, device=sums.device)
    return out.index_put((index[:, 0], index[:, 1]), sums)


def sequence_logps(model: nn.Module, batch: Mapping[str, Tensor], strategy: str = "baseline") -> Tensor:
    """Summed completion log-probs [B, K] of `model` on a collated preference batch."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown forward strategy {strategy!r}; available: {', '.join(STRATEGIES)}")
    return baseline_logps(model, batch)
