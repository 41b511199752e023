"""Property-based tests (hypothesis, derandomized: a fixed seed and a bounded number of
examples in CI). Over random shapes, masks, ties and values, the losses never produce
NaN (value or gradient) and padding never changes them; the adapters either produce a
valid example or raise BadRowError with a known reason, never anything else."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignment.data import BadRowError, adapt_row
from alignment.data import adapters as adapter_module
from alignment.losses import SequenceLogps, available_losses, get_loss

FIXED = settings(max_examples=40, deadline=None, derandomize=True)
# From the registry: the policy's losses on a fixed dataset that read nothing beyond the
# reference (what `list_batches` holds), and those on two judged samples of a prompt.
OFFLINE = [
    name
    for name, cls in available_losses().items()
    if cls.model_head == "policy" and not cls.online_only and get_loss(name).reads <= {"reference"}
]
ONLINE_PAIRS = [
    name
    for name, cls in available_losses().items()
    if cls.num_samples == 2 and cls.feedback == "preferences" and get_loss(name).reads <= {"reference"}
]
REASONS = {v for k, v in vars(adapter_module).items() if k.isupper() and isinstance(v, str) and k != "Layout"}


@st.composite
def list_batches(draw, k_min: int = 2, k_max: int = 5):
    """A batch of B lists of up to K items: real-item counts >= 2, scores with ties,
    log-probs from tiny to large magnitudes, and garbage in the padded slots."""
    b = draw(st.integers(1, 4))
    k = draw(st.integers(k_min, k_max))
    sizes = [draw(st.integers(2, k)) for _ in range(b)]
    mask = torch.tensor([[j < n for j in range(k)] for n in sizes])
    score = st.sampled_from([0.0, 1.0, 2.0, 3.0])  # few levels: ties are common
    logp = st.floats(-200.0, 0.0, allow_nan=False)
    scores = torch.tensor([[draw(score) for _ in range(k)] for _ in range(b)], dtype=torch.float64)
    policy = torch.tensor([[draw(logp) for _ in range(k)] for _ in range(b)], dtype=torch.float64)
    reference = torch.tensor([[draw(logp) for _ in range(k)] for _ in range(b)], dtype=torch.float64)
    lengths = torch.tensor([[draw(st.integers(1, 50)) for _ in range(k)] for _ in range(b)])
    garbage = torch.full_like(policy, 1e4)
    return SequenceLogps(
        policy=torch.where(mask, policy, garbage),
        reference=torch.where(mask, reference, -garbage),
        scores=torch.where(mask, scores, torch.full_like(scores, 99.0)),
        mask=mask,
        lengths=torch.where(mask, lengths, 0),
    )


def _loss_and_grad(name: str, logps: SequenceLogps):
    policy = logps.policy.clone().requires_grad_(True)
    out = get_loss(name)(SequenceLogps(policy, logps.reference, logps.scores, logps.mask, logps.lengths))
    out.loss.backward()
    return out.loss.detach(), policy.grad


def _drop_padding(logps: SequenceLogps) -> list[SequenceLogps]:
    """Each list on its own, with only its real items (no padding at all)."""
    out = []
    for row in range(logps.mask.size(0)):
        keep = logps.mask[row]
        out.append(
            SequenceLogps(
                logps.policy[row, keep][None],
                logps.reference[row, keep][None],
                logps.scores[row, keep][None],
                logps.mask[row, keep][None],
                logps.lengths[row, keep][None],
            )
        )
    return out


@pytest.mark.parametrize("name", OFFLINE)
@FIXED
@given(batch=list_batches())
def test_losses_are_finite_with_finite_gradients(batch, name):
    loss, grad = _loss_and_grad(name, batch)
    assert torch.isfinite(loss)
    assert torch.isfinite(grad).all()
    assert (grad[~batch.mask] == 0).all()  # padded slots get no gradient


@FIXED
@given(batch=list_batches(k_min=2, k_max=2), name=st.sampled_from(ONLINE_PAIRS))
def test_online_losses_are_finite(batch, name):
    probs = torch.rand(batch.scores.shape[0], dtype=torch.float64)
    batch.scores = torch.stack([probs, 1 - probs], -1)
    batch.mask = torch.ones_like(batch.mask)
    loss, grad = _loss_and_grad(name, batch)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


@pytest.mark.parametrize("name", OFFLINE)
@FIXED
@given(batch=list_batches())
def test_padding_never_changes_a_single_list_loss(batch, name):
    """A list padded to K gives the loss of the same list with no padding."""
    for single_padded, single in zip(_drop_padding(batch), _drop_padding(batch), strict=True):
        k = batch.mask.size(1)
        extra = k - single.mask.size(1)
        padded = SequenceLogps(
            torch.cat([single_padded.policy, torch.full((1, extra), 1e4, dtype=torch.float64)], 1),
            torch.cat([single_padded.reference, torch.full((1, extra), -1e4, dtype=torch.float64)], 1),
            torch.cat([single_padded.scores, torch.full((1, extra), 99.0, dtype=torch.float64)], 1),
            torch.cat([single_padded.mask, torch.zeros((1, extra), dtype=torch.bool)], 1),
            torch.cat([single_padded.lengths, torch.zeros((1, extra), dtype=torch.long)], 1),
        )
        a = get_loss(name)(padded).loss
        b = get_loss(name)(single).loss
        assert math.isclose(a.item(), b.item(), rel_tol=1e-9, abs_tol=1e-12), (a.item(), b.item())


text = st.one_of(st.text(max_size=8), st.none(), st.integers(), st.lists(st.text(max_size=3), max_size=2))
messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": st.text(max_size=5)}), max_size=3
)
number = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none(), st.text(max_size=3))


@FIXED
@given(
    prompt=st.one_of(text, messages),
    chosen=st.one_of(text, messages),
    rejected=st.one_of(text, messages),
    scores=st.one_of(st.none(), st.tuples(number, number)),
)
def test_pairwise_adapter_gives_an_example_or_a_named_bad_row(prompt, chosen, rejected, scores):
    row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if scores is not None:
        row["score_chosen"], row["score_rejected"] = scores
    try:
        example = adapt_row(row, "pairwise", "fuzz.jsonl", 3)
    except BadRowError as err:
        assert err.reason in REASONS and err.index == 3 and "fuzz.jsonl" in str(err)
        return
    assert len(example.completions) == len(example.scores) == 2
    assert all(math.isfinite(s) for s in example.scores) and example.scores[0] != example.scores[1]
    assert example.completions[0] != example.completions[1]


@FIXED
@given(
    completions=st.lists(st.one_of(text, messages), max_size=5),
    scores=st.lists(number, max_size=5),
)
def test_ranked_adapter_gives_an_example_or_a_named_bad_row(completions, scores):
    row = {"prompt": "q", "completions": completions, "scores": scores}
    try:
        example = adapt_row(row, "ranked", "fuzz.jsonl", 0)
    except BadRowError as err:
        assert err.reason in REASONS
        return
    assert len(example.completions) == len(example.scores) >= 2
    assert all(math.isfinite(s) for s in example.scores) and len(set(example.scores)) > 1
    assert len({repr(c) for c in example.completions}) == len(example.completions)
