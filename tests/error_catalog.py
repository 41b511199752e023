"""The error catalog: for every error class a run can end with, cases that make the real
code raise it, with the fix. docs/troubleshooting.md is rendered from it (the message
shown is the one the code printed when the page was generated: `alignment train`'s line,
through `alignment.cli.failure_report`), and tests/test_error_catalog.py checks that each
case raises exactly its class and that no public error class is missing.

The config and data cases are the bad-input suite's own (tests/test_bad_inputs.py),
picked by their name there; the rest call the code that raises in a run (the memory,
disk, checkpoint, judge, loss and signal handlers) with the inputs a run would give."""

from __future__ import annotations

import contextlib
import errno
import inspect
import json
import os
import shutil
import types
from collections import namedtuple
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from tests.helpers import ROOT


@dataclass(frozen=True)
class ErrorCase:
    error: str  # the class's name, as `import`ed below
    title: str
    produce: Callable[[Path], None]  # raises the error, given an empty working directory
    fix: str


def _bad_inputs():
    from tests import test_bad_inputs

    return test_bad_inputs


@contextlib.contextmanager
def _in(directory: Path) -> Iterator[None]:
    """The recipes name their assets relative to the repository, as a user launching from it would."""
    cwd = os.getcwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(cwd)


def _config(overrides: list[str], recipe: str = "dpo") -> Callable[[Path], None]:
    def produce(tmp: Path) -> None:
        from alignment.config import load_config

        with _in(ROOT):
            load_config(f"recipes/tiny/{recipe}.yaml", [f"--training.output_dir={tmp}/out", *overrides])

    return produce


def _config_case(overrides_head: str) -> Callable[[Path], None]:
    """A case of test_bad_inputs.CONFIG_CASES, by its first override."""
    recipe, overrides, _ = next(c for c in _bad_inputs().CONFIG_CASES if c[1][0] == overrides_head)
    return _config(overrides, recipe)


def _recipe_file_case(name: str) -> Callable[[Path], None]:
    def produce(tmp: Path) -> None:
        from alignment.config import load_config

        content = next(c[1] for c in _bad_inputs().RECIPE_FILE_CASES if c[0] == name)
        (tmp / "recipe.yaml").write_bytes(content)
        load_config("recipe.yaml")

    return produce


def _data_case(name: str) -> Callable[[Path], None]:
    """A case of test_bad_inputs.DATA_CASES, by name, read from `data.jsonl`."""
    return _data(lambda: next(c[1] for c in _bad_inputs().DATA_CASES if c[0] == name))


def _data(make_rows: Callable[[], list[dict] | bytes], bad_rows: str = "error") -> Callable[[Path], None]:
    def produce(tmp: Path) -> None:
        from alignment.config import DataConfig, SourceConfig
        from alignment.data import build_datasets
        from tests.helpers import tiny_tokenizer

        rows = make_rows()
        path = Path("data.jsonl")
        if isinstance(rows, bytes):
            path.write_bytes(rows)
        else:
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        cfg = DataConfig(train=[SourceConfig(path=str(path))], max_length=32, max_prompt_length=None, bad_rows=bad_rows)
        build_datasets(cfg, tiny_tokenizer())

    return produce


def _soup(tmp: Path) -> None:
    from alignment.reference.soup import average_state_dicts

    a = {"model.embed_tokens.weight": torch.zeros(100, 64)}
    b = {"model.embed_tokens.weight": torch.zeros(101, 64)}
    average_state_dicts([a, b], [0.5, 0.5], ["outputs/sft-a", "outputs/sft-b"])


def _checkpoint(tmp: Path) -> None:
    from alignment.trainers.checkpoints import resolve_resume

    checkpoint = Path("outputs/run/checkpoint-200")
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text('{"global_step": 200}')  # no completion marker: cut short
    resolve_resume(str(checkpoint), "outputs/run")


def _judge(tmp: Path) -> None:
    from alignment.online.judges import CallableJudge

    CallableJudge("my_judges:helpfulness")


