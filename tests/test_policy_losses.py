"""The self-play and policy-gradient losses (spo, sppo, copg, rloo, grpo): values worked
out by hand, gradients (stopped where the formulas stop them), TRL's formulas on the
same tensors, lone items, parameters and flags. Their gradcheck, padding invariance and
finiteness at log-ratios of +-1e4 are in test_loss_contract.py."""

from __future__ import annotations

import math

import pytest
import torch

from alignment.losses import LossParameterError, SequenceLogps, get_loss
from alignment.losses.base import TokenLogps

NEW = ["spo", "sppo", "copg", "rloo", "grpo"]
F64 = torch.float64


def logps(
    policy,
    reference=None,
    scores=None,
    mask=None,
    preferences=None,
    tokens: TokenLogps | None = None,
    dtype=F64,
) -> SequenceLogps:
    policy = policy if isinstance(policy, torch.Tensor) else torch.tensor(policy, dtype=dtype, requires_grad=True)
    shape = policy.shape
    return SequenceLogps(
        policy=policy,
        reference=None if reference is None else torch.as_tensor(reference, dtype=dtype),
        scores=torch.zeros(shape, dtype=dtype) if scores is None else torch.as_tensor(scores, dtype=dtype),
        mask=torch.ones(shape, dtype=torch.bool) if mask is None else torch.as_tensor(mask),
        lengths=torch.ones(shape, dtype=torch.long),
        preferences=None if preferences is None else torch.as_tensor(preferences, dtype=dtype),
        tokens=tokens,
    )


def token_logps(policy, old=None, reference=None, mask=None, dtype=F64) -> tuple[torch.Tensor, TokenLogps]:
    """(the leaf per-token policy tensor, TokenLogps); sequence log-probs are its sums."""
    leaf = policy if isinstance(policy, torch.Tensor) else torch.tensor(policy, dtype=dtype, requires_grad=True)
    return leaf, TokenLogps(
        policy=leaf,
        reference=None if reference is None else torch.as_tensor(reference, dtype=dtype),
        old_policy=None if old is None else torch.as_tensor(old, dtype=dtype),
        mask=torch.ones(leaf.shape, dtype=torch.bool) if mask is None else torch.as_tensor(mask),
    )


def grpo_batch(leaf, tokens: TokenLogps, scores, mask=None) -> SequenceLogps:
    seq_policy = (leaf * tokens.mask).sum(-1)
    seq_ref = None if tokens.reference is None else (tokens.reference * tokens.mask).sum(-1)
    return logps(seq_policy, seq_ref, scores, mask=mask, tokens=tokens)


def close(actual: torch.Tensor, expected, atol: float) -> None:
    torch.testing.assert_close(actual.detach().to(F64), torch.tensor(expected, dtype=F64), atol=atol, rtol=0)


# Rock-paper-scissors: a win is 1, a tie 1/2.
BEATS = {("R", "S"), ("P", "R"), ("S", "P")}


def rps_preferences(moves: str) -> list[list[float]]:
    return [[1.0 if (a, b) in BEATS else 0.0 if (b, a) in BEATS else 0.5 for b in moves] for a in moves]


# ---------------------------------------------------------------------------- copg


def test_copg_hand_value_and_gradient():
    # rho = (-3 - -3.5, -5 - -4.5) = (0.5, -0.5): drho = 1, dR = 1 - 0.2 = 0.8
    # l = (dR - beta/2 drho) drho = (0.8 - 0.05) * 1 = 0.75, loss = -0.75
    # d loss / d log pi(y) = -(dR - beta drho) = -(0.8 - 0.1) = -0.7; +0.7 for y'
    batch = logps([[-3.0, -5.0]], [[-3.5, -4.5]], [[1.0, 0.2]])
    out = get_loss("copg", beta=0.1)(batch)
    assert out.loss.item() == pytest.approx(-0.75, abs=1e-12)
    out.loss.backward()
    close(batch.policy.grad, [[-0.7, 0.7]], 1e-12)
    assert out.metrics["copg/objective"].item() == pytest.approx(0.75)
    assert out.metrics["copg/reward_gap"].item() == pytest.approx(0.8)
    assert out.counts["copg/objective"].item() == 1


