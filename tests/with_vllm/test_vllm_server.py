"""`alignment vllm-serve` and `VLLMServerEngine`: one vLLM server subprocess on the tiny
head_dim-32 model, compared with the native engine in this process."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil
import pytest
import torch
from transformers import AutoModelForCausalLM

from alignment.config import load_config
from alignment.online.engines.native import NativeEngine
from alignment.online.engines.vllm_server import VLLMServerEngine, checksum
from alignment.online.sampler import POLICY, REFERENCE, GenerationSettings, ModelStream
from alignment.run import train
from tests.with_vllm.servers import free_port, running_server, save_tiny_model

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[2]
LOGPROB_ATOL = 1e-4

# Right-padded prompts of the tiny vocabulary (pad 0).
PROMPT_IDS = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12], [40, 41, 0, 0, 0]])
PROMPT_MASK = (PROMPT_IDS != 0).long()


def greedy(max_new_tokens: int = 8, eos: tuple[int, ...] = (1,)) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=max_new_tokens, eos_token_ids=eos, pad_token_id=0, top_k=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The tiny model with seeded random weights, saved as safetensors."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-h32"))


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """`alignment vllm-serve` on the tiny model, default host; the process tree is killed at the end."""
    with running_server(model_dir, tmp_path_factory.mktemp("server") / "server.log") as server:
        yield server


@pytest.fixture(scope="module")
def engine(server):
    engine = VLLMServerEngine(server["url"], timeout_s=30, device="cpu", group_port=free_port())
    yield engine
    engine.close()


@pytest.fixture
def model(model_dir):
    """The served weights in this process, in float32 like the server's."""
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def native(model, settings: GenerationSettings, k: int = 2):
    return NativeEngine().generate([POLICY] * k, PROMPT_IDS, PROMPT_MASK, settings, policy=ModelStream(model))


def assert_same_samples(served, ours) -> None:
    assert served.completion_ids.tolist() == ours.completion_ids.tolist()
    assert served.completion_mask.tolist() == ours.completion_mask.tolist()
    assert served.finished.tolist() == ours.finished.tolist()
    mask = ours.completion_mask.bool()
    assert (served.logprobs - ours.logprobs)[mask].abs().max().item() < LOGPROB_ATOL


@torch.no_grad()
def teacher_forced_logprobs(model, samples) -> torch.Tensor:
    """Each sampled token's log-prob under `model`, before temperature and filters."""
    out = torch.zeros_like(samples.logprobs)
    for b, (ids, mask) in enumerate(zip(PROMPT_IDS, PROMPT_MASK, strict=True)):
        prompt = ids[mask.bool()]
        for k in range(samples.completion_ids.size(1)):
            n = int(samples.completion_mask[b, k].sum())
            completion = samples.completion_ids[b, k, :n]
            logits = model(input_ids=torch.cat([prompt, completion])[None]).logits[0].float()
            logprobs = logits[len(prompt) - 1 : -1].log_softmax(-1)
            out[b, k, :n] = logprobs.gather(-1, completion[:, None])[:, 0]
    return out


def test_greedy_and_logprobs_equal_the_native_engine(engine, model):
    assert engine.info["dtype"] == "float32" and engine.info["config"]["head_dim"] == 32
    served = engine.generate([POLICY, POLICY], PROMPT_IDS, PROMPT_MASK, greedy())
    ours = native(model, greedy())
    assert served.completion_ids.shape == (3, 2, 8)
    assert_same_samples(served, ours)
    # An EOS met mid-completion: kept as the last token, the row finished, as natively.
    eos = int(ours.completion_ids[1, 0, 2])
    served, ours = (
        engine.generate([POLICY, POLICY], PROMPT_IDS, PROMPT_MASK, greedy(eos=(eos,))),
        native(model, greedy(eos=(eos,))),
    )
    assert ours.finished.any() and not ours.finished.all()
    assert_same_samples(served, ours)
    # Sampled at temperature 1.5 with top-p: the log-probs are still the model's own (raw).
    settings = GenerationSettings(max_new_tokens=8, eos_token_ids=(1,), pad_token_id=0, temperature=1.5, top_p=0.9)
    sampled = engine.generate([POLICY] * 3, PROMPT_IDS, PROMPT_MASK, settings)
    mask = sampled.completion_mask.bool()
    assert mask.sum() > 0
    assert (sampled.logprobs - teacher_forced_logprobs(model, sampled))[mask].abs().max().item() < LOGPROB_ATOL
    # Policy samples only: the mixture needs the reference in the server.
    with pytest.raises(ValueError, match="reference sampler"):
        engine.check_samplers([POLICY, REFERENCE])