def _nonfinite(tmp: Path) -> None:
    from alignment.losses import SequenceLogps
    from alignment.trainers.faults import guard_nonfinite

    trainer = types.SimpleNamespace(
        accelerator=types.SimpleNamespace(num_processes=1),
        state=types.SimpleNamespace(global_step=41),
        args=types.SimpleNamespace(nonfinite_loss="stop"),
    )
    policy = torch.tensor([[-3.0, float("-inf")], [-2.0, -4.0]])
    logps = SequenceLogps(policy=policy, reference=torch.full((2, 2), -3.0), scores=torch.tensor([[1.0, 0.0]] * 2),
                          mask=torch.ones(2, 2), lengths=torch.ones(2, 2))  # fmt: skip
    guard_nonfinite(trainer, torch.nn.Linear(1, 1), torch.tensor(float("nan")), logps)


def _out_of_memory(tmp: Path) -> None:
    from alignment.config import load_config
    from alignment.trainers.memory import out_of_memory_reported

    with _in(ROOT):
        config = load_config("recipes/tiny/dpo.yaml", [f"--training.output_dir={tmp}/out"])
        args = config.training_arguments()
    with out_of_memory_reported(config, args, lambda: "at step 12"):
        raise torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 23.55 GiB"
        )


@contextlib.contextmanager
def _disk_with(free: int) -> Iterator[None]:
    """shutil.disk_usage reporting `free` bytes, so the page does not depend on this machine's disk."""
    usage, real = namedtuple("usage", "total used free"), shutil.disk_usage
    shutil.disk_usage = lambda path: usage(10 * free, 9 * free, free)
    try:
        yield
    finally:
        shutil.disk_usage = real


def _disk(tmp: Path) -> None:
    from alignment.trainers.output_dir import disk_full_reported

    partial = Path("outputs/run/checkpoint-60")
    partial.mkdir(parents=True)
    parts = {"weights": 988_000_000, "optimizer state": 1_976_000_000}
    args = types.SimpleNamespace(save_strategy="steps", save_total_limit=None, save_only_model=False, should_save=True)
    with _disk_with(1_500_000_000), disk_full_reported("checkpoint-60", str(partial), args, lambda: parts):
        raise OSError(errno.ENOSPC, "No space left on device")


def _preempted(tmp: Path) -> None:
    from alignment.trainers.faults import PREEMPTED_EXIT_CODE, Preempted

    raise Preempted.at_step("SIGTERM", 120, "outputs/run", PREEMPTED_EXIT_CODE)


def _loss_parameter(tmp: Path) -> None:
    from alignment.losses import get_loss

    get_loss("dpo", beta=-1.0)


def _unknown_loss(tmp: Path) -> None:
    from alignment.losses import get_loss

    get_loss("dpoo")


