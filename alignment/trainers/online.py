"""Online training: sample K completions per prompt -> judge them -> the registry losses.

Each step takes a batch of prompts and draws `online.num_samples` completions per prompt
(slot 0 from the policy itself when the loss needs a policy sample, the others from the
recipe's sampler), asks the judge about them (the K(K-1)/2 pairs, or K rewards), and
trains on them in the offline batch format: [B, K, T] completions, `scores` in the form
the loss reads (win rates or rewards) and the preference matrix beside them. The loop,
accumulation, distributed setup, checkpoints and logging are the Trainer's, as offline."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Sampler as IndexSampler

from alignment.data import PromptCollator
from alignment.losses import LossOutput, PreferenceLoss
from alignment.online.feedback import Feedback, judge_samples
from alignment.online.judges import Judge
from alignment.online.sampler import (
    POLICY,
    REFERENCE,
    GenerationSettings,
    GroupSamples,
    ModelStream,
    Sampler,
    build_sampler,
    draw,
    eos_ids,
)
from alignment.schema import OnlineConfig
from alignment.trainers.arguments import AlignmentTrainingArguments
from alignment.trainers.faults import guard_nonfinite
from alignment.trainers.preference import PreferenceTrainer


class RepeatedBatches(IndexSampler):
    """Each run of `chunk` indices of `base` given `repeats` times in a row: with
    `online.updates_per_batch` = mu, every optimizer step of a batch of samples sees the
    prompts it was sampled for, and no prompt is skipped (TRL's RepeatSampler does the same)."""

    def __init__(self, base: IndexSampler, chunk: int, repeats: int) -> None:
        self.base, self.chunk, self.repeats = base, chunk, repeats

    def __len__(self) -> int:
        return len(self.base) * self.repeats

    def __iter__(self) -> Iterator[int]:
        run: list[int] = []
        for index in self.base:
            run.append(index)
            if len(run) == self.chunk:
                for _ in range(self.repeats):
                    yield from run
                run = []
        for _ in range(self.repeats if run else 0):
            yield from run


class OnlineTrainer(PreferenceTrainer):
    """Nash-MD, online IPO/DPO, IPO-MD, SPO, SPPO, RLOO, GRPO, CoPG and the listwise losses
    online, chosen by the loss, the sampler and K.

    Evaluation samples one completion from the trained policy and one from the reference
    per test prompt and reports the judged win rate P(y > y') as
    `eval_win_rate_vs_initial` (the reference is the initial policy) or
    `eval_win_rate_vs_reference`."""

    samples_online = True

    def __init__(
        self,
        model: nn.Module,
        args: AlignmentTrainingArguments,
        loss_fn: PreferenceLoss,
        judge: Judge,
        online: OnlineConfig,
        processing_class=None,
        **kwargs: Any,
    ) -> None:
        if processing_class is None:
            raise ValueError("OnlineTrainer needs the tokenizer (processing_class) to decode completions for the judge")
        super().__init__(
            model,
            args,
            loss_fn,
            processing_class=processing_class,
            data_collator=PromptCollator(pad_token_id=processing_class.pad_token_id),
            **kwargs,
        )
        # The recipe's combinations (a live reference, a sampler that has its reference) were checked at load.
        self.sampler: Sampler = build_sampler(online.sampler, online.mixture_coef)
        self.judge = judge
        self.online = online
        first = POLICY if loss_fn.first_item_from_policy else self.sampler
        self.slots = [first] + [self.sampler] * (online.num_samples - 1)
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
        self._win_rate_key = "win_rate_vs_initial" if self.reference.is_initial else "win_rate_vs_reference"
        self._reused: dict[int, tuple[dict[str, Tensor], GroupSamples, Feedback, Tensor | None]] = {}
        self._reuse_step, self._micro_step = -1, 0

    @staticmethod
    def _keeps_unneeded_reference(reference) -> bool:
        return reference.live  # the initial policy's samples, for eval_win_rate_vs_initial

    def _get_train_sampler(self, train_dataset=None):
        base = super()._get_train_sampler(train_dataset)
        repeats = self.online.updates_per_batch
        if repeats == 1 or base is None:
            return base
        chunk = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        return RepeatedBatches(base, chunk, repeats)

    # ------------------------------------------------------------------ sampling and judging

    def _draw(self, unwrapped: nn.Module, inputs: Mapping[str, Any], slots: list[Sampler], settings) -> GroupSamples:
        policy, reference = ModelStream(unwrapped), self.reference.stream(unwrapped)
        return draw(slots, policy, reference, inputs["prompt_input_ids"], inputs["prompt_attention_mask"], settings)

    def _decode(self, samples: GroupSamples) -> list[list[str]]:
        ids, lengths = samples.completion_ids, samples.lengths
        rows = [[ids[b, k, : int(lengths[b, k])].tolist() for k in range(ids.size(1))] for b in range(ids.size(0))]
        flat = self.processing_class.batch_decode([row for group in rows for row in group], skip_special_tokens=True)
        k = ids.size(1)
        return [flat[b * k : (b + 1) * k] for b in range(ids.size(0))]

    def _judge(self, prompts: list[Any], samples: GroupSamples) -> Feedback:
        """The judge's feedback on each prompt's K samples, with the missing-EOS penalty."""
        feedback = judge_samples(self.judge, prompts, self._decode(samples))
        feedback = feedback.penalised(~samples.finished.cpu(), self.online.missing_eos_penalty)
        device = self.args.device
        rewards = None if feedback.rewards is None else feedback.rewards.to(device, torch.float32)
        return Feedback(feedback.preferences.to(device, torch.float32), rewards)

    @staticmethod
    def _group_batch(inputs: Mapping[str, Any], samples: GroupSamples, scores: Tensor) -> dict[str, Tensor]:
        """The K samples in the offline batch layout ([B, K, T] completions)."""
        ids = samples.completion_ids
        return {
            "prompt_input_ids": inputs["prompt_input_ids"],
            "prompt_attention_mask": inputs["prompt_attention_mask"],
            "completion_input_ids": ids,
            "completion_attention_mask": samples.completion_mask,
            "scores": scores,
            "mask": torch.ones(ids.shape[:2], dtype=torch.bool, device=ids.device),
            "lengths": samples.completion_mask.sum(-1),
        }

    def _fresh(self, model: nn.Module, inputs: Mapping[str, Any], keep_old: bool):
        with self._generation_model(model) as unwrapped:
            samples = self._draw(unwrapped, inputs, self.slots, self.settings)
        feedback = self._judge(inputs["prompts"], samples)
        batch = self._group_batch(inputs, samples, feedback.scores(self.loss_fn.feedback))
        old = None
        if keep_old:  # the sampling policy's token log-probs, for the importance ratio of later updates
            with torch.no_grad():
                old = self._token_logps(model, batch)
        return batch, samples, feedback, old

    def _step_samples(self, model: nn.Module, inputs: Mapping[str, Any]):
        """This micro-batch's samples: drawn now, or, with `updates_per_batch` = mu, drawn at
        the first of every mu optimizer steps and reused by the next mu - 1 (the sampler
        repeats the prompts, so the same micro-batch comes back)."""
        repeats = self.online.updates_per_batch
        if repeats == 1:
            return self._fresh(model, inputs, keep_old=False)
        step = self.state.global_step
        if step != self._reuse_step:
            self._reuse_step, self._micro_step = step, 0
        micro, self._micro_step = self._micro_step, self._micro_step + 1
        if step % repeats == 0 or micro not in self._reused:
            self._reused[micro] = self._fresh(model, inputs, keep_old=True)
        batch = self._reused[micro][0]
        if not torch.equal(batch["prompt_input_ids"], inputs["prompt_input_ids"]):
            raise RuntimeError(
                "online.updates_per_batch: the repeated micro-batch holds other prompts than its samples"
            )
        return self._reused[micro]

    # ------------------------------------------------------------------ train and eval

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch=None
    ) -> Tensor | tuple[Tensor, LossOutput]:
        batch, samples, feedback, old = self._step_samples(model, inputs)
        logps = self.batch_logps(
            model,
            batch,
            old_policy=old,
            preferences=feedback.preferences,
            truncated=~samples.finished.to(batch["mask"].device),
            completion_budget=self.online.max_new_tokens,
        )
        output = self.loss_fn(logps)
        output.loss = guard_nonfinite(self, model, output.loss, logps)
        output.metrics.update(self._sample_metrics(None if logps.reference is None else logps.logratios(), samples))
        output.metrics["online/preference"] = feedback.scores("preferences").mean().detach()
        if feedback.rewards is not None:
            output.metrics["online/reward"] = feedback.rewards.mean().detach()
        self._metrics["train"].add(output, batch["mask"])
        return (output.loss, output) if return_outputs else output.loss

    @property
    def win_rate_key(self) -> str:
        """The sampled win rate's name. An `evaluation.judge` also reports
        `win_rate_vs_initial`; when both are against the initial policy the online judge's
        becomes `online_judge_win_rate_vs_initial`, so neither hides the other."""
        evaluation_judged = self.generation_eval is not None and self.generation_eval.judge is not None
        if evaluation_judged and self._win_rate_key == "win_rate_vs_initial":
            return f"online_judge_{self._win_rate_key}"
        return self._win_rate_key

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Win rate of the policy's samples against the reference's on a test batch (with
        no reference, only the policy samples' length and missing-EOS rate)."""
        inputs = self._prepare_inputs(inputs)
        slots = [POLICY, REFERENCE] if self.reference.live else [POLICY]
        with self._generation_model(model) as unwrapped:
            samples = self._draw(unwrapped, inputs, slots, self.eval_settings)
        metrics, logratios = {}, None
        if self.reference.live:
            feedback = self._judge(inputs["prompts"], samples)
            batch = self._group_batch(inputs, samples, feedback.scores("preferences"))
            with torch.no_grad():  # the reference's log-probs even for a loss that does not read them: the KL
                logratios = self._logps(model, batch) - self.reference.logps(model, batch, self._logps)
            metrics[self.win_rate_key] = feedback.preferences[:, 0, 1].mean()
        metrics.update(self._sample_metrics(logratios, samples))
        mask = torch.ones(samples.finished.shape, dtype=torch.bool, device=samples.finished.device)
        self._metrics["eval"].add(LossOutput(loss=torch.zeros((), device=mask.device), metrics=metrics), mask)
        return None, None, None

    @staticmethod
    def _sample_metrics(logratios: Tensor | None, samples: GroupSamples) -> dict:
        """Length, missing-EOS rate and a one-sample KL(pi || mu) estimate (the mean
        sequence log-ratio of the completions sampled from the policy)."""
        from_policy = samples.from_policy
        lengths, finished = samples.lengths.float(), samples.finished.float()
        mine = from_policy if from_policy.any() else torch.ones_like(from_policy)
        metrics = {
            "online/completion_length": lengths[:, mine].mean(),
            "online/missing_eos": 1 - finished[:, mine].mean(),
        }
        if logratios is not None and from_policy.any():
            metrics["online/kl"] = logratios.detach()[:, from_policy].mean()
        return {key: value.detach().float() for key, value in metrics.items()}
