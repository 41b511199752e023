"""Judges: the checks on what a judge returns, callable lookup, and reward-model and
pairwise judges against probabilities computed here independently (one unpadded text at a
time, token ids written out by hand), plus dispatch from the recipe's JudgeConfig."""

from __future__ import annotations

import math
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from alignment.online import judges
from alignment.online.judges import CallableJudge, Judge, JudgeError, PairwiseJudge, RewardModelJudge, build_judge
from alignment.schema.online import JudgeConfig
from tests.helpers import ASSISTANT, EOS, TINY, USER, assert_float32_close, char_ids, float32_approx, tiny_tokenizer

# ---------------------------------------------------------------------------- callable

JUDGE_MODULE = "tiny_judges_for_tests"
JUDGE_SOURCE = """
import numpy as np
import torch

NOT_CALLABLE = 3

def shorter_wins(prompts, completions):
    return [len(b) / (len(a) + len(b)) for a, b in completions]

def as_numpy(prompts, completions):
    return np.array([0.0, 1.0])

def as_grad_tensor(prompts, completions):
    return torch.tensor([0.25, 0.5], requires_grad=True)

def column(prompts, completions):
    return [[0.5]] * len(prompts)

def two_columns(prompts, completions):
    return np.full((len(prompts), 2), 0.5)

def one_short(prompts, completions):
    return [0.5] * (len(prompts) - 1)

def scalar(prompts, completions):
    return 0.5

def nan(prompts, completions):
    return [0.5, float("nan")]

def inf(prompts, completions):
    return torch.tensor([float("inf"), 0.5])

def too_big(prompts, completions):
    return [0.5, 1.5]

def negative(prompts, completions):
    return (0.2, -0.1)

def text(prompts, completions):
    return "0.5"

def nothing(prompts, completions):
    return None
"""

PROMPTS = ["2+2=", "3+4="]
PAIRS = [("4", "five"), ("7", "7")]


