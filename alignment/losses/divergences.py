"""f-divergence regularisers for the DPO family (f-DPO: Wang et al. 2023, "Beyond Reverse
KL: Generalizing Direct Preference Optimization with Diverse Divergence Constraints").

With the policy regularised by D_f(pi || pi_ref) instead of the reverse KL, the implicit
reward of a completion is beta f'(u), u = pi(y|x) / pi_ref(y|x) = exp(r), up to a term
in x alone, which cancels in the difference of a pair. So a margin loss sees
h = f'(u_w) - f'(u_l) in place of r_w - r_l. The f' below are TRL's (DPOTrainer
`f_divergence_type`), each written as a function of r = log u:

- `reverse_kl`: f'(u) = log u = r (DPO);
- `forward_kl`: f'(u) = 1 - 1/u = 1 - exp(-r) (the paper's -1/u, shifted by a constant);
- `js_divergence`: f'(u) = log(2u / (1 + u)) = log 2 + log sigmoid(r);
- `alpha_divergence`: f'(u) = (u^(a-1) - 1)/(a-1) = (exp((a-1) r) - 1)/(a-1), the
  paper's (1 - u^(-alpha))/alpha with alpha = 1 - a; at a = 1 it is log u.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

FDivergence = Literal["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"]
F_DIVERGENCES: tuple[str, ...] = get_args(FDivergence)

# exp((a - 1) r) and exp(-r) are clamped at exp(40), so that the margins and their squares
# (IPO) stay finite in float32: a log-ratio of -100 is an ordinary value in training. TRL
# clamps the alpha divergence's at exp(80) and not forward KL's; both agree with it wherever
# the exponent is below 40.
_EXPONENT_MAX = 40.0


def f_prime(r: Tensor, divergence: str, alpha: float = 0.5) -> Tensor:
    """f'(exp(r)) for the named f-divergence (see the module docstring)."""
    if divergence == "reverse_kl":
        return r
    if divergence == "forward_kl":
        return -torch.expm1((-r).clamp(max=_EXPONENT_MAX))  # 1 - exp(-r)
    if divergence == "js_divergence":
        return math.log(2) + F.logsigmoid(r)
    if divergence == "alpha_divergence":
        if abs(alpha - 1.0) < 1e-6:  # the limit a -> 1 is log u
            return r
        exponent = ((alpha - 1.0) * r).clamp(max=_EXPONENT_MAX)
        return torch.expm1(exponent) / (alpha - 1.0)
    raise ValueError(f"unknown f_divergence {divergence!r}; allowed: {', '.join(map(repr, F_DIVERGENCES))}")
