"""The GRPO family against TRL 1.16's own `GRPOTrainer._compute_loss`, called on the same
tensors (one process, no gradient accumulation): every `loss_type` under TRL's name,
importance sampling per token and per sequence (GSPO), clip-higher, two-sided clipping,
the KL with and without its bias correction, and truncated completions masked; loss
value and gradient. The advantages against TRL's scale_rewards formulas."""

from __future__ import annotations

import types
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from trl import GRPOTrainer

from alignment.losses import SequenceLogps, get_loss
from alignment.losses.base import TokenLogps

LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"]
B, K, T = 3, 4, 5
BUDGET = 7  # max new tokens: dr_grpo's constant


class OneProcess:
    """What `_compute_loss` asks of an Accelerator, for one process."""

    num_processes = 1
    sync_gradients = True

    def reduce(self, tensor, reduction="sum"):
        return tensor

    def gather(self, tensor):
        return tensor

    def gather_for_metrics(self, tensor):
        return tensor

    def pad_across_processes(self, tensor, dim=0, pad_index=0):
        return tensor


def trl_loss(loss, log_pi, old, ref, advantages, mask, entropies=None, trainer=None, **extra_inputs):
    """TRL's `_compute_loss` with `loss`'s settings, on [N, T] tensors (N = B * K samples).
    `trainer`: the stand-in of an earlier call, whose adaptive entropy state carries on;
    `extra_inputs`: more of the inputs dict (the vLLM importance-sampling ratio)."""
    if trainer is None:
        trainer = trl_trainer(loss)
    entropies = torch.zeros_like(log_pi) if entropies is None else entropies
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (log_pi, entropies, None)
    n = log_pi.size(0)
    inputs = {
        "prompt_ids": torch.zeros(n, 1, dtype=torch.long),
        "prompt_mask": torch.ones(n, 1, dtype=torch.long),
        "completion_ids": torch.zeros(n, T, dtype=torch.long),
        "completion_mask": mask,
        "advantages": advantages,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum(),
        **extra_inputs,
    }
    return GRPOTrainer._compute_loss(trainer, None, inputs)


def trl_trainer(loss):
    """A stand-in for TRL's GRPOTrainer with `loss`'s settings: what `_compute_loss` reads."""
    config = {
        "loss_type": loss.name,
        "beta": loss.beta,
        "delta": loss.delta,
        "use_bias_correction_kl": loss.use_bias_correction_kl,
        **{key: getattr(loss, key) for key in vars(loss) if key.startswith(("sapo_", "vespo_"))},
    }
    entropy = {key: getattr(loss, key) for key in ("entropy_target", "entropy_coef_delta", "entropy_coef_min")}
    args = SimpleNamespace(**config, **entropy, entropy_coef_max=loss.entropy_coef_max, steps_per_generation=1)
    trainer = SimpleNamespace(
        args=args,
        loss_type=loss.name,
        beta=loss.beta,
        epsilon_low=loss.epsilon,
        epsilon_high=loss.upper,
        importance_sampling_level=loss.importance_sampling_level,
        top_entropy_quantile=loss.top_entropy_quantile,
        entropy_coef=loss.entropy_coef,
        use_adaptive_entropy=loss.use_adaptive_entropy,
        _entropy_bonus_enabled=loss.entropy_coef != 0.0 or loss.use_adaptive_entropy,
        _last_world_entropy=float("inf"),
        _entropy_window_stats=None,
        off_policy_mask_threshold=None,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        aux_loss_enabled=False,
        max_completion_length=BUDGET,
        current_gradient_accumulation_steps=1,
        accelerator=OneProcess(),
        model=SimpleNamespace(training=True),
        _metrics=defaultdict(lambda: defaultdict(list)),
    )
    trainer.get_high_entropy_mask = types.MethodType(GRPOTrainer.get_high_entropy_mask, trainer)
    trainer.get_gamma_weights = GRPOTrainer.get_gamma_weights
    return trainer


