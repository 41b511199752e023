"""Online preference training: sample -> judge -> the same registry losses.

Each step takes a batch of prompts, samples two completions per prompt (y from the
policy when the loss needs a policy sample, else from the recipe's sampler; y' from
the sampler), asks the judge for P(y > y'), and trains on the pair in the offline
batch format with scores [P(y > y'), P(y' > y)]. The loop, accumulation, distributed
setup, checkpoints and logging are the Trainer's, as offline."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from alignment.data import PromptCollator
from alignment.judges import Judge
from alignment.losses import LossOutput, PreferenceLoss, SequenceLogps
from alignment.online.config import OnlineConfig
from alignment.online.sampler import GenerationSettings, ModelStream, Samples, eos_ids, sample
from alignment.trainers.arguments import AlignmentTrainingArguments
from alignment.trainers.faults import guard_nonfinite
from alignment.trainers.preference import PreferenceTrainer

SAMPLER_COEF = {"policy": 0.0, "reference": 1.0}


class OnlineTrainer(PreferenceTrainer):
    """Nash-MD, online IPO, IPO-MD and online DPO, chosen by the loss and the sampler.

    Evaluation samples y from the trained policy and y' from the reference and reports
    the judged win rate, P(y > y') averaged over the test prompts, as
    `eval_win_rate_vs_initial` (the reference is the initial policy) or
    `eval_win_rate_vs_reference` (`reference_is_initial=False`)."""

    def __init__(
        self,
        model: nn.Module,
        args: AlignmentTrainingArguments,
        loss_fn: PreferenceLoss,
        judge: Judge,
        online: OnlineConfig,
        ref_model: nn.Module | None = None,
        reference: str | None = None,
        reference_is_initial: bool = True,
        processing_class=None,
        **kwargs: Any,
    ) -> None:
        if reference == "precompute":
            raise ValueError("online training samples new completions every step: reference='precompute' cannot work")
        if processing_class is None:
            raise ValueError("OnlineTrainer needs the tokenizer (processing_class) to decode completions for the judge")
        super().__init__(
            model,
            args,
            loss_fn,
            ref_model=ref_model,
            reference=reference,
            processing_class=processing_class,
            data_collator=PromptCollator(pad_token_id=processing_class.pad_token_id),
            **kwargs,
        )
        if online.sampler != "policy" and self.reference == "none":
            raise ValueError(f"sampler {online.sampler!r} samples from the reference, but there is none")
        self.judge = judge
        self.online = online
        self.coef = SAMPLER_COEF.get(online.sampler, online.mixture_coef)
        generation_config = getattr(self.accelerator.unwrap_model(model), "generation_config", None)
        eos = eos_ids(processing_class.eos_token_id, getattr(generation_config, "eos_token_id", None))
        self.settings = GenerationSettings(
            max_new_tokens=online.max_new_tokens,
            eos_token_ids=eos,
            pad_token_id=processing_class.pad_token_id,
            temperature=online.temperature,
            top_k=online.top_k,
            top_p=online.top_p,
        )
        self.eval_settings = GenerationSettings(
            **{**vars(self.settings), "max_new_tokens": online.eval_max_new_tokens or online.max_new_tokens}
        )
        self.win_rate_key = "win_rate_vs_initial" if reference_is_initial else "win_rate_vs_reference"

    # ------------------------------------------------------------------ sampling

    def _streams(self, unwrapped: nn.Module) -> tuple[ModelStream, ModelStream | None]:
        policy = ModelStream(unwrapped)
        if self.ref_model is not None:
            return policy, ModelStream(self.ref_model)
        if self.reference == "adapter":
            return policy, ModelStream(unwrapped, context=unwrapped.disable_adapter)
        return policy, None

    def _sample(self, unwrapped: nn.Module, inputs: Mapping[str, Any], coef: float, settings) -> Samples:
        policy, reference = self._streams(unwrapped)
        return sample(policy, reference, inputs["prompt_input_ids"], inputs["prompt_attention_mask"], coef, settings)

    def _decode(self, samples: Samples) -> list[str]:
        rows = [ids[: int(n)].tolist() for ids, n in zip(samples.completion_ids, samples.lengths, strict=True)]
        return self.processing_class.batch_decode(rows, skip_special_tokens=True)

    def _judge(self, prompts: list[Any], first: Samples, second: Samples) -> Tensor:
        """P(y > y') per prompt, with the missing-EOS penalty, on the training device."""
        pairs = list(zip(self._decode(first), self._decode(second), strict=True))
        p = self.judge(prompts, pairs).to(self.args.device, torch.float32)
        penalty = self.online.missing_eos_penalty
        if penalty:
            missing = [(~s.finished).float().to(p.device) for s in (first, second)]
            p = (p + penalty * (missing[1] - missing[0])).clamp(0.0, 1.0)
        return p

    @staticmethod
    def _pair_batch(inputs: Mapping[str, Any], first: Samples, second: Samples, p: Tensor) -> dict[str, Tensor]:
        """The two samples in the offline batch layout ([B, 2, T] completions)."""
        width = max(first.completion_ids.size(1), second.completion_ids.size(1))

        def padded(t: Tensor) -> Tensor:
            return nn.functional.pad(t, (0, width - t.size(1)))

        ids = torch.stack([padded(first.completion_ids), padded(second.completion_ids)], 1)
        attention = torch.stack([padded(first.completion_mask), padded(second.completion_mask)], 1)
        return {
            "prompt_input_ids": inputs["prompt_input_ids"],
            "prompt_attention_mask": inputs["prompt_attention_mask"],
            "completion_input_ids": ids,
            "completion_attention_mask": attention,
            "scores": torch.stack([p, 1 - p], -1),
            "mask": torch.ones(ids.shape[:2], dtype=torch.bool, device=ids.device),
            "lengths": attention.sum(-1),
        }

    # ------------------------------------------------------------------ train and eval

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch=None
    ) -> Tensor | tuple[Tensor, LossOutput]:
        first_coef = 0.0 if self.loss_fn.first_item_from_policy else self.coef
        with self._generation_model(model) as unwrapped:
            first = self._sample(unwrapped, inputs, first_coef, self.settings)
            second = self._sample(unwrapped, inputs, self.coef, self.settings)
        p = self._judge(inputs["prompts"], first, second)
        batch = self._pair_batch(inputs, first, second, p)
        logps = self.batch_logps(model, batch)
        output = self.loss_fn(logps)
        output.loss = guard_nonfinite(self, model, output.loss, logps)
        from_policy = torch.tensor([first_coef == 0.0, self.coef == 0.0], device=p.device)
        output.metrics.update(self._sample_metrics(logps, (first, second), from_policy))
        output.metrics["online/preference"] = p.mean().detach()
        self._metrics["train"].add(output, batch["mask"])
        return (output.loss, output) if return_outputs else output.loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Win rate of the policy's samples against the reference's on a test batch."""
        inputs = self._prepare_inputs(inputs)
        with self._generation_model(model) as unwrapped:
            mine = self._sample(unwrapped, inputs, 0.0, self.eval_settings)
            initial = self._sample(unwrapped, inputs, 1.0, self.eval_settings)
        p = self._judge(inputs["prompts"], mine, initial)
        batch = self._pair_batch(inputs, mine, initial, p)
        with torch.no_grad():
            logps = self.batch_logps(model, batch)
        from_policy = torch.tensor([True, False], device=p.device)
        metrics = {self.win_rate_key: p.mean(), **self._sample_metrics(logps, (mine, initial), from_policy)}
        self._metrics["eval"].add(LossOutput(loss=p.new_zeros(()), metrics=metrics), batch["mask"])
        return None, None, None

    @staticmethod
    def _sample_metrics(logps: SequenceLogps, samples: tuple[Samples, Samples], from_policy: Tensor) -> dict:
        """Length, missing-EOS rate and a one-sample KL(pi || mu) estimate (the mean
        sequence log-ratio of the completions sampled from the policy)."""
        lengths = torch.stack([s.lengths for s in samples], 1).float()
        finished = torch.stack([s.finished for s in samples], 1).float()
        metrics = {
            "online/completion_length": lengths[:, from_policy].mean() if from_policy.any() else lengths.mean(),
            "online/missing_eos": 1 - (finished[:, from_policy].mean() if from_policy.any() else finished.mean()),
        }
        if logps.reference is not None and from_policy.any():
            metrics["online/kl"] = logps.logratios().detach()[:, from_policy].mean()
        return {key: value.detach().float() for key, value in metrics.items()}