def test_copg_every_unordered_pair_ties_included():
    # beta = 1, R = (1, 1, 0), rho = (0.5, 0, -0.5):
    # (0,1): dR 0, drho 0.5 -> (0 - 0.25) 0.5 = -0.125
    # (0,2): dR 1, drho 1   -> (1 - 0.5) 1   =  0.5
    # (1,2): dR 1, drho 0.5 -> (1 - 0.25) 0.5 = 0.375;  loss = -(0.75) / 3 = -0.25
    batch = logps([[0.5, 0.0, -0.5]], [[0.0, 0.0, 0.0]], [[1.0, 1.0, 0.0]])
    out = get_loss("copg", beta=1.0)(batch)
    assert out.loss.item() == pytest.approx(-0.25, abs=1e-12)
    assert out.counts["copg/objective"].item() == 3


def test_copg_on_a_labelled_pair_is_scaled_ipo():
    # R = (1, 0), h = drho: -l = (beta/2) h^2 - h = (beta/2) (h - 1/beta)^2 - 1/(2 beta),
    # and IPO with tau = beta/2 is (h - 1/(2 tau))^2 = (h - 1/beta)^2.
    beta = 0.4
    batch = logps([[-1.0, -3.0], [-2.0, -1.0]], [[-2.0, -2.5], [-1.0, -1.5]], [[1.0, 0.0], [1.0, 0.0]])
    copg = get_loss("copg", beta=beta)(batch).loss
    ipo = get_loss("ipo", tau=beta / 2, length_normalize=False)(batch).loss
    assert copg.item() == pytest.approx(beta / 2 * ipo.item() - 1 / (2 * beta), rel=1e-12)


# ----------------------------------------------------------------------------- spo


def test_spo_rock_paper_scissors_win_rates():
    # [R, P, S, R]: R: (P 0 + S 1 + R 1/2) / 3 = 0.5;  P: (R 1 + S 0 + R 1) / 3 = 2/3
    #               S: (R 0 + P 1 + R 0) / 3 = 1/3;    second R: as the first, 0.5
    batch = logps([[-1.0, -2.0, -3.0, -4.0]], preferences=[rps_preferences("RPSR")])
    r = get_loss("spo").win_rates(batch)
    close(r, [[0.5, 0.6667, 0.3333, 0.5]], 5e-5)
    close(r, [[0.5, 2 / 3, 1 / 3, 0.5]], 1e-12)


def test_spo_loss_reference_free_and_with_tau():
    prefs = [rps_preferences("RPSR")]
    # tau = 0: A = r - 1/2 = [0, 1/6, -1/6, 0]; log pi = [-1, -2, -3, -4]
    # loss = -(1/4) (1/6 * -2 - 1/6 * -3) = -(1/4)(1/6) = -1/24
    free = logps([[-1.0, -2.0, -3.0, -4.0]], preferences=prefs)
    loss = get_loss("spo")
    assert loss.needs_reference is False
    assert loss(free).loss.item() == pytest.approx(-1 / 24, abs=1e-12)

    # tau = 0.5, reference [-1.5, -2, -2, -4.5]: rho = [0.5, 0, -1, 0.5]
    # A = r - 1/2 - tau rho = [-1/4, 1/6, 1/3, -1/4]
    # loss = -(1/4)(-1/4 * -1 + 1/6 * -2 + 1/3 * -3 - 1/4 * -4) = -(1/4)(1/4 - 1/3 - 1 + 1) = 1/48
    batch = logps([[-1.0, -2.0, -3.0, -4.0]], [[-1.5, -2.0, -2.0, -4.5]], preferences=prefs)
    spo = get_loss("spo", tau=0.5)
    assert spo.needs_reference is True
    out = spo(batch)
    assert out.loss.item() == pytest.approx(1 / 48, abs=1e-12)
    out.loss.backward()
    # stopgrad(A): d loss / d log pi_i = -A_i / 4, no tau * log pi term
    close(batch.policy.grad, [[1 / 16, -1 / 24, -1 / 12, 1 / 16]], 1e-12)
    assert out.metrics["spo/win_rate"].item() == pytest.approx(0.5)
    assert out.metrics["spo/win_rate_best"].item() == pytest.approx(2 / 3)
    assert out.metrics["spo/log_ratio"].item() == pytest.approx(0.0)
    assert out.counts["spo/win_rate"].item() == 4


