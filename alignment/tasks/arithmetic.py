"""The tiny task: one-digit sums ("3+4=" -> "7"), with a checkable ground truth. Here
are its data generator (the tiny recipes' committed files), its rule-based judge, its
reward and its evaluation score.

A completion is read as the integer its leading digits spell ("7", "7!" and "71" read
as 7, 7 and 71); one that does not start with a digit is no answer. An answer is graded
by its closeness to the true sum, score = 6 - |answer - truth| (a rating from 0 to 6,
like the small integer grades that LiPO's gains 2^score - 1 expect).

    online:
      judge: alignment.tasks.arithmetic:closer_to_sum          # preferences
      judge: {type: reward_function, function: alignment.tasks.arithmetic:reward}
"""

from __future__ import annotations

import json
import math
import random
import re
import string
from pathlib import Path

_PROMPT = re.compile(r"(\d+)\s*\+\s*(\d+)\s*=\s*$")
_ANSWER = re.compile(r"\s*(\d+)")
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


JUNK = "".join(c for c in string.printable[:94] if not c.isdigit())


def junk_pair_row(rng: random.Random) -> dict:
    """Any answer over a completion that is no answer (1 to 3 non-digit characters): what
    a reward model must also learn before it judges a policy's samples, which start out
    as such junk."""
    prompt, truth = prompt_and_truth(rng)
    junk = "".join(rng.choices(JUNK, k=rng.randint(1, 3)))
    return {"prompt": prompt, "chosen": str(rng.choice(candidates(truth))), "rejected": junk}


def unpaired_row(rng: random.Random) -> dict:
    """One side of a fresh pair, with its label: the closer answer is desirable (KTO)."""
    pair = pair_row(rng)
    desirable = rng.random() < 0.5
    completion = pair["chosen"] if desirable else pair["rejected"]
    return {"prompt": pair["prompt"], "completion": completion, "label": desirable}


def write_data(directory: Path) -> None:
    """data/pairs_{train,test}.jsonl (pairwise: chosen is the closer answer) and
    data/lists_{train,test}.jsonl (K = 4 scored lists; equal distances tie),
    data/junk_pairs_train.jsonl (an answer over no answer) and
    data/unpaired_train.jsonl (one answer per prompt, labelled desirable or not). Train
    and test use different random streams: the test rows are fresh pairs and lists."""
    directory.mkdir(exist_ok=True)
    for split, n in SIZES.items():
        for kind, make in (("pairs", pair_row), ("lists", list_row)):
            rng = random.Random(f"{kind}-{SEEDS[split]}")
            path = directory / f"{kind}_{split}.jsonl"
            with path.open("w") as f:
                for _ in range(n):
                    f.write(json.dumps(make(rng)) + "\n")
            print(f"wrote {n} rows to {path}")
    # The reward model's extra training pairs (recipes/tiny/reward_model.yaml).
    rng = random.Random("junk-0")
    path = directory / "junk_pairs_train.jsonl"
    with path.open("w") as f:
        for _ in range(2000):
            f.write(json.dumps(junk_pair_row(rng)) + "\n")
    print(f"wrote 2000 rows to {path}")
    # KTO's unpaired training rows (recipes/tiny/kto_unpaired.yaml).
    rng = random.Random("unpaired-0")
    path = directory / "unpaired_train.jsonl"
    with path.open("w") as f:
        for _ in range(SIZES["train"]):
            f.write(json.dumps(unpaired_row(rng)) + "\n")
    print(f"wrote {SIZES['train']} rows to {path}")


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


def reward(prompts: list[str | list[dict[str, str]]], completions: list[str]) -> list[float]:
    """A reward for `type: reward_function` judges: the data's score 6 - |answer - truth|,
    and -1 for no answer (below every answer)."""
    return [max(-1.0, MAX_DISTANCE - distance(y, true_sum(p))) for p, y in zip(prompts, completions, strict=True)]
