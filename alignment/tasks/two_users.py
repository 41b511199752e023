"""A synthetic two-user preference task for VPL, with controversial pairs.

Each row offers two completions, one of three digits ("472") and one of three letters
("kqx"). Asked for a number ("number 17:") both users prefer the digits, asked for a
word ("word 17:") both prefer the letters; asked for a tag ("tag 17:") user `digits`
prefers the digits and user `letters` the letters. The tag pairs are controversial: a
single Bradley-Terry reward model can do no better than chance (0.5) on them, and a
model that infers who is asking from a few of that user's labelled pairs can be right
every time. Half the training rows are tag rows; the test rows are all tag rows.

    python recipes/tiny/make_data.py      # also writes data/two_users_{train,test}.jsonl
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

USERS = ("digits", "letters")
SIZES = {"train": 2000, "test": 400}
SEEDS = {"train": 0, "test": 1}


def row(rng: random.Random, controversial_only: bool = False) -> dict:
    user = rng.choice(USERS)
    digits = "".join(rng.choices(string.digits, k=3))
    letters = "".join(rng.choices(string.ascii_lowercase, k=3))
    ask = "tag" if controversial_only else rng.choice(("tag", "tag", "number", "word"))
    wants_digits = ask == "number" or (ask == "tag" and user == "digits")
    chosen, rejected = (digits, letters) if wants_digits else (letters, digits)
    return {"prompt": f"{ask} {rng.randint(0, 99)}:", "chosen": chosen, "rejected": rejected, "user_id": user}


def write_data(directory: Path) -> None:
    """data/two_users_{train,test}.jsonl: pairwise rows with a `user_id` column."""
    directory.mkdir(exist_ok=True)
    for split, n in SIZES.items():
        rng = random.Random(f"two-users-{SEEDS[split]}")
        path = directory / f"two_users_{split}.jsonl"
        with path.open("w") as f:
            for _ in range(n):
                f.write(json.dumps(row(rng, controversial_only=split == "test")) + "\n")
        print(f"wrote {n} rows to {path}")


def user_context(directory: Path, user: str, n: int = 8) -> Path:
    """A JSONL of `n` of `user`'s training pairs: the `user_context` of a `vpl` judge."""
    rows = [json.loads(line) for line in (directory / "two_users_train.jsonl").read_text().splitlines()]
    path = directory / f"two_users_context_{user}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [r for r in rows if r["user_id"] == user][:n]))
    return path
