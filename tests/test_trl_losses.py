"""The losses that TRL's DPOTrainer, CPO, ORPO and KTO trainers offer, beyond DPO, IPO,
robust DPO and hinge: values worked out by hand, the f-divergence, LD-DPO and WPO
options, and lists through `pairs:`.
Their equality with TRL itself is in test_trl_oracle.py; their float64 gradcheck, padding
invariance and finiteness at margins of ±1e4 in test_loss_contract.py."""

from __future__ import annotations

import math

import pytest
import torch

from alignment.losses import SequenceLogps, get_loss, loss_class
from alignment.losses.base import TokenLogps
from tests.helpers import PAIR, L, batch

NEW_PAIRWISE = ["exo_pair", "nca_pair", "bco_pair", "sppo_hard", "apo_zero", "apo_down", "discopop", "sigmoid_norm"]
REFERENCE_FREE = ["simpo", "cpo", "orpo", "sft"]
SORTED = ["aot", "aot_unpaired"]
NEW = NEW_PAIRWISE + REFERENCE_FREE + SORTED


def sigma(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def log_odds(avg: float) -> float:
    return avg - math.log(1 - math.exp(avg))


# PAIR: r_w = 1, r_l = -0.5, h = 1.5; policy_w = -1 (2 tokens), policy_l = -3 (5 tokens).
HAND = [
    (
        "exo_pair",
        {"beta": 1.0},
        sigma(1.5) * (math.log(sigma(1.5)) - math.log(0.999)) + sigma(-1.5) * (math.log(sigma(-1.5)) - math.log(1e-3)),
    ),
    ("nca_pair", {"beta": 1.0}, L(1.0) + 0.5 * L(-1.0) + 0.5 * L(0.5)),
    ("bco_pair", {"beta": 1.0}, L(1.0) + L(0.5)),
    ("sppo_hard", {"beta": 0.5}, (1.0 - 1.0) ** 2 + (-0.5 + 1.0) ** 2),
    ("apo_zero", {"beta": 1.0}, 1 - sigma(1.0) + sigma(-0.5)),
    ("apo_down", {"beta": 1.0}, sigma(1.0) + 1 - sigma(1.5)),
    ("discopop", {"beta": 1.0}, (1 - sigma(30.0)) * L(1.5) + sigma(30.0) * math.exp(-1.5)),
    ("sigmoid_norm", {"beta": 1.0}, L(1.0 / 2 - (-0.5) / 5)),  # L(0.6)
    ("sft", {}, 1.0 / 2),
    ("simpo", {}, L(2.0 * (-1.0 / 2 - (-3.0 / 5)) - 1.0)),  # L(-0.8)
    ("simpo", {"label_smoothing": 0.2}, 0.8 * L(-0.8) + 0.2 * L(0.8)),
    ("cpo", {}, L(0.1 * 2.0) + 1.0 * 0.5),
    ("cpo", {"alpha": 0.0, "beta": 1.0}, L(2.0)),
    ("orpo", {}, 0.5 + 0.1 * L(log_odds(-0.5) - log_odds(-0.6))),
    ("aot", {"beta": 1.0}, L((-1.0 - -3.0) - (-2.0 - -2.5))),  # one pair: sorting changes nothing
    ("aot_unpaired", {"beta": 1.0}, L(1.5)),
    # f-DPO: s = f'(exp(r)) in place of r
    ("dpo", {"beta": 1.0, "f_divergence": "forward_kl"}, L((1 - math.exp(-1.0)) - (1 - math.exp(0.5)))),
    ("dpo", {"beta": 1.0, "f_divergence": "js_divergence"}, L(math.log(sigma(1.0)) - math.log(sigma(-0.5)))),
    (
        "dpo",
        {"beta": 1.0, "f_divergence": "alpha_divergence", "f_alpha": 0.5},
        L((math.exp(-0.5) - 1) / -0.5 - (math.exp(0.25) - 1) / -0.5),
    ),
    ("dpo", {"beta": 1.0, "f_divergence": "alpha_divergence", "f_alpha": 1.0}, L(1.5)),  # the limit is log u
    ("ipo", {"f_divergence": "forward_kl"}, ((1 - math.exp(-1.0)) / 2 - (1 - math.exp(0.5)) / 5 - 5.0) ** 2),
]


@pytest.mark.parametrize("name, params, expected", HAND, ids=[f"{n}{p}" for n, p, _ in HAND])
def test_values_by_hand(name, params, expected):
    out = get_loss(name, **params)(batch(**PAIR))
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)


