"""Prompts for online training: sources -> prompts -> tokens, with the same bad-row
policy, mixture and report as the preference data.

Any layout works: a `prompt`-only file, or preference data whose completions are
ignored (the prompt of a chat pair is cut out of its messages as usual). Each row keeps
its prompt as JSON text (`prompt`), for the judge, and its tokens (`prompt_input_ids`),
for the sampler."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import datasets

from alignment.config import DataConfig, SourceConfig
from alignment.data import adapters as adapters_module
from alignment.data import conversations as conversations_module
from alignment.data import fields as fields_module
from alignment.data import sources as sources_module
from alignment.data import tokenize as tokenize_module
from alignment.data.adapters import adapt_prompt, renamed
from alignment.data.example import BadRowError
from alignment.data.pipeline import (
    BOOKKEEPING_COLUMNS,
    DataReport,
    NoUsableRows,
    PreparedData,
    SourceReport,
    _apply_policy,
    _empty,
    logger,
    source_layout,
)
from alignment.data.sources import load_source, mix, row_dicts, source_label, take_fraction
from alignment.data.tokenize import prompt_token_ids, resolve_chat_template

PROMPT_FEATURES = datasets.Features(
    {
        "prompt": datasets.Value("string"),
        "prompt_input_ids": datasets.List(datasets.Value("int32")),
        "prompt_truncated": datasets.Value("bool"),
        "tokens_dropped": datasets.Value("int64"),
        "_index": datasets.Value("int64"),
        "_bad_reason": datasets.Value("string"),
        "_bad_detail": datasets.Value("string"),
    }
)

# Salts the map's cache fingerprint, which `datasets` takes from the function's name only.
CODE_VERSION = hashlib.sha256(
    b"".join(
        Path(m.__file__).read_bytes()
        for m in (adapters_module, conversations_module, fields_module, sources_module, tokenize_module)
    )
    + Path(__file__).read_bytes()
).hexdigest()[:16]


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
) -> datasets.Dataset:
    label = source_label(src)
    raw = load_source(src)
    layout = source_layout(raw, src, label, cfg.bad_rows)
    report = SourceReport(source=label, split=split, layout=layout, rows_loaded=len(raw))
    reports.append(report)
    if len(raw) == 0:
        prompts = _empty(PROMPT_FEATURES)
    else:
        prompts = raw.rows.map(
            _prompt_batch,
            batched=True,
            with_indices=True,
            fn_kwargs={
                "layout": layout,
                "source": label,
                "tokenizer": tokenizer,
                "chat_template": chat_template,
                "max_prompt_length": cfg.max_prompt_length,
                "columns": src.columns,
                "system": src.system,
                "code_version": CODE_VERSION,
            },
            remove_columns=raw.rows.column_names,
            features=PROMPT_FEATURES,
            num_proc=cfg.num_proc,
            desc=f"Reading prompts of {label}",
        )
    prompts = _apply_policy(prompts, cfg.bad_rows, label, report, cfg.num_proc)
    prompts = take_fraction(prompts, src.fraction, cfg.seed)
    report.rows_used = len(prompts)
    report.prompts_truncated = sum(prompts["prompt_truncated"])
    report.tokens_dropped = sum(prompts["tokens_dropped"])
    return prompts.remove_columns([*BOOKKEEPING_COLUMNS, "prompt_truncated", "tokens_dropped"])


def _prompt_batch(
    batch: dict[str, list[Any]],
    indices: list[int],
    *,
    layout: str,
    source: str,
    tokenizer: Any,
    chat_template: str | None,
    max_prompt_length: int | None,
    columns: dict[str, str] | None,
    system: str | None,
    code_version: str,
) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {name: [] for name in PROMPT_FEATURES}
    for (row, reason, detail), index in zip(row_dicts(batch), indices, strict=True):
        fields: dict[str, Any] = {"prompt": "", "prompt_input_ids": [], "prompt_truncated": False, "tokens_dropped": 0}
        try:
            if row is None:  # the reader found the row bad (a malformed JSON line)
                raise BadRowError(source, index, reason, detail)
            prompt = adapt_prompt(renamed(row, columns), layout, source, index, system)
            ids = prompt_token_ids(prompt, tokenizer, chat_template)
        except BadRowError as err:
            fields.update(_bad_reason=err.reason, _bad_detail=err.detail)
        else:
            dropped = max(0, len(ids) - max_prompt_length) if max_prompt_length is not None else 0
            fields.update(
                prompt=json.dumps(prompt, ensure_ascii=False),
                prompt_input_ids=ids[dropped:],  # keep the end: the question right before the answer
                prompt_truncated=dropped > 0,
                tokens_dropped=dropped,
                _bad_reason="",
                _bad_detail="",
            )
        fields["_index"] = index
        for name in out:
            out[name].append(fields[name])
    return out
