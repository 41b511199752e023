"""The sampler: its next-token distribution is exactly the geometric mixture of the two
models' distributions, computed here by hand from full (cache-free) forwards; the KV
caches, left padding, filters and EOS handling do not change it."""

from __future__ import annotations

import pytest
import torch

from alignment.config import LoraConfig
from alignment.models import load_policy
from alignment.online.sampler import (
    GenerationSettings,
    ModelStream,
    filter_logprobs,
    left_pad,
    mixture_logprobs,
    sample,
)
from tests.helpers import EOS, PAD, assert_float32_close, tiny_model, tiny_model_config, tiny_tokenizer

PROMPTS = ["3+4=", "12+7=", "0+0="]  # different lengths: the batch is padded


@pytest.fixture(scope="module")
def models():
    return tiny_model(0).eval(), tiny_model(1).eval()


@pytest.fixture(scope="module")
def prompts():
    enc = tiny_tokenizer()(PROMPTS, padding=True, return_tensors="pt")
    assert enc["attention_mask"].sum(-1).tolist() == [4, 5, 4]
    return enc["input_ids"], enc["attention_mask"]


def settings(n: int = 5, **kwargs) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=n, eos_token_ids=(EOS,), pad_token_id=PAD, **kwargs)


def hand_mixture(policy, reference, context: list[int], m: float) -> torch.Tensor:
    """softmax((1 - m) log pi + m log mu) from full forwards of the unpadded context."""
    ids = torch.tensor([context])
    with torch.no_grad():
        log_pi = torch.log_softmax(policy(ids).logits[0, -1].double(), -1)
        log_mu = torch.log_softmax(reference(ids).logits[0, -1].double(), -1)
    return torch.softmax((1 - m) * log_pi + m * log_mu, -1)


def assert_probs_close(actual: torch.Tensor, expected: torch.Tensor, ulps: float, where) -> None:
    try:
        assert_float32_close(actual, expected, ulps=ulps)
    except AssertionError as error:
        raise AssertionError(f"the distribution at (row, step) {where}") from error


@pytest.mark.parametrize("m", [0.0, 0.3, 0.75, 1.0])
def test_every_step_samples_from_the_hand_computed_geometric_mixture(models, prompts, m):
    policy, reference = models
    ids, mask = prompts
    out = sample(
        ModelStream(policy),
        ModelStream(reference),
        ids,
        mask,
        m,
        settings(5),
        torch.Generator().manual_seed(0),
        record_distributions=True,
    )
    assert len(out.distributions) == out.completion_ids.size(1) == 5
    for b in range(len(PROMPTS)):
        prompt = ids[b, : int(mask[b].sum())].tolist()
        for t in range(int(out.lengths[b])):
            context = prompt + out.completion_ids[b, :t].tolist()
            expected = hand_mixture(policy, reference, context, m)
            # float32, cached and padded decoding against a float64 mixture of full forwards
            assert_probs_close(out.distributions[t][b].double(), expected, ulps=16, where=(b, t))


def test_m0_is_the_policy_and_m1_the_reference(models, prompts):
    policy, reference = models
    ids, mask = prompts
    context = ids[0, :4].tolist()
    with torch.no_grad():
        pi = torch.softmax(policy(torch.tensor([context])).logits[0, -1], -1)
        mu = torch.softmax(reference(torch.tensor([context])).logits[0, -1], -1)
    # With m = 0 the reference is never run (None is accepted), and vice versa.
    only_policy = sample(ModelStream(policy), None, ids, mask, 0.0, settings(1), record_distributions=True)
    only_reference = sample(None, ModelStream(reference), ids, mask, 1.0, settings(1), record_distributions=True)
    assert_float32_close(only_policy.distributions[0][0], pi, ulps=4)
    assert_float32_close(only_reference.distributions[0][0], mu, ulps=4)
    assert not torch.allclose(pi, mu, atol=1e-3)  # two different models, so the check means something
    with pytest.raises(ValueError, match="needs the reference model"):
        sample(ModelStream(policy), None, ids, mask, 0.5, settings(1))


def test_sampled_tokens_follow_the_mixture(models, prompts):
    """20000 draws of the first token pass a chi-square goodness-of-fit test against pi_m
    (dof = V - 1 = 105: mean 105, sd 14.5; the bound is 6 sd above the mean)."""
    policy, reference = models
    ids, mask = prompts
    reps = 20000
    big_ids, big_mask = ids[:1].expand(reps, -1), mask[:1].expand(reps, -1)
    out = sample(
        ModelStream(policy),
        ModelStream(reference),
        big_ids,
        big_mask,
        0.5,
        settings(1),
        torch.Generator().manual_seed(1),
        record_distributions=True,
    )
    expected = hand_mixture(policy, reference, ids[0, :4].tolist(), 0.5).float()
    observed = torch.bincount(out.completion_ids[:, 0], minlength=expected.numel()).double()
    chi2 = ((observed - reps * expected.double()) ** 2 / (reps * expected.double())).sum()
    dof = expected.numel() - 1
    assert chi2 < dof + 6 * (2 * dof) ** 0.5
    # The same draws reject the policy alone: the test can tell the two apart.
    pi = hand_mixture(policy, reference, ids[0, :4].tolist(), 0.0)
    chi2_policy = ((observed - reps * pi) ** 2 / (reps * pi)).sum()
    assert chi2_policy > dof + 6 * (2 * dof) ** 0.5, (float(chi2), float(chi2_policy))


