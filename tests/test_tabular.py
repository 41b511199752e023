"""The tabular theory of Nash-MD (Munos et al. 2023): the geometric mixture, the regularised
Nash equilibrium and its duality gap checked independently (closed form, brute-force grid),
last-iterate convergence of tabular Nash-MD on an intransitive game, and input validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alignment.tabular_nash import (
    best_response,
    cyclic_preference_matrix,
    duality_gap,
    geometric_mixture,
    kl,
    nash_md,
    nash_md_step,
    regularized_nash_equilibrium,
    total_variation,
)


def t64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# Five responses in a rock-paper-scissors cycle and a reference that favours the first ones,
# so pi* is neither mu nor uniform.
P5 = cyclic_preference_matrix(5, 0.8)
MU5 = t64([0.4, 0.25, 0.15, 0.12, 0.08])


def random_preference_matrix(n: int, seed: int) -> torch.Tensor:
    """1/2 + A with A skew-symmetric, entries in [1/2 - 0.45, 1/2 + 0.45]: P + P^T = 1 exactly."""
    g = torch.Generator().manual_seed(seed)
    upper = torch.triu(0.9 * torch.rand(n, n, generator=g, dtype=torch.float64) - 0.45, diagonal=1)
    return 0.5 + upper - upper.T


def fixed_point_residual(pi, P, mu, tau) -> float:
    return (pi - torch.softmax(torch.log(mu) + P @ pi / tau, dim=-1)).abs().sum().item()


# ---------------------------------------------------------------- small pieces


def test_geometric_mixture_endpoints_and_hand_value():
    pi, mu = t64([0.5, 0.25, 0.25]), t64([0.25, 0.25, 0.5])
    torch.testing.assert_close(geometric_mixture(pi, mu, 0.0), pi, rtol=0, atol=1e-15)
    torch.testing.assert_close(geometric_mixture(pi, mu, 1.0), mu, rtol=0, atol=1e-15)
    # beta = 1/2: sqrt(pi mu) = (sqrt2/4, 1/4, sqrt2/4), which sums to (2 sqrt2 + 1)/4.
    r2 = math.sqrt(2)
    expected = t64([r2, 1.0, r2]) / (2 * r2 + 1)
    torch.testing.assert_close(geometric_mixture(pi, mu, 0.5), expected, rtol=0, atol=1e-15)
    # A response pi never plays stays at 0 for beta < 1 and gets mu's mass at beta = 1 (no nan from 0 * log 0).
    sparse = t64([0.0, 0.5, 0.5])
    assert geometric_mixture(sparse, mu, 0.3)[0].item() == 0.0
    torch.testing.assert_close(geometric_mixture(sparse, mu, 1.0), mu, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="beta"):
        geometric_mixture(pi, mu, 1.5)


def test_kl_and_total_variation_values():
    assert total_variation(t64([1.0, 0.0]), t64([0.0, 1.0])) == 1.0
    assert total_variation(t64([0.5, 0.3, 0.2]), t64([0.2, 0.3, 0.5])) == pytest.approx(0.3, abs=1e-15)
    # 0 log 0 = 0: only the two halves count, each log(0.5 / 0.25).
    assert kl(t64([0.5, 0.5, 0.0]), t64([0.25, 0.25, 0.5])) == pytest.approx(math.log(2), abs=1e-15)
    assert kl(MU5, MU5) == 0.0
    assert kl(t64([0.5, 0.5]), t64([1.0, 0.0])) == math.inf


def test_cyclic_preference_matrix_has_no_condorcet_winner():
    expected = t64([[0.5, 0.7, 0.3], [0.3, 0.5, 0.7], [0.7, 0.3, 0.5]])
    torch.testing.assert_close(cyclic_preference_matrix(3, 0.4), expected, rtol=0, atol=1e-15)
    P = cyclic_preference_matrix(7, 0.3)
    assert torch.equal(P + P.T, torch.ones(7, 7, dtype=torch.float64))
    assert ((P > 0.5).sum(dim=1) == 3).all() and ((P < 0.5).sum(dim=1) == 3).all()
    with pytest.raises(ValueError, match="odd"):
        cyclic_preference_matrix(4, 0.5)


def test_nash_md_step_matches_the_update_written_in_numpy():
    pi, mu, P = np.array([0.6, 0.3, 0.1]), np.array([0.2, 0.3, 0.5]), cyclic_preference_matrix(3, 0.5).numpy()
    tau, eta = 0.5, 0.4
    mix = pi ** (1 - eta * tau) * mu ** (eta * tau)
    mix /= mix.sum()
    expected = mix * np.exp(eta * P @ mix)
    expected /= expected.sum()
    got = nash_md_step(t64(pi), t64(P), t64(mu), tau, eta)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-15)
    iterates = nash_md(t64(P), t64(mu), tau, eta, steps=3, pi0=t64(pi))
    assert iterates.shape == (4, 3)
    torch.testing.assert_close(iterates[0], t64(pi), rtol=0, atol=0)
    torch.testing.assert_close(iterates[1], got, rtol=0, atol=1e-15)
    torch.testing.assert_close(nash_md(t64(P), t64(mu), tau, eta, steps=0)[0], t64(mu), rtol=0, atol=0)


# ---------------------------------------------------------------- the regularised equilibrium


@pytest.mark.parametrize("tau", [0.02, 0.3, 3.0])
@pytest.mark.parametrize("game", ["cyclic", "random"])
def test_equilibrium_solves_the_fixed_point_and_closes_the_gap(game, tau):
    if game == "cyclic":
        P, mu = P5, MU5
    else:
        P = random_preference_matrix(7, seed=1)
        mu = torch.softmax(torch.randn(7, generator=torch.Generator().manual_seed(2), dtype=torch.float64), dim=0)
    pi = regularized_nash_equilibrium(P, mu, tau)
    assert pi.sum().item() == pytest.approx(1, abs=1e-14) and (pi > 0).all()
    assert fixed_point_residual(pi, P, mu, tau) < 1e-10
    assert abs(duality_gap(pi, P, mu, tau)) < 1e-10


@pytest.mark.parametrize("p, tau", [(0.8, 0.5), (0.3, 0.1), (0.99, 2.0)])
def test_equilibrium_of_a_two_response_game_in_closed_form(p, tau):
    # With P = [[1/2, p], [1 - p, 1/2]], (P pi)_0 - (P pi)_1 = p - 1/2 for every pi, so the fixed point
    # pi* ∝ mu exp(P pi* / tau) has log(pi*_0 / pi*_1) = log(mu_0 / mu_1) + (p - 1/2) / tau.
    P, mu = t64([[0.5, p], [1 - p, 0.5]]), t64([0.3, 0.7])
    x = 1 / (1 + math.exp(-(math.log(0.3 / 0.7) + (p - 0.5) / tau)))
    torch.testing.assert_close(regularized_nash_equilibrium(P, mu, tau), t64([x, 1 - x]), rtol=0, atol=1e-13)


def test_equilibrium_solver_reports_failure():
    with pytest.raises(RuntimeError, match="residual"):
        regularized_nash_equilibrium(P5, MU5, 0.1, max_iter=0)


def test_duality_gap_is_positive_off_equilibrium_and_zero_at_it():
    tau = 0.2
    assert (P5 - 0.5).fill_diagonal_(1).min(dim=1).values.max() < 0  # no row beats every other
    pi_star = regularized_nash_equilibrium(P5, MU5, tau)
    uniform = torch.full((5,), 0.2, dtype=torch.float64)
    assert duality_gap(MU5, P5, MU5, tau) > 1e-3
    assert duality_gap(uniform, P5, MU5, tau) > 1e-3
    assert abs(duality_gap(pi_star, P5, MU5, tau)) < 1e-12
    # gap(pi) = tau KL(pi || best response to pi), the identity the docstring derives.
    for pi in (MU5, uniform, t64([0.1, 0.1, 0.1, 0.1, 0.6])):
        assert duality_gap(pi, P5, MU5, tau) == pytest.approx(tau * kl(pi, best_response(pi, P5, MU5, tau)), abs=1e-14)


def test_duality_gap_matches_brute_force_maximum_over_the_simplex():
    P, mu, tau = cyclic_preference_matrix(3, 0.6), t64([0.5, 0.3, 0.2]), 0.5
    pi = t64([0.2, 0.5, 0.3])
    # Every point of the simplex with coordinates in multiples of 1/N.
    N = 400
    i, j = torch.meshgrid(torch.arange(N + 1), torch.arange(N + 1), indexing="ij")
    keep = i + j <= N
    q = torch.stack([i[keep], j[keep], N - i[keep] - j[keep]], dim=1).to(torch.float64) / N
    kl_q = (torch.special.xlogy(q, q) - torch.special.xlogy(q, mu)).sum(dim=1)
    best_on_grid = (q @ (P @ pi) - tau * kl_q).max().item()
    grid_gap = best_on_grid - ((pi @ P @ pi).item() - tau * kl(pi, mu))
    gap = duality_gap(pi, P, mu, tau)
    assert gap > 1e-3
    assert grid_gap <= gap + 1e-14  # the closed form is the true max, the grid only samples it
    assert gap - grid_gap < 1e-5  # and the grid gets close: the objective is smooth near its maximiser


# ---------------------------------------------------------------- tabular Nash-MD


def test_tabular_nash_md_converges_to_the_regularized_nash_equilibrium(record_property):
    P, mu, tau, eta, T = P5, MU5, 1.0, 0.05, 400  # eta * tau = 0.05
    others = ~torch.eye(5, dtype=torch.bool)
    assert not any((P[i][others[i]] > 0.5).all() for i in range(5)), "P must have no Condorcet winner"
    pi_star = regularized_nash_equilibrium(P, mu, tau)
    assert total_variation(pi_star, mu) > 0.04  # a real move away from mu, so convergence means something

    iterates = nash_md(P, mu, tau, eta, T)
    kls = [kl(pi_star, pi) for pi in iterates]
    tvs = [total_variation(pi_star, pi) for pi in iterates]
    checkpoints = [0, 10, 25, 50, 100, T]
    assert all(kls[a] > kls[b] for a, b in zip(checkpoints, checkpoints[1:], strict=False))
    assert all(tvs[a] > tvs[b] for a, b in zip(checkpoints, checkpoints[1:], strict=False))
    # Strictly monotone until the iterates reach their limit (which sits O(eta / tau) from pi*, below).
    settle = next(t for t, v in enumerate(kls) if v < 1.01 * kls[-1])
    assert settle > 50 and all(kls[t + 1] < kls[t] for t in range(settle))
    assert kls[T] < 1e-3 * kls[0]
    assert tvs[T] < 1e-3

    # Munos et al. 2023, Theorem 1: KL(pi*, pi_{t+1}) <= (1 - eta tau)^t KL(pi*, pi_0) + 2 eta / tau,
    # from mu and from a start far from pi* (where the contraction term, not 2 eta / tau, dominates).
    far = t64([0.01, 0.01, 0.01, 0.01, 0.96])
    far_kls = [kl(pi_star, pi) for pi in nash_md(P, mu, tau, eta, T, pi0=far)]
    assert far_kls[0] > 10 * (2 * eta / tau)
    for curve in (kls, far_kls):
        for t in (1, 5, 20, 50, 100, T - 1):
            assert curve[t + 1] <= (1 - eta * tau) ** t * curve[0] + 2 * eta / tau

    print(f"tabular Nash-MD: TV(pi_T, pi*) = {tvs[T]:.2e}, KL(pi*, pi_T) = {kls[T]:.2e} after T={T} steps")
    record_property("tabular_nash_md_tv_at_T", tvs[T])
    record_property("tabular_nash_md_kl_at_T", kls[T])
    record_property("tabular_nash_md_T", T)


def test_nash_md_limit_is_biased_by_order_eta_and_approaches_pi_star():
    # The fixed point of the update is pi ∝ mu exp(P(y > pi^mu) / tau): the payoff is taken against the
    # mixture pi^mu, not pi, so it misses pi* by O(eta / tau); halving eta halves the distance.
    tau = 1.0
    pi_star = regularized_nash_equilibrium(P5, MU5, tau)
    distances = []
    for eta in (0.1, 0.05, 0.025):
        pi = nash_md(P5, MU5, tau, eta, steps=round(40 / (eta * tau)))[-1]
        mix = geometric_mixture(pi, MU5, eta * tau)
        torch.testing.assert_close(pi, torch.softmax(torch.log(MU5) + P5 @ mix / tau, dim=0), rtol=0, atol=1e-12)
        distances.append(total_variation(pi, pi_star))
    assert distances[-1] < 3e-4
    for coarse, fine in zip(distances, distances[1:], strict=False):
        assert 1.8 < coarse / fine < 2.2


def test_nash_md_last_iterate_does_not_depend_on_the_start():
    tau, eta, T = 0.5, 0.2, 600
    from_mu = nash_md(P5, MU5, tau, eta, T)[-1]
    near_vertex = t64([1e-6, 1e-6, 1e-6, 1e-6, 1 - 4e-6])
    from_vertex = nash_md(P5, MU5, tau, eta, T, pi0=near_vertex)[-1]
    assert total_variation(MU5, near_vertex) > 0.9
    assert total_variation(from_mu, from_vertex) < 1e-6
    # The geometric mixture keeps zeros, so a start without full support would stay on its face.
    with pytest.raises(ValueError, match="pi0 must be strictly positive"):
        nash_md(P5, MU5, tau, eta, T, pi0=t64([0.0, 0.0, 0.0, 0.0, 1.0]))


# ---------------------------------------------------------------- validation

GOOD_P, GOOD_MU = cyclic_preference_matrix(3, 0.5), t64([0.5, 0.3, 0.2])
BAD_GAMES = [
    (t64([[0.5, 0.7], [0.7, 0.5]]), t64([0.5, 0.5]), 0.5, r"P \+ P\^T = 1"),
    (t64([[0.5, 0.6, 0.4], [0.4, 0.5, 0.6]]), GOOD_MU, 0.5, "square"),
    (GOOD_P, t64([0.5, 0.3, 0.3]), 0.5, "mu must sum to 1"),
    (GOOD_P, t64([0.8, 0.2, 0.0]), 0.5, "mu must be strictly positive"),
    (GOOD_P, t64([0.5, 0.5]), 0.5, "mu must have shape"),
    (GOOD_P, GOOD_MU, 0.0, "tau must be"),
    (GOOD_P, GOOD_MU, -1.0, "tau must be"),
]


@pytest.mark.parametrize("P, mu, tau, message", BAD_GAMES)
def test_bad_games_are_rejected_by_name(P, mu, tau, message):
    with pytest.raises(ValueError, match=message):
        regularized_nash_equilibrium(P, mu, tau)
    with pytest.raises(ValueError, match=message):
        duality_gap(mu, P, mu, tau)
    with pytest.raises(ValueError, match=message):
        nash_md(P, mu, tau, eta=0.1, steps=1)


@pytest.mark.parametrize("eta", [3.0, 0.0, -0.1])
def test_step_size_outside_zero_one_is_rejected(eta):
    with pytest.raises(ValueError, match=r"0 < eta \* tau <= 1"):
        nash_md_step(GOOD_MU, GOOD_P, GOOD_MU, 0.5, eta)
    with pytest.raises(ValueError, match=r"0 < eta \* tau <= 1"):
        nash_md(GOOD_P, GOOD_MU, 0.5, eta, steps=1)
