"""From (model, token batch) to per-completion log-probs, by one of several forward
strategies that all give the same numbers.

The batch is the collator's compact layout: the prompt once per list ([B, P]) and the K
completions ([B, K, C]). The strategies differ in what they compute:

- `baseline`: one right-padded row `prompt + completion` per real item, full logits in
  float32. What TRL's DPOTrainer does; the reference the others are tested against.
- `packed`: every real `prompt + completion` sequence back to back in one row, position
  ids restarting at 0 for each, no attention mask: transformers builds a block-causal
  mask from the position ids (SDPA, eager) or runs flash-attention varlen. No pad token
  is computed.
- `shared_prompt`: one row per list, `prompt + c_1 + ... + c_K`, with a block attention
  mask: the prompt is causal, each completion sees the prompt and its own past, and its
  positions continue from the prompt's. A prompt is computed once for its K completions.

`packed` and `shared_prompt` take log-probs from the final hidden states of the
completion tokens only, through the LM head in chunks of `chunk_size` tokens that are
recomputed in backward (`chunked_token_logps`): the [tokens, vocab] logits are never
held in float32 for the whole batch, and no LM-head work is spent on prompt tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

STRATEGIES = ("baseline", "packed", "shared_prompt")
FORWARD_CHOICES = ("auto", *STRATEGIES)


@dataclass
class PolicyForward:
    """One forward of a model on a collated preference batch: `logps`, the summed
    completion log-probs [B, K] (0 for padded items) or with `per_token` each completion
    token's log-prob [B, K, C] (0 past a completion's end); and with `wpo`, `wpo_sums`,
    the [B, K] sums over each completion of log p(y_t) - log sum_v p(v)^2 (no gradient):
    WPO's weights, from the same logits."""

    logps: Tensor
    wpo_sums: Tensor | None = None
    entropies: Tensor | None = None  # with `entropy`: each completion token's predictive entropy [B, K, C]


# ----------------------------------------------------------------------------- baseline


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


def token_entropy(logits: Tensor) -> Tensor:
    """-sum_v p_v log p_v of softmax(logits) over the last axis, in float32, with its gradient."""
    logits = logits.float()
    log_z = logits.logsumexp(-1)
    return log_z - (torch.softmax(logits, -1) * logits).sum(-1)


def log_sum_squared_probs(logits: Tensor) -> Tensor:
    """log sum_v p_v^2 of softmax(logits) over the last axis, without gradient (WPO)."""
    with torch.no_grad():
        logits = logits.float()
        return (2 * logits).logsumexp(-1) - 2 * logits.logsumexp(-1)


def _per_item(per_row: Tensor, batch: Mapping[str, Tensor], in_completion: Tensor, index: Tensor, per_token: bool):
    """Row-aligned token values [N, L-1] -> [B, K] sums, or [B, K, C] per token."""
    b, k = index[:, 0], index[:, 1]
    if per_token:
        # Row position j + 1 holds completion token j + 1 - prompt_len.
        prompt_len = batch["prompt_attention_mask"].sum(-1)[b]
        rows, cols = in_completion[:, 1:].nonzero(as_tuple=True)
        out = per_row.new_zeros(batch["completion_input_ids"].shape)
        return out.index_put((b[rows], k[rows], cols + 1 - prompt_len[rows]), per_row[rows, cols])
    sums = per_row.sum(-1)
    out = torch.zeros(batch["mask"].shape, dtype=sums.dtype, device=sums.device)
    return out.index_put((b, k), sums)


def baseline_logps(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    per_token: bool = False,
    wpo: bool = False,
    entropy: bool = False,
) -> PolicyForward:
    """Each real (prompt, completion) as its own row, one forward: [B, K] summed
    completion log-probs (0 for padded items), or [B, K, C] per token with `per_token`;
    with `wpo` also the [B, K] sums of log p(y_t) - log sum_v p_v^2 (no gradient), with
    `entropy` each completion token's predictive entropy [B, K, C] (with gradient)."""
    input_ids, attention_mask, in_completion, index = concatenated_rows(batch)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    scored = in_completion[:, 1:]
    per_row = token_logps(logits, input_ids) * scored
    out = PolicyForward(_per_item(per_row, batch, in_completion, index, per_token))
    if wpo:
        aligned = (per_row.detach() - log_sum_squared_probs(logits[:, :-1])) * scored
        out.wpo_sums = _per_item(aligned, batch, in_completion, index, per_token=False)
    if entropy:
        out.entropies = _per_item(token_entropy(logits[:, :-1]) * scored, batch, in_completion, index, per_token=True)
    return out


