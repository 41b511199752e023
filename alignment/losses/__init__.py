"""The loss registry: `get_loss(name, **params)` over one list-shaped batch format.

Importing this package registers every built-in loss (the modules below register
themselves with `@register_loss` on import)."""

from alignment.losses import (  # noqa: F401  (registration)
    anchored,
    copg,
    distributional,
    grpo,
    kto,
    listwise,
    margin_variants,
    online,
    pairwise,
    policy_gradient,
    reference_free,
    reward_model,
    self_play,
)
from alignment.losses.base import (
    LossOutput,
    LossParameterError,
    PreferenceLoss,
    SequenceLogps,
    UnknownLossError,
    available_losses,
    get_loss,
    loss_class,
    register_loss,
)
from alignment.losses.composite import CompositeLoss, build_loss, loss_terms
from alignment.losses.metrics import reward_metrics
from alignment.losses.pairs import PAIR_MODES, pair_mask
from alignment.losses.pairwise import PairwiseLoss

__all__ = [
    "PAIR_MODES",
    "CompositeLoss",
    "LossOutput",
    "LossParameterError",
    "PairwiseLoss",
    "PreferenceLoss",
    "SequenceLogps",
    "UnknownLossError",
    "available_losses",
    "build_loss",
    "get_loss",
    "loss_class",
    "loss_terms",
    "pair_mask",
    "register_loss",
    "reward_metrics",
]
