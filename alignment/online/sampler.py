"""Token-by-token sampling from the policy, the reference, or their geometric mixture.

Nash-MD and IPO-MD (Munos et al. 2023; Calandriello et al. 2024) sample from

    pi_m(y_t | x, y_<t)  ∝  pi(y_t | x, y_<t)^(1 - m) * mu(y_t | x, y_<t)^m
                          = softmax((1 - m) * policy_logits + m * reference_logits)

(the log-softmax normalisers are per-row constants, so mixing logits and mixing
log-probs give the same distribution). The two models advance in lockstep, each with
its own KV cache, so every step costs one new token per model: nothing is recomputed.

`ModelStream` wraps one model with its cache. The reference can be a separate model or
the PEFT policy inside `disable_adapter()`: each stream enters its own context around
each forward, so the two caches never mix even when the weights are shared."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class GenerationSettings:
    """Sampling knobs. `top_k` 0 and `top_p` 1 turn those filters off; `eos_token_ids`
    end a completion (the EOS token is kept as its last token)."""

    max_new_tokens: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


@dataclass
class Samples:
    """Completions [B, T], right-padded: `completion_mask` marks generated tokens (EOS
    included), `finished` the rows that ended with EOS within `max_new_tokens`.
    `distributions` holds the per-step sampling distributions [B, V] when recorded;
    `logprobs` [B, T] each sampled token's log-prob under the mixture before temperature
    and filters (0 past the end)."""

    completion_ids: Tensor
    completion_mask: Tensor
    finished: Tensor
    distributions: list[Tensor] = field(default_factory=list)
    logprobs: Tensor | None = None

    @property
    def lengths(self) -> Tensor:
        return self.completion_mask.sum(-1)


class ModelStream:
    """One causal LM advancing over a batch with its own KV cache. `context` is entered
    around every forward (e.g. `peft_model.disable_adapter` for an adapter reference)."""

    def __init__(self, model: nn.Module, context: Callable[[], contextlib.AbstractContextManager] | None = None):
        self.model = model
        self.context = context or contextlib.nullcontext
        self.cache: Any = None
        # Only the last position's logits are needed: the LM head skips the prompt's others.
        self.last_logits_only = _takes(model, "logits_to_keep")

    def _forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor) -> Tensor:
        extra = {"logits_to_keep": 1} if self.last_logits_only else {}
        with self.context():
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=self.cache,
                use_cache=True,
                **extra,
            )
        self.cache = out.past_key_values
        return out.logits[:, -1].float()

    def start(self, input_ids: Tensor, attention_mask: Tensor, repeats: int = 1) -> Tensor:
        """Run the (left-padded) prompts; return the next-token logits [B * repeats, V],
        each prompt's `repeats` times in a row. A prompt is run once and its KV cache
        repeated, rather than run once per sample."""
        self.cache = None
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits = self._forward(input_ids, attention_mask, position_ids)
        if repeats > 1:
            if hasattr(self.cache, "batch_repeat_interleave"):
                self.cache.batch_repeat_interleave(repeats)
            else:  # a cache that cannot be repeated: run each sample's prompt
                self.cache = None
                repeated = (t.repeat_interleave(repeats, 0) for t in (input_ids, attention_mask, position_ids))
                return self._forward(*repeated)
            logits = logits.repeat_interleave(repeats, 0)
        return logits

    def step(self, tokens: Tensor, attention_mask: Tensor) -> Tensor:
        """Feed one token per row (attention_mask covers prompt + all fed tokens)."""
        position_ids = attention_mask.sum(-1, keepdim=True) - 1
        return self._forward(tokens[:, None], attention_mask, position_ids)


def mixture_logprobs(policy_logits: Tensor | None, reference_logits: Tensor | None, coef: float) -> Tensor:
    """log pi_m = log_softmax((1 - m) log pi + m log mu), m = `coef`; m = 0 is the
    policy and m = 1 the reference (the other model's logits are not needed then)."""
    if coef == 0.0:
        return torch.log_softmax(policy_logits.float(), -1)
    if coef == 1.0:
        return torch.log_softmax(reference_logits.float(), -1)
    mixed = (1 - coef) * torch.log_softmax(policy_logits.float(), -1) + coef * torch.log_softmax(
        reference_logits.float(), -1
    )
    return torch.log_softmax(mixed, -1)


def filter_logprobs(logprobs: Tensor, temperature: float, top_k: int, top_p: float) -> Tensor:
    """The sampling distribution (log-probs [B, V]) after temperature, top-k and
    nucleus filtering, renormalised. Filters keep at least the most likely token."""
    scores = logprobs / temperature
    if top_k > 0 and top_k < scores.size(-1):
        kth = scores.topk(top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        probs = sorted_scores.softmax(-1)
        # Drop a token once the tokens before it already hold top_p of the mass.
        before = probs.cumsum(-1) - probs
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return torch.log_softmax(scores, -1)


def left_pad(input_ids: Tensor, attention_mask: Tensor, pad_token_id: int) -> tuple[Tensor, Tensor]:
    """Right-padded prompts -> left-padded, so every row's next token is at the end."""
    lengths = attention_mask.sum(-1)
    width = input_ids.size(1)
    shift = (width - lengths)[:, None]
    t = torch.arange(width, device=input_ids.device)[None, :]
    source = (t - shift).clamp(min=0)
    ids = torch.where(t >= shift, input_ids.gather(1, source), pad_token_id)
    return ids, (t >= shift).long()


@torch.no_grad()
def sample(
    policy: ModelStream | None,
    reference: ModelStream | None,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    coef: float,
    settings: GenerationSettings,
    generator: torch.Generator | None = None,
    record_distributions: bool = False,
    repeats: int = 1,
) -> Samples:
    """Sample `repeats` completions per prompt (rows b * repeats + j) from the m = `coef`
    geometric mixture.

    Prompts come right-padded (the collator's layout). Only the streams the mixture
    needs are run: the policy for m < 1, the reference for m > 0."""
    streams: dict[str, ModelStream] = {}
    if coef < 1.0:
        streams["policy"] = _required(policy, "policy", coef)
    if coef > 0.0:
        streams["reference"] = _required(reference, "reference", coef)
    ids, mask = left_pad(prompt_ids, prompt_mask, settings.pad_token_id)
    logits = {name: stream.start(ids, mask, repeats) for name, stream in streams.items()}
    ids, mask = ids.repeat_interleave(repeats, 0), mask.repeat_interleave(repeats, 0)

    batch = ids.size(0)
    eos = torch.tensor(settings.eos_token_ids, device=ids.device, dtype=torch.long)
    finished = torch.zeros(batch, dtype=torch.bool, device=ids.device)
    tokens, alive, distributions, token_logprobs = [], [], [], []
    for step in range(settings.max_new_tokens):
        model_logprobs = mixture_logprobs(logits.get("policy"), logits.get("reference"), coef)
        logprobs = filter_logprobs(model_logprobs, settings.temperature, settings.top_k, settings.top_p)
        if record_distributions:
            distributions.append(logprobs.exp())
        token = torch.multinomial(logprobs.exp(), 1, generator=generator).squeeze(-1)
        is_real = ~finished
        token_logprobs.append(torch.where(is_real, model_logprobs.gather(1, token[:, None]).squeeze(1), 0.0))
        token = torch.where(is_real, token, settings.pad_token_id)
        tokens.append(token)
        alive.append(is_real)
        finished = finished | (is_real & torch.isin(token, eos))
        if bool(finished.all()) or step == settings.max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits = {name: stream.step(token, mask) for name, stream in streams.items()}

    return Samples(
        completion_ids=torch.stack(tokens, 1),
        completion_mask=torch.stack(alive, 1).long(),
        finished=finished,
        distributions=distributions,
        logprobs=torch.stack(token_logprobs, 1),
    )


def _takes(model: nn.Module, keyword: str) -> bool:
    """Whether `model`'s forward accepts `keyword` (by name, or through **kwargs, as a PEFT
    wrapper passing it on to a transformers model)."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    if keyword in parameters:
        return True
    inner = getattr(model, "get_base_model", None)
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()) and (
        inner is not None and _takes(inner(), keyword)
    )


def _required(stream: ModelStream | None, name: str, coef: float) -> ModelStream:
    if stream is None:
        raise ValueError(f"sampling with mixture coefficient {coef} needs the {name} model")
    return stream


def eos_ids(*candidates: int | Iterable[int] | None) -> tuple[int, ...]:
    """The distinct EOS ids among the tokenizer's and generation config's."""
    out: list[int] = []
    for candidate in candidates:
        if candidate is None:
            continue
        for token in [candidate] if isinstance(candidate, int) else candidate:
            if token not in out:
                out.append(int(token))
    return tuple(out)


# ----------------------------------------------------------------------------- K samples per prompt


@dataclass(frozen=True)
class Sampler:
    """Where one sample of a prompt is drawn from: the m = `coef` geometric mixture of
    the policy (m = 0) and the reference (m = 1). `from_policy` says whether the sample
    is the policy's own (the losses' policy-gradient and KL terms need to know)."""

    name: str
    coef: float
    from_policy: bool

    @property
    def needs_reference(self) -> bool:
        return self.coef > 0.0


POLICY = Sampler("policy", 0.0, True)
REFERENCE = Sampler("reference", 1.0, False)


def mixture(coef: float) -> Sampler:
    """pi_m ∝ pi^(1 - m) mu^m; m = 0 is the policy itself."""
    return POLICY if coef == 0.0 else Sampler("mixture", coef, False)


SAMPLERS = {"policy": lambda coef: POLICY, "reference": lambda coef: REFERENCE, "mixture": mixture}


def build_sampler(name: str, mixture_coef: float) -> Sampler:
    """The recipe's `online.sampler` (`policy`, `reference` or `mixture` with `mixture_coef`)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; available: {', '.join(SAMPLERS)}")
    return SAMPLERS[name](mixture_coef)


@dataclass
class GroupSamples:
    """K completions per prompt: ids and mask [B, K, T] (right-padded), `finished` [B, K],
    `from_policy` [K] (which slots the policy itself sampled) and `logprobs` [B, K, T],
    each token's log-prob under the model that drew it, before temperature and filters
    (the engine's, compared with the trainer's for importance sampling; 0 past the end)."""

    completion_ids: Tensor
    completion_mask: Tensor
    finished: Tensor
    from_policy: Tensor
    logprobs: Tensor | None = None

    @property
    def lengths(self) -> Tensor:
        return self.completion_mask.sum(-1)


def draw(
    slots: list[Sampler],
    policy: ModelStream | None,
    reference: ModelStream | None,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    settings: GenerationSettings,
    generator: torch.Generator | None = None,
) -> GroupSamples:
    """One completion per prompt for each slot (K = len(slots)). Slots with the same
    sampler are drawn together, each prompt repeated for them, in one `sample` call."""
    k = len(slots)
    groups: dict[Sampler, list[int]] = {}
    for slot, sampler in enumerate(slots):
        groups.setdefault(sampler, []).append(slot)
    parts: dict[int, tuple[Tensor, Tensor, Tensor, Tensor]] = {}
    for sampler, members in groups.items():
        n = len(members)
        drawn = sample(policy, reference, prompt_ids, prompt_mask, sampler.coef, settings, generator, repeats=n)
        for j, slot in enumerate(members):
            rows = slice(j, None, n)  # row b * n + j is prompt b's j-th sample of this sampler
            parts[slot] = (
                drawn.completion_ids[rows],
                drawn.completion_mask[rows],
                drawn.finished[rows],
                drawn.logprobs[rows],
            )
    width = max(part[0].size(1) for part in parts.values())

    def stacked(index: int) -> Tensor:
        return torch.stack(
            [nn.functional.pad(parts[slot][index], (0, width - parts[slot][index].size(1))) for slot in range(k)], 1
        )

    ids, mask, logprobs = stacked(0), stacked(1), stacked(3)
    finished = torch.stack([parts[slot][2] for slot in range(k)], 1)
    from_policy = torch.tensor([s.from_policy for s in slots], dtype=torch.bool, device=ids.device)
    return GroupSamples(
        completion_ids=ids, completion_mask=mask, finished=finished, from_policy=from_policy, logprobs=logprobs
    )
