"""The loss registry: values worked out by hand, identities between losses, the empty
case, parameter errors, metrics and composition. Gradients, padding invariance,
finiteness at margins of +-1e4 and parameter kinds are checked for every registered loss
in test_loss_contract.py."""

from __future__ import annotations

import math

import pytest
import torch

from alignment.config import LossSpec
from alignment.losses import (
    CompositeLoss,
    LossParameterError,
    PairwiseLoss,
    SequenceLogps,
    UnknownLossError,
    available_losses,
    build_loss,
    get_loss,
    loss_class,
)
from alignment.losses.metrics import reward_metrics
from tests.helpers import PAIR, L, batch

# From the registry: the policy's losses that learn from the data's scored lists (offline,
# any feedback) and read nothing beyond the reference, which `batch` provides.
ALL_LOSSES = [
    name
    for name, cls in available_losses().items()
    if cls.model_head == "policy"
    and not cls.online_only
    and cls.feedback == "any"
    and get_loss(name).reads <= {"reference"}
]
PAIRWISE = ["dpo", "ipo", "rdpo", "rpo", "hinge"]


def random_batch(b=3, k=4, seed=0) -> SequenceLogps:
    g = torch.Generator().manual_seed(seed)
    policy = (-20 * torch.rand(b, k, generator=g, dtype=torch.float64)).requires_grad_(True)
    reference = -20 * torch.rand(b, k, generator=g, dtype=torch.float64)
    scores = torch.randperm(k, generator=g).float().repeat(b, 1)
    return SequenceLogps(
        policy=policy,
        reference=reference,
        scores=scores,
        mask=torch.ones(b, k, dtype=torch.bool),
        lengths=torch.randint(1, 30, (b, k), generator=g),
    )


# ---------------------------------------------------------------- hand-computed values


@pytest.mark.parametrize(
    "name, params, expected",
    [
        ("dpo", {}, L(0.1 * 1.5)),
        ("dpo", {"beta": 0.5}, L(0.5 * 1.5)),
        ("dpo", {"label_smoothing": 0.2}, 0.8 * L(0.15) + 0.2 * L(-0.15)),
        ("ipo", {}, (1.0 / 2 - (-0.5) / 5 - 1 / (2 * 0.1)) ** 2),  # h' = 0.6: (0.6 - 5)^2
        ("ipo", {"length_normalize": False, "tau": 0.5}, (1.5 - 1.0) ** 2),
        ("rdpo", {}, (0.9 * L(0.15) - 0.1 * L(-0.15)) / 0.8),
        ("rdpo", {"epsilon": 0.0}, L(0.15)),
        ("rpo", {}, L(0.15) + 0.005 * 0.1 * 1.0),  # NLL(w) = -policy_w = 1
        ("rpo", {"nll": "mean", "eta": 2.0}, L(0.15) + 2.0 * 0.1 * (1.0 / 2)),
        ("hinge", {}, 1 - 0.15),
        ("hinge", {"beta": 1.0}, 0.0),  # beta h = 1.5 > 1
        ("listmle", {"beta": 0.1}, L(0.15)),  # Plackett-Luce over two items is Bradley-Terry
    ],
)
def test_pair_values_by_hand(name, params, expected):
    out = get_loss(name, **params)(batch(**PAIR))
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)


def test_pairwise_loss_is_mean_over_pairs_of_the_batch():
    # List 0 has one pair (best vs worst of 3), list 1 has one pair, list 2 is all tied.
    logps = batch(
        policy=[[-1.0, -2.0, -4.0], [-3.0, -1.0, 0.0], [-1.0, -1.0, -1.0]],
        reference=[[-2.0, -2.0, -2.0], [-1.0, -1.0, 0.0], [0.0, 0.0, 0.0]],
        scores=[[2.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]],
        mask=[[True, True, True], [True, True, False], [True, True, True]],
    )
    # list 0: w = item 0 (r = 1), l = item 2 (r = -2): h = 3.  list 1: w = item 1 (r = 0), l = item 0 (r = -2): h = 2.
    expected = (L(0.1 * 3) + L(0.1 * 2)) / 2
    assert get_loss("dpo")(logps).loss.item() == pytest.approx(expected, rel=1e-12)


