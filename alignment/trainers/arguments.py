"""`AlignmentTrainingArguments`, transformers' TrainingArguments with the defaults a
preference run needs, and the checks of the recipe's `training:` section: every value is
checked when the recipe loads, so that a bad one fails in the first second, naming the
key and what is allowed, rather than as a traceback from the scheduler or the DataLoader
after the output directory was written.
What is checked is derived from `AlignmentTrainingArguments`' own fields, so a field
that a new transformers release adds is checked too:

- **type**, from the field's annotation (`float`, `int | None`, `SchedulerType | str`,
  `dict | str | None`, ...): a learning rate of `abc` or a batch size of `2.5` is refused;
- **range**: every number is >= 0, unless its default is a negative sentinel (`max_steps:
  -1`, `local_rank: -1`), which stays allowed; `RANGES` tightens this for the fields
  whose meaning needs more (batch sizes >= 1, probabilities below 1, numpy's seeds);
- **choices**: transformers' enums (`save_strategy`, `optim`, ...), the choices listed in
  a field's metadata (`log_level`, `ddp_backend`, ...), and our own keys;
- **integrations**: each `report_to` name is one transformers knows, and its package is
  installed."""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

import torch
from transformers import TrainingArguments

from alignment.logprobs import FORWARD_CHOICES
from alignment.schema import ConfigError, coerce

OWN_CHOICES = {"nonfinite_loss": ("stop", "skip"), "memory_probe": ("auto", "on", "off")}
# Choices that transformers documents in a field's help but lists neither as an enum nor in its metadata.
DOCUMENTED_CHOICES = {"include_num_input_tokens_seen": ("all", "non_padding", "no", True)}


@dataclass(frozen=True)
class Range:
    """low <= value (< or <=) high; `low_open` makes the low end exclusive."""

    low: float = 0
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self) -> str:
        low = f"> {_number(self.low)}" if self.low_open else f">= {_number(self.low)}"
        if self.high == math.inf:
            return low
        return f"{low} and {'<' if self.high_open else '<='} {_number(self.high)}"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


NON_NEGATIVE = Range(0)
# Fields whose meaning needs more than ">= 0", matched by name (first match wins).
RANGES: list[tuple[str, Range]] = [
    (r"_batch_size$|^(gradient|eval)_accumulation_steps$|^torch_empty_cache_steps$", Range(1)),
    (r"^max_steps$", Range(1)),  # -1, its default, means "use num_train_epochs"
    (r"^(logging|save|eval)_steps$", Range(0, low_open=True)),  # steps, or a ratio of the run when < 1
    (r"^num_train_epochs$", Range(0, low_open=True)),
    (r"^(adam_beta\d|label_smoothing_factor)$", Range(0, 1, high_open=True)),
    (r"^(seed|data_seed)$", Range(0, 2**32 - 1)),  # numpy's seed range
    (r"^(save_total_limit|dataloader_prefetch_factor|ddp_bucket_cap_mb|ddp_timeout)$", Range(1)),
]

# `pip install` names of the report_to integrations whose package is named otherwise.
INTEGRATION_PACKAGES = {"azure_ml": "azureml-core", "flyte": "flytekit", "kubeflow": "kubeflow"}
OUR_EXTRAS = {"tensorboard", "wandb"}


def _fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(AlignmentTrainingArguments) if f.init}


def _hints() -> dict[str, Any]:
    return typing.get_type_hints(AlignmentTrainingArguments)


