"""Prompts for online training: sources -> prompts -> tokens, with the same bad-row
policy, mixture and report as the preference data.

Any layout works: a `prompt`-only file, or preference data whose completions are
ignored (the prompt of a chat pair is cut out of its messages as usual). Each row keeps
its prompt as JSON text (`prompt`), for the judge, its other columns as JSON text
(`columns`), for reward functions, and its tokens (`prompt_input_ids`), for the sampler."""

from __future__ import annotations

import json
import sys
from typing import Any

import datasets

from alignment.data import adapters as adapters_module
from alignment.data import conversations as conversations_module
from alignment.data import fields as fields_module
from alignment.data import pipeline as pipeline_module
from alignment.data import rows as rows_module
from alignment.data import sources as sources_module
from alignment.data import tokenize as tokenize_module
from alignment.data.adapters import adapt_prompt
from alignment.data.pipeline import (
    DataReport,
    NoUsableRows,
    PreparedData,
    SourceReport,
    _apply_policy,
    logger,
    source_layout,
)
from alignment.data.rows import BOOKKEEPING_COLUMNS, BOOKKEEPING_FEATURES, code_version, map_rows
from alignment.data.sources import RawSource, load_source, mix, source_label, take_fraction
from alignment.data.tokenize import prompt_token_ids, resolve_chat_template
from alignment.schema import DataConfig, SourceConfig

PROMPT_FEATURES = datasets.Features(
    {
        "prompt": datasets.Value("string"),
        "columns": datasets.Value("string"),
        "prompt_input_ids": datasets.List(datasets.Value("int32")),
        "prompt_truncated": datasets.Value("bool"),
        "tokens_dropped": datasets.Value("int64"),
        **BOOKKEEPING_FEATURES,
    }
)

# Salts the map's cache fingerprint, which `datasets` takes from the function's name only.
CODE_VERSION = code_version(
    adapters_module,
    conversations_module,
    fields_module,
    sources_module,
    tokenize_module,
    pipeline_module,
    rows_module,
    sys.modules[__name__],
)


def build_prompt_datasets(cfg: DataConfig, tokenizer: Any) -> PreparedData:
    """Train and test prompts (columns `prompt`, `prompt_input_ids`), and the report.
    Prompts longer than `max_prompt_length` keep their end; `max_length` bounds
    prompt + generated tokens and is checked by the online trainer."""
    chat_template = resolve_chat_template(cfg.chat_template)
    reports: list[SourceReport] = []
    splits: dict[str, datasets.Dataset] = {}
    for split, sources in (("train", cfg.train), ("test", cfg.test)):
        if sources:
            parts = [_prepare_source(src, split, cfg, tokenizer, chat_template, reports) for src in sources]
            splits[split] = mix(parts, cfg.seed)
            if len(splits[split]) == 0:
                raise NoUsableRows(split, "prompts", sources, reports[-len(sources) :])
    if "test" not in splits and cfg.test_size > 0:
        parts = splits["train"].train_test_split(test_size=cfg.test_size, seed=cfg.seed)
        splits["train"], splits["test"] = parts["train"], parts["test"]
    report = DataReport(
        sources=reports,
        rows={name: len(ds) for name, ds in splits.items()},
        k_distribution={name: {} for name in splits},
    )
    report.log(logger)
    return PreparedData(train=splits["train"], test=splits.get("test"), report=report)


def _prepare_source(
    src: SourceConfig,
    split: str,
    cfg: DataConfig,
    tokenizer: Any,
    chat_template: str | None,
    reports: list[SourceReport],
    raw: RawSource | None = None,
) -> datasets.Dataset:
    """One source's prompts (`raw`, or read from `src`), checked and tokenized; its report is appended to `reports`."""
    label = source_label(src)
    raw = load_source(src) if raw is None else raw
    layout = source_layout(raw, src, label, cfg.bad_rows)
    report = SourceReport(source=label, split=split, layout=layout, rows_loaded=len(raw))
    reports.append(report)
    prompts = map_rows(
        raw.rows,
        src,
        _prompt_fields,
        PROMPT_FEATURES,
        code_version=CODE_VERSION,
        num_proc=cfg.num_proc,
        desc=f"Reading prompts of {label}",
        layout=layout,
        system=src.system,
        tokenizer=tokenizer,
        chat_template=chat_template,
        max_prompt_length=cfg.max_prompt_length,
    )
    prompts = _apply_policy(prompts, cfg.bad_rows, label, report, cfg.num_proc)
    prompts = take_fraction(prompts, src.fraction, cfg.seed)
    report.rows_used = len(prompts)
    report.prompts_truncated = sum(prompts["prompt_truncated"])
    report.tokens_dropped = sum(prompts["tokens_dropped"])
    return prompts.remove_columns([*BOOKKEEPING_COLUMNS, "prompt_truncated", "tokens_dropped"])


def _prompt_fields(
    row: dict[str, Any],
    index: int,
    source: str,
    *,
    layout: str,
    system: str | None,
    tokenizer: Any,
    chat_template: str | None,
    max_prompt_length: int | None,
) -> dict[str, Any]:
    prompt = adapt_prompt(row, layout, source, index, system)
    ids = prompt_token_ids(prompt, tokenizer, chat_template)
    dropped = max(0, len(ids) - max_prompt_length) if max_prompt_length is not None else 0
    return {
        "prompt": json.dumps(prompt, ensure_ascii=False),
        # The row's other columns, for reward functions (TRL passes them too): e.g. a reference answer.
        "columns": json.dumps({k: v for k, v in row.items() if k != "prompt"}, ensure_ascii=False, default=str),
        "prompt_input_ids": ids[dropped:],  # keep the end: the question right before the answer
        "prompt_truncated": dropped > 0,
        "tokens_dropped": dropped,
    }
