"""Judges trained here: the tiny reward model learns the task and loads back as the
online judge, scoring exactly what it was trained on."""

from __future__ import annotations

import json

import pytest

from alignment.online.judges import RewardModelJudge, build_judge
from alignment.schema.online import JudgeConfig
from tests.helpers import TINY, tiny_rows
from tests.launch import train_in_process

pytestmark = pytest.mark.slow


def judged_accuracy(judge, rows: list[dict]) -> float:
    """The share of (chosen, rejected) pairs the judge gets right, a tie counting 1/2 (as
    the trainer's accuracy counts it)."""
    p = judge([r["prompt"] for r in rows], [(r["chosen"], r["rejected"]) for r in rows])
    return ((p > 0.5).float() + 0.5 * (p == 0.5).float()).mean().item()


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
    accuracy = judged_accuracy(judge, tiny_rows(split="test", n=400))
    # The judge's held-out accuracy is the trainer's: the same tokens, the same rewards (up to
    # batch-size rounding, which could flip at most a near-tie: one pair of the 400).
    assert accuracy == pytest.approx(metrics["eval_reward_accuracy"], abs=1 / 400)
    assert accuracy >= 0.9


def test_the_pipeline_online_nash_md_judged_by_the_trained_reward_model(reward_model):
    """Step 2 of the README's pipeline: the reward model is the online judge, and the rule
    (not the reward model) judges the trained policy against its step-0 self."""
    out, _ = reward_model
    metrics = train_in_process(
        "nash_md_reward_model",
        out.parent / "nash-md-rm",
        f"--online.judge.name_or_path={out}",
    )
    assert metrics["eval_win_rate_vs_initial"] >= 0.6  # by alignment.tasks.arithmetic:closer_to_sum
    assert "eval_online_judge_win_rate_vs_initial" in metrics  # the reward model's own verdict, kept apart


@pytest.fixture(scope="module")
def preference_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-preference-model")
    return out, train_in_process("preference_model", out)


def test_the_tiny_preference_model_learns_the_task_and_both_orders(preference_model):
    out, metrics = preference_model
    assert metrics["eval_accuracy"] >= 0.9
    assert metrics["eval_symmetry_gap"] <= 0.05  # mean |P(y > y') + P(y' > y) - 1| on held-out pairs
    judge = build_judge(JudgeConfig(type="pairwise", name_or_path=str(out)), "cpu")
    assert judge.template == "{prompt}{completion_a}|{completion_b}"  # read from alignment_judge.json
    # The judge averages both orders, as the trainer's accuracy does: the same verdicts.
    accuracy = judged_accuracy(judge, tiny_rows(split="test", n=400))
    assert accuracy == pytest.approx(metrics["eval_accuracy"], abs=1 / 400)


def test_vpl_infers_the_user_where_a_single_reward_model_cannot(tmp_path):
    """The two-user task: on the tag pairs the users disagree, so Bradley-Terry stays near
    chance; VPL, reading 8 of the user's other pairs, gets them right."""
    data = [
        "--data.train=[recipes/tiny/data/two_users_train.jsonl]",
        "--data.test=[recipes/tiny/data/two_users_test.jsonl]",
    ]
    bt = train_in_process("reward_model", tmp_path / "bt", *data, "--training.num_train_epochs=3")
    assert abs(bt["eval_reward_accuracy"] - 0.5) <= 0.1
    vpl = train_in_process("vpl", tmp_path / "vpl")
    by_n = [vpl[f"eval_accuracy_context_{n}"] for n in (0, 1, 2, 4, 8)]
    assert by_n[0] <= 0.6  # no context: the prior, z = 0
    assert by_n[-1] >= 0.9
    assert all(a <= b for a, b in zip(by_n, by_n[1:], strict=False)), by_n  # more context never hurts here
    assert min(vpl["eval_accuracy_user_digits"], vpl["eval_accuracy_user_letters"]) >= 0.9

    rows = tiny_rows("two_users", split="test", n=400)
    for user in ("digits", "letters"):
        context = TINY / "data" / f"two_users_context_{user}.jsonl"  # 8 of the user's training pairs
        judge = build_judge(
            JudgeConfig(type="vpl", name_or_path=str(tmp_path / "vpl"), user_context=str(context)), "cpu"
        )
        mine = [r for r in rows if r["user_id"] == user]
        p = judge([r["prompt"] for r in mine], [(r["chosen"], r["rejected"]) for r in mine])
        assert (p > 0.5).float().mean().item() >= 0.9, user  # the user's own preferences, from 8 pairs
