"""The tiny recipes of the methods built on K samples, rewards and references as objects:
each beats its step-0 policy. Run in-process (the launch path is tested by
test_train_e2e.py), each in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignment.config import load_config
from alignment.run import train
from tests.launch import ROOT, log_history

pytestmark = pytest.mark.slow


def run_recipe(name: str, out: Path, *overrides: str) -> tuple[dict, dict]:
    """(the step-0 evaluation, the final one) of recipes/tiny/<name>.yaml."""
    train(load_config(ROOT / "recipes" / "tiny" / f"{name}.yaml", [f"--training.output_dir={out}", *overrides]))
    final = json.loads((out / "eval_results.json").read_text())
    start = next(entry for entry in log_history(out) if entry.get("epoch") == 0 and any("eval_" in k for k in entry))
    return start, final


@pytest.mark.parametrize("recipe", ["spo", "rloo", "grpo", "copg_online", "online_lipo"])
def test_online_recipe_beats_its_initial_policy(recipe, tmp_path):
    start, final = run_recipe(recipe, tmp_path / recipe)
    # Step 0: the policy's samples against the initial policy's (the same model): a coin flip.
    assert abs(start["eval_win_rate_vs_initial"] - 0.5) < 0.1
    assert final["eval_win_rate_vs_initial"] >= 0.6


def test_sppo_recipe_beats_its_initial_policy_against_a_moving_reference(tmp_path):
    start, final = run_recipe("sppo", tmp_path / "sppo")
    # The reference is the previous iterate: refreshed at steps 20, 40 and 60, it is the final policy.
    assert abs(final["eval_win_rate_vs_reference"] - 0.5) < 0.1
    assert start["eval_generation_accuracy"] == start["eval_initial_generation_accuracy"]
    assert final["eval_win_rate_vs_initial"] >= 0.6  # greedy answers against the initial policy's


def test_offline_copg_recipe_learns_the_scored_lists(tmp_path):
    start, final = run_recipe("copg", tmp_path / "copg")
    assert start["eval_reward_accuracy"] == 0.5
    assert final["eval_reward_accuracy"] >= 0.75


def test_soup_recipe_starts_at_the_soup_and_improves_on_it(tmp_path):
    from recipes.tiny.soup_members import write_members

    a, b = write_members(tmp_path / "members", steps=40)
    out = tmp_path / "soup"
    start, final = run_recipe("soup", out, f"--reference.models=[{a}, {b}]")
    # The policy starts as the soup: every log-ratio is exactly 0, so the loss is ln 2 and ties count 1/2.
    assert start["eval_reward_accuracy"] == 0.5 and start["eval_rewards/margins"] == 0.0
    assert final["eval_reward_accuracy"] >= 0.6
