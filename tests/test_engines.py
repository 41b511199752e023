"""The generation-engine seam (online.engine) in the main environment: the native
engine's token log-probs, the slot bookkeeping, the recipe checks, and the trainer with
an external engine (a stand-in holding its own copy of the policy, as vLLM does): one
generation call per optimizer step, the policy's weights sent before it, the mismatch
logged and corrected. vLLM itself is tested in tests/with_vllm (its own environment)."""

from __future__ import annotations

import copy

import pytest
import torch

from alignment.config import ConfigError, load_config
from alignment.online.engines import Completion, GenerationEngine, NativeEngine, group_samples, merge_slots, select_rows
from alignment.online.sampler import POLICY, REFERENCE, GenerationSettings, ModelStream, draw, mixture
from tests.helpers import ROOT, tiny_model
from tests.launch import log_history, train_in_process


def test_group_samples_pads_each_completion_by_hand():
    rows = [
        [Completion([5, 1], [-0.5, -1.0], True), Completion([7], [-2.0], False)],
        [Completion([], [], False), Completion([3, 4, 1], [-0.125, -0.25, -0.375], True)],
    ]
    got = group_samples(rows, [POLICY, mixture(0.5)], pad_token_id=0)
    assert got.completion_ids.tolist() == [[[5, 1, 0], [7, 0, 0]], [[0, 0, 0], [3, 4, 1]]]
    assert got.completion_mask.tolist() == [[[1, 1, 0], [1, 0, 0]], [[0, 0, 0], [1, 1, 1]]]
    assert got.logprobs.tolist() == [[[-0.5, -1.0, 0.0], [-2.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [-0.125, -0.25, -0.375]]]
    assert got.finished.tolist() == [[True, False], [False, True]]
    assert got.from_policy.tolist() == [True, False]
    with pytest.raises(ValueError, match="the engine returned 1 completions for prompt 0, expected 2"):
        group_samples([[Completion([1], [0.0], True)]], [POLICY, POLICY], 0)


def test_merge_slots_and_select_rows_keep_slot_and_prompt_order():
    a = group_samples([[Completion([1, 2], [-1.0, -2.0], False)], [Completion([3], [-3.0], True)]], [POLICY], 0)
    b = group_samples([[Completion([9], [-9.0], True)], [Completion([8, 8, 8], [-8.0] * 3, False)]], [REFERENCE], 0)
    merged = merge_slots([REFERENCE, POLICY], [False, True], a, b)  # slot 0 from b, slot 1 from a
    assert merged.completion_ids.tolist() == [[[9, 0, 0], [1, 2, 0]], [[8, 8, 8], [3, 0, 0]]]
    assert merged.logprobs[:, 1].tolist() == [[-1.0, -2.0, 0.0], [-3.0, 0.0, 0.0]]
    assert merged.from_policy.tolist() == [False, True]
    second = select_rows(merged, slice(0, 1))  # prompt 0 alone: its longest completion is 2 tokens
    assert second.completion_ids.tolist() == [[[9, 0], [1, 2]]]
    assert second.finished.tolist() == [[True, False]]


@pytest.mark.parametrize("sampler", [POLICY, mixture(0.25)])
def test_native_log_probs_are_the_models_before_temperature(sampler):
    """Each sampled token's log-prob is log pi_m(y_t | x, y_<t) of the model (before
    temperature and top-k), as a full forward of prompt + completion gives it."""
    policy, reference = tiny_model(0).eval(), tiny_model(1).eval()
    settings = GenerationSettings(max_new_tokens=5, eos_token_ids=(1,), pad_token_id=0, temperature=0.7, top_k=20)
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 10, 11]])
    mask = (ids != 0).long()
    torch.manual_seed(0)
    got = NativeEngine().generate([sampler, sampler], ids, mask, settings, ModelStream(policy), ModelStream(reference))
    for b in range(2):
        prompt = ids[b, : int(mask[b].sum())]
        for k in range(2):
            n = int(got.lengths[b, k])
            full = torch.cat([prompt, got.completion_ids[b, k, :n]])[None]
            with torch.no_grad():
                logits = [m(full).logits[0, len(prompt) - 1 : -1].log_softmax(-1) for m in (policy, reference)]
            mixed = ((1 - sampler.coef) * logits[0] + sampler.coef * logits[1]).log_softmax(-1)
            expected = mixed.gather(1, got.completion_ids[b, k, :n, None])[:, 0]
            torch.testing.assert_close(got.logprobs[b, k, :n], expected, rtol=1e-5, atol=1e-5)
            assert (got.logprobs[b, k, n:] == 0).all()


