"""The contract every registered loss keeps, checked for each name `available_losses()`
lists, so that a new loss gets every check without being listed here:

- float64 `gradcheck` with respect to every model output it reads (the policy's
  sequence or token log-probs, the reference's where the gradient flows through it, a
  preference model's pair logits, VPL's posterior);
- padding changes nothing: masked list items holding junk (or, where the loss fixes K,
  a fully masked list) and junk past the real tokens leave the loss, its metrics, their
  counts and the gradient on the real entries unchanged (rel 1e-12), and send no
  gradient at all to the padding;
- loss, metrics and gradient stay finite at log-ratio margins of +-1e4, in float32 and
  float64, at the default scale and at scale 1;
- every parameter rejects a value of the wrong kind with a `LossParameterError` that
  starts with "<loss>: <parameter> ".

Each batch is built from what the loss declares (`reads`, `num_samples`, `feedback`,
`model_head`, `accepts_unpaired`): an input it does not declare is not there. `VARIANTS`
adds the parameter settings that switch inputs on or change the math. The hand-worked
values, identities and TRL oracles stay in the family test files."""

from __future__ import annotations

import math
import types
import typing
from typing import Any, Literal, NamedTuple, get_args, get_origin

import pytest
import torch
from torch import Tensor

from alignment.losses import LossParameterError, PreferenceLoss, SequenceLogps, available_losses, get_loss, loss_class
from alignment.losses.base import INPUTS, LatentPosterior, TokenLogps
from alignment.losses.grpo import GroupPolicyLoss

F32, F64 = torch.float32, torch.float64
MODEL_HEADS = {"policy", "reward", "preference", "vpl"}
FEEDBACK = {"any", "preferences", "rewards"}

# Batch shape: B lists of K items (real items per list: LIST_SIZES) and T tokens; a loss
# that fixes K (`num_samples`) gets full lists of that K, an unpaired batch K = 1.
B, K, T, LATENT_DIM = 3, 4, 4, 3
LIST_SIZES = (4, 3, 2)
EXTRA_ITEMS = 3  # junk items inserted in every list by the padding check

# Losses whose formula stops the gradient through part of its value, so that their
# gradient is not the derivative of the value in every input:
# - "log_ratio": an advantage built from stopgrad(policy - reference). The gradient check
#   holds the log-ratio fixed, moving the reference with the policy, and so checks the
#   gradient the formula defines (the stopped advantage times d log pi).
# - "reference": the reference's log-probs are constants (GRPO's k3 KL estimate); the
#   check holds the reference fixed and does not differentiate with respect to it.
STOP_GRADIENT = {"nash_md": "log_ratio", "spo": "log_ratio", "rloo": "log_ratio"} | {
    name: "reference" for name, cls in available_losses().items() if issubclass(cls, GroupPolicyLoss)
}


# Inputs the trainer may leave out although the loss reads them (rows without a `margin`
# column): each loss that reads one is also checked without it.
OPTIONAL_INPUTS = ("margins",)


class Case(NamedTuple):
    name: str
    params: dict[str, Any]
    unpaired: bool = False  # single-completion rows (K = 1), for losses that accept them
    absent: tuple[str, ...] = ()  # optional inputs left out

    def loss(self, **override: Any) -> PreferenceLoss:
        return get_loss(self.name, **{**self.params, **override})

    def build(self, loss: PreferenceLoss, **kwargs: Any) -> dict:
        raw = build(loss, unpaired=self.unpaired, **kwargs)
        left_out = {key for name in self.absent for key in PROVIDES[name]}
        return {key: value for key, value in raw.items() if key not in left_out}

    def __str__(self) -> str:
        params = ",".join(f"{key}={value}" for key, value in self.params.items())
        absent = "".join(f"[no {name}]" for name in self.absent)
        return self.name + (f"[{params}]" if params else "") + ("[unpaired]" if self.unpaired else "") + absent


