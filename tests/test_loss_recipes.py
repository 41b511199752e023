"""The tiny recipe of every loss that TRL's trainers offer beyond DPO/IPO/rDPO/hinge:
each learns the held-out pairs to eval_reward_accuracy >= 0.75. In-process (the launch
path is tested by test_train_e2e.py)."""

from __future__ import annotations

import pytest

from alignment.config import load_config
from tests.launch import ROOT, run_recipe

pytestmark = pytest.mark.slow

WITH_REFERENCE = [
    *("exo_pair", "nca_pair", "bco_pair", "sppo_hard", "apo_zero", "apo_down"),
    *("discopop", "sigmoid_norm", "aot", "aot_unpaired", "kto", "kto_unpaired"),
]
REFERENCE_FREE = ["simpo", "cpo", "orpo", "sft"]


@pytest.mark.parametrize("recipe", WITH_REFERENCE + REFERENCE_FREE)
def test_recipe_learns_the_held_out_pairs(recipe, tmp_path):
    config = load_config(ROOT / "recipes" / "tiny" / f"{recipe}.yaml", [f"--training.output_dir={tmp_path}"])
    assert config.loss[0].name == recipe.removesuffix("_unpaired") or recipe == "aot_unpaired"
    assert (config.reference.type == "none") == (recipe in REFERENCE_FREE)
    start, final = run_recipe(recipe, tmp_path / recipe)
    if recipe in WITH_REFERENCE:  # step 0: the policy is the reference, every implicit reward ties
        assert start["eval_reward_accuracy"] == 0.5
    assert final["eval_reward_accuracy"] >= 0.75
