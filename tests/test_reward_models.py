"""Judges trained here: the tiny reward model learns the task and loads back as the
online judge, scoring exactly what it was trained on."""

from __future__ import annotations

import json

import pytest

from alignment.config.online import JudgeConfig
from alignment.online.judges import RewardModelJudge, build_judge
from tests.helpers import tiny_rows
from tests.launch import train_in_process

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-reward-model")
    return out, train_in_process("reward_model", out)


def test_the_tiny_reward_model_learns_the_task(reward_model):
    out, metrics = reward_model
    assert metrics["eval_reward_accuracy"] >= 0.9
    assert metrics["eval_accuracy"] == metrics["eval_reward_accuracy"]
    record = json.loads((out / "alignment_judge.json").read_text())
    assert record["kind"] == "reward" and record["judge_type"] == "reward_model"
    card = (out / "README.md").read_text()
    assert "a scalar reward model r(x, y)" in card and "type: reward_model" in card


def test_the_trained_reward_model_is_a_judge_that_scores_its_training_tokens(reward_model):
    out, metrics = reward_model
    judge = build_judge(JudgeConfig(type="reward_model", name_or_path=str(out)), "cpu")
    assert isinstance(judge, RewardModelJudge) and judge.trained_here["kind"] == "reward"
    rows = tiny_rows(split="test", n=400)
    prompts = [r["prompt"] for r in rows]
    p = judge(prompts, [(r["chosen"], r["rejected"]) for r in rows])
    # The judge's held-out accuracy is the trainer's: the same tokens, the same rewards (up to
    # batch-size rounding, which could flip at most a near-tie: one pair of the 400).
    right = (p > 0.5).float() + 0.5 * (p == 0.5).float()
    assert right.mean().item() == pytest.approx(metrics["eval_reward_accuracy"], abs=1 / 400)
    assert right.mean().item() >= 0.9