# Settings that switch an input on or change the math, on top of every loss's defaults
# (and of `pairs: all` and `pairs: adjacent` for every loss that selects pairs).
VARIANTS = [
    Case("dpo", {"label_smoothing": 0.1}),
    Case("dpo", {"wpo": True}),
    Case("dpo", {"ld_alpha": 0.3}),
    Case("dpo", {"ld_alpha": 0.5, "wpo": True, "pairs": "all"}),
    Case("dpo", {"f_divergence": "forward_kl"}),
    Case("dpo", {"f_divergence": "js_divergence"}),
    Case("dpo", {"f_divergence": "alpha_divergence"}),
    Case("dpo", {"f_divergence": "alpha_divergence", "f_alpha": 1.0}),
    Case("ipo", {"length_normalize": False}),
    Case("ipo", {"f_divergence": "forward_kl"}),
    Case("rpo", {"nll": "mean"}),
    Case("nca_pair", {"ld_alpha": 0.5, "wpo": True}),
    Case("lipo", {"beta": 0.5}),
    Case("cpo", {"pairs": "all", "label_smoothing": 0.1}),
    Case("simpo", {"label_smoothing": 0.2}),
    Case("aot", {"label_smoothing": 0.1}),
    Case("kto", {"beta": 0.5, "undesirable_weight": 1.5}),
    Case("bradley_terry", {"center_rewards_coefficient": 0.01}, absent=("margins",)),
    Case("vpl", {"anneal_steps": 10}),
    Case("vpl", {"contrastive_weight": 0.5}),
    Case("spo", {"tau": 0.1}),
    Case("sppo", {"beta": 0.5}),
    Case("sppo", {"select": "all"}),
    Case("rloo", {"beta": 0.0}),
    Case("grpo", {"beta": 0.0}),
    Case("grpo", {"importance_sampling_level": "sequence", "use_bias_correction_kl": True}),
    Case("grpo", {"scale_rewards": "batch", "epsilon_high": 0.28, "delta": 1.5}),
    Case("dapo", {"mask_truncated_completions": True}),
    Case("dr_grpo", {"beta": 0.04, "scale_rewards": "group"}),
    Case("cispo", {"importance_sampling_level": "sequence"}),
    Case("sapo", {"beta": 0.04}),
    Case("luspo", {"importance_sampling_level": "token"}),
    Case("vespo", {"mask_truncated_completions": True}),
    # The high-entropy mask is a step function of the entropies (no gradient, as TRL's): checked
    # apart from the entropy bonus, whose gradient in the entropies a mask flip would blur.
    Case("grpo", {"top_entropy_quantile": 0.5}),
    Case("grpo", {"entropy_coef": 0.01}),
    Case("dapo", {"use_adaptive_entropy": True, "top_entropy_quantile": 0.2}),
    Case("nash_md", {"tau": 0.1}),
]


def all_cases() -> list[Case]:
    cases = []
    for name, cls in available_losses().items():
        cases.append(Case(name, {}))
        if "pairs" in cls.parameters():
            cases += [Case(name, {"pairs": mode}) for mode in ("all", "adjacent")]
        if cls.accepts_unpaired:
            cases.append(Case(name, {}, unpaired=True))
        cases += [Case(name, {}, absent=(key,)) for key in OPTIONAL_INPUTS if key in get_loss(name).reads]
    return cases + VARIANTS


CASES = all_cases()


# ---------------------------------------------------------------- the batch builder

