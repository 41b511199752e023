"""Where rows come from: local files (alignment.data.files finds and opens them) or Hub
datasets, subsampled and mixed by seed."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.compute as pc
from datasets.exceptions import DatasetGenerationError

from alignment.data.example import DataError
from alignment.data.files import DataFile, file_where, local_files, open_stream, os_reason, reads_files, text_lines
from alignment.schema import SourceConfig


def source_label(src: SourceConfig) -> str:
    """How errors and reports name a source: the local path, or the Hub name with subset and split."""
    if reads_files(src):
        return src.path
    subset = f"/{src.name}" if src.name else ""
    return f"{src.path}{subset}[{src.split}]"


# ----------------------------------------------------------------------------- reading rows

# Local JSON, JSON Lines, CSV and TSV rows are read here, not by `datasets`' loaders: they
# infer one type per column (a `"2"` in a column that also holds `7` becomes the int 2, a
# CSV answer "9" the int 9, and a string-or-messages column fails deep inside pyarrow) and
# stop at the first malformed line. Each row is kept as its JSON text, with its keys and
# what is wrong with it, so every row reaches the adapters as written in the file and a
# bad line is a bad row like any other (raised, or counted and skipped, per `bad_rows`).
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
MALFORMED_CSV = "malformed_csv"
NOT_UTF8 = "not_utf8"
NOT_A_ROW = "wrong_type"
READER_VERSION = "rows-2"  # part of the cache fingerprint: bump when the reader's output changes
# A CSV or TSV cell is text, except in the columns the layouts read as numbers or lists
# (by our column names): those cells are parsed, and one that does not parse stays text
# for the adapter to name. An answer "9" stays the string "9".
CSV_KINDS = {
    "score_chosen": "number",
    "score_rejected": "number",
    "margin": "number",
    "label": "label",  # true/false, or 1/0
    "scores": "list",  # JSON arrays
    "ranks": "list",
    "completions": "list",
    "messages": "list",
    "conversations": "list",
}


@dataclass
class RawSource:
    """One source's rows before adaptation: the `datasets` rows and the column names a
    layout is detected from. Rows of JSON and CSV files are JSON text (`row_dicts` decodes them)."""

    rows: datasets.Dataset
    columns: list[str]

    def __len__(self) -> int:
        return len(self.rows)

    def to_list(self) -> list[dict[str, Any]]:
        return [row for row, _, _ in row_dicts(self.rows[:])]


def row_dicts(batch: dict[str, list[Any]]) -> Iterator[tuple[dict[str, Any] | None, str, str]]:
    """(row, bad reason, detail) for each row of a batch: the decoded JSON object of a
    JSON or CSV file's row, or the typed columns of any other source. A row the reader
    found bad comes back as (None, reason, detail)."""
    if JSON_ROW in batch:
        for text, reason, detail in zip(batch[JSON_ROW], batch["_bad_reason"], batch["_bad_detail"], strict=True):
            yield (None, reason, detail) if reason else (json.loads(text), "", "")
        return
    columns = list(batch)
    size = len(batch[columns[0]]) if columns else 0
    for position in range(size):
        yield {column: batch[column][position] for column in columns}, "", ""


def read_rows(label: str, files: list[DataFile], kinds: dict[str, str]) -> RawSource:
    """Local JSON, JSON Lines, CSV or TSV files as rows of JSON text, cached by `datasets`
    under a fingerprint of the files' names and bytes (an edited file is read again).
    `kinds`: the CSV columns parsed as numbers or lists, by the file's column names."""
    gen_kwargs = {"files": tuple(files), "label": label, "kinds": kinds}
    fingerprint = _fingerprint(label, files, kinds)
    try:
        rows = datasets.Dataset.from_generator(
            _generate_rows, features=JSON_FEATURES, gen_kwargs=gen_kwargs, fingerprint=fingerprint
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


def _fingerprint(label: str, files: list[DataFile], kinds: dict[str, str]) -> str:
    """The reader's version and settings, and every file's name, format and bytes in order."""
    digest = hashlib.sha256(f"{READER_VERSION}\0{json.dumps(kinds, sort_keys=True)}".encode())
    for file in files:
        digest.update(f"\0{file.name}\0{file.format}\0".encode())
        try:
            with open(file.path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except OSError as err:
            raise DataError(f"{file_where(label, file.name)}: cannot read the file: {os_reason(err)}") from None
    return digest.hexdigest()


def _generate_rows(files: tuple[DataFile, ...], label: str, kinds: dict[str, str]) -> Iterator[dict[str, Any]]:
    for file in files:
        where = file_where(label, file.name)
        place = f"{file.name} " if file.name else ""  # how a bad row's detail names its file
        with open_stream(file, where) as stream:
            if file.format == "jsonl":
                yield from _json_lines_rows(text_lines(stream, file.encoding, where), place)
            elif file.format == "json":
                yield from _json_document_rows(b"".join(text_lines(stream, file.encoding, where)), where, place)
            else:
                delimiter = "\t" if file.format == "tsv" else ","
                yield from _csv_rows(text_lines(stream, file.encoding, where), delimiter, kinds, where, place)


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


def _bad_row(reason: str, detail: str) -> dict[str, Any]:
    return {JSON_ROW: "", "_keys": [], "_bad_reason": reason, "_bad_detail": detail}


def _json_lines_rows(lines: Iterable[bytes], place: str) -> Iterator[dict[str, Any]]:
    """One row per non-empty line (blank lines are not rows, as for the JSON loader)."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as err:
            byte = line[err.start : err.start + 1]
            yield _bad_row(NOT_UTF8, f"{place}line {number} is not UTF-8 (byte {err.start}: {byte!r})")
        except json.JSONDecodeError as err:
            yield _bad_row(MALFORMED_JSON, f"{place}line {number} is not valid JSON: {err.msg} at character {err.pos}")
        else:
            yield _json_row(value, f"{place}line {number}")


def _json_document_rows(raw: bytes, where: str, place: str) -> Iterator[dict[str, Any]]:
    """A `.json` file: a list of row objects, or JSON Lines under a `.json` name."""
    try:
        document = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        byte = raw[err.start : err.start + 1]
        raise DataError(f"{where}: the file is not UTF-8 (byte {err.start}: {byte!r})") from None
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # several documents: JSON Lines
            yield from _json_lines_rows(io.BytesIO(raw), place)
            return
        raise DataError(f"{where}: not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    if isinstance(document, dict):
        raise DataError(
            f"{where}: the file holds one JSON object; a .json source should hold a list of rows "
            "(or save one row per line as .jsonl)"
        )
    if not isinstance(document, list):
        raise DataError(f"{where}: the file holds a JSON {type(document).__name__}, not a list of rows")
    for i, value in enumerate(document):
        yield _json_row(value, f"{place}item {i}")


def _csv_rows(
    lines: Iterable[bytes], delimiter: str, kinds: dict[str, str], where: str, place: str
) -> Iterator[dict[str, Any]]:
    """One row per CSV record after the header: a record whose field count differs from the
    header's is a bad row; cells are text except in `kinds`' columns (`_csv_value`)."""
    records = _csv_records(lines, delimiter, where)
    _, header = next(records, (0, None))
    if header is None:
        return
    twice = next((name for i, name in enumerate(header) if name in header[:i]), None)
    if twice is not None:
        raise DataError(f"{where}: the header names column {twice!r} twice")
    for number, fields in records:
        if len(fields) != len(header):
            detail = f"{place}line {number} has {len(fields)} fields, the header has {len(header)}"
            yield _bad_row(MALFORMED_CSV, detail)
        else:
            row = {name: _csv_value(cell, kinds.get(name)) for name, cell in zip(header, fields, strict=True)}
            yield _json_row(row, f"{place}line {number}")


def _csv_records(lines: Iterable[bytes], delimiter: str, where: str) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) of each record; blank lines are not records, a quoted cell may
    span lines."""
    # A completion can be longer than the csv module's default cell limit (128 KiB).
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
    reader = csv.reader(_decoded(lines, where), delimiter=delimiter)
    start = 1
    try:
        for fields in reader:
            if fields:
                yield start, fields
            start = reader.line_num + 1  # the reader counts the lines it has taken
    except csv.Error as err:
        raise DataError(f"{where}: line {reader.line_num}: {err}") from None


def _decoded(lines: Iterable[bytes], where: str) -> Iterator[str]:
    """UTF-8 lines as text; a line that is not UTF-8 stops the reading: a CSV record may
    span lines, so it cannot be skipped as a bad row."""
    for number, line in enumerate(lines, start=1):
        try:
            yield line.decode("utf-8")
        except UnicodeDecodeError as err:
            byte = line[err.start : err.start + 1]
            raise DataError(f"{where}: line {number} is not UTF-8 (byte {err.start}: {byte!r})") from None


def _csv_value(cell: str, kind: str | None) -> Any:
    """A cell as the layouts read it: text, or for `kind` a number, a label or a JSON list.
    An empty cell is a missing value (as `datasets`' CSV loader reads it)."""
    if cell == "":
        return None
    if kind == "number":
        return _number(cell)
    if kind == "label":
        return {"true": True, "false": False}.get(cell.strip().lower(), _number(cell))
    if kind == "list" and cell.lstrip().startswith("["):
        try:
            return json.loads(cell)
        except json.JSONDecodeError:
            return cell
    return cell


def _number(cell: str) -> Any:
    for parse in (int, float):
        try:
            return parse(cell)
        except ValueError:
            pass
    return cell


def csv_kinds(columns: dict[str, str] | None) -> dict[str, str]:
    """`CSV_KINDS` by the file's own column names: a source's `columns:` maps ours to its."""
    mapping = columns or {}
    kinds = {name: kind for name, kind in CSV_KINDS.items() if name not in mapping.values()}
    kinds.update({theirs: CSV_KINDS[ours] for ours, theirs in mapping.items() if ours in CSV_KINDS})
    return kinds


# ----------------------------------------------------------------------------- sources


def load_source(src: SourceConfig) -> RawSource:
    """Load one source's rows (all of them: `fraction` is applied by `take_fraction`).
    Local files are one split, whatever `split` says."""
    if not reads_files(src):
        return _load_with_datasets(src)
    files = local_files(src.path)
    if files[0].format == "parquet":
        return _read_parquet(src.path, files)
    return read_rows(src.path, files, csv_kinds(src.columns))


def _read_parquet(label: str, files: list[DataFile]) -> RawSource:
    try:
        rows = datasets.load_dataset("parquet", data_files=[file.path for file in files], split="train")
    except (DatasetGenerationError, pa.ArrowException) as err:  # a corrupt file, or shards whose columns differ
        raise DataError(f"data source {label}: cannot read it as Parquet: {_first_line(err)}") from None
    return RawSource(rows=rows, columns=rows.column_names)


def _load_with_datasets(src: SourceConfig) -> RawSource:
    """A Hub dataset, or a local dataset repository (whose errors are one line)."""
    try:
        rows = datasets.load_dataset(src.path, src.name, split=src.split, revision=src.revision)
    except (DatasetGenerationError, ValueError, FileNotFoundError) as err:
        if not os.path.isdir(src.path):
            raise
        raise DataError(f"data source {source_label(src)}: {_first_line(err)}") from None
    return RawSource(rows=rows, columns=rows.column_names)


def _first_line(err: BaseException) -> str:
    """The innermost cause's message, first line: `datasets` wraps the reader's error."""
    while err.__cause__ is not None:
        err = err.__cause__
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


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