def test_adapter_reference_keeps_its_own_cache():
    """One PEFT model as both players: the reference stream runs with adapters off, and
    the mixture matches two separate models (the adapted policy and its base)."""
    model = load_policy(tiny_model_config(), lora=LoraConfig(r=4, alpha=8, dropout=0.0)).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # non-zero adapters, so policy != base
    base = tiny_model(0).eval()
    enc = tiny_tokenizer()(PROMPTS, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    out = sample(
        ModelStream(model),
        ModelStream(model, context=model.disable_adapter),
        ids,
        mask,
        0.4,
        settings(4),
        torch.Generator().manual_seed(0),
        record_distributions=True,
    )
    for b in range(len(PROMPTS)):
        prompt = ids[b, : int(mask[b].sum())].tolist()
        for t in range(int(out.lengths[b])):
            context = prompt + out.completion_ids[b, :t].tolist()
            expected = hand_mixture(model, base, context, 0.4)
            assert_probs_close(out.distributions[t][b].double(), expected, ulps=16, where=(b, t))
    with torch.no_grad():
        one = torch.tensor([ids[0, :4].tolist()])
        assert not torch.allclose(model(one).logits, base(one).logits, atol=1e-3)


def test_eos_ends_a_completion_and_the_rest_is_padding(models, prompts):
    policy, _ = models
    ids, mask = prompts
    # Make EOS the only choice after the first token: top_k=1 on a distribution whose
    # top token we force to be EOS by sampling from a stream that always prefers it.

    class EOSAfterFirst(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.calls = 0

        def forward(self, **kwargs):
            out = self.inner(**kwargs)
            self.calls += 1
            if self.calls > 1 and kwargs["input_ids"].size(0) > 0:
                logits = out.logits.clone()
                logits[0, -1, EOS] = 1e4  # row 0 ends right after its first token
                out.logits = logits
            return out

    stream = ModelStream(EOSAfterFirst(policy))
    out = sample(stream, None, ids, mask, 0.0, settings(4, top_k=1))
    assert out.completion_ids[0, 1].item() == EOS
    assert out.completion_mask[0].tolist() == [1, 1, 0, 0]
    assert out.completion_ids[0, 2:].tolist() == [PAD, PAD]
    assert out.finished[0] and out.lengths[0] == 2
    assert out.completion_mask[1].sum() == 4 or out.finished[1]


def test_filters():
    logprobs = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]]))
    top2 = filter_logprobs(logprobs, 1.0, 2, 1.0).exp()
    assert_float32_close(top2, torch.tensor([[2 / 3, 1 / 3, 0, 0]]), ulps=1)
    # Nucleus 0.7: 0.5 alone is below 0.7, 0.5 + 0.25 reaches it, so two tokens stay.
    nucleus = filter_logprobs(logprobs, 1.0, 0, 0.7).exp()
    assert_float32_close(nucleus, torch.tensor([[2 / 3, 1 / 3, 0, 0]]), ulps=1)
    # Temperature 2 on log-probs: p^(1/2) renormalised.
    hot = filter_logprobs(logprobs, 2.0, 0, 1.0).exp()
    expected = torch.tensor([[0.5, 0.25, 0.15, 0.1]]).sqrt()
    assert_float32_close(hot, expected / expected.sum(), ulps=1)
    mix = mixture_logprobs(torch.tensor([[0.0, 1.0]]), torch.tensor([[2.0, 0.0]]), 0.5).exp()
    # (1/2)(log softmax) each: logits differ by (-1 + 2) / 2 = 0.5 in favour of token 0.
    assert_float32_close(mix, torch.softmax(torch.tensor([[0.5, 0.0]]), -1), ulps=1)


def test_left_pad_moves_each_prompt_to_the_end():
    ids = torch.tensor([[7, 8, 0, 0], [5, 6, 7, 8]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    out_ids, out_mask = left_pad(ids, mask, pad_token_id=0)
    assert out_ids.tolist() == [[0, 0, 7, 8], [5, 6, 7, 8]]
    assert out_mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]


def test_generation_leaves_the_model_as_it_was(models, prompts):
    policy, reference = models
    ids, mask = prompts
    policy.train()
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    sample(ModelStream(policy), ModelStream(reference), ids, mask, 0.5, settings(3))
    assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())
    policy.eval()


@pytest.mark.parametrize("coef", [0.0, 0.5])
def test_a_prompt_is_prefilled_once_for_its_samples(models, prompts, coef):
    """`repeats` runs each prompt once and repeats its KV cache: the same next-token
    distributions, step by step, and the same tokens under one seed, as running the
    prompt once per sample; the LM head computes only the last position at prefill."""
    policy, reference = models
    ids, mask = prompts

    def drawn(repeats: int, ids: torch.Tensor, mask: torch.Tensor):
        torch.manual_seed(0)
        streams = ModelStream(policy), ModelStream(reference)
        return sample(*streams, ids, mask, coef, settings(), record_distributions=True, repeats=repeats)

    once = drawn(3, ids, mask)
    per_sample = drawn(1, ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0))
    assert torch.equal(once.completion_ids, per_sample.completion_ids)
    for a, b in zip(once.distributions, per_sample.distributions, strict=True):
        assert_float32_close(a, b)
    assert ModelStream(policy).last_logits_only  # a transformers model: logits_to_keep=1 at prefill
