"""Losses that train judges: scalar reward models, pairwise preference models and VPL.

They see the same `SequenceLogps` as the policy losses, with `policy` holding the
model's reward r(x, y_k) of each completion ([B, K]; no reference). `model_head` tells
the trainer which model to build and how to fill the batch (`alignment.rewards.heads`).
Notation: L(x) = softplus(-x) = -log sigmoid(x)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from alignment.losses.base import (
    LossOutput,
    LossParameterError,
    PreferenceLoss,
    SequenceLogps,
    check_choice,
    check_range,
    register_loss,
)
from alignment.losses.listwise import plackett_luce_nll
from alignment.losses.metrics import reward_metrics
from alignment.losses.pairs import PAIR_MODES, PairMode, pair_mask
from alignment.losses.pairwise import neg_logsigmoid
from alignment.schema.online import PAIR_PLACEHOLDERS as PLACEHOLDERS
from alignment.schema.online import PAIR_TEMPLATE


def _mean_over(values: Tensor, selected: Tensor) -> Tensor:
    # With nothing selected the sum is an exact 0 that still has a grad_fn.
    return torch.where(selected, values, 0.0).sum() / selected.sum().clamp(min=1).to(values.dtype)


def _with_accuracy(metrics: dict[str, Tensor], counts: dict[str, Tensor]) -> tuple[dict, dict]:
    """`accuracy` (TRL's name for a reward model's held-out pair accuracy) is the shared
    `reward_accuracy`: the fraction of ordered pairs whose rewards are in the right order."""
    metrics["accuracy"], counts["accuracy"] = metrics["reward_accuracy"], counts["reward_accuracy"]
    return metrics, counts


@register_loss("bradley_terry")
@dataclass
class BradleyTerryLoss(PreferenceLoss):
    """Bradley-Terry reward model (Bradley & Terry 1952; for language models Stiennon et
    al. 2020, Ouyang et al. 2022), with the margin of Llama 2 (Touvron et al. 2023) and the
    reward centering of Eisenstein et al. 2023.

    For each selected pair (w preferred over l) of a list, with m the row's margin
    (the data's optional `margin` column, 0 when absent):

        loss = mean_pairs L(r_w - r_l - m) + c * mean_pairs (r_w + r_l)^2

    c = `center_rewards_coefficient` (0: off) pulls the rewards towards mean zero, as
    TRL's `center_rewards_coefficient`. On pairs it is TRL's RewardTrainer loss."""

    trl = "RewardTrainer (the margin column; center_rewards_coefficient)"
    paper = "Bradley & Terry 1952; Ouyang et al. 2022 (reward model); Eisenstein et al. 2023 (centering)"
    formula = "mean L(r_w - r_l - margin) + c * mean (r_w + r_l)^2"
    reads: ClassVar[frozenset[str]] = frozenset({"margins"})
    model_head: ClassVar[str] = "reward"

    center_rewards_coefficient: float = 0.0
    pairs: PairMode = "best_vs_worst"

    def __post_init__(self) -> None:
        check_choice(self.name, "pairs", self.pairs, PAIR_MODES)
        self.center_rewards_coefficient = check_range(
            self.name, "center_rewards_coefficient", self.center_rewards_coefficient, ge=0
        )

    @property
    def reward_scale(self) -> float:
        return 1.0

    def __call__(self, logps: SequenceLogps) -> LossOutput:
        logps = logps.masked()
        selected = pair_mask(logps.scores, logps.mask, self.pairs)
        r = logps.model_scores
        margin = 0.0 if logps.margins is None else logps.margins.to(r.dtype)[:, None, None]
        h = torch.where(selected, r[:, :, None] - r[:, None, :] - margin, 0.0)
        total = torch.where(selected, r[:, :, None] + r[:, None, :], 0.0)
        likelihood = _mean_over(neg_logsigmoid(h), selected)
        centering = _mean_over(total**2, selected)
        loss = likelihood + self.center_rewards_coefficient * centering
        metrics, counts = reward_metrics(logps, 1.0)
        metrics.update({"bradley_terry": likelihood.detach(), "centering": centering.detach()})
        counts.update({"bradley_terry": selected.sum(), "centering": selected.sum()})
        return LossOutput(loss, *_with_accuracy(metrics, counts))


@register_loss("plackett_luce")
@dataclass
class PlackettLuceLoss(PreferenceLoss):
    """Plackett-Luce reward model on ranked lists (Plackett 1975; Luce 1959): the
    likelihood of the labelled ranking under P(y_(k) first among the rest) =
    softmax of the rewards of the items not yet ranked.

    With the real items sorted by score, best first (ties by position):
        loss = mean_lists -sum_k [r_(k) - logsumexp_{j >= k} r_(j)]
    For K = 2 it is the Bradley-Terry loss L(r_w - r_l)."""

    paper = "Plackett 1975, The Analysis of Permutations; Luce 1959, Individual Choice Behavior"
    formula = "-sum_k [r_(k) - logsumexp_{j >= k} r_(j)], items in label order"
    reads: ClassVar[frozenset[str]] = frozenset()
    model_head: ClassVar[str] = "reward"

    @property
    def reward_scale(self) -> float:
        return 1.0

    def __call__(self, logps: SequenceLogps) -> LossOutput:
        logps = logps.masked()
        per_list, lists = plackett_luce_nll(logps.model_scores, logps.scores, logps.mask)
        loss = per_list.sum() / lists.sum().clamp(min=1).to(per_list.dtype)
        metrics, counts = reward_metrics(logps, 1.0)
        return LossOutput(loss, *_with_accuracy(metrics, counts))


@register_loss("pairwise_preference")
@dataclass
class PairwisePreferenceLoss(PreferenceLoss):
    """The pairwise preference model of Nash learning from human feedback (Munos et al.
    2023): a classifier f(x, y, y') = logit P(y > y' | x) reading the prompt and both
    completions, which need not be transitive.

    Each selected pair (w, l) is shown in both orders, with labels 1 and 0:

        loss = mean_pairs [L(f(x, w, l)) + L(-f(x, l, w))] / 2

    so P(y > y') + P(y' > y) = 1 is learned, not imposed: `symmetry_gap`,
    |sigmoid f(x, w, l) + sigmoid f(x, l, w) - 1|, reports how far it holds. As a judge
    both orders are averaged (`alignment.online.judges.PairwiseJudge`). `accuracy` is the
    fraction of pairs whose averaged P(w > l) is above 1/2. `template` lays out the
    model's input (saved with the model, so the `pairwise` judge reads the same layout)."""

    paper = "Munos et al. 2023, Nash Learning from Human Feedback (the preference model)"
    formula = "mean [L(f(x, w, l)) + L(-f(x, l, w))] / 2, f = logit P(y > y' | x)"
    reads: ClassVar[frozenset[str]] = frozenset({"pair_logits"})
    model_head: ClassVar[str] = "preference"

    pairs: PairMode = "best_vs_worst"
    template: str = PAIR_TEMPLATE

    def __post_init__(self) -> None:
        check_choice(self.name, "pairs", self.pairs, PAIR_MODES)
        if not isinstance(self.template, str) or any(self.template.count(p) != 1 for p in PLACEHOLDERS):
            raise LossParameterError(
                f"{self.name}: template must hold {', '.join(PLACEHOLDERS)} once each, got {self.template!r}"
            )

    @property
    def reward_scale(self) -> float:
        return 1.0

    def selected_pairs(self, scores: Tensor, mask: Tensor) -> Tensor:
        """[B, K, K] the (w, l) pairs the loss trains on: the trainer runs the model on
        exactly these, in both orders."""
        return pair_mask(scores, mask, self.pairs)

    def __call__(self, logps: SequenceLogps) -> LossOutput:
        if logps.pair_logits is None:
            raise ValueError(f"{self.name}: the batch has no pair_logits (train it with the preference model head)")
        logps = logps.masked()
        selected = self.selected_pairs(logps.scores, logps.mask)
        f = logps.pair_logits
        forward = torch.where(selected, f, 0.0)  # f(x, w, l), label 1
        backward = torch.where(selected, f.transpose(1, 2), 0.0)  # f(x, l, w), label 0
        loss = _mean_over((neg_logsigmoid(forward) + neg_logsigmoid(-backward)) / 2, selected)
        with torch.no_grad():
            p_forward, p_backward = torch.sigmoid(forward), torch.sigmoid(backward)
            averaged = (p_forward + 1 - p_backward) / 2
            right = (averaged > 0.5).to(f.dtype) + 0.5 * (averaged == 0.5).to(f.dtype)
            metrics, counts = reward_metrics(logps, 1.0)
            n = selected.sum()
            metrics["accuracy"] = _mean_over(right, selected)
            metrics["symmetry_gap"] = _mean_over((p_forward + p_backward - 1).abs(), selected)
            metrics["preference"] = _mean_over(averaged, selected)
            counts.update({"accuracy": n, "symmetry_gap": n, "preference": n})
        return LossOutput(loss, metrics, counts)


@register_loss("vpl")
@dataclass
class VPLLoss(PreferenceLoss):
    """Variational Preference Learning (Poddar et al. 2024, Personalizing RLHF with
    Variational Preference Learning): a reward r(x, y, z) conditioned on a user latent z,
    inferred from N of that user's labelled pairs by q(z | context) = N(mu, diag sigma^2).

    The negative ELBO, for the target pair (w, l) of each row and z ~ q (reparametrised):

        loss = mean L(r(x, w, z) - r(x, l, z)) + kl_weight * a(t) * mean KL(q || N(0, I))

    KL(q || N(0, I)) = -1/2 sum_d (1 + log sigma_d^2 - mu_d^2 - sigma_d^2). The
    authors' code also adds a supervised contrastive term on z by user id
    (`user_contrastive`, weight 1 there); it is `contrastive_weight`, 0 by default
    because on the tiny task it keeps the model at chance (it needs the data's `user_id`
    in training only, never at inference). The
    annealing a(t) follows the authors' code (vpl_llm `Annealer`: cosine, cyclical,
    baseline 0.1): a(t) = 0.1 + 0.9 (cos(pi (u - 1)) + 1) / 2, u = (t mod T) / T,
    T = `anneal_steps` (0: no annealing, a = 1). The paper tunes the KL weight; the
    default 0.001 is what the tiny two-user task needs (at 0.01 the posterior collapses
    to the prior).

    The model's shape is part of the method, so it is set here: `latent_dim` D and
    `hidden_dim` of the encoder and decoder MLPs (512 and 512 in the authors' LLM runs),
    and `context_pairs` N, the labelled pairs per user the encoder reads (the
    authors' runs use 1 to 16)."""

    paper = "Poddar et al. 2024, Personalizing Reinforcement Learning from Human Feedback with Variational Preference Learning"
    formula = "mean L(r(x,w,z) - r(x,l,z)) + kl_weight * a(t) * KL(q(z|context) || N(0, I)), z ~ q"
    reads: ClassVar[frozenset[str]] = frozenset({"latent"})
    model_head: ClassVar[str] = "vpl"

    kl_weight: float = 0.001
    anneal_steps: int = 0
    contrastive_weight: float = 0.0
    temperature: float = 0.05
    latent_dim: int = 512
    hidden_dim: int = 512
    context_pairs: int = 8

    def __post_init__(self) -> None:
        self.kl_weight = check_range(self.name, "kl_weight", self.kl_weight, ge=0)
        self.contrastive_weight = check_range(self.name, "contrastive_weight", self.contrastive_weight, ge=0)
        self.temperature = check_range(self.name, "temperature", self.temperature, gt=0)
        for key, low in (("anneal_steps", 0), ("latent_dim", 1), ("hidden_dim", 1), ("context_pairs", 1)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise LossParameterError(f"{self.name}: {key} must be an integer >= {low}, got {value!r}")

    @property
    def reward_scale(self) -> float:
        return 1.0

    def annealing(self, step: int) -> float:
        if self.anneal_steps == 0:
            return 1.0
        u = (step % self.anneal_steps) / self.anneal_steps
        return 0.1 + 0.9 * (math.cos(math.pi * (u - 1)) + 1) / 2

    def __call__(self, logps: SequenceLogps) -> LossOutput:
        if logps.latent is None:
            raise ValueError(f"{self.name}: the batch has no latent posterior (train it with the VPL model head)")
        logps = logps.masked()
        selected = pair_mask(logps.scores, logps.mask, "best_vs_worst")
        r = logps.model_scores
        h = torch.where(selected, r[:, :, None] - r[:, None, :], 0.0)
        likelihood = _mean_over(neg_logsigmoid(h), selected)
        mean, log_var = logps.latent.mean, logps.latent.log_var
        kl = (-0.5 * (1 + log_var - mean**2 - log_var.exp()).sum(-1)).mean()
        loss = likelihood + self.kl_weight * self.annealing(logps.latent.step) * kl
        metrics, counts = reward_metrics(logps, 1.0)
        if self.contrastive_weight > 0 and logps.latent.z is not None and logps.latent.users is not None:
            contrastive = user_contrastive(logps.latent.z, logps.latent.users, self.temperature)
            loss = loss + self.contrastive_weight * contrastive
            metrics["contrastive"] = contrastive.detach()
        metrics.update({"bradley_terry": likelihood.detach(), "kl": kl.detach()})
        counts.update({"bradley_terry": selected.sum()})
        return LossOutput(loss, *_with_accuracy(metrics, counts))


def user_contrastive(z: Tensor, users: Tensor, temperature: float = 0.05) -> Tensor:
    """The VPL authors' contrastive term (vpl_llm `get_contrastive_loss`): with e = z / |z|
    and s_ij = e_i . e_j, per row i
        log sum_{j != i} exp(s_ij / T) - mean_{j != i, same user} s_ij
    averaged over rows (the positives' similarity is not divided by T, as in their code)."""
    e = torch.nn.functional.normalize(z.float(), dim=-1)
    sim = e @ e.T
    others = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    denominator = torch.where(others, torch.exp(sim / temperature), 0.0).sum(-1)
    positives = (users[:, None] == users[None, :]) & others
    numerator = (sim * positives).sum(-1) / (positives.sum(-1) + 1e-9)
    return (torch.log(denominator) - numerator).mean()
