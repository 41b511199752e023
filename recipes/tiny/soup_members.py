"""Write the two checkpoints that recipes/tiny/soup.yaml averages: the tiny DPO recipe
from the same initial weights, trained with two seeds (another data order) for 40 steps.

    python recipes/tiny/soup_members.py [OUTPUT_DIR]     # default outputs/tiny-soup
"""

from __future__ import annotations

import sys
from pathlib import Path

from alignment.config import load_config
from alignment.run import train

RECIPE = Path(__file__).parent / "dpo.yaml"


def write_members(root: Path, steps: int = 40) -> list[Path]:
    members = []
    for name, seed in (("member-a", 1), ("member-b", 2)):
        out = root / name
        overrides = [
            f"--training.output_dir={out}",
            f"--training.seed={seed}",
            f"--training.max_steps={steps}",
            "--training.eval_strategy=no",
            "--training.eval_on_start=false",
        ]
        train(load_config(RECIPE, overrides))
        members.append(out)
    return members


if __name__ == "__main__":
    write_members(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/tiny-soup"))
