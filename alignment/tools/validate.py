"""`alignment validate --config RECIPE.yaml [--section.key=value ...]`: check a recipe and
its data without training.

It validates the config, then runs the real data path with every bad row counted
(rather than stopping at the first), and reports rows per source, bad rows per reason,
list sizes, token-length histograms, truncation rates and ties. Exit status: 0 when the
recipe would train, 1 when its data would stop it (bad rows under `bad_rows: error`, or
no usable rows), 2 for a config error."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from itertools import combinations

from alignment.config import Config, ConfigError, config_from_argv
from alignment.data import build_datasets
from alignment.data.pipeline import NoUsableRows
from alignment.data.prompts import build_prompt_datasets
from alignment.models import load_tokenizer


def histogram(values: Sequence[int], bins: int = 8, width: int = 40) -> list[str]:
    """A text histogram: one line per bin, `[lo, hi] count ####`."""
    if not values:
        return ["  (none)"]
    lo, hi = min(values), max(values)
    step = max(1, -(-(hi - lo + 1) // bins))
    counts = [0] * (-(-(hi - lo + 1) // step))
    for v in values:
        counts[(v - lo) // step] += 1
    top = max(counts)
    return [
        f"  [{lo + i * step:>5}, {min(hi, lo + (i + 1) * step - 1):>5}] {n:>7} {'#' * max(1 if n else 0, n * width // top)}"
        for i, n in enumerate(counts)
    ]


def _percentiles(values: Sequence[int]) -> str:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return f"min {ordered[0]}, median {pick(0.5)}, p95 {pick(0.95)}, max {ordered[-1]}"


def tied_pairs(scores: Sequence[Sequence[float]]) -> tuple[int, int]:
    """(pairs of completions with equal scores, all pairs) over the lists."""
    tied = total = 0
    for row in scores:
        for a, b in combinations(row, 2):
            total += 1
            tied += a == b
    return tied, total


def report(config: Config) -> tuple[list[str], int]:
    """The report's lines and the exit status."""
    loss = " + ".join(f"{s.weight:g} * {s.name}({s.params})" for s in config.loss)
    lines = [f"config: OK (loss {loss}; reference {config.reference.type}; online {'yes' if config.online else 'no'})"]
    tokenizer = load_tokenizer(config.model)
    counting = dataclasses.replace(config.data, bad_rows="skip")  # count every bad row instead of stopping
    try:
        if config.online is None:
            data = build_datasets(counting, tokenizer, require_order=True, unpaired=config.loss_fn.accepts_unpaired)
        else:
            data = build_prompt_datasets(counting, tokenizer)
    except NoUsableRows as err:  # every row was bad: the reasons are the report
        reasons = ", ".join(f"{r}={n}" for r, n in err.skipped.items())
        return [*lines, f"bad rows: {reasons} -- no usable row is left", f"data: FAILS: {err}"], 1
    except ValueError as err:
        return [*lines, f"data: FAILS: {err}"], 1
    lines += data.report.summary().splitlines()

    status = 0
    if data.report.skipped:
        reasons = ", ".join(f"{r}={n}" for r, n in data.report.skipped.items())
        if config.data.bad_rows == "error":
            lines.append(f"bad rows: {reasons} -- training stops at the first one (data.bad_rows: error)")
            status = 1
        else:
            lines.append(f"bad rows: {reasons} -- dropped and counted (data.bad_rows: skip)")
    for split, dataset in (("train", data.train), ("test", data.test)):
        if dataset is None:
            continue
        prompts = [len(ids) for ids in dataset["prompt_input_ids"]]
        lines += [f"{split}: prompt tokens ({_percentiles(prompts)})", *histogram(prompts)]
        if config.online is None:
            completions = [len(c) for row in dataset["completion_input_ids"] for c in row]
            lines += [f"{split}: completion tokens ({_percentiles(completions)})", *histogram(completions)]
            tied, total = tied_pairs(dataset["scores"])
            lines.append(f"{split}: {tied} of {total} completion pairs tie (ties form no pair for pairwise losses)")
    rows = sum(s.rows_used for s in data.report.sources) or 1
    completions = sum(s.rows_used for s in data.report.sources if s.layout != "prompt")
    lines.append(
        f"truncation: {data.report.prompts_truncated / rows:.1%} of prompts, "
        f"{data.report.completions_truncated} completions cut, {data.report.tokens_dropped} tokens dropped"
        + ("" if completions else " (prompts only)")
    )
    lines.append("result: " + ("the recipe's data would stop training" if status else "ready to train"))
    return lines, status


def validate_main(argv: list[str]) -> int:
    config = config_from_argv(argv)
    if config is None:
        return 2
    try:
        config.training_arguments()  # transformers' own checks of combinations, as training runs them
    except ConfigError as err:
        print(f"alignment: config error: {err}", file=sys.stderr)
        return 2
    lines, status = report(config)
    print("\n".join(lines))
    return status
