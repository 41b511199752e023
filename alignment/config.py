"""Recipe configuration: typed sections, YAML loading, dotted command-line overrides.

A recipe is one YAML file with the sections `model`, `data`, `reference`, `loss` and
`training` (TrainingArguments names, unchanged). Everything is validated here, before
any model or dataset is touched, and every error names the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

logger = logging.getLogger(__name__)

LOCAL_DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")


class ConfigError(ValueError):
    """A recipe or override is invalid. The message names the key and what is allowed."""


@dataclass
class ModelConfig:
    """Which policy to train. Give `name_or_path` (a Hub name or local directory) or
    `config` (a config.json or directory holding one: the model is built from it with
    random weights seeded by `init_seed`)."""

    name_or_path: str | None = None
    config: str | None = None
    init_seed: int = 0
    tokenizer: str | None = None
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if (self.name_or_path is None) == (self.config is None):
            raise ConfigError("model: give exactly one of model.name_or_path or model.config")
        if self.config is not None and self.tokenizer is None:
            raise ConfigError("model.tokenizer is required when the model is built from model.config")
        for key in ("config", "tokenizer"):
            _check_local_path(f"model.{key}", getattr(self, key))
        _check_local_path("model.name_or_path", self.name_or_path)


@dataclass
class SourceConfig:
    """One dataset in a mixture: a local JSON/JSONL/Parquet/CSV file or a Hub dataset."""

    path: str
    split: str = "train"
    name: str | None = None
    revision: str | None = None
    fraction: float = 1.0
    layout: Literal["auto", "pairwise", "ranked", "ultrafeedback"] = "auto"

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"data source {self.path!r}: fraction must be in (0, 1], got {self.fraction}")
        if self.path.lower().endswith(LOCAL_DATA_SUFFIXES) and not os.path.isfile(self.path):
            raise ConfigError(f"data source {self.path!r}: file not found")


@dataclass
class DataConfig:
    """Where the preference data comes from and how it is tokenized.

    `train` and `test` are lists of sources mixed by fraction; with no `test`,
    `test_size` (a fraction) is split off the training mixture."""

    train: list[SourceConfig] = field(default_factory=list)
    test: list[SourceConfig] = field(default_factory=list)
    test_size: float = 0.0
    bad_rows: Literal["error", "skip"] = "error"
    max_length: int | None = 1024
    max_prompt_length: int | None = 512
    chat_template: str | None = None
    num_proc: int | None = None
    seed: int = 42

    def __post_init__(self) -> None:
        if not self.train:
            raise ConfigError("data.train: at least one source is required")
        if not 0.0 <= self.test_size < 1.0:
            raise ConfigError(f"data.test_size must be in [0, 1), got {self.test_size}")
        for key in ("max_length", "max_prompt_length"):
            value = getattr(self, key)
            if value is not None and value < 2:
                raise ConfigError(f"data.{key} must be >= 2 or null, got {value}")
        if self.max_length is not None and self.max_prompt_length is not None:
            if self.max_prompt_length >= self.max_length:
                raise ConfigError(
                    f"data.max_prompt_length ({self.max_prompt_length}) must be smaller than "
                    f"data.max_length ({self.max_length}) to leave room for the completion"
                )


@dataclass
class ReferenceConfig:
    """The reference policy. `auto`: `none` for reference-free losses, else `model`.
    `model`: a separate frozen copy, of the policy's checkpoint or of `name_or_path`.
    `none`: no reference (only for reference-free losses)."""

    type: Literal["auto", "model", "none"] = "auto"
    name_or_path: str | None = None
    init_seed: int | None = None

    def __post_init__(self) -> None:
        _check_local_path("reference.name_or_path", self.name_or_path)


@dataclass
class LossSpec:
    """One term of the loss: a registered loss name, its parameters and a weight."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    weight: float = 1.0


@dataclass
class Config:
    model: ModelConfig
    data: DataConfig
    reference: ReferenceConfig
    loss: list[LossSpec]
    training: dict[str, Any]
    resolved: dict[str, Any]

    def training_arguments(self):
        """The validated `AlignmentTrainingArguments` (built on demand: constructing
        TrainingArguments sets up the distributed state)."""
        from alignment.trainers.arguments import AlignmentTrainingArguments

        return AlignmentTrainingArguments(**self.training)


SECTIONS = ("model", "data", "reference", "loss", "training")


