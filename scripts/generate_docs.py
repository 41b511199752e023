"""The generated parts of the docs, written from the code and the recorded JSON so the
two cannot drift: `python scripts/generate_docs.py` rewrites them, `--check` exits 1
naming every stale part (tests/test_docs.py runs it).

A generated part sits between two markers in a Markdown file:

    <!-- generated: NAME (python scripts/generate_docs.py) -->
    ...
    <!-- end generated: NAME -->

and everything outside the markers is written by hand. A whole generated file (such
as BENCHMARKS.md) is one part named by its path."""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.error_catalog, run as a script
WHOLE_FILE = "*"  # a part that is the whole file


def _script(name: str):
    """A module from scripts/ (not a package), imported by path."""
    spec = importlib.util.spec_from_file_location(f"_scripts_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def parts() -> dict[tuple[str, str], Callable[[], str]]:
    """(file relative to the repository, part name or WHOLE_FILE) -> its renderer."""
    from alignment.tools import docs as docs_tools
    from tests.error_catalog import render_troubleshooting  # the bad-input tests' cases

    return {
        ("docs/losses.md", "loss-table"): docs_tools.render_loss_summary,
        ("docs/losses.md", "loss-reference"): docs_tools.render_loss_reference,
        ("docs/troubleshooting.md", "errors"): render_troubleshooting,
        **_script("benchmark").generated_parts(),
    }


def _markers(name: str) -> tuple[str, str]:
    return (f"<!-- generated: {name} (python scripts/generate_docs.py) -->", f"<!-- end generated: {name} -->")


def replace_part(text: str, name: str, content: str, where: str) -> str:
    """`text` with part `name`'s body replaced by `content`."""
    start, end = _markers(name)
    pattern = re.compile(re.escape(start) + r"\n.*?" + re.escape(end), re.S)
    if len(pattern.findall(text)) != 1:
        raise SystemExit(f"{where}: expected exactly one generated part {name!r} ({start} ... {end})")
    body = content.rstrip("\n") + "\n"
    return pattern.sub(lambda _: f"{start}\n{body}{end}", text)


def render_file(path: str, names: dict[str, Callable[[], str]]) -> str:
    if WHOLE_FILE in names:
        return names[WHOLE_FILE]().rstrip("\n") + "\n"
    text = (ROOT / path).read_text(encoding="utf-8")
    for name, render in names.items():
        text = replace_part(text, name, render(), path)
    return text


def stale(write: bool) -> list[str]:
    """The files whose generated parts differ from their renderers' output (rewritten when `write`)."""
    by_file: dict[str, dict[str, Callable[[], str]]] = {}
    for (path, name), render in parts().items():
        by_file.setdefault(path, {})[name] = render
    changed = []
    for path, names in by_file.items():
        target = ROOT / path
        current = target.read_text(encoding="utf-8") if target.exists() else None
        new = render_file(path, names)
        if new != current:
            changed.append(path)
            if write:
                target.write_text(new, encoding="utf-8")
    return changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a generated part is stale")
    args = parser.parse_args()
    changed = stale(write=not args.check)
    for path in changed:
        print(f"{path}: {'stale (run python scripts/generate_docs.py)' if args.check else 'rewritten'}")
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    sys.exit(main())
