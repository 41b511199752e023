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
    trl_cpu_args,
    trl_dpo_trainer,
)

CASES = [
    # (our loss, our params, TRL loss_type, TRL kwargs)
    ("dpo", {"beta": 0.1}, "sigmoid", {"beta": 0.1}),
    ("dpo", {"beta": 0.5}, "sigmoid", {"beta": 0.5}),
    ("ipo", {"tau": 0.1, "length_normalize": True}, "ipo", {"beta": 0.1}),
    ("rdpo", {"beta": 0.1, "epsilon": 0.2}, "robust", {"beta": 0.1, "label_smoothing": 0.2}),
    ("hinge", {"beta": 0.1}, "hinge", {"beta": 0.1}),
    ("exo_pair", {"beta": 0.5, "epsilon": 1e-3}, "exo_pair", {"beta": 0.5, "label_smoothing": 1e-3}),
    ("nca_pair", {"beta": 0.5}, "nca_pair", {"beta": 0.5}),
    ("bco_pair", {"beta": 0.5}, "bco_pair", {"beta": 0.5}),
    ("sppo_hard", {"beta": 0.5}, "sppo_hard", {"beta": 0.5}),
    ("apo_zero", {"beta": 0.5}, "apo_zero", {"beta": 0.5}),
    ("apo_down", {"beta": 0.5}, "apo_down", {"beta": 0.5}),
    ("discopop", {"beta": 0.5, "tau": 0.05}, "discopop", {"beta": 0.5, "discopop_tau": 0.05}),
    ("sigmoid_norm", {"beta": 2.0}, "sigmoid_norm", {"beta": 2.0}),
    ("sft", {}, "sft", {}),
    ("aot", {"beta": 0.5, "label_smoothing": 0.1}, "aot", {"beta": 0.5, "label_smoothing": 0.1}),
    ("aot_unpaired", {"beta": 0.5}, "aot_unpaired", {"beta": 0.5}),
    # f-divergences (f-DPO)
    ("dpo", {"f_divergence": "forward_kl"}, "sigmoid", {"f_divergence_type": "forward_kl"}),
    ("dpo", {"f_divergence": "js_divergence"}, "sigmoid", {"f_divergence_type": "js_divergence"}),
    (
        "dpo",
        {"f_divergence": "alpha_divergence", "f_alpha": 0.3},
        "sigmoid",
        {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3},
    ),
    ("ipo", {"f_divergence": "js_divergence"}, "ipo", {"f_divergence_type": "js_divergence"}),
    ("hinge", {"f_divergence": "forward_kl"}, "hinge", {"f_divergence_type": "forward_kl"}),
    ("sigmoid_norm", {"f_divergence": "forward_kl"}, "sigmoid_norm", {"f_divergence_type": "forward_kl"}),
    # LD-DPO: the completions "9" and "10" differ in length, so the tail weight matters
    ("dpo", {"ld_alpha": 0.3}, "sigmoid", {"ld_alpha": 0.3}),
    ("apo_zero", {"ld_alpha": 0.5}, "apo_zero", {"ld_alpha": 0.5}),
    # WPO: each pair weighted by the policy's own probability of its two completions
    ("dpo", {"wpo": True}, "sigmoid", {"use_weighting": True}),
    ("ipo", {"wpo": True}, "ipo", {"use_weighting": True}),
    ("nca_pair", {"wpo": True, "beta": 0.5}, "nca_pair", {"use_weighting": True, "beta": 0.5}),
    ("dpo", {"wpo": True, "ld_alpha": 0.5}, "sigmoid", {"use_weighting": True, "ld_alpha": 0.5}),
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
    loss = get_loss(name, **params)
    logps = batch_logps(policy, reference, batch, reads=loss.reads)
    with torch.no_grad():
        out = loss(logps)
    return out.loss.item(), get_loss("dpo")(logps).loss.item()


@pytest.mark.parametrize("name, params, loss_type, kwargs", CASES, ids=[c[0] + str(c[1]) for c in CASES])
def test_loss_matches_trl_dpotrainer(rows, name, params, loss_type, kwargs, tmp_path):
    ours, ours_dpo = our_loss(rows, name, params, tmp_path)
    theirs = trl_loss(rows, loss_type, kwargs, tmp_path)
    assert abs(ours_dpo - 0.6931471805599453) > 1e-3, "reference must differ from the policy"
    assert ours == float32_approx(theirs, ulps=4)


# ---------------------------------------------------------------- reference-free: TRL's experimental CPO and ORPO


def trl_reference_free(rows, kind, tmp_path, **kwargs):
    """(loss, metrics) of TRL's experimental CPOTrainer or ORPOTrainer on `rows` as one batch."""
    from datasets import Dataset
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    config, trainer_class = (CPOConfig, CPOTrainer) if kind == "cpo" else (ORPOConfig, ORPOTrainer)
    args = trl_cpu_args(config, tmp_path / kind, len(rows), **kwargs)
    trainer = trainer_class(
        model=tiny_model(seed=0), args=args, train_dataset=Dataset.from_list(rows), processing_class=tiny_tokenizer()
    )
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    with torch.no_grad():
        loss, metrics = trainer.get_batch_loss_metrics(trainer.model, batch, "train")
    return loss.item(), metrics


def policy_only_logps(rows, tmp_path):
    from alignment.logprobs import sequence_logps
    from alignment.losses import SequenceLogps

    batch = collate(tokenized(rows, tmp_path, max_length=None, max_prompt_length=None))
    with torch.no_grad():
        policy = sequence_logps(tiny_model(seed=0).eval(), batch)
    return SequenceLogps(policy, None, batch["scores"], batch["mask"], batch["lengths"])


@pytest.mark.parametrize(
    "name, params, kwargs",
    [
        ("cpo", {"beta": 0.5, "alpha": 1.0}, {"beta": 0.5, "cpo_alpha": 1.0}),
        ("cpo", {"beta": 0.1, "alpha": 0.3, "label_smoothing": 0.1}, {"cpo_alpha": 0.3, "label_smoothing": 0.1}),
        (
            "simpo",
            {"beta": 2.0, "gamma": 1.0},
            {"loss_type": "simpo", "beta": 2.0, "simpo_gamma": 1.0, "cpo_alpha": 0.0},
        ),
    ],
)
def test_cpo_and_simpo_match_trl_cpotrainer(rows, name, params, kwargs, tmp_path):
    theirs, _ = trl_reference_free(rows, "cpo", tmp_path, **kwargs)
    ours = get_loss(name, **params)(policy_only_logps(rows, tmp_path)).loss.item()
    assert ours == float32_approx(theirs, ulps=8)


def test_orpo_odds_ratio_term_matches_trl_orpotrainer_and_its_nll_is_the_completions(rows, tmp_path):
    """TRL's ORPO takes its NLL over prompt and completion tokens (as the authors' code
    does); the paper's L_SFT, and ours, is the chosen completion's. So the odds-ratio
    term is compared with TRL's loss less TRL's NLL, and our NLL with a direct sum."""
    theirs, metrics = trl_reference_free(rows, "orpo", tmp_path, beta=0.1)
    logps = policy_only_logps(rows, tmp_path)
    out = get_loss("orpo", beta=0.1)(logps)
    assert out.metrics["loss/preference"].item() == float32_approx(theirs - float(metrics["nll_loss"]), ulps=64)
    chosen = logps.scores.argmax(-1)
    nll = -logps.policy.gather(1, chosen[:, None]).sum() / logps.lengths.gather(1, chosen[:, None]).sum()
    assert out.metrics["loss/nll"].item() == float32_approx(nll.item())
    assert out.loss.item() == pytest.approx(out.metrics["loss/preference"].item() + nll.item(), rel=1e-6)


@pytest.mark.parametrize("alpha", [0.6, 1.0])
def test_reference_update_is_trl_sync_ref_model(alpha):
    """TR-DPO through `reference.update`: one soft (0.6, TRL's default mixup) or hard (1.0)
    update gives TRL's SyncRefModelCallback's reference, parameter for parameter."""
    from trl.trainer.callbacks import SyncRefModelCallback

    from alignment.reference.updates import mix_into

    policy = tiny_model(seed=0)
    ours, theirs = tiny_model(seed=1), tiny_model(seed=1)
    mix_into(ours, policy, alpha)
    SyncRefModelCallback.sync_target_model(policy, theirs, alpha)
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    assert not torch.equal(ours.lm_head.weight, tiny_model(seed=1).lm_head.weight)


@pytest.mark.parametrize(
    "params, kwargs",
    [
        ({"wpo": True, "ld_alpha": 0.5}, {"use_weighting": True, "ld_alpha": 0.5}),
        ({"ld_alpha": 0.2}, {"ld_alpha": 0.2}),
    ],
)
@pytest.mark.parametrize("forward", ["baseline", "shared_prompt", "packed"])
def test_trainer_path_with_token_options_matches_trl(rows, params, kwargs, forward, tmp_path):
    """LD-DPO and WPO through PreferenceTrainer.compute_loss (the per-token and weighted
    forwards of each strategy), against TRL's DPOTrainer."""
    from alignment.trainers.arguments import AlignmentTrainingArguments
    from alignment.trainers.preference import PreferenceTrainer

    trainer = PreferenceTrainer(
        model=tiny_model(seed=0).eval(),
        args=AlignmentTrainingArguments(
            output_dir=str(tmp_path / "ours"), use_cpu=True, report_to="none", forward=forward
        ),
        loss_fn=get_loss("dpo", **params),
        ref_model=tiny_model(seed=1).eval(),
        processing_class=tiny_tokenizer(),
    )
    batch = collate(tokenized(rows, tmp_path, max_length=None, max_prompt_length=None))
    with torch.no_grad():
        ours = trainer.compute_loss(trainer.model, batch).item()
    assert ours == float32_approx(trl_loss(rows, "sigmoid", kwargs, tmp_path), ulps=8)


@pytest.mark.parametrize(
    "specs, loss_types, weights",
    [
        ([{"name": "dpo"}, {"name": "sft", "weight": 0.5}], ["sigmoid", "sft"], [1.0, 0.5]),
        (
            [{"name": "apo_zero", "weight": 0.3}, {"name": "bco_pair", "weight": 2.0}],
            ["apo_zero", "bco_pair"],
            [0.3, 2.0],
        ),
    ],
)
def test_a_weighted_loss_list_is_trls_loss_type_list(rows, specs, loss_types, weights, tmp_path):
    from alignment.losses import build_loss

    policy, reference = tiny_model(seed=0).eval(), tiny_model(seed=1).eval()
    batch = collate(tokenized(rows, tmp_path, max_length=None, max_prompt_length=None))
    with torch.no_grad():
        ours = build_loss(specs)(batch_logps(policy, reference, batch)).loss.item()
    assert ours == float32_approx(trl_loss(rows, loss_types, {"loss_weights": weights}, tmp_path), ulps=8)
