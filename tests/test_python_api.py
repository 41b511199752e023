"""The Python API: `alignment.train` / `alignment.load_config` against the command line
they stand for, and trainers built from objects (a model, a tokenizer, raw rows in a
`datasets.Dataset`, the training arguments and a loss) against the recipe run with the
same settings, step by step. docs/python-api.md and examples/notebook.py show both."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from datasets import Dataset
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import alignment
from alignment.cli import train_main
from alignment.config import load_config as cli_load_config
from alignment.config import split_args
from alignment.data import BadRowError, DataError
from alignment.reference import FrozenModel, NoReference, PolicyBase
from tests.helpers import ROOT, TINY
from tests.launch import ENV, log_history, logged

DPO = "recipes/tiny/dpo.yaml"
# What differs between two identical runs: the wall-clock measurements.
TIMINGS = re.compile(r"runtime|per_second")


def untimed(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if not TIMINGS.search(key)}


def read_rows(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(ROOT / path).read_text().splitlines()]


def tiny_causal_lm(seed: int = 0) -> torch.nn.Module:
    """The tiny recipes' model as a user builds it with transformers: random weights, seeded."""
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(TINY / "model")))


def cli(recipe: str, out: Path, *overrides: str) -> None:
    """`alignment train --config recipes/tiny/<recipe>.yaml ...`, in this process."""
    status = train_main(["--config", f"recipes/tiny/{recipe}.yaml", f"--training.output_dir={out}", *overrides])
    assert status == 0


# ----------------------------------------------------------------------------- import alignment


def test_import_alignment_loads_nothing_heavy_and_exports_on_first_use():
    code = (
        "import sys, alignment\n"
        "from alignment.cli import main\n"
        "main(['--help'])\n"
        "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'alignment.config', 'alignment.api') "
        "if m in sys.modules))\n"
        "alignment.PreferenceTrainer\n"
        "print('transformers.trainer' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, check=True)
    assert proc.stdout.strip().splitlines()[-2:] == ["[]", "True"]


def test_the_exports_are_the_library_objects():
    from alignment.api import load_config, train
    from alignment.losses import get_loss
    from alignment.trainers.arguments import AlignmentTrainingArguments
    from alignment.trainers.online import OnlineTrainer
    from alignment.trainers.preference import PreferenceTrainer

    assert alignment.train is train and alignment.load_config is load_config
    assert alignment.PreferenceTrainer is PreferenceTrainer and alignment.OnlineTrainer is OnlineTrainer
    assert alignment.AlignmentTrainingArguments is AlignmentTrainingArguments and alignment.get_loss is get_loss
    assert {"train", "load_config", "PreferenceTrainer", "ConfigError"} <= set(dir(alignment))
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        alignment.trian  # noqa: B018


# ----------------------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    "recipe, overrides, argv",
    [
        ("dpo", {"loss": {"name": "ipo", "tau": 0.5}}, ["--loss.name=ipo", "--loss.tau=0.5"]),  # beta dropped
        (
            "dpo",
            {"training": {"learning_rate": 1e-3, "max_steps": 3, "output_dir": "outputs/api-x", "report_to": "none"}},
            [
                "--training.learning_rate=1e-3",
                "--training.max_steps=3",
                "--training.output_dir=outputs/api-x",
                "--training.report_to=none",
            ],
        ),
        (
            "dpo",
            {"data": {"train": ["recipes/tiny/data/lists_train.jsonl"], "max_length": 64}},
            ["--data.train=[recipes/tiny/data/lists_train.jsonl]", "--data.max_length=64"],
        ),
        ("dpo", {"reference": "none", "loss": {"name": "simpo"}}, ["--reference=none", "--loss.name=simpo"]),
        (
            "dpo",
            {"reference": {"update": {"every": 5, "alpha": 0.5}}},
            ["--reference.update.every=5", "--reference.update.alpha=0.5"],
        ),
        ("dpo", {"data": {"chat_template": "a: 1e-3"}}, ["--data.chat_template='a: 1e-3'"]),  # stays a string
        ("sppo", {"evaluation": None}, ["--evaluation=null"]),
    ],
)
def test_overrides_are_the_command_lines(recipe, overrides, argv):
    path = f"recipes/tiny/{recipe}.yaml"
    expected = cli_load_config(*split_args(["--config", path, *argv])).resolved
    assert alignment.load_config(path, **overrides).resolved == expected
    assert alignment.load_config(ROOT / path, **overrides).resolved == expected  # a Path
    as_mapping = yaml.safe_load((ROOT / path).read_text())
    assert alignment.load_config(as_mapping, **overrides).resolved == expected  # the recipe as a dict


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"training": {"learnin_rate": 0.1}}, "training: unknown key 'learnin_rate'.*similar keys: learning_rate"),
        ({"loss": {"name": "ipo", "beta": 0.5}}, "loss 'ipo' has no parameter 'beta'.*tau"),
        ({"loss": {"beta": -1.0}}, "loss: dpo: beta must satisfy beta > 0, got -1.0"),
        ({"lossy": {"beta": 0.2}}, "unknown section 'lossy'"),
        ({"loss": "ipo"}, "override loss='ipo': a section's keys are given as a mapping"),
        ({"model": None}, "`model` is required and cannot be removed"),
        ({"online": {"judge": print}}, "online.judge: builtin_function_or_method values cannot go in a recipe"),
    ],
)
def test_a_bad_override_raises_naming_the_key_and_writes_nothing(overrides, message, tmp_path):
    out = tmp_path / "out"
    training = {"output_dir": str(out), **overrides.pop("training", {})}
    with pytest.raises(alignment.ConfigError, match=message):
        alignment.train(DPO, training=training, **overrides)
    assert not out.exists()


