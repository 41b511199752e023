"""Contrastive Policy Gradient, CoPG: a policy gradient on sequence-level scores that
works on off-policy data (a fixed scored dataset) as well as on on-line samples."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignment.losses.base import LossOutput, PreferenceLoss, SequenceLogps, check_range, register_loss
from alignment.losses.metrics import reward_metrics


@register_loss("copg")
@dataclass
class CoPGLoss(PreferenceLoss):
    """Contrastive Policy Gradient, CoPG (Flet-Berliac et al. 2024).

    For two completions y, y' of a prompt with rewards R(y), R(y') (`scores`) and
    log-ratios rho = log pi - log mu, the paper's sample objective (Eq. 17) is

        l(y, y') = (dR - (beta/2) drho) * drho,   dR = R(y) - R(y'),  drho = rho(y) - rho(y')
        loss     = -l

    l is to be *maximised* (the paper's Eq. 17 says "minimise", a typo: the gradient
    below is an ascent direction for l). There is no stop-gradient: d loss / d log pi(y) =
    -(R(y) - beta rho(y) - R(y') + beta rho(y')), the policy gradient of the
    beta-regularised reward R - beta rho, with the other completion's regularised
    reward as the contrastive baseline, whatever distribution the pair came from. Its
    optimum is pi(y) ∝ mu(y) exp(R(y) / beta). l is symmetric in (y, y'), so on a
    list of K items the loss is the mean of -l over every unordered pair of real items
    (equal rewards included: they pull the two log-ratios together), over all pairs of
    the batch. With rewards 1 and 0 on a pair and h = drho, -l = (beta/2) (h - 1/beta)^2
    - 1/(2 beta): IPO with tau = beta/2, up to scale and a constant.

    beta: the paper's default for its LLM experiments was not found; 0.1 (the usual
    DPO / IPO scale, also the implicit-reward scale of the metrics) is a choice, not
    the paper's."""

    paper = (
        "Flet-Berliac et al. 2024, Contrastive Policy Gradient: Aligning LLMs on sequence-level scores "
        "in a supervised-friendly fashion"
    )
    formula = "-(dR - (beta/2) drho) drho over unordered pairs, dR = R(y) - R(y'), drho = rho(y) - rho(y')"
    feedback = "rewards"

    beta: float = 0.1

    def __post_init__(self) -> None:
        self.beta = check_range(self.name, "beta", self.beta, gt=0)

    def __call__(self, logps: SequenceLogps) -> LossOutput:
        logps = logps.masked()
        if logps.reference is None:
            raise ValueError(f"{self.name}: needs reference log-probs; got None")
        mask = logps.mask
        rho = logps.logratios()
        rewards = logps.scores.to(rho.dtype)
        k = mask.shape[-1]
        upper = torch.triu(torch.ones(k, k, dtype=torch.bool, device=mask.device), diagonal=1)
        pairs = upper & mask[:, :, None] & mask[:, None, :]  # [B, K, K]: i < j, both real
        d_reward = torch.where(pairs, rewards[:, :, None] - rewards[:, None, :], 0.0)
        d_rho = torch.where(pairs, rho[:, :, None] - rho[:, None, :], 0.0)
        objective = (d_reward - 0.5 * self.beta * d_rho) * d_rho
        n_pairs = pairs.sum()
        denom = n_pairs.clamp(min=1).to(rho.dtype)
        loss = -torch.where(pairs, objective, 0.0).sum() / denom

        metrics, counts = reward_metrics(logps, self.reward_scale)
        with torch.no_grad():
            # drho in the direction of the better item: > 0 when the policy already
            # favours it; pairs with equal rewards count 0.
            aligned = torch.sign(d_reward) * d_rho
            parts = {"copg/objective": objective, "copg/reward_gap": d_reward.abs(), "copg/logratio_gap": aligned}
            for key, value in parts.items():
                metrics[key] = (torch.where(pairs, value, 0.0).sum() / denom).detach()
                counts[key] = n_pairs
        return LossOutput(loss=loss, metrics=metrics, counts=counts)
