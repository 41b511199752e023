"""The importance-sampling correction of an external engine's samples (online.engine
vllm) against TRL 1.16: the ratio by TRL's formulas in every mode, by hand on a small
case, and every GRPO-family loss with the ratio against TRL's own
`GRPOTrainer._compute_loss` with `use_vllm` and `vllm_importance_sampling_correction`."""

from __future__ import annotations

import math

import pytest
import torch

from alignment.losses import get_loss
from alignment.online.engines.correction import IS_MODES, EngineCorrection, importance_sampling_ratio, logp_mismatch
from tests.test_grpo_losses import LOSS_TYPES, B, K, T, batch, ours, trl_loss, trl_trainer


def trl_ratio(old, sampling, mask, mode, clip_min, clip_max):
    """TRL 1.16 GRPOTrainer._generate_and_score_completions, the block under
    `if self.use_vllm and self.vllm_importance_sampling_correction`, transcribed."""
    per_token_logps_diff = torch.nan_to_num((old - sampling) * mask, nan=0.0)
    if mode in ["sequence_mask", "sequence_truncate"]:
        logps_diff = per_token_logps_diff.sum(dim=-1, keepdim=True)
    else:
        logps_diff = per_token_logps_diff
    ratio = torch.exp(logps_diff)
    if mode in ["sequence_truncate", "token_truncate"]:
        return torch.clamp(ratio, min=clip_min, max=clip_max)
    min_val = clip_min if clip_min is not None else -math.inf
    max_val = clip_max if clip_max is not None else math.inf
    return ratio.masked_fill((ratio < min_val) | (ratio > max_val), value=0.0)


def engine_logps(seed=1):
    """The trainer's token log-probs, and an engine's off by ~0.7 nats, one NaN."""
    log_pi, _, _, tmask, _, _ = batch()
    g = torch.Generator().manual_seed(seed)
    engine = log_pi + 0.7 * torch.randn(B, K, T, generator=g, dtype=torch.float64)
    engine[1, 0, 2] = float("nan")  # a token the engine could not score
    return log_pi, engine, tmask


@pytest.mark.parametrize("clip", [(None, 3.0), (0.5, 2.0), (0.8, None)])
@pytest.mark.parametrize("mode", IS_MODES)
def test_the_ratio_is_trls(mode, clip):
    log_pi, engine, tmask = engine_logps()
    ours_ = importance_sampling_ratio(log_pi, engine, tmask, mode, *clip)
    expected = trl_ratio(log_pi, engine, tmask.to(log_pi.dtype), mode, *clip)
    torch.testing.assert_close(ours_, expected, rtol=0, atol=0)
    unclipped = importance_sampling_ratio(log_pi, engine, tmask, mode, 1e-30, 1e30)
    assert not torch.equal(ours_, unclipped)  # the bounds bite on this batch


def test_the_ratio_by_hand():
    """Two tokens with log-differences +0.5 and -2 (and a padded third)."""
    trainer = torch.tensor([[-1.0, -2.0, -7.0]])
    engine = torch.tensor([[-1.5, 0.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    e = math.exp
    token = importance_sampling_ratio(trainer, engine, mask, "token_truncate", None, 1.5)
    torch.testing.assert_close(token, torch.tensor([[1.5, e(-2.0), 1.0]]))  # e^0.5 = 1.65 capped at 1.5
    masked = importance_sampling_ratio(trainer, engine, mask, "token_mask", 0.5, 3.0)
    torch.testing.assert_close(masked, torch.tensor([[e(0.5), 0.0, 1.0]]))  # e^-2 = 0.135 < 0.5: masked
    sequence = importance_sampling_ratio(trainer, engine, mask, "sequence_truncate", 0.5, 3.0)
    torch.testing.assert_close(sequence, torch.tensor([[0.5]]))  # e^-1.5 = 0.22 raised to 0.5
    assert importance_sampling_ratio(trainer, engine, mask, "sequence_mask", 0.5, 3.0).item() == 0.0
    with pytest.raises(ValueError, match="unknown importance sampling mode 'tokens'; available: token_truncate"):
        importance_sampling_ratio(trainer, engine, mask, "tokens")


def test_slots_not_sampled_from_the_policy_keep_ratio_one():
    log_pi, engine, tmask = engine_logps()
    from_policy = torch.tensor([True, False, True, False])
    rho = EngineCorrection(engine, from_policy, "token_truncate", None, 3.0).ratio(log_pi, tmask)
    assert (rho[:, ~from_policy] == 1).all()
    torch.testing.assert_close(
        rho[:, from_policy], importance_sampling_ratio(log_pi, engine, tmask, "token_truncate")[:, from_policy]
    )
    assert EngineCorrection(engine, from_policy, None).ratio(log_pi, tmask) is None  # measured only


def test_the_mismatch_metrics_skip_padding_and_nan():
    trainer = torch.tensor([[-1.0, -2.0, -7.0], [-1.0, -1.0, -1.0]])
    engine = torch.tensor([[-1.5, float("nan"), 0.0], [-1.25, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    got = logp_mismatch(trainer, engine, mask)
    assert got["mean"].item() == pytest.approx((0.5 + 0.25 + 0 + 0) / 4)
    assert got["max"].item() == pytest.approx(0.5)


# TRL refuses VESPO with a sequence-level correction (so does our config): token modes only.
CASES = [(t, m) for t in LOSS_TYPES for m in IS_MODES if not (t == "vespo" and m.startswith("sequence"))]


@pytest.mark.parametrize("loss_type,mode", CASES)
def test_losses_with_the_engine_ratio_equal_trls(loss_type, mode):
    loss = get_loss(loss_type, beta=0.04)
    log_pi, old, ref, tmask, rewards, ended = batch()
    engine = old + 0.3 * torch.randn(B, K, T, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    # The trainer's sampling-policy log-probs (`old`) against the engine's.
    ratio = importance_sampling_ratio(old, engine, tmask, mode, None, 1.4)
    policy, logps = ours(loss, log_pi, old, ref, tmask, rewards, ended)
    logps.engine_ratio = ratio
    out = loss(logps)
    (grad,) = torch.autograd.grad(out.loss, policy)
    without = loss(ours(loss, log_pi, old, ref, tmask, rewards, ended)[1]).loss

    advantages = loss.advantages(logps).reshape(-1)
    trl_mask = tmask.reshape(-1, T).to(torch.float64)
    trl_policy = log_pi.reshape(-1, T).clone().requires_grad_(True)
    trl_ratio_ = ratio.reshape(B * K, -1)
    trainer = trl_trainer(loss)
    trainer.use_vllm = trainer.vllm_importance_sampling_correction = True
    expected = trl_loss(
        loss,
        trl_policy,
        old.reshape(-1, T),
        ref.reshape(-1, T),
        advantages,
        trl_mask,
        trainer=trainer,
        importance_sampling_ratio=trl_ratio_,
    )
    (trl_grad,) = torch.autograd.grad(expected, trl_policy)

    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-10, abs=1e-12)
    torch.testing.assert_close(grad.reshape(-1, T) * trl_mask, trl_grad * trl_mask, rtol=1e-10, atol=1e-12)
    assert out.loss.item() != pytest.approx(without.item(), rel=1e-6)  # the correction is live