def test_load_weights_changes_generation_to_the_new_weights(engine, model):
    before = native(model, greedy())
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    after = native(model, greedy())
    assert after.completion_ids.tolist() != before.completion_ids.tolist()

    metrics = engine.load_weights(model.state_dict().items())  # checksums compared inside
    assert metrics["online/engine/sync_seconds"] > 0
    assert_same_samples(engine.generate([POLICY, POLICY], PROMPT_IDS, PROMPT_MASK, greedy()), after)
    # The checksums it compared: the server's model holds the new embedding and norm.
    sums = engine._post("/checksum", {"names": ["model.embed_tokens.weight", "model.norm.weight"]})["checksums"]
    for name in sums:
        own = checksum(model.state_dict()[name])
        assert sums[name]["received"] == pytest.approx(own, rel=1e-9)
        assert sums[name]["model"] == pytest.approx(own, rel=1e-9)


def test_a_transport_that_delivers_nothing_fails_the_checksum(engine, model, monkeypatch):
    send = engine._send
    # The server receives zeros of the right size instead of the weights.
    monkeypatch.setattr(engine, "_send", lambda buffer, answer: send(torch.zeros_like(buffer), answer))
    with pytest.raises(RuntimeError, match=r"model\.embed_tokens\.weight differs on the server \(received: sum 0\.0"):
        engine.load_weights(model.state_dict().items())
    monkeypatch.undo()
    # A good sync afterwards restores the server's weights.
    engine.load_weights(model.state_dict().items())
    assert_same_samples(engine.generate([POLICY, POLICY], PROMPT_IDS, PROMPT_MASK, greedy()), native(model, greedy()))


@pytest.mark.parametrize("url", ["http://127.0.0.1:{port}", "not-a-url"])
def test_no_server_is_a_one_line_error(url):
    url = url.format(port=free_port())
    start = time.monotonic()
    with pytest.raises(ValueError) as err:
        VLLMServerEngine(url, timeout_s=1.0, device="cpu")
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert "\n" not in message and url in message and "alignment vllm-serve --model" in message


def test_a_server_without_the_mixture_refuses_nash_md_in_one_line(server, tmp_path):
    """The recipe loads (the server is not known then); the trainer's engine refuses the
    mixture sampler at its start, naming the server and how to start it."""
    overrides = [
        f"--training.output_dir={tmp_path}",
        "--model.config=recipes/tiny/model-h32",
        "--online.engine=vllm",
        "--online.vllm_mode=server",
        f"--online.vllm_server_base_url={server['url']}",
        "--training.max_steps=1",
        "--training.eval_on_start=false",
        "--training.eval_strategy=no",
    ]
    with pytest.raises(ValueError) as err:
        train(load_config(ROOT / "recipes" / "tiny" / "nash_md.yaml", overrides))
    message = str(err.value)
    assert "\n" not in message and server["url"] in message and "alignment vllm-serve --mixture" in message
    assert "mixture sampler needs the reference" in message


def test_serves_on_localhost_by_default(server):
    listening = [
        c.laddr
        for c in psutil.Process(server["process"].pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == server["port"]
    ]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening)
    assert f"on http://127.0.0.1:{server['port']}" in server["log"].read_text()


def test_sigterm_stops_the_server_cleanly(server, engine):
    engine.close()  # the engine's transport first, as a trainer does at the end
    process = server["process"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