def _check_local_path(key: str, value: str | None) -> None:
    """A value that is clearly a local path must exist, so a typo fails now rather than
    after a download attempt. Hub ids are `name` or `org/name`: anything starting with
    '.', '/' or '~', or with two or more slashes, is a path."""
    if not value:
        return
    is_path = value.startswith((".", "/", "~")) or value.count("/") >= 2
    if is_path and not os.path.exists(os.path.expanduser(value)):
        raise ConfigError(f"{key}: path {value!r} does not exist")


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check `value` against a type annotation; return it (ints widen to float)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} is not a {_type_name(annotation)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not allowed; allowed values: {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(item, args[0], f"{key}.{i}") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, str) and annotation is SourceConfig:
            value = {"path": value}
        return _build(annotation, value, key)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _build(cls: type, raw: Any, section: str):
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{section}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        raise ConfigError(f"{section}: unknown key {unknown[0]!r}; allowed keys: {', '.join(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in raw.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required key is missing
        raise ConfigError(f"{section}: {err}") from None


def _loss_specs(raw: Any) -> list[LossSpec]:
    """`loss:` is one block `{name, weight?, **params}` or a list of such blocks."""
    from alignment.losses import LossParameterError, UnknownLossError, get_loss

    if raw is None:
        raise ConfigError("loss: a loss block with a `name` is required")
    blocks = raw if isinstance(raw, list) else [raw]
    specs = []
    for i, block in enumerate(blocks):
        where = "loss" if not isinstance(raw, list) else f"loss.{i}"
        if not isinstance(block, dict) or "name" not in block:
            raise ConfigError(f"{where}: expected a mapping with a `name` key, got {block!r}")
        params = {k: v for k, v in block.items() if k not in ("name", "weight")}
        weight = _coerce(block.get("weight", 1.0), float, f"{where}.weight")
        try:
            get_loss(block["name"], **params)
        except (UnknownLossError, LossParameterError, TypeError) as err:
            raise ConfigError(f"{where}: {err}") from None
        specs.append(LossSpec(name=block["name"], params=params, weight=weight))
    return specs


def _validate_training(raw: Any) -> dict[str, Any]:
    from alignment.trainers.arguments import AlignmentTrainingArguments

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
    return dict(raw)


def parse_override(arg: str) -> tuple[list[str], Any]:
    """`--section.key=value` -> (["section", "key"], value); the value is parsed as YAML
    (safe loader), so numbers, booleans, null and lists keep their types."""
    if not arg.startswith("--") or "=" not in arg:
        raise ConfigError(f"override {arg!r} must look like --section.key=value")
    dotted, text = arg[2:].split("=", 1)
    parts = dotted.split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"override {arg!r} must name a section and a key, e.g. --loss.beta=0.2")
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {arg!r}: value is not valid YAML: {err}") from None
    return parts, value


def _set_dotted(tree: dict[str, Any], parts: list[str], value: Any, arg: str) -> None:
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {arg!r}: {'.'.join(parts[: i + 1])} is not an index of that list")
            node = node[int(part)]
            continue
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"override {arg!r}: {last!r} is not an index of that list")
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"override {arg!r}: {'.'.join(parts[:-1])} is not a section")


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--a.b=value` overrides onto a recipe dict.

    When an override changes `loss.name`, the recipe's parameters for the old loss that
    the new one does not take are dropped, each with a warning: swapping the loss is
    one edit, not several. Parameters given on the command line are always checked."""
    from alignment.losses import UnknownLossError, loss_class

    cli_keys: set[tuple[str, ...]] = set()
    renamed: list[list[str]] = []
    for arg in overrides:
        parts, value = parse_override(arg)
        if parts[0] not in SECTIONS:
            raise ConfigError(f"override {arg!r}: unknown section {parts[0]!r}; sections: {', '.join(SECTIONS)}")
        _set_dotted(raw, parts, value, arg)
        cli_keys.add(tuple(parts))
        if parts[0] == "loss" and parts[-1] == "name":
            renamed.append(parts[:-1])
    for prefix in renamed:
        block: Any = raw
        for part in prefix:
            block = block[int(part)] if isinstance(block, list) else block[part]
        try:
            allowed = set(loss_class(block["name"]).parameters())
        except UnknownLossError:
            continue  # reported with the list of losses during validation
        for key in [k for k in block if k not in allowed | {"name", "weight"}]:
            if tuple(prefix + [key]) not in cli_keys:
                logger.warning(
                    "%s.%s=%r from the recipe does not apply to loss %r; dropped",
                    ".".join(prefix),
                    key,
                    block[key],
                    block["name"],
                )
                del block[key]
    return raw


def load_config(path: str | os.PathLike[str] | None, overrides: list[str] | None = None) -> Config:
    """Read a recipe (YAML, safe loader), apply overrides, and validate everything."""
    raw: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a recipe is a mapping of sections ({', '.join(SECTIONS)})")
    if isinstance(raw.get("reference"), str):  # shorthand `reference: model`
        raw["reference"] = {"type": raw["reference"]}
    raw = apply_overrides(raw, list(overrides or []))
    unknown = [k for k in raw if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown section {unknown[0]!r}; sections: {', '.join(SECTIONS)}")

    loss = _loss_specs(raw.get("loss"))
    reference = _build(ReferenceConfig, raw.get("reference"), "reference")
    model = _build(ModelConfig, raw.get("model"), "model")
    data = _build(DataConfig, raw.get("data"), "data")
    training = _validate_training(raw.get("training") or {})

    from alignment.losses import loss_class

    needs_reference = any(loss_class(spec.name).needs_reference for spec in loss)
    if reference.type == "auto":
        reference.type = "model" if needs_reference else "none"
    if reference.type == "none" and needs_reference:
        names = [s.name for s in loss if loss_class(s.name).needs_reference]
        raise ConfigError(f"reference: 'none' but loss {', '.join(names)} needs a reference; use reference: model")

    resolved = {
        "model": dataclasses.asdict(model),
        "data": dataclasses.asdict(data),
        "reference": dataclasses.asdict(reference),
        "loss": [{"name": s.name, "weight": s.weight, **s.params} for s in loss],
        "training": training,
    }
    return Config(model=model, data=data, reference=reference, loss=loss, training=training, resolved=resolved)


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.resolved, sort_keys=False)