def test_spo_needs_preferences():
    with pytest.raises(ValueError, match="preferences"):
        get_loss("spo")(logps([[-1.0, -2.0]], scores=[[0.7, 0.3]]))


# ---------------------------------------------------------------------------- sppo

# P(y_i > y_j) for K = 3; rows sum (self 0.5 included) to 1.9, 1.0, 1.6.
SPPO_PREFS = [[[0.5, 0.8, 0.6], [0.2, 0.5, 0.3], [0.4, 0.7, 0.5]]]


def test_sppo_self_included_win_rates_and_best_and_worst():
    # P_i = row sum / 3 = [19/30, 10/30, 16/30] (leave-one-out would give 0.7 for item 0)
    # best = item 0, worst = item 1; beta = 0.5 (1/beta = 2):
    # targets (P - 1/2) * 2 = [4/15, -1/3, 1/15]; rho = [0.5, -0.25, 0.1]
    # residuals 1/2 - 4/15 = 7/30 and -1/4 + 1/3 = 1/12; loss = ((7/30)^2 + (1/12)^2) / 2
    batch = logps([[-1.0, -2.25, -1.9]], [[-1.5, -2.0, -2.0]], preferences=SPPO_PREFS)
    loss = get_loss("sppo", beta=0.5)
    close(loss.win_rates(batch), [[19 / 30, 10 / 30, 16 / 30]], 1e-12)
    out = loss(batch)
    assert out.loss.item() == pytest.approx(((7 / 30) ** 2 + (1 / 12) ** 2) / 2, abs=1e-12)
    out.loss.backward()
    # d/d rho_i of the mean of two squares: residual_i; item 2 is not selected
    close(batch.policy.grad, [[7 / 30, 1 / 12, 0.0]], 1e-12)
    assert out.metrics["sppo/win_rate_best"].item() == pytest.approx(19 / 30)
    assert out.metrics["sppo/win_rate_worst"].item() == pytest.approx(1 / 3)

    # select: all adds item 2: 0.1 - 1/15 = 1/30
    every = get_loss("sppo", beta=0.5, select="all")(batch).loss
    assert every.item() == pytest.approx(((7 / 30) ** 2 + (1 / 12) ** 2 + (1 / 30) ** 2) / 3, abs=1e-12)


def test_sppo_ties_first_position_and_judge_diagonal_ignored():
    # All preferences 1/2 (the judge's diagonal given as 0: ignored, set to 1/2):
    # every P_i = 1/2, best = worst = item 0, target 0, loss = rho_0^2 = 0.3^2
    prefs = [[[0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]]]
    batch = logps([[-1.0, -2.0, -3.0]], [[-1.3, -1.0, -1.0]], preferences=prefs)
    out = get_loss("sppo", beta=0.5)(batch)
    assert out.loss.item() == pytest.approx(0.09, abs=1e-12)
    # Tie at the top between items 1 and 2 (both 0.6 after self-inclusion): item 1 is best
    prefs = [[[0.5, 0.2, 0.2], [0.8, 0.5, 0.5], [0.8, 0.5, 0.5]]]
    selected = get_loss("sppo").selected(
        get_loss("sppo").win_rates(logps([[0.0] * 3], preferences=prefs)), torch.ones(1, 3, dtype=torch.bool)
    )
    assert selected.tolist() == [[True, True, False]]


def test_sppo_and_copg_need_a_reference():
    with pytest.raises(ValueError, match="reference"):
        get_loss("sppo")(logps([[-1.0, -2.0]], preferences=[[[0.5, 0.6], [0.4, 0.5]]]))
    with pytest.raises(ValueError, match="reference"):
        get_loss("copg")(logps([[-1.0, -2.0]], scores=[[1.0, 0.0]]))


# ---------------------------------------------------------------------------- rloo


def test_rloo_advantages_and_loss():
    # r = [1, 0, 2], beta = 0: A_i = r_i - mean of the others = [1 - 1, 0 - 1.5, 2 - 0.5] = [0, -1.5, 1.5]
    # log pi = [-1, -2, -3]: loss = -(1/3)(0 + 3 - 4.5) = 0.5
    batch = logps([[-1.0, -2.0, -3.0]], scores=[[1.0, 0.0, 2.0]])
    loss = get_loss("rloo", beta=0.0)
    assert loss.needs_reference is False
    close(loss.advantages(batch), [[0.0, -1.5, 1.5]], 1e-12)
    out = loss(batch)
    assert out.loss.item() == pytest.approx(0.5, abs=1e-12)
    out.loss.backward()
    close(batch.policy.grad, [[0.0, 0.5, -0.5]], 1e-12)


