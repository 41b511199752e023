"""The model-head seam: how each kind of judge is built from a recipe and how it turns a
collated preference batch into the `SequenceLogps` its loss reads. A loss names its
head (`model_head`); `HEADS` maps the name to one of these."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from alignment.data import PreferenceCollator
from alignment.data.collator import right_padded
from alignment.logprobs import concatenated_rows
from alignment.losses import PreferenceLoss, SequenceLogps
from alignment.losses.base import LatentPosterior
from alignment.models import load_backbone, load_reward_model
from alignment.rewards.contexts import VPLCollator
from alignment.rewards.pair_inputs import pair_ids, template_segments
from alignment.rewards.vpl import VPLRewardModel


def _sequence_logps(inputs: Mapping[str, Tensor], scores: Tensor, **fields: Any) -> SequenceLogps:
    return SequenceLogps(
        policy=scores,
        reference=None,
        scores=inputs["scores"],
        mask=inputs["mask"],
        lengths=inputs["lengths"],
        margins=inputs.get("margins"),
        **fields,
    )


class RewardHead:
    """A scalar reward model (`AutoModelForSequenceClassification`, one output): each
    real item's `prompt + completion` is one right-padded row, and r is the head's
    output at the row's last non-pad token, as transformers (and TRL) read it."""

    kind = "reward"

    def __init__(self, tokenizer: Any, loss: PreferenceLoss) -> None:
        self.pad_token_id = tokenizer.pad_token_id

    def load(self, config, training_args) -> nn.Module:
        return load_reward_model(
            config.model,
            self.pad_token_id,
            lora=config.lora,
            quantization=config.quantization,
            gradient_checkpointing=training_args.checkpointing_enabled,
            gradient_checkpointing_kwargs=training_args.checkpointing_kwargs,
        )

    def collator(self) -> PreferenceCollator:
        return PreferenceCollator(self.pad_token_id)

    def rewards(self, model: nn.Module, inputs: Mapping[str, Tensor]) -> Tensor:
        """r [B, K] (0 for padded items)."""
        input_ids, attention_mask, _, index = concatenated_rows(inputs, self.pad_token_id)
        r = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, 0].float()
        return r.new_zeros(inputs["mask"].shape).index_put((index[:, 0], index[:, 1]), r)

    def logps(self, model: nn.Module, inputs: Mapping[str, Tensor], step: int) -> SequenceLogps:
        return _sequence_logps(inputs, self.rewards(model, inputs))

    def judge_details(self) -> dict[str, Any]:
        return {}


class PreferenceHead(RewardHead):
    """A pairwise preference model (`AutoModelForSequenceClassification`, one output, the
    logit of P(a > b)) reading the loss's `template` filled with the prompt and two
    completions (`pair_inputs`). For each pair the loss selects, both orders are run."""

    kind = "preference"

    def __init__(self, tokenizer: Any, loss: PreferenceLoss) -> None:
        super().__init__(tokenizer, loss)
        self.loss = loss
        self.segments = template_segments(loss.template, tokenizer)

    def logps(self, model: nn.Module, inputs: Mapping[str, Tensor], step: int) -> SequenceLogps:
        selected = self.loss.selected_pairs(inputs["scores"], inputs["mask"])
        b, winner, loser = selected.nonzero(as_tuple=True)
        prompt_len = inputs["prompt_attention_mask"].sum(-1).tolist()
        completion_len = inputs["completion_attention_mask"].sum(-1).tolist()
        prompts, completions = inputs["prompt_input_ids"].tolist(), inputs["completion_input_ids"].tolist()

        def ids(row: int, first: int, second: int) -> list[int]:
            prompt = prompts[row][: prompt_len[row]]
            a = completions[row][first][: completion_len[row][first]]
            c = completions[row][second][: completion_len[row][second]]
            return pair_ids(prompt, a, c, self.segments)

        pairs = list(zip(b.tolist(), winner.tolist(), loser.tolist(), strict=True))
        shape = (*inputs["mask"].shape, inputs["mask"].shape[-1])
        device = inputs["mask"].device
        if not pairs:  # a batch without a strict preference: nothing to train on
            logits = torch.zeros(shape, device=device)
        else:
            sequences = [ids(r, i, j) for r, i, j in pairs] + [ids(r, j, i) for r, i, j in pairs]
            input_ids, attention_mask = (t.to(device) for t in right_padded(sequences, self.pad_token_id))
            f = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, 0].float()
            forward, backward = f.chunk(2)
            logits = f.new_zeros(shape).index_put((b, winner, loser), forward).index_put((b, loser, winner), backward)
        # An item's score: its mean log-odds, over its pairs, of beating the other item.
        odds = (logits - logits.transpose(1, 2)) / 2
        in_pair = (selected | selected.transpose(1, 2)).to(odds.dtype)
        item = (odds * in_pair).sum(-1) / in_pair.sum(-1).clamp(min=1)
        return _sequence_logps(inputs, item, pair_logits=logits)

    def judge_details(self) -> dict[str, Any]:
        return {"pair_template": self.loss.template}


class VPLHead(RewardHead):
    """VPL (`alignment.rewards.vpl`): the target pair's embeddings and the user's
    context pairs' embeddings (no gradient) from one backbone, the posterior q(z | context),
    and r(x, y, z) for the target pair."""

    kind = "vpl"

    def __init__(self, tokenizer: Any, loss: PreferenceLoss) -> None:
        super().__init__(tokenizer, loss)
        self.loss = loss

    def load(self, config, training_args) -> nn.Module:
        # `lora:` and `quantization:` were refused at load (config/combinations.py: check_model_head).
        backbone = load_backbone(config.model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.model.init_seed)
            return VPLRewardModel(backbone, self.loss.latent_dim, self.loss.hidden_dim)

    def collator(self) -> PreferenceCollator:
        return VPLCollator(self.pad_token_id)

    def logps(
        self, model: nn.Module, inputs: Mapping[str, Tensor], step: int, context_size: int | None = None
    ) -> SequenceLogps:
        input_ids, attention_mask, _, index = concatenated_rows(inputs, self.pad_token_id)
        r, mean, log_var, z = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            row_list=index[:, 0],
            context_input_ids=inputs["context_input_ids"],
            context_attention_mask=inputs["context_attention_mask"],
            context_mask=inputs["context_mask"],
            context_size=context_size,
        )
        rewards = r.new_zeros(inputs["mask"].shape).index_put((index[:, 0], index[:, 1]), r)
        latent = LatentPosterior(mean, log_var, step, z=z, users=inputs.get("user_index"))
        return _sequence_logps(inputs, rewards, latent=latent)

    def judge_details(self) -> dict[str, Any]:
        return {"context_pairs": self.loss.context_pairs}


HEADS: dict[str, type[RewardHead]] = {"reward": RewardHead, "preference": PreferenceHead, "vpl": VPLHead}


def model_head(loss: PreferenceLoss, tokenizer: Any) -> RewardHead:
    """The head that trains `loss`'s model."""
    return HEADS[loss.model_head](tokenizer, loss)
