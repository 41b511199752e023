"""Offline preference training on `transformers.Trainer`: batch -> log-probs -> loss."""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, Trainer, TrainerCallback
from trl.models.utils import unwrap_model_for_generation

from alignment.data import PreferenceCollator
from alignment.data.in_memory import data_settings, needs_tokenizing, tokenized_preferences
from alignment.logprobs import PolicyForward, policy_forward
from alignment.losses import LossOutput, PreferenceLoss, SequenceLogps
from alignment.online.evaluation import GenerationEvaluation
from alignment.reference import FrozenModel, NoReference, PolicyBase, Reference
from alignment.reference.updates import ReferenceUpdate
from alignment.schema import DataConfig, ReferenceUpdateConfig
from alignment.trainers.arguments import AlignmentTrainingArguments
from alignment.trainers.checkpoints import mark_complete
from alignment.trainers.faults import guard_nonfinite
from alignment.trainers.inputs import loss_inputs
from alignment.trainers.metrics import MetricAccumulator
from alignment.trainers.output_dir import checkpoint_parts, disk_full_reported

LOSS_STATE = "loss_state.json"  # a stateful loss's state in each checkpoint


class LossStepEnd(TrainerCallback):
    """Tells the loss an optimizer step ended (its `end_step`), with the sum over processes."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        accelerator = self.trainer.accelerator
        summed = (lambda t: t) if accelerator.num_processes == 1 else (lambda t: accelerator.reduce(t, "sum"))
        self.trainer.loss_fn.end_step(summed)
        return control

    def resume(self, checkpoint: str | None) -> None:
        """The loss's state from `checkpoint`, when it saved one."""
        path = None if checkpoint is None else os.path.join(checkpoint, LOSS_STATE)
        if path is not None and os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                self.trainer.loss_fn.load_state_dict(json.load(f))


def default_reference(model: nn.Module, reference_update: ReferenceUpdateConfig | None = None) -> Reference:
    """The reference a trainer given none uses (a recipe's `reference: auto`, and TRL's
    default): the policy with its adapters disabled for a PEFT model (no second copy),
    else a frozen copy of the model's current weights."""
    if hasattr(model, "disable_adapter"):
        return PolicyBase(is_initial=reference_update is None)
    return FrozenModel(copy.deepcopy(model))


