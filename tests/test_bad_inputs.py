"""The bad-input suite: each case gives one clear error of an exact class with its key
phrase, before training starts, and writes nothing into the output directory.

Config cases go through `load_config` (recipe + overrides), data cases through the
real data path (`build_datasets` on files written here), and a few through the CLI
in a subprocess, which also checks that no traceback and no output directory appear.
Judge cases live in tests/test_judges.py and tests/test_online.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignment.config import ConfigError, DataConfig, SourceConfig, load_config
from alignment.data import BadRowError, DataError, build_datasets
from tests.helpers import ROOT, tiny_tokenizer, write_jsonl
from tests.launch import train

RECIPES = ROOT / "recipes" / "tiny"

CONFIG_CASES = [
    ("dpo", ["--optimizer.lr=1"], "unknown section 'optimizer'"),
    ("dpo", ["--model.nme=x"], "model: unknown key 'nme'; allowed keys: name_or_path"),
    ("dpo", ["--data.max_length=abc"], "data.max_length: expected an integer, got 'abc'"),
    ("dpo", ["--data.max_length=12.5"], "data.max_length: expected an integer, got 12.5"),
    ("dpo", ["--training.learning_rat=1"], "training: unknown key 'learning_rat'"),
    ("dpo", ["--loss.name=dpoo"], "unknown loss 'dpoo'; available losses:"),
    ("rdpo", ["--loss.epsilon=0.7"], "epsilon must satisfy 0 <= epsilon < 0.5, got 0.7"),
    ("dpo", ["--loss.beta=-1"], "beta must satisfy beta > 0"),
    ("dpo", ["--loss.beta=true"], "beta must be a finite number"),
    ("ipo", ["--loss.tau=0"], "tau must satisfy tau > 0"),
    ("dpo", ["--loss.label_smoothing=0.5"], "label_smoothing must satisfy 0 <= label_smoothing < 0.5"),
    ("dpo", ["--loss.pairs=random"], "pairs must be one of"),
    ("dpo", ["--loss.gamma=1"], "loss 'dpo' has no parameter 'gamma'"),
    # The weight is checked by the one loss builder on the recipe's path too.
    ("dpo", ["--loss.weight=-1"], "loss: weight must be a finite number >= 0, got -1.0"),
    ("dpo", ["--loss.weight=.nan"], "loss: weight must be a finite number >= 0, got nan"),
    ("dpo", ["--quantization.bits=4"], "quantized weights cannot be fully fine-tuned"),
    ("dpo", ["--reference.type=none"], "needs a reference"),
    ("dpo", ["--reference.type=adapter"], "add a `lora:` section"),
    ("nash_md", ["--reference.type=precompute"], "cannot work online"),
    ("dpo", ["--data.max_prompt_length=40"], "must be smaller than data.max_length (32)"),
    ("dpo", ["--data.test_size=1.5"], "data.test_size must be in [0, 1)"),
    ("dpo", ["--data.train=[missing.jsonl]"], "data source 'missing.jsonl': file not found"),
    ("dpo", ["--data.bad_rows=ignore"], "data.bad_rows: 'ignore' is not allowed; allowed values: 'error', 'skip'"),
    ("dpo", ["--lora.r=0"], "lora.r must be >= 1"),
    ("dpo", ["--training.forward=fast"], "training.forward: 'fast' is not allowed"),
    ("dpo", ["--model.config=./nope"], "model.config: path './nope' does not exist"),
    ("dpo", ["--loss.name=nash_md"], "add an `online:` section"),
    ("nash_md", ["--online.mixture_coef=2"], "online.mixture_coef must be in [0, 1]"),
    (
        "dpo",
        ["--training.save_strategy=sometimes"],
        "training.save_strategy: 'sometimes' is not allowed; allowed values: no, steps, epoch, best",
    ),
    (
        "dpo",
        ["--training.optim=adamw_fast"],
        "training.optim: 'adamw_fast' is not allowed; allowed values: adamw_torch",
    ),
    # TrainingArguments types and ranges, checked at load for every field (tests/test_training_values.py).
    ("dpo", ["--training.learning_rate=abc"], "training.learning_rate: expected a number, got 'abc'"),
    ("dpo", ["--training.learning_rate=.nan"], "training.learning_rate must be >= 0, got nan"),
    ("dpo", ["--training.per_device_train_batch_size=0"], "training.per_device_train_batch_size must be >= 1, got 0"),
    ("dpo", ["--training.per_device_eval_batch_size=2.5"], "training.per_device_eval_batch_size: expected an integer"),
    ("dpo", ["--training.gradient_accumulation_steps=0"], "training.gradient_accumulation_steps must be >= 1, got 0"),
    ("dpo", ["--training.logging_steps=-3"], "training.logging_steps must be > 0, got -3"),
    ("dpo", ["--training.save_steps=0"], "training.save_steps must be > 0, got 0"),
    ("dpo", ["--training.eval_steps=-1"], "training.eval_steps must be > 0, got -1"),
    ("dpo", ["--training.max_steps=0"], "training.max_steps must be >= 1 (or -1), got 0"),
    ("dpo", ["--training.num_train_epochs=0"], "training.num_train_epochs must be > 0, got 0"),
    ("dpo", ["--training.warmup_steps=-5"], "training.warmup_steps must be >= 0, got -5"),
    ("dpo", ["--training.weight_decay=-0.1"], "training.weight_decay must be >= 0, got -0.1"),
    ("dpo", ["--training.max_grad_norm=-1"], "training.max_grad_norm must be >= 0, got -1"),
    ("dpo", ["--training.adam_beta1=1.0"], "training.adam_beta1 must be >= 0 and < 1, got 1.0"),
    ("dpo", ["--training.label_smoothing_factor=1"], "training.label_smoothing_factor must be >= 0 and < 1"),
    ("dpo", ["--training.seed=-1"], "training.seed must be >= 0 and <= 4294967295, got -1"),
    ("dpo", ["--training.save_total_limit=0"], "training.save_total_limit must be >= 1, got 0"),
    ("dpo", ["--training.dataloader_num_workers=-1"], "training.dataloader_num_workers must be >= 0, got -1"),
    ("dpo", ["--training.bf16=1"], "training.bf16: expected true or false, got 1"),
    ("dpo", ["--training.run_name=5"], "training.run_name: expected a string, got 5"),
    ("dpo", ["--training.log_level=loud"], "training.log_level: 'loud' is not allowed; allowed values: detail, debug"),
    ("dpo", ["--training.ddp_backend=tcp"], "training.ddp_backend: 'tcp' is not allowed; allowed values: nccl, gloo"),
    ("dpo", ["--training.lr_scheduler_type=fast"], "training.lr_scheduler_type: 'fast' is not allowed"),
    ("dpo", ["--training.lr_scheduler_kwargs=3"], "training.lr_scheduler_kwargs: 3 is not a dict | str | None"),
    ("dpo", ["--training.report_to=tensorbored"], "training.report_to: 'tensorbored' is not an integration"),
    ("dpo", ["--training.logprob_chunk_size=-1"], "training.logprob_chunk_size must be >= 0, got -1"),
]


@pytest.mark.parametrize(("recipe", "overrides", "phrase"), CONFIG_CASES, ids=[c[1][0] for c in CONFIG_CASES])
def test_config_case(recipe, overrides, phrase, tmp_path, capsys):
    with pytest.raises(ConfigError) as info:
        load_config(RECIPES / f"{recipe}.yaml", overrides)
    assert type(info.value) is ConfigError
    assert phrase in str(info.value)
    _cli_stops_cleanly(recipe, overrides, "alignment: config error: ", phrase, tmp_path, capsys)


def _cli_stops_cleanly(
    recipe: str | Path, overrides: list[str], prefix: str, phrase: str, tmp_path: Path, capsys, status: int = 2
) -> None:
    """The same case through `alignment train` (in this process): the exit status, the
    message as one `alignment: ...` line, and no output directory at all. `recipe` is a
    tiny recipe's name or a recipe file."""
    from alignment.cli import train_main

    out = tmp_path / "out"
    path = recipe if isinstance(recipe, Path) else RECIPES / f"{recipe}.yaml"
    capsys.readouterr()
    code = train_main(["--config", str(path), f"--training.output_dir={out}", *overrides])
    err = capsys.readouterr().err
    message = [line for line in err.replace("\r", "\n").splitlines() if line.startswith(prefix)]
    assert code == status and len(message) == 1 and phrase in err, err
    assert "Traceback" not in err
    assert not out.exists()