def pair_with_tokens() -> SequenceLogps:
    """PAIR with per-token log-probs: w has 2 tokens, l has 5; shared length 2."""
    logps = batch(**PAIR)
    dtype = torch.float64
    policy = torch.tensor([[[-0.25, -0.75, 0, 0, 0], [-1.0, -0.5, -0.5, -0.5, -0.5]]], dtype=dtype)
    reference = torch.tensor([[[-1.0, -1.0, 0, 0, 0], [-0.1, -0.2, -0.3, -0.9, -1.0]]], dtype=dtype)
    mask = torch.tensor([[[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]], dtype=torch.bool)
    logps.policy = policy.sum(-1).requires_grad_(True)
    logps.tokens = TokenLogps(policy=policy.requires_grad_(True), reference=reference, old_policy=None, mask=mask)
    return logps


def test_ld_dpo_weights_the_longer_completions_tail_by_hand():
    # shared length 2: policy_l' = -1.5 + a (-1.5), reference_l' = -0.3 + a (-2.2); w is all shared.
    a = 0.5
    r_l = (-1.5 + a * -1.5) - (-0.3 + a * -2.2)  # -0.85 (plain DPO: -0.5)
    logps = pair_with_tokens()
    loss = get_loss("dpo", beta=1.0, ld_alpha=a)
    assert "tokens" in loss.reads and "tokens" not in get_loss("dpo").reads
    assert loss(logps).loss.item() == pytest.approx(L(1.0 - r_l), rel=1e-12)
    # ld_alpha = 1 is DPO itself; 0 keeps only the shared prefix
    assert get_loss("dpo", beta=1.0, ld_alpha=1.0)(logps).loss.item() == pytest.approx(L(1.5), rel=1e-12)
    assert get_loss("dpo", beta=1.0, ld_alpha=0.0)(logps).loss.item() == pytest.approx(
        L(1.0 - (-1.5 - -0.3)), rel=1e-12
    )
    (grad,) = torch.autograd.grad(loss(logps).loss, logps.tokens.policy)
    slope = -sigma(-(1.0 - r_l))  # dL(h)/dh
    # tokens of w and the shared tokens of l count fully, l's tail by a; padding not at all
    expected = torch.tensor(
        [[[slope, slope, 0, 0, 0], [-slope, -slope, -a * slope, -a * slope, -a * slope]]], dtype=torch.float64
    )
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-15)


def test_aot_sorts_the_batch_before_matching():
    # Two pairs. Paired: policy margins [2, -1], reference margins [0.5, 1] -> sorted [-1, 2] - [0.5, 1].
    logps = batch(
        policy=[[-1.0, -3.0], [-2.0, -1.0]],
        reference=[[-2.0, -2.5], [-1.0, -2.0]],
        scores=[[1.0, 0.0], [1.0, 0.0]],
    )
    deltas = [-1.0 - 0.5, 2.0 - 1.0]
    assert get_loss("aot", beta=1.0)(logps).loss.item() == pytest.approx(sum(map(L, deltas)) / 2, rel=1e-12)
    # Unpaired: r_w = [1, -1] -> [-1, 1]; r_l = [-0.5, 1] -> [-0.5, 1]
    deltas = [-1.0 - -0.5, 1.0 - 1.0]
    assert get_loss("aot_unpaired", beta=1.0)(logps).loss.item() == pytest.approx(sum(map(L, deltas)) / 2, rel=1e-12)


def test_reference_free_losses_read_no_reference_and_ignore_one_given():
    for name in REFERENCE_FREE:
        loss = get_loss(name)
        assert not loss.needs_reference, name
        with_reference = loss(batch(**PAIR)).loss.item()
        without = loss(batch(**{**PAIR, "reference": None})).loss.item()
        assert with_reference == without, name  # in a composite with dpo the reference is there: unused


def test_simpo_reports_length_averaged_rewards():
    out = get_loss("simpo", beta=2.0)(batch(**PAIR))
    assert out.metrics["rewards/chosen"].item() == pytest.approx(2.0 * -0.5, rel=1e-12)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(2.0 * -0.6, rel=1e-12)
    assert out.metrics["reward_accuracy"].item() == 1.0


