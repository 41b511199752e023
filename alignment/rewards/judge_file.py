"""`alignment_judge.json`: written next to a judge trained here, it says what kind of
judge the checkpoint is and how its inputs were tokenized, so that the judge scores
exactly the token sequences the model was trained on."""

from __future__ import annotations

import json
import os
from typing import Any

JUDGE_FILENAME = "alignment_judge.json"
JUDGE_TYPES = {"reward": "reward_model", "preference": "pairwise", "vpl": "vpl"}


def write_judge_file(directory: str, kind: str, **details: Any) -> None:
    """Record `kind` (reward, preference or vpl) and its input layout in `directory`."""
    info = {"kind": kind, "judge_type": JUDGE_TYPES[kind], "tokenization": "alignment", **details}
    with open(os.path.join(directory, JUDGE_FILENAME), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)


def read_judge_file(directory: str) -> dict[str, Any] | None:
    """The checkpoint's judge record, or None for a model not trained here."""
    path = os.path.join(directory, JUDGE_FILENAME)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