def test_rpo_reports_its_parts():
    out = get_loss("rpo", eta=0.5)(batch(**PAIR))
    assert out.metrics["loss/preference"].item() == pytest.approx(L(0.15), rel=1e-12)
    assert out.metrics["loss/nll"].item() == pytest.approx(1.0, rel=1e-12)
    assert out.loss.item() == pytest.approx(L(0.15) + 0.5 * 0.1 * 1.0, rel=1e-12)
    assert out.counts["loss/nll"].item() == 1


def test_lipo_value_by_hand():
    # beta 0.5, r = [0, 2, -2] -> s = [0, 1, -1]: ranks by s are item1=1, item0=2, item2=3.
    logps = batch(policy=[[0.0, 1.0, -3.0]], reference=[[0.0, -1.0, -1.0]], scores=[[2.0, 0.0, 1.0]])
    gain = {0: 2**2 - 1, 1: 2**0 - 1, 2: 2**1 - 1}
    inv_d = {0: 1 / math.log2(1 + 2), 1: 1 / math.log2(1 + 1), 2: 1 / math.log2(1 + 3)}
    s = {0: 0.0, 1: 1.0, 2: -1.0}
    n = 3  # real items in the list
    pairs = [(0, 1), (0, 2), (2, 1)]  # psi_i > psi_j
    terms = [n * abs(gain[i] - gain[j]) * abs(inv_d[i] - inv_d[j]) * L(s[i] - s[j]) for i, j in pairs]
    out = get_loss("lipo", beta=0.5)(logps)
    assert out.loss.item() == pytest.approx(sum(terms) / len(pairs), rel=1e-12)


def test_lipo_ties_in_s_are_ranked_by_position():
    # At policy == reference all s are 0: ranks follow positions 1, 2.
    logps = batch(policy=[[-1.0, -2.0]], reference=[[-1.0, -2.0]], scores=[[0.0, 1.0]])
    weight = 2 * abs((2**1 - 1) - (2**0 - 1)) * abs(1 / math.log2(3) - 1 / math.log2(2))
    assert get_loss("lipo")(logps).loss.item() == pytest.approx(weight * math.log(2), rel=1e-12)


def test_listmle_value_by_hand():
    # Label order: item1 (2), item2 (1), item0 (0); s = r = [0.5, 1, -1] with beta 1.
    logps = batch(policy=[[0.5, 1.0, -1.0]], reference=[[0.0, 0.0, 0.0]], scores=[[0.0, 2.0, 1.0]])
    e = math.exp
    expected = -((1.0 - math.log(e(1.0) + e(-1.0) + e(0.5))) + (-1.0 - math.log(e(-1.0) + e(0.5))) + 0.0)
    assert get_loss("listmle", beta=1.0)(logps).loss.item() == pytest.approx(expected, rel=1e-12)


def test_listmle_ties_in_labels_follow_position_and_mean_is_over_lists():
    # List 0: labels tie -> order item0, item1. List 1: item1 first.
    logps = batch(policy=[[2.0, 0.0], [0.0, 3.0]], reference=[[0.0, 0.0], [0.0, 0.0]], scores=[[1.0, 1.0], [0.0, 5.0]])
    expected = (L(2.0 - 0.0) + L(3.0 - 0.0)) / 2
    assert get_loss("listmle", beta=1.0)(logps).loss.item() == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------- identities


def test_dpo_is_ln2_and_ipo_is_quarter_over_tau_squared_at_the_reference():
    logps = random_batch(b=4, k=5)
    same = SequenceLogps(logps.policy, logps.policy.detach().clone(), logps.scores, logps.mask, logps.lengths)
    for pairs in ("best_vs_worst", "all", "adjacent"):
        assert get_loss("dpo", pairs=pairs)(same).loss.item() == pytest.approx(math.log(2), rel=1e-12)
        for tau in (0.1, 0.7):
            ipo = get_loss("ipo", tau=tau, pairs=pairs)(same).loss.item()
            assert ipo == pytest.approx(1 / (4 * tau**2), rel=1e-12)


