"""Other functions of the DPO margin: EXO, DiscoPOP and length-normalised DPO.

Each is a `MarginLoss`: a function of h = s_w - s_l per selected pair, with s the
log-ratio (or f'(exp(r)) under `f_divergence`). Notation as in `pairwise`:
L(x) = softplus(-x), sigma the logistic function."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from alignment.losses.base import SequenceLogps, check_range, register_loss
from alignment.losses.pairwise import MarginLoss, neg_logsigmoid


@register_loss("exo_pair")
@dataclass
class EXOPairLoss(MarginLoss):
    """EXO-pref for a pair (Ji et al. 2024, Eq. 16).

    The reverse KL from the model's preference q = sigma(beta h) to the labels'
    smoothed (1 - eps, eps): q (log q - log(1 - eps)) + (1 - q)(log(1 - q) - log eps).
    eps must be > 0 (the paper uses 1e-3; TRL's `label_smoothing`)."""

    trl = "DPOTrainer loss_type='exo_pair' (TRL's label_smoothing is epsilon)"
    paper = "Ji et al. 2024, Towards Efficient Exact Optimization of Language Model Alignment"
    formula = "q (log q - log(1 - eps)) + (1 - q)(log(1 - q) - log eps), q = sigma(beta h), eps = epsilon"

    beta: float = 0.1
    epsilon: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        self.beta = check_range(self.name, "beta", self.beta, gt=0)
        self.epsilon = check_range(self.name, "epsilon", self.epsilon, gt=0, lt=0.5)

    def margin_loss(self, h: Tensor, logps: SequenceLogps) -> Tensor:
        x = self.beta * h
        log_q_w, log_q_l = F.logsigmoid(x), F.logsigmoid(-x)
        return torch.sigmoid(x) * (log_q_w - math.log1p(-self.epsilon)) + torch.sigmoid(-x) * (
            log_q_l - math.log(self.epsilon)
        )


@register_loss("discopop")
@dataclass
class DiscoPOPLoss(MarginLoss):
    """DiscoPOP, the log-ratio modulated loss (Lu et al. 2024, Eq. 5).

    With x = beta h and m = sigma(x / tau): (1 - m) L(x) + m exp(-x), a blend of DPO's
    logistic loss and an exponential loss. m exp(-x) is computed as
    exp(log sigma(x / tau) - x), which stays finite at any |x|. tau 0.05 is the paper's."""

    trl = "DPOTrainer loss_type='discopop' (TRL's discopop_tau is tau)"
    paper = "Lu et al. 2024, Discovering Preference Optimization Algorithms with and for Large Language Models"
    formula = "(1 - m) L(beta h) + m exp(-beta h), m = sigma(beta h / tau)"

    beta: float = 0.1
    tau: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        self.beta = check_range(self.name, "beta", self.beta, gt=0)
        self.tau = check_range(self.name, "tau", self.tau, gt=0)

    def margin_loss(self, h: Tensor, logps: SequenceLogps) -> Tensor:
        x = self.beta * h
        modulation = torch.sigmoid(x / self.tau)
        return (1 - modulation) * neg_logsigmoid(x) + torch.exp(F.logsigmoid(x / self.tau) - x)


@register_loss("sigmoid_norm")
@dataclass
class LengthNormalizedDPOLoss(MarginLoss):
    """Length-normalised DPO (Tulu 3: Lambert et al. 2024).

    L(beta (r_w / |y_w| - r_l / |y_l|)): DPO on per-token log-ratios, so that a longer
    completion is not favoured for its length. Tulu 3 trains with beta 5; the default
    0.1 is TRL's."""

    trl = "DPOTrainer loss_type='sigmoid_norm'"
    paper = "Lambert et al. 2024, Tulu 3: Pushing Frontiers in Open Language Model Post-Training"
    formula = "L(beta (r_w / |y_w| - r_l / |y_l|))"

    beta: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        self.beta = check_range(self.name, "beta", self.beta, gt=0)

    def length_normalized(self) -> bool:
        return True

    def margin_loss(self, h: Tensor, logps: SequenceLogps) -> Tensor:
        return neg_logsigmoid(self.beta * h)
