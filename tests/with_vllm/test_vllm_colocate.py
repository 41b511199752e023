"""The colocated vLLM engine (`online.engine: vllm`) against the native sampler on the
same weights: greedy tokens equal, the returned token log-probs are the model's own,
a weight sync changes the output to the new weights', bad settings fail in one line,
and every online tiny recipe trains 5 steps with it (the mixture recipes in
test_vllm_mixture.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from alignment.gguf import smollm2_checkpoint
from alignment.online.engines.native import NativeEngine
from alignment.online.engines.vllm import VLLMColocateEngine, VLLMSettings, check_head_dim
from alignment.online.sampler import POLICY, GenerationSettings, ModelStream

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[2]
H32 = ROOT / "recipes" / "tiny" / "model-h32"  # head_dim 32: vLLM's CPU attention supports it
PROMPTS = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12], [40, 41, 0, 0, 0]])  # right-padded, pad 0
MASK = (PROMPTS != 0).long()


def tiny_h32(seed: int = 0, scale: float = 0.0) -> torch.nn.Module:
    """The tiny model, seeded; `scale` adds N(0, scale^2) to every weight (transformers'
    init, std 0.02, mostly echoes the prompt's last token)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(H32)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn_like(parameter))
    return model


def greedy(n: int = 8, eos: tuple[int, ...] = (1,)) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=n, eos_token_ids=eos, pad_token_id=0, top_k=1)


def engine_for(model: torch.nn.Module, max_model_len: int = 64) -> VLLMColocateEngine:
    config = {**model.config.to_dict(), "architectures": [type(model).__name__]}
    settings = VLLMSettings(config, "float32", max_model_len, cpu_kvcache_space_gib=1)
    engine = VLLMColocateEngine(settings)
    engine.load_weights(model.state_dict().items())
    return engine


@pytest.fixture(scope="module")
def tiny():
    model = tiny_h32(scale=0.1)
    engine = engine_for(model)
    yield model, engine
    engine.close()


def native(model, settings, slots=(POLICY,)):
    return NativeEngine().generate(list(slots), PROMPTS, MASK, settings, ModelStream(model))


def forward_logps(model, prompt: torch.Tensor, completion: torch.Tensor) -> torch.Tensor:
    """log pi(y_t | x, y_<t) of each completion token, from one forward of prompt + completion."""
    full = torch.cat([prompt, completion])[None]
    with torch.no_grad():
        logits = model(full).logits[0, len(prompt) - 1 : -1].float().log_softmax(-1)
    return logits.gather(1, completion[:, None])[:, 0]


def test_greedy_equals_native_token_for_token(tiny):
    model, engine = tiny
    # EOS 1 rarely comes from random weights: also end on a token the greedy path reaches.
    for settings in (greedy(), greedy(eos=(1, int(native(model, greedy()).completion_ids[1, 0, 2])))):
        got, expected = (
            engine.generate([POLICY, POLICY], PROMPTS, MASK, settings),
            native(model, settings, [POLICY] * 2),
        )
        assert torch.equal(got.completion_ids, expected.completion_ids)
        assert torch.equal(got.completion_mask, expected.completion_mask)
        assert torch.equal(got.finished, expected.finished)
        torch.testing.assert_close(got.logprobs, expected.logprobs, rtol=0, atol=1e-4)
    assert got.finished.any() and not got.finished.all()  # the second settings end some completions early


def test_sampled_log_probs_are_the_models_at_any_temperature(tiny):
    """vLLM's raw log-probs: the model's distribution before temperature and top-p, which
    the trainer recomputes (within float32 tolerance)."""
    model, engine = tiny
    settings = GenerationSettings(max_new_tokens=6, eos_token_ids=(1,), pad_token_id=0, temperature=1.5, top_p=0.9)
    got = engine.generate([POLICY] * 4, PROMPTS, MASK, settings)
    assert len({tuple(row) for row in got.completion_ids[1].tolist()}) > 1  # sampled, not greedy
    for b in range(PROMPTS.size(0)):
        prompt = PROMPTS[b, MASK[b].bool()]
        for k in range(4):
            n = int(got.lengths[b, k])
            expected = forward_logps(model, prompt, got.completion_ids[b, k, :n])
            torch.testing.assert_close(got.logprobs[b, k, :n], expected, rtol=0, atol=1e-4)


def test_a_weight_sync_changes_the_output_to_the_new_weights(tiny):
    model, engine = tiny
    before = engine.generate([POLICY], PROMPTS, MASK, greedy()).completion_ids
    other = tiny_h32(seed=1, scale=0.1)
    metrics = engine.load_weights(other.state_dict().items())
    try:
        after = engine.generate([POLICY], PROMPTS, MASK, greedy())
        assert torch.equal(after.completion_ids, native(other, greedy()).completion_ids)
        assert not torch.equal(after.completion_ids, before)
        assert metrics["online/engine/sync_seconds"] > 0
    finally:
        engine.load_weights(model.state_dict().items())


def test_an_unsupported_head_dim_is_refused_in_one_line():
    config = json.loads((ROOT / "recipes/tiny/model/config.json").read_text())  # head_dim 16
    with pytest.raises(ValueError, match=r"vLLM's CPU attention does not support head_dim 16 \(supported: 32, 64"):
        check_head_dim(config, "cpu")
    check_head_dim(config, "cuda")  # a GPU backend decides for itself


def test_smollm2_greedy_equals_native():
    """Real weights and a real vocabulary: SmolLM2-135M-Instruct, 16 greedy tokens."""
    path = smollm2_checkpoint()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    engine = engine_for(model, max_model_len=128)
    try:
        prompts = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 2], [1, 504, 3458, 282, 4649, 314, 2, 2]])
        mask = torch.tensor([[1] * 8, [1] * 6 + [0] * 2])
        settings = GenerationSettings(max_new_tokens=16, eos_token_ids=(2,), pad_token_id=2, top_k=1)
        got = engine.generate([POLICY], prompts, mask, settings)
        expected = NativeEngine().generate([POLICY], prompts, mask, settings, ModelStream(model))
        assert torch.equal(got.completion_ids, expected.completion_ids)
        torch.testing.assert_close(got.logprobs, expected.logprobs, rtol=0, atol=2e-4)
    finally:
        engine.close()
