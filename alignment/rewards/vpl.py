"""The VPL reward model (Poddar et al. 2024): a backbone's embedding of (x, y), a user
latent z inferred from that user's labelled pairs, and a reward MLP r(x, y, z).

Where the paper leaves a choice open, this follows the authors' code (WEIRDLabUW/vpl_llm,
`hidden_context/vae_utils.py`):
- pair encoder: MLP(2H -> hidden -> hidden -> D) on [e(chosen), e(rejected)], LeakyReLU(0.2);
- set encoder: one self-attention layer over the N pair codes (query, key and value
  projections, softmax(q k^T / sqrt(D)) v), mean pooling, then linear layers to mu and
  log sigma^2; both are clamped to [-1, 1] as the authors do;
- z = mu + sigma * eps, rescaled to norm sqrt(D) (their `reparameterization`); z = mu
  at evaluation and as a judge, rescaled the same way (the authors' code passes the raw
  mu there, whose norm is far below the sqrt(D) the decoder was trained on: the reward
  then barely depends on the user);
- reward decoder: MLP(H + D -> hidden -> hidden -> 1), LeakyReLU(0.2);
- the authors' trainer adds a supervised contrastive term on z with the users' ids
  (`get_contrastive_loss`, weight 1, temperature 0.05): the `vpl` loss's
  `contrastive_weight`. Without it the tiny two-user task stays at chance: the
  posterior collapses to the prior before the reward learns to read z;
- the context pairs' embeddings carry no gradient (the authors embed contexts under
  `torch.no_grad()`); the target pair's do, so the backbone is trained.
Ours differ in one place: e(x, y) is the backbone's final hidden state at the last real
token (the reward-model convention), where the authors take a learned projection for
targets and a position-weighted mean for contexts."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

VPL_CONFIG = "vpl_config.json"
BACKBONE_DIR = "backbone"


@dataclass
class VPLShape:
    latent_dim: int
    hidden_dim: int


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden, hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden, outputs),
    )


class SetEncoder(nn.Module):
    """N pair codes [B, N, D] (mask [B, N]) -> (mu, log sigma^2) [B, D]. A user with no
    context pairs gets the prior, mu = 0 and log sigma^2 = 0."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.mean, self.log_var = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, codes: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        scores = self.query(codes) @ self.key(codes).transpose(1, 2) / math.sqrt(codes.shape[-1])
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        # A row with no context at all has only -inf scores: give it uniform weights, then drop it.
        scores = torch.where(mask.any(-1)[:, None, None], scores, 0.0)
        attended = scores.softmax(-1) @ self.value(codes)
        weights = mask.to(codes.dtype)[..., None]
        pooled = (attended * weights).sum(1) / weights.sum(1).clamp(min=1)
        mean = self.mean(pooled).clamp(-1, 1)
        log_var = self.log_var(pooled).clamp(-1, 1)
        has_context = mask.any(-1)[:, None]
        return torch.where(has_context, mean, 0.0), torch.where(has_context, log_var, 0.0)


class VPLRewardModel(nn.Module):
    """backbone (a transformers `AutoModel`) + pair encoder + set encoder + reward decoder."""

    def __init__(self, backbone: nn.Module, latent_dim: int = 512, hidden_dim: int = 512) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config  # what Trainer and the memory checks read
        width = backbone.config.get_text_config().hidden_size
        self.shape = VPLShape(latent_dim, hidden_dim)
        self.pair_encoder = _mlp(2 * width, hidden_dim, latent_dim)
        self.set_encoder = SetEncoder(latent_dim)
        self.decoder = _mlp(width + latent_dim, hidden_dim, 1)

    def embed(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """e(x, y) [N, H]: the position-weighted mean of the final hidden states over each
        row's real tokens, sum_t t h_t / sum_t t (the authors' context embedding)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        weights = attention_mask * torch.arange(1, attention_mask.shape[1] + 1, device=attention_mask.device)
        weights = weights.to(hidden.dtype)[..., None]
        return ((hidden * weights).sum(1) / weights.sum(1).clamp(min=1)).float()

    def posterior(self, chosen: Tensor, rejected: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """q(z | context) from the context pairs' embeddings [B, N, H] (mask [B, N])."""
        codes = self.pair_encoder(torch.cat([chosen, rejected], -1))
        return self.set_encoder(codes, mask)

    def latent(self, mean: Tensor, log_var: Tensor) -> Tensor:
        """z: reparametrised in training, the mean otherwise; rescaled to norm sqrt(D)."""
        z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean) if self.training else mean
        return F.normalize(z, dim=-1) * math.sqrt(z.shape[-1])

    def reward(self, embeddings: Tensor, z: Tensor) -> Tensor:
        """r(x, y, z) for embeddings [..., H] and z broadcast to them: [...]."""
        z = z.expand(*embeddings.shape[:-1], z.shape[-1])
        return self.decoder(torch.cat([embeddings, z], -1)).squeeze(-1)

    def context_posterior(
        self, ids: Tensor, attention: Tensor, mask: Tensor, size: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """(mu, log sigma^2) [B, D] from context pairs [B, N, 2, L] (chosen, rejected) with
        `mask` [B, N], using the first `size` of them (None: all)."""
        if size is not None:
            mask = mask & (torch.arange(mask.shape[1], device=mask.device) < size)
        batch, n, _, width = ids.shape
        with torch.no_grad():
            flat = self.embed(ids.reshape(-1, width), attention.reshape(-1, width))
        flat = flat.reshape(batch, n, 2, -1)
        return self.posterior(flat[:, :, 0], flat[:, :, 1], mask)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        row_list: Tensor,
        context_input_ids: Tensor,
        context_attention_mask: Tensor,
        context_mask: Tensor,
        context_size: int | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Rewards [R] of right-padded rows `prompt + completion` (row r belongs to list
        `row_list[r]`), each under its list's user latent z, and per list (mu, log sigma^2, z).
        One forward, so DDP and DeepSpeed see every parameter used."""
        mean, log_var = self.context_posterior(context_input_ids, context_attention_mask, context_mask, context_size)
        z = self.latent(mean, log_var)
        return self.reward(self.embed(input_ids, attention_mask), z[row_list]), mean, log_var, z

    # ------------------------------------------------------------------ checkpoints

    def save_configs(self, directory: str) -> None:
        """The architecture beside the weights (`model.safetensors`, the Trainer's)."""
        os.makedirs(os.path.join(directory, BACKBONE_DIR), exist_ok=True)
        self.backbone.config.save_pretrained(os.path.join(directory, BACKBONE_DIR))
        with open(os.path.join(directory, VPL_CONFIG), "w", encoding="utf-8") as f:
            json.dump(asdict(self.shape), f, indent=2)

    @classmethod
    def from_pretrained(cls, directory: str) -> VPLRewardModel:
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModel

        with open(os.path.join(directory, VPL_CONFIG), encoding="utf-8") as f:
            shape = json.load(f)
        backbone = AutoModel.from_config(AutoConfig.from_pretrained(os.path.join(directory, BACKBONE_DIR)))
        model = cls(backbone, **shape)
        model.load_state_dict(load_file(os.path.join(directory, "model.safetensors")))
        return model.eval()
