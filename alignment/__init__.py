"""Preference alignment for language models.

The Python API, for notebooks and scripts (docs/python-api.md):

- recipe-driven: `alignment.train(recipe, **overrides)` runs what `alignment train` runs
  and returns its metrics; `alignment.load_config(recipe, **overrides)` the validated recipe;
- from objects, as TRL's trainers: `PreferenceTrainer` (offline) and `OnlineTrainer`, with
  `AlignmentTrainingArguments`, a loss from `get_loss(name, **params)` and, online, an
  `OnlineConfig`.

Each name is imported on first use (module `__getattr__`): `import alignment` and the
`alignment` command's start-up load neither transformers' Trainer nor torch."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> the module that defines it, imported on first access (start-up time).
_EXPORTS = {
    "train": "alignment.api",
    "load_config": "alignment.api",
    "Config": "alignment.config",
    "ConfigError": "alignment.schema",
    "DataConfig": "alignment.schema",
    "OnlineConfig": "alignment.schema",
    "JudgeConfig": "alignment.schema",
    "get_loss": "alignment.losses",
    "available_losses": "alignment.losses",
    "AlignmentTrainingArguments": "alignment.trainers.arguments",
    "PreferenceTrainer": "alignment.trainers.preference",
    "OnlineTrainer": "alignment.trainers.online",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'alignment' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
