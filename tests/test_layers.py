"""The architecture, enforced: the layer contract (`.importlinter`, run by import-linter),
no import cycle between any two modules, and project imports inside functions only where
they save start-up time, each saying so."""

from __future__ import annotations

import ast
import subprocess
import sys

import grimp
import networkx as nx

from tests.helpers import ROOT

PACKAGE = ROOT / "alignment"
START_UP = "start-up time"  # the comment a deferred project import carries


def test_layers_import_downward_only():
    """constants/schema -> losses, logprobs, data, models -> rewards -> online -> reference ->
    trainers -> config -> tools -> run -> cli; a broken contract names the import."""
    code = (
        "import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename='.importlinter', no_cache=True, no_logo=True))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "Contracts: 1 kept, 0 broken." in proc.stdout


def test_no_import_cycle():
    graph = grimp.build_graph("alignment", include_external_packages=False, cache_dir=None)
    edges = nx.DiGraph(
        (module, imported) for module in graph.modules for imported in graph.find_modules_directly_imported_by(module)
    )
    cycles = [sorted(component) for component in nx.strongly_connected_components(edges) if len(component) > 1]
    assert cycles == []


def test_project_imports_inside_functions_say_why():
    """An `alignment` import inside a function is allowed only to save start-up time, with
    a comment saying so on its line, or on the first line of the run of imports it is in
    or the line above that run."""
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("alignment"):
                    first = inner.lineno - 1
                    while first > 0 and lines[first - 1].strip().startswith(("from ", "import ")):
                        first -= 1
                    if not any(START_UP in line for line in lines[max(first - 1, 0) : inner.lineno]):
                        unexplained.append(f"{path.relative_to(ROOT)}:{inner.lineno}")
    assert unexplained == []
