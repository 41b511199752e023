"""The reference a recipe describes, built before the trainer: frozen copies are loaded
here (quantized like the policy's base with QLoRA, and before the trainer's backend
shards anything), soups averaged, and the precompute source chosen."""

from __future__ import annotations

from dataclasses import dataclass

from transformers.integrations import is_deepspeed_zero3_enabled

from alignment.models import load_reference_weights
from alignment.reference.precompute import reference_identity
from alignment.reference.soup import load_soup
from alignment.reference.strategies import FrozenModel, NoReference, PolicyBase, Precomputed, Reference, Soup
from alignment.schema import LoraConfig, ModelConfig, QuantizationConfig, ReferenceConfig


@dataclass(frozen=True)
class ReferenceSections:
    """The recipe sections a reference is built from."""

    model: ModelConfig
    reference: ReferenceConfig
    lora: LoraConfig | None
    quantization: QuantizationConfig | None


def _identity(config: ReferenceSections) -> dict:
    return reference_identity(config.model, config.reference, config.quantization)


def _frozen(config: ReferenceSections) -> FrozenModel:
    ref, quantization = config.reference, config.quantization
    if ref.models is not None:
        load = lambda path: load_reference_weights(config.model, path, quantization)  # noqa: E731
        return Soup(
            load_soup(load, ref.models, ref.soup_weights),
            config.reference.is_initial_policy(config.model),
            _identity(config),
        )
    return FrozenModel(
        load_reference_weights(config.model, None, quantization, ref),
        config.reference.is_initial_policy(config.model),
        _identity(config),
    )


def _precomputed(config: ReferenceSections) -> Precomputed:
    """From the policy's own base with LoRA (no second copy), unless another checkpoint,
    seed or soup is named, or ZeRO-3 has sharded the policy so that it cannot run
    outside its engine."""
    ref = config.reference
    named = ref.name_or_path is not None or ref.init_seed is not None or ref.models is not None
    own_base = config.lora is not None and not named and not is_deepspeed_zero3_enabled()
    source = PolicyBase(identity=None) if own_base else _frozen(config)
    return Precomputed(source, _identity(config), ref.precompute_batch_size)


BUILDERS = {
    NoReference.type: lambda config: NoReference(),
    FrozenModel.type: _frozen,
    Soup.type: _frozen,
    PolicyBase.type: lambda config: PolicyBase(is_initial=config.reference.update is None),
    Precomputed.type: _precomputed,
}


def build_reference(
    model: ModelConfig, reference: ReferenceConfig, lora: LoraConfig | None, quantization: QuantizationConfig | None
) -> Reference:
    """The strategy of `reference` (already resolved from `auto` and checked at load)."""
    return BUILDERS[reference.type](ReferenceSections(model, reference, lora, quantization))
