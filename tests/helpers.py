"""Shared test helpers: the tiny model and tokenizer, and collated batches from rows."""

from __future__ import annotations

import json
import math
import string
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from alignment.config import DataConfig, ModelConfig, SourceConfig
from alignment.data import PreferenceCollator, build_datasets
from alignment.losses import SequenceLogps
from alignment.models import load_policy, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny"


# The tiny tokenizer's ids, written out by hand: 6 special tokens, then one token per character.
PAD, EOS, SYSTEM, USER, ASSISTANT = 0, 1, 3, 4, 5
TINY_CHARS = [c for c in string.printable if c not in "\r\x0b\x0c"]


# Float32 results are compared in units of float32 precision relative to their size: an
# absolute 1e-6 is 2 ulps on a log-prob of -13.5 but 1e5 ulps on a probability of 1e-4.
FLOAT32_EPS = torch.finfo(torch.float32).eps  # 2**-23


def float32_approx(expected, ulps: float = 8):
    """`pytest.approx` within `ulps` float32 units of the expected value's own size."""
    return pytest.approx(expected, rel=ulps * FLOAT32_EPS, abs=0.0)


def assert_float32_close(actual: torch.Tensor, expected: torch.Tensor, ulps: float = 8) -> None:
    """Tensors equal to `ulps` float32 units: of each element, and of the tensor's largest
    magnitude (so that elements that cancel to near zero are held to the scale of the
    terms that produced them)."""
    scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=ulps * FLOAT32_EPS, atol=ulps * FLOAT32_EPS * scale)


def char_ids(text: str) -> list[int]:
    return [6 + TINY_CHARS.index(c) for c in text]


def tiny_model_config(seed: int = 0) -> ModelConfig:
    return ModelConfig(config=str(TINY / "model"), tokenizer=str(TINY / "tokenizer"), init_seed=seed)


def tiny_tokenizer():
    return load_tokenizer(tiny_model_config())


def tiny_model(seed: int = 0) -> torch.nn.Module:
    return load_policy(tiny_model_config(seed))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tokenized(rows: list[dict], tmp_path: Path, unpaired: bool = False, **data_kwargs):
    """Rows -> tokenized dataset through the real pipeline (file source, adapters, map);
    `unpaired` admits single-completion rows, as for KTO."""
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    cfg = DataConfig(train=[SourceConfig(path=str(path))], **data_kwargs)
    return build_datasets(cfg, tiny_tokenizer(), unpaired=unpaired).train


def collate(dataset) -> dict[str, torch.Tensor]:
    return PreferenceCollator(pad_token_id=tiny_tokenizer().pad_token_id)([dataset[i] for i in range(len(dataset))])


def tiny_rows(kind: str = "pairs", split: str = "train", n: int = 8) -> list[dict]:
    lines = (TINY / "data" / f"{kind}_{split}.jsonl").read_text().splitlines()[:n]
    return [json.loads(line) for line in lines]


def trl_cpu_args(config_class, output_dir: Path, batch_size: int, **kwargs):
    """A TRL trainer config for an oracle run: CPU, float32 (TRL defaults to bf16 and
    gradient checkpointing), one batch of `batch_size` rows, no truncation."""
    return config_class(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch_size,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        max_length=None,
        **kwargs,
    )


def trl_dpo_trainer(
    policy, reference, rows: list[dict], tokenizer, output_dir: Path, loss_type: str | list[str], **kwargs
):
    """TRL's DPOTrainer, the oracle, on CPU in float32 with `rows` as one batch and no
    truncation (DPOConfig defaults to bf16 and gradient checkpointing). `loss_type` may
    be a list (TRL's weighted sum of loss types)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    loss_types = [loss_type] if isinstance(loss_type, str) else loss_type
    args = trl_cpu_args(DPOConfig, output_dir, len(rows), loss_type=loss_types, **kwargs)
    dataset = Dataset.from_list(rows)
    return DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=dataset, processing_class=tokenizer)


def batch_logps(policy, reference, batch: dict[str, torch.Tensor], reads=frozenset({"reference"})):
    """Our loss input for a collated batch (no grad) through the trainer's own providers
    (`alignment.trainers.inputs.loss_inputs`), for a loss that reads `reads`: the
    reference's log-probs, and per-token log-probs or WPO's weights when read."""
    from types import SimpleNamespace

    from alignment.logprobs import policy_forward, sequence_logps
    from alignment.trainers.inputs import loss_inputs

    loss = SimpleNamespace(name="oracle test", reads=frozenset(reads) | {"reference"})

    def forward(model, inputs, **options):
        return policy_forward(model, inputs, **options)

    def reference_logps(model, inputs, per_token):
        return sequence_logps(reference, inputs, per_token=per_token)

    with torch.no_grad():
        return loss_inputs(None, loss, policy, batch, forward, reference_logps)


# ----------------------------------------------------------------------------- bandit models
# One fixed prompt; a completion is one token of a 7-token vocabulary (tests/test_online_bandit.py,
# tests/test_policy_bandits.py).

VOCAB = ["<pad>", "<eos>", "a", "b", "c", "d", "e"]
ANSWERS = ["a", "b", "c", "d", "e", ""]  # "" is no answer: pad or EOS
PROMPT_ID = VOCAB.index("a")


def bandit_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=8,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        initializer_range=0.3,  # a clearly non-uniform mu
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def next_token_distribution(model) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(model(torch.tensor([[PROMPT_ID]])).logits[0, -1].double(), -1)


# ----------------------------------------------------------------------------- hand-sized loss batches
# (tests/test_losses.py, tests/test_trl_losses.py)


def L(x: float) -> float:
    """softplus(-x) = -log sigmoid(x), written independently of the implementation."""
    return math.log1p(math.exp(-x))


def batch(policy, reference, scores, mask=None, lengths=None, dtype=torch.float64) -> SequenceLogps:
    policy = torch.tensor(policy, dtype=dtype, requires_grad=True)
    scores = torch.tensor(scores, dtype=torch.float32)
    return SequenceLogps(
        policy=policy,
        reference=None if reference is None else torch.tensor(reference, dtype=dtype),
        scores=scores,
        mask=torch.ones_like(scores, dtype=torch.bool) if mask is None else torch.tensor(mask),
        lengths=torch.ones_like(scores, dtype=torch.long) if lengths is None else torch.tensor(lengths),
    )


# One pair: r_w = -1 - (-2) = 1, r_l = -3 - (-2.5) = -0.5, h = 1.5; lengths 2 and 5.
PAIR = dict(policy=[[-1.0, -3.0]], reference=[[-2.0, -2.5]], scores=[[1.0, 0.0]], lengths=[[2, 5]])
