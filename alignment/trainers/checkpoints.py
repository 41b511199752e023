"""Checkpoints that are either complete or ignored.

`transformers.Trainer` writes `checkpoint-N/` file by file, so a process killed while
saving leaves a directory that looks like a checkpoint. Each finished checkpoint gets
a marker file, written last and atomically; resuming only ever picks marked ones."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint_complete.json"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint to resume from is missing or incomplete."""


def mark_complete(checkpoint_dir: str | os.PathLike[str], step: int) -> None:
    path = Path(checkpoint_dir) / COMPLETE_MARKER
    tmp = path.with_name(f".{COMPLETE_MARKER}.tmp")
    tmp.write_text(json.dumps({"global_step": step}))
    os.replace(tmp, path)  # atomic: the marker exists whole or not at all


def is_complete(checkpoint_dir: str | os.PathLike[str]) -> bool:
    return (Path(checkpoint_dir) / COMPLETE_MARKER).is_file()


def checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """`checkpoint-N` directories in `output_dir`, by step."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT_NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_complete_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    candidates = checkpoints(output_dir)
    for path in reversed(candidates):
        if is_complete(path):
            return path
        logger.warning("ignoring %s: it has no %s (the run stopped while saving it)", path, COMPLETE_MARKER)
    return None


def resolve_resume(value: str | bool | None, output_dir: str) -> str | None:
    """`training.resume_from_checkpoint`: a checkpoint path, `latest` (or true) for the
    newest complete checkpoint in `output_dir` (none yet: start fresh), or null."""
    if value in (None, False, ""):
        return None
    if value is True or str(value).lower() in ("latest", "true"):
        latest = latest_complete_checkpoint(output_dir)
        if latest is None:
            logger.info(
                "resume_from_checkpoint=latest: no complete checkpoint in %s, starting from scratch", output_dir
            )
            return None
        logger.info("resuming from %s", latest)
        return str(latest)
    path = Path(str(value))
    if not path.is_dir():
        raise CheckpointError(f"training.resume_from_checkpoint: {value!r} is not a directory")
    if not is_complete(path):
        raise CheckpointError(
            f"training.resume_from_checkpoint: {value!r} is incomplete (no {COMPLETE_MARKER}; the run "
            "stopped while saving it). Resume from an earlier checkpoint or use `latest`."
        )
    return str(path)
