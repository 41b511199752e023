"""tokenize_example: exact ids for text and chat, truncation, chat-template errors."""

from __future__ import annotations

import copy

import pytest
from tokenizers.processors import TemplateProcessing

from alignment.data import BadRowError, PreferenceExample, tokenize_example
from tests.helpers import ASSISTANT, EOS, SYSTEM, USER
from tests.helpers import char_ids as ids


def test_hand_ids_agree_with_tokenizer(tok):
    assert tok("Hi there!", add_special_tokens=False)["input_ids"] == ids("Hi there!")


def test_text_example(tok):
    example = PreferenceExample("Q: 2+2?", [" 4", " five"], [1.0, 0.0])
    out = tokenize_example(example, tok)
    assert out["prompt_input_ids"] == ids("Q: 2+2?")
    assert out["completion_input_ids"] == [ids(" 4") + [EOS], ids(" five") + [EOS]]
    assert [len(c) for c in out["completion_input_ids"]] == [3, 6]
    assert out["scores"] == [1.0, 0.0]
    assert (out["prompt_truncated"], out["completions_truncated"], out["tokens_dropped"]) == (False, 0, 0)


def test_text_prompt_gets_the_tokenizers_special_tokens_completions_do_not(tok):
    with_bos = copy.deepcopy(tok)
    with_bos._tokenizer.post_processor = TemplateProcessing(single="<|system|> $A", special_tokens=[("<|system|>", 3)])
    assert with_bos("ab")["input_ids"] == [SYSTEM] + ids("ab")  # the tokenizer now adds a BOS
    out = tokenize_example(PreferenceExample("ab", ["c", "d"], [1, 0]), with_bos)
    assert out["prompt_input_ids"] == [SYSTEM] + ids("ab")
    assert out["completion_input_ids"] == [ids("c") + [EOS], ids("d") + [EOS]]


def test_chat_example(tok):
    prompt = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]
    completions = [[{"role": "assistant", "content": "hello"}], [{"role": "assistant", "content": "go"}]]
    out = tokenize_example(PreferenceExample(prompt, completions, [2.0, 1.0]), tok)
    assert out["prompt_input_ids"] == [SYSTEM] + ids("be nice") + [EOS] + [USER] + ids("hi") + [EOS, ASSISTANT]
    assert out["completion_input_ids"] == [ids("hello") + [EOS], ids("go") + [EOS]]
    # Same as tokenizing the template's own renderings.
    prompt_text = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    assert out["prompt_input_ids"] == tok(prompt_text, add_special_tokens=False)["input_ids"]


def test_chat_multi_turn_completion(tok):
    prompt = [{"role": "user", "content": "a"}]
    completion = [{"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    out = tokenize_example(
        PreferenceExample(prompt, [completion, [{"role": "assistant", "content": "d"}]], [1, 0]), tok
    )
    assert out["completion_input_ids"][0] == ids("b") + [EOS, USER] + ids("c") + [EOS]


def test_chat_template_override(tok):
    template = "{% for m in messages %}[{{ m.content }}]{% endfor %}{% if add_generation_prompt %}>{% endif %}"
    example = PreferenceExample(
        [{"role": "user", "content": "q"}], [[{"role": "assistant", "content": "a"}]] * 2, [1, 0]
    )
    # The template's generation prompt is not a prefix of the conversation here, so this one must fail ...
    with pytest.raises(ValueError, match="data.chat_template"):
        tokenize_example(example, tok, chat_template=template)
    # ... and this one works, through the override rather than the tokenizer's template.
    template = "{% for m in messages %}[{{ m.content }}]{% endfor %}"
    out = tokenize_example(example, tok, chat_template=template)
    assert out["prompt_input_ids"] == ids("[q]")
    assert out["completion_input_ids"] == [ids("[a]"), ids("[a]")]


def test_chat_without_template_names_the_fix(tok):
    bare = copy.deepcopy(tok)
    bare.chat_template = None
    example = PreferenceExample(
        [{"role": "user", "content": "q"}], [[{"role": "assistant", "content": "a"}]] * 2, [1, 0]
    )
    with pytest.raises(ValueError, match="data.chat_template"):
        tokenize_example(example, bare)
    # Plain text needs no template.
    assert tokenize_example(PreferenceExample("q", ["a", "b"], [1, 0]), bare)["prompt_input_ids"] == ids("q")


def test_truncation_keeps_prompt_end_and_completion_start(tok):
    example = PreferenceExample("0123456789", ["abcdefgh", "xy"], [1, 0])
    out = tokenize_example(example, tok, max_prompt_length=4, max_length=8)
    assert out["prompt_input_ids"] == ids("6789")
    # room = 8 - 4 = 4: "abcdefgh" + EOS (9 tokens) keeps "abcd"; "xy" + EOS fits.
    assert out["completion_input_ids"] == [ids("abcd"), ids("xy") + [EOS]]
    assert out["prompt_truncated"] is True
    assert out["completions_truncated"] == 1
    assert out["tokens_dropped"] == 6 + 5


def test_no_truncation_when_it_fits(tok):
    out = tokenize_example(PreferenceExample("0123", ["ab", "c"], [1, 0]), tok, max_prompt_length=4, max_length=7)
    assert out["completion_input_ids"] == [ids("ab") + [EOS], ids("c") + [EOS]]
    assert (out["prompt_truncated"], out["completions_truncated"], out["tokens_dropped"]) == (False, 0, 0)


def test_prompt_filling_max_length_is_a_bad_row(tok):
    with pytest.raises(BadRowError) as info:
        tokenize_example(PreferenceExample("0123456789", ["a", "b"], [1, 0]), tok, max_length=10)
    assert info.value.reason == "prompt_fills_max_length"


def test_accepts_a_mapping(tok):
    out = tokenize_example({"prompt": "q", "completions": ["a", "b"], "scores": [3, 1]}, tok)
    assert out["prompt_input_ids"] == ids("q") and out["scores"] == [3.0, 1.0]
