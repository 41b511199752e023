"""Data files as users have them: compressed (told by name and by content), with a BOM or
CRLF line endings, a directory or glob of shards, CSV and TSV read as text. Each variant
is made here from the tiny recipe's own pairs and must keep every row through
`build_datasets`; a few train the tiny recipe. A path that cannot be read ends in one line
through the CLI, with exit status 2, no traceback and no output directory."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
from collections.abc import Callable
from pathlib import Path

import datasets
import pytest
import zstandard

from alignment.config import DataConfig, SourceConfig
from alignment.data import BadRowError, build_datasets, load_source
from alignment.data import files as files_module
from alignment.data.sources import source_label
from tests.helpers import ROOT
from tests.launch import log_history, train_in_process

RECIPE = ROOT / "recipes" / "tiny" / "dpo.yaml"
# 64 rows: two steps of the tiny recipe's batch of 32 are exactly one pass over them.
LINES = (ROOT / "recipes" / "tiny" / "data" / "pairs_train.jsonl").read_bytes().splitlines(keepends=True)[:64]
ROWS = [json.loads(line) for line in LINES]
BODY = b"".join(LINES)
PAIR = ("prompt", "chosen", "rejected")


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    """A fresh datasets cache per test, so no test reads another's rows."""
    cache = tmp_path / "hf_cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def test_the_fixture_rows_hold_digit_answers():
    assert len(ROWS) == 64 and ROWS[0] == {"prompt": "3+4=", "chosen": "9", "rejected": "10"}


# ----------------------------------------------------------------------------- the variants


def write_csv(path: Path, rows: list[dict], delimiter: str = ",", newline: str = "\n") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter, lineterminator=newline)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_shards(directory: Path, pattern: str, sizes: list[int]) -> None:
    """LINES cut into shards of `sizes` named by `pattern`, written last first (so that the
    order of writing, and of the directory listing, is not the order of the names); every
    other shard is gzip-compressed."""
    directory.mkdir(parents=True, exist_ok=True)
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    for index in reversed(range(len(sizes))):
        body = b"".join(LINES[starts[index] : starts[index] + sizes[index]])
        path = directory / pattern.format(index)
        if index % 2:
            path = path.with_name(path.name + ".gz")
            body = gzip.compress(body)
        path.write_bytes(body)


def _directory(tmp_path: Path) -> Path:
    directory = tmp_path / "shards"
    write_shards(directory, "part-{:04d}.jsonl", [10, 20, 30, 4])
    (directory / "_SUCCESS").write_bytes(b"")  # what Spark writes beside its shards: not data
    (directory / ".part-0000.jsonl.crc").write_bytes(b"\x00\x01")
    (directory / "NOTES.txt").write_text("where the data came from\n")
    return directory


def _glob(tmp_path: Path) -> str:
    directory = tmp_path / "data"
    write_shards(directory, "train-{:02d}.jsonl", [30, 30, 4])
    (directory / "test-00.jsonl").write_bytes(LINES[0])  # not matched by the pattern
    return f"{directory}/train-*.jsonl*"


VARIANTS: dict[str, Callable[[Path], Path | str]] = {
    "bom-jsonl": lambda d: _write(d / "pairs.jsonl", b"\xef\xbb\xbf" + BODY),
    "crlf-jsonl": lambda d: _write(d / "pairs.jsonl", BODY.replace(b"\n", b"\r\n")),
    "bom-crlf-jsonl": lambda d: _write(d / "pairs.jsonl", b"\xef\xbb\xbf" + BODY.replace(b"\n", b"\r\n")),
    "utf16-jsonl": lambda d: _write(d / "pairs.jsonl", BODY.decode().encode("utf-16")),
    "jsonl-gz": lambda d: _write(d / "pairs.jsonl.gz", gzip.compress(BODY)),
    "jsonl-bz2": lambda d: _write(d / "pairs.jsonl.bz2", bz2.compress(BODY)),
    "jsonl-xz": lambda d: _write(d / "pairs.jsonl.xz", lzma.compress(BODY)),
    "jsonl-zst": lambda d: _write(d / "pairs.jsonl.zst", zstandard.ZstdCompressor().compress(BODY)),
    "gzip-named-jsonl": lambda d: _write(d / "pairs.jsonl", gzip.compress(BODY)),  # told by its bytes
    "json-gz": lambda d: _write(d / "pairs.json.gz", gzip.compress(json.dumps(ROWS).encode())),
    "directory-of-shards": _directory,
    "glob-of-shards": _glob,
    "csv": lambda d: write_csv(d / "pairs.csv", ROWS),
    "crlf-csv": lambda d: write_csv(d / "pairs.csv", ROWS, newline="\r\n"),
    "bom-csv-gz": lambda d: _write(d / "pairs.csv.gz", gzip.compress(b"\xef\xbb\xbf" + _csv_bytes(ROWS))),
    "tsv": lambda d: write_csv(d / "pairs.tsv", ROWS, delimiter="\t"),
    "parquet-shards": lambda d: _parquet_shards(d / "parquet"),
}


