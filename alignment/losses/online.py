"""Online losses of the Nash-MD family: they learn from completions sampled during
training and judged by a preference model, never from a fixed dataset.

Batch convention (filled by the online trainer): K = 2 items per prompt, item 0 is y
and item 1 is y'; `scores` = [P(y > y'), P(y' > y)] from the judge. `policy` and
`reference` are sequence log-probs log pi(y), log mu(y) (summed over tokens), so
rho(y) = policy - reference is the sequence log-ratio."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignment.losses.base import LossOutput, PreferenceLoss, SequenceLogps, check_range, register_loss
from alignment.losses.metrics import reward_metrics


@dataclass
class OnlineLoss(PreferenceLoss):
    """Shared by the online losses: the regularisation tau, which is also the scale of
    the implicit reward tau * rho reported in the metrics."""

    tau: float = 0.1

    def __post_init__(self) -> None:
        self.tau = check_range(self.name, "tau", self.tau, gt=0)

    @property
    def reward_scale(self) -> float:
        return self.tau


def _pair_weights(logps: SequenceLogps) -> tuple[torch.Tensor, torch.Tensor]:
    """Which prompts hold a real (y, y') pair, as a float weight, and their count."""
    real = (logps.mask[:, 0] & logps.mask[:, 1]).to(logps.policy.dtype)
    return real, real.sum().clamp(min=1)


@register_loss("nash_md")
@dataclass
class NashMDLoss(OnlineLoss):
    """Nash-MD-PG (Munos et al. 2023, section 7): a policy gradient towards the Nash
    equilibrium of the KL-regularised preference game.

    y ~ pi (item 0), y' ~ the recipe's sampler (item 1; the geometric mixture pi_m for
    Nash-MD), p = P(y > y'):

        A    = stopgrad(p - 1/2 - tau * (log pi(y) - log mu(y)))
        loss = -A * log pi(y)

    The KL term is per sequence: the sequence log-ratio of y is a one-sample estimate
    of KL(pi || mu) and multiplies the score function of the whole sequence (not a
    reward-to-go over the remaining tokens). Its expectation is the gradient of
    P(pi > pi_m) - tau * KL(pi || mu); at a stationary point
    pi(y) ∝ mu(y) exp(P(y > pi_m) / tau), the regularised Nash equilibrium when m -> 0.
    The 1/2 is a baseline: it changes the variance, not the expected gradient."""

    paper = "Munos et al. 2023, Nash Learning from Human Feedback"
    formula = "-stopgrad(P(y > y') - 1/2 - tau (log pi(y) - log mu(y))) * log pi(y), y ~ pi, y' ~ sampler"
    online_only = True
    first_item_from_policy = True
    feedback = "preferences"
    num_samples = 2

    tau: float = 0.008

    def __call__(self, logps: SequenceLogps) -> LossOutput:
        logps = logps.masked()
        weight, n = _pair_weights(logps)
        log_pi_y = logps.policy[:, 0]
        log_ratio_y = logps.logratios()[:, 0].detach()
        p = logps.scores[:, 0].to(log_pi_y.dtype)
        advantage = (p - 0.5 - self.tau * log_ratio_y).detach()  # A, no gradient
        loss = (weight * -advantage * log_pi_y).sum() / n

        metrics, counts = reward_metrics(logps, self.reward_scale)
        parts = {"nash_md/advantage": advantage, "nash_md/preference": p, "nash_md/log_ratio": log_ratio_y}
        for key, value in parts.items():
            metrics[key] = ((weight * value).sum() / n).detach()
            counts[key] = weight.sum()
        return LossOutput(loss=loss, metrics=metrics, counts=counts)


@register_loss("online_ipo")
@dataclass
class OnlineIPOLoss(OnlineLoss):
    """Online IPO and IPO-MD (Calandriello et al. 2024): IPO with the judge's soft label.

    Both samples come from the recipe's sampler: the policy for online IPO, the
    geometric mixture for IPO-MD. With h = rho(y) - rho(y'), c = 1/(2 tau), p = P(y > y'):

        loss = p (h - c)^2 + (1 - p) (-h - c)^2

    equal to (h - (p - 1/2) / tau)^2 up to a constant, so its stationary point with
    policy samples is pi(y) ∝ mu(y) exp(P(y > pi) / tau): online IPO and Nash-MD share
    the regularised Nash equilibrium (the paper's equivalence). Log-ratios are per
    sequence, as in the paper."""

    trl = "OnlineDPOTrainer loss_type='ipo' (trl.experimental)"
    paper = "Calandriello et al. 2024, Human Alignment of Large Language Models through Online Preference Optimisation"
    formula = "p (h - c)^2 + (1 - p) (-h - c)^2, c = 1/(2 tau), p = P(y > y'), h = rho(y) - rho(y')"
    online_only = True
    feedback = "preferences"
    num_samples = 2

    tau: float = 0.1

    def __call__(self, logps: SequenceLogps) -> LossOutput:
        logps = logps.masked()
        weight, n = _pair_weights(logps)
        rho = logps.logratios()
        h = rho[:, 0] - rho[:, 1]
        p = logps.scores[:, 0].to(h.dtype)
        c = 1.0 / (2.0 * self.tau)
        per_pair = p * (h - c) ** 2 + (1 - p) * (-h - c) ** 2
        loss = (weight * per_pair).sum() / n

        metrics, counts = reward_metrics(logps, self.reward_scale)
        metrics["online_ipo/preference"] = ((weight * p).sum() / n).detach()
        counts["online_ipo/preference"] = weight.sum()
        return LossOutput(loss=loss, metrics=metrics, counts=counts)
