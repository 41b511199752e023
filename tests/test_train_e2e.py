"""End-to-end runs of the tiny recipes, as a user launches them."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from tests.helpers import float32_approx
from tests.launch import ROOT, log_history, run, train, train_in_process

# Each test launches training runs (seconds to a minute each): the full suite runs them, the fast tier does not.
pytestmark = pytest.mark.slow


def test_tiny_dpo_recipe_learns_the_task(tmp_path):
    out = tmp_path / "dpo"
    score = "alignment.tasks.arithmetic:exact_sum"
    train("dpo", out, f"--evaluation.score={score}", "--evaluation.max_new_tokens=3")
    final = json.loads((out / "eval_results.json").read_text())
    start = next(entry for entry in log_history(out) if "eval_reward_accuracy" in entry)
    # Step 0: the policy is the reference, every implicit reward is 0 and ties count 1/2.
    assert start["epoch"] == 0 and start["eval_reward_accuracy"] == 0.5
    assert start["eval_loss"] == float32_approx(math.log(2), ulps=1)
    assert final["eval_reward_accuracy"] >= 0.80
    assert (out / "model.safetensors").is_file() and (out / "alignment_config.yaml").is_file()
    losses = [entry["loss"] for entry in log_history(out) if "loss" in entry]
    assert losses[-1] < losses[0] - 0.1

    # evaluation: the greedy answers written beside eval_results.json, scored again here.
    from alignment.tasks.arithmetic import exact_sum

    def accuracy(name: str) -> float:
        rows = [json.loads(line) for line in (out / name).read_text().splitlines()]
        assert len(rows) == 400  # every test prompt
        return sum(exact_sum([r["prompt"] for r in rows], [r["completion"] for r in rows])) / len(rows)

    assert final["eval_initial_generation_accuracy"] == pytest.approx(accuracy("initial_generations.jsonl"))
    assert final["eval_generation_accuracy"] == pytest.approx(accuracy("eval_generations.jsonl"))
    assert start["eval_generation_accuracy"] == start["eval_initial_generation_accuracy"]  # step 0: the same policy
    assert final["eval_generation_accuracy"] > final["eval_initial_generation_accuracy"]


@pytest.mark.parametrize("recipe", ["ipo", "rdpo", "rpo", "hinge", "lipo", "listmle"])
def test_other_tiny_recipes_learn_the_task(recipe, tmp_path):
    out = tmp_path / recipe
    train_in_process(recipe, out, "--training.eval_on_start=false")
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
    assert first["loss"] == float32_approx(1.0, ulps=1)


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