@pytest.fixture
def judge_module(tmp_path, monkeypatch):
    """A module of judge functions, importable by name for the duration of one test."""
    (tmp_path / f"{JUDGE_MODULE}.py").write_text(textwrap.dedent(JUDGE_SOURCE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield JUDGE_MODULE
    sys.modules.pop(JUDGE_MODULE, None)


def callable_judge(module: str, fn: str) -> CallableJudge:
    return CallableJudge(f"{module}:{fn}")


def test_callable_judge_returns_the_functions_values(judge_module):
    judge = callable_judge(judge_module, "shorter_wins")
    assert judge.name == f"callable judge {judge_module}:shorter_wins"
    p = judge(PROMPTS, PAIRS)
    assert p.dtype == torch.float32 and p.device.type == "cpu"
    assert p.tolist() == float32_approx([4 / 5, 1 / 2], ulps=1)
    assert callable_judge(judge_module, "as_numpy")(PROMPTS, PAIRS).tolist() == [0.0, 1.0]
    p = callable_judge(judge_module, "as_grad_tensor")(PROMPTS, PAIRS)
    assert p.tolist() == [0.25, 0.5] and not p.requires_grad


@pytest.mark.parametrize(
    "fn, phrase",
    [
        ("column", "expected shape [2]"),
        ("two_columns", "shape [2, 2]"),
        ("one_short", "shape [1]"),
        ("scalar", "shape []"),
        ("nan", "not finite"),
        ("inf", "not finite"),
        ("too_big", "outside [0, 1]: 1.5 at index 1"),
        ("negative", "outside [0, 1]: -0.1"),
        ("text", "returned str"),
        ("nothing", "returned NoneType"),
    ],
)
def test_callable_judge_rejects_bad_answers(judge_module, fn, phrase):
    judge = callable_judge(judge_module, fn)
    with pytest.raises(JudgeError) as info:
        judge(PROMPTS, PAIRS)
    assert judge.name in str(info.value)
    assert phrase in str(info.value)


def test_nan_is_reported_with_its_index(judge_module):
    with pytest.raises(JudgeError, match=r"nan at index 1"):
        callable_judge(judge_module, "nan")(PROMPTS, PAIRS)


@pytest.mark.parametrize(
    "function, phrase",
    [
        ("no_such_module_anywhere:fn", "cannot import module 'no_such_module_anywhere'"),
        (f"{JUDGE_MODULE}:missing", "has no attribute 'missing'"),
        (f"{JUDGE_MODULE}:NOT_CALLABLE", "not callable"),
        (f"{JUDGE_MODULE}", "'module:function'"),
    ],
)
def test_callable_judge_lookup_errors_name_the_judge(judge_module, function, phrase):
    with pytest.raises(JudgeError) as info:
        CallableJudge(function)
    assert f"callable judge {function}" in str(info.value)
    assert phrase in str(info.value)


def test_inputs_must_match(judge_module):
    judge = callable_judge(judge_module, "shorter_wins")
    with pytest.raises(ValueError, match="2 prompts but 1 completion pairs"):
        judge(PROMPTS, PAIRS[:1])
    assert judge([], []).shape == (0,)


# ---------------------------------------------------------------- classifier fixtures


def save_classifier(path: Path, num_labels: int, seed: int = 0, bare_tokenizer: bool = False):
    """A tiny seeded LlamaForSequenceClassification and the tiny tokenizer, saved to `path`.
    The score head is scaled up so that probabilities are far from 0.5 and differ by text."""
    config = AutoConfig.from_pretrained(TINY / "model")
    config.num_labels = num_labels
    tokenizer = tiny_tokenizer()
    if bare_tokenizer:  # no pad token, no chat template: the judge falls back to EOS and plain text
        tokenizer.pad_token = None
        tokenizer.chat_template = None
        config.pad_token_id = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(config)
        with torch.no_grad():
            model.score.weight.normal_(0.0, 0.2)
    model.eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path), model


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    return save_classifier(tmp_path_factory.mktemp("rm"), num_labels=1)


@torch.no_grad()
def logits_alone(model, ids: list[int]) -> torch.Tensor:
    """The model on one unpadded sequence: no batching, no tokenizer."""
    return model(input_ids=torch.tensor([ids])).logits[0].float()


def reward_alone(model, ids: list[int]) -> float:
    return logits_alone(model, ids)[0].item()


RM_PROMPTS = ["2+2=", "The capital of France is", "hi"]
RM_PAIRS = [("4", "five"), (" Paris.", " Lyon, I think"), ("hello there", "")]


def test_reward_model_judge_is_bradley_terry_on_unpadded_rewards(reward_model):
    path, model = reward_model
    judge = RewardModelJudge(path, batch_size=2)  # 6 texts of different lengths: 3 padded batches
    assert judge.name == f"reward model judge {path}"
    r0 = [reward_alone(model, char_ids(x + y0)) for x, (y0, _) in zip(RM_PROMPTS, RM_PAIRS, strict=True)]
    r1 = [reward_alone(model, char_ids(x + y1)) for x, (_, y1) in zip(RM_PROMPTS, RM_PAIRS, strict=True)]
    expected = [1 / (1 + math.exp(b - a)) for a, b in zip(r0, r1, strict=True)]
    p = judge(RM_PROMPTS, RM_PAIRS)
    assert p.dtype == torch.float32 and p.shape == (3,)
    assert p.tolist() == float32_approx(expected, ulps=4)
    assert max(expected) - min(expected) > 0.1  # the check can tell texts apart
    assert_float32_close(judge.rewards(RM_PROMPTS, [y0 for y0, _ in RM_PAIRS]), torch.tensor(r0), ulps=8)
    swapped = judge(RM_PROMPTS, [(b, a) for a, b in RM_PAIRS])
    assert (p + swapped).tolist() == float32_approx([1.0] * 3, ulps=2)


def test_reward_model_judge_scores_chat_prompts_through_the_chat_template(reward_model):
    path, model = reward_model
    judge = RewardModelJudge(path, batch_size=4)
    prompts = [[{"role": "user", "content": "2+2="}], "plain "]
    pairs = [("4", "22"), ("a", "bb")]

    def chat_ids(user: str, answer: str) -> list[int]:  # <|user|>..<|end|><|assistant|>..<|end|>
        return [USER, *char_ids(user), EOS, ASSISTANT, *char_ids(answer), EOS]

    r = judge.rewards(prompts * 2, ["4", "a", "22", "bb"])
    expected = [
        reward_alone(model, chat_ids("2+2=", "4")),
        reward_alone(model, char_ids("plain a")),
        reward_alone(model, chat_ids("2+2=", "22")),
        reward_alone(model, char_ids("plain bb")),
    ]
    # one batch of four padded texts against each text alone
    assert_float32_close(r, torch.tensor(expected), ulps=16)
    p = judge(prompts, pairs)
    assert p.tolist() == float32_approx(torch.sigmoid(r[:2] - r[2:]).tolist(), ulps=1)


def test_reward_model_judge_truncates_to_max_length_keeping_the_beginning(reward_model):
    path, model = reward_model
    judge = RewardModelJudge(path, max_length=5)
    r = judge.rewards(["abcdefgh", "ab"], ["ijk", "c"])
    expected = [reward_alone(model, char_ids("abcde")), reward_alone(model, char_ids("abc"))]
    assert_float32_close(r, torch.tensor(expected), ulps=4)


def test_reward_model_judge_without_pad_token_or_chat_template(tmp_path):
    path, model = save_classifier(tmp_path, num_labels=1, seed=1, bare_tokenizer=True)
    judge = RewardModelJudge(path, batch_size=3)
    assert judge.tokenizer.pad_token_id == EOS
    assert judge.model.config.pad_token_id == EOS  # the model reads the score before the padding
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    r = judge.rewards([chat, "x", "longer prompt "], ["yo", "yz", "q"])
    expected = [
        reward_alone(model, char_ids("system: be brief\nuser: hi\nassistant: yo")),
        reward_alone(model, char_ids("xyz")),
        reward_alone(model, char_ids("longer prompt q")),
    ]
    assert_float32_close(r, torch.tensor(expected), ulps=2)


def test_reward_model_judge_refuses_wrong_checkpoints(tmp_path):
    two, _ = save_classifier(tmp_path / "two", num_labels=2)
    with pytest.raises(JudgeError, match=r"reward model judge .*2 outputs \(num_labels\).*exactly one output"):
        RewardModelJudge(two)
    # A causal LM has no trained classification head; loading it would give a random one.
    config = AutoConfig.from_pretrained(TINY / "model")
    config.num_labels = 1
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "lm")
    tiny_tokenizer().save_pretrained(tmp_path / "lm")
    with pytest.raises(JudgeError, match=r"missing from the checkpoint.*score\.weight"):
        RewardModelJudge(str(tmp_path / "lm"))


