"""Faults during training, with real processes and signals: a NaN loss (stop or skip),
SIGTERM (checkpoint, clean exit, resume), and corrupted checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from alignment.trainers.checkpoints import (
    COMPLETE_MARKER,
    CheckpointError,
    latest_complete_checkpoint,
    mark_complete,
    problem,
    resolve_resume,
)
from tests.launch import ENV, ROOT, log_history, sigterm_after_first_loss, train, train_command

# Adam steps of 1e6 overflow the tiny model's logits within a few steps.
DIVERGE = ["--training.learning_rate=1.0e+6", "--training.max_steps=20", "--training.logging_steps=1"]


@pytest.mark.slow
def test_nan_loss_stops_with_the_step_and_batch(tmp_path):
    out = tmp_path / "run"
    proc = train("dpo", out, *DIVERGE, "--training.eval_on_start=false", check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("alignment: ")]
    assert len(errors) == 1
    assert errors[0].startswith("alignment: training stopped: the training loss is nan at step ")
    assert "a batch of 32 lists; non-finite policy log-probs of lists [" in errors[0]
    assert "training.nonfinite_loss: skip" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (out / "model.safetensors").exists() and not (out / "eval_results.json").exists()


@pytest.mark.slow
def test_nan_loss_skip_counts_and_finishes(tmp_path):
    out = tmp_path / "run"
    train("dpo", out, *DIVERGE, "--training.nonfinite_loss=skip", "--training.eval_on_start=false")
    skipped = [e["nonfinite_skipped"] for e in log_history(out) if "nonfinite_skipped" in e]
    assert skipped and skipped == sorted(skipped) and skipped[-1] >= 1  # counted, cumulative
    assert (out / "eval_results.json").exists()


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_and_resumes(tmp_path):
    out = tmp_path / "run"
    overrides = ["--training.max_steps=400", "--training.save_steps=1000", "--training.logging_steps=5"]
    status, output = sigterm_after_first_loss(train_command("dpo", out, *overrides, "--training.eval_on_start=false"))
    assert status == 143, output[-3000:]
    assert "alignment: stopped by SIGTERM at step " in output and "Traceback" not in output
    checkpoint = latest_complete_checkpoint(out)
    assert checkpoint is not None and problem(checkpoint) is None
    step = int(checkpoint.name.split("-")[1])
    assert 5 <= step < 400
    assert not (out / "eval_results.json").exists()

    resumed = train(
        "dpo", out, *overrides, "--training.eval_on_start=false", "--training.resume_from_checkpoint=latest"
    )
    assert f"resuming from {checkpoint}" in resumed.stdout + resumed.stderr
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 400
    assert (out / "eval_results.json").exists()


def _start(out: Path, *overrides: str) -> subprocess.Popen:
    cmd = train_command("dpo", out, *overrides, "--training.eval_on_start=false")
    env = {**ENV, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(proc: subprocess.Popen, phrase: str, seen: list[str]) -> None:
    for line in proc.stdout:
        seen.append(line)
        if phrase in line:
            return
    raise AssertionError("".join(seen)[-3000:])


@pytest.mark.slow
def test_first_ctrl_c_saves_a_checkpoint_at_that_step_and_exits(tmp_path):
    """SIGINT is what a terminal's Ctrl-C sends: the step in progress finishes, is saved
    as a marked checkpoint, and the run stops there with one line and status 130."""
    out = tmp_path / "run"
    proc = _start(out, "--training.max_steps=400", "--training.save_steps=1000", "--training.logging_steps=5")
    seen: list[str] = []
    _wait_for(proc, "'loss':", seen)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=300)
    output = "".join(seen) + rest
    assert proc.returncode == 130, output[-3000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    stopped = [line for line in output.splitlines() if line.startswith("alignment: stopped by Ctrl-C at step ")]
    assert len(stopped) == 1, output[-3000:]
    step = int(stopped[0].split("at step ")[1].split(";")[0])
    assert f"checkpoint-{step} is saved in {out}" in stopped[0]
    assert "alignment: Ctrl-C: saving a checkpoint after this step" in output
    assert [p.name for p in out.glob("checkpoint-*")] == [f"checkpoint-{step}"]
    checkpoint = latest_complete_checkpoint(out)
    assert checkpoint == out / f"checkpoint-{step}" and problem(checkpoint) is None
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["global_step"] == step and 5 <= step < 400
    # No step ran after the interrupted one: the last logged step is at most the checkpoint's.
    assert max(e["step"] for e in state["log_history"]) <= step
    assert not (out / "eval_results.json").exists()


@pytest.mark.slow
def test_second_ctrl_c_stops_at_once_without_saving(tmp_path):
    """Long steps (all 125 batches of an epoch accumulated into each, several seconds),
    so that the second Ctrl-C lands inside the step the first one asked to finish."""
    out = tmp_path / "run"
    overrides = ["--training.max_steps=400", "--training.save_steps=1000", "--training.logging_steps=1"]
    proc = _start(out, *overrides, "--training.gradient_accumulation_steps=125")
    seen: list[str] = []
    _wait_for(proc, "'loss':", seen)
    proc.send_signal(signal.SIGINT)
    _wait_for(proc, "Ctrl-C again stops at once", seen)
    time.sleep(1.2)  # within a second, a SIGINT is the same Ctrl-C (torchrun forwards it to the workers)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=300)
    output = "".join(seen) + rest
    assert proc.returncode == 130, output[-3000:]
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.startswith("alignment: stopped")]
    assert lines == [
        f"alignment: stopped at once by Ctrl-C, without saving; complete checkpoints in {out}, if any, resume "
        "with --training.resume_from_checkpoint=latest"
    ], output[-3000:]
    assert not list(out.glob("checkpoint-*"))
    assert (out / "alignment_config.yaml").exists()  # steps had run: the directory is kept


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    ckpt = tmp_path / "out" / "checkpoint-10"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(os.urandom(4096))
    (ckpt / "optimizer.pt").write_bytes(os.urandom(2048))
    (ckpt / "trainer_state.json").write_text('{"global_step": 10}')
    mark_complete(ckpt, 10)
    return ckpt


def test_marker_records_every_file(checkpoint):
    recorded = json.loads((checkpoint / COMPLETE_MARKER).read_text())["files"]
    assert set(recorded) == {"model.safetensors", "optimizer.pt", "trainer_state.json"}
    assert recorded["optimizer.pt"]["bytes"] == 2048
    assert problem(checkpoint) is None


@pytest.mark.parametrize(
    ("damage", "phrase"),
    [
        (
            lambda c: (c / "optimizer.pt").write_bytes((c / "optimizer.pt").read_bytes()[:100]),
            "optimizer.pt has 100 bytes, 2048 were saved",
        ),
        (
            lambda c: (c / "model.safetensors").write_bytes(os.urandom(4096)),
            "model.safetensors does not match the SHA-256",
        ),
        (lambda c: (c / "trainer_state.json").unlink(), "trainer_state.json is missing"),
        (lambda c: (c / COMPLETE_MARKER).write_text("{not json"), "is not valid JSON"),
        (lambda c: (c / COMPLETE_MARKER).unlink(), "incomplete (no checkpoint_complete.json"),
    ],
    ids=["truncated", "overwritten", "deleted", "bad-marker", "no-marker"],
)
def test_damaged_checkpoints_are_never_loaded(checkpoint, damage, phrase, tmp_path):
    older = checkpoint.parent / "checkpoint-5"
    older.mkdir()
    (older / "trainer_state.json").write_text('{"global_step": 5}')
    mark_complete(older, 5)
    damage(checkpoint)
    assert phrase in problem(checkpoint)
    # `latest` falls back to the newest intact checkpoint; an explicit path refuses.
    assert resolve_resume("latest", str(checkpoint.parent)) == str(older)
    with pytest.raises(CheckpointError, match="Resume from an earlier checkpoint"):
        resolve_resume(str(checkpoint), str(checkpoint.parent))


@pytest.mark.slow
def test_resuming_a_corrupted_checkpoint_fails_in_seconds(checkpoint, tmp_path):
    (checkpoint / "optimizer.pt").write_bytes(b"\0" * 2048)
    start = time.monotonic()
    proc = train("dpo", tmp_path / "new", f"--training.resume_from_checkpoint={checkpoint}", check=False)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("alignment: checkpoint error:") and "optimizer.pt does not match the SHA-256" in last
    assert not (tmp_path / "new").exists()  # nothing half-written
    print(f"refused in {time.monotonic() - start:.1f}s")
