"""Where rows come from: local files or Hub datasets, subsampled and mixed by seed."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow.compute as pc
from datasets.exceptions import DatasetGenerationError

from alignment.config import SourceConfig
from alignment.data.example import DataError

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


# JSON rows are read by `read_json_rows`, not by `datasets`' JSON loader: that loader
# infers one type per column (a `"2"` in a column that also holds `7` becomes the int 2,
# and a string-or-messages column fails deep inside pyarrow) and stops at the first
# malformed line. Each row is kept as its JSON text, with its keys and what is wrong
# with it, so every row reaches the adapters exactly as written in the file and a bad
# line is a bad row like any other (raised, or counted and skipped, per `bad_rows`).
JSON_ROW = "_json_row"
JSON_FEATURES = datasets.Features(
    {
        JSON_ROW: datasets.Value("string"),
        "_keys": datasets.List(datasets.Value("string")),
        "_bad_reason": datasets.Value("string"),
        "_bad_detail": datasets.Value("string"),
    }
)
MALFORMED_JSON = "malformed_json"
NOT_UTF8 = "not_utf8"
NOT_A_ROW = "wrong_type"
READER_VERSION = "json-rows-1"  # part of the cache fingerprint: bump when the reader changes


@dataclass
class RawSource:
    """One source's rows before adaptation: the `datasets` rows and the column names a
    layout is detected from. Rows of a JSON file are JSON text (`row_dicts` decodes them)."""

    rows: datasets.Dataset
    columns: list[str]

    def __len__(self) -> int:
        return len(self.rows)

    def to_list(self) -> list[dict[str, Any]]:
        return [row for row, _, _ in row_dicts(self.rows[:])]


def row_dicts(batch: dict[str, list[Any]]) -> Iterator[tuple[dict[str, Any] | None, str, str]]:
    """(row, bad reason, detail) for each row of a batch: the decoded JSON object of a
    JSON file's row, or the typed columns of any other source. A row the reader found
    bad comes back as (None, reason, detail)."""
    if JSON_ROW in batch:
        for text, reason, detail in zip(batch[JSON_ROW], batch["_bad_reason"], batch["_bad_detail"], strict=True):
            yield (None, reason, detail) if reason else (json.loads(text), "", "")
        return
    columns = list(batch)
    size = len(batch[columns[0]]) if columns else 0
    for position in range(size):
        yield {column: batch[column][position] for column in columns}, "", ""


def check_not_empty(path: str) -> None:
    with open(path, "rb") as handle:
        if not handle.read(1 << 16).strip():
            raise DataError(f"data source {path}: the file is empty")


def _json_row(value: Any, where: str) -> dict[str, Any]:
    """A reader row: the object's JSON text and keys, or what is wrong with the value."""
    if not isinstance(value, dict):
        kind = type(value).__name__
        return {
            JSON_ROW: "",
            "_keys": [],
            "_bad_reason": NOT_A_ROW,
            "_bad_detail": f"{where} is a JSON {kind}, not an object (one row)",
        }
    return {
        JSON_ROW: json.dumps(value, ensure_ascii=False),
        "_keys": sorted(value),
        "_bad_reason": "",
        "_bad_detail": "",
    }


def _bad_json_row(reason: str, detail: str) -> dict[str, Any]:
    return {JSON_ROW: "", "_keys": [], "_bad_reason": reason, "_bad_detail": detail}


def _json_lines_rows(path: str) -> Iterator[dict[str, Any]]:
    """One row per non-empty line (blank lines are not rows, as for the JSON loader)."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as err:
                byte = line[err.start : err.start + 1]
                yield _bad_json_row(NOT_UTF8, f"line {number} is not UTF-8 (byte {err.start}: {byte!r})")
            except json.JSONDecodeError as err:
                yield _bad_json_row(
                    MALFORMED_JSON, f"line {number} is not valid JSON: {err.msg} at character {err.pos}"
                )
            else:
                yield _json_row(value, f"line {number}")


def _json_document_rows(path: str) -> Iterator[dict[str, Any]]:
    """A `.json` file: a list of row objects, or JSON Lines under a `.json` name."""
    raw = Path(path).read_bytes()
    try:
        document = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(
            f"data source {path}: the file is not UTF-8 (byte {err.start}: {raw[err.start : err.start + 1]!r})"
        ) from None
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # several documents: JSON Lines
            yield from _json_lines_rows(path)
            return
        raise DataError(
            f"data source {path}: not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
        ) from None
    if isinstance(document, dict):
        raise DataError(
            f"data source {path}: the file holds one JSON object; a .json source should hold a list of rows "
            "(or save one row per line as .jsonl)"
        )
    if not isinstance(document, list):
        raise DataError(f"data source {path}: the file holds a JSON {type(document).__name__}, not a list of rows")
    for i, value in enumerate(document):
        yield _json_row(value, f"item {i}")


def _generate_json_rows(path: str) -> Iterator[dict[str, Any]]:
    if path.lower().endswith(".jsonl"):
        yield from _json_lines_rows(path)
    else:
        yield from _json_document_rows(path)


def read_json_rows(path: str) -> RawSource:
    """A local `.json`/`.jsonl` file as rows of JSON text, cached by `datasets` under a
    fingerprint of the file's bytes (an edited file is read again)."""
    check_not_empty(path)
    digest = hashlib.sha256(READER_VERSION.encode())
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    try:
        rows = datasets.Dataset.from_generator(
            _generate_json_rows, features=JSON_FEATURES, gen_kwargs={"path": path}, fingerprint=digest.hexdigest()
        )
    except DatasetGenerationError as err:  # `datasets` wraps what the reader raised
        cause = err.__cause__
        while cause is not None and not isinstance(cause, DataError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise cause from None
    keys = rows.select_columns(["_keys"]).with_format("arrow")[:].column("_keys")
    columns = sorted(pc.unique(pc.list_flatten(keys)).to_pylist()) if len(rows) else []
    return RawSource(rows=rows, columns=columns)


def load_source(src: SourceConfig) -> RawSource:
    """Load one source's rows (all of them: `fraction` is applied by `take_fraction`)."""
    builder = local_builder(src.path)
    if builder == "json":
        return read_json_rows(src.path)
    if builder is not None:
        check_not_empty(src.path)
        # A local file is a single split, whatever `split` says.
        rows = datasets.load_dataset(builder, data_files=src.path, split="train")
    else:
        rows = datasets.load_dataset(src.path, src.name, split=src.split, revision=src.revision)
    return RawSource(rows=rows, columns=rows.column_names)


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