# The layout of each entry of a raw batch (see `build`), which says how padding extends it.
ITEM, PAIR, TOKEN, LIST, SCALAR = "item", "pair", "token", "list", "scalar"
LAYOUT = {
    "policy": ITEM,
    "reference": ITEM,
    "scores": ITEM,
    "mask": ITEM,
    "lengths": ITEM,
    "wpo_log_weights": ITEM,
    "preferences": PAIR,
    "pair_logits": PAIR,
    "tokens_policy": TOKEN,
    "tokens_reference": TOKEN,
    "tokens_old": TOKEN,
    "tokens_mask": TOKEN,
    "margins": LIST,
    "latent_mean": LIST,
    "latent_log_var": LIST,
    "latent_z": LIST,
    "latent_users": LIST,
    "latent_step": SCALAR,
    "kl_baseline": SCALAR,
    "truncated": ITEM,
    "completion_budget": SCALAR,
    "across_processes": SCALAR,
    "entropies": TOKEN,
    "gathered": SCALAR,
    "engine_ratio": TOKEN,
}
# Which raw entries provide each input a loss may read (`INPUTS`).
PROVIDES = {
    "reference": ("reference", "tokens_reference"),
    "tokens": ("tokens_policy", "tokens_old", "tokens_mask"),
    "preferences": ("preferences",),
    "kl_baseline": ("kl_baseline",),
    "wpo_log_weights": ("wpo_log_weights",),
    "margins": ("margins",),
    "pair_logits": ("pair_logits",),
    "latent": ("latent_mean", "latent_log_var", "latent_z", "latent_users", "latent_step"),
    "truncated": ("truncated",),
    "completion_budget": ("completion_budget",),
    "across_processes": ("across_processes",),
    "entropies": ("entropies",),
    "gathered": ("gathered",),
    "engine_ratio": ("engine_ratio",),
}


