"""The online losses: hand-computed values and gradients, and their stationary points in
exact expectation on a bandit, checked against the tabular regularised equilibrium.
Their gradcheck, padding invariance (a fully masked prompt) and finiteness are in
test_loss_contract.py."""

from __future__ import annotations

import itertools

import pytest
import torch

from alignment.losses import SequenceLogps, get_loss
from alignment.tabular_nash import (
    cyclic_preference_matrix,
    geometric_mixture,
    regularized_nash_equilibrium,
)

POLICY = [[-1.0, -2.0], [-0.5, -3.0]]
REFERENCE = [[-1.5, -2.0], [-0.25, -1.0]]
SCORES = [[0.8, 0.2], [0.3, 0.7]]


def batch(policy=POLICY, reference=REFERENCE, scores=SCORES, mask=None) -> SequenceLogps:
    policy = torch.tensor(policy, dtype=torch.float64, requires_grad=True)
    return SequenceLogps(
        policy=policy,
        reference=torch.tensor(reference, dtype=torch.float64),
        scores=torch.tensor(scores, dtype=torch.float64),
        mask=torch.ones(policy.shape, dtype=torch.bool) if mask is None else torch.tensor(mask),
        lengths=torch.ones(policy.shape, dtype=torch.long),
    )


def test_nash_md_hand_values_and_stopped_gradient():
    # A = p - 1/2 - tau (pi(y) - mu(y)): 0.8 - 0.5 - 0.1 * 0.5 = 0.25 and 0.3 - 0.5 - 0.1 * (-0.25) = -0.175
    # loss = mean(-A * log pi(y)) = (0.25 * 1.0 - 0.175 * 0.5) / 2 = 0.08125
    logps = batch()
    out = get_loss("nash_md", tau=0.1)(logps)
    assert out.loss.item() == pytest.approx(0.08125, abs=1e-12)
    out.loss.backward()
    # d/d log pi(y) = -A / B with A held fixed (stopgrad): not -A/B + tau * log pi(y) / B.
    expected = torch.tensor([[-0.125, 0.0], [0.0875, 0.0]], dtype=torch.float64)
    assert torch.allclose(logps.policy.grad, expected, atol=1e-12)
    assert out.metrics["nash_md/advantage"].item() == pytest.approx((0.25 - 0.175) / 2)
    assert out.metrics["nash_md/preference"].item() == pytest.approx(0.55)


def test_online_ipo_hand_values_and_the_equivalent_square():
    # tau = 0.25, c = 2; h = [0.5 - 0, -0.25 - (-2)] = [0.5, 1.75]
    # 0.8 (0.5 - 2)^2 + 0.2 (-0.5 - 2)^2 = 3.05;  0.3 (1.75 - 2)^2 + 0.7 (-1.75 - 2)^2 = 9.8625
    logps = batch()
    out = get_loss("online_ipo", tau=0.25)(logps)
    assert out.loss.item() == pytest.approx((3.05 + 9.8625) / 2, abs=1e-12)
    out.loss.backward()
    # Same gradient as (h - (p - 1/2) / tau)^2: 2 (h - (2p - 1) c) / B = [-0.7, 1.25]
    g = [2 * (0.5 - 0.6 * 2) / 2, 2 * (1.75 - (-0.4) * 2) / 2]
    expected = torch.tensor([[g[0], -g[0]], [g[1], -g[1]]], dtype=torch.float64)
    assert torch.allclose(logps.policy.grad, expected, atol=1e-12)


def test_registry_flags():
    assert get_loss("nash_md").online_only and get_loss("nash_md").first_item_from_policy
    assert get_loss("online_ipo").online_only and not get_loss("online_ipo").first_item_from_policy
    assert not get_loss("dpo").online_only
    assert get_loss("nash_md").tau == 0.008  # the paper's default


def expected_gradient(name: str, logits: torch.Tensor, mu: torch.Tensor, P: torch.Tensor, tau: float, m: float):
    """E over y ~ sampler_0, y' ~ sampler_1 of the loss gradient w.r.t. softmax logits,
    computed exactly by enumerating every pair (one response = one token)."""
    logits = logits.clone().requires_grad_(True)
    log_pi = torch.log_softmax(logits, -1)
    pi = log_pi.exp().detach()
    opponent = geometric_mixture(pi, mu, m)
    first = pi if name == "nash_md" else opponent
    loss_fn = get_loss(name, tau=tau)
    total = 0.0
    for y, y2 in itertools.product(range(len(mu)), repeat=2):
        out = loss_fn(
            SequenceLogps(
                policy=torch.stack([log_pi[y], log_pi[y2]])[None],
                reference=torch.log(mu[[y, y2]])[None],
                scores=torch.tensor([[P[y, y2], P[y2, y]]], dtype=torch.float64),
                mask=torch.ones(1, 2, dtype=torch.bool),
                lengths=torch.ones(1, 2, dtype=torch.long),
            )
        )
        total = total + first[y] * opponent[y2] * out.loss
    (grad,) = torch.autograd.grad(total, logits)
    return grad


@pytest.mark.parametrize("name", ["nash_md", "online_ipo"])
def test_the_regularised_equilibrium_is_a_stationary_point(name):
    """With policy samples (m = 0), both losses' expected gradients vanish at
    pi* ∝ mu exp(P pi* / tau) and not at mu: they aim at the same equilibrium."""
    P = cyclic_preference_matrix(5, 0.8)
    mu = torch.tensor([0.4, 0.25, 0.15, 0.12, 0.08], dtype=torch.float64)
    tau = 0.3
    star = regularized_nash_equilibrium(P, mu, tau)
    at_star = expected_gradient(name, torch.log(star), mu, P, tau, m=0.0)
    at_mu = expected_gradient(name, torch.log(mu), mu, P, tau, m=0.0)
    assert at_star.abs().max() < 1e-12
    assert at_mu.abs().max() > 1e-2
