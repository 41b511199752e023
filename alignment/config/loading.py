"""Reading a recipe: YAML (safe loader) -> overrides -> sections -> cross-section checks
-> the built loss. Done once, before any model or dataset is touched; every error names
the key and what is allowed."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from alignment.config.combinations import (
    check_engine,
    check_evaluation,
    check_lists_per_batch,
    check_model_head,
    check_online,
    check_quantization,
    resolve_reference,
)
from alignment.config.overrides import apply_overrides, split_args
from alignment.config.recipe import Config
from alignment.losses import LossParameterError, UnknownLossError, build_loss
from alignment.schema.online import EvaluationConfig, OnlineConfig
from alignment.schema.sections import (
    DataConfig,
    LoraConfig,
    LossSpec,
    ModelConfig,
    QuantizationConfig,
    ReferenceConfig,
)
from alignment.schema.values import (
    SECTIONS,
    ConfigError,
    DuplicateKeyError,
    build_section,
    coerce,
    read_yaml,
    yaml_problem,
)
from alignment.trainers.arguments import AlignmentTrainingArguments, checked_training_values
from alignment.trainers.output_dir import writable_problem

CONFIG_FILENAME = "alignment_config.yaml"  # the resolved recipe, written into every run's output directory


def _loss_specs(raw: Any) -> list[LossSpec]:
    """`loss:` is one block `{name, weight?, **params}` or a list of such blocks."""
    if raw is None:
        raise ConfigError("loss: a loss block with a `name` is required")
    blocks = raw if isinstance(raw, list) else [raw]
    specs = []
    for i, block in enumerate(blocks):
        where = "loss" if not isinstance(raw, list) else f"loss.{i}"
        if not isinstance(block, dict) or "name" not in block:
            raise ConfigError(f"{where}: expected a mapping with a `name` key, got {block!r}")
        params = {k: v for k, v in block.items() if k not in ("name", "weight")}
        weight = coerce(block.get("weight", 1.0), float, f"{where}.weight")
        specs.append(LossSpec(name=block["name"], params=params, weight=weight))
    return specs


def _built_loss(specs: list[LossSpec], raw: Any):
    """The loss object, built once by the losses' own builder: each term is checked by
    the registry (names, parameters, ranges, weights), and errors name the block."""
    try:
        return build_loss(specs, where=lambda i: f"loss.{i}" if isinstance(raw, list) else "loss")
    except (UnknownLossError, LossParameterError) as err:
        raise ConfigError(str(err)) from None


def _validate_training(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"training: expected a mapping of TrainingArguments names, got {raw!r}")
    allowed = {f.name for f in dataclasses.fields(AlignmentTrainingArguments) if f.init}
    for key in raw:
        if key not in allowed:
            close = [a for a in sorted(allowed) if key.split("_")[0] in a][:8]
            hint = f"; similar keys: {', '.join(close)}" if close else ""
            raise ConfigError(
                f"training: unknown key {key!r}; `training` takes transformers.TrainingArguments names{hint}"
            )
    if "output_dir" not in raw:
        raise ConfigError("training.output_dir is required")
    try:
        checked = checked_training_values(raw)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    problem = writable_problem(str(checked["output_dir"]))
    if problem is not None:
        raise ConfigError(f"training.output_dir: {problem}")
    return checked


def load_config(path: str | os.PathLike[str] | None, overrides: list[str] | None = None) -> Config:
    """Read a recipe (YAML, safe loader), apply overrides, and validate everything."""
    raw: dict[str, Any] = {}
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"{path}: no such recipe file")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
        try:
            raw = read_yaml(text) or {}
        except DuplicateKeyError as err:
            raise ConfigError(f"{path}: {err}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {yaml_problem(err)}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a recipe is a mapping of sections ({', '.join(SECTIONS)})")
    if isinstance(raw.get("reference"), str):  # shorthand `reference: model`, before overrides edit it
        raw["reference"] = {"type": raw["reference"]}
    online = raw.get("online")
    if isinstance(online, dict) and isinstance(online.get("judge"), str):  # `judge: module:function`
        online["judge"] = {"function": online["judge"]}
    if isinstance(online, dict) and isinstance(online.get("judge"), list):  # a list holds reward functions
        online["judge"] = [
            {"type": "reward_function", "function": j} if isinstance(j, str) else j for j in online["judge"]
        ]
    if isinstance(raw.get("evaluation"), str):  # `evaluation: module:function`, a score function
        raw["evaluation"] = {"score": raw["evaluation"]}
    raw = apply_overrides(raw, list(overrides or []))
    unknown = [k for k in raw if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown section {unknown[0]!r}; sections: {', '.join(SECTIONS)}")

    loss = _loss_specs(raw.get("loss"))
    loss_fn = _built_loss(loss, raw.get("loss"))
    reference = build_section(ReferenceConfig, raw.get("reference"), "reference")
    model = build_section(ModelConfig, raw.get("model"), "model")
    lora = _optional_section(LoraConfig, raw, "lora")
    quantization = _optional_section(QuantizationConfig, raw, "quantization")
    data = build_section(DataConfig, raw.get("data"), "data")
    online = None if raw.get("online") is None else build_section(OnlineConfig, raw["online"], "online")
    evaluation = (
        None if raw.get("evaluation") is None else build_section(EvaluationConfig, raw["evaluation"], "evaluation")
    )
    training = _validate_training(raw.get("training") or {})
    check_model_head(loss_fn, online, evaluation, lora, quantization)
    resolve_reference(reference, loss_fn, lora, model)
    check_online(online, loss_fn, reference)
    check_engine(online, loss_fn, quantization, reference)
    # An online run whose reference moves or is another model reports its win rate against that reference.
    check_evaluation(evaluation, data, online, reference.is_initial_policy(model))
    check_quantization(quantization, lora, model)
    check_lists_per_batch(loss_fn, training)

    resolved = {
        "model": dataclasses.asdict(model),
        "lora": dataclasses.asdict(lora) if lora else None,
        "quantization": dataclasses.asdict(quantization) if quantization else None,
        "data": dataclasses.asdict(data),
        "reference": dataclasses.asdict(reference),
        "loss": [{"name": s.name, "weight": s.weight, **s.params} for s in loss],
        "online": dataclasses.asdict(online) if online else None,
        "evaluation": dataclasses.asdict(evaluation) if evaluation else None,
        "training": training,
    }
    return Config(
        model=model,
        lora=lora,
        quantization=quantization,
        data=data,
        reference=reference,
        loss=loss,
        online=online,
        training=training,
        resolved=resolved,
        evaluation=evaluation,
        loss_fn=loss_fn,
    )


def _optional_section(cls: type, raw: dict[str, Any], name: str):
    """A section that is off when absent, null, or `enabled: false`."""
    if raw.get(name) is None:
        return None
    section = build_section(cls, raw[name], name)
    return section if section.enabled else None


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.resolved, sort_keys=False)


def config_from_argv(argv: list[str]) -> Config | None:
    """The validated recipe of `--config PATH [--section.key=value ...]`, or None after
    printing the config error as one line."""
    try:
        path, overrides = split_args(argv)
        return load_config(path, overrides)
    except (ConfigError, FileNotFoundError) as err:
        print(f"alignment: config error: {err}", file=sys.stderr)
        return None
