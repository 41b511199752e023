"""The output directory's disk: a run that cannot fit one checkpoint is refused before
step 1, a save that runs out of space ends with one line, and a run that fails before
its first step leaves no output directory."""

from __future__ import annotations

import errno
import shutil
import subprocess
import types
from pathlib import Path

import pytest

from alignment.trainers.checkpoints import latest_complete_checkpoint
from alignment.trainers.output_dir import DiskSpaceError, DiskSpaceForecast, disk_full_reported, size
from tests.helpers import TINY, tiny_model
from tests.launch import train

RECIPE = TINY / "dpo.yaml"


def _tiny_bytes() -> int:
    """The tiny model's float32 weights, counted here from its parameters."""
    return sum(p.numel() * 4 for p in tiny_model().parameters())


def _train_in_process(out: Path, *overrides: str) -> int:
    from alignment.cli import train_main

    return train_main(["--config", str(RECIPE), f"--training.output_dir={out}", "--training.max_steps=2", *overrides])


@pytest.mark.parametrize(
    ("overrides", "what", "parts"),
    [
        (["--training.save_strategy=steps"], "one checkpoint", lambda w: {"weights": w, "optimizer state": 2 * w}),
        (
            ["--training.save_strategy=steps", "--training.save_only_model=true"],
            "one checkpoint",
            lambda w: {"weights": w},
        ),
        (["--training.save_strategy=no"], "the final model", lambda w: {"weights": w}),
    ],
    ids=["checkpoint", "save-only-model", "final-model"],
)
def test_a_disk_too_small_is_refused_before_anything_is_written(overrides, what, parts, tmp_path, capsys, monkeypatch):
    """AdamW keeps two float32 moments per weight, so a checkpoint is 3x the weights."""
    import alignment.trainers.output_dir as output_dir

    free = 400_000  # less than the tiny model's 420,864 bytes of weights
    monkeypatch.setattr(output_dir.shutil, "disk_usage", lambda path: types.SimpleNamespace(free=free))
    out = tmp_path / "out"
    assert _train_in_process(out, *overrides) == 1
    err = capsys.readouterr().err
    expected = parts(_tiny_bytes())
    detail = ", ".join(f"{name} {size(n)}" for name, n in expected.items())
    line = f"alignment: not enough disk space: {out} has {size(free)} free, but {what} needs about "
    assert f"{line}{size(sum(expected.values()))} ({detail})" in err, err
    assert "another training.output_dir" in err and "Traceback" not in err
    assert ("training.save_only_model: true" in err) == ("optimizer state" in expected)
    assert not out.exists()


def test_a_failure_before_step_1_leaves_no_output_directory(tmp_path, monkeypatch):
    """Whatever raises after the output directory was written but before step 1 (here
    an error of no kind we know), the directory goes; one that existed stays."""
    from alignment.trainers.preference import PreferenceTrainer

    def boom(self, *args, **kwargs):
        assert (Path(self.args.output_dir) / "alignment_config.yaml").exists()  # it was written
        raise RuntimeError("boom before step 1")

    monkeypatch.setattr(PreferenceTrainer, "train", boom)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom before step 1"):
        _train_in_process(out)
    assert not out.exists()
    out.mkdir()
    with pytest.raises(RuntimeError, match="boom before step 1"):
        _train_in_process(out)
    assert out.is_dir()  # not ours to remove


def _args(**kwargs):
    defaults = dict(save_strategy="steps", save_total_limit=None, save_only_model=False, should_save=True)
    return types.SimpleNamespace(**{**defaults, **kwargs})