def test_rloo_kl_shaped_reward():
    # beta = 0.5, rho = [1, 0, -2]: R = r - 0.5 rho = [0.5, 0, 3]
    # A = [0.5 - 1.5, 0 - 1.75, 3 - 0.25] = [-1, -1.75, 2.75]
    # loss = -(1/3)(-1 * -1 - 1.75 * -2 + 2.75 * -3) = -(1/3)(1 + 3.5 - 8.25) = 1.25
    batch = logps([[-1.0, -2.0, -3.0]], [[-2.0, -2.0, -1.0]], scores=[[1.0, 0.0, 2.0]])
    out = get_loss("rloo", beta=0.5)(batch)
    assert out.loss.item() == pytest.approx(1.25, abs=1e-12)
    out.loss.backward()
    # stopgrad(A) and stopgrad(rho): the gradient is -A / 3 only
    close(batch.policy.grad, [[1 / 3, 1.75 / 3, -2.75 / 3]], 1e-12)
    assert out.metrics["rloo/kl"].item() == pytest.approx(-1 / 3)


def test_rloo_gradient_matches_trl_formula():
    # TRL 1.16 RLOOTrainer (beta > 0, normalize_advantages False, one update per batch):
    #   rewards = r - beta * sum_t (old_logps - ref_logps);  baseline = (sum - r_i) / (K - 1)
    #   coef_1 = exp(logps - old_logps); per_sequence_loss = -min(coef_1 A, clamp(coef_1, 1 - eps, 1 + eps) A)
    #   loss = per_sequence_loss.mean()       (over all B * K sequences)
    g = torch.Generator().manual_seed(3)
    b, k, beta = 3, 4, 0.05
    policy = (-10 * torch.rand(b, k, generator=g, dtype=F64)).requires_grad_(True)
    reference = -10 * torch.rand(b, k, generator=g, dtype=F64)
    rewards = torch.randn(b, k, generator=g, dtype=F64)
    old = policy.detach()
    shaped = rewards - beta * (old - reference)
    baseline = (shaped.sum(-1, keepdim=True) - shaped) / (k - 1)
    adv = shaped - baseline
    coef_1 = torch.exp(policy - old)
    trl_loss = -torch.min(coef_1 * adv, torch.clamp(coef_1, 0.8, 1.2) * adv).mean()
    (trl_grad,) = torch.autograd.grad(trl_loss, policy)

    ours = get_loss("rloo", beta=beta)(logps(policy, reference, rewards)).loss
    (grad,) = torch.autograd.grad(ours, policy)
    assert torch.allclose(grad, trl_grad, atol=1e-12)


# ---------------------------------------------------------------------------- grpo

A1 = 1 / (1 + 1e-4)  # |A| for r = [0, 1, 2]: mean 1, unbiased std sqrt((1 + 0 + 1) / 2) = 1, std + 1e-4


def _clipped_batch(beta_reference=None):
    # Old log-probs 0 so that log pi = log(ratio). A = [-A1, 0, +A1].
    ratios = [[0.5, 0.9, 1.5], [1.0, 1.3, 7.0], [1.5, 1.1, 0.5]]
    old = [[[0.0] * 3] * 3]
    mask = [[[True, True, True], [True, True, False], [True, True, True]]]
    leaf, tokens = token_logps(
        [[[math.log(x) for x in row] for row in ratios]], old=old, mask=mask, reference=beta_reference
    )
    return leaf, grpo_batch(leaf, tokens, [[0.0, 1.0, 2.0]])


def test_grpo_advantages_unbiased_std_and_equal_rewards():
    leaf, tokens = token_logps(torch.zeros(2, 3, 1, dtype=F64, requires_grad=True))
    batch = grpo_batch(leaf, tokens, [[0.0, 1.0, 2.0], [5.0, 5.0, 5.0]])
    a = get_loss("grpo").advantages(batch)
    close(a, [[-A1, 0.0, A1], [0.0, 0.0, 0.0]], 1e-12)