def build(loss: PreferenceLoss, *, unpaired: bool = False, seed: int = 0, margin: float | None = None) -> dict:
    """A float64 batch of the inputs `loss` declares, as a flat dict of tensors (`assemble`
    makes it a SequenceLogps). The trainer's conventions: scores are the data's grades
    (ties included, every list with a preference), the judge's leave-one-out win rates
    (feedback "preferences", from a consistent preference matrix) or rewards; for a judge's
    loss `policy` holds the model's scores and there is no reference; with "tokens" the
    sequence log-probs are the sums of the token log-probs (0 past each completion's end).

    `margin`: log-ratios (model scores for a judge, pair logits for a preference model)
    of +-margin/2 for the best and worst item of the batch by score, in between for the
    rest; KTO's KL baseline is |margin|."""
    unknown = set(loss.reads) - set(PROVIDES)
    assert not unknown, f"{loss.name} reads {sorted(unknown)}: teach `build` to provide it"
    g = torch.Generator().manual_seed(seed)
    reads = loss.reads
    k = loss.num_samples or (1 if unpaired else K)
    sizes = [k] * B if (loss.num_samples or unpaired) else list(LIST_SIZES)
    mask = torch.tensor([[j < n for j in range(k)] for n in sizes])

    def uniform(*shape: int, low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(*shape, generator=g, dtype=F64)

    raw: dict[str, Any] = {"mask": mask}
    if loss.feedback == "preferences":
        upper = uniform(B, k, k, low=0.05, high=0.95)
        eye = torch.eye(k, dtype=torch.bool)
        prefs = torch.triu(upper, 1) + torch.tril(1 - upper.transpose(1, 2), -1) + 0.5 * eye
        others = mask[:, None, :] & ~eye
        scores = torch.where(others, prefs, 0.0).sum(-1) / (mask.sum(-1, keepdim=True) - 1).clamp(min=1)
        if "preferences" in reads:
            raw["preferences"] = prefs.float()
    elif loss.feedback == "rewards":
        scores = torch.randn(B, k, generator=g, dtype=F64)
    elif unpaired:
        scores = torch.tensor([[1.0], [0.0], [1.0]], dtype=F64)  # desirable, undesirable, desirable
    else:  # grades with ties; list 0 all distinct, every list with a preference
        scores = torch.randint(0, 3, (B, k), generator=g).to(F64)
        scores[0] = torch.randperm(k, generator=g).to(F64)
        scores[1:, 1] = (scores[1:, 0] + 1) % 3
    raw["scores"] = scores.float()

    real = scores[mask]
    centred = torch.where(mask, scores - real.mean(), 0.0)
    spread = (centred / (2 * centred.abs().max())) if margin is not None else None  # in [-1/2, 1/2]

    lengths = torch.randint(1, T + 1, (B, k), generator=g)
    raw["lengths"] = lengths
    if loss.model_head == "policy":
        if "tokens" in reads:
            tmask = torch.arange(T) < lengths[..., None]
            policy = torch.where(tmask, uniform(B, k, T, low=-3.0, high=-0.1), 0.0)
            if spread is not None and "reference" not in reads:
                policy = torch.where(tmask, policy + margin * spread[..., None], 0.0)
            signs = torch.where(torch.rand(B, k, T, generator=g) > 0.5, 1.0, -1.0).to(F64)
            # the sampling policy 0.1 nats away per token: ratios 0.90 and 1.105, inside GRPO's clip range
            raw.update(
                tokens_policy=policy, tokens_old=torch.where(tmask, policy + 0.1 * signs, 0.0), tokens_mask=tmask
            )
            if "reference" in reads:
                ratio = uniform(B, k, T, low=-1.0, high=1.0) if spread is None else margin * spread[..., None]
                raw["tokens_reference"] = torch.where(tmask, policy - ratio, 0.0)
        else:
            policy = uniform(B, k, low=-12.0, high=-2.0)
            if "reference" in reads:
                ratio = uniform(B, k, low=-3.0, high=3.0) if spread is None else margin * spread
                raw["reference"] = policy - ratio
            elif spread is not None:
                policy = policy + margin * spread
            raw["policy"] = policy
    else:  # a judge: the model's score of each completion
        raw["policy"] = 2 * torch.randn(B, k, generator=g, dtype=F64) if spread is None else margin * spread
    if "pair_logits" in reads:
        logits = 2 * torch.randn(B, k, k, generator=g, dtype=F64)
        raw["pair_logits"] = logits if spread is None else margin * (spread[:, :, None] - spread[:, None, :])
    if "wpo_log_weights" in reads:
        raw["wpo_log_weights"] = uniform(B, k, low=-1.0, high=0.0)
    if "kl_baseline" in reads:
        raw["kl_baseline"] = torch.tensor(0.3 if margin is None else abs(margin), dtype=F64)
    if "margins" in reads:
        raw["margins"] = uniform(B, low=0.0, high=1.0).float()
    if "truncated" in reads:  # one sample of list 0 hit the token limit
        raw["truncated"] = torch.zeros(B, k, dtype=torch.bool)
        raw["truncated"][0, 1] = True
    if "completion_budget" in reads:
        raw["completion_budget"] = T + 2
    if "across_processes" in reads:  # one process: the sum over processes is the tensor itself
        raw["across_processes"] = lambda t: t
    if "entropies" in reads:  # each token's predictive entropy, up to log(vocab)
        tmask = torch.arange(T) < lengths[..., None]
        raw["entropies"] = torch.where(tmask, uniform(B, k, T, low=0.1, high=4.0), 0.0)
    if "gathered" in reads:  # one process: every process's values are its own
        raw["gathered"] = lambda t: t
    if "engine_ratio" in reads:  # an engine's truncated token ratios (1 past each completion's end)
        tmask = torch.arange(T) < lengths[..., None]
        raw["engine_ratio"] = torch.where(tmask, uniform(B, k, T, low=0.5, high=2.0), 1.0)
    if "latent" in reads:
        raw.update(
            latent_mean=torch.randn(B, LATENT_DIM, generator=g, dtype=F64),
            latent_log_var=0.5 * torch.randn(B, LATENT_DIM, generator=g, dtype=F64),
            latent_z=torch.randn(B, LATENT_DIM, generator=g, dtype=F64),
            latent_users=torch.tensor([0, 1, 0]),
            latent_step=3,
        )
    return raw


def assemble(raw: dict) -> SequenceLogps:
    tokens, latent = None, None
    policy, reference = raw.get("policy"), raw.get("reference")
    if "tokens_policy" in raw:
        tmask = raw["tokens_mask"]
        tokens = TokenLogps(raw["tokens_policy"], raw.get("tokens_reference"), raw["tokens_old"], tmask)
        policy = torch.where(tmask, tokens.policy, 0.0).sum(-1)
        reference = None if tokens.reference is None else torch.where(tmask, tokens.reference, 0.0).sum(-1)
    if "latent_mean" in raw:
        latent = LatentPosterior(
            raw["latent_mean"], raw["latent_log_var"], raw["latent_step"], raw["latent_z"], raw["latent_users"]
        )
    return SequenceLogps(
        policy=policy,
        reference=reference,
        scores=raw["scores"],
        mask=raw["mask"],
        lengths=raw["lengths"],
        preferences=raw.get("preferences"),
        tokens=tokens,
        margins=raw.get("margins"),
        pair_logits=raw.get("pair_logits"),
        latent=latent,
        kl_baseline=raw.get("kl_baseline"),
        wpo_log_weights=raw.get("wpo_log_weights"),
        truncated=raw.get("truncated"),
        completion_budget=raw.get("completion_budget"),
        across_processes=raw.get("across_processes"),
        entropies=raw.get("entropies"),
        gathered=raw.get("gathered"),
        engine_ratio=raw.get("engine_ratio"),
    )


def cast(raw: dict, dtype: torch.dtype) -> dict:
    """The model's outputs in `dtype` (the data's scores, margins and the judge's
    preferences stay float32, as the trainer has them)."""
    keep = {"scores", "margins", "preferences"}
    return {
        key: value.to(dtype) if isinstance(value, Tensor) and value.is_floating_point() and key not in keep else value
        for key, value in raw.items()
    }


def differentiable(case: Case, raw: dict) -> list[str]:
    """The model outputs the gradient is checked against."""
    tokens = "tokens_policy" in raw
    keys = ["tokens_policy" if tokens else "policy"]
    reference = "tokens_reference" if tokens else "reference"
    if reference in raw and STOP_GRADIENT.get(case.name) is None:
        keys.append(reference)
    keys += [key for key in ("pair_logits", "latent_mean", "latent_log_var") if key in raw]
    # The entropies' gradient is the entropy bonus's; the high-entropy mask is a step function
    # of them (an entropy at the quantile flips under any perturbation), not differentiated.
    if "entropies" in raw and getattr(case.loss(), "entropy_bonus", False):
        keys.append("entropies")
    return keys


def run(loss: PreferenceLoss, raw: dict, keys: list[str]):
    """(output, gradient of the loss with respect to each of `keys`, zeros where unused)."""
    leaves = {key: raw[key].detach().clone().requires_grad_(True) for key in keys}
    out = loss(assemble({**raw, **leaves}))
    grads = torch.autograd.grad(out.loss, list(leaves.values()), allow_unused=True)
    return out, {key: torch.zeros_like(leaves[key]) if g is None else g for key, g in zip(keys, grads, strict=True)}


# ---------------------------------------------------------------- padding


class Padding(NamedTuple):
    """Where the original entries sit in the padded batch: `slots` [B, K] the item
    positions (junk items between them), or None when a fully masked list was appended."""

    slots: Tensor | None

    def spread(self, key: str, value: Any, junk: Any) -> Any:
        """`value` (original shape) placed in `junk` (padded shape)."""
        kind = LAYOUT[key]
        if kind == SCALAR:
            return value
        out = junk.clone()
        if self.slots is None:
            if kind == TOKEN:
                out[:B, :, :T] = value
            else:
                out[:B] = value
            return out
        rows = torch.arange(B)[:, None]
        if kind == ITEM:
            out[rows, self.slots] = value
        elif kind == TOKEN:
            out[rows, self.slots, :T] = value
        elif kind == PAIR:
            out[rows[:, :, None], self.slots[:, :, None], self.slots[:, None, :]] = value
        else:  # LIST: lists are not padded
            out = value.clone()
        return out

    def real(self, key: str, value: Tensor) -> Tensor:
        """The original entries of a padded tensor."""
        kind = LAYOUT[key]
        if self.slots is None:
            return value[:B, :, :T] if kind == TOKEN else value[:B]
        rows = torch.arange(B)[:, None]
        if kind == ITEM:
            return value[rows, self.slots]
        if kind == TOKEN:
            return value[rows, self.slots, :T]
        if kind == PAIR:
            return value[rows[:, :, None], self.slots[:, :, None], self.slots[:, None, :]]
        return value

    def junk_part(self, key: str, value: Tensor) -> Tensor:
        """A padded tensor with its original entries set to 0."""
        return self.spread(key, torch.zeros_like(self.real(key, value)), value)


def pad(loss: PreferenceLoss, raw: dict, seed: int = 1) -> tuple[dict, Padding]:
    """`raw` padded with junk: EXTRA_ITEMS masked items at random positions of every list
    (K free), or one fully masked list with a NaN reference (K fixed by the loss); each
    token input one token longer, with junk past every completion's real tokens. Junk:
    log-probs, scores and logits up to 1e4 in size, scores above every real one, zero
    lengths; a padded item's token mask is True (only the item mask says it is padding)."""
    g = torch.Generator().manual_seed(seed)
    k = raw["mask"].shape[1]
    if loss.num_samples:
        padding, shape = Padding(None), (B + 1, k)
    else:
        slots = torch.stack([torch.randperm(k + EXTRA_ITEMS, generator=g)[:k].sort().values for _ in range(B)])
        padding, shape = Padding(slots), (B, k + EXTRA_ITEMS)

    def junk(*size: int, dtype: torch.dtype, low: float = -1e4, high: float = 1e4) -> Tensor:
        return (low + (high - low) * torch.rand(*size, generator=g, dtype=F64)).to(dtype)

    padded = {}
    for key, value in raw.items():
        kind = LAYOUT[key]
        if kind == SCALAR:
            padded[key] = value
            continue
        if kind == LIST and padding.slots is not None:
            padded[key] = value
            continue
        size = {ITEM: shape, PAIR: (*shape, shape[1]), TOKEN: (*shape, T + 1)}.get(kind, (B + 1, *value.shape[1:]))
        if key in ("mask", "truncated"):
            filler = torch.zeros(size, dtype=torch.bool) if key == "mask" else torch.rand(*size, generator=g) > 0.5
        elif key == "tokens_mask":
            filler = torch.ones(size, dtype=torch.bool)
            filler[..., T] = False
        elif key in ("lengths", "latent_users"):
            filler = torch.zeros(size, dtype=value.dtype)
        elif key == "scores":
            filler = junk(*size, dtype=value.dtype, low=100.0, high=200.0)
        elif key == "reference" and padding.slots is None:
            filler = torch.full(size, float("nan"), dtype=value.dtype)
        else:
            filler = junk(*size, dtype=value.dtype)
        if kind == TOKEN and key != "tokens_mask":  # junk past the real tokens too
            value = torch.where(raw["tokens_mask"], value, junk(*value.shape, dtype=value.dtype))
        padded[key] = padding.spread(key, value, filler)
    return padded, padding


# ---------------------------------------------------------------- the checks


@pytest.mark.parametrize("case", CASES, ids=str)
def test_gradcheck(case):
    loss = case.loss()
    raw = case.build(loss)
    keys = differentiable(case, raw)
    policy, reference = ("tokens_policy", "tokens_reference") if "tokens_policy" in raw else ("policy", "reference")
    hold_log_ratio = STOP_GRADIENT.get(case.name) == "log_ratio" and reference in raw
    # CISPO, VESPO: the importance weight pi / pi_old is a stop-gradient coefficient.
    hold_weight = getattr(loss, "detached_weight", False)

    def f(*values: Tensor) -> Tensor:
        inputs = {**raw, **dict(zip(keys, values, strict=True))}
        moved = (inputs[policy] - raw[policy]).detach()
        if hold_log_ratio:  # the reference moves with the policy: the log-ratio stays where it was
            inputs[reference] = raw[reference] + moved
        if hold_weight:  # the sampling policy moves with the policy: the weight stays where it was
            inputs["tokens_old"] = raw["tokens_old"] + moved
        return loss(assemble(inputs)).loss

    leaves = [raw[key].detach().clone().requires_grad_(True) for key in keys]
    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-7)


