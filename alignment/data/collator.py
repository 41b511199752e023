"""Tokenized rows -> one padded batch of lists ([B, K, C] completions).

Lists in a batch may have different sizes K: shorter lists get empty padded items,
marked False in `mask` and with score 0 and length 0, so losses can ignore them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any

import torch

# Columns with their own handling; other per-item number lists pass through as [B, K].
KNOWN_KEYS = frozenset(
    {
        "prompt_input_ids",
        "completion_input_ids",
        "scores",
        "prompt_truncated",
        "completions_truncated",
        "tokens_dropped",
        "margin",
        "user_id",
    }
)


class PreferenceCollator:
    """Pads a list of tokenized rows into tensors:

    - `prompt_input_ids`, `prompt_attention_mask`: [B, P], right-padded
    - `completion_input_ids`, `completion_attention_mask`: [B, K, C], right-padded
    - `scores` [B, K] float32, `mask` [B, K] bool (real items), `lengths` [B, K] long
    - `margins` [B] float32, the reward-model margin of each row, when the rows have one
    - any other row key holding K numbers (e.g. `reference_logps`): [B, K] float32
    """

    def __init__(self, pad_token_id: int) -> None:
        if pad_token_id is None:
            raise ValueError("PreferenceCollator needs a pad_token_id (set tokenizer.pad_token)")
        self.pad_token_id = pad_token_id

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("cannot collate an empty batch")
        prompts = [_to_list(row["prompt_input_ids"]) for row in rows]
        completions = [[_to_list(c) for c in row["completion_input_ids"]] for row in rows]
        ks = [len(items) for items in completions]
        batch_size, k_max = len(rows), max(ks)
        c_max = max((len(c) for items in completions for c in items), default=0)

        prompt_ids, prompt_mask = right_padded(prompts, self.pad_token_id)
        completion_ids = torch.full((batch_size, k_max, c_max), self.pad_token_id, dtype=torch.long)
        completion_mask = torch.zeros((batch_size, k_max, c_max), dtype=torch.long)
        lengths = torch.zeros((batch_size, k_max), dtype=torch.long)
        mask = torch.zeros((batch_size, k_max), dtype=torch.bool)
        for b, items in enumerate(completions):
            mask[b, : len(items)] = True
            for k, ids in enumerate(items):
                completion_ids[b, k, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                completion_mask[b, k, : len(ids)] = 1
                lengths[b, k] = len(ids)

        batch = {
            "prompt_input_ids": prompt_ids,
            "prompt_attention_mask": prompt_mask,
            "completion_input_ids": completion_ids,
            "completion_attention_mask": completion_mask,
            "scores": _per_item(rows, "scores", ks, k_max),
            "mask": mask,
            "lengths": lengths,
        }
        if "margin" in rows[0]:
            batch["margins"] = torch.tensor([float(row["margin"]) for row in rows], dtype=torch.float32)
        for key in _extra_keys(rows[0], ks[0]):
            batch[key] = _per_item(rows, key, ks, k_max)
        return batch


def _to_list(values: Any) -> list[Any]:
    return values.tolist() if isinstance(values, torch.Tensor) else list(values)


def right_padded(sequences: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id sequences as one right-padded [N, longest] batch and its attention mask:
    under causal attention the real tokens never see the pads and keep positions 0..n-1,
    so a padded sequence scores as it would alone."""
    width = max((len(s) for s in sequences), default=0)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        attention[i, : len(seq)] = 1
    return ids, attention


def _is_number_list(value: Any, k: int) -> bool:
    if isinstance(value, torch.Tensor):
        return value.dim() == 1 and len(value) == k and value.dtype != torch.bool
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != k:
        return False
    return all(isinstance(v, Real) and not isinstance(v, bool) for v in value)


def _extra_keys(first: Mapping[str, Any], k: int) -> list[str]:
    """Keys beyond the known columns whose value in the first row is a list of K numbers."""
    return [key for key, value in first.items() if key not in KNOWN_KEYS and _is_number_list(value, k)]


def _per_item(rows: Sequence[Mapping[str, Any]], key: str, ks: list[int], k_max: int) -> torch.Tensor:
    out = torch.zeros((len(rows), k_max), dtype=torch.float32)
    for b, (row, k) in enumerate(zip(rows, ks, strict=True)):
        value = row.get(key)
        if not _is_number_list(value, k):
            # One row with a malformed per-item column would silently misalign the batch.
            raise ValueError(
                f"row {b} of the batch: {key!r} should hold {k} numbers (one per completion), got {value!r}"
            )
        out[b, :k] = torch.as_tensor(_to_list(value), dtype=torch.float32)
    return out


class PromptCollator:
    """Pads prompt rows for online training: `prompt_input_ids` and
    `prompt_attention_mask` [B, P] (right-padded), `prompts`, the raw prompts
    (strings or message lists) for the judge, and `columns`, each row's other columns
    (a dict), for reward functions."""

    def __init__(self, pad_token_id: int) -> None:
        if pad_token_id is None:
            raise ValueError("PromptCollator needs a pad_token_id (set tokenizer.pad_token)")
        self.pad_token_id = pad_token_id

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not rows:
            raise ValueError("cannot collate an empty batch")
        ids, attention = right_padded([_to_list(row["prompt_input_ids"]) for row in rows], self.pad_token_id)
        prompts = [json.loads(row["prompt"]) for row in rows]
        batch = {"prompt_input_ids": ids, "prompt_attention_mask": attention, "prompts": prompts}
        if all("columns" in row for row in rows):  # the rows' other columns, for reward functions
            batch["columns"] = [json.loads(row["columns"]) for row in rows]
        return batch
