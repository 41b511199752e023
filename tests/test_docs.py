"""The documentation cannot drift from the code:

- the generated parts (the loss pages, the error catalog, the benchmark and tiny-recipe
  tables) equal what `scripts/generate_docs.py` renders now;
- every YAML snippet that is a recipe (or a fragment of one) passes `load_config`, and
  every other YAML snippet is valid YAML;
- every Python snippet runs (slow: the pages' blocks in order, in one namespace);
- every `--config recipes/...` of a shell snippet exists;
- the site builds with `mkdocs build --strict` (no broken link, no missing name).
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from alignment.config import SECTIONS, ConfigError, load_config
from tests.helpers import ROOT

PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
# The section of a fragment that, when given, replaces the base recipe's section instead of merging into it:
# a model named another way, another loss, another kind of reference.
IDENTITY = {"model": ("name_or_path", "config"), "loss": ("name",), "reference": ("type",)}


def snippets(page: Path, lang: str) -> list[tuple[int, str]]:
    """(line number, code) of the page's fenced blocks in `lang`."""
    text = page.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, m.start()) + 1, textwrap.dedent(m.group("body")))
        for m in FENCE.finditer(text)
        if m.group("lang") == lang
    ]


def _where(page: Path, line: int) -> str:
    return f"{page.relative_to(ROOT)}:{line}"


def _merged(base: dict, fragment: dict) -> dict:
    out = dict(base)
    for section, value in fragment.items():
        old = out.get(section)
        if isinstance(old, str) and isinstance(value, dict):  # `reference: model` shorthand in the base
            old = {"type": old}
        keys = IDENTITY.get(section, ())
        if isinstance(value, dict) and isinstance(old, dict) and not any(k in value for k in keys):
            out[section] = {**old, **value}
        else:
            out[section] = value
    return out


YAML_SNIPPETS = [(p, line, code) for p in PAGES for line, code in snippets(p, "yaml")]


@pytest.mark.parametrize(("page", "line", "code"), YAML_SNIPPETS, ids=[_where(p, line) for p, line, _ in YAML_SNIPPETS])
def test_yaml_snippet_is_a_valid_recipe_or_valid_yaml(page, line, code, tmp_path, monkeypatch):
    data = yaml.safe_load(code)
    if not (isinstance(data, dict) and data and set(data) <= set(SECTIONS)):
        assert code.lstrip().startswith("#"), (
            f"{_where(page, line)}: a YAML block that is not a recipe must start with a comment saying what it is"
        )
        return
    base = yaml.safe_load((ROOT / "recipes" / "tiny" / "dpo.yaml").read_text())
    recipe = _merged(base, data)
    recipe.setdefault("training", {})
    recipe["training"] = {**recipe["training"], "output_dir": str(tmp_path / "out")}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    # Run as a user would, from a directory that holds the recipes (linked here) and the user's own data
    # files the snippet names (made here, empty: load_config checks that local files exist, not what they hold).
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    for source in _data_sources(data):
        if not glob.has_magic(source) and not os.path.isabs(source) and not (ROOT / source).exists():
            if "." in Path(source).name:  # a file's name, not a Hub dataset's
                (tmp_path / source).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / source).touch()
    monkeypatch.chdir(tmp_path)
    load_config(path)


def _data_sources(recipe: dict) -> list[str]:
    data = recipe.get("data") or {}
    sources = [s for split in ("train", "test") for s in (data.get(split) or [])]
    return [s if isinstance(s, str) else s.get("path", "") for s in sources]


def test_yaml_fragments_merge_as_the_docs_say():
    base = {"model": {"config": "c"}, "reference": "model", "training": {"output_dir": "o", "seed": 0}}
    merged = _merged(
        base, {"model": {"name_or_path": "m"}, "reference": {"update": {"every": 8}}, "training": {"seed": 1}}
    )
    assert merged == {
        "model": {"name_or_path": "m"},
        "reference": {"type": "model", "update": {"every": 8}},
        "training": {"output_dir": "o", "seed": 1},
    }


SHELL_CONFIG = re.compile(r"--config(?:_file)?[ =](?P<path>recipes/\S+)")


def test_every_recipe_a_shell_snippet_names_exists():
    missing = [
        f"{_where(page, line)}: {m.group('path')}"
        for page in PAGES
        for lang in ("bash", "sh", "console", "shell")
        for line, code in snippets(page, lang)
        for m in SHELL_CONFIG.finditer(code)
        if not (ROOT / m.group("path").rstrip("`;)\"'")).exists()
    ]
    assert not missing, missing


