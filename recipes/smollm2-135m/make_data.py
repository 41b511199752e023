"""Writes the SmolLM2 recipes' data: one-digit addition in chat (`alignment.tasks.chat_addition`).

- The 100 sums a+b (a, b in 0..9) are split by sum, not by prompt: 20 held-out (a, b)
  never appear in training, in any phrasing.
- train.jsonl: the other 80 (a, b) in all 5 phrasings, 400 pairs. chosen is the plain
  answer "a + b = s."; rejected is one of the failure styles SmolLM2-135M-Instruct shows
  on this task (a wrong sum, a wrong "The answer ... is", an answer that never comes),
  always graded wrong by the task's own `score`.
- test.jsonl: the 20 held-out (a, b) in all 5 phrasings, 100 pairs in the same form.
  The recipes' evaluation generates on these prompts.

    python recipes/smollm2-135m/make_data.py
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

from alignment.tasks.chat_addition import PHRASINGS, is_right

HERE = Path(__file__).parent / "data"


def rejected(a: int, b: int, rng: random.Random) -> str:
    s = a + b
    wrong = rng.choice([w for w in {s + 1, s - 1, s + 2, s + 10, a * b, 10 * a + b, 10} if w != s and w >= 0])
    styles = [
        f"{a} + {b} = {wrong}.",
        f"{a} + {b} = {wrong}\n\nThis is a classic example of addition.",
        f"The answer to this classic math problem is {wrong}.",
        f"To solve this problem, we need to find the sum of {a} and {b}.",
        f"The numbers {a} and {b} are both numbers.",
    ]
    return rng.choice(styles)


def pair(a: int, b: int, phrasing: str, rng: random.Random) -> dict:
    prompt = [{"role": "user", "content": phrasing.format(a=a, b=b)}]
    chosen = f"{a} + {b} = {a + b}."
    while True:
        bad = rejected(a, b, rng)
        if not is_right(prompt, bad):  # "sum of 0 and 8" reads as 8, which is right for 0+8
            break
    assert is_right(prompt, chosen)
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": bad}],
    }


def main() -> None:
    rng = random.Random(0)
    sums = list(itertools.product(range(10), range(10)))
    rng.shuffle(sums)
    held_out, trained = sums[:20], sums[20:]
    HERE.mkdir(exist_ok=True)
    for name, chosen_sums in (("train", trained), ("test", held_out)):
        rows = [pair(a, b, phrasing, rng) for a, b in chosen_sums for phrasing in PHRASINGS]
        rng.shuffle(rows)
        with open(HERE / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        print(f"{HERE / name}.jsonl: {len(rows)} pairs")


if __name__ == "__main__":
    main()
