"""The benchmark's bookkeeping (no timings here: the benchmark is a script). Its token
count must be the number of real tokens our pipeline and TRL's see, and its FLOP count
must follow the weights and the layouts that are actually computed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import benchmark  # noqa: E402
import flops  # noqa: E402

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


def test_body_weights_are_the_models_own_projection_weights(tmp_path):
    """Shape.body_weights against the parameters of the model that is built: every
    weight matrix except the embeddings, the head and the norms."""
    from transformers import AutoModelForCausalLM

    gqa = benchmark.Preset(32, 2, 4, 2, 48, 500, 12, 4, 3, 1)
    benchmark.build_assets(gqa, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    projections = sum(
        p.numel()
        for name, p in model.named_parameters()
        if p.dim() == 2 and "embed" not in name and "lm_head" not in name
    )
    shape = flops.Shape.of(model)
    assert shape.body_weights == projections
    # By hand: q, o 32 x 32 each; k, v 32 x 16 each (2 of 4 heads of 8); gate, up, down 32 x 48.
    assert projections == 2 * (2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 48)


def test_forward_flops_by_hand():
    shape = flops.Shape(hidden=4, layers=2, heads=2, kv_heads=1, head_dim=2, intermediate=8, vocab=10)
    body = 2 * (2 * 4 * 4 + 2 * 4 * 2 + 3 * 4 * 8)  # 2 layers: q, o + k, v + MLP
    assert shape.body_weights == body == 288
    # 3 rows of width 5, logits at 7 positions
    expected = 2 * body * 15 + 4 * 2 * 4 * 3 * 25 + 2 * 4 * 10 * 7
    assert shape.forward(3, 5, head_positions=7) == expected


def test_our_flops_follow_the_layout_each_strategy_builds(tmp_path):
    """Two lists with prompts of 3 and 2 tokens and completions of (2, 1) and (1, 2):
    shared_prompt computes rows of 3 + 3 and 2 + 3 tokens, padded to 6, logits at the 6
    completion tokens; baseline 4 rows of prompt + completion padded to 5, logits at all
    20 positions; packed one row of the 4 sequences, 5 + 4 + 3 + 4 = 16 tokens."""
    from alignment.data import PreferenceCollator

    rows = [
        {"prompt_input_ids": [5, 6, 7], "completion_input_ids": [[8, 9], [10]], "scores": [1.0, 0.0]},
        {"prompt_input_ids": [5, 6], "completion_input_ids": [[11], [12, 13]], "scores": [1.0, 0.0]},
    ]
    batch = PreferenceCollator(pad_token_id=0)(rows)
    shape = flops.Shape(hidden=4, layers=1, heads=1, kv_heads=1, head_dim=4, intermediate=4, vocab=16)
    assert flops.ours_forward_flops(shape, [batch], "shared_prompt") == shape.forward(2, 6, head_positions=6)
    assert flops.ours_forward_flops(shape, [batch], "baseline") == shape.forward(4, 5, head_positions=20)
    assert flops.ours_forward_flops(shape, [batch], "packed") == shape.forward(1, 16, head_positions=6)
