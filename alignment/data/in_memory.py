"""Rows handed over as an in-memory `datasets.Dataset`, as to TRL's trainers, through the
recipe's own data path: the layout detected from the columns (or a source's `layout` and
`columns`), every row adapted and tokenized once by the same functions, the bad-row
policy, a source's `fraction`, the seeded shuffle of a one-source mixture, and the data
report. A dataset is treated exactly as a recipe's one source of that split would be, so
a trainer built from objects sees the same batches as the recipe run over the same rows.

A dataset that is already tokenized (it has `prompt_input_ids`) is not touched."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import datasets

from alignment.data import pipeline
from alignment.data import prompts as prompts_module
from alignment.data.pipeline import DataReport, NoUsableRows
from alignment.data.sources import RawSource, mix
from alignment.data.tokenize import resolve_chat_template
from alignment.schema import DataConfig, SourceConfig, build_section

TOKENIZED_COLUMN = "prompt_input_ids"  # present in every tokenized split, offline and online


def needs_tokenizing(dataset: Any) -> bool:
    """Whether `dataset` holds raw rows to adapt and tokenize: a `datasets.Dataset`
    without token ids. Anything else (tokenized rows, a torch dataset) is used as given."""
    return isinstance(dataset, datasets.Dataset) and TOKENIZED_COLUMN not in dataset.column_names


def data_settings(data_config: DataConfig | Mapping[str, Any] | None) -> DataConfig:
    """The `data:` settings for in-memory rows: a `DataConfig`, or a mapping of the recipe's
    `data:` keys, checked as a recipe's are (`train` and `test` may be left out: their first
    source, when given, supplies `layout`, `columns` and `system` for the train and eval
    datasets; its path is not read). None: the defaults."""
    if isinstance(data_config, DataConfig):
        return data_config
    raw = dict(data_config or {})
    raw.setdefault("train", ["train_dataset"])  # DataConfig requires a source; this one is never read
    return build_section(DataConfig, raw, "data")


def _source(cfg: DataConfig, split: str, name: str) -> SourceConfig:
    """The source `name` stands for: the per-source settings of the config's first source of
    `split` (the train one for an eval dataset with no test source), under the trainer
    argument's name, so reports and bad-row errors say `train_dataset[train]`."""
    given = (cfg.test or cfg.train) if split == "test" else cfg.train
    settings = given[0] if given else SourceConfig(path=name)
    return dataclasses.replace(settings, path=name, split=split, name=None, revision=None)


# What to do about rows of the wrong kind, in a trainer's words (a recipe says it in its own).
OBJECT_REMEDIES = {
    "prompt": "give preference rows, or train on these prompts with OnlineTrainer",
    "unpaired": "Train it with get_loss('kto'), or give paired rows",
}


def tokenized_preferences(
    dataset: datasets.Dataset,
    cfg: DataConfig,
    tokenizer: Any,
    split: str,
    name: str,
    require_order: bool = True,
    unpaired: bool = False,
) -> datasets.Dataset:
    """Raw preference rows (any layout the recipe's data takes) -> the tokenized lists
    `build_datasets` makes of a one-source split, with its report logged. `split` is
    "train" or "test"; `name` how errors name the dataset (`train_dataset`)."""
    src = _source(cfg, split, name)
    raw = RawSource(rows=dataset, columns=list(dataset.column_names))
    tokenized, report = pipeline._prepare_source(
        src,
        split,
        cfg,
        tokenizer,
        resolve_chat_template(cfg.chat_template),
        require_order,
        unpaired,
        raw=raw,
        remedies=OBJECT_REMEDIES,
    )
    mixed = mix([tokenized], cfg.seed)
    if len(mixed) == 0:
        raise NoUsableRows(split, "rows", [src], [report])
    k = {split: pipeline._k_distribution(mixed)}
    DataReport(sources=[report], rows={split: len(mixed)}, k_distribution=k).log(pipeline.logger)
    return mixed


def tokenized_prompts(
    dataset: datasets.Dataset, cfg: DataConfig, tokenizer: Any, split: str, name: str
) -> datasets.Dataset:
    """Raw rows of any layout -> the tokenized prompts `build_prompt_datasets` makes of a
    one-source split (the prompt as JSON text for the judge, the row's other columns for
    reward functions, and its token ids)."""
    src = _source(cfg, split, name)
    raw = RawSource(rows=dataset, columns=list(dataset.column_names))
    reports: list = []
    prompts = prompts_module._prepare_source(
        src, split, cfg, tokenizer, resolve_chat_template(cfg.chat_template), reports, raw=raw
    )
    mixed = mix([prompts], cfg.seed)
    if len(mixed) == 0:
        raise NoUsableRows(split, "prompts", [src], reports)
    DataReport(sources=reports, rows={split: len(mixed)}, k_distribution={split: {}}).log(pipeline.logger)
    return mixed
