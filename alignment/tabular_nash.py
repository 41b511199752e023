"""Tabular theory of Nash-MD (Munos et al. 2023, "Nash Learning from Human Feedback").

A finite set of n responses, a preference matrix P (P[i, j] = P(i > j), P + P^T = 1),
a reference mu and a regularisation tau > 0. For distributions pi, pi':

    P(pi > pi') = pi^T P pi',        P(y > pi) = (P pi)[y].

The regularised game, each player maximising P(pi > pi') - tau KL(pi || mu) + tau KL(pi' || mu),
has a unique Nash equilibrium pi*(y) ∝ mu(y) exp(P(y > pi*) / tau). The deep online
trainer is checked against the exact, float64 quantities computed here."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

_TOL = 1e-9  # how far P + P^T = 1 and sum(mu) = 1 may be off (float64 round-off, not modelling error)


def _as_f64(x: Tensor | Sequence[float]) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def _check_game(P: Tensor, mu: Tensor, tau: float) -> None:
    if P.ndim != 2 or P.shape[0] != P.shape[1]:
        raise ValueError(f"P must be a square (n, n) matrix, got shape {tuple(P.shape)}")
    if not torch.isfinite(P).all() or (P < 0).any() or (P > 1).any():
        raise ValueError("P must hold probabilities in [0, 1]")
    off = (P + P.T - 1).abs().max().item()
    if off > _TOL:
        raise ValueError(f"P must satisfy P + P^T = 1 (P[i, j] = 1 - P[j, i]); max |P + P^T - 1| = {off:.3g}")
    if mu.shape != (P.shape[0],):
        raise ValueError(f"mu must have shape ({P.shape[0]},) to match P, got {tuple(mu.shape)}")
    if not (mu > 0).all():
        raise ValueError("mu must be strictly positive (KL(pi || mu) is infinite where mu = 0)")
    if abs(mu.sum().item() - 1) > _TOL:
        raise ValueError(f"mu must sum to 1, sums to {mu.sum().item():.12g}")
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau must be a finite number > 0, got {tau}")


def kl(p: Tensor, q: Tensor) -> float:
    """KL(p || q) = sum_y p(y) log(p(y) / q(y)), with 0 log 0 = 0 (inf where q = 0 < p)."""
    p, q = _as_f64(p), _as_f64(q)
    return (torch.special.xlogy(p, p) - torch.special.xlogy(p, q)).sum().item()


def total_variation(p: Tensor, q: Tensor) -> float:
    """TV(p, q) = 1/2 sum_y |p(y) - q(y)|."""
    return 0.5 * (_as_f64(p) - _as_f64(q)).abs().sum().item()


def geometric_mixture(pi: Tensor, mu: Tensor, beta: float) -> Tensor:
    """pi^(1 - beta) mu^beta / Z, beta in [0, 1] (Munos et al. 2023, the mixture pi_t^mu of Nash-MD)."""
    if not 0 <= beta <= 1:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    pi, mu = _as_f64(pi), _as_f64(mu)
    # xlogy so that a zero weight times log 0 is 0, not nan: beta = 0 returns pi even where mu = 0.
    log_mix = torch.special.xlogy(torch.tensor(1.0 - beta, dtype=torch.float64), pi)
    log_mix = log_mix + torch.special.xlogy(torch.tensor(beta, dtype=torch.float64), mu)
    return torch.softmax(log_mix, dim=-1)


def _nash_md_step(pi: Tensor, P: Tensor, mu: Tensor, tau: float, eta: float) -> Tensor:
    pi_mix = geometric_mixture(pi, mu, eta * tau)  # pi_t^mu ∝ pi_t^(1 - eta tau) mu^(eta tau)
    # pi_{t+1}(y) ∝ pi_t^mu(y) exp(eta P(y > pi_t^mu))
    return torch.softmax(torch.log(pi_mix) + eta * (P @ pi_mix), dim=-1)


def _check_step(tau: float, eta: float) -> None:
    if not 0 < eta * tau <= 1:
        raise ValueError(f"Nash-MD needs 0 < eta * tau <= 1 (the mixture weight), got eta * tau = {eta * tau}")


def nash_md_step(pi: Tensor, P: Tensor, mu: Tensor, tau: float, eta: float) -> Tensor:
    """One tabular Nash-MD update (Munos et al. 2023, the Nash-MD algorithm):

        pi_t^mu(y)    ∝ pi_t(y)^(1 - eta tau) mu(y)^(eta tau)
        pi_{t+1}(y)   ∝ pi_t^mu(y) exp(eta P(y > pi_t^mu))

    i.e. a mirror-descent step of size eta on the payoff against the mixture, taken from the mixture."""
    P, mu, pi = _as_f64(P), _as_f64(mu), _as_f64(pi)
    _check_game(P, mu, tau)
    _check_step(tau, eta)
    return _nash_md_step(pi, P, mu, tau, eta)


def nash_md(P: Tensor, mu: Tensor, tau: float, eta: float, steps: int, pi0: Tensor | None = None) -> Tensor:
    """Iterates of tabular Nash-MD, a (steps + 1, n) tensor: row t is pi_t, row 0 is pi0 (default mu, > 0).

    Munos et al. 2023, Theorem 1: KL(pi*, pi_{t+1}) <= (1 - eta tau)^t KL(pi*, pi_0) + 2 eta / tau.
    The last iterate converges to a fixed point pi ∝ mu exp(P(y > pi^mu) / tau), which is pi* up
    to an O(eta / tau) bias (it is evaluated against the mixture, not pi), hence the additive term."""
    P, mu = _as_f64(P), _as_f64(mu)
    _check_game(P, mu, tau)
    _check_step(tau, eta)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    pi = mu.clone() if pi0 is None else _as_f64(pi0)
    if pi.shape != mu.shape or abs(pi.sum().item() - 1) > _TOL:
        raise ValueError("pi0 must be a distribution over the same n responses as mu")
    if not (pi > 0).all():
        # pi^(1 - eta tau) keeps zeros: Nash-MD never puts mass back on a response pi0 leaves out.
        raise ValueError("pi0 must be strictly positive (the geometric mixture keeps its zeros)")
    iterates = [pi]
    for _ in range(steps):
        pi = _nash_md_step(pi, P, mu, tau, eta)
        iterates.append(pi)
    return torch.stack(iterates)


def best_response(pi: Tensor, P: Tensor, mu: Tensor, tau: float) -> Tensor:
    """argmax_pi' P(pi' > pi) - tau KL(pi' || mu) = softmax(log mu + P pi / tau) (Gibbs variational principle)."""
    return torch.softmax(torch.log(_as_f64(mu)) + (_as_f64(P) @ _as_f64(pi)) / tau, dim=-1)


def regularized_nash_equilibrium(P: Tensor, mu: Tensor, tau: float, tol: float = 1e-12, max_iter: int = 500) -> Tensor:
    """pi* of the regularised game, the fixed point pi* = softmax(log mu + P pi* / tau) (Munos et al. 2023).

    Solved by damped Newton on the logits, independently of Nash-MD: G(z) = z - log mu - P softmax(z) / tau = 0,
    with Jacobian J = I - P S / tau, S = diag(pi) - pi pi^T. On the simplex P acts as 1/2 11^T + A with A skew
    (P + P^T = 1) and S 1 = 0, so P S = A S, whose eigenvalues are those of the skew S^1/2 A S^1/2, purely
    imaginary: J is never singular and the Newton step always descends ||G||^2 (quadratic convergence near pi*).
    For small tau, G is steep far from pi*, so tau is approached by halving from max(tau, 1), each stage
    warm-started at the previous solution (pi* is smooth in tau by the implicit function theorem, J being
    invertible). max_iter bounds the Newton steps over all stages. Raises RuntimeError unless
    ||pi - softmax(log mu + P pi / tau)||_1 < tol; round-off in P pi / tau can put 1e-12 out of reach
    for tau ~ 1e-3."""
    P, mu = _as_f64(P), _as_f64(mu)
    _check_game(P, mu, tau)
    log_mu, eye = torch.log(mu), torch.eye(len(mu), dtype=torch.float64)

    def residual(z: Tensor, t: float) -> float:
        pi = torch.softmax(z, dim=-1)
        return (pi - best_response(pi, P, mu, t)).abs().sum().item()

    z, stage, steps, stalled = log_mu.clone(), max(tau, 1.0), 0, False
    while True:
        g = z - log_mu - P @ torch.softmax(z, dim=-1) / stage
        while residual(z, stage) >= tol and steps < max_iter and not stalled:
            steps += 1
            pi = torch.softmax(z, dim=-1)
            step = torch.linalg.solve(eye - P @ (torch.diag(pi) - torch.outer(pi, pi)) / stage, -g)
            # Armijo backtracking on ||G||^2: a full Newton step can overshoot where softmax saturates.
            t = 1.0
            while t >= 1e-12:
                g_new = z + t * step - log_mu - P @ torch.softmax(z + t * step, dim=-1) / stage
                if g_new.square().sum() <= (1 - 1e-4 * t) * g.square().sum():
                    z, g = z + t * step, g_new
                    break
                t /= 2
            else:  # no decrease left: ||G|| is at its round-off floor (tiny tau), more steps cannot help
                stalled = True
        if stage == tau or steps >= max_iter or stalled:
            break
        stage = max(tau, stage / 2)
    final = residual(z, tau)
    if final < tol:
        return torch.softmax(z, dim=-1)
    why = "stalled at round-off (raise tol)" if stalled else f"max_iter = {max_iter} Newton steps"
    raise RuntimeError(f"regularized_nash_equilibrium: residual {final:.3g} >= tol {tol:g} at tau = {tau}: {why}")


def duality_gap(pi: Tensor, P: Tensor, mu: Tensor, tau: float) -> float:
    """How much a player gains by deviating from pi when the opponent plays pi; 0 exactly at pi*.

        gap = max_pi' [P(pi' > pi) - tau KL(pi' || mu)] - [P(pi > pi) - tau KL(pi || mu)]
            = tau log sum_y mu(y) exp(P(y > pi) / tau) - (1/2 - tau KL(pi || mu))

    Derivation: by the Gibbs variational principle max_q [q^T v - tau KL(q || mu)] = tau log sum_y mu(y) e^{v_y/tau},
    attained at q ∝ mu e^{v/tau}; take v = P pi. And P(pi > pi) = pi^T P pi = 1/2 since P + P^T = 1 1^T.
    Expanding the KL shows gap = tau KL(pi || q), so gap >= 0, with equality iff pi = q, i.e. pi is the
    fixed point pi* = softmax(log mu + P pi / tau). (The game is symmetric, so the two-sided gap is twice this.)"""
    P, mu, pi = _as_f64(P), _as_f64(mu), _as_f64(pi)
    _check_game(P, mu, tau)
    best = tau * torch.logsumexp(torch.log(mu) + (P @ pi) / tau, dim=-1).item()
    return best - (pi @ P @ pi).item() + tau * kl(pi, mu)


def cyclic_preference_matrix(n: int, strength: float) -> Tensor:
    """Rock-paper-scissors on n (odd) responses: i beats the (n - 1)/2 responses after it (cyclically).

        P[i, j] = 1/2 + strength/2   if (j - i) mod n in 1..(n - 1)/2
                  1/2 - strength/2   if (j - i) mod n in (n + 1)/2..n - 1,      P[i, i] = 1/2

    Every response beats half the others and loses to the other half, so for strength > 0 there
    is no Condorcet winner (no i with P[i, j] > 1/2 for all j != i) and no transitive ranking."""
    if n < 3 or n % 2 == 0:
        raise ValueError(f"n must be odd and >= 3 (each response beats exactly half the others), got {n}")
    if not 0 <= strength <= 1:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    idx = torch.arange(n)
    d = (idx[None, :] - idx[:, None]) % n
    win = torch.full((n, n), 0.5 + strength / 2, dtype=torch.float64)
    P = torch.where(d <= (n - 1) // 2, win, 1 - win)  # 1 - win, not 0.5 - strength/2: P + P^T = 1 exactly
    return P.fill_diagonal_(0.5)