@pytest.mark.parametrize("epsilon", [0.05, 0.2, 0.45])
def test_rdpo_is_unbiased_under_label_flips(epsilon):
    # Per pair: (1 - eps) rdpo(h) + eps rdpo(-h) = dpo(h). Flipping the scores flips h.
    for seed in range(3):
        logps = random_batch(b=1, k=2, seed=seed)
        flipped = SequenceLogps(logps.policy, logps.reference, -logps.scores, logps.mask, logps.lengths)
        rdpo = get_loss("rdpo", beta=0.3, epsilon=epsilon)
        mixed = (1 - epsilon) * rdpo(logps).loss + epsilon * rdpo(flipped).loss
        dpo = get_loss("dpo", beta=0.3, label_smoothing=0.0)(logps).loss
        assert mixed.item() == pytest.approx(dpo.item(), rel=1e-10)


@pytest.mark.parametrize("name", PAIRWISE)
def test_pair_modes_agree_on_two_item_lists(name):
    logps = random_batch(b=5, k=2, seed=1)
    values = [get_loss(name, pairs=p)(logps).loss.item() for p in ("best_vs_worst", "all", "adjacent")]
    assert values[1] == pytest.approx(values[0], rel=1e-12)
    assert values[2] == pytest.approx(values[0], rel=1e-12)


@pytest.mark.parametrize("name", PAIRWISE)
@pytest.mark.parametrize("mode", ["all", "adjacent"])
def test_pairs_on_a_list_equal_the_pairwise_loss_on_each_pair(name, mode):
    # Scores 3, 1, 3, 0 (a tie at the top): the pairs are written out by hand.
    policy, reference = [-4.0, -6.0, -5.0, -9.0], [-5.0, -5.5, -4.0, -7.0]
    lengths = [3, 7, 4, 11]
    hand = {
        "all": [(0, 1), (0, 3), (2, 1), (2, 3), (1, 3)],
        "adjacent": [(0, 1), (2, 1), (1, 3)],
    }[mode]
    as_list = batch([policy], [reference], [[3.0, 1.0, 3.0, 0.0]], lengths=[lengths])
    as_pairs = batch(
        [[policy[i], policy[j]] for i, j in hand],
        [[reference[i], reference[j]] for i, j in hand],
        [[1.0, 0.0]] * len(hand),
        lengths=[[lengths[i], lengths[j]] for i, j in hand],
    )
    loss = get_loss(name, pairs=mode)
    assert loss(as_list).loss.item() == pytest.approx(get_loss(name)(as_pairs).loss.item(), rel=1e-12)


# ---------------------------------------------------------------- numerical range


def test_extreme_margin_values():
    good = batch(policy=[[5e3, -5e3]], reference=[[0.0, 0.0]], scores=[[1.0, 0.0]])
    bad = batch(policy=[[-5e3, 5e3]], reference=[[0.0, 0.0]], scores=[[1.0, 0.0]])
    assert get_loss("dpo", beta=1.0)(good).loss.item() == pytest.approx(0.0, abs=1e-300)
    assert get_loss("dpo", beta=1.0)(bad).loss.item() == pytest.approx(1e4, rel=1e-12)
    (grad,) = torch.autograd.grad(get_loss("dpo", beta=1.0)(bad).loss, bad.policy)
    assert grad[0].tolist() == pytest.approx([-1.0, 1.0], rel=1e-12)


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_no_valid_pair_gives_zero_loss_with_a_grad_path(name):
    logps = batch(
        policy=[[-1.0, -2.0], [-3.0, -1.0]],
        reference=[[0.0, 0.0], [0.0, 0.0]],
        scores=[[1.0, 1.0], [2.0, 0.0]],
        mask=[[True, True], [True, False]],
    )
    if name == "listmle":  # ListMLE learns from a tied list too (position order); only padding empties it
        logps.mask[0, 1] = False
    out = get_loss(name)(logps)
    assert out.loss.item() == 0.0
    assert out.loss.grad_fn is not None
    (grad,) = torch.autograd.grad(out.loss, logps.policy)
    assert torch.equal(grad, torch.zeros_like(grad))


# ---------------------------------------------------------------- parameters and errors


