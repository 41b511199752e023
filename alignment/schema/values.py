"""Generic recipe validation: check values against dataclass type hints, and build
sections from mappings while rejecting unknown keys. Every error names the key."""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from typing import Any, Literal, Union

import yaml

SECTIONS = ("model", "lora", "quantization", "data", "reference", "loss", "online", "evaluation", "training")
# Sections a recipe may leave out (or remove with `--section=null`): each is off when absent.
OPTIONAL_SECTIONS = ("lora", "quantization", "online", "evaluation")


class ConfigError(ValueError):
    """A recipe or override is invalid. The message names the key and what is allowed."""


class DuplicateKeyError(yaml.YAMLError):
    """A key appears twice in one mapping: YAML would silently keep the last value."""


class RecipeLoader(yaml.SafeLoader):
    """The safe loader, reading `1e-5` as a number (YAML 1.1 wants `1.0e-5` and would
    otherwise hand a learning rate of `1e-5` to the Trainer as a string), and refusing
    a key given twice in one mapping (YAML keeps the last one without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` may override, by design
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, typing.Hashable) and key in first:
                raise DuplicateKeyError(
                    f"line {line}: key {key!r} appears twice in one mapping (first at line {first[key]}); keep one"
                )
            first[key] = line
        return super().construct_mapping(node, deep=deep)


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=RecipeLoader)  # a SafeLoader subclass: no Python objects


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: where, and what (PyYAML's own text spans several lines)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def coerce(value: Any, annotation: Any, key: str) -> Any:
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
            if isinstance(value, list) != (typing.get_origin(arg) is list or arg is list) and any(
                typing.get_origin(a) is list or a is list for a in args
            ):
                continue  # a list is checked as the list alternative only, so its errors name the item
            try:
                return coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        if not errors:
            raise ConfigError(f"{key}: {value!r} is not a {_type_name(annotation)}")
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} is not a {_type_name(annotation)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not allowed; allowed values: {', '.join(map(repr, args))}")
        return value
    if origin is list or annotation is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [coerce(item, args[0], f"{key}.{i}") for i, item in enumerate(value)] if args else value
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        scalar_key = getattr(annotation, "SCALAR_KEY", None)
        if scalar_key is not None and not isinstance(value, (dict, type(None))):
            value = {scalar_key: value}  # shorthand: `reference: model`, a source given as its path
        return build_section(annotation, value, key)
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
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        if not isinstance(value, annotation) and value not in [member.value for member in annotation]:
            allowed = ", ".join(str(member.value) for member in annotation)
            raise ConfigError(f"{key}: {value!r} is not allowed; allowed values: {allowed}")
        return value
    if isinstance(annotation, type) and annotation is not object and not isinstance(value, annotation):
        raise ConfigError(f"{key}: expected a {annotation.__name__}, got {value!r}")  # no YAML value is one
    return value


def build_section(cls: type, raw: Any, section: str):
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
    kwargs = {k: coerce(v, hints[k], f"{section}.{k}") for k, v in raw.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required key is missing
        raise ConfigError(f"{section}: {err}") from None
