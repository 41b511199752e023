"""End-to-end runs of the tiny recipes, as a user launches them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def train(recipe: str, out: Path, *overrides: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    launcher = launcher or [sys.executable]
    return run(
        [
            *launcher,
            "scripts/train.py",
            "--config",
            f"recipes/tiny/{recipe}.yaml",
            f"--training.output_dir={out}",
            *overrides,
        ]
    )


def log_history(out: Path) -> list[dict]:
    return json.loads((out / "trainer_state.json").read_text())["log_history"]


def test_tiny_dpo_recipe_learns_the_task(tmp_path):
    out = tmp_path / "dpo"
    train("dpo", out)
    final = json.loads((out / "eval_results.json").read_text())
    start = next(entry for entry in log_history(out) if "eval_reward_accuracy" in entry)
    # Step 0: the policy is the reference, every implicit reward is 0 and ties count 1/2.
    assert start["epoch"] == 0 and start["eval_reward_accuracy"] == 0.5
    assert start["eval_loss"] == pytest.approx(0.693147, abs=1e-5)
    assert final["eval_reward_accuracy"] >= 0.80
    assert (out / "model.safetensors").is_file() and (out / "alignment_config.yaml").is_file()
    losses = [entry["loss"] for entry in log_history(out) if "loss" in entry]
    assert losses[-1] < losses[0] - 0.1


@pytest.mark.parametrize("recipe", ["ipo", "rdpo", "rpo", "hinge", "lipo", "listmle"])
def test_other_tiny_recipes_learn_the_task(recipe, tmp_path):
    out = tmp_path / recipe
    train(recipe, out, "--training.eval_on_start=false")
    assert json.loads((out / "eval_results.json").read_text())["eval_reward_accuracy"] >= 0.75


def test_swapping_the_loss_on_the_command_line(tmp_path):
    out = tmp_path / "swap"
    proc = train(
        "dpo",
        out,
        "--loss.name=ipo",
        "--loss.tau=0.5",
        "--training.max_steps=3",
        "--training.logging_steps=1",
        "--training.eval_on_start=false",
    )
    saved = (out / "alignment_config.yaml").read_text()
    assert "name: ipo" in saved and "tau: 0.5" in saved and "beta" not in saved
    assert "loss.beta=0.1 from the recipe does not apply to loss 'ipo'; dropped" in proc.stdout + proc.stderr
    first = next(entry for entry in log_history(out) if "loss" in entry)
    # Step 1 is computed before any update: policy == reference, so IPO = 1 / (4 tau^2) = 1.
    assert first["loss"] == pytest.approx(1.0, abs=1e-4)


def bad_rows_file(tmp_path: Path) -> Path:
    rows = [json.loads(line) for line in (ROOT / "recipes/tiny/data/pairs_train.jsonl").read_text().splitlines()[:40]]
    del rows[7]["rejected"]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bad_row_fails_with_its_index_and_source(tmp_path):
    bad = bad_rows_file(tmp_path)
    proc = run(
        [
            sys.executable,
            "scripts/train.py",
            "--config",
            "recipes/tiny/dpo.yaml",
            f"--data.train=[{bad}]",
            f"--training.output_dir={tmp_path / 'out'}",
        ],
        check=False,
    )
    assert proc.returncode != 0
    assert f"bad row 7 in {bad}" in proc.stderr and "rejected" in proc.stderr


def test_bad_row_is_counted_under_skip(tmp_path):
    bad = bad_rows_file(tmp_path)
    out = tmp_path / "out"
    proc = train(
        "dpo",
        out,
        f"--data.train=[{bad}]",
        "--data.bad_rows=skip",
        "--training.max_steps=2",
        "--training.eval_on_start=false",
    )
    text = proc.stdout + proc.stderr
    assert "missing_column" in text and "39" in text


def test_two_process_ddp_matches_one_process(tmp_path):
    """gloo DDP with 2 x 16 rows gives the same per-step losses as 1 x 32 rows."""
    common = [
        "--training.max_steps=3",
        "--training.logging_steps=1",
        "--training.eval_on_start=false",
        "--training.learning_rate=0.01",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    train("dpo", one, "--training.per_device_train_batch_size=32", *common)
    train(
        "dpo",
        two,
        "--training.per_device_train_batch_size=16",
        *common,
        launcher=[
            "accelerate",
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ],
    )
    losses_one = [e["loss"] for e in log_history(one) if "loss" in e]
    losses_two = [e["loss"] for e in log_history(two) if "loss" in e]
    assert len(losses_one) == len(losses_two) == 3
    assert losses_two == pytest.approx(losses_one, abs=1e-4)
    assert losses_one[2] != pytest.approx(losses_one[0], abs=1e-3)  # it trained
    acc_one = json.loads((one / "eval_results.json").read_text())["eval_reward_accuracy"]
    acc_two = json.loads((two / "eval_results.json").read_text())["eval_reward_accuracy"]
    # The eval metric is reduced exactly across both processes.
    assert acc_two == pytest.approx(acc_one, abs=1e-4)
