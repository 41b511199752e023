"""TrainingArguments for preference training: transformers' own, with the defaults a
preference run needs."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import TrainingArguments


@dataclass
class AlignmentTrainingArguments(TrainingArguments):
    """`transformers.TrainingArguments`, unchanged names. Preference batches carry
    columns that are not model inputs, so `remove_unused_columns` is always off."""

    def __post_init__(self) -> None:
        self.remove_unused_columns = False
        super().__post_init__()