def assert_same(actual: Tensor, expected: Tensor, what: str) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-15, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("case", CASES, ids=str)
def test_padding_changes_nothing(case):
    loss = case.loss()
    raw = case.build(loss, seed=2)
    keys = differentiable(case, raw)
    out, grads = run(loss, raw, keys)
    padded, padding = pad(loss, raw)
    out_padded, grads_padded = run(loss, padded, keys)

    assert_same(out_padded.loss, out.loss, "loss")
    assert set(out_padded.metrics) == set(out.metrics) and set(out_padded.counts) == set(out.counts)
    for key, value in out.metrics.items():
        assert_same(out_padded.metrics[key], value, key)
    for key, value in out.counts.items():
        assert torch.equal(out_padded.counts[key], value), key
    for key in keys:
        assert_same(padding.real(key, grads_padded[key]), grads[key], f"d loss / d {key}")
        junk = padding.junk_part(key, grads_padded[key])
        assert torch.equal(junk, torch.zeros_like(junk)), f"padding got a gradient through {key}"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_finite_at_extreme_margins(case):
    scale = next((key for key in ("beta", "tau") if key in loss_class(case.name).parameters()), None)
    for params in ({}, {scale: 1.0} if scale else {}):
        loss = case.loss(**params)
        for margin in (1e4, -1e4):
            raw = case.build(loss, margin=margin)
            for dtype in (F32, F64):
                out, grads = run(loss, cast(raw, dtype), differentiable(case, raw))
                where = f"{params} margin {margin:g} {dtype}"
                assert torch.isfinite(out.loss), where
                for key, grad in grads.items():
                    assert torch.isfinite(grad).all(), f"d loss / d {key}, {where}"
                for key, value in out.metrics.items():
                    assert torch.isfinite(value), f"{key}, {where}"


