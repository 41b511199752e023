"""vLLM colocated beyond one process and full weights: LoRA policies synced merged, the
tiny model's head_dim refused in one line, and 2-process DDP and ZeRO-3 with one engine
per process (split from test_vllm_recipes.py so that the two xdist workers share the
load: scripts/test_vllm_env.sh runs this folder with -n 2 --dist loadfile)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from alignment.config import load_config
from alignment.run import train

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "recipes" / "tiny"


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
