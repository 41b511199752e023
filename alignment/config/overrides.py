"""Dotted command-line overrides (`--section.key=value`) applied onto a recipe dict."""

from __future__ import annotations

import logging
from typing import Any

import yaml

from alignment.losses import UnknownLossError, loss_class
from alignment.schema.values import OPTIONAL_SECTIONS, SECTIONS, ConfigError, read_yaml, yaml_problem

logger = logging.getLogger(__name__)


def parse_override(arg: str) -> tuple[list[str], Any]:
    """`--section.key=value` -> (["section", "key"], value); the value is parsed as YAML
    (safe loader), so numbers, booleans, null and lists keep their types. `--section=null`
    -> (["section"], None) removes an optional section."""
    if not arg.startswith("--") or "=" not in arg:
        raise ConfigError(f"override {arg!r} must look like --section.key=value")
    dotted, text = arg[2:].split("=", 1)
    parts = dotted.split(".")
    if len(parts) == 1 and parts[0] in SECTIONS:
        return parts, _removed_section(arg, parts[0], text)
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"override {arg!r} must name a section and a key, e.g. --loss.beta=0.2")
    try:
        value = read_yaml(text) if text != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {arg!r}: value is not valid YAML: {yaml_problem(err)}") from None
    return parts, value


def _removed_section(arg: str, section: str, text: str) -> None:
    """`--evaluation=null`: a whole section can only be removed, and only an optional one,
    so that a recipe's task-specific section can be dropped without editing the YAML."""
    try:
        value = read_yaml(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    if value is not None:
        raise ConfigError(
            f"override {arg!r}: a whole section can only be removed, with --{section}=null; "
            f"set its keys with --{section}.key=value"
        )
    if section not in OPTIONAL_SECTIONS:
        raise ConfigError(
            f"override {arg!r}: `{section}` is required and cannot be removed; "
            f"the sections that can are {', '.join(OPTIONAL_SECTIONS)}"
        )
    return None


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
    cli_keys: set[tuple[str, ...]] = set()
    renamed: list[list[str]] = []
    for arg in overrides:
        parts, value = parse_override(arg)
        if parts[0] not in SECTIONS:
            raise ConfigError(f"override {arg!r}: unknown section {parts[0]!r}; sections: {', '.join(SECTIONS)}")
        if len(parts) == 1:  # --section=null
            raw[parts[0]] = None
            continue
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


def split_args(argv: list[str]) -> tuple[str | None, list[str]]:
    """`--config PATH` (or `--config=PATH`) plus dotted overrides `--section.key=value`."""
    config, overrides, i = None, [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a recipe path")
            config, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif arg.startswith("--") and "." in arg.split("=", 1)[0]:
            overrides.append(arg)
        elif arg.startswith("--reference="):  # the recipe's shorthand `reference: adapter`
            overrides.append("--reference.type=" + arg.split("=", 1)[1])
        elif arg.startswith("--") and arg[2:].split("=", 1)[0] in SECTIONS:  # --evaluation=null removes it
            overrides.append(arg)
        else:
            raise ConfigError(
                f"unexpected argument {arg!r}; use --config RECIPE.yaml and --section.key=value overrides"
            )
        i += 1
    if config is None:
        raise ConfigError("--config RECIPE.yaml is required")
    return config, overrides