def test_a_save_that_fails_with_enospc_names_sizes_and_settings(tmp_path):
    partial = tmp_path / "checkpoint-60"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 100)
    parts = {"weights": 1_000, "optimizer state": 2_000}
    with pytest.raises(DiskSpaceError) as info:
        with disk_full_reported("checkpoint-60", str(partial), _args(), lambda: parts):
            raise OSError(errno.ENOSPC, "No space left on device")
    message = str(info.value)
    free = shutil.disk_usage(tmp_path).free
    assert message.startswith(f"writing checkpoint-60 in {partial} ran out of space (OSError: [Errno 28] No space")
    assert f"it needs about 3,000 bytes (3.0 kB), and {free:,} bytes" in message
    assert "once the partial checkpoint is removed" in message
    assert "training.save_total_limit (now None)" in message
    assert "training.save_only_model: true (now false) to leave out the optimizer state (2,000 bytes" in message
    assert not partial.exists()  # it had no marker: useless, and in the way


def test_other_save_errors_pass_through_unchanged(tmp_path):
    """With room to spare, a failed write is not a full disk: the original error stands."""
    with pytest.raises(PermissionError, match="read-only"):
        with disk_full_reported("the final model", str(tmp_path), _args(), lambda: {"weights": 10}):
            raise PermissionError(errno.EACCES, "read-only")


@pytest.mark.parametrize(
    ("limit", "free", "warned"),
    [(None, 3_500, "it would run out at checkpoint 4 of 5"), (1, 3_500, None), (None, 10_000, None)],
    ids=["keeps-all", "limit-1", "room"],
)
def test_the_checkpoints_a_run_will_hold_are_forecast_at_start(limit, free, warned, caplog, monkeypatch):
    """100 steps saved every 20: 5 checkpoints of 1,000 bytes, plus a final model of 300;
    3,500 bytes free hold 3 of them, so the 4th would fail.
    With save_total_limit 1, rotation still holds 2 at once (the newest is written first)."""
    import alignment.trainers.output_dir as output_dir

    monkeypatch.setattr(output_dir, "free_bytes", lambda directory: free)
    args = _args(save_steps=20, save_total_limit=limit, output_dir="out")
    state = types.SimpleNamespace(is_world_process_zero=True, max_steps=100, num_train_epochs=1)
    parts = {"weights": 300, "optimizer state": 700}
    with caplog.at_level("WARNING", logger="alignment.trainers.output_dir"):
        DiskSpaceForecast(lambda: parts).on_train_begin(args, state, None)
    messages = [r.getMessage() for r in caplog.records]
    if warned is None:
        assert messages == []
    else:
        (message,) = messages
        assert message.startswith("not enough disk space for this run: it will hold 5 checkpoints of about 1,000 bytes")
        assert warned in message and "training.save_total_limit (now None)" in message


def _mount_tmpfs(path: Path, megabytes: int) -> bool:
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)], capture_output=True)
    return proc.returncode == 0


@pytest.mark.slow
def test_a_real_disk_that_fills_at_a_checkpoint(tmp_path):
    """The tiny recipe on a 3 MB filesystem: checkpoints of about 1.3 MB each, so the
    third does not fit. torch.save reports that as `basic_ios::clear: iostream error`."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, 3):
        pytest.skip("mounting a 3 MB tmpfs needs root (CAP_SYS_ADMIN), which this machine does not grant")
    try:
        out = disk / "run"
        overrides = ["--training.max_steps=40", "--training.save_strategy=steps", "--training.save_steps=10"]
        proc = train("dpo", out, *overrides, "--training.eval_on_start=false", check=False)
        assert proc.returncode == 1, proc.stderr[-3000:]
        errors = [line for line in proc.stderr.splitlines() if line.startswith("alignment: ")]
        assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert errors[0].startswith(f"alignment: not enough disk space: writing checkpoint-30 in {out}/checkpoint-30")
        assert "it needs about" in errors[0] and "training.save_total_limit (now None)" in errors[0]
        assert "it would run out at checkpoint 3 of 4" in proc.stdout + proc.stderr  # forecast at start
        assert latest_complete_checkpoint(out) == out / "checkpoint-20"  # the saved ones are intact
        assert not (out / "checkpoint-30").exists()
    finally:
        subprocess.run(["umount", str(disk)], check=False)
