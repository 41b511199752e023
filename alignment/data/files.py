"""Local data files as users have them: a file, a directory of shards or a glob of
shards, all JSON, JSON Lines, CSV, TSV or Parquet, each optionally compressed (gzip,
bz2, xz, zstd: told by its first bytes), with or without a BOM, with LF or CRLF line
endings. Finding them (`local_files`) and opening them as bytes (`open_stream`,
`text_lines`); alignment.data.sources turns their lines into rows."""

from __future__ import annotations

import bz2
import codecs
import glob
import gzip
import io
import lzma
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import ModuleType
from typing import IO, Any

from alignment.data.example import DataError
from alignment.schema import LOCAL_DATA_SUFFIXES, SourceConfig

FORMATS = {suffix: suffix[1:] for suffix in LOCAL_DATA_SUFFIXES}  # ".jsonl" -> "jsonl"
READERS = {"json": "JSON", "jsonl": "JSON", "csv": "CSV", "tsv": "TSV", "parquet": "Parquet"}
# Its compression by its first bytes (a gzip file named .jsonl is still read), and the
# name's compression suffix must agree with them.
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}
MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
# Archives and compressions that are refused by name rather than read as garbage.
UNSUPPORTED = {".zip": "zip", ".lz4": "lz4", ".7z": "7z", ".z": "compress", ".rar": "rar", ".br": "brotli"}
UNSUPPORTED_MAGIC = {b"PK\x03\x04": "zip", b"\x04\x22\x4d\x18": "lz4", b"7z\xbc\xaf": "7z", b"\x1f\x9d": "compress"}
ACCEPTED = ".jsonl, .json, .csv, .tsv or .parquet, optionally compressed as .gz, .bz2, .xz or .zst"
HEAD_BYTES = 1 << 16  # how much of a file tells whether it is empty and what its BOM is


@dataclass(frozen=True)
class DataFile:
    """One local file of a source: its path, how errors name it within the source ("" when
    it is the whole source), its format, compression and text encoding."""

    path: str
    name: str
    format: str
    compression: str | None
    encoding: str = "utf-8"  # utf-8 (a UTF-8 BOM is dropped) or utf-16 (told by its BOM)
    empty: bool = False  # nothing but whitespace, once decompressed


def reads_files(src: SourceConfig) -> bool:
    """Whether this module reads the source's local files; otherwise `datasets.load_dataset`
    does: a Hub dataset, or a local copy of a Hub dataset repository (`_is_repository`)."""
    return src.is_local() and not _is_repository(src.path)


def _is_repository(path: str) -> bool:
    """A directory laid out as a Hub dataset repository, whose splits `datasets` knows: a
    dataset card with a YAML header (README.md), a loading script, or data only in subdirectories."""
    if not os.path.isdir(path):
        return False
    try:
        entries = list(os.scandir(path))
    except OSError:
        return False  # `local_files` says why it cannot be read
    if _has_card(path) or any(entry.name.endswith(".py") for entry in entries):
        return True
    top_level_data = any(entry.is_file() and _format(entry.name) for entry in entries)
    return not top_level_data and any(entry.is_dir() and not entry.name.startswith(".") for entry in entries)


def _has_card(directory: str) -> bool:
    try:
        with open(os.path.join(directory, "README.md"), "rb") as card:
            return card.readline().strip() == b"---"
    except OSError:
        return False


# ----------------------------------------------------------------------------- finding files


def local_files(path: str) -> list[DataFile]:
    """The data files of a local source in the order they are read (sorted by name), all of
    one format. Empty shards of a directory or glob are left out; an empty file given alone
    is an error. Anything unreadable raises a one-line DataError naming the path and why."""
    if os.path.isfile(path):
        file = _data_file(path, "", path)
        if file.empty:
            once = f" once decompressed ({file.compression})" if file.compression else ""
            raise DataError(f"data source {path}: the file is empty{once}")
        return [file]
    files = [_data_file(shard, name, path) for shard, name in _shard_paths(path)]
    kinds = sorted({READERS[file.format] for file in files})
    if len(kinds) > 1:
        raise DataError(
            f"data source {path}: its files mix formats ({', '.join(kinds)}); the shards of one source must "
            "share one format: give each format its own source"
        )
    found = [file for file in files if not file.empty]
    if not found:
        raise DataError(f"data source {path}: all {len(files)} data files are empty")
    return found


def _shard_paths(path: str) -> list[tuple[str, str]]:
    """(path, name within the source) of a directory's or a glob's data files, sorted by name.
    Hidden files and those starting with '_' (`_SUCCESS`) are not data."""
    if os.path.isdir(path):
        try:
            candidates = [(entry.path, entry.name) for entry in os.scandir(path) if entry.is_file()]
        except OSError as err:
            raise DataError(f"data source {path}: cannot list the directory: {os_reason(err)}") from None
        where = "the directory holds"
    elif glob.has_magic(path):
        base = os.path.dirname(path[: min(path.index(c) for c in "*?[" if c in path)])
        matches = [match for match in glob.glob(path, recursive=True) if os.path.isfile(match)]
        candidates = [(match, os.path.relpath(match, base) if base else match) for match in matches]
        where = "the pattern matches"
    else:
        raise DataError(f"data source {path}: no such file or directory")
    found = [(shard, name) for shard, name in candidates if _format(name) and not _hidden(name)]
    if not found:
        raise DataError(f"data source {path}: {where} no data files ({ACCEPTED})")
    return sorted(found, key=lambda item: item[1])


def _hidden(name: str) -> bool:
    return os.path.basename(name).startswith((".", "_"))


