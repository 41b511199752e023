"""Where reference log-probs come from: one class per strategy, each answering how its
log-probs are made for a batch, how it samples (online), what identifies it in the
precompute fingerprint, and whether it is the initial policy.

The class attributes say what a strategy can do; the recipe checks in
`alignment.config.combinations` read them instead of branching on strategy names."""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from alignment.online.sampler import ModelStream
from alignment.reference.frozen import prepare_frozen_model
from alignment.reference.precompute import REFERENCE_COLUMN, add_reference_logps

Forward = Callable[[nn.Module, Mapping[str, Tensor]], Tensor]
"""The trainer's forward: (model, batch) -> log-probs (it knows the forward strategy)."""


class Reference:
    """A reference strategy. `attach` is called once by the trainer, which passes its
    accelerator and its unwrapping; `logps` answers for a batch, `stream` gives a
    sampling stream (online), `identity` what the precompute fingerprint hashes."""

    type: ClassVar[str] = ""
    gives_logps: ClassVar[bool] = True  # False: reference-free training
    live: ClassVar[bool] = True  # scores completions it has never seen (online sampling, evaluation)
    needs_lora: ClassVar[bool] = False
    updatable: ClassVar[bool] = False  # may follow the policy (`reference.update`)
    reads: ClassVar[tuple[str, ...]] = ()  # the ReferenceConfig keys that choose its weights
    holds_copy: ClassVar[bool] = False  # a second full copy of weights in memory while training
    requires: ClassVar[tuple[str, ...]] = ()  # ... of which these must be given

    def __init__(self, is_initial: bool = True, identity: Mapping[str, Any] | None = None) -> None:
        self.is_initial = is_initial
        self._identity = dict(identity or {})

    def attach(self, accelerator: Any, unwrap: Callable[[nn.Module], nn.Module]) -> None:
        self.unwrap = unwrap

    def identity(self) -> dict[str, Any]:
        return {"type": self.type, **self._identity}

    def logps(self, model: nn.Module, inputs: Mapping[str, Tensor], forward: Forward) -> Tensor | None:
        raise NotImplementedError

    def stream(self, unwrapped_policy: nn.Module) -> ModelStream | None:
        return None

    def weights(self) -> dict[str, Tensor] | None:
        """Its parameters, for `model.init_from_reference` (None: it has no weights of its own)."""
        return None

    def before_training(
        self, datasets: Mapping[str, Any], policy: nn.Module, forward: Forward, collator: Any, device: Any
    ) -> dict[str, Any]:
        """Work before step 1; returns the splits it changed (none by default)."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(initial={self.is_initial})"


class NoReference(Reference):
    """Reference-free losses: no reference forward is ever run."""

    type = "none"
    gives_logps = False
    live = False

    def logps(self, model, inputs, forward):
        return None


class FrozenModel(Reference):
    """A separate frozen copy (`model`): the policy's checkpoint or another one."""

    type = "model"
    updatable = True
    holds_copy = True
    reads = ("name_or_path", "init_seed")

    def __init__(self, model: nn.Module, is_initial: bool = True, identity: Mapping[str, Any] | None = None) -> None:
        super().__init__(is_initial, identity)
        self.model = model.requires_grad_(False).eval()

    def attach(self, accelerator, unwrap) -> None:
        super().attach(accelerator, unwrap)
        self.model = prepare_frozen_model(self.model, accelerator)

    def logps(self, model, inputs, forward):
        with torch.no_grad():
            return forward(self.model, inputs)

    def stream(self, unwrapped_policy):
        return ModelStream(self.model)

    def weights(self):
        return self.model.state_dict()


class Soup(FrozenModel):
    """SALSA (Chegini et al. 2024): the parameter-wise weighted average of checkpoints of
    one architecture, used as a frozen reference. Its log-probs come from a forward of
    the averaged weights, not from averaging the members' log-probs."""

    type = "soup"
    reads = ("models", "weights")
    requires = ("models",)


class PolicyBase(Reference):
    """`adapter`: the LoRA policy with its adapters disabled, i.e. its frozen base; no
    second copy of the weights is held."""

    type = "adapter"
    needs_lora = True

    def _check(self, model: nn.Module) -> nn.Module:
        unwrapped = self.unwrap(model)
        if not hasattr(unwrapped, "disable_adapter"):
            raise ValueError("reference 'adapter' needs a PEFT model (the policy with LoRA adapters)")
        return unwrapped

    def logps(self, model, inputs, forward):
        unwrapped = self._check(model)
        with torch.no_grad(), unwrapped.disable_adapter():
            return forward(unwrapped, inputs)

    def stream(self, unwrapped_policy):
        return ModelStream(unwrapped_policy, context=self._check(unwrapped_policy).disable_adapter)


class Precomputed(Reference):
    """`precompute`: one pass before training writes every completion's reference log-probs
    into the dataset (`reference_logps`, cached under a fingerprint of `identity` and the
    data); the source (a frozen model or the policy's base) is then dropped, so no
    reference is in memory while training."""

    type = "precompute"
    live = False
    reads = ("name_or_path", "init_seed", "models", "weights")

    def __init__(self, source: Reference, identity: Mapping[str, Any], batch_size: int = 8) -> None:
        super().__init__(source.is_initial, identity)
        self.source: Reference | None = source
        self.batch_size = batch_size

    def attach(self, accelerator, unwrap) -> None:
        super().attach(accelerator, unwrap)
        self.accelerator = accelerator
        if self.source is not None:
            self.source.attach(accelerator, unwrap)

    def weights(self):
        return None if self.source is None else self.source.weights()

    def logps(self, model, inputs, forward):
        if REFERENCE_COLUMN not in inputs:
            raise RuntimeError(
                "reference 'precompute' but the batch has no reference_logps: run trainer.prepare_reference() first"
            )
        return inputs[REFERENCE_COLUMN]

    def before_training(self, datasets, policy, forward, collator, device):
        """Every split with its `reference_logps` column; then the source is freed."""
        if self.source is None:
            raise RuntimeError("the reference was already precomputed and its source released")
        base = policy if isinstance(self.source, PolicyBase) else None
        if base is not None:
            base.to(device)
            was_training = base.training
            base.eval()  # no dropout: the reference is the deterministic base model

        def logps_fn(batch: Mapping[str, Tensor]) -> Tensor:
            return self.source.logps(base, batch, forward)

        out = {}
        for split, dataset in datasets.items():
            if dataset is not None:
                out[split] = add_reference_logps(
                    dataset, self._identity, logps_fn, collator, self.batch_size, self.accelerator, split
                )
        if base is not None and was_training:
            base.train()
        self.source = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return out


STRATEGIES: dict[str, type[Reference]] = {
    cls.type: cls for cls in (NoReference, FrozenModel, Soup, PolicyBase, Precomputed)
}


def reference_strategy(name: str) -> type[Reference]:
    if name not in STRATEGIES:
        raise ValueError(f"unknown reference {name!r}; available: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def auto_reference(needed: bool, lora: bool, soup: bool = False) -> str:
    """What `reference: auto` means: a soup when `models` are listed; else none when no
    loss term needs one, the policy's base with LoRA (no second copy), or a frozen copy."""
    if soup:
        return Soup.type
    if not needed:
        return NoReference.type
    return PolicyBase.type if lora else FrozenModel.type
