"""The Python API for notebooks and scripts: `alignment.train(recipe, **overrides)` runs
what `alignment train --config RECIPE --section.key=value ...` runs, and
`alignment.load_config(recipe, **overrides)` returns the validated recipe it would train.

Overrides are per section, as mappings: `loss={"name": "ipo", "tau": 0.5}` is
`--loss.name=ipo --loss.tau=0.5`, key by key, with the command line's semantics (a nested
mapping is a dotted path, a list or scalar replaces the value, `section=None` removes an
optional section, `reference="model"` is the `reference: model` shorthand) and the same
validation. Errors are raised, never turned into an exit status: a notebook survives a
`ConfigError` and can fix the override."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from alignment.config import Config, ConfigError
from alignment.config import load_config as load_recipe
from alignment.schema import SECTIONS, read_yaml

Recipe = str | os.PathLike[str] | Mapping[str, Any] | Config
"""A recipe: a YAML file's path, a mapping of sections (as the file would hold), or a
`Config` already loaded."""


def load_config(recipe: Recipe, **overrides: Mapping[str, Any] | str | None) -> Config:
    """The validated recipe `recipe` with `overrides`, exactly as the command line's
    `--config RECIPE --section.key=value ...` loads it (`alignment.config.load_config`).
    Raises `ConfigError` naming the key and what is allowed."""
    if isinstance(recipe, Config):
        if overrides:
            raise ConfigError("overrides apply to a recipe file or mapping; pass the recipe, not a loaded Config")
        return recipe
    arguments = as_overrides(overrides)
    if not isinstance(recipe, Mapping):
        return load_recipe(recipe, arguments)
    # A mapping is loaded as the same recipe written to a file: the shorthands and checks
    # that apply to a file's text apply to it (paths in a recipe are relative to the
    # working directory, not to the file, so where it is written does not matter).
    text = yaml.safe_dump(_plain(dict(recipe), "recipe"), sort_keys=False, allow_unicode=True)
    with tempfile.TemporaryDirectory(prefix="alignment-recipe-") as folder:
        path = Path(folder) / "recipe.yaml"
        path.write_text(text, encoding="utf-8")
        return load_recipe(path, arguments)


def train(recipe: Recipe, **overrides: Mapping[str, Any] | str | None) -> dict[str, float]:
    """Train `recipe` with `overrides` in this process, as `alignment train` does: the same
    run (`alignment.run.train`), output directory, files and metrics. Returns the final
    metrics (train and, with test data, eval: `eval_loss`, `eval_reward_accuracy`, ...).

    Raises the library's errors (`ConfigError`, `DataError`, `JudgeError`, `CheckpointError`,
    `NonFiniteLossError`, `OutOfMemory`, `DiskSpaceError`, `Preempted`) instead of exiting;
    a run that fails before step 1 leaves no output directory. The process group, if the
    run made one, is closed at the end whatever happens, as the command line does."""
    config = load_config(recipe, **overrides)
    # The trainer and its libraries, imported once the recipe is valid (start-up time).
    from alignment.run import train as run_training
    from alignment.trainers.nodes import close_process_group

    try:
        return run_training(config)
    finally:
        close_process_group()


def as_overrides(overrides: Mapping[str, Any]) -> list[str]:
    """Per-section mappings -> the command line's `--section.key=value` overrides, each value
    written as YAML so that it reads back as the same number, string, list or null."""
    arguments: list[str] = []
    for section, value in overrides.items():
        if section not in SECTIONS:
            raise ConfigError(f"override {section}=...: unknown section {section!r}; sections: {', '.join(SECTIONS)}")
        if value is None:
            arguments.append(f"--{section}=null")  # removes an optional section (a required one is refused)
        elif isinstance(value, Mapping):
            if not value:
                raise ConfigError(f"override {section}={{}}: give the keys to set, e.g. {section}={{'key': value}}")
            arguments += _dotted([section], value)
        elif section == "reference" and isinstance(value, str):  # the recipe's shorthand `reference: model`
            arguments.append(f"--reference.type={_yaml(value, 'reference')}")
        else:
            raise ConfigError(
                f"override {section}={value!r}: a section's keys are given as a mapping, "
                f"e.g. {section}={{'key': value}} (or {section}=None to remove an optional section)"
            )
    return arguments


def _dotted(path: list[str], mapping: Mapping[Any, Any]) -> list[str]:
    arguments = []
    for key, value in mapping.items():
        dotted = [*path, str(key)]
        if isinstance(value, Mapping) and value:
            arguments += _dotted(dotted, value)
        else:
            arguments.append(f"--{'.'.join(dotted)}={_yaml(value, '.'.join(dotted))}")
    return arguments


def _yaml(value: Any, key: str) -> str:
    """`value` as one YAML flow value that the recipe loader reads back unchanged."""
    plain = _plain(value, key)
    text = yaml.safe_dump(plain, default_flow_style=True, width=math.inf, allow_unicode=True)
    text = text.removesuffix("\n...\n").rstrip("\n")  # a scalar's document end marker
    if read_yaml(text) != plain:
        raise ConfigError(f"override {key}: {value!r} does not survive the recipe's YAML; give it as a string")
    return text


def _plain(value: Any, key: str) -> Any:
    """`value` as YAML's types: paths as strings, tuples as lists; anything else that YAML
    cannot hold (an object, a function) is an error naming the key."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{key}.{i}") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise ConfigError(
        f"{key}: {type(value).__name__} values cannot go in a recipe (numbers, strings, booleans, lists, mappings "
        "and paths can); a judge or reward function is named as 'module:function'"
    )
