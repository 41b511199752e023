"""Shared pieces of every preference loss: the input (`SequenceLogps`), the output
(`LossOutput`), the registry, and the implicit-reward metrics all losses report."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor


@dataclass
class TokenLogps:
    """Per-token log-probs of the completion tokens, [B, K, T], for token-level losses
    (`reads` has "tokens"). `policy` carries the gradient and sums over T to
    `SequenceLogps.policy`; `old_policy` holds the log-probs under the policy that
    sampled the completions (detached; None: the current policy, i.e. one update per
    batch); `mask` marks real completion tokens."""

    policy: Tensor
    reference: Tensor | None
    old_policy: Tensor | None
    mask: Tensor

    def masked(self, items: Tensor) -> TokenLogps:
        """A copy with 0 past each completion's real tokens and in padded list items (`items`, [B, K])."""
        real = self.mask.bool() & items.bool()[:, :, None]

        def clean(t: Tensor | None) -> Tensor | None:
            return None if t is None else torch.where(real, t, torch.zeros_like(t))

        return TokenLogps(clean(self.policy), clean(self.reference), clean(self.old_policy), real)


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


# What `SequenceLogps.masked` puts in a padded list item, by the shape of the field:
# "items" [B, K] (fill value), "pairs" [B, K, K] (fill where either item is padding),
# "tokens" (a TokenLogps: zero past the real tokens), "item_tokens" ([B, K, T]: fill in a
# padded item's tokens), or nothing (left as it is).
ITEMS, PAIRS, TOKENS, ITEM_TOKENS = "items", "pairs", "tokens", "item_tokens"


def _field(shape: str | None = None, fill: float = 0.0, input: str | None = None, **kw: Any) -> Any:
    """A SequenceLogps field: how `masked` pads it (`shape`, `fill`) and, for an input a
    loss may declare in `reads`, what it holds (`input`; `INPUTS` is built from these)."""
    metadata = {} if shape is None else {"padded": (shape, fill)}
    if input is not None:
        metadata["input"] = input
    return field(metadata=metadata, **kw)


