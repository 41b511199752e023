"""The benchmark's bookkeeping (no timings here: the benchmark is a script). Its token
count must be the number of real tokens our pipeline and TRL's see, and its MFU must
count 6 N + 2 N FLOPs per token."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import benchmark  # noqa: E402

from alignment.config import DataConfig, SourceConfig  # noqa: E402
from alignment.data import build_datasets  # noqa: E402

MICRO = benchmark.Preset(32, 1, 2, 2, 64, 500, 12, 4, 3, 1, k=4)


def test_real_tokens_match_the_tokenized_data(tmp_path):
    from transformers import AutoTokenizer

    benchmark.build_assets(MICRO, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    data = build_datasets(DataConfig(train=[SourceConfig(path=str(tmp_path / "lists.jsonl"))]), tokenizer).train
    counted = sum(len(r["prompt_input_ids"]) + sum(len(c) for c in r["completion_input_ids"]) for r in data)
    assert counted == benchmark.real_tokens(MICRO) == 3 * (12 + 4 * 4)
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 3 * 6  # every pair of each K = 4 list, as TRL users expand them
    assert {p["prompt"] for p in pairs} == {
        r["prompt"] for r in (json.loads(x) for x in (tmp_path / "lists.jsonl").read_text().splitlines())
    }


def test_mfu_counts_six_n_trained_plus_two_n_reference():
    p = benchmark.Preset(4, 1, 2, 1, 8, 10, 1, 1, 1, 1)
    # per layer: q, o (2 h^2) + k, v (2 h^2 * kv/heads) + MLP (3 h i); plus the LM head (vocab h)
    n = 2 * 16 + 2 * 16 * 1 // 2 + 3 * 4 * 8 + 10 * 4
    assert benchmark.mfu(p, tokens_per_s=1e12, peak_tflops=8 * n) == pytest.approx(1.0)
