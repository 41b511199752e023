"""The whole recipe, validated and built once by `alignment.config.load_config`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alignment.losses import PreferenceLoss
from alignment.schema import (
    ConfigError,
    DataConfig,
    EvaluationConfig,
    LoraConfig,
    LossSpec,
    ModelConfig,
    OnlineConfig,
    QuantizationConfig,
    ReferenceConfig,
)
from alignment.trainers.arguments import AlignmentTrainingArguments


@dataclass
class Config:
    """Every section, the built loss (its flags are read from it) and the training
    values checked against `TrainingArguments`' fields; `resolved` is what
    `alignment_config.yaml` records."""

    model: ModelConfig
    lora: LoraConfig | None
    quantization: QuantizationConfig | None
    data: DataConfig
    reference: ReferenceConfig
    loss: list[LossSpec]
    online: OnlineConfig | None
    training: dict[str, Any]
    resolved: dict[str, Any]
    evaluation: EvaluationConfig | None = None
    loss_fn: PreferenceLoss | None = None

    def training_arguments(self) -> AlignmentTrainingArguments:
        """The validated `AlignmentTrainingArguments` (built on demand: constructing
        TrainingArguments sets up the distributed state)."""
        try:
            return AlignmentTrainingArguments(**self.training)
        except ValueError as err:  # transformers' checks of combinations: one line, naming the section
            raise ConfigError(f"training: {err}") from None
