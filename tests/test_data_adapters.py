"""Layouts -> PreferenceExample, and every bad-row reason."""

from __future__ import annotations

import math

import pytest
from trl.data_utils import extract_prompt

from alignment.data import BadRowError, PreferenceExample, adapt_row, detect_layout


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def adapt(row: dict, layout: str, **kwargs) -> PreferenceExample:
    return adapt_row(row, layout, "src.jsonl", 7, **kwargs)


# ----------------------------------------------------------------------------- detection


@pytest.mark.parametrize(
    ("columns", "layout"),
    [
        (["prompt", "chosen", "rejected"], "pairwise"),
        (["chosen", "rejected"], "pairwise"),
        (["prompt", "chosen", "rejected", "score_chosen", "score_rejected", "messages"], "pairwise"),
        (["prompt", "completions", "scores"], "ranked"),
        (["prompt", "completions", "ranks"], "ranked"),
        (["source", "instruction", "models", "completions", "correct_answers"], "ultrafeedback"),
        (["prompt", "completions"], "ultrafeedback"),
    ],
)
def test_detect_layout(columns, layout):
    assert detect_layout(columns) == layout


def test_detect_layout_error_lists_columns_and_layouts():
    with pytest.raises(ValueError) as info:
        detect_layout(["question", "answer"])
    message = str(info.value)
    assert "'answer'" in message and "'question'" in message
    for needs in ("pairwise: chosen, rejected", "ranked: prompt, completions, and scores or ranks", "ultrafeedback"):
        assert needs in message


# ----------------------------------------------------------------------------- pairwise


def test_pairwise_strings():
    example = adapt({"prompt": "Q?", "chosen": " yes", "rejected": " no"}, "pairwise")
    assert example == PreferenceExample("Q?", [" yes", " no"], [1.0, 0.0])


def test_pairwise_scores_columns_and_ties():
    row = {"prompt": "Q", "chosen": "a", "rejected": "b", "score_chosen": 8, "score_rejected": 6.5}
    assert adapt(row, "pairwise").scores == [8.0, 6.5]
    tied = dict(row, score_rejected=8)
    assert adapt(tied, "pairwise", require_order=False).scores == [8.0, 8.0]
    with pytest.raises(BadRowError) as info:
        adapt(tied, "pairwise")
    assert info.value.reason == "all_tied"


def test_pairwise_implicit_prompt_matches_trl():
    row = {
        "chosen": [user("hi"), assistant("hello"), user("how are you?"), assistant("fine")],
        "rejected": [user("hi"), assistant("hello"), user("how are you?"), assistant("go away")],
    }
    example = adapt(row, "pairwise")
    assert example.prompt == [user("hi"), assistant("hello"), user("how are you?")]
    assert example.completions == [[assistant("fine")], [assistant("go away")]]
    trl = extract_prompt(row)
    assert (trl["prompt"], [trl["chosen"], trl["rejected"]]) == (example.prompt, example.completions)


def test_pairwise_implicit_prompt_ends_before_a_shared_assistant_turn():
    # Identical first answer: the prompt still ends at the user turn, not inside the answer.
    row = {
        "chosen": [user("q"), assistant("same"), assistant("A")],
        "rejected": [user("q"), assistant("same"), assistant("B")],
    }
    example = adapt(row, "pairwise")
    assert example.prompt == [user("q")]
    assert example.completions == [[assistant("same"), assistant("A")], [assistant("same"), assistant("B")]]


def test_pairwise_implicit_prompt_from_strings():
    row = {"chosen": "Human: hi Assistant: yes please", "rejected": "Human: hi Assistant: no"}
    example = adapt(row, "pairwise")
    assert example.prompt == "Human: hi Assistant:"
    assert example.completions == [" yes please", " no"]
    assert extract_prompt(row) == {"prompt": example.prompt, "chosen": " yes please", "rejected": " no"}


