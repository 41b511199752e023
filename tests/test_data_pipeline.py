"""build_datasets end to end: sources, bad-row policy, mixing, splits, truncation report, caching."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
import pytest

from alignment.config import DataConfig, SourceConfig
from alignment.data import BadRowError, PreferenceCollator, adapt_row, build_datasets, load_source, tokenize_example
from alignment.data import pipeline as pipeline_module
from alignment.data import tokenize as tokenize_module
from alignment.data.tokenize import STATS_COLUMNS
from tests.helpers import ASSISTANT, EOS, USER
from tests.helpers import char_ids as ids


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    """A fresh datasets cache per test, so caching is observable and tests stay independent."""
    cache = tmp_path / "hf_cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def pairwise_rows(n: int, tag: str = "q") -> list[dict]:
    return [{"prompt": f"{tag}{i}", "chosen": f"good{i}", "rejected": f"bad{i}"} for i in range(n)]


def config(*sources: SourceConfig, **kwargs) -> DataConfig:
    kwargs.setdefault("max_length", 64)
    kwargs.setdefault("max_prompt_length", 32)
    return DataConfig(train=list(sources), **kwargs)


def decoded_prompts(dataset: datasets.Dataset, tok) -> list[str]:
    return [tok.decode(row) for row in dataset["prompt_input_ids"]]


# ----------------------------------------------------------------------------- bad-row policy


@pytest.fixture
def missing_rejected(tmp_path) -> str:
    rows = pairwise_rows(6)
    del rows[3]["rejected"]
    return write_jsonl(tmp_path / "prefs.jsonl", rows)


def test_bad_row_error_names_index_source_and_column(missing_rejected, tok):
    with pytest.raises(BadRowError) as info:
        build_datasets(config(SourceConfig(missing_rejected)), tok)
    err = info.value
    assert (err.index, err.source, err.reason) == (3, missing_rejected, "missing_column")
    message = str(err)
    assert "3" in message and missing_rejected in message and "rejected" in message


def test_bad_row_skip_drops_and_counts(missing_rejected, tok):
    data = build_datasets(config(SourceConfig(missing_rejected), bad_rows="skip"), tok)
    assert len(data.train) == 5
    assert sorted(decoded_prompts(data.train, tok)) == ["q0", "q1", "q2", "q4", "q5"]
    report = data.report
    assert report.skipped == {"missing_column": 1}
    (source,) = report.sources
    assert (source.source, source.rows_loaded, source.rows_used, source.skipped) == (
        missing_rejected,
        6,
        5,
        {"missing_column": 1},
    )
    assert "missing_column=1" in report.summary()


def test_skip_counts_several_reasons(tmp_path, tok):
    rows = pairwise_rows(8)
    rows[1]["chosen"] = ""
    rows[2]["rejected"] = None
    rows[5]["chosen"] = ""
    rows[6]["score_chosen"], rows[6]["score_rejected"] = 1.0, 1.0
    for row in rows:
        row.setdefault("score_chosen", 2.0)
        row.setdefault("score_rejected", 1.0)
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    data = build_datasets(config(SourceConfig(path), bad_rows="skip"), tok)
    assert data.report.skipped == {"all_tied": 1, "empty_completion": 2, "missing_column": 1}
    assert len(data.train) == 4


def test_prompt_filling_max_length(tmp_path, tok):
    rows = pairwise_rows(4)
    rows[2]["prompt"] = "0123456789"
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(BadRowError) as info:
        build_datasets(config(SourceConfig(path), max_length=10, max_prompt_length=None), tok)
    assert (info.value.index, info.value.reason, info.value.source) == (2, "prompt_fills_max_length", path)
    data = build_datasets(config(SourceConfig(path), max_length=10, max_prompt_length=None, bad_rows="skip"), tok)
    assert data.report.skipped == {"prompt_fills_max_length": 1}
    assert len(data.train) == 3


def test_error_names_a_row_that_cannot_be_adapted_before_a_prompt_that_is_too_long(tmp_path, tok):
    """Rows are adapted and tokenized in one pass, but `error` still reports a malformed
    row first: fixing the length settings would not fix it."""
    rows = pairwise_rows(6)
    rows[1]["prompt"] = "0123456789"
    del rows[4]["rejected"]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(BadRowError) as info:
        build_datasets(config(SourceConfig(path), max_length=10, max_prompt_length=None), tok)
    assert (info.value.index, info.value.reason) == (4, "missing_column")


# ----------------------------------------------------------------------------- truncation


def test_truncation_ids_and_report(tmp_path, tok):
    rows = [
        {"prompt": "0123456789AB", "chosen": "abcdef", "rejected": "xy"},
        {"prompt": "p", "chosen": "abc", "rejected": "d"},
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    data = build_datasets(config(SourceConfig(path), max_length=14, max_prompt_length=10), tok)
    by_prompt = {tuple(r["prompt_input_ids"]): r for r in data.train}
    cut = by_prompt[tuple(ids("23456789AB"))]  # the prompt keeps its last 10 tokens
    assert cut["completion_input_ids"] == [ids("abcd"), ids("xy") + [EOS]]  # room 4: "abcdef"+EOS -> "abcd"
    whole = by_prompt[tuple(ids("p"))]
    assert whole["completion_input_ids"] == [ids("abc") + [EOS], ids("d") + [EOS]]
    report = data.report
    assert (report.prompts_truncated, report.completions_truncated, report.tokens_dropped) == (1, 1, 2 + 3)
    assert "1 prompts and 1 completions truncated, 5 tokens dropped" in report.summary()
    # margin and user_id: the reward-model fields (0.0 and "" when the data has none)
    assert set(data.train.column_names) == {"prompt_input_ids", "completion_input_ids", "scores", "margin", "user_id"}
    assert data.train["margin"] == [0.0, 0.0] and data.train["user_id"] == ["", ""]


# ----------------------------------------------------------------------------- mixing and splits


def test_mixture_fractions(tmp_path, tok):
    a = write_jsonl(tmp_path / "a.jsonl", pairwise_rows(10, "a"))
    b = write_jsonl(tmp_path / "b.jsonl", pairwise_rows(7, "b"))
    data = build_datasets(config(SourceConfig(a, fraction=0.5), SourceConfig(b, fraction=0.3)), tok)
    prompts = decoded_prompts(data.train, tok)
    assert len(prompts) == 5 + 3  # ceil(0.5 * 10) + ceil(0.3 * 7)
    assert sum(p.startswith("a") for p in prompts) == 5
    assert sum(p.startswith("b") for p in prompts) == 3
    assert [s.rows_used for s in data.report.sources] == [5, 3]
    assert data.report.rows == {"train": 8}
    # The mixture is shuffled: not all of a's rows first.
    assert [p[0] for p in prompts] != sorted(p[0] for p in prompts)


def test_deterministic_given_seed(tmp_path, tok):
    a = write_jsonl(tmp_path / "a.jsonl", pairwise_rows(20, "a"))
    b = write_jsonl(tmp_path / "b.jsonl", pairwise_rows(20, "b"))
    sources = (SourceConfig(a, fraction=0.5), SourceConfig(b, fraction=0.5))
    first = build_datasets(config(*sources, test_size=0.25), tok)
    again = build_datasets(config(*sources, test_size=0.25), tok)
    other = build_datasets(config(*sources, test_size=0.25, seed=7), tok)
    assert first.train[:] == again.train[:] and first.test[:] == again.test[:]
    assert decoded_prompts(first.train, tok) != decoded_prompts(other.train, tok)


def test_test_size_split(tmp_path, tok):
    path = write_jsonl(tmp_path / "p.jsonl", pairwise_rows(10))
    data = build_datasets(config(SourceConfig(path), test_size=0.2), tok)
    train, test = decoded_prompts(data.train, tok), decoded_prompts(data.test, tok)
    assert (len(train), len(test)) == (8, 2)
    assert sorted(train + test) == sorted(f"q{i}" for i in range(10))
    assert data.report.rows == {"train": 8, "test": 2}
    assert data.report.k_distribution == {"train": {2: 8}, "test": {2: 2}}


def test_test_sources(tmp_path, tok):
    train = write_jsonl(tmp_path / "train.jsonl", pairwise_rows(6, "t"))
    test = write_jsonl(tmp_path / "test.jsonl", pairwise_rows(3, "e"))
    data = build_datasets(DataConfig(train=[SourceConfig(train)], test=[SourceConfig(test)]), tok)
    assert sorted(decoded_prompts(data.test, tok)) == ["e0", "e1", "e2"]
    assert len(data.train) == 6
    assert [(s.source, s.split) for s in data.report.sources] == [(train, "train"), (test, "test")]


def test_unknown_layout_names_the_source(tmp_path, tok):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(ValueError, match=f"data source {path}: cannot tell the data layout"):
        build_datasets(config(SourceConfig(path)), tok)


def test_nothing_usable_left(tmp_path, tok):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "", "rejected": "b"}])
    with pytest.raises(ValueError, match="no usable rows"):
        build_datasets(config(SourceConfig(path), bad_rows="skip"), tok)
    # A source with nothing usable is fine while another source has rows.
    good = write_jsonl(tmp_path / "good.jsonl", pairwise_rows(2))
    data = build_datasets(config(SourceConfig(path), SourceConfig(good), bad_rows="skip"), tok)
    assert [s.rows_used for s in data.report.sources] == [0, 2] and len(data.train) == 2


def test_no_test_split_by_default(tmp_path, tok):
    path = write_jsonl(tmp_path / "p.jsonl", pairwise_rows(4))
    assert build_datasets(config(SourceConfig(path)), tok).test is None


# ----------------------------------------------------------------------------- layouts and formats


def test_mixed_layouts_lists_and_k_distribution(tmp_path, tok):
    chat = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {
                "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "no"}],
            },
        ],
    )
    ranked = write_jsonl(
        tmp_path / "ranked.jsonl",
        [
            {"prompt": "r", "completions": ["a", "b", "c"], "ranks": [3, 1, 2]},
        ],
    )
    feedback = write_jsonl(
        tmp_path / "uf.jsonl",
        [
            {
                "instruction": "u",
                "completions": [
                    {"response": "x", "overall_score": 3.0, "annotations": {"honesty": {"Rating": "1"}}},
                    {"response": "y", "overall_score": None, "annotations": {"honesty": {"Rating": "4"}}},
                    {"response": "z", "overall_score": 9.0, "annotations": {"honesty": {"Rating": "N/A"}}},
                    {"response": "w", "overall_score": 1.0, "annotations": {"honesty": {"Rating": "2"}}},
                ],
            },
        ],
    )
    data = build_datasets(config(SourceConfig(chat), SourceConfig(ranked), SourceConfig(feedback)), tok)
    assert [s.layout for s in data.report.sources] == ["pairwise", "ranked", "ultrafeedback"]
    assert data.report.k_distribution == {"train": {2: 1, 3: 1, 4: 1}}
    rows = {tuple(r["prompt_input_ids"]): r for r in data.train}
    chat_row = rows[(USER, *ids("hi"), EOS, ASSISTANT)]
    assert chat_row["completion_input_ids"] == [ids("yo") + [EOS], ids("no") + [EOS]]
    assert rows[tuple(ids("r"))]["scores"] == [0.0, 2.0, 1.0]
    assert rows[tuple(ids("u"))]["scores"] == [3.0, 4.0, 9.0, 1.0]
    batch = PreferenceCollator(tok.pad_token_id)(list(data.train))
    assert batch["completion_input_ids"].shape[:2] == (3, 4)
    assert sorted(batch["mask"].sum(dim=1).tolist()) == [2, 3, 4]


def test_layout_named_in_the_recipe(tmp_path, tok):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {
                "prompt": "q",
                "completions": [{"response": "a", "overall_score": 1.0}, {"response": "b", "overall_score": 2.0}],
            }
        ],
    )
    data = build_datasets(config(SourceConfig(path, layout="ultrafeedback")), tok)
    assert data.train[0]["scores"] == [1.0, 2.0]


@pytest.mark.parametrize("suffix", ["json", "jsonl", "parquet", "csv"])
def test_local_formats(tmp_path, suffix, tok):
    rows = pairwise_rows(3)
    path = tmp_path / f"prefs.{suffix}"
    if suffix == "json":
        path.write_text(json.dumps(rows))
    elif suffix == "jsonl":
        write_jsonl(path, rows)
    elif suffix == "parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    else:
        datasets.Dataset.from_list(rows).to_csv(str(path), index=False)
    loaded = load_source(SourceConfig(str(path)))
    assert loaded.to_list() == rows
    assert len(build_datasets(config(SourceConfig(str(path))), tok).train) == 3


def test_hub_source_calls_load_dataset_with_name_subset_split_revision(monkeypatch, tok):
    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.Dataset.from_list(pairwise_rows(4))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    src = SourceConfig("org/prefs", name="default", split="train_prefs", revision="abc123")
    data = build_datasets(config(src), tok)
    assert calls == [(("org/prefs", "default"), {"split": "train_prefs", "revision": "abc123"})]
    assert len(data.train) == 4
    assert data.report.sources[0].source == "org/prefs/default[train_prefs]"


def test_chat_template_from_a_file(tmp_path, tok):
    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}[{{ m.content }}]{% endfor %}")
    path = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"}]
    )
    data = build_datasets(config(SourceConfig(path), chat_template=str(template)), tok)
    assert data.train[0]["prompt_input_ids"] == ids("[q]")
    assert data.train[0]["completion_input_ids"] == [ids("[a]"), ids("[b]")]


# ----------------------------------------------------------------------------- caching and scale


def _cache_arrow_files(cache: Path) -> set[Path]:
    return set(cache.rglob("*.arrow"))


def test_second_build_reuses_the_cache(tmp_path, hf_cache, tok):
    path = write_jsonl(tmp_path / "p.jsonl", pairwise_rows(12))
    cfg = config(SourceConfig(path, fraction=0.5), test_size=0.25)
    first = build_datasets(cfg, tok)
    files = _cache_arrow_files(hf_cache)
    second = build_datasets(cfg, tok)
    assert first.train._fingerprint == second.train._fingerprint
    assert first.test._fingerprint == second.test._fingerprint
    assert first.train.cache_files and first.train.cache_files == second.train.cache_files
    assert _cache_arrow_files(hf_cache) == files  # nothing was recomputed
    # A different setting is a different fingerprint, computed anew.
    third = build_datasets(config(SourceConfig(path, fraction=0.5), test_size=0.25, max_length=40), tok)
    assert third.train._fingerprint != first.train._fingerprint


def test_an_edited_file_is_read_again(tmp_path, hf_cache, tok):
    """JSON rows are cached under a hash of the file's bytes, so an edit is never
    answered from a stale cache, and the same bytes are read only once."""
    path = write_jsonl(tmp_path / "p.jsonl", pairwise_rows(6))
    first = build_datasets(config(SourceConfig(path)), tok)
    assert build_datasets(config(SourceConfig(path)), tok).train._fingerprint == first.train._fingerprint
    write_jsonl(tmp_path / "p.jsonl", pairwise_rows(5))
    edited = build_datasets(config(SourceConfig(path)), tok)
    assert len(edited.train) == 5 and edited.train._fingerprint != first.train._fingerprint


def test_edited_pipeline_code_invalidates_the_cache(tmp_path, tok, monkeypatch):
    # datasets fingerprints module-level functions by name only; the source hash salts it.
    path = write_jsonl(tmp_path / "p.jsonl", pairwise_rows(4))
    first = build_datasets(config(SourceConfig(path)), tok)
    original = tokenize_module.CODE_VERSION
    monkeypatch.setattr(tokenize_module, "CODE_VERSION", "edited")
    assert build_datasets(config(SourceConfig(path)), tok).train._fingerprint != first.train._fingerprint
    monkeypatch.setattr(tokenize_module, "CODE_VERSION", original)
    assert build_datasets(config(SourceConfig(path)), tok).train._fingerprint == first.train._fingerprint
    monkeypatch.setattr(pipeline_module, "ADAPT_CODE_VERSION", "edited")
    assert build_datasets(config(SourceConfig(path)), tok).train._fingerprint != first.train._fingerprint


def test_num_proc_gives_the_same_result(tmp_path, tok):
    rows = pairwise_rows(40)
    rows[17]["chosen"] = ""
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    serial = build_datasets(config(SourceConfig(path), bad_rows="skip"), tok)
    parallel = build_datasets(config(SourceConfig(path), bad_rows="skip", num_proc=2), tok)
    assert serial.train[:] == parallel.train[:]
    assert serial.report.skipped == parallel.report.skipped == {"empty_completion": 1}


# ----------------------------------------------------------------------------- one pass per source


def _record_maps(monkeypatch) -> list[tuple[str, int]]:
    """(function name, number of rows) of every `datasets.Dataset.map` from now on."""
    calls: list[tuple[str, int]] = []
    original = datasets.Dataset.map

    def recording_map(self, function=None, *args, **kwargs):
        calls.append((getattr(function, "__name__", repr(function)), len(self)))
        return original(self, function, *args, **kwargs)

    monkeypatch.setattr(datasets.Dataset, "map", recording_map)
    return calls


def test_a_source_is_adapted_and_tokenized_in_one_map(tmp_path, tok, monkeypatch):
    """Rows go from the file to token ids in a single `datasets.map`: no map per step,
    so no row is encoded again between adapting and tokenizing."""
    path = write_jsonl(tmp_path / "p.jsonl", pairwise_rows(12))
    calls = _record_maps(monkeypatch)
    data = build_datasets(config(SourceConfig(path)), tok)
    assert len(calls) == 1 and calls[0][1] == 12
    assert sorted(decoded_prompts(data.train, tok)) == sorted(f"q{i}" for i in range(12))


def test_a_fraction_tokenizes_only_the_rows_it_keeps(tmp_path, tok, monkeypatch):
    """The fraction is of the good rows: one pass finds them (adapting only), and only the
    kept ones are tokenized."""
    rows = pairwise_rows(12)
    rows[4]["chosen"] = ""
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    calls = _record_maps(monkeypatch)
    data = build_datasets(config(SourceConfig(path, fraction=0.5), bad_rows="skip"), tok)
    row_passes = [n for name, n in calls if name == "_convert_batch"]
    assert row_passes == [12, 6]  # every row checked; ceil(0.5 * 11 good rows) tokenized
    (source,) = data.report.sources
    assert (source.rows_used, source.skipped) == (6, {"empty_completion": 1})
    assert len(data.train) == 6 and "q4" not in decoded_prompts(data.train, tok)


def test_chat_messages_get_the_ids_of_tokenize_example_on_the_adapted_row(tmp_path, tok):
    """Row for row, a source of chat messages gives the ids `tokenize_example` gives the
    adapted example, with the same truncation counts."""

    def turn(role: str, content: str) -> dict:
        return {"role": role, "content": content}

    pairs = [
        {
            "chosen": [turn("system", "sé gentil"), turn("user", f"q{i} ü"), turn("assistant", f"a{i} ✓")],
            "rejected": [
                *(turn("system", "sé gentil"), turn("user", f"q{i} ü"), turn("assistant", f"b{i}")),
                *(turn("user", "más"), turn("assistant", "no")),
            ],
        }
        for i in range(6)
    ]
    ranked = [
        {
            "prompt": [turn("user", f"r{i}")],
            "completions": [[turn("assistant", c)] for c in ("x", "yy", "z" * (15 + 2 * i))],
            "scores": [1.0, 3.0, 2.0],
        }
        for i in range(4)
    ]
    settings = {"max_length": 24, "max_prompt_length": 12}
    for name, rows in (("pairs", pairs), ("ranked", ranked)):
        path = write_jsonl(tmp_path / f"{name}.jsonl", rows)
        data = build_datasets(config(SourceConfig(path), **settings), tok)
        (source,) = data.report.sources
        expected = [
            tokenize_example(adapt_row(row, source.layout, path, i), tok, **settings) for i, row in enumerate(rows)
        ]

        def ids_of(rows):
            return sorted((r["prompt_input_ids"], r["completion_input_ids"], r["scores"]) for r in rows)

        assert ids_of(data.train) == ids_of(expected)
        counts = (source.prompts_truncated, source.completions_truncated, source.tokens_dropped)
        assert counts == tuple(sum(r[k] for r in expected) for k in STATS_COLUMNS)
        assert source.tokens_dropped > 0  # the cuts are exercised too


# ----------------------------------------------------------------------------- report


def test_report_log(tmp_path, tok, caplog):
    rows = pairwise_rows(3)
    rows[0]["rejected"] = ""
    rows[1]["chosen"] = "a" * 40
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    data = build_datasets(config(SourceConfig(path), bad_rows="skip", max_length=20, max_prompt_length=10), tok)
    caplog.clear()
    logger = logging.getLogger("test_report")
    with caplog.at_level(logging.INFO, logger="test_report"):
        data.report.log(logger)
    text = caplog.text
    assert path in text and "3 rows loaded, 2 used" in text
    assert "empty_completion=1" in text
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one for skipped rows, one for truncation
    summary = data.report.summary()
    assert "train: 2 lists (K=2: 2)" in summary
    assert data.report.tokens_dropped == 41 - (20 - 2)  # "q1" leaves 18 of "a"*40 + EOS
