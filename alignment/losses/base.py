"""Shared pieces of every preference loss: the input (`SequenceLogps`), the output
(`LossOutput`), the registry, and the implicit-reward metrics all losses report."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor


@dataclass
class TokenLogps:
    """Per-token log-probs of the completion tokens, [B, K, T], for token-level losses
    (`needs_tokens`). `policy` carries the gradient and sums over T to
    `SequenceLogps.policy`; `old_policy` holds the log-probs under the policy that
    sampled the completions (detached; None: the current policy, i.e. one update per
    batch); `mask` marks real completion tokens."""

    policy: Tensor
    reference: Tensor | None
    old_policy: Tensor | None
    mask: Tensor


@dataclass
class LatentPosterior:
    """A VPL encoder's q(z | user's context pairs) = N(mean, exp(log_var)) per list, [B, D],
    the optimizer step it was computed at (for the KL weight's annealing), the z drawn
    from it and the lists' user indices [B] (for the contrastive term)."""

    mean: Tensor
    log_var: Tensor
    step: int = 0
    z: Tensor | None = None
    users: Tensor | None = None


@dataclass
class SequenceLogps:
    """Per-completion log-probs of a batch of B prompts with K completions each.

    All tensors are [B, K]. `policy` carries the gradient; `reference` is None for
    reference-free losses. `mask` marks the real list items (lists shorter than K are
    padded); padded items may hold any finite value and must never change a loss.
    `lengths` are completion token counts (>= 1 for real items).

    Online, `preferences` [B, K, K] holds the judge's P(y_i > y_j) (P_ji = 1 - P_ij,
    diagonal 1/2), and `tokens` the per-token log-probs when the loss asks for them.

    For reward-model losses (`model_head` other than "policy") `policy` holds the
    model's score of each completion instead of a log-prob: the reward r(x, y_k)
    (`reward`, `vpl`), or for a pairwise preference model (`preference`) the item's mean
    log-odds of beating the others; `pair_logits` [B, K, K] then holds the preference
    model's logit of P(y_i > y_j) read in that order. `margins` [B] is the data's
    per-row reward margin (0 when the data has none) and `latent` a VPL posterior.
    `kl_baseline` (a scalar) is KTO's estimate of KL(policy || reference): the mean
    log-ratio of the batch's completions each under another list's prompt.
    `wpo_log_weights` [B, K] (no gradient) is WPO's log weight of each completion under
    the policy, (1/|y|) sum_t [log p(y_t) - log sum_v p(v)^2].
    """

    policy: Tensor
    reference: Tensor | None
    scores: Tensor
    mask: Tensor
    lengths: Tensor
    preferences: Tensor | None = None
    tokens: TokenLogps | None = None
    margins: Tensor | None = None
    pair_logits: Tensor | None = None
    latent: LatentPosterior | None = None
    kl_baseline: Tensor | None = None
    wpo_log_weights: Tensor | None = None

    def logratios(self) -> Tensor:
        """policy - reference (policy alone when there is no reference)."""
        if self.reference is None:
            return self.policy
        return self.policy - self.reference

    def masked(self) -> SequenceLogps:
        """A copy whose padded items hold 0 (log-probs, scores) and length 1.

        Losses call this first: padded slots may hold anything finite (or zero lengths),
        and `torch.where` after a division or a large subtraction would still send NaN
        gradients back through the discarded branch. Cleaning the inputs avoids that."""
        mask = self.mask.bool()

        def clean(t: Tensor | None, fill: float) -> Tensor | None:
            return None if t is None else torch.where(mask, t, torch.full_like(t, fill))

        preferences = None
        if self.preferences is not None:
            real = mask[:, :, None] & mask[:, None, :]
            preferences = torch.where(real, self.preferences, torch.full_like(self.preferences, 0.5))
        pair_logits = None
        if self.pair_logits is not None:
            real = mask[:, :, None] & mask[:, None, :]
            pair_logits = torch.where(real, self.pair_logits, torch.zeros_like(self.pair_logits))
        tokens = None
        if self.tokens is not None:
            token_mask = self.tokens.mask.bool() & mask[:, :, None]

            def clean_tokens(t: Tensor | None) -> Tensor | None:
                return None if t is None else torch.where(token_mask, t, torch.zeros_like(t))

            tokens = TokenLogps(
                policy=clean_tokens(self.tokens.policy),
                reference=clean_tokens(self.tokens.reference),
                old_policy=clean_tokens(self.tokens.old_policy),
                mask=token_mask,
            )
        return SequenceLogps(
            policy=clean(self.policy, 0.0),
            reference=clean(self.reference, 0.0),
            scores=clean(self.scores, 0.0),
            mask=mask,
            lengths=clean(self.lengths, 1).clamp(min=1),
            preferences=preferences,
            tokens=tokens,
            margins=self.margins,
            pair_logits=pair_logits,
            latent=self.latent,
            kl_baseline=self.kl_baseline,
            wpo_log_weights=clean(self.wpo_log_weights, 0.0),
        )


@dataclass
class LossOutput:
    """`loss` is a scalar; `metrics` maps metric names to scalar (detached) means over
    the batch. `counts` gives, for a metric whose mean is not over the batch's lists,
    the number of items it averaged (e.g. scored pairs for `reward_accuracy`), so that a
    trainer can average exactly across batches and processes."""

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)
    counts: dict[str, Tensor] = field(default_factory=dict)


