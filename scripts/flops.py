"""FLOPs a benchmark run actually computes, and the machine's measured matmul peak.

Counted per forward from the tensors each strategy builds, one multiply-add = 2 FLOPs:

- the transformer body: 2 * P_body per token position computed (padding and repeated
  prompts included), P_body = the weights of the attention and MLP projections;
- attention scores: 4 * layers * (heads * head_dim) * W^2 per row of width W (QK^T and
  AV over the whole row: SDPA with an explicit or position-derived mask computes every
  entry on CPU; flash-attention varlen would skip the blocks between packed sequences);
- the LM head: 2 * hidden * vocab per position whose logits are computed (ours: the
  completion tokens only; TRL: every position).

A training step is forward + backward = 3 forwards; a reference pass is 1. Gradient
checkpointing's recomputation is not counted (the work is done, but it is not progress),
so a checkpointed run's figure is a lower bound of its hardware FLOP/s."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def of(cls, model: torch.nn.Module) -> Shape:
        c = getattr(model, "config", None)
        while c is None and hasattr(model, "base_model"):  # a PEFT wrapper
            model = model.base_model
            c = getattr(model, "config", None)
        heads = c.num_attention_heads
        return cls(
            hidden=c.hidden_size,
            layers=c.num_hidden_layers,
            heads=heads,
            kv_heads=getattr(c, "num_key_value_heads", None) or heads,
            head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads,
            intermediate=c.intermediate_size,
            vocab=c.vocab_size,
        )

    @property
    def body_weights(self) -> int:
        """q, k, v, o and the gated MLP (gate, up, down) of every layer."""
        q_o = 2 * self.hidden * self.heads * self.head_dim
        k_v = 2 * self.hidden * self.kv_heads * self.head_dim
        return self.layers * (q_o + k_v + 3 * self.hidden * self.intermediate)

    def forward(self, rows: int, width: int, head_positions: int) -> int:
        """FLOPs of one forward over `rows` x `width` positions with `head_positions` logits."""
        body = 2 * self.body_weights * rows * width
        attention = 4 * self.layers * self.heads * self.head_dim * rows * width * width
        return body + attention + 2 * self.hidden * self.vocab * head_positions


def ours_forward_flops(shape: Shape, batches: Iterable[Mapping[str, torch.Tensor]], strategy: str) -> int:
    """One forward of our strategy over each collated batch, from the layout it builds."""
    from alignment.logprobs import concatenated_rows, packed_layout, shared_prompt_layout

    total = 0
    for batch in batches:
        if strategy == "baseline":
            input_ids, _, _, _ = concatenated_rows(batch)
            total += shape.forward(*input_ids.shape, head_positions=input_ids.numel())
            continue
        layout = packed_layout(batch) if strategy == "packed" else shared_prompt_layout(batch, torch.float32)
        total += shape.forward(*layout.input_ids.shape, head_positions=len(layout.targets))
    return total


def trl_forward_flops(shape: Shape, batches: Iterable[Mapping[str, torch.Tensor]]) -> int:
    """One forward of TRL's DPOTrainer over each collated batch: [2B, L] rows, logits everywhere."""
    return sum(shape.forward(*b["input_ids"].shape, head_positions=b["input_ids"].numel()) for b in batches)


def online_forward_flops(shape: Shape, positions: int, completion_tokens: int) -> int:
    """One forward of a causal LM over sampled sequences: 2 * P_body per real token
    position computed (`positions`: the prompt tokens as often as the layout computes
    them, plus the completion tokens; padding is the caller's to leave out) + 2 * hidden *
    vocab per completion token (the positions whose next-token distribution or log-prob
    is needed). Attention scores are left out: at widths under 150 tokens they are a few
    percent of the body on SmolLM2."""
    return 2 * shape.body_weights * positions + 2 * shape.hidden * shape.vocab * completion_tokens


def matmul_peak(device: str, dtype: torch.dtype, size: int = 2048, seconds: float = 3.0) -> float:
    """Measured FLOP/s of a square matmul, the best of repeated timings over ~`seconds`."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):  # warm-up: thread pools, kernels
        a @ b
    sync()
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        sync()
        best = min(best, (time.perf_counter() - start) / 4)
    return 2 * size**3 / best
