"""The error catalog behind docs/troubleshooting.md: every case raises exactly its class
through the real code, the command line reports it as one `alignment: ...` line (then
the hint for a bad row, the settings to change for out-of-memory), and no public error class of the library is left out."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import alignment
from alignment.cli import failure_report
from tests.error_catalog import CASES, error_classes, raised, shown


@pytest.mark.parametrize("case", CASES, ids=[f"{c.error}-{c.title}" for c in CASES])
def test_each_case_raises_exactly_its_class_with_one_line(case, tmp_path):
    err = raised(case, tmp_path)
    assert type(err) is error_classes()[case.error], f"{case.title}: {type(err).__name__}: {err}"
    message = shown(case, err, tmp_path)
    report = failure_report(err)
    if case.error in ("LossParameterError", "UnknownLossError"):
        # Only Python callers see these: a recipe's loss errors are ConfigErrors (tests/test_bad_inputs.py).
        assert report is None and message.startswith(f"{case.error}: ")
        return
    assert report is not None and message.startswith("alignment: ")
    lines = message.splitlines()
    if case.error == "OutOfMemory":  # one line, then the settings that lower memory, one per line
        assert lines[1] == "To fit, change one or more of:" and all(line.startswith("  - ") for line in lines[2:])
    else:
        hint = ["(set data.bad_rows: skip to drop such rows and count them)"] if case.error == "BadRowError" else []
        assert len(lines) == 1 + len(hint) and lines[1:] == hint, message
    assert str(tmp_path) not in message


def _public_errors_defined_in(module) -> set[str]:
    return {
        name
        for name, obj in vars(module).items()
        if inspect.isclass(obj)
        and issubclass(obj, Exception)
        and obj.__module__ == module.__name__
        and not name.startswith("_")
    }


def test_every_public_error_class_has_a_case():
    found: set[str] = set()
    for info in pkgutil.walk_packages(alignment.__path__, "alignment."):
        if ".engines.vllm" in info.name:  # needs vLLM installed; its errors are ConfigErrors (tests/with_vllm)
            continue
        found |= _public_errors_defined_in(importlib.import_module(info.name))
    found -= {"DuplicateKeyError", "RowProblem"}  # internal: re-raised as ConfigError and BadRowError
    assert found == set(error_classes())
    assert {case.error for case in CASES} == set(error_classes())
