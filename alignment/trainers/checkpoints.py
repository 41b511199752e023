"""Checkpoints that are either complete and intact, or ignored.

`transformers.Trainer` writes `checkpoint-N/` file by file, so a process killed while
saving leaves a directory that looks like a checkpoint. Each finished checkpoint gets
a marker file, written last and atomically, that records the size and SHA-256 of every
file in it. Resuming only ever picks marked checkpoints whose files still match: a
truncated, overwritten or deleted file is found before anything is loaded."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint_complete.json"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint to resume from is missing, incomplete or corrupted."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(checkpoint_dir: Path) -> list[Path]:
    return sorted(p for p in checkpoint_dir.rglob("*") if p.is_file() and not p.name.endswith(COMPLETE_MARKER))


def mark_complete(checkpoint_dir: str | os.PathLike[str], step: int) -> None:
    """Write the marker: the step and each file's size and SHA-256."""
    root = Path(checkpoint_dir)
    files = {str(p.relative_to(root)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in _files(root)}
    path = root / COMPLETE_MARKER
    tmp = path.with_name(f".{COMPLETE_MARKER}.tmp")
    tmp.write_text(json.dumps({"global_step": step, "files": files}, indent=1))
    os.replace(tmp, path)  # atomic: the marker exists whole or not at all


def problem(checkpoint_dir: str | os.PathLike[str]) -> str | None:
    """What is wrong with a checkpoint (None: complete and intact)."""
    root = Path(checkpoint_dir)
    marker = root / COMPLETE_MARKER
    if not marker.is_file():
        return f"incomplete (no {COMPLETE_MARKER}; the run stopped while saving it)"
    try:
        recorded = json.loads(marker.read_text()).get("files")
    except (json.JSONDecodeError, AttributeError):
        return f"corrupted: {COMPLETE_MARKER} is not valid JSON"
    for name, expected in (recorded or {}).items():  # markers of older versions record no files
        path = root / name
        if not path.is_file():
            return f"corrupted: {name} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"corrupted: {name} has {path.stat().st_size} bytes, {expected['bytes']} were saved"
        if _sha256(path) != expected["sha256"]:
            return f"corrupted: {name} does not match the SHA-256 recorded when it was saved"
    return None


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
        found = problem(path)
        if found is None:
            return path
        logger.warning("ignoring %s: it is %s", path, found)
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
    found = problem(path)
    if found is not None:
        raise CheckpointError(
            f"training.resume_from_checkpoint: {value!r} is {found}. Resume from an earlier checkpoint or use `latest`."
        )
    return str(path)