TINY_RECIPE = (RECIPES / "dpo.yaml").read_text()

RECIPE_FILE_CASES = [
    # (name, recipe bytes, phrase)
    (
        "duplicate-loss-key",
        TINY_RECIPE.replace("  beta: 0.1\n", "  beta: 0.1\n  beta: 0.2\n").encode(),
        "line 17: key 'beta' appears twice in one mapping (first at line 16); keep one",
    ),
    (
        "duplicate-training-key",
        TINY_RECIPE.replace("  seed: 0\n", "  seed: 0\n  learning_rate: 1.0e-2\n").encode(),
        "line 31: key 'learning_rate' appears twice in one mapping (first at line 22)",
    ),
    (
        "duplicate-section",
        (TINY_RECIPE + "loss:\n  name: ipo\n").encode(),
        "key 'loss' appears twice in one mapping (first at line 14)",
    ),
    ("not-a-mapping", b"- model\n- data\n", "a recipe is a mapping of sections (model, lora"),
    ("not-yaml", b"model:\n\tconfig: x\n", "not valid YAML"),
    ("not-utf8", TINY_RECIPE.encode().replace(b"Tiny DPO", b"Tiny \xff DPO"), "not UTF-8 text (invalid start byte"),
    ("python-tag", b"model: !!python/object/apply:os.system [echo hi]\n", "not valid YAML"),
    ("unknown-section", (TINY_RECIPE + "optimizer: {lr: 1}\n").encode(), "unknown section 'optimizer'"),
]


