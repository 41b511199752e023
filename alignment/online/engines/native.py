"""The native engine: the batched sampler over the trainer's own transformers model
(`alignment.online.sampler`). No extra dependency; the default."""

from __future__ import annotations

from torch import Tensor

from alignment.online.engines.base import GenerationEngine
from alignment.online.sampler import GenerationSettings, GroupSamples, ModelStream, Sampler, draw


class NativeEngine(GenerationEngine):
    """Samples token by token from the live policy, the reference or their geometric
    mixture; weights are the trainer's own, so nothing is synced."""

    name = "native"
    uses_live_model = True

    def generate(
        self,
        slots: list[Sampler],
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        settings: GenerationSettings,
        policy: ModelStream | None = None,
        reference: ModelStream | None = None,
    ) -> GroupSamples:
        return draw(slots, policy, reference, prompt_ids, prompt_mask, settings)
