"""The layouts users' datasets come in, each detected from its columns and read from a
fixture written in that layout (tests/fixtures/layouts): ShareGPT (LLaMA-Factory), Anthropic
HH transcripts, and any pairwise data under other column names. In every one, the
history is the prompt and only the final assistant turn is trained."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from alignment.config import ConfigError, DataConfig, SourceConfig
from alignment.data import BadRowError, build_datasets
from alignment.data.adapters import adapt_row, detect_layout, renamed
from alignment.data.example import PreferenceExample
from alignment.data.tokenize import tokenize_example
from tests.helpers import ROOT, float32_approx, tiny_tokenizer
from tests.launch import log_history

LAYOUTS = ROOT / "tests" / "fixtures" / "layouts"
SHAREGPT, HH, RENAMED = LAYOUTS / "sharegpt_dpo.json", LAYOUTS / "hh.jsonl", LAYOUTS / "renamed_columns.jsonl"
RENAMING = {"prompt": "question", "chosen": "response_j", "rejected": "response_k"}


def _rows(path: Path) -> list[dict]:
    text = path.read_text()
    return json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.splitlines()]


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def test_layouts_are_detected_from_the_columns_and_the_first_row():
    assert detect_layout(_rows(SHAREGPT)[1]) == "sharegpt"
    assert detect_layout(["chosen", "rejected"], _rows(HH)[0]) == "hh"
    assert detect_layout(["chosen", "rejected"], {"chosen": "The answer is 7", "rejected": "9"}) == "pairwise"
    assert detect_layout(renamed(dict.fromkeys(_rows(RENAMED)[0]), RENAMING)) == "pairwise"


def test_sharegpt_history_and_system_are_the_prompt():
    example = adapt_row(_rows(SHAREGPT)[1], "sharegpt", "f", 1)
    assert example == PreferenceExample(
        prompt=[{"role": "system", "content": "Add the digits."}, user("1+1="), assistant("2"), user("and 2+5=")],
        completions=[[assistant("7")], [assistant("3")]],
        scores=[1.0, 0.0],
    )


def test_sharegpt_function_calls_observations_and_tools():
    example = adapt_row(_rows(SHAREGPT)[2], "sharegpt", "f", 2)
    call = '{"name": "add", "arguments": {"a": 6, "b": 2}}'
    assert example.prompt == [user("sum 6 and 2"), assistant(call), {"role": "tool", "content": "8"}]
    assert example.completions == [[assistant("8")], [assistant("5")]]
    assert [tool["name"] for tool in example.tools] == ["add"]
    # The tools reach the chat template with every rendering of the row.
    template = (
        "{% if tools %}<|system|>{% for t in tools %}{{ t['name'] }}:{{ t['description'] }};{% endfor %}<|end|>"
        "{% endif %}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    tokenizer = tiny_tokenizer()
    ids = tokenize_example(example, tokenizer, chat_template=template)
    prompt = tokenizer.decode(ids["prompt_input_ids"])
    assert prompt.startswith("<|system|>add:a+b;<|end|><|user|>sum 6 and 2<|end|>")
    assert prompt.endswith("<|tool|>8<|end|><|assistant|>")
    assert [tokenizer.decode(c) for c in ids["completion_input_ids"]] == ["8<|end|>", "5<|end|>"]


@pytest.mark.parametrize(
    ("row", "phrase"),
    [
        (
            {"conversations": [{"from": "robot", "value": "hi"}], "chosen": {"from": "gpt", "value": "a"}},
            "column 'conversations' message 0 has the role 'robot'; ShareGPT roles: assistant, function_call, gpt",
        ),
        (
            {"conversations": [{"from": "human", "value": "q"}], "chosen": "a", "rejected": "b"},
            "column 'chosen' should be a {from, value} message or a list of them, got 'a'",
        ),
        (
            {"conversations": [{"from": "human"}], "chosen": {"from": "gpt", "value": "a"}},
            "column 'conversations' message 0 should have 'from' and a string 'value'",
        ),
    ],
    ids=["unknown-role", "string-completion", "no-value"],
)
def test_bad_sharegpt_rows_name_the_column(row, phrase):
    row = {"rejected": {"from": "gpt", "value": "b"}, **row}
    with pytest.raises(BadRowError, match="wrong_type") as info:
        adapt_row(row, "sharegpt", "data.json", 4)
    assert str(info.value).startswith("bad row 4 in data.json: ") and phrase in str(info.value)


def test_hh_transcripts_share_their_history_as_the_prompt():
    example = adapt_row(_rows(HH)[1], "hh", "f", 1)
    assert example.prompt == [user("1+1="), assistant("2"), user("and 2+5=")]
    assert example.completions == [[assistant("7")], [assistant("3")]]
    with pytest.raises(BadRowError, match="column 'chosen' does not start with a 'Human:' turn"):
        adapt_row({"chosen": "\n\nAssistant: hi", "rejected": "\n\nHuman: x"}, "hh", "f", 0)


def test_a_source_system_prompt_fills_rows_that_have_none():
    plain = adapt_row({"prompt": "3+4=", "chosen": "7", "rejected": "9"}, "pairwise", "f", 0, system="Add.")
    assert plain.prompt == [{"role": "system", "content": "Add."}, user("3+4=")]
    assert plain.completions == [[assistant("7")], [assistant("9")]]
    own = adapt_row(_rows(SHAREGPT)[1], "sharegpt", "f", 1, system="Other.")
    assert own.prompt[0] == {"role": "system", "content": "Add the digits."}  # the row's own system prompt stays


def test_column_mapping_is_checked_when_the_recipe_loads():
    with pytest.raises(ConfigError, match="columns: 'answer' is not a column the layouts read"):
        SourceConfig(path=str(RENAMED), columns={"answer": "response_j"})


@pytest.mark.parametrize(
    ("source", "layout"),
    [
        ({"path": str(SHAREGPT)}, "sharegpt"),
        ({"path": str(HH)}, "hh"),
        ({"path": str(RENAMED), "columns": RENAMING, "system": "Add the digits."}, "pairwise"),
    ],
    ids=["sharegpt", "hh", "renamed-columns"],
)
def test_each_layout_builds_through_the_pipeline(source, layout):
    cfg = DataConfig(train=[SourceConfig(**source)], max_length=128, max_prompt_length=96)
    data = build_datasets(cfg, tiny_tokenizer())
    assert data.report.sources[0].layout == layout and len(data.train) == 4
    tokenizer = tiny_tokenizer()
    completions = sorted(tokenizer.decode(c[0]) for c in data.train["completion_input_ids"])
    assert completions == ["5<|end|>", "7<|end|>", "7<|end|>", "8<|end|>"]  # the final answers only


@pytest.mark.slow
@pytest.mark.parametrize(
    "source",
    [f"{{path: {SHAREGPT}}}", f"{{path: {HH}}}", f"{{path: {RENAMED}, columns: {json.dumps(RENAMING)}}}"],
    ids=["sharegpt", "hh", "renamed-columns"],
)
def test_each_layout_trains_the_tiny_recipe_as_it_is(source, tmp_path):
    from alignment.cli import train_main

    out = tmp_path / "out"
    overrides = [f"--data.train=[{source}]", "--data.test=[]", "--data.max_length=128"]
    overrides += ["--data.max_prompt_length=96", "--training.max_steps=3", "--training.logging_steps=1"]
    overrides += ["--training.eval_on_start=false", "--training.per_device_train_batch_size=2"]
    overrides += ["--training.warmup_steps=0", "--training.learning_rate=1.0e-2"]
    assert (
        train_main(["--config", str(ROOT / "recipes/tiny/dpo.yaml"), f"--training.output_dir={out}", *overrides]) == 0
    )
    losses = [e["loss"] for e in log_history(out) if "loss" in e]
    assert len(losses) == 3 and losses[0] == float32_approx(math.log(2), ulps=1)  # step 1: policy == reference
    assert losses[1:] != pytest.approx([math.log(2)] * 2, abs=1e-6)  # and it trained
    assert (out / "model.safetensors").exists()
