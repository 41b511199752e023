"""Weighted sums of registered losses, built from the recipe's `loss:` list."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from alignment.losses.base import (
    LossOutput,
    LossParameterError,
    PreferenceLoss,
    SequenceLogps,
    UnknownLossError,
    get_loss,
)

_NONE = object()  # no value abstains


class CompositeLoss(PreferenceLoss):
    """loss = sum_i weight_i * loss_i over (weight, loss) terms.

    Metrics are the first term's (the shared reward vocabulary and its parts) plus
    `loss/<name>` with each term's unweighted loss; a name used twice gets a suffix
    `_<index>` from its second use on. It reads the union of its terms' inputs; it is
    online-only, or samples item 0 from the policy, or reuses samples when any term
    does, and takes unpaired rows only when every term can learn from them."""

    paper = "weighted sum of registered losses"
    formula = "sum_i weight_i * loss_i"

    def __init__(self, terms: Iterable[tuple[float, PreferenceLoss]]) -> None:
        self.terms = [(float(weight), loss) for weight, loss in terms]
        if not self.terms:
            raise LossParameterError("a composite loss needs at least one term")
        self.feedback = self._agreed("feedback", "need different online feedback in `scores`", ignore="any")
        self.num_samples = self._agreed("num_samples", "require different numbers of samples per prompt", ignore=None)
        self.model_head = self._agreed("model_head", "train different models (a recipe trains one model)")
        self.name = " + ".join(f"{weight:g} * {loss.name}" for weight, loss in self.terms)
        self._keys: list[str] = []
        for i, (_, loss) in enumerate(self.terms):
            key = f"loss/{loss.name}"
            self._keys.append(key if key not in self._keys else f"{key}_{i}")

    def _agreed(self, flag: str, conflict: str, ignore: Any = _NONE) -> Any:
        """The one value of `flag` among the terms (values equal to `ignore` abstain)."""
        values = {getattr(loss, flag) for _, loss in self.terms} - {ignore}
        if len(values) > 1:
            raise LossParameterError(f"the loss terms {conflict}: {', '.join(sorted(map(str, values)))}")
        return values.pop() if values else ignore

    @property
    def reads(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset().union(*(loss.reads for _, loss in self.terms))

    @property
    def online_only(self) -> bool:  # type: ignore[override]
        return any(loss.online_only for _, loss in self.terms)

    @property
    def first_item_from_policy(self) -> bool:  # type: ignore[override]
        return any(loss.first_item_from_policy for _, loss in self.terms)

    @property
    def reuses_samples(self) -> bool:  # type: ignore[override]
        return any(loss.reuses_samples for _, loss in self.terms)

    @property
    def accepts_unpaired(self) -> bool:  # type: ignore[override]
        return all(loss.accepts_unpaired for _, loss in self.terms)

    @property
    def reward_scale(self) -> float:
        return self.terms[0][1].reward_scale

    def end_step(self, summed):
        for _, loss in self.terms:
            loss.end_step(summed)

    def state_dict(self) -> dict[str, float]:
        return {
            f"{i}.{key}": value for i, (_, loss) in enumerate(self.terms) for key, value in loss.state_dict().items()
        }

    def load_state_dict(self, state: dict[str, float]) -> None:
        for i, (_, loss) in enumerate(self.terms):
            loss.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(f"{i}.")})

    @classmethod
    def parameters(cls) -> dict[str, Any]:
        return {}

    def __call__(self, logps: SequenceLogps) -> LossOutput:
        outputs = [loss(logps) for _, loss in self.terms]
        total = sum(weight * out.loss for (weight, _), out in zip(self.terms, outputs, strict=True))
        metrics, counts = dict(outputs[0].metrics), dict(outputs[0].counts)
        for key, out in zip(self._keys, outputs, strict=True):
            metrics[key] = out.loss.detach()
        return LossOutput(loss=total, metrics=metrics, counts=counts)

    def __repr__(self) -> str:
        return f"CompositeLoss({self.terms!r})"


def _field(spec: Any, name: str, default: Any) -> Any:
    if isinstance(spec, Mapping):
        return spec.get(name, default)
    return getattr(spec, name, default)


def build_loss(specs: Iterable[Any], where: Callable[[int], str] | None = None) -> PreferenceLoss:
    """The loss of a recipe's `loss:` list: items with `name`, `params` (dict) and
    `weight` (float), as `alignment.schema.LossSpec` objects or plain dicts. One term of
    weight 1.0 is returned as the registered loss itself; anything else is composite.

    The one builder from recipe to loss object: the config's loader calls it too, so a
    weight or parameter is checked the same way on every path. `where(i)` names the
    i-th block in errors (the config passes `loss` or `loss.<i>`)."""
    terms: list[tuple[float, PreferenceLoss]] = []
    for i, spec in enumerate(specs):
        name = _field(spec, "name", None)
        label = where(i) if where is not None else f"loss {name!r}"
        if name is None:
            raise LossParameterError(f"{label}: loss spec {spec!r} has no name")
        weight = _field(spec, "weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise LossParameterError(f"{label}: weight must be a finite number >= 0, got {weight!r}")
        try:
            terms.append((float(weight), get_loss(name, **dict(_field(spec, "params", None) or {}))))
        except UnknownLossError as err:
            raise UnknownLossError(f"{label}: {err}") from None
        except (LossParameterError, TypeError) as err:
            raise LossParameterError(f"{label}: {err}") from None
    try:
        return combine(terms)
    except LossParameterError as err:  # the terms do not go together
        raise LossParameterError(f"loss: {err}") from None


def combine(terms: list[tuple[float, PreferenceLoss]]) -> PreferenceLoss:
    """One term of weight 1.0 as the loss itself; anything else as a CompositeLoss."""
    if not terms:
        raise LossParameterError("no loss given: expected at least one loss spec")
    if len(terms) == 1 and terms[0][0] == 1.0:
        return terms[0][1]
    return CompositeLoss(terms)


def loss_terms(loss: PreferenceLoss) -> list[PreferenceLoss]:
    """The registered losses a (possibly composite) loss is made of."""
    return [term for _, term in loss.terms] if isinstance(loss, CompositeLoss) else [loss]
