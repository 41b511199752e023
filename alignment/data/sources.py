"""Where rows come from: local files or Hub datasets, subsampled and mixed by seed."""

from __future__ import annotations

import json
import math

import datasets

from alignment.config import SourceConfig
from alignment.data.example import BadRowError, DataError

# Local file suffix -> `datasets` builder.
LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def local_builder(path: str) -> str | None:
    """The builder for a local data file, or None when `path` names a Hub dataset (or a directory)."""
    for suffix, builder in LOCAL_BUILDERS.items():
        if path.lower().endswith(suffix):
            return builder
    return None


def source_label(src: SourceConfig) -> str:
    """How errors and reports name a source: the file path, or the Hub name with subset and split."""
    if local_builder(src.path):
        return src.path
    subset = f"/{src.name}" if src.name else ""
    return f"{src.path}{subset}[{src.split}]"


def check_local_file(path: str) -> None:
    """Problems `datasets` reports only as a traceback from deep inside its loader, found
    first and named: an empty file, bytes that are not UTF-8, a JSON Lines line that is
    not JSON. Row numbers count non-empty lines from 0, as the loader does."""
    with open(path, "rb") as handle:
        if not handle.read(1 << 16).strip():
            raise DataError(f"data source {path}: the file is empty")
    if not path.lower().endswith(".jsonl"):
        return
    row = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as err:
                raise BadRowError(
                    path,
                    row,
                    "not_utf8",
                    f"line {number} is not UTF-8 (byte {err.start}: {line[err.start : err.start + 1]!r})",
                ) from None
            except json.JSONDecodeError as err:
                raise BadRowError(
                    path, row, "malformed_json", f"line {number} is not valid JSON: {err.msg} at character {err.pos}"
                ) from None
            row += 1


def load_source(src: SourceConfig) -> datasets.Dataset:
    """Load one source's rows (all of them: `fraction` is applied by `take_fraction`)."""
    builder = local_builder(src.path)
    if builder is not None:
        check_local_file(src.path)
        # A local file is a single split, whatever `split` says.
        return datasets.load_dataset(builder, data_files=src.path, split="train")
    return datasets.load_dataset(src.path, src.name, split=src.split, revision=src.revision)


def take_fraction(dataset: datasets.Dataset, fraction: float, seed: int) -> datasets.Dataset:
    """The first ceil(fraction * n) rows after a shuffle with `seed`."""
    if fraction >= 1.0:
        return dataset
    keep = math.ceil(fraction * len(dataset))
    return dataset.shuffle(seed=seed).select(range(keep))


def mix(parts: list[datasets.Dataset], seed: int) -> datasets.Dataset:
    """Concatenate the sources' rows and shuffle them with `seed`, so that a batch draws
    from every source rather than walking through them one after another."""
    mixed = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    return mixed.shuffle(seed=seed)
