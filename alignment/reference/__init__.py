"""Everything about the reference policy: the strategies (`strategies`), how a recipe's
reference is built (`loading`), the precompute pass and its cache (`precompute`),
soups (`soup`) and references that follow the policy (`updates`)."""

from alignment.reference.frozen import prepare_frozen_model
from alignment.reference.precompute import (
    REFERENCE_COLUMN,
    add_reference_logps,
    compute_reference_logps,
    reference_fingerprint,
    reference_identity,
)
from alignment.reference.strategies import (
    STRATEGIES,
    FrozenModel,
    NoReference,
    PolicyBase,
    Precomputed,
    Reference,
    Soup,
    auto_reference,
    reference_strategy,
)

__all__ = [
    "REFERENCE_COLUMN",
    "STRATEGIES",
    "FrozenModel",
    "NoReference",
    "PolicyBase",
    "Precomputed",
    "Reference",
    "Soup",
    "add_reference_logps",
    "auto_reference",
    "compute_reference_logps",
    "prepare_frozen_model",
    "reference_fingerprint",
    "reference_identity",
    "reference_strategy",
]