def test_registry_lists_every_loss_with_paper_defaults():
    dpo_family = [*PAIRWISE, "lipo", "listmle"]
    assert set(dpo_family) <= set(ALL_LOSSES)
    pairwise = {"pairs": "best_vs_worst", "ld_alpha": None, "wpo": False}
    margin = {**pairwise, "f_divergence": "reverse_kl", "f_alpha": 0.5}
    assert loss_class("dpo").parameters() == {**margin, "beta": 0.1, "label_smoothing": 0.0}
    assert loss_class("ipo").parameters() == {**margin, "tau": 0.1, "length_normalize": True}
    assert loss_class("rdpo").parameters() == {**margin, "beta": 0.1, "epsilon": 0.1}
    assert loss_class("rpo").parameters() == {**margin, "beta": 0.1, "eta": 0.005, "nll": "sum"}
    assert loss_class("hinge").parameters() == {**margin, "beta": 0.1}
    assert loss_class("lipo").parameters() == {"beta": 0.05}
    assert loss_class("listmle").parameters() == {"beta": 0.1}
    for name in dpo_family:
        cls = loss_class(name)
        assert cls.name == name and cls.paper and cls.formula and cls.__doc__ and cls().needs_reference
        assert issubclass(cls, PairwiseLoss) == (name in PAIRWISE)
    assert get_loss("ipo", tau=0.3).reward_scale == 0.3
    assert get_loss("lipo").reward_scale == 0.05


def test_unknown_loss_lists_available():
    with pytest.raises(UnknownLossError) as err:
        get_loss("dpoo")
    message = str(err.value)
    assert "unknown loss 'dpoo'" in message
    for name in available_losses():
        assert name in message


def test_unknown_parameter_lists_allowed():
    with pytest.raises(LossParameterError) as err:
        get_loss("dpo", tau=0.1)
    message = str(err.value)
    assert "'tau'" in message
    for param in ("pairs", "beta", "label_smoothing"):
        assert param in message


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("rdpo", {"epsilon": 0.7}, "epsilon must satisfy 0 <= epsilon < 0.5, got 0.7"),
        ("rdpo", {"epsilon": 0.5}, "epsilon must satisfy 0 <= epsilon < 0.5, got 0.5"),
        ("dpo", {"label_smoothing": -0.1}, "label_smoothing must satisfy 0 <= label_smoothing < 0.5"),
        ("dpo", {"beta": 0.0}, "beta must satisfy beta > 0, got 0.0"),
        ("ipo", {"tau": -1}, "tau must satisfy tau > 0, got -1"),
        ("rpo", {"eta": -0.1}, "eta must satisfy eta >= 0"),
        ("rpo", {"nll": "max"}, "nll must be one of 'sum', 'mean', got 'max'"),
        ("lipo", {"beta": float("nan")}, "beta must be a finite number"),
        ("listmle", {"beta": "0.1"}, "beta must be a finite number"),
        ("hinge", {"beta": True}, "beta must be a finite number"),
        ("ipo", {"length_normalize": "yes"}, "length_normalize must be one of True, False"),
        ("dpo", {"pairs": "every"}, "pairs must be one of 'best_vs_worst', 'all', 'adjacent', got 'every'"),
    ],
)
def test_parameter_ranges(name, params, message):
    with pytest.raises(LossParameterError, match=message.replace("(", r"\(")) as err:
        get_loss(name, **params)
    assert str(err.value).startswith(f"{name}: ")


def test_integer_parameters_become_floats():
    loss = get_loss("dpo", beta=1)
    assert isinstance(loss.beta, float) and loss.beta == 1.0


# ---------------------------------------------------------------- metrics


