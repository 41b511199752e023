"""Online training: sample K completions per prompt -> judge them -> the registry losses.

Each step takes a batch of prompts and draws `online.num_samples` completions per prompt
(slot 0 from the policy itself when the loss needs a policy sample, the others from the
recipe's sampler), asks the judge about them (the K(K-1)/2 pairs, or K rewards), and
trains on them in the offline batch format: [B, K, T] completions, `scores` in the form
the loss reads (win rates or rewards) and the preference matrix beside them. The loop,
accumulation, distributed setup, checkpoints and logging are the Trainer's, as offline."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Sampler as IndexSampler

from alignment.data import PromptCollator
from alignment.data.in_memory import tokenized_prompts
from alignment.losses import LossOutput, PreferenceLoss
from alignment.online.dynamic_sampling import Draw, assemble, informative_groups, padded_cat
from alignment.online.engines.base import GenerationEngine, merge_slots, select_rows
from alignment.online.engines.correction import EngineCorrection, logp_mismatch
from alignment.online.engines.native import NativeEngine
from alignment.online.feedback import Feedback, aggregate_rewards, judge_samples
from alignment.online.judges import Judge, RewardFunctionJudge, RewardJudge, RewardPanel, build_judge
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
from alignment.schema import DataConfig, OnlineConfig, build_section
from alignment.trainers.arguments import AlignmentTrainingArguments
from alignment.trainers.faults import guard_nonfinite
from alignment.trainers.preference import PreferenceTrainer
from alignment.trainers.weight_sync import policy_weights, reference_weights


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


JudgeLike = Judge | Callable[..., Any] | Sequence[Callable[..., Any] | RewardJudge]
"""What OnlineTrainer takes as its judge: a `Judge`, a Python reward function, or a list of them."""


def online_settings(online: OnlineConfig | Mapping[str, Any] | None, judge: JudgeLike | None) -> OnlineConfig:
    """The `online:` settings: an `OnlineConfig`, or a mapping of the recipe's `online:` keys
    checked as a recipe's are (None: the defaults). A mapping may leave out `judge` when the
    judge is given as an object; the settings then record which function it is."""
    if isinstance(online, OnlineConfig):
        return online
    raw = dict(online or {})
    if "judge" not in raw:
        if judge is None:
            raise ValueError("OnlineTrainer needs a judge: a reward function, a Judge, or online.judge")
        raw["judge"] = _described(judge)
    return build_section(OnlineConfig, raw, "online")


def _described(judge: JudgeLike) -> dict[str, Any] | list[dict[str, Any]]:
    """A judge object as the `online.judge` entry that names it (`module:qualname`): the
    resolved settings say what judged; the object itself is what the trainer calls."""
    if isinstance(judge, Sequence) and not isinstance(judge, str):
        return [_described(member) for member in judge]  # type: ignore[misc]
    target = judge if callable(judge) and not isinstance(judge, Judge) else type(judge)
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    rewards = not isinstance(judge, Judge) or isinstance(judge, RewardJudge)
    return {"type": "reward_function" if rewards else "callable", "function": f"{target.__module__}:{name}"}


def judge_from(judge: JudgeLike | None, online: OnlineConfig, device: Any) -> Judge:
    """The judge to call: a `Judge` as given; a Python function as a reward function
    (`function(prompts, completions, **columns) -> list[float | None]`, TRL's reward
    function); a list of them as a panel of equal weights, aggregated per
    `online.multi_objective_aggregation`; None: the one `online.judge` describes."""
    if judge is None:
        return build_judge(online.judge, device, online.multi_objective_aggregation, online.max_new_tokens)
    if isinstance(judge, Judge):
        return judge
    if callable(judge):
        return _reward_judge(judge)
    if isinstance(judge, Sequence) and not isinstance(judge, str) and judge:
        members = []
        for member in judge:
            reward = _reward_judge(member) if callable(member) and not isinstance(member, Judge) else member
            if not isinstance(reward, RewardJudge):
                raise TypeError(f"judge: a list holds reward functions or reward judges, got {member!r}")
            members.append((getattr(reward, "short_name", reward.name), reward, 1.0))
        # Each function's mean is logged under its name (`online/rewards/<name>`): two lambdas get two.
        names = [name for name, _, _ in members]
        members = [
            (name if names.count(name) == 1 else f"{name}_{names[:i].count(name) + 1}", member, weight)
            for i, (name, member, weight) in enumerate(members)
        ]
        return RewardPanel(members, online.multi_objective_aggregation)
    raise TypeError(f"judge: expected a Judge, a reward function or a list of them, got {judge!r}")


def _reward_judge(function: Callable[..., Any]) -> RewardFunctionJudge:
    """A Python reward function as a judge, named (and logged) by its `__name__`."""
    return RewardFunctionJudge(function, getattr(function, "__name__", None) or type(function).__name__)


class OnlineTrainer(PreferenceTrainer):
    """Nash-MD, online IPO/DPO, IPO-MD, SPO, SPPO, RLOO, GRPO, CoPG and the listwise losses
    online, chosen by the loss, the sampler and K.

    Evaluation samples one completion from the trained policy and one from the reference
    per test prompt and reports the judged win rate P(y > y') as
    `eval_win_rate_vs_initial` (the reference is the initial policy) or
    `eval_win_rate_vs_reference`.

    Built from objects, as TRL's GRPOTrainer is: `judge` is a `Judge`, a Python reward
    function or a list of them (`judge_from`), or None for the one `online.judge` names;
    `online` an `OnlineConfig` or a mapping of its keys (`online_settings`; None: the
    defaults); `train_dataset` and `eval_dataset` may be raw rows of any layout, whose
    prompts are read and tokenized as a recipe's are. A loss that needs a reference, or a
    sampler that draws from it, gets the default reference when none is given."""

    samples_online = True

    def __init__(
        self,
        model: nn.Module,
        args: AlignmentTrainingArguments,
        loss_fn: PreferenceLoss,
        judge: JudgeLike | None = None,
        online: OnlineConfig | Mapping[str, Any] | None = None,
        processing_class=None,
        engine: GenerationEngine | None = None,
        **kwargs: Any,
    ) -> None:
        if processing_class is None:
            raise ValueError("OnlineTrainer needs the tokenizer (processing_class) to decode completions for the judge")
        online = online_settings(online, judge)
        if engine is None and online.engine != "native":
            raise ValueError(
                f"online.engine {online.engine!r}: pass the engine (alignment.online.engines.build_engine), "
                "or train from a recipe, which builds it"
            )
        judge = judge_from(judge, online, args.device)
        self.online = online  # read by _needs_reference, before the Trainer is set up
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
        # Who samples: the trained model itself (native) or an external engine sent its weights.
        self.engine: GenerationEngine = engine or NativeEngine()
        self.engine.check_samplers(set(self.slots))
        self._engine_step: int | None = None  # the optimizer step whose weights the engine holds
        self._engine_metrics: dict[str, float] = {}
        self._pregenerated: list[tuple[Tensor, GroupSamples]] = []
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
        self._reused: dict[int, tuple[Tensor, tuple]] = {}
        self._reuse_step, self._micro_step = -1, 0
        self._extra_generator: torch.Generator | None = None  # dynamic sampling's own prompt order
        self._extra_order: Tensor | None = None

    @staticmethod
    def _keeps_unneeded_reference(reference) -> bool:
        return reference.live  # the initial policy's samples, for eval_win_rate_vs_initial

    def _needs_reference(self, loss_fn: PreferenceLoss) -> bool:
        sampler = build_sampler(self.online.sampler, self.online.mixture_coef)
        return loss_fn.needs_reference or sampler.needs_reference  # a mixture draws from the reference

    def _tokenized(self, rows: Any, cfg: DataConfig, tokenizer: Any, split: str, name: str, loss_fn: PreferenceLoss):
        """Raw rows -> the tokenized prompts a recipe's source of `split` gives."""
        return tokenized_prompts(rows, cfg, tokenizer, split, name)

    def _get_train_sampler(self, train_dataset=None):
        base = super()._get_train_sampler(train_dataset)
        repeats = self.online.updates_per_batch
        if repeats == 1 or base is None:
            return base
        chunk = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        return RepeatedBatches(base, chunk, repeats)

    # ------------------------------------------------------------------ sampling and judging

    def _draw(self, unwrapped: nn.Module, inputs: Mapping[str, Any], slots: list[Sampler], settings) -> GroupSamples:
        """The engine's samples for `slots`; slots an external engine cannot serve (the
        evaluation's reference samples without the mixture model) come from the trained
        model's own sampler (the config refuses such samplers for training)."""
        policy, reference = ModelStream(unwrapped), self.reference.stream(unwrapped)
        ids, mask = inputs["prompt_input_ids"], inputs["prompt_attention_mask"]
        served = [slot for slot in slots if self.engine.serves(slot)]
        if len(served) == len(slots):
            return self.engine.generate(slots, ids, mask, settings, policy, reference)
        native = draw([slot for slot in slots if not self.engine.serves(slot)], policy, reference, ids, mask, settings)
        external = self.engine.generate(served, ids, mask, settings, policy, reference)
        return merge_slots(slots, [self.engine.serves(slot) for slot in slots], external, native)

    # ------------------------------------------------------------------ an external engine

    def _sync_engine(self, model: nn.Module) -> None:
        """Send the policy's weights to an external engine, once per optimizer step, before
        it generates (under ZeRO-3 or FSDP every process gathers them; a server shared by
        all processes is sent them by the main process)."""
        if self.engine.uses_live_model or self._engine_step == self.state.global_step:
            return
        with self._generation_model(model) as unwrapped:
            if self.engine.shared_by_processes and not self.accelerator.is_main_process:
                metrics = {}
            else:
                if self._engine_step is None and self.engine.needs_reference_weights:
                    self.engine.load_weights(reference_weights(self.reference, unwrapped))
                with policy_weights(unwrapped) as weights:
                    metrics = self.engine.load_weights(weights)
        if self.engine.shared_by_processes:
            self.accelerator.wait_for_everyone()  # nobody generates from the old weights
        self._engine_step = self.state.global_step
        self._engine_metrics.update(metrics)

    def get_batch_samples(self, epoch_iterator, num_batches: int, device):
        """The optimizer step's micro-batches; with an external engine, their samples are
        generated here in one call (TRL's generation batch), and each micro-batch picks
        its own up in `_sample_and_judge`. The native sampler runs per micro-batch: it
        shares the trainer's memory."""
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._pregenerated = []
        reused = self.online.updates_per_batch > 1 and self.state.global_step % self.online.updates_per_batch != 0
        if not self.engine.uses_live_model and batches and self.model.training and not reused:
            self._pregenerate([self._prepare_inputs(batch) for batch in batches])
        return batches, num_items

    def _pregenerate(self, batches: list[Mapping[str, Any]]) -> None:
        pad = self.processing_class.pad_token_id
        ids = padded_cat([batch["prompt_input_ids"] for batch in batches], pad)
        mask = padded_cat([batch["prompt_attention_mask"] for batch in batches], 0)
        self._sync_engine(self.model_wrapped)
        with self._generation_model(self.model_wrapped) as unwrapped:
            samples = self._draw(
                unwrapped, {"prompt_input_ids": ids, "prompt_attention_mask": mask}, self.slots, self.settings
            )
        start = 0
        for batch in batches:
            rows = slice(start, start + batch["prompt_input_ids"].size(0))
            self._pregenerated.append((batch["prompt_input_ids"], select_rows(samples, rows)))
            start = rows.stop

    def _decode(self, samples: GroupSamples) -> tuple[list[list[str]], list[list[list[int]]]]:
        """Each prompt's K completion texts, and their token ids."""
        ids, lengths = samples.completion_ids, samples.lengths
        rows = [[ids[b, k, : int(lengths[b, k])].tolist() for k in range(ids.size(1))] for b in range(ids.size(0))]
        flat = self.processing_class.batch_decode([row for group in rows for row in group], skip_special_tokens=True)
        k = ids.size(1)
        return [flat[b * k : (b + 1) * k] for b in range(ids.size(0))], rows

    def _judge(self, inputs: Mapping[str, Any], samples: GroupSamples) -> Feedback:
        """The judge's feedback on each prompt's K samples, with the missing-EOS penalty.
        Reward functions may read the prompt rows' other columns, the completions' token
        ids and the trainer state (TRL's keywords)."""
        texts, ids = self._decode(samples)
        context: dict[str, Any] = {"completion_ids": ids, "trainer_state": self.state}
        rows = inputs.get("columns") or [{} for _ in texts]
        for key in dict.fromkeys(k for row in rows for k in row):
            if key not in ("prompts", "completions", *context):
                context[key] = [row.get(key) for row in rows]
        feedback = judge_samples(self.judge, inputs["prompts"], texts, context)
        feedback = feedback.penalised(~samples.finished.cpu(), self.online.missing_eos_penalty)
        return feedback.to(self.args.device)

    @staticmethod
    def _group_batch(inputs: Mapping[str, Any], samples: GroupSamples, feedback: Feedback, kind: str):
        """The K samples in the offline batch layout ([B, K, T] completions); `mask` leaves
        out the completions no reward function scored."""
        ids = samples.completion_ids
        mask = torch.ones(ids.shape[:2], dtype=torch.bool, device=ids.device)
        if feedback.scorable is not None:
            mask = mask & feedback.scorable.to(ids.device)
        return {
            "prompt_input_ids": inputs["prompt_input_ids"],
            "prompt_attention_mask": inputs["prompt_attention_mask"],
            "completion_input_ids": ids,
            "completion_attention_mask": samples.completion_mask,
            "scores": feedback.scores(kind),
            "mask": mask,
            "lengths": samples.completion_mask.sum(-1),
        }

    def _sample_and_judge(self, model: nn.Module, inputs: Mapping[str, Any]) -> tuple[GroupSamples, Feedback]:
        if self._pregenerated and torch.equal(self._pregenerated[0][0], inputs["prompt_input_ids"]):
            samples = self._pregenerated.pop(0)[1]
        else:
            self._sync_engine(model)
            with self._generation_model(model) as unwrapped:
                samples = self._draw(unwrapped, inputs, self.slots, self.settings)
        return samples, self._judge(inputs, samples)

    def _fresh(self, model: nn.Module, inputs: Mapping[str, Any], keep_old: bool):
        samples, feedback = self._sample_and_judge(model, inputs)
        stats: dict[str, Tensor] = {}
        trained = None
        if self.online.dynamic_sampling:
            dynamic = self._dynamic_sampling(model, dict(inputs), samples, feedback)
            inputs, samples, feedback, trained = dynamic.inputs, dynamic.samples, dynamic.feedback, dynamic.trained
            stats = {
                "online/dynamic_sampling/filtered": torch.tensor(float(dynamic.filtered)),
                "online/dynamic_sampling/draws": torch.tensor(float(dynamic.draws)),
                "online/dynamic_sampling/short": torch.tensor(float(dynamic.short)),
            }
        batch = self._group_batch(inputs, samples, feedback, self.loss_fn.feedback)
        if trained is not None:  # groups that only fill a short batch are not trained
            batch["mask"] = batch["mask"] & trained.to(batch["mask"].device)[:, None]
        old = None
        if keep_old:  # the sampling policy's token log-probs, for the importance ratio of later updates
            with torch.no_grad():
                old = self._token_logps(model, batch)
        return batch, samples, feedback, old, stats

    def _dynamic_sampling(self, model: nn.Module, inputs: dict[str, Any], samples: GroupSamples, feedback: Feedback):
        """DAPO's dynamic sampling: draw more micro-batches of prompts until this one holds
        its size in informative groups, or `dynamic_sampling_max_draws` draws were made.
        Every process draws as long as any process needs to (generation may hold
        collectives, under ZeRO-3 or FSDP)."""
        size, kind = inputs["prompt_input_ids"].size(0), self.loss_fn.feedback
        draws = [Draw(inputs, samples, feedback)]
        while True:
            have = sum(int(informative_groups(d.feedback.scores(kind), d.feedback.scorable).sum()) for d in draws)
            need = have < size and len(draws) < self.online.dynamic_sampling_max_draws
            if self.args.world_size > 1:
                need = bool(self.accelerator.gather(torch.tensor([int(need)], device=self.args.device)).max())
            if not need:
                break
            more = self._prepare_inputs(self._more_prompts(size))
            draws.append(Draw(more, *self._sample_and_judge(model, more)))
        return assemble(draws, size, kind, self.processing_class.pad_token_id)

    def _more_prompts(self, size: int) -> dict[str, Any]:
        """`size` more training prompts, from this process's own seeded shuffle of the data."""
        if self._extra_order is None or len(self._extra_order) < size:
            n = len(self.train_dataset)
            if self._extra_generator is None:
                seed = self.args.seed + 7919 * (1 + self.args.process_index)
                self._extra_generator = torch.Generator().manual_seed(seed)
            order = self._extra_order.tolist() if self._extra_order is not None else []
            while len(order) < size:
                order += torch.randperm(n, generator=self._extra_generator).tolist()
            self._extra_order = torch.tensor(order)
        picked, self._extra_order = self._extra_order[:size].tolist(), self._extra_order[size:]
        return self.data_collator([self.train_dataset[i] for i in picked])

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
            self._reused[micro] = (inputs["prompt_input_ids"], self._fresh(model, inputs, keep_old=True))
        drawn_for, fresh = self._reused[micro]
        if not torch.equal(drawn_for, inputs["prompt_input_ids"]):
            raise RuntimeError(
                "online.updates_per_batch: the repeated micro-batch holds other prompts than its samples"
            )
        return fresh

    # ------------------------------------------------------------------ train and eval

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch=None
    ) -> Tensor | tuple[Tensor, LossOutput]:
        batch, samples, feedback, old, stats = self._step_samples(model, inputs)
        correction = self._engine_correction(samples)
        logps = self.batch_logps(
            model,
            batch,
            old_policy=old,
            preferences=feedback.preferences,
            truncated=~samples.finished.to(batch["mask"].device),
            completion_budget=self.online.max_new_tokens,
            engine_correction=correction,
        )
        output = self.loss_fn(logps)
        if correction is not None:
            stats = {**stats, **self._engine_stats(logps, samples, batch)}
        output.loss = guard_nonfinite(self, model, output.loss, logps)
        output.metrics.update(self._sample_metrics(None if logps.reference is None else logps.logratios(), samples))
        output.metrics["online/preference"] = feedback.scores("preferences").mean().detach()
        output.metrics.update(self._reward_metrics(feedback, output))
        for name, value in stats.items():  # per micro-batch
            output.metrics[name], output.counts[name] = value.to(output.loss.device), torch.ones(())
        self._metrics["train"].add(output, batch["mask"])
        return (output.loss, output) if return_outputs else output.loss

    def _engine_correction(self, samples: GroupSamples) -> EngineCorrection | None:
        """An external engine's log-probs and the recipe's correction (None `mode`: measured
        only, for a loss that cannot take it or with the correction off)."""
        if self.engine.uses_live_model or samples.logprobs is None:
            return None
        online = self.online
        on = online.vllm_importance_sampling_correction
        if on is None:  # default: on wherever the loss can take it
            on = "engine_ratio" in self.loss_fn.reads
        return EngineCorrection(
            samples.logprobs,
            samples.from_policy,
            online.vllm_importance_sampling_mode if on else None,
            online.vllm_importance_sampling_clip_min,
            online.vllm_importance_sampling_clip_max,
        )

    def _engine_stats(self, logps, samples: GroupSamples, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """The engine's mismatch with the trainer on the policy's own samples:
        |log pi_trainer - log pi_engine| per token (TRL's sampling_logp_difference), or per
        completion for a loss without token log-probs; the last sync's time."""
        mine = samples.from_policy.to(batch["mask"].device)
        real = batch["mask"][:, mine]
        if logps.tokens is not None:
            mask = batch["completion_attention_mask"][:, mine].bool() & real[:, :, None]
            # Against the sampling policy's log-probs (kept when the samples are reused for more updates).
            sampling = logps.tokens.policy if logps.tokens.old_policy is None else logps.tokens.old_policy
            diff = logp_mismatch(sampling[:, mine], samples.logprobs[:, mine], mask)
            stats = {
                "online/engine/logp_difference_mean": diff["mean"],
                "online/engine/logp_difference_max": diff["max"],
            }
        else:
            engine = (samples.logprobs[:, mine] * batch["completion_attention_mask"][:, mine]).sum(-1)
            diff = logp_mismatch(logps.policy[:, mine], engine, real)
            stats = {"online/engine/sequence_logp_difference_mean": diff["mean"]}
        for name, value in self._engine_metrics.items():
            stats[name] = torch.tensor(value)
        self._engine_metrics = {}
        return {name: value.detach().float().cpu() for name, value in stats.items()}

    def close_engine(self) -> None:
        """Free the generation engine (an in-process vLLM's memory, a server's connection)."""
        self.engine.close()

    def _before_generation_eval(self) -> None:
        if self.generation_eval is not None:
            self.generation_eval.engine = self.engine
        self._sync_engine(self.model_wrapped)

    @staticmethod
    def _reward_metrics(feedback: Feedback, output: LossOutput) -> dict[str, Tensor]:
        """`online/reward`, the mean reward of the scored completions (with several reward
        functions, their weighted sum, None skipped, as TRL's `reward`), and each
        function's mean over the completions it scored, `online/rewards/<name>`."""
        if feedback.rewards is None:
            return {}
        if feedback.per_function is None or feedback.weights is None:
            scored = feedback.rewards if feedback.scorable is None else feedback.rewards[feedback.scorable]
            return {"online/reward": scored.mean().detach()}
        per_function = feedback.per_function.detach()
        metrics = {}
        total = aggregate_rewards(per_function, feedback.weights, "sum_then_normalize")
        for name, values in [("online/reward", total)] + [
            (f"online/rewards/{n}", per_function[..., f]) for f, n in enumerate(feedback.names)
        ]:
            scored = ~values.isnan()
            # Weighted by the completions scored, so the logged mean is over completions, not micro-batches.
            metrics[name] = values.nan_to_num(0.0).sum() / scored.sum().clamp(min=1)
            output.counts[name] = scored.sum()
        return metrics

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
        self._sync_engine(model)
        with self._generation_model(model) as unwrapped:
            samples = self._draw(unwrapped, inputs, slots, self.eval_settings)
        metrics, logratios = {}, None
        if self.reference.live:
            feedback = self._judge(inputs, samples)
            batch = self._group_batch(inputs, samples, feedback, "preferences")
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