def test_native_engine_draws_as_the_sampler():
    policy = tiny_model(0).eval()
    settings = GenerationSettings(max_new_tokens=4, eos_token_ids=(1,), pad_token_id=0)
    ids, mask = torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long)
    torch.manual_seed(3)
    via_engine = NativeEngine().generate([POLICY] * 3, ids, mask, settings, ModelStream(policy))
    torch.manual_seed(3)
    direct = draw([POLICY] * 3, ModelStream(policy), None, ids, mask, settings)
    assert torch.equal(via_engine.completion_ids, direct.completion_ids)


# ----------------------------------------------------------------------------- the recipe's checks


@pytest.mark.parametrize(
    "overrides, phrase",
    [
        (["--online.vllm_mode=server"], "online.vllm_mode is a vLLM setting; set online.engine: vllm to use it"),
        (["--online.vllm_importance_sampling_correction=true"], "online.engine native samples with the trained model"),
        (["--online.engine=vllm", "--online.vllm_server_base_url=localhost:8000"], "expected http://HOST:PORT"),
        (["--online.engine=vllm", "--online.vllm_importance_sampling_clip_min=4"], "is above online.vllm_importance"),
        (["--online.engine=vllm", "--online.vllm_cpu_kvcache_space_gib=0"], "a whole number of GiB >= 1"),
        (["--online.engine=sglang"], "online.engine"),
    ],
)
def test_bad_engine_settings_fail_at_load_in_one_line(overrides, phrase):
    with pytest.raises(ConfigError, match=phrase.replace(".", r"\.")) as err:
        load_config(ROOT / "recipes/tiny/grpo.yaml", overrides)
    assert "\n" not in str(err.value)


def test_vllm_missing_is_one_line_at_load(monkeypatch):
    monkeypatch.setattr("alignment.online.engines.base.vllm_available", lambda: False)
    with pytest.raises(ConfigError, match="online.engine vllm needs vLLM in this environment: pip install vllm"):
        load_config(ROOT / "recipes/tiny/grpo.yaml", ["--online.engine=vllm"])


