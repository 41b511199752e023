"""The tiny recipes of the methods built on K samples, rewards and references as objects:
each beats its step-0 policy. Run in-process (the launch path is tested by
test_train_e2e.py), each in seconds."""

from __future__ import annotations

import pytest

from alignment.config import load_config
from alignment.run import train
from tests.launch import ROOT, run_recipe

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("recipe", ["spo", "rloo", "grpo", "grpo_rewards", "dapo", "copg_online", "online_lipo"])
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


def test_updates_per_batch_reuses_each_micro_batch_of_samples_with_accumulation(tmp_path, monkeypatch):
    """mu = 2 with 2 accumulation steps: samples are drawn at steps 0 and 2 (2 micro-batches
    each) and reused, for the same prompts, at steps 1 and 3; the old log-probs are kept
    for the importance ratio."""
    from alignment.trainers.online import OnlineTrainer

    fresh, seen = [], []
    original_fresh, original_step = OnlineTrainer._fresh, OnlineTrainer._step_samples

    def counting_fresh(self, model, inputs, keep_old):
        fresh.append((self.state.global_step, keep_old))
        return original_fresh(self, model, inputs, keep_old)

    def recording_step(self, model, inputs):
        out = original_step(self, model, inputs)
        seen.append((self.state.global_step, inputs["prompt_input_ids"].tolist(), out[3] is not None))
        return out

    monkeypatch.setattr(OnlineTrainer, "_fresh", counting_fresh)
    monkeypatch.setattr(OnlineTrainer, "_step_samples", recording_step)
    overrides = [
        f"--training.output_dir={tmp_path}",
        "--training.max_steps=4",
        "--training.gradient_accumulation_steps=2",
        "--training.per_device_train_batch_size=4",
        "--training.eval_strategy=no",
        "--training.eval_on_start=false",
    ]
    train(load_config(ROOT / "recipes" / "tiny" / "grpo.yaml", overrides))
    assert fresh == [(0, True), (0, True), (2, True), (2, True)]
    assert [step for step, _, _ in seen] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert all(has_old for _, _, has_old in seen)
    for first, second in ((0, 2), (1, 3), (4, 6), (5, 7)):  # the same micro-batch one step later
        assert seen[first][1] == seen[second][1]
    assert seen[0][1] != seen[1][1] and seen[0][1] != seen[4][1]  # and new prompts otherwise