def batch(seed: int = 0, truncated: bool = False):
    """B prompts x K samples of up to T tokens, rewards with ties, a sampling policy and a
    reference near the policy; sample (0, 1) ends after 2 tokens, (2, 3) after 3."""
    g = torch.Generator().manual_seed(seed)
    log_pi = -3 * torch.rand(B, K, T, generator=g, dtype=torch.float64)
    old = log_pi + 0.3 * torch.randn(B, K, T, generator=g, dtype=torch.float64)
    ref = log_pi + 0.3 * torch.randn(B, K, T, generator=g, dtype=torch.float64)
    tmask = torch.ones(B, K, T, dtype=torch.bool)
    tmask[0, 1, 2:] = False
    tmask[2, 3, 3:] = False
    rewards = torch.tensor([[1.0, 0.0, 0.5, 1.0], [2.0, -1.0, 0.0, 0.0], [0.3, 0.7, 0.1, 0.9]], dtype=torch.float64)
    ended = torch.zeros(B, K, dtype=torch.bool)
    if truncated:
        ended[1, 2] = ended[2, 0] = True
    return log_pi, old, ref, tmask, rewards, ended


def ours(loss, log_pi, old, ref, tmask, rewards, truncated, entropies=None):
    policy = log_pi.clone().requires_grad_(True)
    logps = SequenceLogps(
        policy=(policy * tmask).sum(-1),
        reference=(ref * tmask).sum(-1),
        scores=rewards,
        mask=torch.ones(B, K, dtype=torch.bool),
        lengths=tmask.sum(-1),
        tokens=TokenLogps(policy=policy, reference=ref, old_policy=old, mask=tmask),
        truncated=truncated,
        completion_budget=BUDGET,
        across_processes=lambda t: t,
        entropies=entropies,
        gathered=lambda t: t,
    )
    return policy, logps


VARIANTS = [
    {},
    {"importance_sampling_level": "sequence"},
    {"beta": 0.04},
    {"beta": 0.04, "use_bias_correction_kl": True},
    {"beta": 0.04, "use_bias_correction_kl": True, "importance_sampling_level": "sequence"},
    {"epsilon_high": 0.28},
    {"delta": 1.5},
    {"mask_truncated_completions": True},
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(f"{k}={v}" for k, v in v.items()) or "defaults")
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_equal_to_trls_compute_loss(loss_type, variant):
    loss = get_loss(loss_type, **variant)
    log_pi, old, ref, tmask, rewards, ended = batch(truncated=True)
    policy, logps = ours(loss, log_pi, old, ref, tmask, rewards, ended)
    out = loss(logps)
    (grad,) = torch.autograd.grad(out.loss, policy)

    advantages = loss.advantages(logps).reshape(-1)
    trl_mask = tmask.reshape(-1, T).to(torch.float64)
    if loss.mask_truncated_completions:  # TRL zeroes a truncated sample's completion mask
        trl_mask = trl_mask * ~ended.reshape(-1, 1)
    trl_policy = log_pi.reshape(-1, T).clone().requires_grad_(True)
    expected = trl_loss(loss, trl_policy, old.reshape(-1, T), ref.reshape(-1, T), advantages, trl_mask)
    (trl_grad,) = torch.autograd.grad(expected, trl_policy)

    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-10, abs=1e-12)
    torch.testing.assert_close(grad.reshape(-1, T) * trl_mask, trl_grad * trl_mask, rtol=1e-10, atol=1e-12)


def test_the_variants_change_the_loss():
    """Each option above is live: it moves the loss away from the defaults' (else the oracle proves little)."""
    log_pi, old, ref, tmask, rewards, ended = batch(truncated=True)
    for loss_type in LOSS_TYPES:
        base = get_loss(loss_type)(ours(None, log_pi, old, ref, tmask, rewards, ended)[1]).loss.item()
        changed = [
            v
            for v in VARIANTS[1:]
            if get_loss(loss_type, **v)(ours(None, log_pi, old, ref, tmask, rewards, ended)[1]).loss.item() != base
        ]
        assert len(changed) >= 4, (loss_type, changed)


