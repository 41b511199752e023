"""Every online tiny recipe trains with `online.engine: vllm` colocated: 5 steps on the
head_dim-32 variant of the tiny model (vLLM's CPU attention has no head_dim 16), with
the engine's weights synced every step and its mismatch with the trainer logged."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alignment.config import load_config
from alignment.run import train

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "recipes" / "tiny"
ONLINE = sorted(p.stem for p in TINY.glob("*.yaml") if (yaml.safe_load(p.read_text()) or {}).get("online"))


def test_the_online_recipes_are_all_here():
    assert {"grpo", "rloo", "nash_md", "ipo_md", "online_ipo", "sppo", "dapo"} <= set(ONLINE) and len(ONLINE) >= 13


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory) -> Path:
    """nash_md_reward_model's judge: recipes/tiny/reward_model.yaml, trained briefly (natively)."""
    out = tmp_path_factory.mktemp("reward-model")
    overrides = [f"--training.output_dir={out}", "--training.max_steps=5", "--training.eval_strategy=no"]
    train(load_config(TINY / "reward_model.yaml", overrides))
    return out


@pytest.mark.parametrize("recipe", ONLINE)
def test_the_recipe_trains_with_vllm_colocated(recipe, tmp_path, request):
    judged_by_a_trained_model = recipe == "nash_md_reward_model"
    overrides = [
        *(
            [f"--online.judge.name_or_path={request.getfixturevalue('reward_model')}"]
            if judged_by_a_trained_model
            else []
        ),
        f"--training.output_dir={tmp_path}",
        "--model.config=recipes/tiny/model-h32",
        "--online.engine=vllm",
        "--online.vllm_cpu_kvcache_space_gib=1",
        "--training.max_steps=5",
        "--training.logging_steps=1",
        "--training.eval_on_start=false",
        "--training.eval_strategy=no",
    ]
    metrics = train(load_config(TINY / f"{recipe}.yaml", overrides))
    logged = [e for e in json.loads((tmp_path / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert len(logged) == 5 and all(math.isfinite(e["loss"]) for e in logged)
    assert any(e["grad_norm"] > 0 for e in logged)
    # Synced before every step that generates (with updates_per_batch mu, one step in mu); the
    # engine samples what the trainer computes.
    mu = load_config(TINY / f"{recipe}.yaml").online.updates_per_batch
    synced = [e["online/engine/sync_seconds"] for e in logged if "online/engine/sync_seconds" in e]
    assert len(synced) == math.ceil(5 / mu) and min(synced) > 0
    differences = [v for e in logged for k, v in e.items() if k.startswith("online/engine/") and "difference" in k]
    assert differences and max(differences) < 1e-3
    assert any(key.startswith("eval_") for key in metrics)  # the final evaluation sampled through the engine


@pytest.mark.parametrize("recipe", ["grpo", "nash_md"])
def test_lora_policies_are_synced_merged(recipe, tmp_path):
    """LoRA with the adapter reference: vLLM is sent the adapter merged into its base each
    step (and, for the mixture, the base once as the reference). A learning rate that moves
    the adapter far in 5 steps: had the merge or the names been wrong, vLLM would sample
    from other weights than the trainer's, and the logged difference would show it."""
    overrides = [
        f"--training.output_dir={tmp_path}",
        "--model.config=recipes/tiny/model-h32",
        "--lora.r=8",
        "--lora.dropout=0.0",
        "--reference.type=adapter",
        "--training.learning_rate=3.0e-2",
        "--online.engine=vllm",
        "--online.vllm_cpu_kvcache_space_gib=1",
        "--training.max_steps=5",
        "--training.logging_steps=1",
        "--training.eval_on_start=false",
        "--training.eval_strategy=no",
    ]
    train(load_config(TINY / f"{recipe}.yaml", overrides))
    logged = [e for e in json.loads((tmp_path / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert (tmp_path / "adapter_model.safetensors").exists()
    differences = [v for e in logged for k, v in e.items() if k.startswith("online/engine/") and "difference" in k]
    assert len(differences) >= 5 and max(differences) < 1e-3
    # The adapter really moved the policy away from its base: the KL to the reference grew.
    assert logged[-1]["online/kl"] > 1e-3


def test_an_unsupported_model_is_refused_in_one_line_before_training(tmp_path):
    """The tiny recipe's own model (head_dim 16) with vLLM's CPU attention: one line, exit
    status 2, and no output directory left."""
    out = tmp_path / "out"
    command = [sys.executable, "scripts/train.py", "--config", str(TINY / "grpo.yaml"), "--online.engine=vllm"]
    proc = subprocess.run([*command, f"--training.output_dir={out}"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("alignment: config error: online.engine vllm: vLLM's CPU attention does not support")
    assert "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("backend", [None, "zero3.yaml"], ids=["ddp", "zero3"])
def test_two_processes_each_with_its_own_colocated_engine(backend, tmp_path):
    """`accelerate launch` with 2 processes (gloo DDP, or DeepSpeed ZeRO-3 on CPU): each
    holds a vLLM engine of its own, sent its own policy weights every step (under ZeRO-3
    gathered from both processes' shards first), and samples its own prompts. A shard sent
    ungathered would leave vLLM sampling from other weights than the trainer's."""
    from tests.launch import ENV, accelerate_launch

    launcher = accelerate_launch(2, backend)
    # This environment's accelerate (a bare `accelerate` on PATH may be another environment's).
    command = [sys.executable, "-m", "accelerate.commands.launch", *launcher[2:], "scripts/train.py"]
    command += ["--config", str(TINY / "grpo_rewards.yaml"), "--model.config=recipes/tiny/model-h32"]
    command += ["--online.engine=vllm", "--online.vllm_cpu_kvcache_space_gib=1", "--training.max_steps=3"]
    command += ["--training.logging_steps=1", "--training.eval_on_start=false", f"--training.output_dir={tmp_path}"]
    env = ENV if backend is None else {**ENV, "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logged = [e for e in json.loads((tmp_path / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert len(logged) == 3 and all(e["online/engine/logp_difference_max"] < 1e-3 for e in logged)
    assert json.loads((tmp_path / "eval_results.json").read_text())["eval_win_rate_vs_initial"] > 0