def test_cpo_and_orpo_report_their_parts():
    out = get_loss("cpo", alpha=0.5)(batch(**PAIR))
    assert out.metrics["loss/preference"].item() == pytest.approx(L(0.2), rel=1e-12)
    assert out.metrics["loss/nll"].item() == pytest.approx(0.5, rel=1e-12)
    assert out.loss.item() == pytest.approx(L(0.2) + 0.25, rel=1e-12)
    out = get_loss("orpo")(batch(**PAIR))
    assert out.metrics["loss/nll"].item() == pytest.approx(0.5, rel=1e-12)


@pytest.mark.parametrize("name", NEW_PAIRWISE + REFERENCE_FREE + SORTED)
@pytest.mark.parametrize("mode", ["all", "adjacent"])
def test_pairs_on_a_list_equal_the_loss_on_each_pair(name, mode):
    # Scores 3, 1, 3, 0 (a tie at the top): the pairs written out by hand.
    policy, reference = [-4.0, -6.0, -5.0, -9.0], [-5.0, -5.5, -4.0, -7.0]
    lengths = [3, 7, 4, 11]
    hand = {"all": [(0, 1), (0, 3), (2, 1), (2, 3), (1, 3)], "adjacent": [(0, 1), (2, 1), (1, 3)]}[mode]
    as_list = batch([policy], [reference], [[3.0, 1.0, 3.0, 0.0]], lengths=[lengths])
    as_pairs = batch(
        [[policy[i], policy[j]] for i, j in hand],
        [[reference[i], reference[j]] for i, j in hand],
        [[1.0, 0.0]] * len(hand),
        lengths=[[lengths[i], lengths[j]] for i, j in hand],
    )
    expected = get_loss(name)(as_pairs).loss.item()
    assert get_loss(name, pairs=mode)(as_list).loss.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", NEW)
def test_every_new_loss_reads_the_reference_unless_it_is_reference_free(name):
    # paper, formula, docstring and typed defaults: test_loss_contract.py, for every loss
    assert loss_class(name)().needs_reference == (name not in REFERENCE_FREE)


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("exo_pair", {"epsilon": 0.0}, r"0 < epsilon < 0\.5"),
        ("dpo", {"f_divergence": "kl"}, "f_divergence must be one of 'reverse_kl'"),
        ("dpo", {"ld_alpha": 1.5}, r"0 <= ld_alpha <= 1"),
        ("simpo", {"gamma": -1.0}, "gamma >= 0"),
        ("discopop", {"tau": 0.0}, "tau > 0"),
    ],
)
def test_parameter_ranges(name, params, message):
    from alignment.losses import LossParameterError

    with pytest.raises(LossParameterError, match=message):
        get_loss(name, **params)


def test_wpo_weights_each_pair_by_its_two_completions_without_gradient():
    logps = batch(**PAIR)
    logps.wpo_log_weights = torch.tensor([[-0.2, 0.5]], dtype=torch.float64, requires_grad=True)
    out = get_loss("dpo", wpo=True)(logps)
    assert out.loss.item() == pytest.approx(L(0.15) * math.exp(-0.2 + 0.5), rel=1e-12)
    (grad_policy, grad_weights) = torch.autograd.grad(
        out.loss, (logps.policy, logps.wpo_log_weights), allow_unused=True
    )
    assert grad_weights is None  # the weights are constants of the step, as in the paper
    assert grad_policy[0, 0].item() == pytest.approx(-0.1 * sigma(-0.15) * math.exp(0.3), rel=1e-12)
    assert "wpo_log_weights" in get_loss("dpo", wpo=True).reads and "wpo_log_weights" not in get_loss("dpo").reads


@pytest.mark.parametrize("dtype, avg", [(torch.float32, -1e-30), (torch.float64, -1e-300)])
def test_orpo_gradient_is_finite_for_a_near_certain_completion(dtype, avg):
    # A chosen completion of mean token log-prob just below 0 (probability ~1): log1mexp's
    # branches each see only their own inputs, so the discarded one sends no 0/0 back.
    logps = batch(policy=[[avg, -3.0]], reference=None, scores=[[1.0, 0.0]], dtype=dtype)
    out = get_loss("orpo")(logps)
    (grad,) = torch.autograd.grad(out.loss, logps.policy)
    assert torch.isfinite(out.loss)
    assert torch.isfinite(grad).all(), grad