# ----------------------------------------------------------------------------- chunked LM head


def _chunk_logps(hidden: Tensor, targets: Tensor, head: nn.Module) -> Tensor:
    logits = head(hidden).float()
    return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)


def _chunk_logps_entropy(hidden: Tensor, targets: Tensor, head: nn.Module) -> tuple[Tensor, Tensor]:
    logits = head(hidden).float()
    log_z = logits.logsumexp(-1)
    return logits.gather(-1, targets[:, None]).squeeze(-1) - log_z, log_z - (torch.softmax(logits, -1) * logits).sum(-1)


def chunked_token_logps(
    hidden: Tensor, targets: Tensor, head: nn.Module, chunk_size: int | None, entropy: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """log softmax(head(hidden))[targets] for [T, H] hidden states, `chunk_size` rows at
    a time (with `entropy`, also each row's predictive entropy, from the same logits).
    Each chunk's logits live only inside its (checkpointed) call: backward recomputes
    them, so peak memory is one chunk's [chunk, vocab] float32 logits."""
    function = _chunk_logps_entropy if entropy else _chunk_logps
    if not chunk_size or hidden.size(0) <= chunk_size:
        return function(hidden, targets, head)
    parts = [
        checkpoint(function, hidden[s : s + chunk_size], targets[s : s + chunk_size], head, use_reentrant=False)
        for s in range(0, hidden.size(0), chunk_size)
    ]
    if entropy:
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return torch.cat(parts)


def _unwrapped(model: nn.Module) -> nn.Module:
    """The model inside DDP / DeepSpeed wrappers (each keeps it as `.module`)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def _output_head(model: nn.Module) -> nn.Module | None:
    """The LM head, when logits are exactly head(final hidden state): no softcapping or
    logit scaling (Gemma 2, Cohere), which a head-only recomputation would skip. Not
    under FSDP, which reshards the root's parameters (the head's) after the forward."""
    if "FullyShardedDataParallel" in type(model).__name__:
        return None
    inner = _unwrapped(model)
    if type(inner).__name__.startswith("FSDP"):  # FSDP2's fully_shard renames the class
        return None
    config = getattr(inner, "config", None)
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None) not in (None, 1.0):
        return None
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    return head


@dataclass
class Layout:
    """A forward's inputs plus where each completion token's prediction is read:
    row `rows[i]`, position `positions[i]` predicts `targets[i]`, owned by item (b, k)."""

    input_ids: Tensor
    position_ids: Tensor
    attention_mask: Tensor | None
    rows: Tensor
    positions: Tensor
    targets: Tensor
    owner_b: Tensor
    owner_k: Tensor
    owner_t: Tensor  # the token's index within its completion


def _completion_logps(
    model: nn.Module,
    layout: Layout,
    shape: torch.Size,
    chunk_size: int | None,
    per_token_width: int | None = None,
    wpo: bool = False,
    entropy: bool = False,
) -> PolicyForward:
    head = _output_head(model)
    squared, entropies = None, None
    kwargs = {"input_ids": layout.input_ids, "position_ids": layout.position_ids, "use_cache": False}
    if layout.attention_mask is not None:
        kwargs["attention_mask"] = layout.attention_mask
    if head is not None:
        # logits_to_keep=1: the model's own head runs on one position; ours on the completion tokens.
        out = model(**kwargs, output_hidden_states=True, logits_to_keep=1)
        hidden = out.hidden_states[-1][layout.rows, layout.positions]
        logps = chunked_token_logps(hidden, layout.targets, head, chunk_size, entropy)
        if entropy:
            logps, entropies = logps
        if wpo:  # one more pass of the head, chunk by chunk, without gradient
            step = chunk_size or hidden.size(0)
            with torch.no_grad():
                squared = torch.cat(
                    [log_sum_squared_probs(head(hidden[i : i + step])) for i in range(0, hidden.size(0), step)]
                )
    else:
        logits = model(**kwargs).logits[layout.rows, layout.positions].float()
        logps = logits.gather(-1, layout.targets[:, None]).squeeze(-1) - logits.logsumexp(-1)
        if wpo:
            squared = log_sum_squared_probs(logits)
        if entropy:
            entropies = token_entropy(logits)
    owners = (layout.owner_b, layout.owner_k)
    if per_token_width is not None:
        out = torch.zeros((*shape, per_token_width), dtype=logps.dtype, device=logps.device)
        out = out.index_put((*owners, layout.owner_t), logps)
    else:
        out = torch.zeros(shape, dtype=logps.dtype, device=logps.device).index_put(owners, logps, accumulate=True)
    result = PolicyForward(out)
    if squared is not None:
        aligned = torch.zeros(shape, dtype=logps.dtype, device=logps.device)
        result.wpo_sums = aligned.index_put(owners, logps.detach() - squared, accumulate=True)
    if entropies is not None:
        # per_token_width is set whenever entropies are asked for (policy_forward)
        per_token = torch.zeros((*shape, per_token_width), dtype=entropies.dtype, device=entropies.device)
        result.entropies = per_token.index_put((*owners, layout.owner_t), entropies)
    return result


# ----------------------------------------------------------------------------- layouts


def _items(batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(b, k) of every real item, its prompt length and its completion length."""
    index = batch["mask"].nonzero()
    b, k = index[:, 0], index[:, 1]
    prompt_len = batch["prompt_attention_mask"].sum(-1)
    completion_len = batch["completion_attention_mask"].sum(-1)
    return b, k, prompt_len[b], completion_len[b, k]


