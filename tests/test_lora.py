"""LoRA and QLoRA on the tiny model: what trains, the adapter-disabled reference,
4-bit loading on CPU, and merging."""

from __future__ import annotations

import math

import pytest
import torch

from alignment.config import ConfigError, LoraConfig, QuantizationConfig, load_config
from alignment.config.loading import CONFIG_FILENAME
from alignment.logprobs import sequence_logps
from alignment.losses import get_loss
from alignment.models import load_policy
from alignment.reference import PolicyBase
from alignment.tools.merge import merge_adapter
from alignment.trainers.arguments import AlignmentTrainingArguments
from alignment.trainers.preference import PreferenceTrainer
from tests.helpers import (
    TINY,
    assert_float32_close,
    collate,
    float32_approx,
    tiny_model,
    tiny_model_config,
    tiny_rows,
    tiny_tokenizer,
    tokenized,
)

LORA = LoraConfig(r=4, alpha=8, dropout=0.0)
QUANT4 = QuantizationConfig(bits=4, quant_type="nf4", compute_dtype="float32", double_quant=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tokenized(tiny_rows(n=24), tmp_path_factory.mktemp("lora-data"))


def train_steps(
    model, data, out, steps: int = 4, gradient_checkpointing: bool = False, **trainer_kwargs
) -> PreferenceTrainer:
    args = AlignmentTrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=0.05,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
        gradient_checkpointing=gradient_checkpointing,
    )
    trainer = PreferenceTrainer(
        model=model,
        args=args,
        loss_fn=get_loss("dpo", beta=0.1),
        processing_class=tiny_tokenizer(),
        train_dataset=data,
        **trainer_kwargs,
    )
    trainer.train()
    return trainer


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_only_adapter_weights_change_and_reference_is_the_base(data, tmp_path):
    model = load_policy(tiny_model_config(), lora=LORA)
    before = snapshot(model)
    trainer = train_steps(model, data, tmp_path, reference=PolicyBase())
    after = snapshot(model)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    lora_names = {name for name in before if "lora_" in name}
    assert lora_names and changed
    assert changed <= lora_names, f"frozen weights changed: {sorted(changed - lora_names)[:3]}"
    # lora_B starts at zero, so every lora_B must have moved for the policy to move at all.
    assert {n for n in lora_names if "lora_B" in n} <= changed

    batch = collate(data)
    base = tiny_model(seed=0).eval()
    model.eval()
    with torch.no_grad():
        expected = sequence_logps(base, batch)
        with model.disable_adapter():
            disabled = sequence_logps(model, batch)
        adapted = sequence_logps(model, batch)
        from_trainer = trainer.reference_logps(model, batch)
    # The same base weights through the same ops: bit-identical (0 measured); 1/4 unit is
    # within 1e-6 on log-probs up to about 14.
    assert_float32_close(disabled, expected, ulps=0.25)
    # The trainer's forward strategy ("auto": shared_prompt) sums in another order than the baseline.
    assert_float32_close(from_trainer, expected, ulps=4)
    assert (adapted - expected).abs().max() > 1e-3  # the adapters did learn something


def test_adapter_reference_equals_a_separate_reference_copy(data, tmp_path):
    """Both reference kinds see the same base weights, so the same seed gives the same run."""
    live = train_steps(load_policy(tiny_model_config(), lora=LORA), data, tmp_path / "a", ref_model=tiny_model(0))
    adapter = train_steps(load_policy(tiny_model_config(), lora=LORA), data, tmp_path / "b", reference=PolicyBase())
    losses = [[e["loss"] for e in t.state.log_history if "loss" in e] for t in (live, adapter)]
    assert len(losses[0]) == 4
    assert losses[0][0] == float32_approx(math.log(2), ulps=1)
    assert losses[0] == float32_approx(losses[1], ulps=1)


def test_gradient_checkpointing_with_lora_trains(data, tmp_path):
    """Frozen embeddings feed checkpointed blocks: without input grads nothing would train."""
    model = load_policy(tiny_model_config(), lora=LORA, gradient_checkpointing=True)
    before = snapshot(model)
    train_steps(model, data, tmp_path, reference=PolicyBase(), gradient_checkpointing=True)
    after = snapshot(model)
    assert all(not torch.equal(before[n], after[n]) for n in before if "lora_B" in n)


def test_4bit_loading_trains_on_cpu(data, tmp_path):
    import bitsandbytes as bnb

    model = load_policy(tiny_model_config(), lora=LORA, quantization=QUANT4)
    linear4 = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers
    assert all(m.weight.quant_type == "nf4" for m in linear4)
    before = snapshot(model)
    trainer = train_steps(model, data, tmp_path, reference=PolicyBase())
    after = snapshot(model)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses[0] == float32_approx(math.log(2), ulps=1)  # policy == reference at step 0
    assert all(torch.isfinite(torch.tensor(losses)))
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all("lora_" in n for n in changed)

    # The quantized base with adapters off is close to the full-precision base: nf4
    # rounds the weights, so the log-probs differ a little but not a lot.
    batch = collate(data)
    model.eval()
    with torch.no_grad(), model.disable_adapter():
        quantized = sequence_logps(model, batch)
    full = sequence_logps(tiny_model(0).eval(), batch)
    gap = (quantized - full).abs().max().item()
    assert 0 < gap < 0.1 * full.abs().max().item()


def test_merged_model_reproduces_the_adapter_model(data, tmp_path):
    model = load_policy(tiny_model_config(), lora=LORA)
    trainer = train_steps(model, data, tmp_path / "run", reference=PolicyBase())
    trainer.save_model(str(tmp_path / "run"))
    config = load_config(
        TINY / "dpo.yaml", [f"--training.output_dir={tmp_path / 'run'}", "--lora.r=4", "--reference.type=adapter"]
    )
    from alignment.config import dump_config

    (tmp_path / "run" / CONFIG_FILENAME).write_text(dump_config(config))
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "run" / "model.safetensors").exists()  # saving writes adapters only

    merge_adapter(tmp_path / "run", tmp_path / "merged")
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    batch = collate(data)
    model.eval()
    with torch.no_grad():
        # (W + BA) x rounds differently from W x + B (A x)
        assert_float32_close(sequence_logps(merged, batch), sequence_logps(model, batch), ulps=4)


def test_lora_config_defaults_and_conflicts(tmp_path):
    out = f"--training.output_dir={tmp_path}"
    cfg = load_config(TINY / "dpo.yaml", [out, "--reference.type=auto", "--lora.r=8"])
    assert cfg.reference.type == "adapter" and cfg.lora.r == 8 and cfg.lora.target_modules == "all-linear"
    assert load_config(TINY / "dpo.yaml", [out, "--lora.enabled=false"]).lora is None
    with pytest.raises(ConfigError, match="quantized weights cannot be fully fine-tuned"):
        load_config(TINY / "dpo.yaml", [out, "--quantization.bits=4"])
    with pytest.raises(ConfigError, match="reference: 'adapter' means the policy with its LoRA adapters disabled"):
        load_config(TINY / "dpo.yaml", [out, "--reference.type=adapter"])
    with pytest.raises(ConfigError, match=r"quantization.bits: 3 is not allowed; allowed values: 4, 8"):
        load_config(TINY / "dpo.yaml", [out, "--lora.r=8", "--quantization.bits=3"])
    with pytest.raises(ConfigError, match=r"lora: unknown key 'rank'; allowed keys: enabled, r, alpha"):
        load_config(TINY / "dpo.yaml", [out, "--lora.rank=8"])
