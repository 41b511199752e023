"""`alignment plot OUTPUT_DIR`: PNG plots of a run's log history, for people who would
rather look than read. Reads `trainer_state.json` (written by the Trainer at the end of
training and in every checkpoint) and draws one panel per metric, train and eval."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# (metric key in the log history, panel title)
PANELS = (
    ("loss", "loss"),
    ("rewards/margins", "reward margin"),
    ("reward_accuracy", "reward accuracy"),
    ("learning_rate", "learning rate"),
)
ONLINE_PANELS = (("win_rate_vs_initial", "win rate vs initial"), ("online/kl", "KL(policy || reference)"))


def find_state(output_dir: Path) -> Path:
    """The run's final `trainer_state.json`, else the newest checkpoint's."""
    final = output_dir / "trainer_state.json"
    if final.is_file():
        return final
    checkpoints = sorted(output_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name[11:]))
    if not checkpoints:
        raise FileNotFoundError(f"{output_dir}: no trainer_state.json (is this a training output directory?)")
    return checkpoints[-1]


def series(history: list[dict], key: str) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(train points, eval points) of one metric as (step, value)."""
    train = [(e["step"], e[key]) for e in history if key in e and "eval_runtime" not in e]
    evaluation = [(e["step"], e[f"eval_{key}"]) for e in history if f"eval_{key}" in e]
    return train, evaluation


def plot_run(output_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write `<output_dir>/training_curves.png` (or `out`) and return its path. The
    panel titles are also stored in the PNG's `Description` text chunk."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    output_dir = Path(output_dir)
    history = json.loads(find_state(output_dir).read_text())["log_history"]
    panels = list(PANELS)
    if any("eval_win_rate_vs_initial" in e for e in history):
        panels += ONLINE_PANELS
    columns = 2 if len(panels) <= 4 else 3
    fig, axes = plt.subplots(2, columns, figsize=(5 * columns, 7), squeeze=False)
    for ax, (key, title) in zip(axes.flat, panels, strict=False):
        train, evaluation = series(history, key)
        if train:
            ax.plot(*zip(*train, strict=True), label="train", color="tab:blue")
        if evaluation:
            ax.plot(*zip(*evaluation, strict=True), "o-", label="eval", color="tab:orange")
        if not train and not evaluation:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if train or evaluation:
            ax.legend()
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(output_dir.resolve().name)
    fig.tight_layout()
    path = Path(out) if out is not None else output_dir / "training_curves.png"
    fig.savefig(path, dpi=80, metadata={"Description": "panels: " + "; ".join(t for _, t in panels)})
    plt.close(fig)
    return path


def plot_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="alignment plot", description="Plot a training run's metrics to PNG.")
    parser.add_argument("output_dir")
    parser.add_argument("--out", default=None, help="PNG path (default: OUTPUT_DIR/training_curves.png)")
    args = parser.parse_args(argv)
    try:
        path = plot_run(args.output_dir, args.out)
    except FileNotFoundError as err:
        print(f"alignment plot: {err}")
        return 2
    print(path)
    return 0
