"""The whole data path: sources -> token ids -> bad-row policy -> fraction -> mixture.

Each source's rows go from the row as read to token ids in one batched `datasets.map`
(`map_rows`): a row is decoded once, adapted to a PreferenceExample and tokenized in the
same pass, and the example never leaves Python. Every step is a `datasets` transform
(map / filter / shuffle / select), so each one is cached under a fingerprint of its
inputs and a second run on the same data and settings reloads the results instead of
recomputing them.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alignment.data import adapters as adapters_module
from alignment.data import conversations as conversations_module
from alignment.data import example as example_module
from alignment.data import fields as fields_module
from alignment.data import rows as rows_module
from alignment.data import sources as sources_module
from alignment.data import tokenize as tokenize_module
from alignment.data.adapters import LAYOUT_COLUMNS, UNPAIRED_LAYOUTS, adapt_row, detect_layout, renamed
from alignment.data.example import BadRowError, DataError
from alignment.data.rows import BOOKKEEPING_COLUMNS, BOOKKEEPING_FEATURES, ROW_INDEX, code_version, map_rows
from alignment.data.sources import RawSource, load_source, mix, row_dicts, source_label, take_fraction
from alignment.data.tokenize import (
    PROMPT_FILLS_MAX_LENGTH,
    STATS_COLUMNS,
    TOKENIZED_FEATURES,
    resolve_chat_template,
    tokenize_example,
)
from alignment.schema import DataConfig, SourceConfig

logger = logging.getLogger(__name__)

# Salts the maps' cache fingerprints (with tokenize.CODE_VERSION where rows are tokenized).
ADAPT_CODE_VERSION = code_version(
    adapters_module,
    conversations_module,
    example_module,
    fields_module,
    rows_module,
    sources_module,
    sys.modules[__name__],
)


@dataclass
class SourceReport:
    """What happened to one source's rows."""

    source: str
    split: str  # "train" or "test": the part of the recipe the source belongs to
    layout: str
    rows_loaded: int
    rows_used: int = 0  # after dropping bad rows and taking the source's fraction
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows dropped
    prompts_truncated: int = 0
    completions_truncated: int = 0
    tokens_dropped: int = 0