def invalid_values(annotation: Any) -> list[Any]:
    """Values of the wrong kind for a parameter of this type."""
    args = get_args(annotation)
    optional = type(None) in args
    if get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [arg for arg in args if arg is not type(None)]
    if annotation is bool:
        values = ["yes", 1]
    elif get_origin(annotation) is Literal:
        values = ["no_such_choice", 1, True]
    elif annotation is int:
        values = [math.nan, 1.5, True, "1"]
    elif annotation is float:
        values = [math.nan, math.inf, True, "0.1"]
    elif annotation is str:
        values = [1, True]
    elif get_origin(annotation) is tuple:  # a pair of numbers, e.g. a [min, max] range
        values = ["0.1", [0.0], [math.nan, 1.0], [1.0, 0.0], [True, 2.0]]
    else:
        raise AssertionError(f"no invalid values known for a parameter of type {annotation}")
    return values if optional else [*values, None]


PARAMETERS = [(name, key) for name, cls in available_losses().items() for key in cls.parameters()]


@pytest.mark.parametrize("name, parameter", PARAMETERS, ids=[f"{n}.{p}" for n, p in PARAMETERS])
def test_a_value_of_the_wrong_kind_is_an_error_naming_the_parameter(name, parameter):
    annotation = typing.get_type_hints(loss_class(name))[parameter]
    for value in invalid_values(annotation):
        with pytest.raises(LossParameterError) as err:
            get_loss(name, **{parameter: value})
        assert str(err.value).startswith(f"{name}: {parameter} "), (value, str(err.value))


@pytest.mark.parametrize("name", list(available_losses()))
def test_declares_what_it_reads_and_how_it_trains(name):
    cls, loss = loss_class(name), get_loss(name)
    assert cls.name == name and cls.paper and cls.formula and cls.__doc__
    assert set(loss.reads) <= set(INPUTS)
    assert loss.needs_reference == ("reference" in loss.reads)
    assert loss.model_head in MODEL_HEADS and loss.feedback in FEEDBACK
    assert loss.num_samples is None or loss.num_samples >= 2
    hints = typing.get_type_hints(cls)
    for key, default in cls.parameters().items():
        assert key in hints, key  # typed
        assert default is None or isinstance(default, (int, float, str, bool)), (key, default)


def test_the_builder_provides_every_input_and_the_variants_exist():
    assert set(PROVIDES) == set(INPUTS)  # a new input needs a line in `build` (and `LAYOUT`, `assemble`)
    built = {key for keys in PROVIDES.values() for key in keys} | {"policy", "scores", "mask", "lengths"}
    assert built == set(LAYOUT)
    for case in VARIANTS:
        case.loss()  # the parameters exist and are valid
