"""The `precompute` pass: reference log-probs of every completion stored with the
cached dataset, under a fingerprint of the reference and the data."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import Tensor

from alignment import logprobs as logprobs_module
from alignment.schema import ModelConfig, QuantizationConfig, ReferenceConfig

logger = logging.getLogger(__name__)

REFERENCE_COLUMN = "reference_logps"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def _path_identity(path: str) -> dict[str, Any]:
    """A local checkpoint by its files' names, sizes and modification times (hashing
    gigabytes of weights would cost more than the pass it saves)."""
    root = Path(os.path.expanduser(path))
    if not root.exists():
        return {"hub": path}
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {
        "local": str(root.resolve()),
        "files": [
            (str(p.relative_to(root)) if root.is_dir() else p.name, p.stat().st_size, p.stat().st_mtime_ns)
            for p in files
            if p.suffix in WEIGHT_SUFFIXES or p.name == "config.json"
        ],
    }


def reference_identity(
    model_cfg: ModelConfig, ref_cfg: ReferenceConfig, quantization: QuantizationConfig | None
) -> dict[str, Any]:
    """Everything that determines the reference's weights and numerics."""
    identity: dict[str, Any] = {
        "dtype": model_cfg.dtype,
        "attn_implementation": model_cfg.attn_implementation,
        "revision": model_cfg.revision,
        "quantization": None if quantization is None else vars(quantization),
    }
    if ref_cfg.models is not None:
        identity["soup"] = [(_path_identity(m), w) for m, w in zip(ref_cfg.models, ref_cfg.soup_weights, strict=True)]
    elif ref_cfg.name_or_path is not None:
        identity["model"] = _path_identity(ref_cfg.name_or_path)
    elif model_cfg.config is not None:
        config_file = Path(model_cfg.config)
        config_file = config_file / "config.json" if config_file.is_dir() else config_file
        identity["config"] = json.loads(config_file.read_text())
        identity["init_seed"] = model_cfg.init_seed if ref_cfg.init_seed is None else ref_cfg.init_seed
    else:
        identity["model"] = _path_identity(model_cfg.name_or_path)
    return identity


def reference_fingerprint(identity: Mapping[str, Any], dataset: datasets.Dataset) -> str:
    """The cache key of a precomputed column: the reference, the tokenized data (its
    `datasets` fingerprint covers sources, adaptation and tokenization) and the code
    that computes log-probs."""
    payload = json.dumps(
        {
            "reference": identity,
            "data": dataset._fingerprint,
            "code": Path(logprobs_module.__file__).read_text(),
            "precompute": Path(__file__).read_text(),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def cache_file(dataset: datasets.Dataset, fingerprint: str) -> str | None:
    """Where the column is stored: beside the dataset's own cache files, or nowhere
    when the dataset lives in memory (caching disabled)."""
    if not dataset.cache_files:
        return None
    return os.path.join(os.path.dirname(dataset.cache_files[0]["filename"]), f"reference-logps-{fingerprint}.arrow")


def compute_reference_logps(
    dataset: datasets.Dataset,
    logps_fn: Callable[[dict[str, Tensor]], Tensor],
    collator: Callable[[list[dict[str, Any]]], dict[str, Tensor]],
    batch_size: int,
    accelerator: Accelerator,
) -> list[list[float]]:
    """Reference log-probs of every completion of every row, in row order.

    The rows are cut into fixed batches first and the batches dealt out to processes,
    so every batch has the same contents and padding whatever the number of
    processes: the result is the same as a one-process pass."""
    starts = list(range(0, len(dataset), batch_size))
    rank, world = accelerator.process_index, accelerator.num_processes
    mine: list[tuple[int, list[list[float]]]] = []
    rounds = -(-len(starts) // world)  # every process runs the same number of forwards (ZeRO-3 needs it)
    for step in range(rounds):
        position = step * world + rank
        start = starts[position] if position < len(starts) else starts[-1]
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = {key: value.to(accelerator.device) for key, value in collator(rows).items()}
        with torch.no_grad():
            values = logps_fn(batch).float().cpu()
        if position < len(starts):
            ks = batch["mask"].sum(-1).tolist()
            mine.append((position, [values[b, :k].tolist() for b, k in enumerate(ks)]))
    gathered = gather_object(mine) if world > 1 else mine
    ordered = [rows for _, rows in sorted(gathered, key=lambda item: item[0])]
    return [row for rows in ordered for row in rows]


def _cached_everywhere(path: str | None, accelerator: Accelerator) -> bool:
    """Whether every process finds the cache on its own disk. A collective decision:
    with node-local caches one node may hold the column and another not, and a node
    that skipped the pass would leave the others waiting in its all-gather."""
    found = path is not None and os.path.exists(path)
    if accelerator.num_processes == 1:
        return found
    return all(gather_object([found]))


def add_reference_logps(
    dataset: datasets.Dataset,
    identity: Mapping[str, Any],
    logps_fn: Callable[[dict[str, Tensor]], Tensor],
    collator: Callable[[list[dict[str, Any]]], dict[str, Tensor]],
    batch_size: int,
    accelerator: Accelerator,
    split: str,
) -> datasets.Dataset:
    """`dataset` with a `reference_logps` column (one float per completion), reused
    from the cache when the same reference was already run on the same data.

    Where the column is written: per node. It lives beside the tokenized dataset's own
    cache files, which each node's local main process wrote in that node's datasets
    cache (`main_process_first` is local), so each node's local main process writes its
    own copy from the gathered values and every process reads its own node's file. A
    path is never sent from one node to another: a node-local cache is never read by
    another node. On a cache that all nodes share, the copies are the same bytes and
    land by an atomic rename, so the last writer wins harmlessly."""
    fingerprint = reference_fingerprint(identity, dataset)
    path = cache_file(dataset, fingerprint)
    if _cached_everywhere(path, accelerator):
        logger.info("reference log-probs (%s): reusing the cache %s", split, path)
        return datasets.Dataset.from_file(path)
    logger.info(
        "reference log-probs (%s): computing %d rows on %d process(es)", split, len(dataset), accelerator.num_processes
    )
    values = compute_reference_logps(dataset, logps_fn, collator, batch_size, accelerator)
    if len(values) != len(dataset):
        raise RuntimeError(f"reference precompute produced {len(values)} rows for {len(dataset)}")
    if REFERENCE_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(REFERENCE_COLUMN)
    if path is None:
        return dataset.add_column(REFERENCE_COLUMN, values, new_fingerprint=fingerprint)
    with accelerator.local_main_process_first():
        if accelerator.is_local_main_process and not os.path.exists(path):
            # Written under a temporary name and renamed, so a killed run never leaves a
            # partial file that the next run would take for a finished cache. The name
            # holds the host and pid: two nodes sharing one cache never write one file.
            tmp = f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"
            with_column = dataset.add_column(REFERENCE_COLUMN, values, new_fingerprint=fingerprint)
            with_column.flatten_indices(cache_file_name=tmp)
            os.replace(tmp, path)
            logger.info("reference log-probs (%s): cached in %s", split, path)
    return datasets.Dataset.from_file(path)
