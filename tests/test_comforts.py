"""`alignment validate`, `alignment plot` and the model card, on the tiny recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignment.validate import histogram, tied_pairs
from tests.helpers import write_jsonl
from tests.launch import run, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-dpo")
    train(
        "dpo",
        out,
        "--training.max_steps=40",
        "--training.logging_steps=10",
        "--training.eval_strategy=steps",
        "--training.eval_steps=20",
    )
    return out


def test_plot_writes_a_png_with_the_expected_panels(tiny_run):
    from PIL import Image

    proc = run(["alignment", "plot", str(tiny_run)])
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path == tiny_run / "training_curves.png"
    image = Image.open(path)
    assert image.format == "PNG" and image.size == (800, 560)  # 2 x 2 panels of 5 x 3.5 inches at 80 dpi
    assert image.text["Description"] == "panels: loss; reward margin; reward accuracy; learning rate"
    # Every quadrant holds a drawn panel (its pixels are not all one colour).
    gray = image.convert("L")
    w, h = gray.size
    for box in [(0, 0, w // 2, h // 2), (w // 2, 0, w, h // 2), (0, h // 2, w // 2, h), (w // 2, h // 2, w, h)]:
        low, high = gray.crop(box).getextrema()
        assert high - low > 100, box


def test_plot_of_a_directory_without_a_run_fails_clearly(tmp_path):
    proc = run(["alignment", "plot", str(tmp_path)], check=False)
    assert proc.returncode == 2 and "no trainer_state.json" in proc.stdout


def test_model_card(tiny_run):
    card = (tiny_run / "README.md").read_text()
    results = json.loads((tiny_run / "eval_results.json").read_text())
    assert card.startswith("---\nlibrary_name: alignment\n")
    assert "built from recipes/tiny/model (random weights, init_seed 0)" in card
    assert "| loss | 1 x `dpo` {'beta': 0.1} |" in card
    assert "| training data | recipes/tiny/data/pairs_train.jsonl |" in card
    assert f"| eval_reward_accuracy | {results['eval_reward_accuracy']:.6g} |" in card


def test_validate_the_tiny_recipe():
    proc = run(["alignment", "validate", "--config", "recipes/tiny/lipo.yaml"])
    out = proc.stdout
    assert "config: OK (loss 1 * lipo({'beta': 0.05}); reference model; online no)" in out
    assert "train: 4000 lists (K=4: 4000)" in out
    assert "train: completion tokens (min 2, median 2, p95 3, max 3)" in out  # one or two digits + EOS
    assert "result: ready to train" in out


def test_validate_counts_every_bad_row_and_fails(tmp_path):
    rows = [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}] * 3
    rows[1] = {"prompt": "1+1=", "chosen": "2"}
    rows.append({"prompt": "1+2=", "chosen": "", "rejected": "3"})
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    proc = run(
        ["alignment", "validate", "--config", "recipes/tiny/dpo.yaml", f"--data.train=[{path}]", "--data.test=[]"],
        check=False,
    )
    assert proc.returncode == 1
    assert "bad rows: empty_completion=1, missing_column=1 -- training stops at the first one" in proc.stdout
    assert "result: the recipe's data would stop training" in proc.stdout


def test_validate_config_errors_exit_2():
    proc = run(["alignment", "validate", "--config", "recipes/tiny/dpo.yaml", "--loss.beta=-1"], check=False)
    assert proc.returncode == 2 and "beta must satisfy beta > 0" in proc.stderr


def test_histogram_and_ties():
    assert histogram([1, 1, 2, 9], bins=2, width=4) == ["  [    1,     5]       3 ####", "  [    6,     9]       1 #"]
    assert tied_pairs([[1.0, 1.0, 0.0], [2.0, 1.0]]) == (1, 4)