def _completion_tokens(batch: Mapping[str, Tensor], b: Tensor, k: Tensor, completion_len: Tensor):
    """Per completion token: its item number, its index t within the completion, its id."""
    item = torch.repeat_interleave(torch.arange(len(b), device=b.device), completion_len)
    starts = torch.cumsum(completion_len, 0) - completion_len
    t = torch.arange(int(completion_len.sum()), device=b.device) - starts[item]
    return item, t, batch["completion_input_ids"][b[item], k[item], t]


def packed_layout(batch: Mapping[str, Tensor]) -> Layout:
    """All real `prompt + completion` sequences in one row, positions restarting per sequence."""
    b, k, prompt_len, completion_len = _items(batch)
    seq_len = prompt_len + completion_len
    seq_start = torch.cumsum(seq_len, 0) - seq_len
    total = int(seq_len.sum())
    seq = torch.repeat_interleave(torch.arange(len(b), device=b.device), seq_len)
    pos = torch.arange(total, device=b.device) - seq_start[seq]
    in_prompt = pos < prompt_len[seq]
    prompt_tok = batch["prompt_input_ids"][b[seq], pos.clamp(max=batch["prompt_input_ids"].size(1) - 1)]
    comp_pos = (pos - prompt_len[seq]).clamp(min=0, max=batch["completion_input_ids"].size(2) - 1)
    comp_tok = batch["completion_input_ids"][b[seq], k[seq], comp_pos]
    input_ids = torch.where(in_prompt, prompt_tok, comp_tok)[None]

    item, t, targets = _completion_tokens(batch, b, k, completion_len)
    # Token t of a completion sits at seq_start + P + t and is predicted one position earlier.
    positions = seq_start[item] + prompt_len[item] + t - 1
    return Layout(
        input_ids=input_ids,
        position_ids=pos[None],
        attention_mask=None,
        rows=torch.zeros_like(positions),
        positions=positions,
        targets=targets,
        owner_b=b[item],
        owner_k=k[item],
        owner_t=t,
    )