def test_an_error_found_once_the_run_started_is_raised_and_leaves_no_output_directory(tmp_path):
    """Unpaired rows for a pairwise loss fail when the data is read, after the recipe
    loaded: the notebook gets the DataError, and the output directory is removed again."""
    out = tmp_path / "out"
    with pytest.raises(DataError, match="unpaired_train.jsonl: it is unpaired"):
        alignment.train(
            DPO, data={"train": ["recipes/tiny/data/unpaired_train.jsonl"]}, training={"output_dir": str(out)}
        )
    assert not out.exists()


def test_a_loaded_config_trains_as_it_is_and_takes_no_overrides():
    config = alignment.load_config(DPO)
    assert alignment.load_config(config) is config
    with pytest.raises(alignment.ConfigError, match="pass the recipe, not a loaded Config"):
        alignment.load_config(config, loss={"beta": 0.2})


# ----------------------------------------------------------------------------- alignment.train


def test_train_is_the_command_line_run(tmp_path):
    """Same metrics (every float equal), same files with the same results, same log."""
    steps = ["--training.max_steps=4", "--training.logging_steps=1"]
    cli("dpo", tmp_path / "cli", *steps)
    metrics = alignment.train(DPO, training={"output_dir": str(tmp_path / "api"), "max_steps": 4, "logging_steps": 1})

    cli_dir, api_dir = tmp_path / "cli", tmp_path / "api"
    written = json.loads((cli_dir / "all_results.json").read_text())
    assert untimed(metrics) == untimed(written)
    assert 0.0 < metrics["eval_loss"] < 0.6931  # it trained: below ln 2, where the policy is the reference
    assert sorted(p.name for p in api_dir.iterdir()) == sorted(p.name for p in cli_dir.iterdir())
    for name in ("eval_results.json", "train_results.json"):
        assert untimed(json.loads((api_dir / name).read_text())) == untimed(json.loads((cli_dir / name).read_text()))
    assert logged(api_dir) == logged(cli_dir) and len(logged(api_dir)) == 4
    assert [untimed(e) for e in log_history(api_dir)] == [untimed(e) for e in log_history(cli_dir)]
    resolved = (api_dir / "alignment_config.yaml").read_text().replace(str(api_dir), str(cli_dir))
    assert resolved == (cli_dir / "alignment_config.yaml").read_text()


# ----------------------------------------------------------------------------- trainers from objects


def objects_like(recipe: str, out: Path, steps: int):
    """The recipe's run as a user writes it from objects: transformers' model and tokenizer,
    the data files' rows in a `datasets.Dataset`, the loss from `get_loss` and the recipe's
    training values as `AlignmentTrainingArguments`. No reference is given."""
    config = alignment.load_config(f"recipes/tiny/{recipe}.yaml")
    (spec,) = config.loss
    (train_source,), (test_source,) = config.data.train, config.data.test
    training = {**config.training, "output_dir": str(out), "max_steps": steps, "logging_steps": 1}
    trainer = alignment.PreferenceTrainer(
        model=tiny_causal_lm(config.model.init_seed),
        args=alignment.AlignmentTrainingArguments(**{**training, "eval_on_start": False}),
        loss_fn=alignment.get_loss(spec.name, **spec.params),
        train_dataset=Dataset.from_list(read_rows(train_source.path)),
        eval_dataset=Dataset.from_list(read_rows(test_source.path)),
        processing_class=AutoTokenizer.from_pretrained(str(TINY / "tokenizer")),
        data_config={"max_length": config.data.max_length, "max_prompt_length": config.data.max_prompt_length},
    )
    return trainer


