"""Loading a recipe: read (safe YAML), apply the command line's overrides, build every
section (`alignment.schema`), check the sections against each other (`combinations`)
and the training values against `TrainingArguments` (`training`), build the loss, and
return one `Config`. The checks that need the loaded model or the launcher's backend
are `check_loaded`, run once before step 1. Nothing else checks a recipe.

The section classes are re-exported here for callers that build a recipe in Python."""

from alignment.config.loaded import check_loaded
from alignment.config.loading import CONFIG_FILENAME, config_from_argv, dump_config, load_config
from alignment.config.overrides import apply_overrides, parse_override, split_args
from alignment.config.recipe import Config
from alignment.schema import (
    COLUMN_NAMES,
    LOCAL_DATA_SUFFIXES,
    SECTIONS,
    ConfigError,
    DataConfig,
    EvaluationConfig,
    JudgeConfig,
    LoraConfig,
    LossSpec,
    ModelConfig,
    OnlineConfig,
    QuantizationConfig,
    ReferenceConfig,
    ReferenceUpdateConfig,
    SourceConfig,
)

__all__ = [
    "COLUMN_NAMES",
    "CONFIG_FILENAME",
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
    "check_loaded",
    "config_from_argv",
    "dump_config",
    "load_config",
    "parse_override",
    "split_args",
]
