"""Training through `alignment vllm-serve`: one server subprocess with the mixture model
(`--mixture`) on the tiny head_dim-32 model, and the tiny GRPO and Nash-MD recipes
trained 5 steps each in this process with `online.vllm_mode: server`. The server samples
from the very weights the trainer holds (sent before every step that generates), the
Nash-MD mixture with each sample's own m, after the reference was sent once."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import requests
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from alignment.config import load_config
from alignment.online.engines.base import REFERENCE_PREFIX
from alignment.online.engines.vllm_mixture import mixture_supported
from alignment.online.engines.vllm_server import VLLMServerEngine, checksum
from alignment.online.sampler import POLICY, REFERENCE, GenerationSettings, ModelStream, draw, mixture
from alignment.run import train
from tests.with_vllm.servers import free_port, running_server, save_tiny_model

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(mixture_supported() is not None, reason=str(mixture_supported()))]

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "recipes" / "tiny"
CONFIG = TINY / "model-h32"  # head_dim 32: vLLM's CPU attention supports it
STEPS = 5
# Every sampler at once, as rows of one vLLM batch (test_vllm_mixture's).
SLOTS = [REFERENCE, mixture(0.125), POLICY, mixture(0.5), mixture(0.125)]
# Right-padded prompts of the tiny vocabulary (pad 0), of different lengths.
PROMPT_IDS = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12], [20, 21, 0, 0, 0]])
PROMPT_MASK = (PROMPT_IDS != 0).long()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The tiny model with seeded random weights, saved as safetensors (the server's policy
    until the trainer sends its own)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-h32"))


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """`alignment vllm-serve --mixture` on the tiny model; its process group is killed at the end."""
    with running_server(model_dir, tmp_path_factory.mktemp("server") / "server.log", "--mixture") as server:
        yield server


def info(server) -> dict:
    return requests.get(f"{server['url']}/info", timeout=10).json()


def train_through(server, recipe: str, output_dir: Path) -> list[dict]:
    """5 steps of the tiny recipe with its samples drawn by the server; the logged steps."""
    overrides = [
        f"--training.output_dir={output_dir}",
        "--model.config=recipes/tiny/model-h32",
        "--online.engine=vllm",
        "--online.vllm_mode=server",
        f"--online.vllm_server_base_url={server['url']}",
        f"--training.max_steps={STEPS}",
        "--training.logging_steps=1",
        "--training.eval_on_start=false",
        "--training.eval_strategy=no",
        "--training.per_device_train_batch_size=16",
    ]
    train(load_config(TINY / f"{recipe}.yaml", overrides))
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [e for e in history if "loss" in e]


def assert_trained_on_the_servers_samples(logged: list[dict], recipe: str) -> None:
    assert len(logged) == STEPS and all(math.isfinite(e["loss"]) for e in logged)
    assert any(e["grad_norm"] > 0 for e in logged)
    # Synced before every step that generates (GRPO's updates_per_batch mu: one step in mu).
    mu = load_config(TINY / f"{recipe}.yaml").online.updates_per_batch
    synced = [e["online/engine/sync_seconds"] for e in logged if "online/engine/sync_seconds" in e]
    assert len(synced) == math.ceil(STEPS / mu) and min(synced) > 0
    # The server samples from the weights the trainer holds: its log-probs are the trainer's.
    differences = [v for e in logged for k, v in e.items() if k.startswith("online/engine/") and "difference" in k]
    assert differences and max(differences) < 1e-3


@pytest.fixture
def client(server):
    engine = VLLMServerEngine(server["url"], timeout_s=30, device="cpu", group_port=free_port())
    yield engine
    engine.close()


def greedy(max_new_tokens: int = 8) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=max_new_tokens, eos_token_ids=(1,), pad_token_id=0, top_k=1)


def test_the_server_holds_the_mixture_model(server, client):
    answer = info(server)
    assert answer["mixture"] is True and answer["dtype"] == "float32"
    assert answer["loaded"] == ["policy"]  # the checkpoint's weights; the reference's are placeholders
    assert "(the mixture model: policy and reference)" in server["log"].read_text()
    out = client.generate([POLICY, POLICY], PROMPT_IDS, PROMPT_MASK, greedy())
    assert out.completion_ids.shape[:2] == (3, 2)
    # A policy-only recipe sends no reference, and its reference samples are not asked of the server.
    assert not client.serves(mixture(0.5)) and not client.needs_reference_weights
    client.check_samplers([POLICY, mixture(0.5)])  # as the trainer does at its start
    assert client.serves(mixture(0.5)) and client.needs_reference_weights
    with pytest.raises(RuntimeError, match="was not sent the reference's weights"):
        client.generate([POLICY, mixture(0.5)], PROMPT_IDS, PROMPT_MASK, greedy())


def test_the_servers_mixture_equals_the_native_sampler(server, client):
    """The policy and the reference sent as the trainer sends them (the reference once,
    prefixed): greedy samples and log-probs of every m are the native sampler's, and the
    checksums read both copies in the server's model."""
    config = AutoConfig.from_pretrained(CONFIG)
    config.initializer_range = 0.2  # peaked distributions: the mixtures pick different tokens
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_config(config).eval()
    torch.manual_seed(1)
    reference = AutoModelForCausalLM.from_config(config).eval()
    reference_weights = [(REFERENCE_PREFIX + n, t) for n, t in reference.state_dict().items()]
    before = info(server)["weight_updates"]
    client.load_weights(reference_weights)  # checksums compared inside
    client.load_weights(policy.state_dict().items())
    after = info(server)["weight_updates"]
    assert after == {"policy": before["policy"] + 1, "reference": before["reference"] + 1}
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    sums = client._post("/checksum", {"names": names})["checksums"]
    for name in names:
        assert sums[name]["model"] == pytest.approx(checksum(policy.state_dict()[name]), rel=1e-9)
    client.load_weights(reference_weights)
    sums = client._post("/checksum", {"names": [REFERENCE_PREFIX + n for n in names]})["checksums"]
    for name in names:
        own = checksum(reference.state_dict()[name])
        assert sums[REFERENCE_PREFIX + name]["received"] == pytest.approx(own, rel=1e-9)
        assert sums[REFERENCE_PREFIX + name]["model"] == pytest.approx(own, rel=1e-9)

    client.check_samplers(SLOTS)
    out = client.generate(SLOTS, PROMPT_IDS, PROMPT_MASK, greedy())
    native = draw(SLOTS, ModelStream(policy), ModelStream(reference), PROMPT_IDS, PROMPT_MASK, greedy())
    assert out.completion_ids.tolist() == native.completion_ids.tolist()
    assert out.completion_mask.tolist() == native.completion_mask.tolist()
    assert out.finished.tolist() == native.finished.tolist()
    torch.testing.assert_close(out.logprobs, native.logprobs, atol=1e-4, rtol=0)
    ids = out.completion_ids
    assert not torch.equal(ids[:, 0], ids[:, 2]) and not torch.equal(ids[:, 3], ids[:, 2])  # m is told apart


def test_grpo_trains_through_the_server(server, tmp_path):
    before = info(server)["weight_updates"]
    logged = train_through(server, "grpo", tmp_path)
    assert_trained_on_the_servers_samples(logged, "grpo")
    after = info(server)["weight_updates"]
    # The policy's weights before each step that generates; no reference for a policy sampler.
    assert after["reference"] == before["reference"]
    assert after["policy"] - before["policy"] >= math.ceil(STEPS / 2)


def test_nash_md_trains_through_the_servers_mixture(server, tmp_path):
    before = info(server)["weight_updates"]
    logged = train_through(server, "nash_md", tmp_path)
    assert_trained_on_the_servers_samples(logged, "nash_md")
    answer = info(server)
    assert answer["weight_updates"]["reference"] - before["reference"] == 1  # sent once, at the first sync
    assert answer["weight_updates"]["policy"] - before["policy"] >= STEPS
    assert answer["loaded"] == ["policy", "reference"]
