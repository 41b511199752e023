"""Out of memory: the probe of the longest batch before step 1, and the message that
says which settings to change. There is no GPU here, so an out-of-memory error is
raised where CUDA would raise it (inside attention), in a real training process."""

from __future__ import annotations

import re
from pathlib import Path

import datasets
import pytest

from alignment.config import load_config
from alignment.trainers.memory import longest_rows, out_of_memory_advice
from tests.helpers import ROOT, float32_approx
from tests.launch import log_history, train

# Each test launches training runs (seconds to a minute each): the full suite runs them, the fast tier does not.
pytestmark = pytest.mark.slow


FAKE_OOM = """
import os
import torch
import torch.nn.functional as F

_real = F.scaled_dot_product_attention
_calls = [0]
_limit = int(os.environ["FAKE_OOM_AFTER_CALLS"])


def _attention(*args, **kwargs):
    _calls[0] += 1
    if _calls[0] > _limit:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
    return _real(*args, **kwargs)


F.scaled_dot_product_attention = _attention
"""


def _fake_oom_env(tmp_path: Path, after_calls: int) -> dict[str, str]:
    boot = tmp_path / "boot"
    boot.mkdir(exist_ok=True)
    (boot / "sitecustomize.py").write_text(FAKE_OOM)
    return {"PYTHONPATH": f"{boot}:{ROOT}", "FAKE_OOM_AFTER_CALLS": str(after_calls)}


def test_longest_rows_ranks_by_padded_size():
    # Padded cost = K * (prompt + longest completion): 2*(3+1)=8, 3*(1+4)=15, 2*(6+2)=16, 2*(1+1)=4.
    rows = {
        "prompt_input_ids": [[1, 2, 3], [1], [1] * 6, [1]],
        "completion_input_ids": [[[1], [1]], [[1], [1] * 4, [1, 2]], [[1, 2], [1]], [[1], [2]]],
    }
    dataset = datasets.Dataset.from_dict(rows)
    assert longest_rows(dataset, 2) == [2, 1]
    assert longest_rows(dataset, 10) == [2, 1, 0, 3]


def test_advice_names_each_setting_with_its_value():
    config = load_config("recipes/tiny/dpo.yaml")
    advice = out_of_memory_advice(config, config.training_arguments(), "at step 3", RuntimeError("CUDA oom\ndetail"))
    assert advice.startswith("out of memory at step 3: CUDA oom\n")
    assert "training.per_device_train_batch_size (now 32) smaller" in advice
    assert "training.gradient_checkpointing: true (now off)" in advice
    assert "data.max_length (now 32) and data.max_prompt_length (now 16)" in advice
    assert "reference: precompute (now model" in advice
    assert "a `lora:` section" in advice
    assert "detail" not in advice


def test_advice_leaves_out_what_is_already_at_its_lightest():
    config = load_config(
        "recipes/tiny/dpo.yaml",
        [
            "--training.per_device_train_batch_size=1",
            "--training.gradient_checkpointing=true",
            "--training.logprob_chunk_size=128",
            "--reference.type=precompute",
            "--lora.r=4",
            "--quantization.bits=4",
        ],
    )
    advice = out_of_memory_advice(config, config.training_arguments(), "at step 1", RuntimeError("oom"))
    knobs = [line for line in advice.splitlines() if line.startswith("  - ")]
    assert len(knobs) == 2
    assert knobs[0].startswith("  - data.max_length (now 32)") and "ZeRO-3" in knobs[1]


def test_probe_runs_the_longest_batch_and_leaves_no_trace(tmp_path):
    """With the probe on, training logs exactly the same losses as without it. (The
    Trainer zeroes gradients before step 1 in any case; the probe drops its own so that
    their memory is free before the optimizer allocates its state.)"""
    runs = {}
    for probe in ("on", "off"):
        out = tmp_path / probe
        proc = train(
            "dpo", out, "--training.max_steps=6", "--training.logging_steps=1", f"--training.memory_probe={probe}"
        )
        runs[probe] = [e["loss"] for e in log_history(out) if "loss" in e]
        probed = re.search(
            r"memory probe: the longest batch \((\d+) lists x (\d+) completions, (\d+) tokens wide\)", proc.stdout
        )
        assert (probed is not None) == (probe == "on")
    assert runs["on"] == float32_approx(runs["off"], ulps=1)
    assert len(runs["on"]) == 6


def test_out_of_memory_in_the_probe_stops_before_step_1(tmp_path):
    out = tmp_path / "run"
    proc = train("dpo", out, "--training.memory_probe=on", env=_fake_oom_env(tmp_path, 0), check=False)
    assert proc.returncode == 1
    assert "alignment: out of memory in the memory probe (one forward and backward of the longest lists" in proc.stderr
    assert "CUDA out of memory. Tried to allocate 20.00 GiB (simulated)" in proc.stderr
    assert "training.per_device_train_batch_size (now 32) smaller" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()  # an error before step 1 leaves no output directory


def test_out_of_memory_during_training_names_the_step(tmp_path):
    out = tmp_path / "run"
    proc = train("dpo", out, "--training.memory_probe=off", env=_fake_oom_env(tmp_path, 40), check=False)
    assert proc.returncode == 1
    step = re.search(r"alignment: out of memory at step (\d+): CUDA out of memory", proc.stderr)
    assert step is not None and int(step.group(1)) > 1
    assert "To fit, change one or more of:" in proc.stderr and "Traceback" not in proc.stderr