@pytest.mark.parametrize(("name", "content", "phrase"), RECIPE_FILE_CASES, ids=[c[0] for c in RECIPE_FILE_CASES])
def test_recipe_file_case(name, content, phrase, tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert type(info.value) is ConfigError and phrase in str(info.value), str(info.value)
    _cli_stops_cleanly(path, [], "alignment: config error: ", phrase, tmp_path, capsys)


def test_a_missing_recipe_file(tmp_path, capsys):
    with pytest.raises(ConfigError, match="no such recipe file"):
        load_config(tmp_path / "nope.yaml")
    _cli_stops_cleanly(tmp_path / "nope.yaml", [], "alignment: config error: ", "no such recipe file", tmp_path, capsys)


@pytest.mark.parametrize("integration", ["tensorboard", "wandb"])
def test_a_logging_integration_without_its_package(integration, tmp_path, capsys, monkeypatch):
    """As on a machine where the package is not installed: transformers finds none."""
    import transformers.integrations.integration_utils as integrations

    monkeypatch.setattr(integrations, "get_available_reporting_integrations", lambda: [])
    phrase = (
        f"training.report_to: {integration!r} needs the {integration} package, which is not installed: "
        f"pip install {integration} (or pip install 'alignment[{integration}]')"
    )
    with pytest.raises(ConfigError) as info:
        load_config(RECIPES / "dpo.yaml", [f"--training.report_to={integration}"])
    assert type(info.value) is ConfigError and phrase in str(info.value)
    overrides = [f"--training.report_to=[{integration}]"]
    _cli_stops_cleanly("dpo", overrides, "alignment: config error: ", phrase, tmp_path, capsys)


def test_an_output_dir_that_cannot_be_created(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    phrase = f"training.output_dir: '{blocker}/run' cannot be created: '{blocker}' is not a directory"
    with pytest.raises(ConfigError, match="cannot be created"):
        load_config(RECIPES / "dpo.yaml", [f"--training.output_dir={blocker}/run"])
    from alignment.cli import train_main

    code = train_main(["--config", str(RECIPES / "dpo.yaml"), f"--training.output_dir={blocker}/run"])
    err = capsys.readouterr().err
    assert code == 2 and phrase in err and "Traceback" not in err


PAIR = {"prompt": "1+1=", "chosen": "2", "rejected": "3"}


def _raw(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


DATA_CASES = [
    # (name, rows or raw bytes, error class, phrase)
    (
        "missing-column",
        [PAIR, {"prompt": "1+2=", "chosen": "3"}],
        BadRowError,
        "bad row 1 in {path}: column 'rejected' is missing [missing_column]",
    ),
    (
        "wrong-type",
        [{**PAIR, "chosen": 7, "rejected": 8}],
        BadRowError,
        "bad row 0 in {path}: column 'chosen' should be a string or a list of messages, got int 7 [wrong_type]",
    ),
    (
        "empty-completion",
        [PAIR, {**PAIR, "rejected": "  "}],
        BadRowError,
        "column 'rejected' is empty [empty_completion]",
    ),
    ("empty-prompt", [PAIR, {**PAIR, "prompt": ""}], BadRowError, "column 'prompt' is empty [empty_prompt]"),
    (
        "k-equals-1",
        [{"prompt": "q", "completions": ["a"], "scores": [1.0]}],
        BadRowError,
        "has 1 completion(s); at least 2 are needed [too_few_completions]",
    ),
    (
        "nan-score",
        [{"prompt": "q", "completions": ["a", "b"], "scores": [1.0, float("nan")]}],
        BadRowError,
        "[nonfinite_score]",
    ),
    (
        "inf-score",
        [{"prompt": "q", "completions": ["a", "b"], "scores": [float("inf"), 0.0]}],
        BadRowError,
        "[nonfinite_score]",
    ),
    (
        "all-tied",
        [{"prompt": "q", "completions": ["a", "b", "c"], "scores": [1.0, 1.0, 1.0]}],
        BadRowError,
        "all 3 scores are equal (1.0): no preference order",
    ),
    (
        "scores-length",
        [{"prompt": "q", "completions": ["a", "b"], "scores": [1.0]}],
        BadRowError,
        "1 scores for 2 completions in column 'completions' [score_length_mismatch]",
    ),
    (
        "renamed-columns",
        [{"question": "q", "good": "a", "bad": "b"}],
        DataError,
        "cannot tell the data layout from the columns ['bad', 'good', 'question']",
    ),
    (
        "prompt-too-long",
        [{**PAIR, "prompt": "1+" * 20 + "1="}],
        BadRowError,
        "no room for a completion [prompt_fills_max_length]",
    ),
    (
        "malformed-json",
        b'{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n{"prompt": "1+2=", "chosen":\n',
        BadRowError,
        "bad row 1 in {path}: line 2 is not valid JSON",
    ),
    (
        "non-utf8",
        b'{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n{"prompt": "\xff", "chosen": "3", "rejected": "4"}\n',
        BadRowError,
        "line 2 is not UTF-8 (byte 12: b'\\xff') [not_utf8]",
    ),
    (
        "duplicate-completions",
        [PAIR, {**PAIR, "rejected": PAIR["chosen"]}],
        BadRowError,
        "bad row 1 in {path}: column 'rejected' is identical to column 'chosen'",
    ),
    (
        "line-not-an-object",
        b'{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n["1+2=", "3", "4"]\n',
        BadRowError,
        "bad row 1 in {path}: line 2 is a JSON list, not an object (one row) [wrong_type]",
    ),
    ("empty-file", b"", DataError, "data source {path}: the file is empty"),
    ("blank-file", b"\n\n", DataError, "the file is empty"),
]


@pytest.mark.parametrize(("name", "rows", "error", "phrase"), DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_data_case(name, rows, error, phrase, tmp_path, capsys):
    path = tmp_path / "data.jsonl"
    if isinstance(rows, bytes):
        _raw(path, rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # No prompt cap: a prompt longer than max_length is then a bad row, not a truncation.
    cfg = DataConfig(train=[SourceConfig(path=str(path))], max_length=32, max_prompt_length=None)
    with pytest.raises(error) as info:
        build_datasets(cfg, tiny_tokenizer())
    assert type(info.value) is error
    assert phrase.format(path=path) in str(info.value)
    data = [f"--data.train=[{path}]", "--data.test=[]", "--data.max_length=32", "--data.max_prompt_length=null"]
    _cli_stops_cleanly("dpo", data, "alignment: data error: ", phrase.format(path=path), tmp_path, capsys)


def test_chat_data_without_a_chat_template(tmp_path):
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = None
    chat = [{"role": "user", "content": "1+1="}]
    row = {
        "chosen": chat + [{"role": "assistant", "content": "2"}],
        "rejected": chat + [{"role": "assistant", "content": "3"}],
    }
    path = write_jsonl(tmp_path / "chat.jsonl", [row])
    with pytest.raises(DataError, match="has no chat template; set `data.chat_template`"):
        build_datasets(DataConfig(train=[SourceConfig(path=str(path))]), tokenizer)


def test_skip_counts_every_reason_and_keeps_the_rest(tmp_path):
    rows = [PAIR, {"prompt": "1+2=", "chosen": "3"}, {**PAIR, "chosen": ""}, {**PAIR, "prompt": "1+" * 20 + "1="}, PAIR]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    cfg = DataConfig(train=[SourceConfig(path=str(path))], bad_rows="skip", max_length=32, max_prompt_length=None)
    data = build_datasets(cfg, tiny_tokenizer())
    assert len(data.train) == 2
    assert data.report.skipped == {"empty_completion": 1, "missing_column": 1, "prompt_fills_max_length": 1}


def test_skip_counts_unreadable_lines_and_keeps_the_rest(tmp_path):
    """Under `skip`, lines that are not JSON, not UTF-8 or not an object are bad rows like
    any other: counted by reason, and the readable rows are kept in file order."""
    good = [json.dumps({"prompt": f"1+{i}=", "chosen": str(1 + i), "rejected": "0"}).encode() for i in range(4)]
    lines = [
        good[0],
        b'{"prompt": "1+1=", "chosen":',
        good[1],
        b'{"prompt": "\xff1+1=", "chosen": "2", "rejected": "3"}',
    ]
    lines += [b"", b"[1, 2]", good[2], json.dumps({**PAIR, "rejected": PAIR["chosen"]}).encode(), good[3]]
    path = _raw(tmp_path / "mixed.jsonl", b"\n".join(lines) + b"\n")
    cfg = DataConfig(train=[SourceConfig(path=str(path))], bad_rows="skip", max_length=32, max_prompt_length=None)
    data = build_datasets(cfg, tiny_tokenizer())
    assert data.report.skipped == {"duplicate_completion": 1, "malformed_json": 1, "not_utf8": 1, "wrong_type": 1}
    (source,) = data.report.sources
    assert (source.rows_loaded, source.rows_used) == (8, 4)  # the blank line is not a row
    tokenizer = tiny_tokenizer()
    prompts = sorted(tokenizer.decode(ids) for ids in data.train["prompt_input_ids"])
    assert [p[-4:] for p in prompts] == ["1+0=", "1+1=", "1+2=", "1+3="]


def test_every_line_unreadable_is_an_error_or_no_usable_rows(tmp_path):
    path = _raw(tmp_path / "broken.jsonl", b"{oops\n[1]\n")
    with pytest.raises(BadRowError, match="bad row 0 in .*broken.jsonl: line 1 is not valid JSON"):
        build_datasets(DataConfig(train=[SourceConfig(path=str(path))]), tiny_tokenizer())
    with pytest.raises(DataError, match="data.train: no usable rows left"):
        build_datasets(DataConfig(train=[SourceConfig(path=str(path))], bad_rows="skip"), tiny_tokenizer())


def test_values_reach_the_adapter_as_written(tmp_path):
    """`datasets`' JSON loader infers one type per column: a `"2"` next to a `7` became
    the int 2, and the correct row was reported. Rows are now read as written, so the
    row with the number is the bad one, and a column may mix strings and messages."""
    chat = [{"role": "user", "content": "1+2="}]
    rows = [
        {"prompt": "1+1=", "chosen": "2", "rejected": "3"},
        {"prompt": "1+6=", "chosen": 7, "rejected": "8"},
        {"prompt": chat, "chosen": [{"role": "assistant", "content": "3"}], "rejected": "4"},
    ]
    path = write_jsonl(tmp_path / "mixed_types.jsonl", rows)
    with pytest.raises(
        BadRowError, match=r"bad row 1 .*column 'chosen' should be a string or a list of messages, got int 7"
    ):
        build_datasets(DataConfig(train=[SourceConfig(path=str(path))]), tiny_tokenizer())
    data = build_datasets(DataConfig(train=[SourceConfig(path=str(path))], bad_rows="skip"), tiny_tokenizer())
    assert data.report.skipped == {"wrong_type": 1} and len(data.train) == 2
    completions = {tiny_tokenizer().decode(c[0]).replace("<|end|>", "") for c in data.train["completion_input_ids"]}
    assert "2" in completions  # the string "2", kept as text


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        (
            '{"prompt": "1+1=", "chosen": "2", "rejected": "3"}',
            "holds one JSON object; a .json source should hold a list",
        ),
        ('[{"prompt": "1+1=",', "not valid JSON: Expecting"),
        ('"rows"', "holds a JSON str, not a list of rows"),
    ],
    ids=["object", "truncated", "string"],
)
def test_json_document_errors(content, phrase, tmp_path):
    path = tmp_path / "data.json"
    path.write_text(content)
    with pytest.raises(DataError, match=phrase):
        build_datasets(DataConfig(train=[SourceConfig(path=str(path))]), tiny_tokenizer())


def test_json_lines_under_a_json_name(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(PAIR) + "\n" + json.dumps({**PAIR, "prompt": "1+2="}) + "\n")
    assert len(build_datasets(DataConfig(train=[SourceConfig(path=str(path))]), tiny_tokenizer()).train) == 2


@pytest.mark.parametrize(
    ("overrides", "phrase"),
    [
        (
            ["--data.train=[{bad}]", "--data.test=[]"],
            "alignment: data error: bad row 1 in {bad}: line 2 is not valid JSON",
        ),
        (["--data.train=[{empty}]", "--data.test=[]"], "alignment: data error: data source {empty}: the file is empty"),
        (["--loss.beta=0"], "alignment: config error: loss: dpo: beta must satisfy beta > 0, got 0"),
        (
            [
                "--training.load_best_model_at_end=true",
                "--training.save_strategy=epoch",
                "--training.eval_strategy=steps",
            ],
            "alignment: config error: training: --load_best_model_at_end requires the save and eval strategy to match",
        ),
    ],
    ids=["malformed-json", "empty-file", "bad-parameter", "training-arguments-conflict"],
)
def test_cli_errors_are_one_line_and_leave_nothing_behind(overrides, phrase, tmp_path):
    bad = _raw(tmp_path / "bad.jsonl", dict((c[0], c[1]) for c in DATA_CASES)["malformed-json"])
    empty = _raw(tmp_path / "empty.jsonl", b"")
    out = tmp_path / "out"
    proc = train("dpo", out, *[o.format(bad=bad, empty=empty) for o in overrides], check=False)
    assert proc.returncode == 2
    assert phrase.format(bad=bad, empty=empty) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()  # the output directory is created only once everything has loaded


def test_online_prompts_skip_unreadable_lines(tmp_path):
    """Prompt files for online training go through the same reader and policy."""
    from alignment.data.prompts import build_prompt_datasets

    path = _raw(tmp_path / "prompts.jsonl", b'{"prompt": "1+1="}\n{"prompt": \n{"prompt": "2+2="}\n{"prompt": ""}\n')
    with pytest.raises(BadRowError, match=r"bad row 1 in .*prompts.jsonl: line 2 is not valid JSON"):
        build_prompt_datasets(DataConfig(train=[SourceConfig(path=str(path))]), tiny_tokenizer())
    data = build_prompt_datasets(DataConfig(train=[SourceConfig(path=str(path))], bad_rows="skip"), tiny_tokenizer())
    assert data.report.skipped == {"empty_prompt": 1, "malformed_json": 1}
    assert sorted(json.loads(p) for p in data.train["prompt"]) == ["1+1=", "2+2="]
