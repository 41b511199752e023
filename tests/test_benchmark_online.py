"""The online benchmark preset's bookkeeping (`grpo-smollm2-cpu`; no timings here): its
recipe is a valid recipe, the methods its step breakdown wraps exist on our trainer and
on TRL's, the timers add up, its TRL reward function reads chat completions, and its
FLOP formula is the one its docstring states."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import benchmark  # noqa: E402
import flops  # noqa: E402

PRESET = benchmark.ONLINE_PRESETS["grpo-smollm2-cpu"]


def test_the_recipe_is_valid_and_says_what_the_preset_says(tmp_path):
    from alignment.config import load_config

    assert benchmark.build_online_assets(PRESET, tmp_path, steps=2) == 2 * PRESET.prompts
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(benchmark.online_recipe(PRESET, tmp_path)))
    for loss in ("grpo", "rloo"):
        config = load_config(recipe, [f"--loss.name={loss}", "--training.max_steps=2"])
        assert config.loss_fn.name == loss and config.loss_fn.beta == PRESET.beta
        assert config.online.num_samples == PRESET.k and config.online.max_new_tokens == PRESET.max_new_tokens
        assert config.online.judge.type == "reward_function" and config.online.judge.function == PRESET.reward
        assert config.reference.type == "model"
        assert config.training["per_device_train_batch_size"] == PRESET.prompts
        assert config.training["max_steps"] == 2


def test_the_wrapped_methods_exist():
    """The breakdown wraps these by name; a rename must fail here, not in a 10-minute run."""
    from trl import GRPOTrainer, RLOOTrainer

    from alignment.reference import FrozenModel
    from alignment.trainers.online import OnlineTrainer

    for name in ("training_step", "_draw", "_judge", "_forward"):
        assert callable(getattr(OnlineTrainer, name, None)), name
    assert callable(FrozenModel.logps)
    for trainer in (GRPOTrainer, RLOOTrainer):
        for name in ("training_step", "_generate", "_calculate_rewards", "_get_per_token_logps_and_entropies"):
            assert callable(getattr(trainer, name, None)), (trainer.__name__, name)


def test_timers_add_up_and_refuse_a_missing_method():
    class Owner:
        def work(self, x):
            return x + 1

    owner, timers = Owner(), benchmark.StepTimers()
    seen = []
    timers.wrap(owner, "work", lambda x: "generation" if x else None, after=lambda a, k, r: seen.append(r))
    assert owner.work(1) == 2 and owner.work(0) == 1
    assert seen == [2, 1] and timers.calls["generation"] == 1
    timers.seconds.update({"step": 5.0, "generation": 2.0, "backward": 1.0, "optimizer step": 0.5})
    parts = timers.breakdown(wall=6.0)
    assert list(parts) == list(benchmark.BREAKDOWN)
    assert parts["rest of training_step"] == pytest.approx(2.0)
    assert parts["rest of the loop"] == pytest.approx(0.5)
    assert sum(parts.values()) == pytest.approx(6.0)
    with pytest.raises(SystemExit, match="no method 'missing'"):
        timers.wrap(owner, "missing", "judging")


def test_trl_reward_reads_chat_completions():
    reward = benchmark.trl_reward(PRESET.reward)
    prompts = [[{"role": "user", "content": "What is 3+4?"}]] * 2
    completions = [[{"role": "assistant", "content": "3 + 4 = 7."}], [{"role": "assistant", "content": "8"}]]
    assert reward(prompts, completions, completion_ids=None) == [1.0, 0.0]
    assert reward.__name__ == "score"


def test_online_forward_flops_by_hand():
    shape = flops.Shape(hidden=4, layers=2, heads=2, kv_heads=1, head_dim=2, intermediate=8, vocab=10)
    # 2 * P_body per position, 2 * hidden * vocab per completion token
    assert flops.online_forward_flops(shape, positions=15, completion_tokens=6) == 2 * 288 * 15 + 2 * 4 * 10 * 6