@dataclass
class SequenceLogps:
    """Per-completion log-probs of a batch of B prompts with K completions each.

    All tensors are [B, K]. `policy` carries the gradient; `reference` is None for
    reference-free losses. `mask` marks the real list items (lists shorter than K are
    padded); padded items may hold any finite value and must never change a loss.
    `lengths` are completion token counts (>= 1 for real items).

    The optional fields are the inputs a loss may declare in `reads` (`INPUTS` says what
    each holds); the trainer fills exactly those. For reward-model losses (`model_head`
    other than "policy") `policy` holds the model's score of each completion instead of
    a log-prob: read it as `model_scores`.
    """

    policy: Tensor = _field(ITEMS)
    reference: Tensor | None = _field(ITEMS, input="the reference's log-probs [B, K]")
    scores: Tensor = _field(ITEMS)
    mask: Tensor = _field()
    lengths: Tensor = _field(ITEMS, 1.0)
    preferences: Tensor | None = _field(
        PAIRS, 0.5, default=None, input="online: the judge's P(y_i > y_j) [B, K, K] (P_ji = 1 - P_ij, diagonal 1/2)"
    )
    tokens: TokenLogps | None = _field(
        TOKENS, default=None, input="per-token log-probs of policy, reference and sampling policy (TokenLogps)"
    )
    margins: Tensor | None = _field(default=None, input="the data's per-row reward margin [B] (0 when it has none)")
    pair_logits: Tensor | None = _field(
        PAIRS, 0.0, default=None, input="a pairwise preference model's logit of P(y_i > y_j) [B, K, K]"
    )
    latent: LatentPosterior | None = _field(
        default=None, input="a VPL encoder's posterior over the user's latent (LatentPosterior)"
    )
    kl_baseline: Tensor | None = _field(
        default=None,
        input="KTO's KL(policy || reference) estimate: the mean log-ratio of each completion under another "
        "list's prompt (a scalar, averaged over processes)",
    )
    wpo_log_weights: Tensor | None = _field(
        ITEMS,
        default=None,
        input="WPO's log weight of each completion [B, K], (1/|y|) sum_t [log p(y_t) - log sum_v p(v)^2]",
    )
    truncated: Tensor | None = _field(
        ITEMS, 0.0, default=None, input="online: [B, K] true where a sample hit max_new_tokens without ending"
    )
    completion_budget: int | None = _field(default=None, input="online: the maximum number of new tokens per sample")
    across_processes: Callable[[Tensor], Tensor] | None = _field(
        default=None, input="the sum over all processes of a tensor (itself on one process), for batch-wide sums"
    )
    entropies: Tensor | None = _field(
        ITEM_TOKENS, default=None, input="each completion token's predictive entropy [B, K, T] (with gradient)"
    )
    gathered: Callable[[Tensor], Tensor] | None = _field(
        default=None, input="a 1-D tensor's values from all processes, concatenated (itself on one process)"
    )
    engine_ratio: Tensor | None = _field(
        ITEM_TOKENS,
        1.0,
        default=None,
        input="online: the importance-sampling correction of an external engine's samples, pi_trainer / "
        "pi_engine per token [B, K, T] or per sequence [B, K, 1], truncated or masked "
        "(online.vllm_importance_sampling_mode); None when the trainer's own model sampled",
    )

    @property
    def model_scores(self) -> Tensor:
        """A reward or preference model's score of each completion, [B, K]: the `policy`
        slot, which holds scores rather than log-probs when a loss trains a judge."""
        return self.policy

    def logratios(self) -> Tensor:
        """policy - reference (policy alone when there is no reference)."""
        if self.reference is None:
            return self.policy
        return self.policy - self.reference

    def masked(self) -> SequenceLogps:
        """A copy whose padded items hold 0 (log-probs, scores; 1/2 for preferences) and
        length 1, each field by the shape its metadata declares.

        Losses call this first: padded slots may hold anything finite (or zero lengths),
        and `torch.where` after a division or a large subtraction would still send NaN
        gradients back through the discarded branch. Cleaning the inputs avoids that."""
        mask = self.mask.bool()
        pairs = mask[:, :, None] & mask[:, None, :]
        cleaned: dict[str, Any] = {"mask": mask}
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if spec.name == "mask" or value is None or "padded" not in spec.metadata:
                cleaned.setdefault(spec.name, value)
                continue
            shape, fill = spec.metadata["padded"]
            if shape == TOKENS:
                cleaned[spec.name] = value.masked(mask)
            elif shape == ITEM_TOKENS:
                cleaned[spec.name] = torch.where(mask[:, :, None], value, torch.full_like(value, fill))
            else:
                real = mask if shape == ITEMS else pairs
                cleaned[spec.name] = torch.where(real, value, torch.full_like(value, fill))
        cleaned["lengths"] = cleaned["lengths"].clamp(min=1)
        return SequenceLogps(**cleaned)


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


# The inputs a loss may read beyond `policy`, `scores`, `mask` and `lengths`, by the name
# it declares in `reads`: the SequenceLogps fields that say what they hold. Each is filled
# by one provider: trainers/inputs.py for the policy trainers, the model head
# (rewards/heads.py) for judges.
INPUTS = {spec.name: spec.metadata["input"] for spec in dataclasses.fields(SequenceLogps) if "input" in spec.metadata}