def shared_prompt_layout(batch: Mapping[str, Tensor], dtype: torch.dtype) -> Layout:
    """One row per list: the prompt once, then its completions, each seeing the prompt
    and itself through a block attention mask (additive, for SDPA and eager)."""
    b, k, prompt_len, completion_len = _items(batch)
    lists = batch["mask"].size(0)
    device = b.device
    # Offset of each completion within its list's row: P_b + lengths of the earlier completions.
    row_total = prompt_len.new_zeros(lists).index_add(0, b, completion_len)
    # Items come in (b, k) order, so a list's items are contiguous: end = running total - the list's start.
    cumulative = torch.cumsum(completion_len, 0)
    before = cumulative - completion_len
    list_start = before.new_zeros(lists).scatter_reduce(0, b, before, "amin", include_self=False)
    completion_end = cumulative - list_start[b]
    offset = prompt_len + completion_end - completion_len
    all_prompt_len = batch["prompt_attention_mask"].sum(-1)
    width = int((all_prompt_len + row_total).max())

    t = torch.arange(width, device=device)
    # segment[r, j]: -1 prompt, item number for completion tokens, -2 padding
    segment = torch.full((lists, width), -2, dtype=torch.long, device=device)
    segment[t[None, :] < all_prompt_len[:, None]] = -1
    input_ids = torch.zeros((lists, width), dtype=torch.long, device=device)
    prompt_cols = t[None, :].expand(lists, -1).clamp(max=batch["prompt_input_ids"].size(1) - 1)
    input_ids = torch.where(segment == -1, batch["prompt_input_ids"].gather(1, prompt_cols), input_ids)
    position_ids = torch.where(segment == -1, t[None, :].expand(lists, -1), 0)

    item, tok_t, targets = _completion_tokens(batch, b, k, completion_len)
    cols = offset[item] + tok_t
    input_ids[b[item], cols] = targets
    segment[b[item], cols] = item
    position_ids[b[item], cols] = prompt_len[item] + tok_t

    # Token i sees j <= i when j is in the prompt or in i's own completion; padding sees itself.
    causal = t[None, :, None] >= t[None, None, :]
    same = segment[:, :, None] == segment[:, None, :]
    sees_prompt = (segment[:, None, :] == -1) & (segment[:, :, None] != -2)
    allowed = causal & (same | sees_prompt)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)

    # The first completion token is predicted by the last prompt token, the others by their predecessor.
    positions = torch.where(tok_t == 0, prompt_len[item] - 1, cols - 1)
    return Layout(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=mask[:, None],
        rows=b[item],
        positions=positions,
        targets=targets,
        owner_b=b[item],
        owner_k=k[item],
        owner_t=tok_t,
    )


# ----------------------------------------------------------------------------- entry point


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def resolve_strategy(model: nn.Module, strategy: str) -> str:
    """`auto`: `packed` under flash attention (its varlen kernel is built for it, and it
    cannot take a block mask), else `shared_prompt`."""
    if strategy not in FORWARD_CHOICES:
        raise ValueError(f"unknown forward strategy {strategy!r}; available: {', '.join(FORWARD_CHOICES)}")
    config = getattr(_unwrapped(model), "config", None)
    flash = "flash" in str(getattr(config, "_attn_implementation", "") or "")
    if strategy == "shared_prompt" and flash:
        raise ValueError(
            "training.forward: shared_prompt needs a block attention mask, which flash attention cannot take; "
            "use forward: packed (flash-attention varlen) or auto"
        )
    if strategy != "auto":
        return strategy
    return "packed" if flash else "shared_prompt"


def policy_forward(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    strategy: str = "baseline",
    chunk_size: int | None = 1024,
    per_token: bool = False,
    wpo: bool = False,
    entropy: bool = False,
) -> PolicyForward:
    """The forward by `strategy`; `chunk_size`: LM-head chunk in tokens (None: one chunk)."""
    strategy = resolve_strategy(model, strategy)
    if strategy == "baseline":
        return baseline_logps(model, batch, per_token=per_token, wpo=wpo, entropy=entropy)
    layout = packed_layout(batch) if strategy == "packed" else shared_prompt_layout(batch, _model_dtype(model))
    width = batch["completion_input_ids"].size(2) if per_token or entropy else None
    forward = _completion_logps(model, layout, batch["mask"].shape, chunk_size, width, wpo, entropy)
    if entropy and not per_token:
        forward.logps = forward.logps.sum(-1)
    return forward


def sequence_logps(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    strategy: str = "baseline",
    chunk_size: int | None = 1024,
    per_token: bool = False,
) -> Tensor:
    """Summed completion log-probs [B, K] of `model` on a collated preference batch
    (0 for padded items), or with `per_token` each completion token's [B, K, C]."""
    return policy_forward(model, batch, strategy, chunk_size, per_token).logps
