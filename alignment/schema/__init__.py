"""The bottom layer: what a recipe may say, section by section, and the generic value
checks (`values`). Every other package may import it; it imports none of them.
Loading a recipe and checking the sections against each other is `alignment.config`."""

from alignment.schema.online import PAIR_PLACEHOLDERS, PAIR_TEMPLATE, EvaluationConfig, JudgeConfig, OnlineConfig
from alignment.schema.sections import (
    COLUMN_NAMES,
    LOCAL_DATA_SUFFIXES,
    DataConfig,
    LoraConfig,
    LossSpec,
    ModelConfig,
    QuantizationConfig,
    ReferenceConfig,
    ReferenceUpdateConfig,
    SourceConfig,
)
from alignment.schema.values import OPTIONAL_SECTIONS, SECTIONS, ConfigError, build_section, coerce, read_yaml

__all__ = [
    "COLUMN_NAMES",
    "LOCAL_DATA_SUFFIXES",
    "OPTIONAL_SECTIONS",
    "PAIR_PLACEHOLDERS",
    "PAIR_TEMPLATE",
    "SECTIONS",
    "ConfigError",
    "DataConfig",
    "EvaluationConfig",
    "JudgeConfig",
    "LoraConfig",
    "LossSpec",
    "ModelConfig",
    "OnlineConfig",
    "QuantizationConfig",
    "ReferenceConfig",
    "ReferenceUpdateConfig",
    "SourceConfig",
    "build_section",
    "coerce",
    "read_yaml",
]
