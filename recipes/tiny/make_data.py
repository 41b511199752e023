"""Generate the tiny recipe's preference data (deterministic; the outputs are committed).

    python recipes/tiny/make_data.py

The task has a checkable ground truth: a prompt asks for a sum of two digits ("3+4="), and each
candidate answer is graded by its closeness to the true sum, score = 6 - |answer - truth|
(a rating from 0 to 6, like the small integer grades that LiPO's gains 2^score - 1
expect): the correct answer scores 6 and further answers score less. Written files:

    data/pairs_{train,test}.jsonl  pairwise: {"prompt", "chosen", "rejected"}; chosen is the closer answer
    data/lists_{train,test}.jsonl  K = 4:    {"prompt", "completions", "scores"}; equal distances tie

Train and test use different random streams: the test rows are fresh pairs and lists.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent / "data"
MAX_OPERAND = 9
MAX_DISTANCE = 6
SIZES = {"train": 4000, "test": 400}
SEEDS = {"train": 0, "test": 1}


def score(answer: int, truth: int) -> float:
    return float(MAX_DISTANCE - abs(answer - truth))


def candidates(truth: int) -> list[int]:
    return [truth + d for d in range(-MAX_DISTANCE, MAX_DISTANCE + 1) if truth + d >= 0]


def prompt_and_truth(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(0, MAX_OPERAND), rng.randint(0, MAX_OPERAND)
    return f"{a}+{b}=", a + b


def pair_row(rng: random.Random) -> dict:
    prompt, truth = prompt_and_truth(rng)
    while True:
        x, y = rng.sample(candidates(truth), 2)
        if abs(x - truth) != abs(y - truth):
            break
    chosen, rejected = sorted((x, y), key=lambda v: abs(v - truth))
    return {"prompt": prompt, "chosen": str(chosen), "rejected": str(rejected)}


def list_row(rng: random.Random, k: int = 4) -> dict:
    prompt, truth = prompt_and_truth(rng)
    while True:
        answers = rng.sample(candidates(truth), k)
        scores = [score(a, truth) for a in answers]
        if len(set(scores)) > 1:
            break
    return {"prompt": prompt, "completions": [str(a) for a in answers], "scores": scores}


def main() -> None:
    HERE.mkdir(exist_ok=True)
    for split, n in SIZES.items():
        for kind, make in (("pairs", pair_row), ("lists", list_row)):
            rng = random.Random(f"{kind}-{SEEDS[split]}")
            path = HERE / f"{kind}_{split}.jsonl"
            with path.open("w") as f:
                for _ in range(n):
                    f.write(json.dumps(make(rng)) + "\n")
            print(f"wrote {n} rows to {path}")


if __name__ == "__main__":
    main()
