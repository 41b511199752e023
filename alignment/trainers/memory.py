"""Running out of accelerator memory: found before step 1 where it can be, and always
reported with the knobs that would make the run fit.

A preference batch is as large as its longest list, and the longest lists may come
hours into an epoch. `probe_longest_batch` runs one forward and backward on the
batch of the longest lists before training starts, so a run that cannot fit them fails
in its first minute; `out_of_memory_advice` turns the error into what to change."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow.compute as pc
import torch

from alignment.reference import reference_strategy

logger = logging.getLogger(__name__)


class OutOfMemory(RuntimeError):
    """Training ran out of accelerator memory; the message says where and what to change."""


def longest_rows(dataset: Any, n: int) -> list[int]:
    """Indices of the `n` rows whose padded batch is largest: K completions, each
    padded to prompt + longest completion (the baseline layout, the costliest)."""
    table = dataset.select_columns(["prompt_input_ids", "completion_input_ids"]).with_format("arrow")[:]
    prompt = pc.list_value_length(table.column("prompt_input_ids")).to_numpy(zero_copy_only=False)
    completions = table.column("completion_input_ids").combine_chunks()
    lengths = pc.list_value_length(completions.flatten()).to_numpy(zero_copy_only=False)
    offsets = completions.offsets.to_numpy()
    cost = [
        (int(offsets[i + 1] - offsets[i]) * (int(prompt[i]) + int(lengths[offsets[i] : offsets[i + 1]].max(initial=0))))
        for i in range(len(prompt))
    ]
    return sorted(range(len(cost)), key=lambda i: (-cost[i], i))[:n]


@contextlib.contextmanager
def _rng_kept() -> Iterator[None]:
    """The probe draws dropout masks; training must draw the same ones as without it."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def probe_enabled(setting: str, trainer: Any) -> bool:
    """`auto`: on an accelerator, for offline training outside DeepSpeed (whose engine
    owns backward); `on` forces it (also on CPU); `off` skips it."""
    if setting != "auto":
        return setting == "on"
    offline = not trainer.samples_online  # an online batch is prompts: its lists exist only once sampled
    return trainer.args.device.type not in ("cpu", "meta") and not trainer.is_deepspeed_enabled and offline


def probe_longest_batch(trainer: Any) -> dict[str, int]:
    """One forward and backward of the training loss on the per-device batch of the
    longest lists, before step 1. It leaves no trace: gradients are dropped and the RNG
    is restored, and no optimizer step is taken. Returns the batch's shape."""
    rows = longest_rows(trainer.train_dataset, trainer.args.per_device_train_batch_size)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in rows])
    shape = {
        "lists": int(batch["mask"].shape[0]),
        "completions": int(batch["mask"].shape[1]),
        "tokens": int(batch["prompt_input_ids"].shape[-1] + batch["completion_input_ids"].shape[-1]),
    }
    model = trainer.model
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with _rng_kept():
        inputs = trainer._prepare_inputs(batch)
        was_training = model.training
        model.train()
        with trainer.compute_loss_context_manager():
            loss = trainer.loss_fn(trainer.batch_logps(model, inputs)).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    peak = ""
    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(trainer.args.device).total_memory
        peak = f"; peak {torch.cuda.max_memory_allocated() / 2**30:.1f} of {total / 2**30:.1f} GiB"
    logger.info(
        "memory probe: the longest batch (%d lists x %d completions, %d tokens wide) fits%s",
        shape["lists"],
        shape["completions"],
        shape["tokens"],
        peak,
    )
    return shape


@contextlib.contextmanager
def out_of_memory_reported(config: Any, args: Any, where: Callable[[], str]) -> Iterator[None]:
    """Turns `torch.OutOfMemoryError` into OutOfMemory with the advice. `where` is asked
    only then (the step is known only once the error has happened)."""
    try:
        yield
    except torch.OutOfMemoryError as err:
        raise OutOfMemory(out_of_memory_advice(config, args, where(), err)) from None


def out_of_memory_advice(config: Any, args: Any, where: str, error: BaseException) -> str:
    """What ran out, where, and the settings that lower peak memory, each with its
    current value; settings already at their lightest are left out."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    knobs = []
    batch = args.per_device_train_batch_size
    if batch > 1:
        knobs.append(
            f"training.per_device_train_batch_size (now {batch}) smaller, with training.gradient_accumulation_steps "
            f"(now {args.gradient_accumulation_steps}) larger to keep the same batch"
        )
    if not args.checkpointing_enabled:
        knobs.append("training.gradient_checkpointing: true (now off)")
    knobs.append(
        f"data.max_length (now {config.data.max_length}) and data.max_prompt_length "
        f"(now {config.data.max_prompt_length}) shorter: the longest list sets the batch's size"
    )
    if reference_strategy(config.reference.type).holds_copy:
        knobs.append("reference: precompute (now model: a second copy of the weights is in memory while training)")
    if config.lora is None:
        knobs.append("a `lora:` section (LoRA trains adapters only: no gradients or optimizer state for the base)")
    elif config.quantization is None:
        knobs.append("quantization: {bits: 4} with LoRA (QLoRA: the base weights in 4 bits)")
    if args.logprob_chunk_size == 0 or args.logprob_chunk_size > 256:
        knobs.append(f"training.logprob_chunk_size (now {args.logprob_chunk_size}) smaller, e.g. 256")
    knobs.append("on several GPUs, DeepSpeed ZeRO-3 (recipes/accelerate_configs/zero3.yaml) to shard the weights")
    steps = "\n".join(f"  - {knob}" for knob in knobs)
    return f"out of memory {where}: {first}\nTo fit, change one or more of:\n{steps}"
