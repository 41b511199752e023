"""`alignment validate`, `alignment plot` and the model card, on the tiny recipe."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from alignment.tools.validate import histogram, tied_pairs
from tests.helpers import ROOT, write_jsonl
from tests.launch import run, train

# Each test launches training runs (seconds to a minute each): the full suite runs them, the fast tier does not.
pytestmark = pytest.mark.slow


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
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-generation\n")
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


def test_validate_counts_the_reasons_when_no_row_is_usable(tmp_path, capsys):
    from alignment.tools.validate import validate_main

    rows = [{"prompt": "1+1=", "chosen": "2"}, {"prompt": "1+1=", "chosen": "2", "rejected": "2"}]
    rows.append({"prompt": "1+2=", "chosen": "", "rejected": "3"})
    path = write_jsonl(tmp_path / "all_bad.jsonl", rows)
    status = validate_main(["--config", "recipes/tiny/dpo.yaml", f"--data.train=[{path}]", "--data.test=[]"])
    out = capsys.readouterr().out
    assert status == 1
    counts = "duplicate_completion=1, empty_completion=1, missing_column=1"
    assert f"bad rows: {counts} -- no usable row is left" in out
    assert f"data: FAILS: data.train: no usable rows left in ['{path}'] (skipped: {counts})" in out


def test_validate_runs_the_training_arguments_own_checks(capsys):
    from alignment.tools.validate import validate_main

    overrides = ["--training.load_best_model_at_end=true", "--training.save_strategy=epoch"]
    assert validate_main(["--config", "recipes/tiny/dpo.yaml", *overrides, "--training.eval_strategy=steps"]) == 2
    assert "alignment: config error: training: --load_best_model_at_end requires" in capsys.readouterr().err


def test_validate_config_errors_exit_2():
    proc = run(["alignment", "validate", "--config", "recipes/tiny/dpo.yaml", "--loss.beta=-1"], check=False)
    assert proc.returncode == 2 and "beta must satisfy beta > 0" in proc.stderr


def test_histogram_and_ties():
    assert histogram([1, 1, 2, 9], bins=2, width=4) == ["  [    1,     5]       3 ####", "  [    6,     9]       1 #"]
    assert tied_pairs([[1.0, 1.0, 0.0], [2.0, 1.0]]) == (1, 4)


FAKE_HUB = '''
"""Stands in for the Hub in a subprocess: records create_repo and upload_folder calls."""
import json, os
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub

LOG = Path(os.environ["FAKE_HUB_LOG"])


def _record(entry):
    calls = json.loads(LOG.read_text()) if LOG.exists() else []
    LOG.write_text(json.dumps(calls + [entry]))


def create_repo(self, repo_id, token=None, private=None, exist_ok=False, **kwargs):
    _record({"call": "create_repo", "repo_id": repo_id})
    return SimpleNamespace(repo_id=repo_id)


def upload_folder(self, repo_id, folder_path, commit_message=None, run_as_future=False, **kwargs):
    folder = Path(folder_path)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    readme = (folder / "README.md").read_text() if (folder / "README.md").exists() else None
    _record({"call": "upload_folder", "repo_id": repo_id, "commit_message": commit_message, "files": files,
             "ignore_patterns": kwargs.get("ignore_patterns"), "readme": readme})
    if run_as_future:
        future = Future()
        future.set_result(None)
        return future
    return SimpleNamespace(commit_url="https://example.invalid/commit")


huggingface_hub.HfApi.create_repo = create_repo
huggingface_hub.HfApi.upload_folder = upload_folder
'''


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_push_to_hub_uploads_the_run_with_our_model_card(lora, tmp_path):
    """`training.push_to_hub` works as in transformers (the repo is created when the
    trainer starts, the output directory is uploaded at the end), and the card uploaded
    is ours, not transformers' generic one. The Hub is replaced by a recorder."""
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / "sitecustomize.py").write_text(FAKE_HUB)
    log = tmp_path / "hub.json"
    out = tmp_path / "run"
    extra = ["--lora.r=4", "--lora.target_modules=all-linear"] if lora else []
    train(
        "dpo",
        out,
        "--training.max_steps=6",
        "--training.save_strategy=no",
        "--training.push_to_hub=true",
        "--training.hub_model_id=me/tiny-dpo",
        *extra,
        env={"PYTHONPATH": f"{boot}{os.pathsep}{ROOT}", "FAKE_HUB_LOG": str(log)},
    )
    calls = json.loads(log.read_text())
    assert [c["call"] for c in calls] == ["create_repo", "upload_folder"]  # one push, at the end
    push = calls[1]
    assert push["repo_id"] == "me/tiny-dpo" and push["commit_message"] == "End of training"
    weights = "adapter_model.safetensors" if lora else "model.safetensors"
    assert {weights, "README.md", "alignment_config.yaml", "eval_results.json", "tokenizer.json"} <= set(push["files"])
    # Weights as safetensors only (transformers' training_args.bin is its arguments, not weights).
    assert not any(f.endswith("model.bin") for f in push["files"])
    card = push["readme"]
    assert card == (out / "README.md").read_text()
    assert card.startswith(f"---\nlibrary_name: {'peft' if lora else 'transformers'}\n")
    assert "| loss | 1 x `dpo` {'beta': 0.1} |" in card
    results = json.loads((out / "eval_results.json").read_text())
    assert f"| eval_reward_accuracy | {results['eval_reward_accuracy']:.6g} |" in card
    assert ("| LoRA | r=4" in card) == lora
