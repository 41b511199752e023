"""Kill a run after a checkpoint, resume it, and land exactly where an uninterrupted run lands."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from alignment.trainers.checkpoints import COMPLETE_MARKER, CheckpointError, latest_complete_checkpoint, resolve_resume
from tests.helpers import float32_approx
from tests.launch import ENV, ROOT, logged, train, train_command

# Each test launches training runs (seconds to a minute each): the full suite runs them, the fast tier does not.
pytestmark = pytest.mark.slow

ARGS = [
    "--training.max_steps=150",
    "--training.save_strategy=steps",
    "--training.save_steps=40",
    "--training.logging_steps=10",
    "--training.eval_on_start=false",
]


def kill_after_checkpoint(out: Path, step: int, timeout: float = 300.0) -> int:
    """Start the run, SIGKILL it as soon as checkpoint-`step` is complete; return the exit code."""
    proc = subprocess.Popen(
        train_command("dpo", out, *ARGS), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    marker = out / f"checkpoint-{step}" / COMPLETE_MARKER
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the run ended ({proc.returncode}) before checkpoint-{step} was written")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    return proc.wait()


def test_killed_run_resumes_to_the_same_result(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    train("dpo", full, *ARGS)
    assert kill_after_checkpoint(killed, 40) == -signal.SIGKILL
    assert not (killed / "eval_results.json").exists()  # it really died mid-run

    # A later checkpoint directory cut short by the kill (no marker) must be ignored.
    partial = killed / "checkpoint-140"
    shutil.copytree(killed / "checkpoint-40", partial)
    (partial / COMPLETE_MARKER).unlink()
    (partial / "optimizer.pt").write_bytes(b"truncated")
    resumed_from = latest_complete_checkpoint(killed)
    assert resumed_from is not None and resumed_from.name in ("checkpoint-40", "checkpoint-80", "checkpoint-120")

    proc = train("dpo", killed, *ARGS, "--training.resume_from_checkpoint=latest")
    assert f"ignoring {partial}" in proc.stdout + proc.stderr
    assert f"resuming from {resumed_from}" in proc.stdout + proc.stderr

    final_full = json.loads((full / "eval_results.json").read_text())
    final_resumed = json.loads((killed / "eval_results.json").read_text())
    for key in ("eval_loss", "eval_reward_accuracy", "eval_rewards/margins"):
        assert final_resumed[key] == float32_approx(final_full[key], ulps=1), key
    # Every step logged after the resume point equals the uninterrupted run's.
    resumed_steps = {
        e["step"]: e["loss"]
        for e in json.loads((killed / "trainer_state.json").read_text())["log_history"]
        if "loss" in e
    }
    full_steps = {
        e["step"]: e["loss"]
        for e in json.loads((full / "trainer_state.json").read_text())["log_history"]
        if "loss" in e
    }
    after = [s for s in resumed_steps if s > int(resumed_from.name.split("-")[1])]
    assert after and all(resumed_steps[s] == float32_approx(full_steps[s], ulps=1) for s in after)
    assert len(logged(full)) == 15


def test_explicit_partial_checkpoint_is_refused(tmp_path):
    partial = tmp_path / "checkpoint-8"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is incomplete"):
        resolve_resume(str(partial), str(tmp_path))
    with pytest.raises(CheckpointError, match="is not a directory"):
        resolve_resume(str(tmp_path / "checkpoint-99"), str(tmp_path))
    assert resolve_resume("latest", str(tmp_path)) is None  # nothing complete yet: start fresh
    proc = train("dpo", tmp_path / "out", f"--training.resume_from_checkpoint={partial}", check=False)
    assert proc.returncode == 2
    assert "checkpoint error" in proc.stderr and "is incomplete" in proc.stderr
    assert "Traceback" not in proc.stderr