def test_ultrafeedback_binarized_shape():
    row = {
        "prompt": "What is 2+2?",
        "prompt_id": "abc",
        "chosen": [user("What is 2+2?"), assistant("4")],
        "rejected": [user("What is 2+2?"), assistant("5")],
        "messages": [user("What is 2+2?"), assistant("4")],
        "score_chosen": 9.0,
        "score_rejected": 2.0,
    }
    example = adapt(row, "pairwise")
    assert example == PreferenceExample([user("What is 2+2?")], [[assistant("4")], [assistant("5")]], [9.0, 2.0])


def test_string_prompt_with_message_completions_without_shared_prefix():
    row = {"prompt": "Say hi", "chosen": [assistant("hi")], "rejected": [assistant("no")]}
    example = adapt(row, "pairwise")
    assert example.prompt == [user("Say hi")]
    assert example.completions == [[assistant("hi")], [assistant("no")]]


def test_message_prompt_with_string_completions_become_messages():
    row = {"prompt": [user("q")], "chosen": "a", "rejected": "b"}
    example = adapt(row, "pairwise")
    assert example == PreferenceExample([user("q")], [[assistant("a")], [assistant("b")]], [1.0, 0.0])


def test_message_prompt_repeated_in_completions_is_stripped():
    row = {"prompt": [user("q")], "chosen": [user("q"), assistant("a")], "rejected": [user("q"), assistant("b")]}
    assert adapt(row, "pairwise").completions == [[assistant("a")], [assistant("b")]]


def test_extra_message_keys_are_dropped():
    row = {"prompt": "q", "chosen": [{"role": "assistant", "content": "a", "name": None}], "rejected": "b"}
    assert adapt(row, "pairwise").completions == [[assistant("a")], [assistant("b")]]


# ----------------------------------------------------------------------------- ranked


def test_ranked_scores():
    row = {"prompt": "p", "completions": ["a", "b", "c"], "scores": [0.5, 2, -1.0]}
    assert adapt(row, "ranked") == PreferenceExample("p", ["a", "b", "c"], [0.5, 2.0, -1.0])


def test_ranked_ranks_become_scores_best_highest_ties_kept():
    row = {"prompt": "p", "completions": ["a", "b", "c", "d"], "ranks": [2, 1, 3, 2]}
    example = adapt(row, "ranked")
    assert example.scores == [1.0, 2.0, 0.0, 1.0]


def test_ranked_conversational():
    row = {
        "prompt": [user("q")],
        "completions": [[assistant("a")], [assistant("b")], [assistant("c")]],
        "scores": [3, 2, 1],
    }
    example = adapt(row, "ranked")
    assert example.prompt == [user("q")]
    assert example.completions == [[assistant("a")], [assistant("b")], [assistant("c")]]


# ----------------------------------------------------------------------------- ultrafeedback


def _record(response: str, overall=None, ratings=None) -> dict:
    annotations = {aspect: {"Rating": r, "Rationale": "..."} for aspect, r in (ratings or {}).items()}
    return {"response": response, "overall_score": overall, "annotations": annotations, "model": "m"}


def test_ultrafeedback_overall_score_then_mean_rating():
    row = {
        "source": "evol",
        "instruction": "Explain X",
        "completions": [
            _record("first", overall=7.5, ratings={"helpfulness": "1"}),
            _record("second", ratings={"helpfulness": "4", "honesty": "5", "truthfulness": "N/A"}),
            _record("third", ratings={"helpfulness": "2", "honesty": 3}),
        ],
    }
    example = adapt(row, "ultrafeedback")
    assert example == PreferenceExample("Explain X", ["first", "second", "third"], [7.5, 4.5, 2.5])


def test_ultrafeedback_prompt_column():
    row = {"prompt": "q", "completions": [_record("a", overall=1), _record("b", overall=2)]}
    assert adapt(row, "ultrafeedback") == PreferenceExample("q", ["a", "b"], [1.0, 2.0])


