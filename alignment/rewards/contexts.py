"""VPL's data: each target pair with N other pairs labelled by the same user (its
context), sampled once, seeded, from the pairs of that user in the same split. Rows
come from any pairwise layout with a `user_id` column."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import numpy as np
import torch

from alignment.data.collator import PreferenceCollator
from alignment.data.example import DataError

logger = logging.getLogger(__name__)

CONTEXT_COLUMNS = ("context_chosen_input_ids", "context_rejected_input_ids", "user_index")


def add_user_contexts(dataset: datasets.Dataset, n: int, seed: int, split: str) -> tuple[datasets.Dataset, list[str]]:
    """`dataset` with, per row, the token ids (prompt + completion) of the chosen and
    rejected completions of `n` other pairs of its user, and the user's index; and the
    users in index order. A user with fewer than n + 1 pairs gives each of its rows all
    its other pairs (the count is logged)."""
    users = dataset["user_id"]
    missing = [i for i, user in enumerate(users) if not user]
    if missing:
        raise DataError(
            f"vpl: row {missing[0]} of data.{split} has no user_id ({len(missing)} such rows); VPL infers each "
            "user's latent from that user's other pairs, so every row needs a `user_id` column"
        )
    scores = dataset["scores"]
    lists = [i for i, s in enumerate(scores) if len(s) != 2]
    if lists:
        raise DataError(
            f"vpl: row {lists[0]} of data.{split} has {len(scores[lists[0]])} completions; VPL trains on pairs"
        )
    by_user: dict[str, list[int]] = defaultdict(list)
    for i, user in enumerate(users):
        by_user[user].append(i)
    names = sorted(by_user)
    index = {user: k for k, user in enumerate(names)}
    rng = np.random.default_rng(seed)
    prompts, completions = dataset["prompt_input_ids"], dataset["completion_input_ids"]

    def pair(j: int) -> tuple[list[int], list[int]]:
        best = int(np.argmax(scores[j]))
        return list(prompts[j]) + list(completions[j][best]), list(prompts[j]) + list(completions[j][1 - best])

    chosen, rejected, short = [], [], 0
    for i, user in enumerate(users):
        others = [j for j in by_user[user] if j != i]
        picked = rng.choice(len(others), size=min(n, len(others)), replace=False) if others else []
        short += len(picked) < n
        context = [pair(others[int(p)]) for p in picked]
        chosen.append([c for c, _ in context])
        rejected.append([r for _, r in context])
    if short:
        logger.warning(
            "vpl: %d rows of data.%s have fewer than %d context pairs (their users have fewer pairs)", short, split, n
        )
    out = dataset.add_column("context_chosen_input_ids", chosen)
    out = out.add_column("context_rejected_input_ids", rejected)
    return out.add_column("user_index", [index[user] for user in users]), names


class VPLCollator(PreferenceCollator):
    """The preference batch plus the contexts: `context_input_ids` and
    `context_attention_mask` [B, N, 2, L] (chosen, then rejected; right-padded),
    `context_mask` [B, N] (real context pairs) and `user_index` [B]."""

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch = super().__call__(rows)
        n = max(len(row["context_chosen_input_ids"]) for row in rows)
        width = max(
            (len(ids) for row in rows for key in CONTEXT_COLUMNS[:2] for ids in row[key]),
            default=1,
        )
        ids = torch.full((len(rows), n, 2, max(width, 1)), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        mask = torch.zeros((len(rows), n), dtype=torch.bool)
        for b, row in enumerate(rows):
            for side, key in enumerate(CONTEXT_COLUMNS[:2]):
                for k, seq in enumerate(row[key]):
                    ids[b, k, side, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
                    attention[b, k, side, : len(seq)] = 1
                    mask[b, k] = True
        batch.update(
            context_input_ids=ids,
            context_attention_mask=attention,
            context_mask=mask,
            user_index=torch.tensor([int(row["user_index"]) for row in rows], dtype=torch.long),
        )
        return batch
