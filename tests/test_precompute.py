"""`reference: precompute` against a live reference model, and its cache."""

from __future__ import annotations

import math

import pytest
import torch

from alignment.config import ModelConfig, ReferenceConfig
from alignment.reference import reference_fingerprint, reference_identity
from tests.helpers import TINY, float32_approx, tiny_rows, tokenized
from tests.launch import logged, train

# Each test launches training runs (seconds to a minute each): the full suite runs them, the fast tier does not.
pytestmark = pytest.mark.slow

STEPS = ["--training.max_steps=6", "--training.logging_steps=1", "--training.eval_on_start=true"]


def test_precompute_matches_a_live_reference_and_reuses_its_cache(tmp_path):
    env = {"HF_DATASETS_CACHE": str(tmp_path / "cache")}
    live, first, second, other = (tmp_path / name for name in ("live", "first", "second", "other"))
    train("dpo", live, "--reference.type=model", *STEPS, env=env)
    run1 = train("dpo", first, "--reference.type=precompute", *STEPS, env=env)
    run2 = train("dpo", second, "--reference.type=precompute", *STEPS, env=env)
    run3 = train("dpo", other, "--reference.type=precompute", "--reference.init_seed=1", *STEPS, env=env)

    # Same per-step losses and eval metrics as the live reference.
    assert len(logged(live)) == 6
    # Bit-identical so far; the reference pass batches and pads the rows differently from training.
    assert logged(first) == float32_approx(logged(live), ulps=4)
    assert logged(first, "eval_loss") == float32_approx(logged(live, "eval_loss"), ulps=4)
    assert logged(live)[0] == float32_approx(math.log(2), ulps=1)

    assert "reference log-probs (train): computing 4000 rows" in run1.stdout
    assert "reference log-probs (eval): computing 400 rows" in run1.stdout
    # The second run finds the column by fingerprint and does no reference pass.
    assert "reference log-probs (train): reusing the cache" in run2.stdout
    assert "reference log-probs (eval): reusing the cache" in run2.stdout
    assert "computing" not in run2.stdout
    assert logged(second) == logged(first)
    # Another reference (seed 1) is another fingerprint: recomputed, and a different start.
    assert "reference log-probs (train): computing 4000 rows" in run3.stdout
    # policy (seed 0) != reference (seed 1): the first loss is no longer ln 2
    assert abs(logged(other, "eval_loss")[0] - 0.693147) > 5e-4


def test_fingerprint_covers_reference_data_and_tokenization(tmp_path):
    for name in "abc":
        (tmp_path / name).mkdir()
    model = ModelConfig(config=str(TINY / "model"), tokenizer=str(TINY / "tokenizer"))
    data = tokenized(tiny_rows(n=8), tmp_path / "a")
    base = reference_fingerprint(reference_identity(model, ReferenceConfig(type="precompute"), None), data)
    assert base == reference_fingerprint(reference_identity(model, ReferenceConfig(type="precompute"), None), data)
    seed = reference_identity(model, ReferenceConfig(type="precompute", init_seed=5), None)
    assert reference_fingerprint(seed, data) != base
    bf16 = ModelConfig(config=str(TINY / "model"), tokenizer=str(TINY / "tokenizer"), dtype="bfloat16")
    assert reference_fingerprint(reference_identity(bf16, ReferenceConfig(type="precompute"), None), data) != base
    identity = reference_identity(model, ReferenceConfig(type="precompute"), None)
    other_rows = tokenized(tiny_rows(n=9), tmp_path / "b")
    assert reference_fingerprint(identity, other_rows) != base
    shorter = tokenized(tiny_rows(n=8), tmp_path / "c", max_length=12, max_prompt_length=6)
    assert reference_fingerprint(identity, shorter) != base


def test_local_checkpoint_identity_follows_its_weight_files(tmp_path):
    from tests.helpers import tiny_model

    tiny_model(0).save_pretrained(tmp_path / "ckpt")
    model = ModelConfig(name_or_path=str(tmp_path / "ckpt"))
    ref = ReferenceConfig(type="precompute")
    before = reference_identity(model, ref, None)
    assert before == reference_identity(model, ref, None)
    state = {k: v + 1 for k, v in tiny_model(0).state_dict().items()}
    with torch.no_grad():
        rewritten = tiny_model(0)
        rewritten.load_state_dict(state)
    rewritten.save_pretrained(tmp_path / "ckpt")
    assert reference_identity(model, ref, None) != before