def test_grpo_clipped_surrogate_hand_value_and_zero_gradient_on_clipped_tokens():
    # beta = 0, epsilon = 0.2 (clip to [0.8, 1.2]); |y| = [3, 2, 3]
    # item 0 (A = -A1): ratios 0.5, 0.9, 1.5 -> min(r A, clip(r) A) = -0.8 A1 (clipped), -0.9 A1, -1.5 A1
    #   (1.5 > 1.2 but A < 0: the unclipped term is the smaller one, so it keeps its gradient)
    # item 1 (A = 0): 0
    # item 2 (A = +A1): ratios 1.5, 1.1, 0.5 -> 1.2 A1 (clipped), 1.1 A1, 0.5 A1
    # J = (1/3) [(-0.8 - 0.9 - 1.5) / 3 + 0 + (1.2 + 1.1 + 0.5) / 3] A1 = -(0.4 / 9) A1; loss = 0.4 / 9 A1
    leaf, batch = _clipped_batch()
    out = get_loss("grpo", beta=0.0)(batch)
    assert out.loss.item() == pytest.approx(0.4 / 9 * A1, abs=1e-12)
    out.loss.backward()
    # d loss / d log pi_t = -(1/3)(1/|y|) A ratio_t on unclipped tokens, 0 on clipped ones
    expected = [[0.0, 0.9 * A1 / 9, 1.5 * A1 / 9], [0.0, 0.0, 0.0], [0.0, -1.1 * A1 / 9, -0.5 * A1 / 9]]
    close(leaf.grad[0], expected, 1e-12)
    # 2 clipped tokens of 8 real ones
    assert out.metrics["grpo/clip_fraction"].item() == pytest.approx(0.25)
    assert out.counts["grpo/clip_fraction"].item() == 8
    assert out.metrics["grpo/advantage_abs"].item() == pytest.approx(2 * A1 / 3)


def test_grpo_clipped_tokens_keep_only_the_kl_gradient():
    # Reference log-probs 0 (x = ref - log pi = -log ratio); beta = 0.5.
    # d (beta KL_t) / d log pi_t = beta (1 - exp(x)) = beta (1 - 1/ratio), times 1/(3 |y|) in the loss
    leaf, batch = _clipped_batch(beta_reference=[[[0.0] * 3] * 3])
    get_loss("grpo", beta=0.5)(batch).loss.backward()
    assert leaf.grad[0, 0, 0].item() == pytest.approx(0.5 * (1 - 1 / 0.5) / 9, abs=1e-12)
    assert leaf.grad[0, 2, 0].item() == pytest.approx(0.5 * (1 - 1 / 1.5) / 9, abs=1e-12)


def test_grpo_k3_kl_value():
    # Equal rewards: A = 0, only the KL term. x = ref - log pi = [ln 2, -ln 2] (item 0), [0, pad] (item 1)
    # k3: e^x - x - 1 = 2 - ln 2 - 1 and 1/2 + ln 2 - 1, which sum to 1/2; 0 for x = 0
    # J = (1/2)[(1/2)(-beta)(1/2) + (1/1)(-beta * 0)] = -beta / 8
    ln2 = math.log(2)
    leaf, tokens = token_logps(
        [[[-1.0, -1.0], [-2.0, 99.0]]],
        reference=[[[-1.0 + ln2, -1.0 - ln2], [-2.0, -50.0]]],
        mask=[[[True, True], [True, False]]],
    )
    out = get_loss("grpo", beta=0.04)(grpo_batch(leaf, tokens, [[1.0, 1.0]]))
    assert out.loss.item() == pytest.approx(0.04 / 8, abs=1e-12)
    assert out.metrics["grpo/kl"].item() == pytest.approx(0.5 / 3, abs=1e-12)
    assert out.metrics["grpo/clip_fraction"].item() == 0.0


