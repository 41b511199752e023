"""Logging integrations that users turn on with `training.report_to`: TensorBoard's
event files and an offline W&B run hold our metrics, with the values that
trainer_state.json logs. (A missing package is a config error at load:
tests/test_bad_inputs.py.)"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from tests.helpers import float32_approx
from tests.launch import log_history, train

OURS = ["loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "reward_accuracy"]


def tensorboard_scalars(out: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, dict[int, float]] = {}
    for events in sorted(out.glob("runs/*/events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({e.step: e.value for e in accumulator.Scalars(tag)})
    return scalars


def wandb_history(run_file: Path) -> list[dict]:
    """The history rows of an offline `.wandb` file: W&B's record log (a 7-byte header,
    then 32 KiB blocks of records, each with a 7-byte header: CRC, length, type), each
    record a protobuf `Record`."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos = run_file.read_bytes(), 32768, 7
    assert data[:4] == b":W&B"
    records, pending = [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room for a header: the block is padded
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            records.append(pending)
            pending = b""
    rows = []
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    return rows


@pytest.mark.slow
def test_tensorboard_and_offline_wandb_hold_our_metrics(tmp_path):
    out = tmp_path / "run"
    overrides = ["--training.max_steps=20", "--training.logging_steps=5", "--training.eval_strategy=steps"]
    overrides += ["--training.eval_steps=10", "--training.report_to=[tensorboard, wandb]"]
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    train("dpo", out, *overrides, env=env)
    history = log_history(out)
    logged = {(f"train/{k}", e["step"]): e[k] for e in history for k in OURS if k in e}
    logged |= {(f"eval/{k}", e["step"]): e[f"eval_{k}"] for e in history for k in OURS if f"eval_{k}" in e}
    assert {tag for tag, _ in logged} == {f"{split}/{k}" for split in ("train", "eval") for k in OURS}
    assert {step for _, step in logged} == {0, 5, 10, 15, 20}

    scalars = tensorboard_scalars(out)
    for (tag, step), value in logged.items():
        assert scalars[tag][step] == float32_approx(value, ulps=1), (tag, step)  # TensorBoard stores float32

    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    rows = wandb_history(run_file)
    in_wandb = {(tag, row["train/global_step"]): row[tag] for row in rows for tag in row if "/" in tag}
    for key, value in logged.items():
        assert in_wandb[key] == pytest.approx(value, rel=1e-12), key
