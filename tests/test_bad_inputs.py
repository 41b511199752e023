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
from tests.helpers import tiny_tokenizer, write_jsonl
from tests.launch import train

ROOT = Path(__file__).resolve().parents[1]
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
]


@pytest.mark.parametrize(("recipe", "overrides", "phrase"), CONFIG_CASES, ids=[c[1][0] for c in CONFIG_CASES])
def test_config_case(recipe, overrides, phrase):
    with pytest.raises(ConfigError) as info:
        load_config(RECIPES / f"{recipe}.yaml", overrides)
    assert phrase in str(info.value)


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
        "bad row 1 in {path}: column 'rejected' is None [missing_column]",
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
    ("empty-file", b"", DataError, "data source {path}: the file is empty"),
    ("blank-file", b"\n\n", DataError, "the file is empty"),
]


@pytest.mark.parametrize(("name", "rows", "error", "phrase"), DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_data_case(name, rows, error, phrase, tmp_path):
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


def test_chat_data_without_a_chat_template(tmp_path):
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = None
    chat = [{"role": "user", "content": "1+1="}]
    row = {
        "chosen": chat + [{"role": "assistant", "content": "2"}],
        "rejected": chat + [{"role": "assistant", "content": "3"}],
    }
    path = write_jsonl(tmp_path / "chat.jsonl", [row])
    with pytest.raises(ValueError, match="has no chat template; set `data.chat_template`"):
        build_datasets(DataConfig(train=[SourceConfig(path=str(path))]), tokenizer)


def test_skip_counts_every_reason_and_keeps_the_rest(tmp_path):
    rows = [PAIR, {"prompt": "1+2=", "chosen": "3"}, {**PAIR, "chosen": ""}, {**PAIR, "prompt": "1+" * 20 + "1="}, PAIR]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    cfg = DataConfig(train=[SourceConfig(path=str(path))], bad_rows="skip", max_length=32, max_prompt_length=None)
    data = build_datasets(cfg, tiny_tokenizer())
    assert len(data.train) == 2
    assert data.report.skipped == {"empty_completion": 1, "missing_column": 1, "prompt_fills_max_length": 1}


@pytest.mark.parametrize(
    ("overrides", "phrase"),
    [
        (
            ["--data.train=[{bad}]", "--data.test=[]"],
            "alignment: data error: bad row 1 in {bad}: line 2 is not valid JSON",
        ),
        (["--data.train=[{empty}]", "--data.test=[]"], "alignment: data error: data source {empty}: the file is empty"),
        (["--loss.beta=0"], "alignment: config error: loss: dpo: beta must satisfy beta > 0, got 0"),
    ],
    ids=["malformed-json", "empty-file", "bad-parameter"],
)
def test_cli_errors_are_one_line_and_leave_nothing_behind(overrides, phrase, tmp_path):
    bad = _raw(tmp_path / "bad.jsonl", DATA_CASES[11][1])
    empty = _raw(tmp_path / "empty.jsonl", b"")
    out = tmp_path / "out"
    proc = train("dpo", out, *[o.format(bad=bad, empty=empty) for o in overrides], check=False)
    assert proc.returncode == 2
    assert phrase.format(bad=bad, empty=empty) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()  # the output directory is created only once everything has loaded