# -------------------------------------------------------------------------- pairwise

TEMPLATE = JudgeConfig.pairwise_template


def expected_pairwise(model, prompt_text: str, y0: str, y1: str, template: str = TEMPLATE) -> float:
    def f(a: str, b: str) -> float:
        logits = logits_alone(model, char_ids(template.format(prompt=prompt_text, completion_a=a, completion_b=b)))
        return torch.sigmoid(logits[0]).item() if len(logits) == 1 else logits.softmax(-1)[0].item()

    return (f(y0, y1) + 1 - f(y1, y0)) / 2


@pytest.mark.parametrize("num_labels", [2, 1])
def test_pairwise_judge_averages_both_orders(tmp_path, num_labels):
    path, model = save_classifier(tmp_path, num_labels=num_labels, seed=2)
    judge = PairwiseJudge(path, batch_size=3)
    assert judge.name == f"pairwise judge {path}"
    prompts = ["2+2=", [{"role": "user", "content": "hi"}], "same"]
    pairs = [("4", "five"), ("hello", "go away"), ("x", "x")]
    expected = [
        expected_pairwise(model, "2+2=", "4", "five"),
        expected_pairwise(model, "user: hi", "hello", "go away"),  # messages as `role: content` lines
        0.5,  # the same completion twice: position bias cancels exactly
    ]
    p = judge(prompts, pairs)
    assert p.tolist() == float32_approx(expected, ulps=8)
    assert abs(expected[0] - 0.5) > 0.01 or abs(expected[1] - 0.5) > 0.01  # the check can tell texts apart
    swapped = judge(prompts, [(b, a) for a, b in pairs])
    assert (p + swapped).tolist() == float32_approx([1.0] * 3, ulps=2)