def _members(annotation: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(annotation)
    return typing.get_args(annotation) if origin in (Union, types.UnionType) else (annotation,)


def _enum_of(annotation: Any) -> type[enum.Enum] | None:
    for member in _members(annotation):
        if isinstance(member, type) and issubclass(member, enum.Enum):
            return member
    return None


def numeric_type(annotation: Any) -> type | None:
    """`int` or `float` when the field takes a number (`float`, `int | None`), else None."""
    members = _members(annotation)
    return float if float in members else int if int in members else None


def range_of(name: str, default: Any) -> tuple[Range, Any]:
    """The allowed range of a numeric field, and the sentinel default it also allows."""
    rule = next((r for pattern, r in RANGES if re.search(pattern, name)), NON_NEGATIVE)
    sentinel = default if isinstance(default, (int, float)) and not isinstance(default, bool) else None
    return rule, (sentinel if sentinel is not None and sentinel not in rule else None)


def choices_of(name: str, field: dataclasses.Field, annotation: Any) -> list[Any] | None:
    """The values a choice-valued field takes: ours, an enum's, or its metadata's."""
    own = {"forward": FORWARD_CHOICES, **OWN_CHOICES, **DOCUMENTED_CHOICES}
    if name in own:
        return list(own[name])
    if (choices := _enum_of(annotation)) is not None:
        return [member.value for member in choices]
    if "choices" in field.metadata:
        return list(field.metadata["choices"])
    return None


def _choice(name: str, value: Any, allowed: list[Any], annotation: Any) -> Any:
    # YAML 1.1 reads a bare `no`/`on`/`off` as a boolean; for these keys it means the choice.
    if isinstance(value, bool):
        if name == "memory_probe":
            value = "on" if value else "off"
        elif value is False and "no" in allowed:
            value = "no"
    enum_type = _enum_of(annotation)
    if enum_type is not None and isinstance(value, enum_type):
        return value
    if value not in allowed:
        raise ValueError(f"training.{name}: {value!r} is not allowed; allowed values: {', '.join(map(str, allowed))}")
    return value


def _check_number(name: str, value: Any, kind: type, default: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        expected = "an integer" if kind is int else "a number"
        raise ValueError(f"training.{name}: expected {expected}, got {value!r}")
    rule, sentinel = range_of(name, default)
    if value == sentinel:
        return
    if not math.isfinite(value) or value not in rule:
        also = f" (or {sentinel})" if sentinel is not None else ""
        raise ValueError(f"training.{name} must be {rule.describe()}{also}, got {value!r}")


def _check_type(name: str, value: Any, annotation: Any) -> None:
    try:
        coerce(value, annotation, f"training.{name}")
    except ConfigError as err:
        raise ValueError(str(err)) from None


def check_report_to(value: Any) -> None:
    """Each integration is one transformers knows, and its package is importable: a
    missing package fails here, not as a RuntimeError when the Trainer is built."""
    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    names = [value] if isinstance(value, str) else list(value or [])
    if names in (["all"], ["none"], []):
        return
    available = set(get_available_reporting_integrations())
    for name in names:
        if name not in INTEGRATION_TO_CALLBACK:
            allowed = ", ".join(["all", "none", *sorted(INTEGRATION_TO_CALLBACK)])
            raise ValueError(f"training.report_to: {name!r} is not an integration; allowed values: {allowed}")
        if name not in available:
            package = INTEGRATION_PACKAGES.get(name, name)
            extra = f" (or pip install 'alignment[{name}]')" if name in OUR_EXTRAS else ""
            raise ValueError(
                f"training.report_to: {name!r} needs the {package} package, which is not installed: "
                f"pip install {package}{extra}"
            )


def checked_training_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` with every key checked for type, range and choice (see the module
    docstring); choice values are normalised (`save_strategy: no` read as false is
    "no"). Raises ValueError naming the key and what is allowed."""
    fields, hints = _fields(), _hints()
    checked = dict(values)
    for name, value in values.items():
        field, annotation = fields[name], hints[name]
        allowed = choices_of(name, field, annotation)
        if allowed is not None and value is not None:
            checked[name] = _choice(name, value, allowed, annotation)
            continue
        kind = numeric_type(annotation)
        if kind is not None and not (value is None and type(None) in _members(annotation)):
            _check_number(name, value, kind, field.default)
            continue
        _check_type(name, value, annotation)
    if "report_to" in checked:
        check_report_to(checked["report_to"])
    return checked


def _has_accelerator() -> bool:
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(xpu and xpu.is_available()) or torch.backends.mps.is_available()


@dataclass
class AlignmentTrainingArguments(TrainingArguments):
    """`transformers.TrainingArguments`, unchanged names, plus four of our own (every value is
    checked by `alignment.trainers.arguments`):

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

    forward: str = dataclasses.field(default="auto", metadata={"help": "auto | baseline | packed | shared_prompt"})
    logprob_chunk_size: int = dataclasses.field(
        default=1024, metadata={"help": "tokens per LM-head chunk (0: one chunk)"}
    )
    nonfinite_loss: str = dataclasses.field(
        default="stop", metadata={"help": "on a NaN/inf loss: stop | skip (the step)"}
    )
    memory_probe: str = dataclasses.field(
        default="auto", metadata={"help": "forward+backward of the longest batch before step 1: auto | on | off"}
    )
    # `latest` or true resumes from the newest complete checkpoint (trainers.checkpoints.resolve_resume).
    resume_from_checkpoint: str | bool | None = dataclasses.field(
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