def _parquet_shards(directory: Path) -> Path:
    directory.mkdir()
    datasets.Dataset.from_list(ROWS[40:]).to_parquet(str(directory / "train-00001-of-00002.parquet"))
    datasets.Dataset.from_list(ROWS[:40]).to_parquet(str(directory / "train-00000-of-00002.parquet"))
    return directory


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _csv_bytes(rows: list[dict]) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


def decoded_rows(dataset: datasets.Dataset, tok) -> list[tuple[str, ...]]:
    """Each tokenized row as its (prompt, chosen, rejected) text, sorted (the mixture is shuffled)."""
    out = []
    for row in dataset:
        texts = [row["prompt_input_ids"], *row["completion_input_ids"]]
        out.append(tuple(tok.decode(ids, skip_special_tokens=True) for ids in texts))
    return sorted(out)


def build(path: Path | str, tok, **source) -> datasets.Dataset:
    cfg = DataConfig(train=[SourceConfig(path=str(path), **source)], max_length=32, max_prompt_length=16)
    return build_datasets(cfg, tok)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_row_of_each_variant_is_kept(variant, tmp_path, tok):
    path = str(VARIANTS[variant](tmp_path))
    data = build(path, tok)
    report = data.report.sources[0]
    assert (report.source, report.layout, report.rows_loaded, report.rows_used) == (path, "pairwise", 64, 64)
    assert data.report.rows == {"train": 64} and data.report.skipped == {}
    assert decoded_rows(data.train, tok) == sorted(tuple(row[c] for c in PAIR) for row in ROWS)
    # The digit answer of the first row is the text "9", not a number.
    assert ("3+4=", "9", "10") in decoded_rows(data.train, tok)