CASES: list[ErrorCase] = [
    # ConfigError: the recipe, before anything is loaded.
    ErrorCase(
        "ConfigError",
        "An unknown section",
        _config_case("--optimizer.lr=1"),
        "A recipe has the sections listed. Optimizer settings are `training:` keys "
        "(`learning_rate`, `optim`, `weight_decay`), as in `transformers.TrainingArguments`.",
    ),
    ErrorCase(
        "ConfigError",
        "A misspelt key",
        _config_case("--model.nme=x"),
        "Use one of the allowed keys the message lists; `docs/configuration.md` has every key of every section.",
    ),
    ErrorCase(
        "ConfigError",
        "A misspelt training argument",
        _config_case("--training.learning_rat=1"),
        "`training:` takes `transformers.TrainingArguments` names; the message lists the close ones.",
    ),
    ErrorCase(
        "ConfigError",
        "A value of the wrong type",
        _config_case("--data.max_length=abc"),
        "Give the type the message names (here an integer).",
    ),
    ErrorCase(
        "ConfigError",
        "An unknown loss",
        _config_case("--loss.name=dpoo"),
        "`alignment losses` lists every name; TRL's `loss_type` names (`sigmoid`, `robust`) work too.",
    ),
    ErrorCase(
        "ConfigError",
        "A loss parameter out of its range",
        _config_case("--loss.epsilon=0.7"),
        "Each loss checks its parameters against the paper's range; the Losses page lists them with defaults.",
    ),
    ErrorCase(
        "ConfigError",
        "A parameter the loss does not have",
        _config_case("--loss.gamma=1"),
        "Parameters belong to one loss (`gamma` is SimPO's). Check the loss's parameters on the Losses page.",
    ),
    ErrorCase(
        "ConfigError",
        "A loss that needs a reference, without one",
        _config_case("--reference.type=none"),
        "Use `reference: model` (a frozen copy), `adapter` (with LoRA), or `precompute`; "
        "or pick a reference-free loss (`simpo`, `cpo`, `orpo`).",
    ),
    ErrorCase(
        "ConfigError",
        "An online loss without an `online:` section",
        _config_case("--loss.name=nash_md"),
        "Online losses sample during training: add an `online:` section with a judge (see Online training).",
    ),
    ErrorCase(
        "ConfigError",
        "Quantization without LoRA",
        _config_case("--quantization.bits=4"),
        "4- and 8-bit weights train through adapters only: add a `lora:` section (QLoRA).",
    ),
    ErrorCase(
        "ConfigError",
        "A prompt limit longer than the whole sequence",
        _config_case("--data.max_prompt_length=40"),
        "`data.max_prompt_length` must leave room for the completion inside `data.max_length`.",
    ),
    ErrorCase(
        "ConfigError",
        "A data file that does not exist",
        _config_case("--data.train=[missing.jsonl]"),
        "Paths are relative to the directory you launch from; check the name, or give a Hub dataset name.",
    ),
    ErrorCase(
        "ConfigError",
        "A key written twice",
        _recipe_file_case("duplicate-loss-key"),
        "YAML would silently keep the second value; keep the one you mean.",
    ),
    ErrorCase(
        "ConfigError",
        "A Python tag in a recipe",
        _recipe_file_case("python-tag"),
        "Recipes are read with YAML's safe loader: no Python objects. Use a `module:function` string "
        "where a recipe takes a function (a judge, a score).",
    ),
    ErrorCase(
        "SoupError",
        "A soup of models with different shapes",
        _soup,
        "A soup (`reference: {type: soup, models: [...]}`) averages checkpoints of one architecture, "
        "fine-tuned from the same base.",
    ),
    # DataError and BadRowError: the data, before step 1.
    ErrorCase(
        "DataError",
        "Columns of no known layout",
        _data_case("renamed-columns"),
        "Map your columns onto a layout in the source: `{path: f.jsonl, columns: {prompt: question, chosen: good, "
        "rejected: bad}}` (see Data layouts).",
    ),
    ErrorCase("DataError", "An empty file", _data_case("empty-file"), "Check the file; the run reads every source."),
    ErrorCase(
        "BadRowError",
        "A missing column",
        _data_case("missing-column"),
        "Fix the row, or set `data.bad_rows: skip` to drop such rows (they are counted and reported by reason).",
    ),
    ErrorCase(
        "BadRowError",
        "A value of the wrong type",
        _data_case("wrong-type"),
        "Completions are strings or lists of chat messages.",
    ),
    ErrorCase(
        "BadRowError",
        "A row that is not JSON",
        _data_case("malformed-json"),
        "The line number is 1-based as in your editor; a truncated last line usually means an interrupted write.",
    ),
    ErrorCase(
        "BadRowError",
        "A list whose scores are all equal",
        _data_case("all-tied"),
        "A list must hold at least two different scores to define a preference.",
    ),
    ErrorCase(
        "BadRowError",
        "A prompt that fills `max_length`",
        _data_case("prompt-too-long"),
        "Raise `data.max_length`, or set `data.max_prompt_length` so long prompts are truncated from the left.",
    ),
    ErrorCase(
        "BadRowError",
        "The chosen and rejected completions are the same",
        _data_case("duplicate-completions"),
        "Such a pair teaches nothing: fix or drop the row.",
    ),
    ErrorCase(
        "NoUsableRows",
        "Every row was bad",
        _data(lambda: [{"prompt": "1+1=", "chosen": "2"}, {"prompt": "1+2=", "rejected": "4"}], bad_rows="skip"),
        "With `data.bad_rows: skip` every row was dropped: the counts by reason say what to fix first.",
    ),
    # Errors of a run in progress.
    ErrorCase(
        "CheckpointError",
        "Resuming from a checkpoint that was cut short",
        _checkpoint,
        "A checkpoint counts only once its `checkpoint_complete.json` is written. "
        "`--training.resume_from_checkpoint=latest` takes the newest complete one.",
    ),
    ErrorCase(
        "JudgeError",
        "A judge that cannot be imported",
        _judge,
        "`module:function` is imported from the working directory and `sys.path`: run from the directory "
        "that holds the module, or install it.",
    ),
    ErrorCase(
        "NonFiniteLossError",
        "The loss became NaN",
        _nonfinite,
        "Lower `training.learning_rate`, check the lists the message names, or set "
        "`training.nonfinite_loss: skip` to skip such steps (they are counted).",
    ),
    ErrorCase(
        "OutOfMemory",
        "Out of GPU memory",
        _out_of_memory,
        "Apply the changes the message lists, from the top; each names its current value.",
    ),
    ErrorCase(
        "DiskSpaceError",
        "The disk filled up while saving",
        _disk,
        "Free space, or apply the settings the message lists; the partial checkpoint is removed so "
        "`latest` never resumes from it.",
    ),
    ErrorCase(
        "Preempted",
        "Stopped by SIGTERM (a preemption) or Ctrl-C",
        _preempted,
        "Not a failure: the checkpoint is saved. Rerun the same command with "
        "`--training.resume_from_checkpoint=latest`; the exit status is the signal's (143, or 130 for Ctrl-C).",
    ),
    ErrorCase(
        "LossParameterError",
        "A bad loss parameter, from Python",
        _loss_parameter,
        "From a recipe this is a config error; from `get_loss` in Python it is raised as is.",
    ),
    ErrorCase(
        "UnknownLossError",
        "An unknown loss, from Python",
        _unknown_loss,
        "`alignment.losses.available_losses()` lists the names.",
    ),
]