def test_reward_metrics_by_hand():
    scale = 0.5
    logps = batch(
        # r / scale: list 0 = [1, 1, 2]; list 1 = [1, -1, junk]; list 2 all tied scores.
        policy=[[0.0, -1.0, 1.0], [2.0, 0.0, 50.0], [1.0, 2.0, 3.0]],
        reference=[[-1.0, -2.0, -1.0], [1.0, 1.0, -50.0], [0.0, 0.0, 0.0]],
        scores=[[2.0, 1.0, 0.0], [1.0, 0.0, 9.0], [4.0, 4.0, 4.0]],
        mask=[[True, True, True], [True, True, False], [True, True, True]],
    )
    metrics, counts = reward_metrics(logps, scale)
    # Pairs: list 0 (0,1) tie in r -> 1/2, (0,2) wrong, (1,2) wrong; list 1 (0,1) right.
    assert metrics["reward_accuracy"].item() == pytest.approx((0.5 + 0 + 0 + 1) / 4)
    assert counts["reward_accuracy"].item() == 4
    # chosen: 0.5 * 1 and 0.5 * 1; rejected: 0.5 * 2 and 0.5 * -1; list 2 has no order.
    assert metrics["rewards/chosen"].item() == pytest.approx((0.5 + 0.5) / 2)
    assert metrics["rewards/rejected"].item() == pytest.approx((1.0 - 0.5) / 2)
    assert metrics["rewards/margins"].item() == pytest.approx(((0.5 - 1.0) + (0.5 + 0.5)) / 2)
    assert counts["rewards/chosen"].item() == counts["rewards/margins"].item() == 2
    assert all(not v.requires_grad for v in metrics.values())


def test_reward_accuracy_is_one_half_at_the_reference_and_without_reference_uses_policy():
    logps = random_batch(b=3, k=4)
    same = SequenceLogps(logps.policy, logps.policy.detach(), logps.scores, logps.mask, logps.lengths)
    assert reward_metrics(same, 0.1)[0]["reward_accuracy"].item() == 0.5
    free = batch(policy=[[-1.0, -3.0]], reference=None, scores=[[1.0, 0.0]])
    metrics, _ = reward_metrics(free, 2.0)
    assert metrics["rewards/chosen"].item() == -2.0 and metrics["rewards/rejected"].item() == -6.0
    assert metrics["reward_accuracy"].item() == 1.0


def test_reward_accuracy_counts_a_difference_within_float32_rounding_as_a_tie():
    """Tolerance scale * TIE_RTOL * (|pi_i| + |ref_i| + |pi_j| + |ref_j|), worked by hand:
    every log-prob below has magnitude 100, so the four sum to 400 and the log-ratio
    tolerance is 400 * TIE_RTOL = 7.63e-4 (with scale 0.1 on the reward)."""
    from alignment.losses.metrics import TIE_RTOL

    tol = 400 * TIE_RTOL
    assert tol == pytest.approx(7.62939453125e-4)

    def accuracy(gap: float) -> float:
        # chosen log-ratio = gap, rejected log-ratio = 0
        logps = batch(policy=[[-100.0 + gap, -100.0]], reference=[[-100.0, -100.0]], scores=[[1.0, 0.0]])
        return reward_metrics(logps, 0.1)[0]["reward_accuracy"].item()

    assert accuracy(0.5 * tol) == 0.5 and accuracy(-0.5 * tol) == 0.5  # rounding noise: a tie
    assert accuracy(2 * tol) == 1.0 and accuracy(-2 * tol) == 0.0  # a real preference either way
    # The rewards themselves are reported as they are: the tolerance is only for the count.
    logps = batch(policy=[[-100.0 + 0.5 * tol, -100.0]], reference=[[-100.0, -100.0]], scores=[[1.0, 0.0]])
    assert reward_metrics(logps, 0.1)[0]["rewards/margins"].item() == pytest.approx(0.1 * (-100.0 + 0.5 * tol + 100.0))


def test_no_pairs_gives_zero_metrics_with_zero_counts():
    logps = batch(policy=[[-1.0, -3.0]], reference=[[0.0, 0.0]], scores=[[1.0, 1.0]])
    metrics, counts = reward_metrics(logps, 0.1)
    assert all(v.item() == 0 for v in metrics.values()) and all(c.item() == 0 for c in counts.values())


@pytest.mark.parametrize("name", [name for name in ALL_LOSSES if get_loss(name).needs_reference])
def test_every_loss_reports_the_reward_vocabulary(name):
    # r = scale * (policy - reference); the reference-free losses' rewards are in test_trl_losses.py
    logps = random_batch(seed=4)
    loss = get_loss(name)
    out = loss(logps)
    expected, expected_counts = reward_metrics(logps, loss.reward_scale)
    for key, value in expected.items():
        assert out.metrics[key].item() == pytest.approx(value.item(), rel=1e-12), key
        assert out.counts[key].item() == expected_counts[key].item()
    assert all(not v.requires_grad for v in out.metrics.values())


# ---------------------------------------------------------------- composition