def test_pairwise_judge_uses_its_template(tmp_path):
    path, model = save_classifier(tmp_path, num_labels=2, seed=3)
    template = "[{completion_b}] vs [{completion_a}] for {prompt}"
    judge = PairwiseJudge(path, template=template)
    p = judge(["q"], [("yes", "no")])
    # (0 measured here; up to 1.5 units in the test above, which computes it the same way)
    assert p.item() == float32_approx(expected_pairwise(model, "q", "yes", "no", template), ulps=8)
    with pytest.raises(JudgeError, match=r"pairwise judge .*template may only use"):
        PairwiseJudge(path, template="{prompt} {answer}")


def test_pairwise_judge_refuses_three_labels(tmp_path):
    path, _ = save_classifier(tmp_path, num_labels=3)
    with pytest.raises(JudgeError, match=r"pairwise judge .*3 outputs \(num_labels\)"):
        PairwiseJudge(path)


# ------------------------------------------------------------------------ build_judge


def test_build_judge_dispatches_on_type(judge_module, reward_model, tmp_path):
    judge = build_judge(JudgeConfig(type="callable", function=f"{judge_module}:shorter_wins"), "cpu")
    assert isinstance(judge, CallableJudge)
    assert judge(PROMPTS, PAIRS).tolist() == float32_approx([4 / 5, 1 / 2], ulps=1)

    path, _ = reward_model
    # device "auto": the training process's; an explicit device wins over it.
    cfg = JudgeConfig(type="reward_model", name_or_path=path, batch_size=3, max_length=7, dtype="bfloat16")
    judge = build_judge(cfg, torch.device("cpu"))
    assert isinstance(judge, RewardModelJudge)
    assert (judge.batch_size, judge.max_length, judge.device) == (3, 7, torch.device("cpu"))
    assert judge.model.dtype == torch.bfloat16
    assert judge(RM_PROMPTS, RM_PAIRS).dtype == torch.float32
    cfg = JudgeConfig(type="reward_model", name_or_path=path, device="cpu")
    judge = build_judge(cfg, "meta")
    assert judge.device == torch.device("cpu") and judge.model.dtype == torch.float32

    pairwise, _ = save_classifier(tmp_path / "pairwise", num_labels=2)
    cfg = JudgeConfig(
        type="pairwise", name_or_path=pairwise, pairwise_template="{prompt}|{completion_a}|{completion_b}"
    )
    judge = build_judge(cfg, "cpu")
    assert isinstance(judge, PairwiseJudge) and judge.template == cfg.pairwise_template


def test_build_judge_passes_hub_options_through_and_loads_safetensors_only(reward_model, monkeypatch):
    path, _ = reward_model
    calls: dict[str, dict] = {}

    def recording(label, cls):
        original = cls.from_pretrained

        def from_pretrained(*args, **kwargs):
            calls[label] = kwargs
            return original(*args, **kwargs)

        monkeypatch.setattr(judges, label, type(label, (), {"from_pretrained": staticmethod(from_pretrained)}))

    recording("AutoConfig", AutoConfig)
    recording("AutoTokenizer", AutoTokenizer)
    recording("AutoModelForSequenceClassification", AutoModelForSequenceClassification)
    cfg = JudgeConfig(type="reward_model", name_or_path=path, trust_remote_code=True, revision="main")
    assert isinstance(build_judge(cfg, "cpu"), Judge)
    for kwargs in calls.values():
        assert kwargs["trust_remote_code"] is True and kwargs["revision"] == "main"
    assert calls["AutoModelForSequenceClassification"]["use_safetensors"] is True
    assert calls["AutoModelForSequenceClassification"]["dtype"] == "auto"
