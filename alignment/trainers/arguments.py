"""TrainingArguments for preference training: transformers' own, with the defaults a
preference run needs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from alignment.trainers.argument_checks import OWN_CHOICES, checked_training_values


def _has_accelerator() -> bool:
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(xpu and xpu.is_available()) or torch.backends.mps.is_available()


@dataclass
class AlignmentTrainingArguments(TrainingArguments):
    """`transformers.TrainingArguments`, unchanged names, plus four of our own (every value is
    checked by `alignment.trainers.argument_checks`):

    - `forward`: how per-completion log-probs are computed (`alignment.logprobs`):
      `auto` (the fastest valid strategy), `baseline`, `packed` or `shared_prompt`;
    - `logprob_chunk_size`: tokens per LM-head chunk for `packed` and `shared_prompt`
      (0: one chunk);
    - `nonfinite_loss`: `stop` (default) or `skip` a step whose loss is NaN or inf;
    - `memory_probe`: one forward and backward of the batch of the longest lists before
      step 1, so that a run that cannot fit them fails at once (`alignment.trainers.memory`):
      `auto` (on a GPU, offline, outside DeepSpeed), `on` or `off`.

    Three defaults differ:

    - preference batches carry columns that are not model inputs, so
      `remove_unused_columns` is always off;
    - on a machine with no accelerator, processes started by `accelerate launch
      --num_processes N` form one gloo DDP job (`use_cpu` is switched on): without it,
      transformers runs each process as an independent single-process job;
    - gradient checkpointing defaults to the non-reentrant implementation, which
      backpropagates through frozen inputs (LoRA) and works under DDP."""

    forward: str = field(default="auto", metadata={"help": "auto | baseline | packed | shared_prompt"})
    logprob_chunk_size: int = field(default=1024, metadata={"help": "tokens per LM-head chunk (0: one chunk)"})
    nonfinite_loss: str = field(default="stop", metadata={"help": "on a NaN/inf loss: stop | skip (the step)"})
    memory_probe: str = field(
        default="auto", metadata={"help": "forward+backward of the longest batch before step 1: auto | on | off"}
    )
    # `latest` or true resumes from the newest complete checkpoint (trainers.checkpoints.resolve_resume).
    resume_from_checkpoint: str | bool | None = field(
        default=None, metadata={"help": "a checkpoint directory, or latest (true) for the newest complete one"}
    )

    def __post_init__(self) -> None:
        own = ("forward", "logprob_chunk_size", *OWN_CHOICES)
        for name, value in checked_training_values({name: getattr(self, name) for name in own}).items():
            setattr(self, name, value)
        self.remove_unused_columns = False
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and not self.use_cpu and not _has_accelerator():
            self.use_cpu = True
        super().__post_init__()
        if self.checkpointing_enabled and self.checkpointing_kwargs is None:
            # Set after transformers has reconciled the old `gradient_checkpointing*` names
            # with the new `activation_checkpointing*` ones (5.x), under both names.
            for name in ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"):
                if hasattr(self, name):
                    setattr(self, name, {"use_reentrant": False})
        if launched > 1 and self.world_size != launched:
            raise RuntimeError(
                f"{launched} processes were launched but the training arguments see a world size of "
                f"{self.world_size}: the processes would train independently. Check the accelerate config."
            )

    @property
    def checkpointing_enabled(self) -> bool:
        return bool(getattr(self, "activation_checkpointing", None) or self.gradient_checkpointing)

    @property
    def checkpointing_kwargs(self) -> dict | None:
        return getattr(self, "activation_checkpointing_kwargs", None) or self.gradient_checkpointing_kwargs