@pytest.mark.parametrize(
    "recipe, reference",
    [
        ("dpo", FrozenModel),  # prompt/chosen/rejected; the default reference is a frozen copy
        ("listmle", FrozenModel),  # ranked lists of 4
        ("kto_unpaired", FrozenModel),  # unpaired rows (prompt, completion, label), KTO's KL baseline
        ("simpo", NoReference),  # a reference-free loss gets none
    ],
)
def test_a_trainer_from_objects_is_the_recipe_run(recipe, reference, tmp_path):
    steps = 4
    cli(recipe, tmp_path / "cli", f"--training.max_steps={steps}", "--training.logging_steps=1")
    trainer = objects_like(recipe, tmp_path / "objects", steps)
    assert type(trainer.reference) is reference
    if reference is FrozenModel:  # a copy of the initial weights, not the policy itself
        assert trainer.reference.model is not trainer.model
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == steps and losses == logged(tmp_path / "cli")  # every step, to the last bit
    written = json.loads((tmp_path / "cli" / "eval_results.json").read_text())
    assert untimed(trainer.evaluate()) == untimed(written)


def test_the_default_reference_of_a_peft_model_is_its_base_without_a_copy(tmp_path):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_causal_lm(), peft.LoraConfig(r=4, target_modules="all-linear"))
    trainer = alignment.PreferenceTrainer(
        model=model,
        args=alignment.AlignmentTrainingArguments(output_dir=str(tmp_path), report_to="none"),
        loss_fn=alignment.get_loss("dpo"),
        processing_class=AutoTokenizer.from_pretrained(str(TINY / "tokenizer")),
    )
    assert type(trainer.reference) is PolicyBase and trainer.reference.is_initial


def test_raw_rows_are_checked_as_a_recipes_are(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(str(TINY / "tokenizer"))

    def build(rows: list[dict], loss: str = "dpo", **kwargs):
        return alignment.PreferenceTrainer(
            model=tiny_causal_lm(),
            args=alignment.AlignmentTrainingArguments(output_dir=str(tmp_path), report_to="none"),
            loss_fn=alignment.get_loss(loss),
            train_dataset=Dataset.from_list(rows),
            **{"processing_class": tokenizer, **kwargs},
        )

    pairs = read_rows("recipes/tiny/data/pairs_train.jsonl")[:8]
    with pytest.raises(ValueError, match="train_dataset holds raw rows: pass the tokenizer"):
        build(pairs, processing_class=None)
    with pytest.raises(DataError, match=r"train_dataset\[train\]: it is unpaired.*get_loss\('kto'\)"):
        build(read_rows("recipes/tiny/data/unpaired_train.jsonl")[:8])
    bad = [*pairs[:3], {**pairs[3], "chosen": pairs[3]["rejected"]}, *pairs[4:]]  # a tie: nothing to learn
    with pytest.raises(BadRowError, match=r"bad row 3 in train_dataset\[train\]"):
        build(bad)
    # `bad_rows: skip` as in a recipe: the row is dropped and the rest tokenized.
    assert len(build(bad, data_config={"bad_rows": "skip"}).train_dataset) == len(pairs) - 1
    # Columns renamed as a recipe source's `columns:` does.
    renamed = [{"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"]} for r in pairs]
    columns = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    ours = build(renamed, data_config={"train": [{"path": "rows", "columns": columns}]}).train_dataset
    assert ours[:] == build(pairs).train_dataset[:]


# ----------------------------------------------------------------------------- online, from objects


def closeness(prompts, completions, **kwargs):
    """alignment.tasks.arithmetic:reward as a user writes it: TRL's keyword form."""
    from alignment.tasks.arithmetic import MAX_DISTANCE, distance, true_sum

    return [max(-1.0, MAX_DISTANCE - distance(y, true_sum(p))) for p, y in zip(prompts, completions, strict=True)]


