"""The generation-engine seam: who draws the online trainer's K samples per prompt.

An engine takes a batch of right-padded prompts and the slots (one `Sampler` per sample
of a prompt) and returns `GroupSamples` with `logprobs`: the log-prob of each sampled
token under the distribution of the model that drew it, before temperature and top-k /
top-p (the quantity the trainer computes, so the two can be compared and the engine's
mismatch corrected by importance sampling).

`native` runs the trainer's own model (`alignment.online.sampler`); an external engine
(vLLM) holds its own copy of the weights, and the trainer sends it the policy's new
weights (`load_weights`) before it generates after an optimizer step."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from alignment.online.sampler import GenerationSettings, GroupSamples, ModelStream, Sampler
from alignment.schema.values import ConfigError

# The names under which an engine that samples from the reference too is sent its weights.
REFERENCE_PREFIX = "reference."


class GenerationEngine(ABC):
    """Draws completions for the online trainer and the evaluation by generation."""

    name: str = "engine"
    # Generation runs the trainer's live model (passed as `policy` / `reference` streams);
    # False: the engine holds weights of its own and must be sent the policy's.
    uses_live_model: bool = False
    # One engine serves every training process (a server): the main process sends weights.
    shared_by_processes: bool = False
    # It samples from the reference too (the mixture model): the reference's weights are
    # sent once, named `reference.<name>`, before the policy's first.
    needs_reference_weights: bool = False

    @abstractmethod
    def generate(
        self,
        slots: list[Sampler],
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        settings: GenerationSettings,
        policy: ModelStream | None = None,
        reference: ModelStream | None = None,
    ) -> GroupSamples:
        """One completion per prompt and slot, [B, K, T], with `logprobs` filled."""

    def serves(self, sampler: Sampler) -> bool:
        """Whether this engine can draw from `sampler` (the policy, the reference, a mixture)."""
        return True

    def check_samplers(self, samplers: Iterable[Sampler]) -> None:
        """Raise ValueError naming a sampler this engine cannot draw from."""
        for sampler in samplers:
            if not self.serves(sampler):
                raise ConfigError(
                    f"online.engine {self.name} samples from the policy only; the {sampler.name} sampler "
                    "needs the reference's weights in the engine"
                )

    def load_weights(self, weights: Iterable[tuple[str, Tensor]]) -> dict[str, float]:
        """Replace the policy's weights (names as in the transformers model's
        `named_parameters`); returns metrics such as the time it took."""
        return {}

    def close(self) -> None:
        """Free the engine (its memory, processes and connections)."""
        return None


@dataclass
class Completion:
    """One sampled completion as an engine returns it: its token ids (EOS included when
    it ended), each token's log-prob, and whether it ended with EOS."""

    token_ids: list[int]
    logprobs: list[float]
    finished: bool


def group_samples(
    rows: list[list[Completion]], slots: list[Sampler], pad_token_id: int, device: torch.device | str = "cpu"
) -> GroupSamples:
    """`rows[b][k]`, prompt b's sample for slot k, as right-padded [B, K, T] tensors."""
    width = max(1, max(len(c.token_ids) for row in rows for c in row))
    batch, k = len(rows), len(slots)
    ids = torch.full((batch, k, width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((batch, k, width), dtype=torch.long)
    logprobs = torch.zeros((batch, k, width), dtype=torch.float32)
    finished = torch.zeros((batch, k), dtype=torch.bool)
    for b, row in enumerate(rows):
        if len(row) != k:
            raise ValueError(f"the engine returned {len(row)} completions for prompt {b}, expected {k}")
        for j, c in enumerate(row):
            n = len(c.token_ids)
            ids[b, j, :n] = torch.tensor(c.token_ids, dtype=torch.long)
            mask[b, j, :n] = 1
            logprobs[b, j, :n] = torch.tensor(c.logprobs, dtype=torch.float32)
            finished[b, j] = c.finished
    from_policy = torch.tensor([s.from_policy for s in slots], dtype=torch.bool)
    return GroupSamples(
        completion_ids=ids.to(device),
        completion_mask=mask.to(device),
        finished=finished.to(device),
        from_policy=from_policy.to(device),
        logprobs=logprobs.to(device),
    )


def prompt_token_lists(prompt_ids: Tensor, prompt_mask: Tensor) -> list[list[int]]:
    """Each prompt's real tokens (the padding, left or right, dropped)."""
    return [ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids.cpu(), prompt_mask.cpu(), strict=True)]


def _padded(t: Tensor, width: int) -> Tensor:
    return torch.nn.functional.pad(t, (0, width - t.size(-1)))


def merge_slots(slots: list[Sampler], first: list[bool], a: GroupSamples, b: GroupSamples) -> GroupSamples:
    """Two engines' samples for complementary slots, in slot order: slot k comes from `a`
    where `first[k]`, else from `b` (each holds its own slots in order)."""
    width = max(a.completion_ids.size(-1), b.completion_ids.size(-1))
    order, seen = [], {True: 0, False: 0}
    for from_a in first:
        order.append((a if from_a else b, seen[from_a]))
        seen[from_a] += 1

    def stacked(name: str) -> Tensor | None:
        parts = [getattr(source, name) for source, _ in order]
        if any(part is None for part in parts):
            return None
        return torch.stack([_padded(part[:, k], width) for part, (_, k) in zip(parts, order, strict=True)], 1)

    finished = torch.stack([source.finished[:, k] for source, k in order], 1)
    from_policy = torch.tensor([s.from_policy for s in slots], dtype=torch.bool, device=finished.device)
    return GroupSamples(
        completion_ids=stacked("completion_ids"),
        completion_mask=stacked("completion_mask"),
        finished=finished,
        from_policy=from_policy,
        logprobs=stacked("logprobs"),
    )


def select_rows(samples: GroupSamples, rows: slice) -> GroupSamples:
    """The samples of prompts `rows`, trimmed to their longest completion."""
    mask = samples.completion_mask[rows]
    width = max(1, int(mask.sum(-1).max())) if mask.numel() else 1
    return GroupSamples(
        completion_ids=samples.completion_ids[rows, :, :width],
        completion_mask=mask[:, :, :width],
        finished=samples.finished[rows],
        from_policy=samples.from_policy,
        logprobs=None if samples.logprobs is None else samples.logprobs[rows, :, :width],
    )


def vllm_available() -> bool:
    """Whether vLLM is installed (a lookup, not an import: importing vLLM takes seconds).
    A submodule is looked up: a bare `vllm` may be a namespace of same-named folders."""
    import importlib.util

    try:
        return importlib.util.find_spec("vllm.platforms") is not None
    except ModuleNotFoundError:
        return False