class PreferenceLoss:
    """Base of every registered loss. Subclasses are dataclasses whose fields are the
    loss's parameters (typed, with the paper's defaults); `__post_init__` checks ranges.

    Class attributes: `name` (registry key, set by `register_loss`), `paper` (citation),
    `formula` (one line) and `reads`, the inputs the loss reads by their `INPUTS` name.
    The trainer computes exactly those; `needs_reference` ("reference" in `reads`) lets
    it skip the reference forward entirely. A loss whose inputs depend on a parameter
    (no reference when a KL weight is 0) makes `reads` a property.

    How the loss trains: `online_only` (it learns from judged on-line samples and cannot
    train on a fixed dataset), `first_item_from_policy` (online: item 0 is sampled from
    the policy itself, whatever the recipe's sampler), `feedback` (what the trainer puts
    in `scores` online: "preferences", each item's leave-one-out win rate
    1/(K-1) sum_{j != i} P(y_i > y_j); "rewards", a scalar reward per completion, a
    preference judge's win rates serving as rewards; or "any"; a reward judge feeds a
    preference loss through Bradley-Terry, P = sigmoid(r_i - r_j)), `num_samples` (the K
    it requires; None: any K >= 2), `accepts_unpaired` (single-completion rows with a
    desirable or undesirable label may enter the data), `reuses_samples` (an
    importance-ratio surrogate that may train several updates on one batch of samples)
    and `model_head`: "policy" (a causal LM; `policy` is log-probs), or a judge for
    online training: "reward" (a scalar reward model), "preference" (a pairwise
    preference model) or "vpl" (a reward conditioned on a user's latent, Poddar et al.
    2024); `alignment.rewards.heads` holds their forwards."""

    name: ClassVar[str] = ""
    trl: ClassVar[str] = ""  # what a TRL user knows this loss as ("" when TRL has none)
    aliases: ClassVar[tuple[str, ...]] = ()  # other registry names: TRL's loss_type where it differs
    paper: ClassVar[str] = ""
    formula: ClassVar[str] = ""
    reads: ClassVar[frozenset[str]] = frozenset({"reference"})
    online_only: ClassVar[bool] = False
    first_item_from_policy: ClassVar[bool] = False
    feedback: ClassVar[str] = "any"
    num_samples: ClassVar[int | None] = None
    accepts_unpaired: ClassVar[bool] = False
    reuses_samples: ClassVar[bool] = False
    model_head: ClassVar[str] = "policy"

    @property
    def needs_reference(self) -> bool:
        """Whether the loss reads the reference (derived from `reads`)."""
        return "reference" in self.reads

    # A loss with state across optimizer steps (an adaptive coefficient) keeps it here: the
    # trainer calls `end_step` after every optimizer step (with the sum over processes),
    # and saves `state_dict` with each checkpoint, restored on resume. Stateless by default.
    def end_step(self, summed: Callable[[Tensor], Tensor]) -> None:
        return None

    def state_dict(self) -> dict[str, float]:
        return {}

    def load_state_dict(self, state: dict[str, float]) -> None:
        return None

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
_ALIASES: dict[str, str] = {}  # alias -> registered name (TRL's `sigmoid` -> `dpo`)


def register_loss(name: str):
    """Class decorator: `@register_loss("dpo")` makes the loss available to `get_loss`."""

    def wrap(cls: type[PreferenceLoss]) -> type[PreferenceLoss]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"loss {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"loss {name!r} must be a dataclass so its parameters can be validated")
        for alias in (name, *cls.aliases):
            owner = _ALIASES.get(alias) or (alias if alias in _REGISTRY and _REGISTRY[alias] is not cls else None)
            if owner is not None and owner != name:
                raise ValueError(f"loss name {alias!r} is already taken by {owner!r}")
        cls.name = name
        _REGISTRY[name] = cls
        _ALIASES.update(dict.fromkeys(cls.aliases, name))
        return cls

    return wrap


def available_losses() -> dict[str, type[PreferenceLoss]]:
    """Registered loss name -> class, sorted by name (aliases are not listed: each loss once)."""
    return dict(sorted(_REGISTRY.items()))


def loss_class(name: str) -> type[PreferenceLoss]:
    """The registered class of `name` or of one of its aliases."""
    name = _ALIASES.get(name, name)
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
    loss = cls(**params)
    unknown_inputs = sorted(set(loss.reads) - set(INPUTS))
    if unknown_inputs:  # a programming error in the loss, not the recipe's
        raise TypeError(f"loss {name!r} reads {unknown_inputs}, which no provider gives; inputs: {', '.join(INPUTS)}")
    return loss
