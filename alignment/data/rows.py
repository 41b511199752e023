"""One pass over a source's rows: each row decoded, renamed and converted in a single
batched `datasets.map`, bad rows kept and marked for the bad-row policy."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import datasets

from alignment.data.adapters import renamed
from alignment.data.example import BadRowError
from alignment.data.sources import row_dicts, source_label
from alignment.schema import SourceConfig

# Every mapped row keeps its index in the source and, when bad, why: for the bad-row policy.
BOOKKEEPING_FEATURES = datasets.Features(
    {
        "_index": datasets.Value("int64"),
        "_bad_reason": datasets.Value("string"),
        "_bad_detail": datasets.Value("string"),
    }
)
BOOKKEEPING_COLUMNS = list(BOOKKEEPING_FEATURES)
# A row's index in its source, carried as a column once a subset of the rows is selected.
ROW_INDEX = "_row_index"


def code_version(*modules: ModuleType) -> str:
    """A digest of the modules' source. `datasets` fingerprints a module-level function
    by its name only; salting a map with this makes edited code recompute instead of
    reusing a stale cache."""
    return hashlib.sha256(b"".join(Path(module.__file__).read_bytes() for module in modules)).hexdigest()[:16]


def map_rows(
    rows: datasets.Dataset,
    src: SourceConfig,
    convert: Callable[..., dict[str, Any]],
    features: datasets.Features,
    *,
    code_version: str,
    num_proc: int | None,
    desc: str,
    **kwargs: Any,
) -> datasets.Dataset:
    """The rows of source `src` through `convert(row, index, source label, **kwargs)` in
    one batched `datasets.map`: each row decoded (`row_dicts`) and renamed to our column
    names (`src.columns`), to the fields of `features`. A row the reader found bad, or for which `convert` raises
    BadRowError, is kept with the bookkeeping columns saying why (its other fields
    empty), for the bad-row policy. `code_version` salts the cache fingerprint."""
    if len(rows) == 0:  # map would give an empty dataset none of the new columns
        return _empty(features)
    return rows.map(
        _convert_batch,
        batched=True,
        with_indices=True,
        fn_kwargs={
            "convert": convert,
            "names": list(features),
            "source": source_label(src),
            "columns": src.columns,
            "kwargs": kwargs,
            "code_version": code_version,
        },
        remove_columns=rows.column_names,
        features=features,
        num_proc=num_proc,
        desc=desc,
    )


def _convert_batch(
    batch: dict[str, list[Any]],
    indices: list[int],
    *,
    convert: Callable[..., dict[str, Any]],
    names: list[str],
    source: str,
    columns: dict[str, str] | None,
    kwargs: dict[str, Any],
    code_version: str,
) -> dict[str, list[Any]]:
    if ROW_INDEX in batch:  # a subset of the source's rows: the column holds their indices
        indices = batch[ROW_INDEX]
        batch = {name: batch[name] for name in batch if name != ROW_INDEX}
    out: dict[str, list[Any]] = {name: [] for name in names}
    for (row, reason, detail), index in zip(row_dicts(batch), indices, strict=True):
        try:
            if row is None:  # the reader found the row bad (a malformed JSON line)
                raise BadRowError(source, index, reason, detail)
            fields = convert(renamed(row, columns), index, source, **kwargs)
            fields.update(_bad_reason="", _bad_detail="")
        except BadRowError as err:
            fields = {"_bad_reason": err.reason, "_bad_detail": err.detail}
        fields["_index"] = index
        for name, values in out.items():
            values.append(fields.get(name))
    return out


def _empty(features: datasets.Features) -> datasets.Dataset:
    return datasets.Dataset.from_dict({name: [] for name in features}, features=features)