def test_ultrafeedback_without_any_score():
    row = {"instruction": "q", "completions": [_record("a", overall=1), _record("b", ratings={"honesty": "N/A"})]}
    with pytest.raises(BadRowError) as info:
        adapt(row, "ultrafeedback")
    assert info.value.reason == "missing_score"
    assert "completions[1]" in info.value.detail


# ----------------------------------------------------------------------------- bad rows


@pytest.mark.parametrize(
    ("row", "layout", "reason", "column"),
    [
        ({"prompt": "q", "chosen": "a"}, "pairwise", "missing_column", "rejected"),
        ({"prompt": "q", "chosen": "a", "rejected": None}, "pairwise", "missing_column", "rejected"),
        ({"prompt": None, "chosen": "a", "rejected": "b"}, "pairwise", "missing_column", "prompt"),
        ({"prompt": "q", "completions": ["a", "b"]}, "ranked", "missing_column", "scores"),
        ({"prompt": "q", "chosen": 3, "rejected": "b"}, "pairwise", "wrong_type", "chosen"),
        ({"prompt": "q", "chosen": [{"role": "assistant"}], "rejected": "b"}, "pairwise", "wrong_type", "chosen"),
        ({"prompt": "q", "completions": "ab", "scores": [1, 0]}, "ranked", "wrong_type", "completions"),
        ({"prompt": "q", "completions": ["a", "b"], "scores": ["1", "0"]}, "ranked", "wrong_type", "scores[0]"),
        ({"prompt": "q", "completions": ["a"], "scores": [1]}, "ranked", "too_few_completions", "completions"),
        ({"instruction": "q", "completions": []}, "ultrafeedback", "too_few_completions", "completions"),
        ({"prompt": "q", "chosen": "", "rejected": "b"}, "pairwise", "empty_completion", "chosen"),
        (
            {"prompt": "q", "completions": ["a", "  ", "c"], "scores": [1, 2, 3]},
            "ranked",
            "empty_completion",
            "completions[1]",
        ),
        (
            {"prompt": "q", "chosen": [assistant("a")], "rejected": [assistant("")]},
            "pairwise",
            "empty_completion",
            "rejected",
        ),
        ({"prompt": "", "chosen": "a", "rejected": "b"}, "pairwise", "empty_prompt", "prompt"),
        (
            {"prompt": "q", "completions": ["a", "b"], "scores": [1.0, math.nan]},
            "ranked",
            "nonfinite_score",
            "scores[1]",
        ),
        (
            {"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": math.inf, "score_rejected": 1},
            "pairwise",
            "nonfinite_score",
            "score_chosen",
        ),
        (
            {"prompt": "q", "completions": ["a", "b", "c"], "scores": [1, 2]},
            "ranked",
            "score_length_mismatch",
            "completions",
        ),
        ({"prompt": "q", "completions": ["a", "b"], "ranks": [1, 1]}, "ranked", "all_tied", "equal"),
        (
            {"chosen": [user("q"), assistant("a")], "rejected": [user("r"), assistant("b")]},
            "pairwise",
            "missing_column",
            "prompt",
        ),
    ],
)
def test_bad_rows(row, layout, reason, column):
    with pytest.raises(BadRowError) as info:
        adapt(row, layout)
    err = info.value
    assert (err.reason, err.source, err.index) == (reason, "src.jsonl", 7)
    assert column in err.detail
    assert str(err).startswith("bad row 7 in src.jsonl:")


def test_all_tied_allowed_without_order():
    row = {"prompt": "q", "completions": ["a", "b"], "ranks": [1, 1]}
    assert adapt(row, "ranked", require_order=False).scores == [0.0, 0.0]


def test_unknown_layout():
    with pytest.raises(ValueError, match="unknown layout 'nope'"):
        adapt({"prompt": "q"}, "nope")