def trl_advantages(rewards: torch.Tensor, scale: str) -> torch.Tensor:
    """TRL 1.16's `_generate_and_score_completions` for one reward function (sum_then_normalize)."""
    grouped = rewards.view(-1, K)
    mean = grouped.mean(dim=1).repeat_interleave(K)
    flat = rewards.reshape(-1)
    if scale == "batch":
        std = flat.std().expand_as(flat)
    else:
        std = grouped.std(dim=1).repeat_interleave(K)
    advantages = flat - mean
    return advantages / (std + 1e-4) if scale != "none" else advantages


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_equal_trls_scale_rewards(scale):
    log_pi, old, ref, tmask, rewards, ended = batch()
    _, logps = ours(None, log_pi, old, ref, tmask, rewards, ended)
    got = get_loss("grpo", scale_rewards=scale).advantages(logps).reshape(-1)
    torch.testing.assert_close(got, trl_advantages(rewards, scale), rtol=1e-12, atol=1e-12)


def test_the_batch_std_and_token_count_span_every_process():
    """Two processes holding a third and two thirds of the batch: `across_processes` sums
    their moments and token counts, so the std is the whole batch's and dapo's normalizer
    the batch's tokens per process."""
    log_pi, old, ref, tmask, rewards, ended = batch()
    loss = get_loss("grpo", scale_rewards="batch")
    expected = loss.advantages(ours(None, log_pi, old, ref, tmask, rewards, ended)[1])
    parts = [slice(0, 1), slice(1, 3)]

    def summed_over(name):  # what each process's `across_processes` returns: the sum of both processes' tensors
        return lambda t: sum(seen[name])

    for rows in parts:
        seen = {"moments": []}
        for other in parts:
            values = rewards[other]
            seen["moments"].append(
                torch.stack([torch.tensor(values.numel(), dtype=torch.float64), values.sum(), (values**2).sum()])
            )
        part = SequenceLogps(
            policy=log_pi[rows].sum(-1),
            reference=None,
            scores=rewards[rows],
            mask=torch.ones_like(rewards[rows], dtype=torch.bool),
            lengths=tmask[rows].sum(-1),
            across_processes=summed_over("moments"),
        )
        torch.testing.assert_close(loss.advantages(part), expected[rows], rtol=1e-12, atol=1e-12)

    dapo = get_loss("dapo")
    whole = dapo(ours(None, log_pi, old, ref, tmask, rewards, ended)[1]).loss
    tokens = [tmask[rows].sum().double() for rows in parts]
    losses = []
    for rows in parts:
        _, logps = ours(None, log_pi, old, ref, tmask, rewards, ended)
        logps = SequenceLogps(
            policy=logps.policy[rows],
            reference=logps.reference[rows],
            scores=rewards[rows],
            mask=logps.mask[rows],
            lengths=logps.lengths[rows],
            tokens=TokenLogps(log_pi[rows], ref[rows], old[rows], tmask[rows]),
            across_processes=lambda t: torch.stack([sum(tokens), torch.tensor(2.0, dtype=torch.float64)]),
        )
        # A part's own advantages are its groups', as the whole batch's (scale_rewards "group").
        losses.append(dapo(logps).loss)
    # DDP averages the two processes' gradients (and so their losses): the whole batch's token mean.
    assert ((losses[0] + losses[1]) / 2).item() == pytest.approx(whole.item(), rel=1e-12)


