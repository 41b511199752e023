"""What a run does when something goes wrong while it trains: a non-finite loss, a
SIGTERM (a Slurm preemption, a spot instance going away) and a Ctrl-C.

Both decisions are collective: every process takes the same branch, so a fault seen by
one rank never leaves the others waiting in an all-reduce."""

from __future__ import annotations

import logging
import os
import signal
import time

import torch
from torch import Tensor, nn
from transformers import TrainerCallback

from alignment.losses import SequenceLogps

logger = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, the shell's convention for "terminated"
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT
DUPLICATE_SIGNAL_S = 1.0
STOP_SIGNALS = {signal.SIGTERM: ("SIGTERM", PREEMPTED_EXIT_CODE), signal.SIGINT: ("Ctrl-C", INTERRUPTED_EXIT_CODE)}


class Preempted(RuntimeError):
    """The run stopped on SIGTERM or Ctrl-C after saving a checkpoint; `exit_code`
    follows the shell's convention for that signal."""

    def __init__(self, message: str, exit_code: int = PREEMPTED_EXIT_CODE) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    @classmethod
    def at_step(cls, signal_name: str, step: int, output_dir: str, exit_code: int) -> Preempted:
        """The stop after `signal_name` at `step`, with the checkpoint it saved and how to resume."""
        return cls(
            f"stopped by {signal_name} at step {step}; checkpoint-{step} is saved in {output_dir}. "
            "Rerun with --training.resume_from_checkpoint=latest to continue",
            exit_code=exit_code,
        )


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf and `training.nonfinite_loss` is `stop`."""


def _any_process(flag: bool, accelerator) -> bool:
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor([float(flag)], device=accelerator.device)
    return bool(accelerator.reduce(value, "sum").item() > 0)


def _where(logps: SequenceLogps) -> str:
    """Which lists of the batch hold non-finite log-probs: the likely culprit."""
    parts = []
    for name in ("policy", "reference"):
        values = getattr(logps, name)
        if values is not None:
            lists = (~torch.isfinite(values) & logps.mask.bool()).any(-1).nonzero().flatten().tolist()
            if lists:
                parts.append(f"{name} log-probs of lists {lists}")
    return "non-finite " + " and ".join(parts) if parts else "finite log-probs (the loss itself overflowed)"


def guard_nonfinite(trainer, model: nn.Module, loss: Tensor, logps: SequenceLogps) -> Tensor:
    """`loss`, unless it is NaN or inf on any process. Then, by `training.nonfinite_loss`:
    `stop` raises NonFiniteLossError naming the step and the batch; `skip` counts the
    step and returns a zero loss whose gradient is exactly zero, so the optimizer step
    changes nothing but the counters (AdamW with zero gradients only decays its moments)."""
    if not _any_process(not bool(torch.isfinite(loss.detach()).all()), trainer.accelerator):
        return loss
    step = trainer.state.global_step + 1
    lists = int(logps.mask.any(-1).sum())
    if trainer.args.nonfinite_loss == "stop":
        raise NonFiniteLossError(
            f"the training loss is {loss.item()} at step {step} (a batch of {lists} lists; {_where(logps)}). "
            "Lower the learning rate, check the data, or set training.nonfinite_loss: skip to skip such steps"
        )
    trainer.nonfinite_skipped += 1
    logger.warning(
        "step %d: non-finite loss (%s), step skipped (%d so far)", step, _where(logps), trainer.nonfinite_skipped
    )
    return sum((p.sum() * 0.0 for p in model.parameters() if p.requires_grad), loss.new_zeros(()))


class PreemptionCallback(TrainerCallback):
    """On SIGTERM or a first Ctrl-C, finish the current step, save a checkpoint and
    stop; the run then exits with that signal's status (143 or 130), and rerunning with
    `resume_from_checkpoint=latest` continues from that checkpoint. A second Ctrl-C, a
    second or more after the first, stops at once (KeyboardInterrupt), without saving."""

    def __init__(self, accelerator) -> None:
        self.accelerator = accelerator
        self.requested: int | None = None  # the signal that asked to stop
        self._requested_at = 0.0
        self.preempted_at: int | None = None
        self._previous = {signum: signal.signal(signum, self._on_signal) for signum in STOP_SIGNALS}

    def _on_signal(self, signum, frame) -> None:
        if self.requested is not None:
            # torchrun's agent forwards the terminal's SIGINT to the workers, which have it already:
            # within a second of the first, a SIGINT is that same Ctrl-C.
            if signum == signal.SIGINT and time.monotonic() - self._requested_at > DUPLICATE_SIGNAL_S:
                raise KeyboardInterrupt
            return
        self.requested, self._requested_at = signum, time.monotonic()  # acted on at the end of the step
        if signum == signal.SIGINT:
            # os.write, not print: the signal may arrive while a progress bar is writing to stderr.
            note = (
                "\nalignment: Ctrl-C: saving a checkpoint after this step, then stopping (Ctrl-C again stops at once)\n"
            )
            os.write(2, note.encode())

    @property
    def signal_name(self) -> str:
        return STOP_SIGNALS.get(self.requested, ("SIGTERM", PREEMPTED_EXIT_CODE))[0]

    @property
    def exit_code(self) -> int:
        return STOP_SIGNALS.get(self.requested, ("SIGTERM", PREEMPTED_EXIT_CODE))[1]

    def on_step_end(self, args, state, control, **kwargs):
        if _any_process(self.requested is not None, self.accelerator):
            logger.warning("%s: saving a checkpoint at step %d and stopping", self.signal_name, state.global_step)
            self.preempted_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
