"""The output directory: writable and big enough for one checkpoint, checked before
step 1; a save that runs out of space ends with one line saying what to change; and a
run that fails before its first step leaves no directory behind."""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from torch import nn
from transformers import TrainerCallback

logger = logging.getLogger(__name__)


class DiskSpaceError(RuntimeError):
    """The output directory's filesystem cannot hold what the run has to write there."""


def nearest_existing(path: str | os.PathLike[str]) -> Path:
    """`path`, or its closest ancestor that exists: where it would be created."""
    current = Path(path).expanduser().absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def writable_problem(output_dir: str) -> str | None:
    """Why `output_dir` could not be created or written (None: it can)."""
    target = Path(output_dir).expanduser()
    if target.exists() and not target.is_dir():
        return f"{output_dir!r} exists and is not a directory"
    parent = nearest_existing(target)
    if not parent.is_dir():
        return f"{output_dir!r} cannot be created: {str(parent)!r} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{output_dir!r} cannot be written: no write permission on {str(parent)!r}"
    return None


def free_bytes(directory: str | os.PathLike[str]) -> int:
    return shutil.disk_usage(nearest_existing(directory)).free


def size(n: int) -> str:
    """`1,312,456 bytes (1.3 MB)`: the exact count and a readable one."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n:,} bytes ({n / scale:.1f} {unit})"
    return f"{n:,} bytes"


def _numel(p: nn.Parameter) -> int:
    return int(getattr(p, "ds_numel", p.numel()))  # ZeRO-3 keeps only a shard in p


def weights_bytes(model: nn.Module) -> int:
    """What `save_model` writes: the adapters (the trainable weights) of a PEFT model,
    every weight otherwise. Tied weights count once, as safetensors stores them."""
    adapters = hasattr(model, "peft_config")
    return sum(_numel(p) * p.element_size() for p in model.parameters() if p.requires_grad or not adapters)


def optimizer_state_bytes(model: nn.Module, optim: str) -> int:
    """A lower bound on the optimizer state a checkpoint holds: two moments per
    trainable weight for the Adam family, one for Lion, RMSprop and Adagrad, 8-bit
    states at one byte each; other optimizers (SGD, Adafactor) count nothing."""
    name = str(getattr(optim, "value", optim))
    states = 2 if "adam" in name else 1 if any(k in name for k in ("lion", "rmsprop", "adagrad")) else 0
    trainable = [p for p in model.parameters() if p.requires_grad]
    per_weight = (lambda p: 1) if "8bit" in name else (lambda p: p.element_size())
    return states * sum(_numel(p) * per_weight(p) for p in trainable)


def checkpoint_parts(model: nn.Module, args: Any) -> dict[str, int]:
    """The bytes of one checkpoint, by part (the optimizer state is left out under
    `save_only_model`)."""
    parts = {"weights": weights_bytes(model)}
    if not args.save_only_model:
        parts["optimizer state"] = optimizer_state_bytes(model, args.optim)
    return parts


def _save_strategy(args: Any) -> str:
    return str(getattr(args.save_strategy, "value", args.save_strategy))  # an enum once TrainingArguments has run


def _advice(args: Any, parts: dict[str, int]) -> str:
    tips = []
    if _save_strategy(args) != "no":
        tips.append(f"training.save_total_limit (now {args.save_total_limit}) to keep fewer checkpoints")
        if "optimizer state" in parts:
            tips.append(
                f"training.save_only_model: true (now false) to leave out the optimizer state "
                f"({size(parts['optimizer state'])}; such checkpoints cannot resume training)"
            )
    tips.append("another training.output_dir, on a larger disk")
    return "Free some space, or set " + "; ".join(tips)


def check_free_space(model: nn.Module, args: Any) -> None:
    """Refuse a run whose output filesystem cannot hold a single checkpoint (or, with
    `save_strategy: no`, the final model), before anything is written."""
    saves_checkpoints = _save_strategy(args) != "no"
    parts = checkpoint_parts(model, args) if saves_checkpoints else {"weights": weights_bytes(model)}
    needed, free = sum(parts.values()), free_bytes(args.output_dir)
    if free >= needed:
        return
    what = "one checkpoint" if saves_checkpoints else "the final model"
    detail = ", ".join(f"{name} {size(n)}" for name, n in parts.items())
    raise DiskSpaceError(
        f"{args.output_dir} has {size(free)} free, but {what} needs about {size(needed)} ({detail}). "
        + _advice(args, parts)
    )


class DiskSpaceForecast(TrainerCallback):
    """When training starts (and the number of steps is known), warns if the
    checkpoints the run will hold at once, and the final model, need more than the free
    space: it names the checkpoint at which the disk would fill, so that the user can set
    `save_total_limit` now rather than find out hours in."""

    def __init__(self, parts: Callable[[], dict[str, int]]) -> None:
        self.parts = parts

    def on_train_begin(self, args, state, control, **kwargs):
        strategy = _save_strategy(args)
        if not state.is_world_process_zero or strategy not in ("steps", "epoch") or state.max_steps <= 0:
            return
        if strategy == "steps":
            interval = args.save_steps if args.save_steps >= 1 else math.ceil(args.save_steps * state.max_steps)
            saves = state.max_steps // max(1, int(interval))
        else:
            saves = math.ceil(state.num_train_epochs)
        # Rotation deletes the oldest only after the newest is written: limit + 1 are on disk at once.
        held = saves if args.save_total_limit is None else min(saves, args.save_total_limit + 1)
        parts = self.parts()
        each, final = sum(parts.values()), parts["weights"]
        free = free_bytes(args.output_dir)
        if held * each + final <= free or each == 0:
            return
        fits = free // each
        logger.warning(
            "not enough disk space for this run: it will hold %d checkpoints of about %s at once, plus the final model "
            "(%s), but %s is free in %s: it would run out at checkpoint %d of %d. %s",
            held,
            size(each),
            size(final),
            size(free),
            args.output_dir,
            fits + 1,
            saves,
            _advice(args, parts),
        )


def _disk_full(error: BaseException, directory: str, needed: int) -> bool:
    """ENOSPC anywhere in the chain, or a writer that hides the errno (torch.save's
    `basic_ios::clear: iostream error`) on a filesystem left with less than needed."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return free_bytes(directory) < needed