class PreferenceTrainer(Trainer):
    """Trains a policy with any registered loss. The loop, accumulation, distributed
    setup, checkpoints, resume and logging are the Trainer's own; this class only
    computes the loss and reports the shared metric vocabulary (`rewards/*`,
    `reward_accuracy`, the loss's parts), exactly averaged over processes.

    `reference` is a strategy from `alignment.reference` (a frozen model, the LoRA
    policy's base, precomputed log-probs, a soup or none); `ref_model`, as in TRL, is the
    shorthand for a frozen copy. Given neither, a loss that needs a reference gets what a
    recipe's `reference: auto` gives, as TRL does: the policy with its adapters disabled
    for a PEFT model, else a frozen copy of `model` as it is now. A reference-free loss
    never runs a reference forward; offline it drops the reference, online it keeps a
    live one to sample the initial policy for the evaluation's win rate.

    `train_dataset` and `eval_dataset` are tokenized lists (`alignment.data.build_datasets`)
    or, as in TRL, a `datasets.Dataset` of raw rows in any layout the recipe's data takes
    (prompt/chosen/rejected, chat messages, ranked lists, unpaired rows for KTO, ...): those
    are adapted and tokenized here exactly as a recipe's one source would be
    (`alignment.data.in_memory`), with `data_config`'s settings (a `DataConfig` or a mapping
    of the recipe's `data:` keys: `max_length`, `max_prompt_length`, `chat_template`,
    `bad_rows`, `seed`, a source's `layout` and `columns`; the defaults when None). A
    tokenizer without a pad token pads with EOS, as the recipe's does."""

    samples_online = False  # the batches are the data's lists (OnlineTrainer: prompts, sampled each step)

    def __init__(
        self,
        model: PreTrainedModel | nn.Module,
        args: AlignmentTrainingArguments,
        loss_fn: PreferenceLoss,
        reference: Reference | None = None,
        ref_model: PreTrainedModel | nn.Module | None = None,
        processing_class=None,
        data_collator=None,
        model_card: Callable[[Mapping[str, float]], str] | None = None,
        reference_update: ReferenceUpdateConfig | None = None,
        data_config: DataConfig | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if reference is not None and ref_model is not None:
            raise ValueError("give reference (a strategy) or ref_model (a frozen copy), not both")
        if processing_class is not None and getattr(processing_class, "pad_token_id", 0) is None:
            if processing_class.eos_token_id is None:
                raise ValueError("the tokenizer (processing_class) has neither a pad nor an EOS token")
            processing_class.pad_token = processing_class.eos_token  # as alignment.models.load_tokenizer
        self._tokenize_raw_rows(kwargs, loss_fn, processing_class, data_config)
        if reference is None and ref_model is None and self._needs_reference(loss_fn):
            reference = default_reference(model, reference_update)
        if reference is None:
            reference = NoReference() if ref_model is None else FrozenModel(ref_model)
        if not loss_fn.needs_reference and not self._keeps_unneeded_reference(reference):
            reference = NoReference()
        elif loss_fn.needs_reference and not reference.gives_logps:
            raise ValueError(f"loss {loss_fn.name!r} needs a reference: pass ref_model, or reference=PolicyBase()")
        if data_collator is None:
            data_collator = PreferenceCollator(pad_token_id=processing_class.pad_token_id)
        super().__init__(
            model=model, args=args, data_collator=data_collator, processing_class=processing_class, **kwargs
        )
        self.loss_fn = loss_fn
        # The loss is a mean over the batch and never sees num_items_in_batch, so the
        # Trainer must divide it by the accumulation steps itself.
        self.model_accepts_loss_kwargs = False
        self.reference = reference
        reference.attach(self.accelerator, self.accelerator.unwrap_model)
        if reference_update is not None:
            if not reference.updatable:
                raise ValueError(f"reference.update: a {reference.type!r} reference cannot follow the policy")
            unwrap = self.accelerator.unwrap_model
            self.add_callback(
                ReferenceUpdate(
                    unwrap(reference.model), unwrap(self.model), reference_update.every, reference_update.alpha
                )
            )
        self.add_callback(LossStepEnd(self))
        self._metrics = {"train": MetricAccumulator(), "eval": MetricAccumulator()}
        self.nonfinite_skipped = 0
        self.model_card = model_card
        self.final_metrics: dict[str, float] = {}  # what the model card reports
        self.generation_eval: GenerationEvaluation | None = None  # the recipe's `evaluation:` section
        self._generation_metrics: dict[str, float] = {}

    def _needs_reference(self, loss_fn: PreferenceLoss) -> bool:
        """Whether a trainer given no reference builds one: when the loss reads its log-probs."""
        return loss_fn.needs_reference

    def _tokenize_raw_rows(
        self,
        given: dict[str, Any],
        loss_fn: PreferenceLoss,
        tokenizer: Any,
        data_config: DataConfig | Mapping[str, Any] | None,
    ) -> None:
        """Raw rows in `train_dataset` / `eval_dataset` (a dict of eval sets included)
        replaced, in `given` (the Trainer's keyword arguments), by their tokenized lists."""
        raw = {
            key: value
            for key, value in given.items()
            if key in ("train_dataset", "eval_dataset")
            and (needs_tokenizing(value) or (isinstance(value, Mapping) and any(map(needs_tokenizing, value.values()))))
        }
        if not raw:
            return
        if tokenizer is None:
            raise ValueError(
                f"{next(iter(raw))} holds raw rows: pass the tokenizer (processing_class) to tokenize them"
            )
        cfg = data_settings(data_config)
        for key, value in raw.items():
            split = "train" if key == "train_dataset" else "test"
            if isinstance(value, Mapping):
                given[key] = {
                    name: self._tokenized(part, cfg, tokenizer, split, f"{key}[{name!r}]", loss_fn)
                    if needs_tokenizing(part)
                    else part
                    for name, part in value.items()
                }
            else:
                given[key] = self._tokenized(value, cfg, tokenizer, split, key, loss_fn)

    def _tokenized(self, rows: Any, cfg: DataConfig, tokenizer: Any, split: str, name: str, loss_fn: PreferenceLoss):
        """Raw rows -> the tokenized lists a recipe's source of `split` gives (with the
        unpaired rows the loss takes, as `alignment.run.build_data`)."""
        unpaired = loss_fn.model_head == "policy" and loss_fn.accepts_unpaired
        return tokenized_preferences(rows, cfg, tokenizer, split, name, require_order=True, unpaired=unpaired)

    def create_model_card(self, **kwargs: Any) -> None:
        """Our card (`alignment.tools.model_card`: base model, data, loss, final metrics), which
        `push_to_hub` uploads, instead of transformers' generic one; without a card
        renderer, transformers' own."""
        if self.model_card is None:
            super().create_model_card(**kwargs)
            return
        if self.is_world_process_zero():
            with open(os.path.join(self.args.output_dir, "README.md"), "w", encoding="utf-8") as f:
                f.write(self.model_card(self.final_metrics))

    @contextlib.contextmanager
    def _generation_model(self, model: nn.Module):
        """The bare policy in eval mode for sampling (ZeRO-3 parameters gathered, gradient
        checkpointing off), switched back to its previous mode afterwards."""
        with unwrap_model_for_generation(
            model, self.accelerator, gradient_checkpointing_kwargs=self.args.checkpointing_kwargs
        ) as unwrapped:
            was_training = unwrapped.training
            unwrapped.eval()
            try:
                yield unwrapped
            finally:
                unwrapped.train(was_training)

    def start_generation_eval(self, resume: str | None) -> None:
        """The initial policy's answers for `evaluation:`, before step 1: generated now, or
        on resume reloaded from the output directory (the model here is already the
        checkpoint's once training resumes, not the initial policy)."""
        if self.generation_eval is None:
            return
        if resume is not None and self.generation_eval.resume(self.args.output_dir):
            return
        self._before_generation_eval()
        with self._generation_model(self.model_wrapped) as unwrapped:
            self.generation_eval.start(unwrapped, self.args.output_dir)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Trainer's evaluation, plus the `evaluation:` generation metrics on the held-out prompts."""
        if self.generation_eval is not None and eval_dataset is None:
            self._before_generation_eval()
            with self._generation_model(self.model_wrapped) as unwrapped:
                self._generation_metrics = self.generation_eval.evaluate(unwrapped, self.args.output_dir)
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    def close_engine(self) -> None:
        """Free the generation engine: offline there is none."""
        return None

    def _before_generation_eval(self) -> None:
        """Before the evaluation by generation: nothing offline (the online trainer
        brings its engine up to date here)."""
        return None

    @staticmethod
    def _keeps_unneeded_reference(reference: Reference) -> bool:
        return False

    def reference_logps(self, model: nn.Module, inputs: Mapping[str, Tensor], per_token: bool = False) -> Tensor | None:
        """The reference's log-probs per completion (or per token), or None when the loss
        does not read them."""
        if not self.loss_fn.needs_reference:
            return None
        return self.reference.logps(model, inputs, self._token_logps if per_token else self._logps)

    def prepare_reference(self) -> None:
        """The reference's work before step 1: for `precompute`, one pass over the train
        and eval data writing `reference_logps` (cached with the dataset), after which
        the reference is freed. Other strategies have nothing to do."""
        splits = {"train": self.train_dataset, "eval": self.eval_dataset}
        filled = self.reference.before_training(splits, self.model, self._logps, self.data_collator, self.args.device)
        self.train_dataset = filled.get("train", self.train_dataset)
        self.eval_dataset = filled.get("eval", self.eval_dataset)

    def _forward(self, model: nn.Module, inputs: Mapping[str, Tensor], **options: bool) -> PolicyForward:
        return policy_forward(model, inputs, self.args.forward, self.args.logprob_chunk_size or None, **options)

    def _logps(self, model: nn.Module, inputs: Mapping[str, Tensor]) -> Tensor:
        return self._forward(model, inputs).logps

    def _token_logps(self, model: nn.Module, inputs: Mapping[str, Tensor]) -> Tensor:
        return self._forward(model, inputs, per_token=True).logps

    def batch_logps(
        self, model: nn.Module, inputs: Mapping[str, Tensor], old_policy: Tensor | None = None, **given: Any
    ) -> SequenceLogps:
        """The loss's input for a collated batch: the policy's log-probs (with grad) and
        exactly the inputs the loss reads, each from its provider (trainers/inputs.py).
        `old_policy` is the sampling policy's token log-probs; `given` what the caller
        provides itself (online: `preferences`)."""
        return loss_inputs(self, self.loss_fn, model, inputs, self._forward, self.reference_logps, old_policy, **given)

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Tensor], return_outputs: bool = False, num_items_in_batch=None
    ) -> Tensor | tuple[Tensor, LossOutput]:
        logps = self.batch_logps(model, inputs)
        output = self.loss_fn(logps)
        if model.training:
            output.loss = guard_nonfinite(self, model, output.loss, logps)
        self._metrics["train" if model.training else "eval"].add(output, inputs["mask"])
        return (output.loss, output) if return_outputs else output.loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def _save_checkpoint(self, model: nn.Module, trial=None) -> None:
        name = f"checkpoint-{self.state.global_step}"
        directory = os.path.join(self._get_output_dir(trial=trial), name)
        parts = lambda: checkpoint_parts(self.accelerator.unwrap_model(self.model), self.args)  # noqa: E731
        with disk_full_reported(name, directory, self.args, parts):
            super()._save_checkpoint(model, trial)
            state = self.loss_fn.state_dict()  # an adaptive coefficient, resumed with the checkpoint
            if state and self.args.should_save:
                with open(os.path.join(directory, LOSS_STATE), "w", encoding="utf-8") as f:
                    json.dump(state, f)
            # Every process has written its part (optimizer shards, RNG state) only after this barrier.
            self.accelerator.wait_for_everyone()
            # Shared: one marker in output_dir, by the process that saves (node 0's first, or each
            # node's first with save_on_each_node); every node reads it on resume (trainers/nodes.py).
            if self.args.should_save:
                mark_complete(directory, self.state.global_step)
        self.accelerator.wait_for_everyone()

    def _sum_across_processes(self, packed: Tensor) -> Tensor:
        if self.accelerator.num_processes == 1:
            return packed
        return self.accelerator.reduce(packed.to(self.accelerator.device), "sum").cpu()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Trainer calls log() on every process, so the all-reduce below is safe.
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        metrics = self._metrics[mode].compute(self._sum_across_processes)
        self._metrics[mode].reset()
        prefix = "eval_" if mode == "eval" else ""
        logs.update({f"{prefix}{name}": value for name, value in metrics.items()})
        if mode == "eval":
            logs.update({f"eval_{name}": value for name, value in self._generation_metrics.items()})
            self._generation_metrics = {}
        if mode == "train" and self.nonfinite_skipped:
            logs["nonfinite_skipped"] = self.nonfinite_skipped
        super().log(logs, start_time)