class LossParameterError(ValueError):
    """A loss was given a parameter it does not take, or a value out of its range."""


class UnknownLossError(KeyError):
    """`get_loss` was asked for a name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class PreferenceLoss:
    """Base of every registered loss. Subclasses are dataclasses whose fields are the
    loss's parameters (typed, with the paper's defaults); `__post_init__` checks ranges.

    Class attributes: `name` (registry key, set by `register_loss`), `paper` (citation),
    `formula` (one line), `needs_reference` (False lets the trainer skip the reference
    forward entirely), `online_only` (the loss learns from judged on-line samples, with
    `scores` = [P(y0 > y1), P(y1 > y0)], and cannot train on a fixed dataset) and
    `first_item_from_policy` (online: item 0 must be sampled from the policy itself,
    whatever the recipe's sampler; the other items come from the sampler).

    Online, `feedback` says what the trainer puts in `scores`: "preferences" (each
    item's leave-one-out win rate 1/(K-1) sum_{j != i} P(y_i > y_j); for K = 2,
    [P(y0 > y1), P(y1 > y0)]), "rewards" (a scalar reward per completion; a preference
    judge's win rates serve as rewards) or "any" (whatever the judge gives). A reward
    judge feeds a preference loss through Bradley-Terry, P = sigmoid(r_i - r_j).
    `num_samples` is the K a loss requires (None: any K >= 2), `needs_tokens` asks for
    per-token log-probs, `needs_mismatched` asks for the log-ratios of each completion
    under another list's prompt (`SequenceLogps.mismatched`, KTO's KL baseline),
    `needs_wpo_weights` asks for `SequenceLogps.wpo_log_weights`,
    `accepts_unpaired` lets single-completion rows (a desirable or undesirable label,
    no pair) into the data, and `reuses_samples` marks a loss with an importance-ratio
    surrogate that may train several updates on one batch of samples.

    `model_head` says which model the loss trains: "policy" (a causal LM; `policy` is
    log-probs), or a judge for online training: "reward" (a scalar reward model),
    "preference" (a pairwise preference model) or "vpl" (a reward conditioned on a
    user's latent, Poddar et al. 2024). `alignment.rewards.heads` holds their forwards.

    A flag that depends on a parameter (e.g. no reference when a KL weight is 0) is a
    property of the instance; the config and trainers read every flag from instances."""

    name: ClassVar[str] = ""
    trl: ClassVar[str] = ""  # what a TRL user knows this loss as ("" when TRL has none)
    paper: ClassVar[str] = ""
    formula: ClassVar[str] = ""
    needs_reference: ClassVar[bool] = True
    online_only: ClassVar[bool] = False
    first_item_from_policy: ClassVar[bool] = False
    feedback: ClassVar[str] = "any"
    num_samples: ClassVar[int | None] = None
    needs_tokens: ClassVar[bool] = False
    needs_mismatched: ClassVar[bool] = False
    needs_wpo_weights: ClassVar[bool] = False
    accepts_unpaired: ClassVar[bool] = False
    reuses_samples: ClassVar[bool] = False
    model_head: ClassVar[str] = "policy"

    @property
    def reward_scale(self) -> float:
        """Scale of the implicit reward scale * (policy - reference) used in metrics."""
        return float(getattr(self, "beta", 1.0))

    def __call__(self, logps: SequenceLogps) -> LossOutput:
        raise NotImplementedError

    @classmethod
    def parameters(cls) -> dict[str, Any]:
        """Parameter name -> default, in declaration order."""
        return {f.name: f.default for f in dataclasses.fields(cls)}  # type: ignore[arg-type]


def check_range(
    owner: str,
    name: str,
    value: Any,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> float:
    """`value` as a float, or LossParameterError naming the parameter and its range,
    e.g. "rdpo: epsilon must satisfy 0 <= epsilon < 0.5, got 0.7"."""
    lower = f"{gt:g} < " if gt is not None else f"{ge:g} <= " if ge is not None else ""
    upper = f" < {lt:g}" if lt is not None else f" <= {le:g}" if le is not None else ""
    if lower and not upper:  # read "beta > 0", not "0 < beta"
        allowed = f"{name} {'>' if gt is not None else '>='} {gt if gt is not None else ge:g}"
    else:
        allowed = f"{lower}{name}{upper}"
    # bool is an int subclass; `beta: true` in YAML is a mistake, not 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LossParameterError(f"{owner}: {name} must be a finite number with {allowed}, got {value!r}")
    ok = (
        (gt is None or value > gt)
        and (ge is None or value >= ge)
        and (lt is None or value < lt)
        and (le is None or value <= le)
    )
    if not ok:
        raise LossParameterError(f"{owner}: {name} must satisfy {allowed}, got {value!r}")
    return float(value)


def check_choice(owner: str, name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """`value` if it is one of `allowed`, else LossParameterError listing them."""
    allowed = tuple(allowed)
    if isinstance(value, bool) != isinstance(allowed[0], bool) or value not in allowed:
        raise LossParameterError(f"{owner}: {name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


_REGISTRY: dict[str, type[PreferenceLoss]] = {}


def register_loss(name: str):
    """Class decorator: `@register_loss("dpo")` makes the loss available to `get_loss`."""

    def wrap(cls: type[PreferenceLoss]) -> type[PreferenceLoss]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"loss {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"loss {name!r} must be a dataclass so its parameters can be validated")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def available_losses() -> dict[str, type[PreferenceLoss]]:
    """Registered loss name -> class, sorted by name."""
    return dict(sorted(_REGISTRY.items()))


def loss_class(name: str) -> type[PreferenceLoss]:
    if name not in _REGISTRY:
        raise UnknownLossError(f"unknown loss {name!r}; available losses: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def get_loss(name: str, **params: Any) -> PreferenceLoss:
    """Build a registered loss, validating its parameters (names and ranges)."""
    cls = loss_class(name)
    allowed = cls.parameters()
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        listed = ", ".join(f"{k} (default {v!r})" for k, v in allowed.items())
        raise LossParameterError(
            f"loss {name!r} has no parameter {', '.join(map(repr, unknown))}; its parameters are: {listed}"
        )
    return cls(**params)