def test_composite_is_the_weighted_sum_of_its_parts():
    logps = random_batch(seed=5)
    specs = [LossSpec("dpo", {"beta": 0.2}, 0.5), {"name": "rpo", "params": {"eta": 1.0}, "weight": 2.0}]
    composite = build_loss(specs)
    assert isinstance(composite, CompositeLoss) and composite.needs_reference
    dpo, rpo = get_loss("dpo", beta=0.2)(logps), get_loss("rpo", eta=1.0)(logps)
    out = composite(logps)
    assert out.loss.item() == pytest.approx(0.5 * dpo.loss.item() + 2.0 * rpo.loss.item(), rel=1e-12)
    assert out.metrics["loss/dpo"].item() == pytest.approx(dpo.loss.item(), rel=1e-12)
    assert out.metrics["loss/rpo"].item() == pytest.approx(rpo.loss.item(), rel=1e-12)
    # The first term's reward metrics (scale beta = 0.2), not the second's.
    assert out.metrics["rewards/margins"].item() == pytest.approx(dpo.metrics["rewards/margins"].item(), rel=1e-12)
    assert out.counts["reward_accuracy"].item() == dpo.counts["reward_accuracy"].item()
    (grad,) = torch.autograd.grad(out.loss, logps.policy)
    (g_dpo,) = torch.autograd.grad(dpo.loss, logps.policy)
    (g_rpo,) = torch.autograd.grad(rpo.loss, logps.policy)
    torch.testing.assert_close(grad, 0.5 * g_dpo + 2.0 * g_rpo)


def test_build_loss_single_term_and_duplicates():
    single = build_loss([LossSpec("ipo", {"tau": 0.2})])
    assert type(single) is loss_class("ipo") and single.tau == 0.2
    assert isinstance(build_loss([LossSpec("ipo", {}, 2.0)]), CompositeLoss)
    twice = build_loss([LossSpec("dpo", {"beta": 0.1}), LossSpec("dpo", {"beta": 0.3})])
    out = twice(random_batch(seed=6))
    assert {"loss/dpo", "loss/dpo_1"} <= set(out.metrics)
    with pytest.raises(LossParameterError, match="weight must be a finite number >= 0"):
        build_loss([LossSpec("dpo", {}, -1.0)])
    with pytest.raises(LossParameterError, match="at least one"):
        build_loss([])
    with pytest.raises(UnknownLossError):
        build_loss([{"name": "nope"}])


def test_trl_loss_type_names_are_registered_aliases():
    """DESIGN.md's names: TRL's `sigmoid` is dpo and `robust` is rdpo, wherever a loss is named."""
    assert type(get_loss("sigmoid", beta=0.3)) is loss_class("dpo") and get_loss("sigmoid", beta=0.3).beta == 0.3
    assert type(get_loss("robust", epsilon=0.2)) is loss_class("rdpo")
    assert {"sigmoid", "robust"}.isdisjoint(available_losses())  # each loss listed once
    logps = random_batch(seed=4)
    assert get_loss("sigmoid")(logps).loss.item() == get_loss("dpo")(logps).loss.item()
    assert get_loss("robust")(logps).loss.item() == get_loss("rdpo")(logps).loss.item()


def test_trl_loss_type_names_work_in_a_recipe(tmp_path):
    from alignment.config import load_config
    from tests.helpers import ROOT

    recipe, out = ROOT / "recipes" / "tiny" / "dpo.yaml", f"--training.output_dir={tmp_path}"
    assert load_config(recipe, [out, "--loss.name=sigmoid"]).loss_fn.name == "dpo"
    config = load_config(recipe, [out, "--loss.name=robust", "--loss.epsilon=0.2"])
    assert (config.loss_fn.name, config.loss_fn.epsilon, config.loss_fn.beta) == ("rdpo", 0.2, 0.1)


def test_an_alias_cannot_take_a_registered_name():
    from dataclasses import dataclass

    from alignment.losses import register_loss

    @dataclass
    class Clash(loss_class("dpo")):
        aliases = ("ipo",)

    with pytest.raises(ValueError, match="loss name 'ipo' is already taken by 'ipo'"):
        register_loss("clash")(Clash)
    assert "clash" not in available_losses()