def entropies_of(seed: int = 1) -> torch.Tensor:
    return 4 * torch.rand(B, K, T, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


ENTROPY_VARIANTS = [
    {"top_entropy_quantile": 0.2},
    {"top_entropy_quantile": 0.6, "importance_sampling_level": "sequence"},
    {"entropy_coef": 0.01},
    {"entropy_coef": 0.05, "top_entropy_quantile": 0.5, "mask_truncated_completions": True},
]


@pytest.mark.parametrize("variant", ENTROPY_VARIANTS, ids=lambda v: ",".join(f"{k}={v}" for k, v in v.items()))
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_entropy_options_equal_trls(loss_type, variant):
    """top_entropy_quantile (the policy term of the high-entropy tokens only) and the entropy
    bonus: value and gradient, in the log-probs and in the entropies, as TRL's."""
    loss = get_loss(loss_type, **variant)
    log_pi, old, ref, tmask, rewards, ended = batch(truncated=True)
    entropy = entropies_of().requires_grad_(True)
    policy, logps = ours(loss, log_pi, old, ref, tmask, rewards, ended, entropies=entropy)
    out = loss(logps)
    grads = torch.autograd.grad(out.loss, (policy, entropy), allow_unused=True)

    trl_mask = tmask.reshape(-1, T).to(torch.float64)
    if loss.mask_truncated_completions:
        trl_mask = trl_mask * ~ended.reshape(-1, 1)
    trl_policy = log_pi.reshape(-1, T).clone().requires_grad_(True)
    trl_entropy = entropy.detach().reshape(-1, T).clone().requires_grad_(True)
    advantages = loss.advantages(logps).reshape(-1)
    expected = trl_loss(loss, trl_policy, old.reshape(-1, T), ref.reshape(-1, T), advantages, trl_mask, trl_entropy)
    trl_grads = torch.autograd.grad(expected, (trl_policy, trl_entropy), allow_unused=True)

    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-10, abs=1e-12)
    for ours_grad, trl_grad in zip(grads, trl_grads, strict=True):
        ours_grad = torch.zeros(B, K, T, dtype=torch.float64) if ours_grad is None else ours_grad
        trl_grad = torch.zeros(B * K, T, dtype=torch.float64) if trl_grad is None else trl_grad
        torch.testing.assert_close(ours_grad.reshape(-1, T) * trl_mask, trl_grad * trl_mask, rtol=1e-10, atol=1e-12)


def test_adaptive_entropy_follows_trls_controller_step_by_step():
    """Skywork-OR1's controller over four optimizer steps: the bonus is off at step 1 (no
    entropy seen yet), the coefficient moves by entropy_coef_delta each step towards the
    target, and applies only while the last step's entropy is at or below it; the state
    survives a checkpoint (state_dict / load_state_dict)."""
    options = {"use_adaptive_entropy": True, "entropy_coef": 0.01, "entropy_coef_delta": 0.02, "entropy_target": 1.0}
    loss = get_loss("dapo", **options)
    trainer = trl_trainer(loss)
    log_pi, old, ref, tmask, rewards, ended = batch()
    trl_mask = tmask.reshape(-1, T).to(torch.float64)
    coefficients = []
    for step in range(4):
        entropy = entropies_of(seed=step) * (0.3 if step % 2 else 1.0)  # above, then below the target
        policy, logps = ours(loss, log_pi, old, ref, tmask, rewards, ended, entropies=entropy)
        value = loss(logps).loss.item()
        advantages = loss.advantages(logps).reshape(-1)
        expected = trl_loss(
            loss,
            log_pi.reshape(-1, T),
            old.reshape(-1, T),
            ref.reshape(-1, T),
            advantages,
            trl_mask,
            entropy.reshape(-1, T),
            trainer,
        )
        assert value == pytest.approx(expected.item(), rel=1e-10, abs=1e-12), step
        loss.end_step(lambda t: t)
        assert loss.state_dict() == {
            "entropy_coef": pytest.approx(trainer.entropy_coef, rel=1e-12),
            "last_world_entropy": pytest.approx(trainer._last_world_entropy, rel=1e-12),
        }
        coefficients.append(trainer.entropy_coef)
    assert coefficients == pytest.approx([0.0, 0.02, 0.0, 0.02])  # down (floored at 0), up, down, up
    resumed = get_loss("dapo", **options)
    resumed.load_state_dict(loss.state_dict())
    assert resumed.state_dict() == loss.state_dict()
