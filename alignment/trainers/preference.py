"""Offline preference training on `transformers.Trainer`: batch -> log-probs -> loss."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, Trainer

from alignment.data import PreferenceCollator
from alignment.logprobs import sequence_logps
from alignment.losses import LossOutput, PreferenceLoss, SequenceLogps
from alignment.trainers.arguments import AlignmentTrainingArguments
from alignment.trainers.metrics import MetricAccumulator


class PreferenceTrainer(Trainer):
    """Trains a policy with any registered loss. The loop, accumulation, distributed
    setup, checkpoints, resume and logging are the Trainer's own; this class only
    computes the loss and reports the shared metric vocabulary (`rewards/*`,
    `reward_accuracy`, the loss's parts), exactly averaged over processes."""

    def __init__(
        self,
        model: PreTrainedModel | nn.Module,
        args: AlignmentTrainingArguments,
        loss_fn: PreferenceLoss,
        ref_model: PreTrainedModel | nn.Module | None = None,
        processing_class=None,
        data_collator=None,
        **kwargs: Any,
    ) -> None:
        if loss_fn.needs_reference and ref_model is None:
            raise ValueError(f"loss {loss_fn.name!r} needs a reference model (reference: model)")
        if data_collator is None:
            data_collator = PreferenceCollator(pad_token_id=processing_class.pad_token_id)
        super().__init__(
            model=model, args=args, data_collator=data_collator, processing_class=processing_class, **kwargs
        )
        self.loss_fn = loss_fn
        # The loss is a mean over the batch and never sees num_items_in_batch, so the
        # Trainer must divide it by the accumulation steps itself.
        self.model_accepts_loss_kwargs = False
        self.ref_model = None
        if ref_model is not None and loss_fn.needs_reference:
            self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
        self._metrics = {"train": MetricAccumulator(), "eval": MetricAccumulator()}

    def reference_logps(self, inputs: dict[str, Tensor]) -> Tensor | None:
        if not self.loss_fn.needs_reference:
            return None
        if "reference_logps" in inputs:
            return inputs["reference_logps"]
        with torch.no_grad():
            return sequence_logps(self.ref_model, inputs)

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Tensor], return_outputs: bool = False, num_items_in_batch=None
    ) -> Tensor | tuple[Tensor, LossOutput]:
        logps = SequenceLogps(
            policy=sequence_logps(model, inputs),
            reference=self.reference_logps(inputs),
            scores=inputs["scores"],
            mask=inputs["mask"],
            lengths=inputs["lengths"],
        )
        output = self.loss_fn(logps)
        self._metrics["train" if model.training else "eval"].add(output, inputs["mask"])
        return (output.loss, output) if return_outputs else output.loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

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
        super().log(logs, start_time)