def error_classes() -> dict[str, type[BaseException]]:
    """Every public error class of the library, by name."""
    from alignment.config import ConfigError
    from alignment.data import BadRowError, DataError
    from alignment.data.pipeline import NoUsableRows
    from alignment.losses import LossParameterError, UnknownLossError
    from alignment.online.judges import JudgeError
    from alignment.reference.soup import SoupError
    from alignment.trainers.checkpoints import CheckpointError
    from alignment.trainers.faults import NonFiniteLossError, Preempted
    from alignment.trainers.memory import OutOfMemory
    from alignment.trainers.output_dir import DiskSpaceError

    classes = [ConfigError, BadRowError, DataError, NoUsableRows, LossParameterError, UnknownLossError, JudgeError]
    classes += [SoupError, CheckpointError, NonFiniteLossError, Preempted, OutOfMemory, DiskSpaceError]
    return {c.__name__: c for c in classes}


def raised(case: ErrorCase, tmp: Path) -> BaseException:
    """The error `case` raises, run in `tmp` as the working directory."""
    try:
        with _in(tmp):
            case.produce(tmp)
    except Exception as err:  # noqa: BLE001 (the case's error, whatever it is, is the result)
        return err
    raise AssertionError(f"{case.title}: nothing was raised")


def shown(case: ErrorCase, err: BaseException, tmp: Path) -> str:
    """What the user sees: `alignment train`'s line, or the exception as Python shows it
    for the errors only the Python API raises; with this run's temporary paths removed."""
    from alignment.cli import failure_report

    report = failure_report(err)
    text = f"{type(err).__name__}: {err}" if report is None else report[0].lstrip("\n")
    return text.replace(f"{tmp}/", "").replace(str(tmp), ".")


def render_troubleshooting() -> str:
    import tempfile

    classes = error_classes()
    docs = {name: " ".join(inspect.getdoc(cls).split("\n\n")[0].split()) for name, cls in classes.items()}
    by_class: dict[str, list[ErrorCase]] = {}
    for case in CASES:
        by_class.setdefault(case.error, []).append(case)
    out = [
        "Each message below was printed by the code when this page was generated "
        "(`python scripts/generate_docs.py`, from `tests/error_catalog.py`, whose cases are the bad-input tests'). "
        "A bad recipe, row or file stops the run before step 1 with one line and exit status 2, and leaves no "
        "output directory; an error during training exits 1 after saving what it can.",
        "",
    ]
    for name, cases in by_class.items():
        out += [f"## `{name}`", "", docs[name], ""]
        for case in cases:
            with tempfile.TemporaryDirectory() as tmp:
                message = shown(case, raised(case, Path(tmp)), Path(tmp))
            out += [f"### {case.title}", "", "```text", message, "```", "", f"**Fix:** {case.fix}", ""]
    return "\n".join(out).rstrip() + "\n"