def _format(name: str) -> str | None:
    """The format a file's name gives, looking past one compression suffix."""
    stem, suffix = os.path.splitext(name.lower())
    if suffix in COMPRESSIONS or suffix in UNSUPPORTED:
        stem, suffix = os.path.splitext(stem)
    return FORMATS.get(suffix)


def _data_file(path: str, name: str, label: str) -> DataFile:
    """The file's format (by name), compression (by its first bytes), encoding (by its BOM)
    and whether it is empty."""
    where = file_where(label, name)
    file_format = _format(os.path.basename(path))
    if file_format is None:
        raise DataError(f"{where}: cannot tell the format from the name; name it {ACCEPTED}")
    compression = _compression(path, where)
    if compression is not None and file_format == "parquet":
        raise DataError(f"{where}: a {compression}-compressed Parquet file is not read (Parquet compresses itself)")
    file = DataFile(path, name, file_format, compression)
    with open_stream(file, where) as stream:
        head = stream.read(HEAD_BYTES)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return replace(file, encoding="utf-16", empty=not head[2:].replace(b"\x00", b"").strip())
    return replace(file, empty=not head.removeprefix(codecs.BOM_UTF8).strip())


def _compression(path: str, where: str) -> str | None:
    """What the file's first bytes say it is compressed with; refused when the name says one
    that is not read, or a compression the bytes do not show."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(8)
    except OSError as err:
        raise DataError(f"{where}: cannot read the file: {os_reason(err)}") from None
    suffix = os.path.splitext(path.lower())[1]
    refused = UNSUPPORTED.get(suffix) or next((n for m, n in UNSUPPORTED_MAGIC.items() if magic.startswith(m)), None)
    if refused:
        raise DataError(f"{where}: {refused} files are not read; decompress it (gzip, bz2, xz and zstd are read)")
    found = next((name for signature, name in MAGIC.items() if magic.startswith(signature)), None)
    if found is None and suffix in COMPRESSIONS:
        raise DataError(f"{where}: the name ends in {suffix} but the file is not {COMPRESSIONS[suffix]}-compressed")
    return found


def file_where(label: str, name: str) -> str:
    return f"data source {label}: {name}" if name else f"data source {label}"


# ----------------------------------------------------------------------------- opening files


class _CorruptData(Exception):
    """Compressed data that cannot be decompressed (raised by `_ZstdReader`)."""


@contextmanager
def open_stream(file: DataFile, where: str) -> Iterator[IO[bytes]]:
    """The file's bytes, decompressed. A file that cannot be opened or decompressed, at any
    point of the reading, ends it with one DataError line."""
    try:
        with open(file.path, "rb") as handle:
            yield _decompressed(handle, file.compression, where)
    except (OSError, EOFError, lzma.LZMAError, zlib.error, _CorruptData) as err:
        if isinstance(err, OSError) and err.errno is not None:
            raise DataError(f"{where}: cannot read the file: {os_reason(err)}") from None
        raise DataError(f"{where}: corrupt {file.compression} data ({err})") from None


def _decompressed(handle: IO[bytes], compression: str | None, where: str) -> IO[bytes]:
    if compression == "gzip":
        return gzip.GzipFile(fileobj=handle)
    if compression == "bz2":
        return bz2.BZ2File(handle)
    if compression == "xz":
        return lzma.LZMAFile(handle)
    if compression == "zstd":
        try:
            import zstandard
        except ImportError:
            raise DataError(f"{where}: reading zstd files needs the zstandard package: pip install zstandard") from None
        return io.BufferedReader(_ZstdReader(handle, zstandard))
    return handle


class _ZstdReader(io.RawIOBase):
    """zstd frames one after another as a byte stream. Data cut short inside a frame raises:
    zstandard's own stream reader ends quietly there, which would drop rows unnoticed."""

    def __init__(self, compressed: IO[bytes], zstandard: ModuleType) -> None:
        super().__init__()
        self._compressed = compressed
        self._zstandard = zstandard
        self._frame: Any = None  # the decompressor of the current frame
        self._out = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._out:
            if not self._decompress_more():
                return 0
        size = min(len(buffer), len(self._out))
        buffer[:size] = self._out[:size]
        self._out = self._out[size:]
        return size

    def _decompress_more(self) -> bool:
        """Decompress the next compressed bytes; False at the end of the data."""
        between_frames = self._frame is None or self._frame.eof
        data = self._frame.unused_data if between_frames and self._frame is not None else b""
        data = data or self._compressed.read(HEAD_BYTES)  # the next frame may follow the last one's end
        if not data:
            if not between_frames:
                raise _CorruptData("the data ends inside a frame: the file is cut short")
            return False
        if between_frames:
            self._frame = self._zstandard.ZstdDecompressor().decompressobj()
        try:
            self._out = memoryview(self._frame.decompress(data))
        except self._zstandard.ZstdError as err:
            raise _CorruptData(str(err)) from None
        return True


def text_lines(stream: IO[bytes], encoding: str, where: str) -> Iterator[bytes]:
    """The stream's lines as UTF-8 bytes, each with its line ending, the BOM dropped."""
    if encoding == "utf-16":  # transcoded, so the readers see UTF-8 lines
        try:
            for line in io.TextIOWrapper(stream, encoding="utf-16", newline=""):
                yield line.encode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{where}: the file is not valid UTF-16 text ({err.reason})") from None
        return
    for number, line in enumerate(stream):
        yield line.removeprefix(codecs.BOM_UTF8) if number == 0 else line


def os_reason(err: OSError) -> str:
    if isinstance(err, PermissionError):
        return "permission denied"
    return (err.strerror or str(err)).lower()