@pytest.mark.parametrize("kind", ["directory", "glob"])
def test_shards_are_read_in_the_order_of_their_names(kind, tmp_path):
    directory = tmp_path / "shards"
    directory.mkdir()
    # Written in another order than their names': the rows come in name order.
    shards = {"part-0002.jsonl": ROWS[0:10], "part-0000.jsonl": ROWS[10:20], "part-0001.jsonl": ROWS[20:30]}
    for name, rows in shards.items():
        (directory / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    path = str(directory) if kind == "directory" else f"{directory}/part-*.jsonl"
    assert load_source(SourceConfig(path)).to_list() == ROWS[10:30] + ROWS[0:10]

    # The cache follows the shards' names and bytes: renaming one or editing one reads them again.
    (directory / "part-0000.jsonl").rename(directory / "part-0003.jsonl")
    assert load_source(SourceConfig(path)).to_list() == ROWS[20:30] + ROWS[0:10] + ROWS[10:20]
    (directory / "part-0003.jsonl").write_text(json.dumps(ROWS[63]) + "\n")
    assert load_source(SourceConfig(path)).to_list() == ROWS[20:30] + ROWS[0:10] + [ROWS[63]]


def test_a_bad_line_in_a_shard_is_named_by_its_file_and_line(tmp_path, tok):
    directory = tmp_path / "shards"
    directory.mkdir()
    (directory / "part-0.jsonl").write_bytes(b"".join(LINES[:3]))
    (directory / "part-1.jsonl.gz").write_bytes(gzip.compress(LINES[3] + b'{"prompt": \n' + LINES[4]))
    with pytest.raises(BadRowError) as info:
        build(directory, tok)
    assert str(info.value) == (
        f"bad row 4 in {directory}: part-1.jsonl.gz line 2 is not valid JSON: Expecting value at character 12 "
        "[malformed_json]"
    )
    skipped = build_datasets(DataConfig(train=[SourceConfig(str(directory))], bad_rows="skip"), tok)
    assert skipped.report.skipped == {"malformed_json": 1} and len(skipped.train) == 5


# ----------------------------------------------------------------------------- CSV and TSV as text

TEXT_ANSWERS = [
    {"prompt": "3+4=", "chosen": "9", "rejected": "10"},
    {"prompt": "5+2=", "chosen": "007", "rejected": "7.0"},
    {"prompt": "1=1?", "chosen": "true", "rejected": "1e3"},
    {"prompt": "list", "chosen": "[1, 2]", "rejected": "null"},
]


@pytest.mark.parametrize("delimiter", [",", "\t"], ids=["csv", "tsv"])
def test_csv_and_tsv_answers_stay_text(delimiter, tmp_path, tok):
    path = write_csv(tmp_path / ("pairs.csv" if delimiter == "," else "pairs.tsv"), TEXT_ANSWERS, delimiter)
    assert load_source(SourceConfig(str(path))).to_list() == TEXT_ANSWERS
    data = build(path, tok)
    assert len(data.train) == 4
    assert decoded_rows(data.train, tok) == sorted(tuple(row[c] for c in PAIR) for row in TEXT_ANSWERS)


def test_csv_columns_the_layouts_read_as_numbers_are_numbers(tmp_path, tok):
    rows = [
        {"prompt": "3+4=", "chosen": "7", "rejected": "9", "score_chosen": "4.5", "score_rejected": "1", "margin": "2"},
        {"prompt": "1+1=", "chosen": "2", "rejected": "3", "score_chosen": "3", "score_rejected": "0.5", "margin": ""},
    ]
    path = write_csv(tmp_path / "scored.csv", rows)
    assert [row["score_chosen"] for row in load_source(SourceConfig(str(path))).to_list()] == [4.5, 3]
    data = build_datasets(DataConfig(train=[SourceConfig(str(path))]), tok)
    by_prompt = {tok.decode(row["prompt_input_ids"]): row for row in data.train}
    assert by_prompt["3+4="]["scores"] == [4.5, 1.0] and by_prompt["3+4="]["margin"] == 2.0
    assert by_prompt["1+1="]["scores"] == [3.0, 0.5] and by_prompt["1+1="]["margin"] == 0.0  # empty: no margin


def test_csv_label_and_list_columns(tmp_path, tok):
    unpaired = [
        {"prompt": "3+4=", "desirable": value, "completion": answer}
        for value, answer in (("true", "7"), ("False", "9"), ("1", "7"), ("0", "8"))
    ]
    path = write_csv(tmp_path / "unpaired.tsv", unpaired, delimiter="\t")
    source = SourceConfig(str(path), columns={"label": "desirable"})  # the label under its own name
    data = build_datasets(DataConfig(train=[source]), tok, unpaired=True)
    labelled = sorted(
        (tok.decode(r["completion_input_ids"][0], skip_special_tokens=True), r["scores"]) for r in data.train
    )
    assert labelled == [("7", [1.0]), ("7", [1.0]), ("8", [0.0]), ("9", [0.0])]

    ranked = [{"prompt": "3+4=", "completions": json.dumps(["7", "8", "9"]), "scores": "[3, 2, 1]"}]
    data = build_datasets(DataConfig(train=[SourceConfig(str(write_csv(tmp_path / "ranked.csv", ranked)))]), tok)
    row = data.train[0]
    assert row["scores"] == [3.0, 2.0, 1.0]
    assert [tok.decode(ids, skip_special_tokens=True) for ids in row["completion_input_ids"]] == ["7", "8", "9"]


def test_a_csv_cell_that_is_not_a_number_is_a_bad_row(tmp_path, tok):
    rows = [
        {"prompt": "3+4=", "chosen": "7", "rejected": "9", "score_chosen": "high", "score_rejected": "1"},
        {"prompt": "1+1=", "chosen": "2", "rejected": "3", "score_chosen": "2", "score_rejected": "1"},
    ]
    path = write_csv(tmp_path / "scored.csv", rows)
    with pytest.raises(BadRowError) as info:
        build(path, tok)
    assert (
        str(info.value) == f"bad row 0 in {path}: column 'score_chosen' should be a number, got str 'high' [wrong_type]"
    )


def test_a_csv_record_with_the_wrong_number_of_fields_is_a_bad_row(tmp_path, tok):
    path = _write(tmp_path / "pairs.csv", b'prompt,chosen,rejected\r\n3+4=,7,9\r\n"1+\n1=",2,3,4\r\n2+2=,4,5\r\n')
    with pytest.raises(BadRowError) as info:
        build(path, tok)
    assert str(info.value) == f"bad row 1 in {path}: line 3 has 4 fields, the header has 3 [malformed_csv]"
    data = build_datasets(DataConfig(train=[SourceConfig(str(path))], bad_rows="skip"), tok)
    assert data.report.skipped == {"malformed_csv": 1} and len(data.train) == 2


# ----------------------------------------------------------------------------- which paths are local


def test_hub_names_and_dataset_repositories_stay_with_datasets():
    hub = SourceConfig("trl-lib/ultrafeedback_binarized", split="train")
    assert not hub.is_local() and source_label(hub) == "trl-lib/ultrafeedback_binarized[train]"
    # A local copy of a Hub repository (a dataset card with its splits) is read by `datasets`.
    repository = ROOT / "tests" / "fixtures" / "hub" / "HuggingFaceH4" / "ultrafeedback_binarized"
    copy = SourceConfig(str(repository), split="test_prefs")
    assert copy.is_local() and source_label(copy) == f"{repository}[test_prefs]"
    assert len(load_source(copy)) == 12


# ----------------------------------------------------------------------------- training on the variants


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_tiny_recipe_trains_on_every_row(variant, tmp_path, caplog):
    path = VARIANTS[variant](tmp_path)
    out = tmp_path / "out"
    caplog.set_level("INFO", logger="alignment")
    metrics = train_in_process(
        "dpo",
        out,
        f"--data.train=[{path}]",
        "--data.test=[]",
        "--training.max_steps=2",
        "--training.eval_on_start=false",
        "--training.logging_steps=1",
    )
    assert f"[train] {path} (pairwise): 64 rows loaded, 64 used; skipped: none" in caplog.text
    assert "  train: 64 lists (K=2: 64)" in caplog.text
    # Two batches of 32 are one pass over the 64 rows.
    assert metrics["epoch"] == 1.0 and metrics["train_runtime"] > 0
    assert (out / "model.safetensors").exists()
    assert [entry["step"] for entry in log_history(out) if "loss" in entry] == [1, 2]  # both batches trained


# ----------------------------------------------------------------------------- paths that cannot be read


def _unreadable_cases(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """name -> (the data path, the one line the CLI prints)."""
    d = tmp_path / "files"
    d.mkdir()
    mixed, empty_dir, notes, blank = d / "mixed", d / "empty_dir", d / "notes", d / "blank_shards"
    for directory in (mixed, empty_dir, notes, blank):
        directory.mkdir()
    _write(mixed / "a.jsonl", BODY)
    write_csv(mixed / "b.csv", ROWS)
    _write(notes / "README.txt", b"no data here\n")
    _write(blank / "part-0.jsonl", b"")
    _write(blank / "part-1.jsonl.gz", gzip.compress(b"\n"))
    lz4 = _write(d / "pairs.jsonl.lz4", b"\x04\x22\x4d\x18" + BODY)
    zipped = _write(d / "pairs.jsonl", b"PK\x03\x04" + BODY)
    truncated = _write(d / "cut.jsonl.gz", gzip.compress(BODY)[:200])
    cut_zst = _write(d / "cut.jsonl.zst", zstandard.ZstdCompressor().compress(BODY)[:200])
    not_gzip = _write(d / "plain.jsonl.gz", BODY)
    empty_gz = _write(d / "empty.jsonl.gz", gzip.compress(b""))
    bad_utf16 = _write(d / "odd.jsonl", b"\xff\xfe" + BODY.decode().encode("utf-16-le") + b"\x00")
    no_format = _write(d / "pairs.txt", BODY)
    not_parquet = _write(d / "pairs.parquet", BODY)
    missing = d / "missing.jsonl.gz"
    config, data = "alignment: config error: data source", "alignment: data error: data source"
    return {
        "missing-file": (str(missing), f"{config} {str(missing)!r}: file not found"),
        "missing-directory": (f"{d}/nowhere/", f"{config} {f'{d}/nowhere/'!r}: no such file or directory"),
        "glob-matching-nothing": (
            f"{d}/train-*.jsonl",
            f"{config} {f'{d}/train-*.jsonl'!r}: no file matches the pattern",
        ),
        "unknown-compression": (
            str(lz4),
            f"{data} {lz4}: lz4 files are not read; decompress it (gzip, bz2, xz and zstd are read)",
        ),
        "zip-under-a-jsonl-name": (
            str(zipped),
            f"{data} {zipped}: zip files are not read; decompress it (gzip, bz2, xz and zstd are read)",
        ),
        "corrupt-gzip": (
            str(truncated),
            f"{data} {truncated}: corrupt gzip data "
            "(Compressed file ended before the end-of-stream marker was reached)",
        ),
        "corrupt-zstd": (
            str(cut_zst),
            f"{data} {cut_zst}: corrupt zstd data (the data ends inside a frame: the file is cut short)",
        ),
        "gz-name-not-gzip": (
            str(not_gzip),
            f"{data} {not_gzip}: the name ends in .gz but the file is not gzip-compressed",
        ),
        "empty-after-decompression": (str(empty_gz), f"{data} {empty_gz}: the file is empty once decompressed (gzip)"),
        "bad-utf16": (str(bad_utf16), f"{data} {bad_utf16}: the file is not valid UTF-16 text (truncated data)"),
        "unknown-format": (
            str(no_format),
            f"{data} {no_format}: cannot tell the format from the name; name it {files_module.ACCEPTED}",
        ),
        "not-parquet": (
            str(not_parquet),
            f"{data} {not_parquet}: cannot read it as Parquet: Parquet magic bytes not found in footer. "
            "Either the file is corrupted or this is not a parquet file.",
        ),
        "mixed-directory": (
            str(mixed),
            f"{data} {mixed}: its files mix formats (CSV, JSON); the shards of one source must share one format: "
            "give each format its own source",
        ),
        "empty-directory": (
            str(empty_dir),
            f"{data} {empty_dir}: the directory holds no data files ({files_module.ACCEPTED})",
        ),
        "directory-without-data": (
            str(notes),
            f"{data} {notes}: the directory holds no data files ({files_module.ACCEPTED})",
        ),
        "all-shards-empty": (str(blank), f"{data} {blank}: all 2 data files are empty"),
    }


UNREADABLE = [
    "missing-file",
    "missing-directory",
    "glob-matching-nothing",
    "unknown-compression",
    "zip-under-a-jsonl-name",
    "corrupt-gzip",
    "corrupt-zstd",
    "gz-name-not-gzip",
    "empty-after-decompression",
    "bad-utf16",
    "unknown-format",
    "not-parquet",
    "mixed-directory",
    "empty-directory",
    "directory-without-data",
    "all-shards-empty",
]


def _cli_one_line(path: str, tmp_path: Path, capsys) -> tuple[int, list[str], str]:
    from alignment.cli import train_main

    capsys.readouterr()
    out = tmp_path / "out"
    code = train_main(
        ["--config", str(RECIPE), f"--training.output_dir={out}", f"--data.train=[{path}]", "--data.test=[]"]
    )
    err = capsys.readouterr().err
    assert not out.exists()
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.startswith("alignment:")], err


@pytest.mark.parametrize("case", UNREADABLE)
def test_an_unreadable_path_is_one_line(case, tmp_path, capsys):
    cases = _unreadable_cases(tmp_path)
    assert sorted(cases) == sorted(UNREADABLE)
    path, line = cases[case]
    code, lines, err = _cli_one_line(path, tmp_path, capsys)
    assert (code, lines) == (2, [line]), err


def test_permission_denied_is_one_line(tmp_path, capsys, monkeypatch):
    """Simulated, as root (CI containers) reads any file whatever its mode."""
    path = _write(tmp_path / "secret.jsonl.gz", gzip.compress(BODY))
    real_open = open

    def guarded_open(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(files_module, "open", guarded_open, raising=False)
    code, lines, err = _cli_one_line(str(path), tmp_path, capsys)
    assert (code, lines) == (
        2,
        [f"alignment: data error: data source {path}: cannot read the file: permission denied"],
    ), err