PYTHON_PAGES = [p for p in PAGES if snippets(p, "python")]


RUN_BLOCKS = """
import json, sys, traceback
namespace = {"__name__": "__main__"}
for where, code in json.load(sys.stdin):
    try:
        exec(compile(code, where, "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        print(f"snippet failed: {where}", file=sys.stderr)
        sys.exit(1)
"""


@pytest.mark.slow
@pytest.mark.parametrize("page", PYTHON_PAGES, ids=[str(p.relative_to(ROOT)) for p in PYTHON_PAGES])
def test_python_snippets_run(page):
    """The page's Python blocks, top to bottom in one namespace, from the repository root
    (as a notebook beside the recipes would run them), in a process of their own: a page
    may register a loss or import a user's module."""
    blocks = [(_where(page, line), code) for line, code in snippets(page, "python")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", RUN_BLOCKS], input=json.dumps(blocks), cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


def _generate_docs():
    spec = importlib.util.spec_from_file_location("generate_docs", ROOT / "scripts" / "generate_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_parts_are_current():
    stale = _generate_docs().stale(write=False)
    assert not stale, f"stale generated docs: {stale}; run python scripts/generate_docs.py"


def test_the_site_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "site" / "losses" / "index.html").is_file()


def _key_tables(text: str) -> dict[str, list[list[str]]]:
    """docs/configuration.md's key tables by section: under a `### `section`` heading
    (`| key | ...`), or headed `| `section` key | ...`; each row's cells."""
    tables: dict[str, list[list[str]]] = {}
    section, current = None, None
    for line in text.splitlines():
        heading = re.match(r"^#{2,4} `(\w+)`", line)
        if heading:
            section = heading.group(1)
        header = re.match(r"^\| (?:`(\w+)` )?key \|", line)
        if header:
            current = tables.setdefault(header.group(1) or section, [])
            continue
        if line.startswith("|") and not line.startswith("|---") and current is not None:
            current.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif not line.startswith("|"):
            current = None
    return tables


def test_the_configuration_page_lists_every_key_with_its_default():
    """Each section's table names every key of its dataclass, and nothing else, with the
    dataclass's default where a row has one key (`required` where there is none)."""
    import dataclasses

    from alignment.config import (
        DataConfig,
        EvaluationConfig,
        LoraConfig,
        ModelConfig,
        OnlineConfig,
        QuantizationConfig,
        ReferenceConfig,
    )

    tables = _key_tables((ROOT / "docs" / "configuration.md").read_text(encoding="utf-8"))
    sections = {
        "model": ModelConfig,
        "data": DataConfig,
        "reference": ReferenceConfig,
        "lora": LoraConfig,
        "quantization": QuantizationConfig,
        "online": OnlineConfig,
        "evaluation": EvaluationConfig,
    }
    for section, cls in sections.items():
        rows = tables.get(section)
        assert rows, f"docs/configuration.md has no key table for `{section}`"
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        documented = {key for row in rows for key in re.findall(r"`(\w+)`", row[0])}
        assert documented == set(fields), (
            f"{section}: missing {set(fields) - documented}, extra {documented - set(fields)}"
        )
        for row in rows:
            keys = re.findall(r"`(\w+)`", row[0])
            default = next((cell for cell in row[1:] if cell.startswith("`") or cell == "required"), None)
            if len(keys) != 1 or default is None or "," in default:
                continue
            field = fields[keys[0]]
            if default == "required":  # no default, or one the section refuses (an empty `data.train`)
                with pytest.raises((TypeError, ConfigError)):
                    cls()
                continue
            expected = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            value = yaml.safe_load(default.strip("`"))
            expected = getattr(expected, "value", expected)  # an enum's value, as a recipe writes it
            assert value == expected, f"{section}.{keys[0]}: documented default {default}, the code's {expected!r}"


def test_the_architecture_page_lists_the_layers_of_the_import_contract():
    """docs/architecture.md's layer block is .importlinter's contract, top to bottom."""
    contract = (ROOT / ".importlinter").read_text().split("layers =", 1)[1]
    layers = [line.strip() for line in contract.splitlines() if line.strip().startswith("alignment")]
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8").split("## Layers", 1)[1]
    block = next(m.group("body") for m in FENCE.finditer(page) if m.group("lang") == "text")
    documented = [m.group(1) for m in re.finditer(r"^(alignment\.\w+(?: \| alignment\.\w+)*)", block, re.M)]
    assert documented == layers
