"""Training a judge (reward model, pairwise preference model or VPL) on the preference
data, with the PreferenceTrainer's loop, metrics, checkpoints and bad-row policy: only
the model and the forward (the loss's head) differ."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from alignment.losses import SequenceLogps
from alignment.reference import NoReference
from alignment.rewards.heads import RewardHead, VPLHead
from alignment.rewards.judge_file import write_judge_file
from alignment.trainers.preference import PreferenceTrainer

logger = logging.getLogger(__name__)
MAX_USERS_LOGGED = 16  # per-user VPL accuracies are logged for at most this many users


class RewardModelTrainer(PreferenceTrainer):
    """A `PreferenceTrainer` whose batch goes through a judge's head instead of the
    policy's log-probs. `reward_accuracy` (and its alias `accuracy`) on the evaluation
    split is the held-out pair accuracy. The saved model carries `alignment_judge.json`,
    so it loads as a judge. For VPL the evaluation adds the accuracy with 0, 1, 2, 4, ...
    N context pairs (`accuracy_context_<n>`) and per user (`accuracy_user_<id>`)."""

    def __init__(self, *args: Any, head: RewardHead, users: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, reference=NoReference(), data_collator=head.collator(), **kwargs)
        self.head = head
        self.users = users or []

    def batch_logps(
        self, model: nn.Module, inputs: Mapping[str, Tensor], old_policy: Tensor | None = None, **extra: Any
    ) -> SequenceLogps:
        return self.head.logps(model, inputs, self.state.global_step)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:  # beside the weights, by the process that saved them (trainers/nodes.py)
            model = self.accelerator.unwrap_model(self.model)
            if hasattr(model, "save_configs"):
                model.save_configs(output_dir)
            write_judge_file(output_dir, self.head.kind, **self.head.judge_details())

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        if isinstance(self.head, VPLHead) and eval_dataset is None and self.eval_dataset is not None:
            # Passed to `log` with the evaluation's own metrics, as the generation metrics are.
            self._generation_metrics = self.vpl_accuracies()
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    @torch.no_grad()
    def vpl_accuracies(self) -> dict[str, float]:
        """Held-out pair accuracy (a tie counts 1/2) by number of context pairs, and per user at N."""
        n = self.head.loss.context_pairs
        sizes = [0, *sorted({min(2**i, n) for i in range(n.bit_length() + 1)})]
        users = len(self.users)
        # Sums of [right, pairs] per context size, then per user at N.
        totals = torch.zeros(len(sizes) + users, 2, dtype=torch.float64)
        model = self.model_wrapped
        was_training = model.training
        model.eval()
        try:
            for inputs in self.get_eval_dataloader():
                inputs = self._prepare_inputs(inputs)
                for k, size in enumerate(sizes):
                    logps = self.head.logps(model, inputs, self.state.global_step, context_size=size)
                    right = _right(logps).cpu()
                    totals[k] += torch.stack([right.sum(), torch.tensor(float(len(right)))]).to(torch.float64)
                    if size == n:
                        users_of = inputs["user_index"].cpu()
                        totals[len(sizes) :, 0].index_add_(0, users_of, right.to(torch.float64))
                        totals[len(sizes) :, 1].index_add_(0, users_of, torch.ones_like(right, dtype=torch.float64))
        finally:
            model.train(was_training)
        totals = self._sum_across_processes(totals.flatten()).reshape(-1, 2)
        accuracy = (totals[:, 0] / totals[:, 1].clamp(min=1)).tolist()
        metrics = {f"accuracy_context_{size}": accuracy[k] for k, size in enumerate(sizes)}
        per_user = accuracy[len(sizes) :]
        if per_user:
            metrics["accuracy_worst_user"] = min(per_user)
            if users <= MAX_USERS_LOGGED:
                metrics.update(
                    {f"accuracy_user_{name}": value for name, value in zip(self.users, per_user, strict=True)}
                )
        return metrics


def _right(logps: SequenceLogps) -> Tensor:
    """Per list: 1 when the chosen item's reward is higher, 1/2 on a tie, 0 otherwise (pairs)."""
    best = logps.scores.argmax(-1, keepdim=True)
    worst = logps.scores.argmin(-1, keepdim=True)
    chosen, rejected = logps.policy.gather(-1, best)[:, 0], logps.policy.gather(-1, worst)[:, 0]
    return (chosen > rejected).float() + 0.5 * (chosen == rejected).float()
