"""Security: recipes are data, not code; weights load from safetensors only unless a
recipe allows otherwise; remote code stays off unless a recipe turns it on."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from alignment.config import ConfigError, ModelConfig, load_config
from alignment.models import load_policy, load_tokenizer
from tests.helpers import ROOT, TINY, tiny_model


def test_yaml_python_tags_are_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    recipe = (ROOT / "recipes/tiny/dpo.yaml").read_text()
    recipe += f'\nextra: !!python/object/apply:os.system ["touch {marker}"]\n'
    path = tmp_path / "evil.yaml"
    path.write_text(recipe)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    assert not marker.exists()


def test_override_values_are_parsed_safely(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(ROOT / "recipes/tiny/dpo.yaml", [f'--loss.beta=!!python/object/apply:os.system ["touch {marker}"]'])
    assert not marker.exists()


@pytest.fixture(scope="module")
def pickle_checkpoint(tmp_path_factory) -> Path:
    import torch

    directory = tmp_path_factory.mktemp("bin-model")
    model = tiny_model()
    model.config.save_pretrained(directory)  # transformers 5 writes safetensors only: pickle by hand
    torch.save(model.state_dict(), directory / "pytorch_model.bin")
    assert (directory / "pytorch_model.bin").exists() and not list(directory.glob("*.safetensors"))
    return directory


def test_pickle_weights_are_refused_by_default(pickle_checkpoint):
    cfg = ModelConfig(name_or_path=str(pickle_checkpoint), tokenizer=str(TINY / "tokenizer"))
    with pytest.raises(ConfigError, match="has no safetensors weights.*model.allow_unsafe_weights: true"):
        load_policy(cfg)


def test_pickle_weights_load_when_the_recipe_allows_them(pickle_checkpoint):
    cfg = ModelConfig(name_or_path=str(pickle_checkpoint), tokenizer=str(TINY / "tokenizer"), allow_unsafe_weights=True)
    model = load_policy(cfg)
    reference = tiny_model()
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
        assert (p == q).all(), name


def test_remote_code_is_off_by_default_and_named_when_on(caplog):
    assert ModelConfig(config=str(TINY / "model"), tokenizer=str(TINY / "tokenizer")).trust_remote_code is False
    cfg = ModelConfig(config=str(TINY / "model"), tokenizer=str(TINY / "tokenizer"), trust_remote_code=True)
    with caplog.at_level(logging.WARNING):
        load_tokenizer(cfg)
    assert any(
        "trust_remote_code is true" in r.getMessage() and str(TINY / "tokenizer") in r.getMessage()
        for r in caplog.records
    )


def test_the_only_code_a_recipe_names_is_a_judge_function():
    with pytest.raises(ConfigError, match="'module:function'"):
        load_config(ROOT / "recipes/tiny/nash_md.yaml", ["--online.judge=os.system"])
    config = load_config(ROOT / "recipes/tiny/nash_md.yaml")
    assert config.online.judge.function == "alignment.tasks.arithmetic:closer_to_sum"