@pytest.mark.parametrize("judge", ["function", "online.judge"])
def test_an_online_trainer_from_objects_is_the_recipe_run(judge, tmp_path):
    """RLOO: prompts in a Dataset, the reward as a Python function (or named by
    `online.judge`), K = 4 samples; every step's loss and mean reward equal the recipe's."""
    steps = 3
    overrides = ["--training.logging_steps=1", "--training.eval_on_start=false", "--data.test=[]"]
    cli("rloo", tmp_path / "cli", f"--training.max_steps={steps}", *overrides)
    config = alignment.load_config("recipes/tiny/rloo.yaml")
    online = {"num_samples": 4, "max_new_tokens": 3}
    given = {"judge": closeness, "online": online}
    if judge == "online.judge":
        given = {
            "online": alignment.OnlineConfig(
                judge=alignment.JudgeConfig("reward_function", "tests.test_python_api:closeness"), **online
            )
        }
    prompts = [{"prompt": row["prompt"]} for row in read_rows("recipes/tiny/data/pairs_train.jsonl")]
    trainer = alignment.OnlineTrainer(
        model=tiny_causal_lm(),
        args=alignment.AlignmentTrainingArguments(
            **{**config.training, "output_dir": str(tmp_path / "objects"), "max_steps": steps, "logging_steps": 1}
            | {"eval_on_start": False}
        ),
        loss_fn=alignment.get_loss("rloo", beta=0.05),
        train_dataset=Dataset.from_list(prompts),
        processing_class=AutoTokenizer.from_pretrained(str(TINY / "tokenizer")),
        data_config={"max_prompt_length": 16},
        **given,
    )
    assert type(trainer.reference) is FrozenModel  # rloo's KL term reads it
    trainer.train()
    ours = [(e["loss"], e["online/reward"]) for e in trainer.state.log_history if "loss" in e]
    recipe = list(zip(logged(tmp_path / "cli"), logged(tmp_path / "cli", "online/reward"), strict=True))
    assert len(ours) == steps and ours == recipe


def test_a_list_of_reward_functions_is_summed_and_each_is_logged_under_its_name():
    from alignment.trainers.online import judge_from, online_settings

    def length(completions, **kwargs):
        return [float(len(c)) for c in completions]

    functions = [closeness, length, lambda completions, **kwargs: [1.0] * len(completions)]
    online = online_settings({"num_samples": 4}, functions)
    here = f"{closeness.__module__}:test_a_list_of_reward_functions_is_summed_and_each_is_logged_under_its_name"
    assert [(j.type, j.function) for j in online.judge] == [  # the resolved settings name each function
        ("reward_function", f"{closeness.__module__}:closeness"),
        ("reward_function", f"{here}.<locals>.length"),
        ("reward_function", f"{here}.<locals>.<lambda>"),
    ]
    judge = judge_from(functions, online, "cpu")
    assert judge.names == ["closeness", "length", "<lambda>"]
    prompts, completions = ["3+4=", "3+4=", "1+1="], ["7", "9", "x"]
    expected = [a + b + 1.0 for a, b in zip(closeness(prompts, completions), length(completions), strict=True)]
    assert judge.rewards(prompts, completions).tolist() == expected
    assert judge_from([length, length], online, "cpu").names == ["length_1", "length_2"]


# ----------------------------------------------------------------------------- the notebook


@pytest.mark.slow
def test_the_notebook_script_trains_top_to_bottom():
    """examples/notebook.py, run as a user runs it; its printed metrics are the files' and
    the object-built run's are the recipe's."""
    proc = subprocess.run(
        [sys.executable, "examples/notebook.py"], cwd=ROOT, env=ENV, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    printed = dict(re.findall(r"^(trained \w+|loaded recipe|config error): (.*)$", proc.stdout, re.M))
    recipe = dict(re.findall(r"(\w+)=(\S+)", printed["trained recipe"]))
    written = json.loads((ROOT / "outputs" / "notebook" / "ipo" / "eval_results.json").read_text())
    assert {key: float(value) for key, value in recipe.items()} == {
        "eval_loss": written["eval_loss"],
        "eval_reward_accuracy": written["eval_reward_accuracy"],
    }
    assert printed["trained objects"] == printed["trained recipe"]  # the same run, from objects
    assert (
        "loss 'ipo' has no parameter 'beta'" in printed["config error"]
        and "tau (default 0.1)" in printed["config error"]
    )
    assert printed["loaded recipe"] == "loss=dpo beta=0.2 reference=model"
    online = {key: float(value) for key, value in re.findall(r"(\w+)=(\S+)", printed["trained online"])}
    assert online["last_reward"] > online["first_reward"] + 0.1  # 6 steps of RLOO move the mean reward
