"""Two processes on CPU under each backend, with a live and a precomputed reference,
against one process with the same global batch.

DeepSpeed runs on CPU with DS_ACCELERATOR=cpu; its first run compiles a communication
op (about a minute). Every run uses a fresh datasets cache, so `precompute` really
computes on two processes rather than reusing another run's column."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import float32_approx
from tests.launch import accelerate_launch, logged, train

# Each test launches training runs (seconds to a minute each): the full suite runs them, the fast tier does not.
pytestmark = pytest.mark.slow

COMMON = [
    "--training.max_steps=3",
    "--training.logging_steps=1",
    "--training.eval_on_start=false",
    "--training.learning_rate=0.01",
]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    cache = tmp_path_factory.mktemp("one-cache")
    train("dpo", out, "--training.per_device_train_batch_size=32", *COMMON, env={"HF_DATASETS_CACHE": str(cache)})
    return out


@pytest.mark.parametrize(
    "backend, config_file, reference",
    [
        ("ddp", None, "model"),
        ("ddp", None, "precompute"),
        ("zero3", "zero3.yaml", "model"),
        ("zero3", "zero3.yaml", "precompute"),
        ("fsdp", "fsdp.yaml", "model"),
    ],
)
def test_two_processes_match_one_process(one_process, backend, config_file, reference, tmp_path):
    """2 x 16 rows gives the same per-step losses and eval accuracy as 1 x 32 rows."""
    out = tmp_path / "run"
    env = {"HF_DATASETS_CACHE": str(tmp_path / "cache"), "DS_ACCELERATOR": "cpu"}
    proc = train(
        "dpo",
        out,
        "--training.per_device_train_batch_size=16",
        f"--reference.type={reference}",
        *COMMON,
        launcher=accelerate_launch(2, config_file),
        env=env,
    )
    if reference == "precompute":
        # Each process computed its share of the reference pass.
        assert "reference log-probs (train): computing 4000 rows on 2 process(es)" in proc.stdout
    losses_one, losses_two = logged(one_process), logged(out)
    assert len(losses_one) == len(losses_two) == 3
    # Bit-identical on CPU so far, but two processes reduce each step's loss and gradients in
    # another order (2 x 16 rows, then across processes), and the optimizer steps carry it on.
    assert losses_two == float32_approx(losses_one, ulps=8)
    assert losses_one[2] != pytest.approx(losses_one[0], abs=1e-3)  # it trained
    acc_one = json.loads((one_process / "eval_results.json").read_text())["eval_reward_accuracy"]
    acc_two = json.loads((out / "eval_results.json").read_text())["eval_reward_accuracy"]
    # The eval metric is reduced exactly across both processes.
    assert acc_two == float32_approx(acc_one, ulps=1)


def test_qlora_under_zero3_is_refused_before_loading(tmp_path):
    proc = train(
        "dpo",
        tmp_path / "run",
        "--lora.r=4",
        "--quantization.bits=4",
        launcher=accelerate_launch(2, "zero3.yaml"),
        env={"DS_ACCELERATOR": "cpu"},
        check=False,
    )
    assert proc.returncode != 0
    # One clean line per process, from the CLI, not a traceback from inside DeepSpeed.
    assert "alignment: config error: quantization: 4/8-bit weights cannot be sharded by DeepSpeed ZeRO-3" in proc.stderr
    assert not (tmp_path / "run" / "model.safetensors").exists()
