"""recipes/smollm2-135m/grpo.yaml: the recipe loads and validates as written (the GRPO
loss with its parameters, K samples from the policy, the chat-addition reward, the greedy
evaluation), and two of its steps run in-process on the real SmolLM2-135M-Instruct with
everything made small (1 prompt per step, 4 held-out prompts): the rewards are logged,
the evaluation's step-0 accuracy is the task's score of the answers it wrote, and the
output directory holds the resolved recipe."""

from __future__ import annotations

import json

import datasets
import pytest
import yaml

from alignment.config import load_config
from alignment.gguf import smollm2_checkpoint
from alignment.tasks.chat_addition import score
from tests.helpers import ROOT

pytestmark = pytest.mark.slow

RECIPE = ROOT / "recipes" / "smollm2-135m" / "grpo.yaml"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """From the repository root (the recipe's data paths are relative), with a fresh datasets cache."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def test_the_smollm2_grpo_recipe_validates_as_grpo_on_the_chat_addition_reward(capsys):
    from alignment.tools.validate import validate_main

    assert validate_main(["--config", str(RECIPE)]) == 0  # the config and its data, as `alignment validate`
    report = capsys.readouterr().out
    assert "train: 400 prompts" in report and "test: 100 prompts" in report
    assert "result: ready to train" in report
    config = load_config(RECIPE)
    assert config.model.name_or_path == str(smollm2_checkpoint())
    assert [spec.name for spec in config.loss] == ["grpo"] and config.loss_fn.name == "grpo"
    raw = yaml.safe_load(RECIPE.read_text())
    assert config.loss_fn.beta == raw["loss"]["beta"]
    assert config.reference.type == ("none" if config.loss_fn.beta == 0 else "model")
    assert config.online.sampler == "policy" and config.online.num_samples == raw["online"]["num_samples"] >= 4
    assert config.online.judge.type == "reward_function"
    assert config.online.judge.function == "alignment.tasks.chat_addition:score"
    assert config.evaluation.score == "alignment.tasks.chat_addition:score"
    assert config.evaluation.temperature == 0.0 and config.evaluation.max_prompts is None  # greedy, all 100
    assert config.training_arguments().lr_scheduler_type == "constant"


def test_two_steps_of_the_smollm2_grpo_recipe_log_rewards_and_grade_the_held_out_answers(tmp_path):
    from alignment.run import train

    out = tmp_path / "out"
    overrides = [
        f"--training.output_dir={out}",
        "--training.max_steps=2",
        "--training.per_device_train_batch_size=1",  # one prompt, K samples
        "--training.logging_steps=1",
        "--online.max_new_tokens=8",
        "--data.test=[{path: recipes/smollm2-135m/data/test.jsonl, fraction: 0.04}]",  # 4 held-out prompts
        "--evaluation.max_prompts=4",
        "--evaluation.max_new_tokens=12",
    ]
    config = load_config(RECIPE, overrides)
    metrics = train(config)

    state = json.loads((out / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "online/reward" in entry]
    assert [entry["step"] for entry in logged] == [1, 2]
    for entry in logged:
        k_right = entry["online/reward"] * config.online.num_samples  # the mean of K rewards of 0 or 1
        assert 0 <= k_right <= config.online.num_samples and k_right == pytest.approx(round(k_right))
        assert "grpo/advantage_abs" in entry and "grpo/clip_fraction" in entry
        assert entry["online/completion_length"] <= 8
    assert state["global_step"] == 2

    resolved = yaml.safe_load((out / "alignment_config.yaml").read_text())
    assert resolved["loss"][0]["name"] == "grpo"
    assert resolved["online"]["num_samples"] == config.online.num_samples
    assert resolved["online"]["judge"]["function"] == "alignment.tasks.chat_addition:score"

    # The evaluation's step-0 accuracy is the task's score of the answers it wrote down.
    rows = [json.loads(line) for line in (out / "initial_generations.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    expected = sum(score([r["prompt"] for r in rows], [r["completion"] for r in rows])) / 4
    assert metrics["eval_initial_generation_accuracy"] == pytest.approx(expected)
    assert 0.0 <= metrics["eval_generation_accuracy"] <= 1.0
    assert (out / "model.safetensors").exists()
