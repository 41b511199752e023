"""TRL 1.16's DPOTrainer as an independent oracle for the pairwise losses.

The same tiny policy, a reference from another seed (so the loss is not trivially
ln 2), and the same pairwise batch go through TRL's `compute_loss` and through ours:
`sequence_logps` + the registry loss."""

from __future__ import annotations

import pytest
import torch

from alignment.losses import get_loss
from tests.helpers import (
    batch_logps,
    collate,
    float32_approx,
    tiny_model,
    tiny_rows,
    tiny_tokenizer,
    tokenized,
    trl_dpo_trainer,
)

CASES = [
    # (our loss, our params, TRL loss_type, TRL kwargs)
    ("dpo", {"beta": 0.1}, "sigmoid", {"beta": 0.1}),
    ("dpo", {"beta": 0.5}, "sigmoid", {"beta": 0.5}),
    ("ipo", {"tau": 0.1, "length_normalize": True}, "ipo", {"beta": 0.1}),
    ("rdpo", {"beta": 0.1, "epsilon": 0.2}, "robust", {"beta": 0.1, "label_smoothing": 0.2}),
    ("hinge", {"beta": 0.1}, "hinge", {"beta": 0.1}),
]


@pytest.fixture(scope="module")
def rows():
    # Uneven completion lengths ("9" vs "10") exercise the padding and IPO's length normalisation.
    return tiny_rows("pairs", "train", n=16)


def trl_loss(rows, loss_type, kwargs, tmp_path) -> float:
    policy, reference = tiny_model(seed=0), tiny_model(seed=1)
    trainer = trl_dpo_trainer(policy, reference, rows, tiny_tokenizer(), tmp_path / "trl", loss_type, **kwargs)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 2 * len(rows)  # the whole set in one batch: order cannot matter
    trainer.model.eval()
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, batch).item()


def our_loss(rows, name, params, tmp_path) -> tuple[float, float]:
    policy, reference = tiny_model(seed=0).eval(), tiny_model(seed=1).eval()
    batch = collate(tokenized(rows, tmp_path, max_length=None, max_prompt_length=None))
    logps = batch_logps(policy, reference, batch)
    with torch.no_grad():
        out = get_loss(name, **params)(logps)
    return out.loss.item(), get_loss("dpo")(logps).loss.item()


@pytest.mark.parametrize("name, params, loss_type, kwargs", CASES, ids=[c[0] + str(c[1]) for c in CASES])
def test_loss_matches_trl_dpotrainer(rows, name, params, loss_type, kwargs, tmp_path):
    ours, ours_dpo = our_loss(rows, name, params, tmp_path)
    theirs = trl_loss(rows, loss_type, kwargs, tmp_path)
    assert abs(ours_dpo - 0.6931471805599453) > 1e-3, "reference must differ from the policy"
    assert ours == float32_approx(theirs, ulps=4)