@dataclass
class DataReport:
    """Rows per source, bad rows skipped per reason, truncation, and list sizes."""

    sources: list[SourceReport]
    rows: dict[str, int]  # split -> number of lists (prompts)
    k_distribution: dict[str, dict[int, int]]  # split -> {K: number of lists with K completions}

    @property
    def skipped(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for source in self.sources:
            total.update(source.skipped)
        return dict(sorted(total.items()))

    @property
    def prompts_truncated(self) -> int:
        return sum(s.prompts_truncated for s in self.sources)

    @property
    def completions_truncated(self) -> int:
        return sum(s.completions_truncated for s in self.sources)

    @property
    def tokens_dropped(self) -> int:
        return sum(s.tokens_dropped for s in self.sources)

    def summary(self) -> str:
        lines = ["data:"]
        for s in self.sources:
            skipped = ", ".join(f"{reason}={n}" for reason, n in sorted(s.skipped.items())) or "none"
            lines.append(
                f"  [{s.split}] {s.source} ({s.layout}): {s.rows_loaded} rows loaded, {s.rows_used} used; "
                f"skipped: {skipped}; truncated: {s.prompts_truncated} prompts, "
                f"{s.completions_truncated} completions, {s.tokens_dropped} tokens dropped"
            )
        for split, n in self.rows.items():
            sizes = ", ".join(f"K={k}: {count}" for k, count in sorted(self.k_distribution.get(split, {}).items()))
            lines.append(f"  {split}: {n} lists ({sizes})" if sizes else f"  {split}: {n} prompts")
        skipped_total = sum(self.skipped.values())
        lines.append(
            f"  total: {skipped_total} rows skipped, {self.prompts_truncated} prompts and "
            f"{self.completions_truncated} completions truncated, {self.tokens_dropped} tokens dropped"
        )
        return "\n".join(lines)

    def log(self, log: logging.Logger) -> None:
        log.info("%s", self.summary())
        if self.skipped:
            log.warning("skipped bad rows: %s", ", ".join(f"{r}={n}" for r, n in self.skipped.items()))
        if self.tokens_dropped:
            log.warning(
                "truncation dropped %d tokens (%d prompts, %d completions cut); see data.max_length and "
                "data.max_prompt_length",
                self.tokens_dropped,
                self.prompts_truncated,
                self.completions_truncated,
            )


class NoUsableRows(DataError):
    """Every row of a split was bad (under `bad_rows: skip`); the message and `skipped`
    give the count per reason, so the user sees why."""

    def __init__(self, split: str, what: str, sources: list[SourceConfig], reports: list[SourceReport]) -> None:
        self.skipped = DataReport(sources=reports, rows={}, k_distribution={}).skipped
        reasons = ", ".join(f"{reason}={n}" for reason, n in self.skipped.items()) or "none"
        super().__init__(
            f"data.{split}: no usable {what} left in {[source_label(s) for s in sources]} (skipped: {reasons})"
        )


@dataclass
class PreparedData:
    """Tokenized train and test sets (columns prompt_input_ids, completion_input_ids, scores)."""

    train: datasets.Dataset
    test: datasets.Dataset | None
    report: DataReport


def build_datasets(cfg: DataConfig, tokenizer: Any, require_order: bool = True, unpaired: bool = False) -> PreparedData:
    """Load, adapt, check, mix and tokenize the recipe's data, and log the report.

    Per source: rows -> PreferenceExample (bad rows raise or are counted, per
    `cfg.bad_rows`), then the first ceil(fraction * n) good rows after a seeded
    shuffle, then tokens. Sources are concatenated and shuffled; with no test sources
    `test_size` is split off the training mixture.

    `require_order`: rows whose scores are all equal are bad (losses that learn from an
    order have nothing to learn from them). `unpaired`: the loss learns from unpaired
    rows (one completion and a desirable label, e.g. KTO); without it an unpaired
    source is an error."""
    chat_template = resolve_chat_template(cfg.chat_template)
    reports: list[SourceReport] = []
    train = _prepare_split(cfg.train, "train", cfg, tokenizer, chat_template, require_order, unpaired, reports)
    test = None
    if cfg.test:
        test = _prepare_split(cfg.test, "test", cfg, tokenizer, chat_template, require_order, unpaired, reports)
        if cfg.test_size > 0:
            logger.warning("data.test_size=%s is ignored: data.test gives the test sources", cfg.test_size)
    elif cfg.test_size > 0:
        parts = train.train_test_split(test_size=cfg.test_size, seed=cfg.seed)
        train, test = parts["train"], parts["test"]

    splits = {"train": train} if test is None else {"train": train, "test": test}
    report = DataReport(
        sources=reports,
        rows={name: len(ds) for name, ds in splits.items()},
        k_distribution={name: _k_distribution(ds) for name, ds in splits.items()},
    )
    report.log(logger)
    return PreparedData(train=train, test=test, report=report)


def _prepare_split(
    sources: list[SourceConfig],
    split: str,
    cfg: DataConfig,
    tokenizer: Any,
    chat_template: str | None,
    require_order: bool,
    unpaired: bool,
    reports: list[SourceReport],
) -> datasets.Dataset:
    parts = []
    for src in sources:
        dataset, report = _prepare_source(src, split, cfg, tokenizer, chat_template, require_order, unpaired)
        parts.append(dataset)
        reports.append(report)
    mixed = mix(parts, cfg.seed)
    if len(mixed) == 0:
        raise NoUsableRows(split, "rows", sources, reports[-len(sources) :])
    return mixed


# What to do about data of the wrong kind, in the words of a recipe (a trainer built from
# objects says it in its own: alignment/data/in_memory.py).
RECIPE_REMEDIES = {
    "prompt": "add an `online:` section to the recipe, or use preference data",
    "unpaired": "Train it with `loss: {name: kto}`, or give paired data",
}


def _prepare_source(
    src: SourceConfig,
    split: str,
    cfg: DataConfig,
    tokenizer: Any,
    chat_template: str | None,
    require_order: bool,
    unpaired: bool = False,
    raw: RawSource | None = None,
    remedies: dict[str, str] = RECIPE_REMEDIES,
) -> tuple[datasets.Dataset, SourceReport]:
    """One source's rows (`raw`, or read from `src`) adapted, tokenized and checked, with its report."""
    label = source_label(src)
    raw = load_source(src) if raw is None else raw
    layout = source_layout(raw, src, label, cfg.bad_rows)
    if layout == "prompt":
        raise DataError(
            f"data source {label}: it holds prompts only (no chosen/rejected or completions); prompt-only data is "
            f"for online training -- {remedies['prompt']}"
        )
    if layout in UNPAIRED_LAYOUTS and not unpaired:
        raise DataError(
            f"data source {label}: it is unpaired ({LAYOUT_COLUMNS[layout]}): one completion per prompt with a "
            f"desirable label, no pair to compare; the loss learns from pairs or lists. {remedies['unpaired']}"
        )
    report = SourceReport(source=label, split=split, layout=layout, rows_loaded=len(raw))
    adapt = {"layout": layout, "require_order": require_order, "system": src.system}
    rows = raw.rows
    if src.fraction < 1.0:
        rows = _good_fraction(rows, src, cfg, label, report, adapt)

    tokenized = map_rows(
        rows,
        src,
        _preference_fields,
        TOKENIZED_FEATURES,
        code_version=f"{ADAPT_CODE_VERSION}-{tokenize_module.CODE_VERSION}",
        num_proc=cfg.num_proc,
        desc=f"Adapting and tokenizing {label}",
        tokenizer=tokenizer,
        max_length=cfg.max_length,
        max_prompt_length=cfg.max_prompt_length,
        chat_template=chat_template,
        **adapt,
    )
    tokenized = _apply_policy(
        tokenized, cfg.bad_rows, label, report, cfg.num_proc, found_late=[PROMPT_FILLS_MAX_LENGTH]
    )

    stats = tokenized.select_columns(list(STATS_COLUMNS)).with_format("arrow")[:]
    report.prompts_truncated = _sum(stats, "prompt_truncated")
    report.completions_truncated = _sum(stats, "completions_truncated")
    report.tokens_dropped = _sum(stats, "tokens_dropped")
    report.rows_used = len(tokenized)
    return tokenized.remove_columns(BOOKKEEPING_COLUMNS + list(STATS_COLUMNS)), report


def _good_fraction(
    rows: datasets.Dataset,
    src: SourceConfig,
    cfg: DataConfig,
    label: str,
    report: SourceReport,
    adapt: dict[str, Any],
) -> datasets.Dataset:
    """The rows `take_fraction` keeps of the source's good rows, in its order, each with
    its index in the source (`ROW_INDEX`). The fraction is taken of the good rows, so it
    is the share of usable data: finding them adapts every row, but only the kept ones
    are then tokenized."""
    checked = map_rows(
        rows,
        src,
        _adapted_fields,
        BOOKKEEPING_FEATURES,
        code_version=ADAPT_CODE_VERSION,
        num_proc=cfg.num_proc,
        desc=f"Checking {label}",
        **adapt,
    )
    checked = _apply_policy(checked, cfg.bad_rows, label, report, cfg.num_proc)
    kept = take_fraction(checked, src.fraction, cfg.seed).select_columns(["_index"]).with_format("arrow")[:]
    return rows.add_column(ROW_INDEX, np.arange(len(rows))).select(kept.column("_index").to_numpy())


def _preference_fields(
    row: dict[str, Any],
    index: int,
    source: str,
    *,
    layout: str,
    require_order: bool,
    system: str | None,
    **tokenize: Any,
) -> dict[str, Any]:
    example = adapt_row(row, layout, source, index, require_order, system)
    return tokenize_example(example, **tokenize)


def _adapted_fields(
    row: dict[str, Any], index: int, source: str, *, layout: str, require_order: bool, system: str | None
) -> dict[str, Any]:
    adapt_row(row, layout, source, index, require_order, system)
    return {}


def source_layout(raw: RawSource, src: SourceConfig, label: str, policy: str) -> str:
    """The recipe's layout for the source, or the one its columns show. A file none of
    whose rows could be read has no columns: its first bad row is the error (or, under
    `skip`, every row is counted and none is left)."""
    if src.layout != "auto":
        return src.layout
    if not raw.columns and len(raw):
        if policy == "error":
            _, reason, detail = next(row_dicts(raw.rows[:1]))
            raise BadRowError(label, 0, reason, detail)
        return "unknown"
    columns = renamed(dict.fromkeys(raw.columns), src.columns)
    first = next((row for row, _, _ in row_dicts(raw.rows[:16]) if row is not None), None)
    try:
        return detect_layout(columns, None if first is None else renamed(first, src.columns))
    except ValueError as err:
        raise DataError(f"data source {label}: {err}") from None


def _apply_policy(
    dataset: datasets.Dataset,
    policy: str,
    label: str,
    report: SourceReport,
    num_proc: int | None,
    found_late: Iterable[str] = (),
) -> datasets.Dataset:
    """`error`: raise for the first bad row. `skip`: drop bad rows, counting each reason.

    `found_late`: reasons of checks that come after adaptation (a prompt too long for
    `max_length`). `error` names such a row only when no row is bad otherwise, so a row
    that cannot be adapted at all is reported before one that fails the length settings."""
    reasons = dataset.select_columns(["_bad_reason"]).with_format("arrow")[:].column("_bad_reason")
    bad = pc.not_equal(reasons, "")
    if not pc.any(bad).as_py():
        return dataset
    if policy == "error":
        early = pc.and_(bad, pc.invert(pc.is_in(reasons, value_set=pa.array(list(found_late), pa.string()))))
        row = dataset[pc.index(early if pc.any(early).as_py() else bad, True).as_py()]
        raise BadRowError(label, row["_index"], row["_bad_reason"], row["_bad_detail"])
    counts = pc.value_counts(pc.filter(reasons, bad))
    for item in counts.to_pylist():
        report.skipped[item["values"]] = report.skipped.get(item["values"], 0) + item["counts"]
    return dataset.filter(
        _is_good, input_columns="_bad_reason", batched=True, num_proc=num_proc, desc="Dropping bad rows"
    )


def _is_good(reasons: list[str]) -> list[bool]:
    return [not reason for reason in reasons]


def _sum(table: Any, column: str) -> int:
    value = pc.sum(table.column(column).cast("int64")).as_py()
    return int(value or 0)


def _k_distribution(dataset: datasets.Dataset) -> dict[int, int]:
    scores = dataset.select_columns(["scores"]).with_format("arrow")[:].column("scores")
    counts = pc.value_counts(pc.list_value_length(scores)).to_pylist()
    return {int(item["values"]): int(item["counts"]) for item in sorted(counts, key=lambda c: c["values"])}