@pytest.mark.parametrize(
    "recipe, overrides, phrase",
    [
        ("online_ipo", ["--online.vllm_importance_sampling_correction=true"], "has no per-token policy term"),
        ("grpo", ["--loss.name=vespo", "--online.vllm_importance_sampling_mode=sequence_mask"], "vespo takes the"),
        ("grpo", ["--quantization.bits=4", "--lora.r=8", "--reference.type=adapter"], "a quantized (QLoRA) policy"),
    ],
)
def test_engine_combinations_are_checked_at_load(recipe, overrides, phrase, monkeypatch):
    monkeypatch.setattr("alignment.online.engines.base.vllm_available", lambda: True)
    with pytest.raises(ConfigError, match=phrase.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")):
        load_config(ROOT / f"recipes/tiny/{recipe}.yaml", ["--online.engine=vllm", *overrides])


# ----------------------------------------------------------------------------- an external engine in the trainer


class CopyEngine(GenerationEngine):
    """An external engine as vLLM is one: its own copy of the policy, updated only by
    `load_weights`; it samples with the native sampler from that copy and records calls."""

    name = "copy"

    def __init__(self, model: torch.nn.Module, loads: bool = True) -> None:
        self.copy = copy.deepcopy(model).eval()
        self.loads = loads
        self.calls: list[tuple[str, int]] = []
        self.trainer_weights: list[torch.Tensor] = []
        self.closed = False

    def serves(self, sampler):
        return sampler.coef == 0.0

    def generate(self, slots, prompt_ids, prompt_mask, settings, policy=None, reference=None):
        self.calls.append(("generate", prompt_ids.size(0)))
        return draw(slots, ModelStream(self.copy), reference, prompt_ids, prompt_mask, settings)

    def load_weights(self, weights):
        weights = dict(weights)
        self.calls.append(("load", len(weights)))
        self.trainer_weights.append(weights["model.embed_tokens.weight"].detach().clone())
        if self.loads:
            self.copy.load_state_dict(weights)
        return {"online/engine/sync_seconds": 0.5}

    def close(self):
        self.closed = True


def run_with_engine(tmp_path, monkeypatch, loads=True, *overrides):
    import alignment.run
    from alignment.losses.grpo import GroupPolicyLoss

    engines, ratios = [], []
    # A recipe with online.engine vllm, its engine replaced by the stand-in (no vLLM here).
    monkeypatch.setattr("alignment.online.engines.base.vllm_available", lambda: True)
    monkeypatch.setattr(
        alignment.run,
        "build_engine",
        lambda online, model, args, n: engines.append(CopyEngine(model, loads)) or engines[-1],
    )
    original = GroupPolicyLoss.__call__

    def spy(self, logps):
        ratios.append(logps.engine_ratio)
        return original(self, logps)

    monkeypatch.setattr(GroupPolicyLoss, "__call__", spy)
    args = ["--training.max_steps=3", "--training.logging_steps=1", "--training.eval_on_start=false"]
    args += ["--training.per_device_train_batch_size=8", "--training.gradient_accumulation_steps=2"]
    train_in_process("grpo", tmp_path, *args, "--online.updates_per_batch=1", "--online.engine=vllm", *overrides)
    return engines[0], ratios, [e for e in log_history(tmp_path) if "loss" in e]


def test_an_external_engine_generates_once_per_optimizer_step_from_synced_weights(tmp_path, monkeypatch):
    engine, ratios, logged = run_with_engine(tmp_path, monkeypatch)
    # Per optimizer step: the policy's weights (a full state dict), then one call for both micro-batches.
    load = ("load", len(tiny_model(0).state_dict()))  # the full state dict, tied lm_head included
    # The final evaluation: the weights of step 3, then its two batches of 100 test prompts.
    assert engine.calls == [load, ("generate", 16)] * 3 + [load, ("generate", 100), ("generate", 100)]
    assert not torch.equal(engine.trainer_weights[0], engine.trainer_weights[1])  # a step later: new weights
    assert engine.closed  # closed at the end of the run
    # The engine holds the trainer's weights: no mismatch, every sequence ratio 1 (sequence_mask by default).
    assert len(ratios) == 6 and all(r.shape == (8, 4, 1) and torch.allclose(r, torch.ones_like(r)) for r in ratios)
    assert all(e["online/engine/logp_difference_max"] < 1e-5 for e in logged)
    assert [e["online/engine/sync_seconds"] for e in logged] == [0.5] * 3


def test_an_engine_with_stale_weights_is_measured_and_corrected(tmp_path, monkeypatch):
    """An engine that ignores the sync samples from the initial policy: the logged
    mismatch grows with training and the correction's ratios move off 1."""
    engine, ratios, logged = run_with_engine(
        tmp_path, monkeypatch, False, "--online.vllm_importance_sampling_mode=token_truncate"
    )
    assert logged[0]["online/engine/logp_difference_max"] < 1e-5  # step 1: nothing trained yet
    assert logged[-1]["online/engine/logp_difference_mean"] > 1e-3
    assert ratios[-1].shape == (8, 4, 3)  # per token
    assert (ratios[-1] != 1).any() and (ratios[-1] <= 3.0).all()  # truncated at clip_max 3
