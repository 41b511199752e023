"""The `alignment` command: `alignment train --config RECIPE.yaml [--section.key=value ...]`,
`alignment validate --config RECIPE.yaml`, `alignment plot OUTPUT_DIR`, `alignment losses`,
`alignment merge ADAPTER_DIR OUTPUT_DIR` and `alignment vllm-serve --model MODEL` (a vLLM
generation server for online training)."""

from __future__ import annotations

import argparse
import inspect
import sys

# Each command imports what it runs inside its function, to save start-up time:
# `alignment losses`, `plot` and `--help` never load transformers' Trainer.


def failures() -> list[tuple[type[BaseException], str, int | None]]:
    """(error, how its one-line message starts, exit status) for each error a run may end
    with. Errors raised once training has started begin with a new line: a progress bar
    may be mid-line. docs/troubleshooting.md is rendered with these prefixes."""
    from alignment.config import ConfigError  # start-up time: imported once the recipe is valid
    from alignment.data import DataError
    from alignment.online.judges import JudgeError
    from alignment.trainers.checkpoints import CheckpointError
    from alignment.trainers.faults import NonFiniteLossError, Preempted
    from alignment.trainers.memory import OutOfMemory
    from alignment.trainers.output_dir import DiskSpaceError

    return [
        (DataError, "alignment: data error: ", 2),  # BadRowError included
        (ConfigError, "alignment: config error: ", 2),  # a conflict with the launcher's backend; a soup's members
        (CheckpointError, "alignment: checkpoint error: ", 2),
        (JudgeError, "\nalignment: judge error: ", 2),
        (NonFiniteLossError, "\nalignment: training stopped: ", 1),
        (OutOfMemory, "\nalignment: ", 1),
        (DiskSpaceError, "\nalignment: not enough disk space: ", 1),
        (Preempted, "\nalignment: ", None),  # the signal's own status: 143 for SIGTERM, 130 for Ctrl-C
    ]


def failure_report(err: BaseException) -> tuple[str, int] | None:
    """What `alignment train` prints for `err` and its exit status; None for an error
    that is not one of `failures()` (a bug: its traceback is shown)."""
    from alignment.data import BadRowError  # start-up time (above)

    for error, prefix, status in failures():
        if isinstance(err, error):
            hint = (
                "\n(set data.bad_rows: skip to drop such rows and count them)" if isinstance(err, BadRowError) else ""
            )
            return f"{prefix}{err}{hint}", err.exit_code if status is None else status
    return None


def train_main(argv: list[str]) -> int:
    from alignment.config import config_from_argv  # start-up time (above)

    config = config_from_argv(argv)
    if config is None:
        return 2
    from alignment.run import train  # start-up time: the run, imported once the recipe is valid
    from alignment.trainers.faults import INTERRUPTED_EXIT_CODE
    from alignment.trainers.nodes import close_process_group

    try:
        train(config)
    except Exception as err:
        report = failure_report(err)
        if report is None:  # a bug, not bad input: the traceback is the report
            raise
        message, status = report
        print(message, file=sys.stderr)
        return status
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        print(
            "\nalignment: stopped at once by Ctrl-C, without saving; complete checkpoints in "
            f"{config.training['output_dir']}, if any, resume with --training.resume_from_checkpoint=latest",
            file=sys.stderr,
        )
        return INTERRUPTED_EXIT_CODE
    finally:
        # After success, an error, SIGTERM or Ctrl-C alike: a process that exits with its
        # process group open can abort in gloo's or NCCL's threads, and its launcher exits 1.
        close_process_group()
    return 0


def losses_main(argv: list[str]) -> int:
    from alignment.losses import available_losses  # start-up time (above)

    for name, cls in available_losses().items():
        params = ", ".join(f"{k}={v!r}" for k, v in cls.parameters().items())
        # With its defaults: some losses need a reference only for some parameters (a KL weight > 0).
        reference = "needs reference" if cls().needs_reference else "reference-free (with these defaults)"
        summary = (inspect.getdoc(cls) or "").splitlines()[0]
        print(
            f"{name}: {summary}\n    paper: {cls.paper}\n    formula: {cls.formula}\n    parameters: {params}  ({reference})"
            f"\n    TRL: {cls.trl or 'none'}"
        )
    return 0


def merge_main(argv: list[str]) -> int:
    from alignment.tools.merge import merge_main as run_merge  # start-up time (above)

    return run_merge(argv)


def validate_main(argv: list[str]) -> int:
    from alignment.tools.validate import validate_main as run_validate  # start-up time (above)

    return run_validate(argv)


def vllm_serve_main(argv: list[str]) -> int:
    from alignment.online.engines.vllm_server import serve_main  # start-up time (above)

    return serve_main(argv)


def plot_main(argv: list[str]) -> int:
    from alignment.tools.plot import plot_main as run_plot  # start-up time (above)

    return run_plot(argv)


COMMANDS = {
    "train": train_main,
    "losses": losses_main,
    "merge": merge_main,
    "validate": validate_main,
    "plot": plot_main,
    "vllm-serve": vllm_serve_main,
}


RECIPE_COMMANDS = {
    "train": "train the recipe",
    "validate": "check the recipe and its data without training (no model is loaded)",
}
RECIPE_USAGE = """usage: alignment {command} --config RECIPE.yaml [--section.key=value ...]

{what}. Overrides change one recipe key each, e.g. --loss.name=ipo --training.max_steps=10;
sections: model, lora, quantization, data, reference, loss, online, evaluation, training."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = argparse.ArgumentParser(prog="alignment", description="Preference alignment for language models.")
        parser.add_argument("command", choices=sorted(COMMANDS))
        parser.print_help(sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[0] in RECIPE_COMMANDS and any(a in ("-h", "--help") for a in argv[1:]):
        print(RECIPE_USAGE.format(command=argv[0], what=RECIPE_COMMANDS[argv[0]]))
        return 0
    status = COMMANDS[argv[0]](argv[1:])
    # A command that trained (and so may have had a process group) loaded this module.
    nodes = sys.modules.get("alignment.trainers.nodes")
    return status if nodes is None else nodes.exit_status(status)


if __name__ == "__main__":
    sys.exit(main())