@contextlib.contextmanager
def disk_full_reported(what: str, directory: str, args: Any, parts: Callable[[], dict[str, int]]) -> Iterator[None]:
    """Turns running out of space while writing `directory` into DiskSpaceError with the
    sizes and the settings that help. A partial checkpoint is removed: it has no
    completion marker, so resuming would skip it anyway."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        needed = parts()
        total = sum(needed.values())
        if not _disk_full(err, directory, total):
            raise
        partial = Path(directory)
        if partial.name.startswith("checkpoint-") and args.should_save:
            shutil.rmtree(partial, ignore_errors=True)
        raise DiskSpaceError(
            f"writing {what} in {directory} ran out of space ({type(err).__name__}: {str(err).strip()[:120]}): it needs "
            f"about {size(total)}, and {size(free_bytes(directory))} is free"
            f"{' once the partial checkpoint is removed' if partial.name.startswith('checkpoint-') else ''}. "
            + _advice(args, needed)
        ) from None


@contextlib.contextmanager
def removed_on_early_failure(output_dir: str, is_main: bool, steps_done: Callable[[], int]) -> Iterator[None]:
    """If this run creates `output_dir` and then fails (any error, Ctrl-C included)
    before finishing its first step, the directory goes: nothing in it is worth keeping,
    and a leftover would look like a run. A directory that existed before is kept."""
    created = not Path(output_dir).expanduser().exists()
    try:
        yield
    except BaseException:
        if created and is_main and steps_done() == 0 and Path(output_dir).expanduser().exists():
            shutil.rmtree(Path(output_dir).expanduser(), ignore_errors=True)
            logger.info("removed %s: the run stopped before its first step", output_dir)
        raise