def test_grpo_matches_trl_grpo_loss_type():
    # TRL 1.16 GRPOTrainer, loss_type="grpo", scale_rewards="group", token-level ratios:
    #   A = (r - group mean) / (nanstd(group) + 1e-4)   (nanstd: Bessel-corrected, count / (count - 1))
    #   coef_1 = exp(logps - old); coef_2 = clamp(coef_1, 1 - eps, 1 + eps)
    #   per_token_loss = -min(coef_1 A, coef_2 A) + beta * (exp(ref - logps) - (ref - logps) - 1)
    #   loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()   over B * K rows
    g = torch.Generator().manual_seed(7)
    b, k, t, eps, beta = 2, 4, 5, 0.2, 0.04
    policy = (-3 * torch.rand(b, k, t, generator=g, dtype=F64)).requires_grad_(True)
    old = policy.detach() + 0.3 * torch.randn(b, k, t, generator=g, dtype=F64)
    ref = policy.detach() + 0.5 * torch.randn(b, k, t, generator=g, dtype=F64)
    mask = torch.rand(b, k, t, generator=g) > 0.3
    mask[..., 0] = True
    rewards = torch.randn(b, k, generator=g, dtype=F64)

    adv = (rewards - rewards.mean(-1, keepdim=True)) / (rewards.std(-1, keepdim=True) + 1e-4)
    lp, o, rf, m, a = (x.reshape(b * k, *x.shape[2:]) for x in (policy, old, ref, mask, adv))
    coef_1 = torch.exp(lp - o)
    coef_2 = torch.clamp(coef_1, 1 - eps, 1 + eps)
    per_token_loss = -torch.min(coef_1 * a[:, None], coef_2 * a[:, None])
    per_token_loss = per_token_loss + beta * (torch.exp(rf - lp) - (rf - lp) - 1)
    trl_loss = ((per_token_loss * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()

    _, tokens = token_logps(policy, old=old, reference=ref, mask=mask)
    ours = get_loss("grpo", epsilon=eps, beta=beta)(grpo_batch(policy, tokens, rewards)).loss
    assert ours.item() == pytest.approx(trl_loss.item(), rel=1e-12)
    (g_ours,) = torch.autograd.grad(ours, policy)
    (g_trl,) = torch.autograd.grad(trl_loss, policy)
    assert torch.allclose(g_ours, g_trl, atol=1e-12)


def test_grpo_without_old_policy_is_the_policy_gradient():
    # old = policy.detach(): ratio 1, nothing clipped, gradient -(1/K)(1/|y|) A per token
    leaf, tokens = token_logps(torch.full((1, 3, 2), -1.0, dtype=F64, requires_grad=True))
    out = get_loss("grpo", beta=0.0)(grpo_batch(leaf, tokens, [[0.0, 1.0, 2.0]]))
    assert out.loss.item() == pytest.approx(0.0, abs=1e-12)  # sum of A is 0
    out.loss.backward()
    close(leaf.grad[0, :, 0], [A1 / 6, 0.0, -A1 / 6], 1e-12)
    assert out.metrics["grpo/clip_fraction"].item() == 0.0


def test_grpo_needs_tokens():
    loss = get_loss("grpo", beta=0.0)
    assert "tokens" in loss.reads
    with pytest.raises(ValueError, match="tokens"):
        loss(logps([[-1.0, -2.0]], scores=[[1.0, 0.0]]))


# ------------------------------------------------------------- shared properties


def _case(name: str, seed: int = 0):
    """(loss, batch, leaf) for a random batch of B = 2 prompts and K = 3 items; `leaf`
    is the tensor the gradient is taken with respect to."""
    g = torch.Generator().manual_seed(seed)
    b, k, t = 2, 3, 4
    policy = -5 * torch.rand(b, k, generator=g, dtype=F64)
    reference = -5 * torch.rand(b, k, generator=g, dtype=F64)
    scores = torch.tensor([[1.0, 0.0, 2.0], [0.5, 3.0, -1.0]], dtype=F64)
    upper = torch.rand(b, k, k, generator=g, dtype=F64)
    prefs = torch.triu(upper, 1) + torch.tril(1 - upper.transpose(1, 2), -1) + 0.5 * torch.eye(k, dtype=F64)
    params = {"spo": {"tau": 0.1}, "sppo": {"beta": 0.5}, "copg": {}, "rloo": {}, "grpo": {}}[name]
    loss = get_loss(name, **params)
    if name == "grpo":
        lp = -2 * torch.rand(b, k, t, generator=g, dtype=F64)
        # old policy 0.1 away in each direction (ratios 0.90 / 1.105, inside the clip range)
        old = lp + 0.1 * torch.where(torch.rand(b, k, t, generator=g) > 0.5, 1.0, -1.0).to(F64)
        signs = torch.where(torch.rand(b, k, t, generator=g) > 0.5, 1.0, -1.0).to(F64)
        ref = lp + 0.7 * signs
        leaf, tokens = token_logps(lp.clone().requires_grad_(True), old=old, reference=ref)
        return loss, grpo_batch(leaf, tokens, scores), leaf
    leaf = policy.clone().requires_grad_(True)
    return loss, logps(leaf, reference, scores, preferences=prefs), leaf


@pytest.mark.parametrize("name", ["spo", "sppo", "rloo", "grpo"])
def test_a_prompt_with_one_real_item_is_left_out(name):
    loss, batch, leaf = _case(name)
    base = loss(batch).loss.item()
    mask = batch.mask.clone()
    mask[1, 1:] = False  # prompt 1 keeps a single item: no opponent, no baseline
    tokens = batch.tokens
    if tokens is not None:
        tokens = TokenLogps(tokens.policy, tokens.reference, tokens.old_policy, tokens.mask & mask[:, :, None])
    lone = SequenceLogps(batch.policy, batch.reference, batch.scores, mask, batch.lengths, batch.preferences, tokens)
    only_first = SequenceLogps(
        batch.policy[:1],
        None if batch.reference is None else batch.reference[:1],
        batch.scores[:1],
        batch.mask[:1],
        batch.lengths[:1],
        None if batch.preferences is None else batch.preferences[:1],
        None
        if tokens is None
        else TokenLogps(
            *(None if x is None else x[:1] for x in (tokens.policy, tokens.reference, tokens.old_policy, tokens.mask))
        ),
    )
    assert loss(lone).loss.item() == pytest.approx(loss(only_first).loss.item(), rel=1e-12)
    assert math.isfinite(base)


def test_grpo_finite_at_huge_ratios_to_the_old_policy():
    for size in (1e4, -1e4):
        lp = torch.zeros(1, 2, 2, requires_grad=True)
        _, tokens = token_logps(
            lp, old=torch.full((1, 2, 2), -size), reference=torch.full((1, 2, 2), size), dtype=torch.float32
        )
        out = get_loss("grpo")(grpo_batch(lp, tokens, [[1.0, 0.0]]))
        (grad,) = torch.autograd.grad(out.loss, lp)
        assert torch.isfinite(out.loss) and torch.isfinite(grad).all()


@pytest.mark.parametrize(
    "name, params, needle",
    [
        ("spo", {"tau": -0.1}, "tau"),
        ("sppo", {"beta": 0.0}, "beta"),
        ("sppo", {"select": "best"}, "select"),
        ("copg", {"beta": 0}, "beta"),
        ("rloo", {"beta": -1.0}, "beta"),
        ("grpo", {"epsilon": 0.0}, "epsilon"),
        ("grpo", {"epsilon": 1.0}, "epsilon"),
        ("grpo", {"beta": -0.5}, "beta"),
        ("grpo", {"std_eps": 0.0}, "std_eps"),
    ],
)
def test_out_of_range_parameters_are_rejected(name, params, needle):
    with pytest.raises(LossParameterError, match=f"{name}: {needle}"):
        get_loss(name, **params)


def test_unknown_parameter_lists_the_real_ones():
    with pytest.raises(LossParameterError, match="std_eps"):
        get_loss("grpo", clip=0.1)


@pytest.mark.parametrize("name, params", [("spo", {}), ("rloo", {"beta": 0.0}), ("grpo", {"beta": 0.0})])
def test_reference_free_construction_runs_without_a_reference(name, params):
    loss = get_loss(name, **params)
    assert loss.needs_reference is False
    _, batch, leaf = _case(name)
    if batch.tokens is None:
        free = SequenceLogps(batch.policy, None, batch.scores, batch.mask, batch.lengths, batch.preferences)
    else:
        tok = batch.tokens
        free = SequenceLogps(
            batch.policy,
            None,
            batch.scores,
            batch.mask,
            batch.lengths,
            None,
            TokenLogps(tok.policy, None, tok.old_policy, tok.mask),
        )
    out = loss(free)
    (grad,) = torch.autograd.grad(out.loss, leaf)
    assert torch.isfinite(out.loss) and torch.isfinite(grad).all()
    # the reference, when given anyway, changes nothing
    assert out.loss.item() == pytest.approx(loss(batch).loss.item(), rel=1e-12)


def test_needs_reference_follows_the_parameters():
    assert get_loss("spo", tau=0.01).needs_reference is True
    assert get_loss("rloo").needs_reference is True
    assert get_loss("grpo").needs_reference is True
    assert get_loss("sppo").needs_reference is True
    assert get_loss("copg").needs_reference is True


def test_flags_and_defaults():
    spo, sppo, copg, rloo, grpo = (get_loss(n) for n in NEW)
    assert (spo.tau, sppo.beta, sppo.select, copg.beta, rloo.beta) == (0.0, 1e-3, "best_and_worst", 0.1, 0.05)
    assert (grpo.epsilon, grpo.beta, grpo.std_eps) == (0.2, 0.04, 1e-4)
    assert [loss.feedback for loss in (spo, sppo, copg, rloo, grpo)] == [
        "preferences",
        "preferences",
        "rewards",
        "rewards",
        "rewards",
    ]
    assert [loss.online_only for loss in (spo, sppo, copg, rloo, grpo)] == [True, True, False, True, True]
    assert ["tokens" in loss.reads for loss in (spo, sppo, copg, rloo, grpo)] == [False, False, False, False, True]
    assert grpo.reuses_samples and not rloo.reuses_samples
    assert all(loss.num_samples is None and not loss.first_item_from_policy for loss in (spo, sppo, copg, rloo, grpo))
    assert all(loss.paper and loss.formula and loss.__doc__ for loss in (spo, sppo, copg, rloo, grpo))
    for name in ("nash_md", "online_ipo"):
        assert get_loss(name).feedback == "preferences" and get_loss(name).num_samples == 2


@pytest.mark.parametrize("name", NEW)
def test_reports_the_shared_reward_metrics(name):
    loss, batch, _ = _case(name)
    out = loss(batch)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "reward_accuracy"):
        assert key in out.metrics and key in out.counts
    assert any(key.startswith(f"{name}/") for key in out.metrics)
    assert set(out.counts) == set(out.metrics)


@pytest.mark.parametrize("clip, normalize", [(None, True), ((-0.5, 0.5), False), ((-0.5, 0.5), True)])
def test_rloo_options_equal_trls_advantages(clip, normalize):
    """TRL 1.16's RLOOTrainer: rewards clipped to reward_clip_range, then shaped by the
    sequence KL, the leave-one-out baseline, and with normalize_advantages the advantages
    standardized over the batch (TRL's nanstd, + 1e-4)."""
    from trl.trainer.utils import nanstd

    g = torch.Generator().manual_seed(7)
    b, k, beta = 3, 4, 0.05
    rewards = 2 * torch.randn(b, k, generator=g, dtype=torch.float64)
    policy = -5 * torch.rand(b, k, generator=g, dtype=torch.float64)
    reference = policy + 0.5 * torch.randn(b, k, generator=g, dtype=torch.float64)
    logps = SequenceLogps(
        policy=policy,
        reference=reference,
        scores=rewards,
        mask=torch.ones(b, k, dtype=torch.bool),
        lengths=torch.full((b, k), 3),
        across_processes=lambda t: t,
    )
    loss = get_loss("rloo", beta=beta, reward_clip_range=clip, normalize_advantages=normalize)

    expected = rewards.reshape(-1)
    if clip:
        expected = expected.clamp(min=clip[0], max=clip[1])
    expected = expected - beta * (policy - reference).reshape(-1)  # old = current policy: one update per batch
    grouped = expected.view(-1, k)
    baselines = ((grouped.sum(1, keepdim=True) - grouped) / (k - 1)).view(-1)
    advantages = expected - baselines
    if normalize:
        advantages = (advantages - advantages.mean()) / (nanstd(advantages) + 1e-4)
    # TRL's nanstd computes its Bessel factor n / (n - 1) from integer counts, in float32: 1e-8 relative.
    tolerance = 1e-7 if normalize else 1e-12
    torch.testing.assert_close(loss.advantages(logps).reshape(-1), advantages, rtol=tolerance, atol=1e-12)
    assert ("across_processes" in loss.reads) == normalize
