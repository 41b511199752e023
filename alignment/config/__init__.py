"""Recipe configuration in one package: the sections (`sections`, `online`), the
generic schema checks (`schema`), command-line overrides (`overrides`), the checks
across sections (`combinations`) and the loading that runs them all once (`loading`)."""

from alignment.config.loading import dump_config, load_config
from alignment.config.online import EvaluationConfig, JudgeConfig, OnlineConfig
from alignment.config.overrides import apply_overrides, parse_override
from alignment.config.schema import SECTIONS, ConfigError
from alignment.config.sections import (
    COLUMN_NAMES,
    LOCAL_DATA_SUFFIXES,
    Config,
    DataConfig,
    LoraConfig,
    LossSpec,
    ModelConfig,
    QuantizationConfig,
    ReferenceConfig,
    ReferenceUpdateConfig,
    SourceConfig,
)

__all__ = [
    "COLUMN_NAMES",
    "LOCAL_DATA_SUFFIXES",
    "SECTIONS",
    "Config",
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
    "apply_overrides",
    "dump_config",
    "load_config",
    "parse_override",
]
