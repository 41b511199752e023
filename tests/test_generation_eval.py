"""Evaluation by generation (`evaluation:`): the SmolLM2 task's grader, the score-function
contract, the config checks, and `GenerationEvaluation` on the tiny model against an
independent greedy decode with transformers' `generate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from alignment.config import ConfigError, DataConfig, SourceConfig, load_config
from alignment.online.evaluation import (
    INITIAL_GENERATIONS,
    LATEST_GENERATIONS,
    GenerationEvaluation,
    ScoreFunction,
    evaluation_prompts,
)
from alignment.online.judges import JudgeError
from alignment.schema.online import EvaluationConfig, JudgeConfig
from alignment.tasks import chat_addition
from alignment.tasks.arithmetic import closer_to_sum, exact_sum
from tests.helpers import EOS, ROOT, TINY, tiny_model, tiny_tokenizer

# ---------------------------------------------------------------- the SmolLM2 task


@pytest.mark.parametrize(
    ("prompt", "truth"),
    [
        ("What is 3+4?", 7),
        ("What is 3 plus 4?", 7),
        ("Add 0 and 8.", 8),
        ("What's 9 + 9?", 18),
        ("Compute 5+0.", 5),
        ([{"role": "system", "content": "Be brief, 1 line."}, {"role": "user", "content": "What is 2+6?"}], 8),
    ],
)
def test_chat_addition_reads_every_phrasing(prompt, truth):
    assert chat_addition.true_sum(prompt) == truth


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        ("3 + 4 = 7.", 7),
        ("3 + 4 = 8\n\nThis is a classic example of 2 things.", 8),  # the number after '=' wins
        ("The sum of 0 and 8 is 8.", 8),  # no '=': the last integer
        ("The answer to this classic math problem is 11.", 11),
        ("To solve this problem, we need to find the sum.", None),
    ],
)
def test_chat_addition_reads_the_answer(completion, answer):
    assert chat_addition.answer(completion) == answer


def test_chat_addition_score_and_judge_by_hand():
    prompts = ["What is 3+4?"] * 3
    assert chat_addition.score(prompts, ["3 + 4 = 7.", "3 + 4 = 8.", "I do not know."]) == [1.0, 0.0, 0.0]
    pairs = [("3 + 4 = 7.", "3 + 4 = 8."), ("It is 8.", "Seven: 7"), ("3 + 4 = 8.", "No idea.")]
    assert chat_addition.judge(prompts, pairs) == [1.0, 0.0, 0.5]
    with pytest.raises(ValueError, match="expects prompts like"):
        chat_addition.true_sum("Tell me a joke.")


def test_the_shipped_smollm2_data_is_right_over_wrong_and_holds_out_whole_sums():
    rows = {
        split: [json.loads(line) for line in (ROOT / f"recipes/smollm2-135m/data/{split}.jsonl").open()]
        for split in ("train", "test")
    }
    assert len(rows["train"]) == 400 and len(rows["test"]) == 100
    sums = {}
    for split, items in rows.items():
        for row in items:
            prompt = row["prompt"]
            assert chat_addition.is_right(prompt, row["chosen"][0]["content"])
            assert not chat_addition.is_right(prompt, row["rejected"][0]["content"])
            operands = chat_addition._OPERANDS.search(prompt[-1]["content"]).groups()
            sums.setdefault(split, set()).add(operands)
    assert len(sums["train"]) == 80 and len(sums["test"]) == 20 and not sums["train"] & sums["test"]


# ---------------------------------------------------------------- the score-function contract


def _score_module(tmp_path, monkeypatch, body: str) -> str:
    name = f"my_scores_{tmp_path.name}"  # one module per case: imports are cached by name
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{name}:score"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("def score(p, c):\n    return [0.5]\n", r"shape \[1\]; expected \[2\]"),
        ("def score(p, c):\n    return [0.5, 1.5]\n", r"returned 1.5 at index 1; a score is in \[0, 1\]"),
        ("def score(p, c):\n    return [0.5, float('nan')]\n", "returned nan at index 1"),
        ("def score(p, c):\n    raise KeyError('answer')\n", "my_scores_.*:score raised KeyError"),
        ("def score(p, c):\n    return 'yes'\n", "returned str, not a list of floats"),
    ],
)
def test_a_bad_score_function_fails_naming_itself(tmp_path, monkeypatch, body, message):
    score = ScoreFunction(_score_module(tmp_path, monkeypatch, body))
    with pytest.raises(JudgeError, match=message):
        score(["1+1=", "2+2="], ["2", "4"])


def test_a_score_function_that_cannot_be_found_fails_at_once():
    with pytest.raises(JudgeError, match="cannot import module 'no_such_module'"):
        ScoreFunction("no_such_module:score")
    with pytest.raises(JudgeError, match="has no attribute 'nope'"):
        ScoreFunction("alignment.tasks.chat_addition:nope")


# ---------------------------------------------------------------- the recipe section


def _recipe(tmp_path, **sections) -> Path:
    raw = yaml.safe_load((TINY / "dpo.yaml").read_text())
    raw["training"]["output_dir"] = str(tmp_path / "out")
    for name, value in sections.items():
        if value is None:
            raw.pop(name, None)
        else:
            raw[name] = value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_evaluation_section_shorthand_and_defaults(tmp_path):
    config = load_config(_recipe(tmp_path, evaluation="alignment.tasks.arithmetic:exact_sum"))
    assert config.evaluation == EvaluationConfig(score="alignment.tasks.arithmetic:exact_sum")
    assert config.evaluation.temperature == 0.0 and config.resolved["evaluation"]["max_new_tokens"] == 64
    judged = load_config(_recipe(tmp_path, evaluation={"judge": "alignment.tasks.arithmetic:closer_to_sum"}))
    assert judged.evaluation.judge.function == "alignment.tasks.arithmetic:closer_to_sum"


@pytest.mark.parametrize(
    ("evaluation", "data_test", "message"),
    [
        ({"max_new_tokens": 8}, True, "evaluation: name a `score` function"),
        ({"score": "exact_sum"}, True, "named as 'module:function', got 'exact_sum'"),
        ({"score": "m:f", "temperature": -1}, True, "evaluation.temperature must be >= 0"),
        ({"score": "m:f", "max_prompts": 0}, True, "evaluation.max_prompts must be >= 1"),
        ({"score": "m:f", "greedy": True}, True, "greedy"),
        ({"score": "m:f"}, False, "evaluation: generates on the held-out prompts of data.test, which is empty"),
    ],
)
def test_a_bad_evaluation_section_is_refused_at_load(tmp_path, evaluation, data_test, message):
    path = _recipe(tmp_path, evaluation=evaluation)
    if not data_test:
        raw = yaml.safe_load(path.read_text())
        raw["data"].pop("test")
        raw["data"]["test_size"] = 0.1
        path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_an_online_recipe_keeps_its_judge_for_the_win_rate():
    online = ROOT / "recipes" / "tiny" / "nash_md.yaml"
    judge = "--evaluation.judge=alignment.tasks.arithmetic:closer_to_sum"
    with pytest.raises(ConfigError, match="already reports eval_win_rate_vs_initial, judged by online.judge"):
        load_config(online, [judge])
    scored = load_config(online, ["--evaluation.score=alignment.tasks.arithmetic:exact_sum"])
    assert scored.evaluation.score == "alignment.tasks.arithmetic:exact_sum"


# ---------------------------------------------------------------- GenerationEvaluation


@pytest.fixture(scope="module")
def prompts():
    test = SourceConfig(path=str(TINY / "data" / "pairs_test.jsonl"))
    cfg = DataConfig(train=[test], test=[test], max_prompt_length=16)
    return evaluation_prompts(cfg, tiny_tokenizer())


def _evaluation(prompts, **cfg) -> GenerationEvaluation:
    cfg = {"score": "alignment.tasks.arithmetic:exact_sum", "max_new_tokens": 3, "max_prompts": 24, **cfg}
    if "judge" in cfg:
        cfg["judge"] = JudgeConfig(**cfg["judge"])
    return GenerationEvaluation(
        EvaluationConfig(**cfg), prompts, tiny_tokenizer(), (EOS,), batch_size=7, device=torch.device("cpu")
    )


def _greedy_by_generate(model, prompts, n: int, max_new_tokens: int) -> list[str]:
    """transformers' own greedy decode, one unpadded prompt at a time."""
    tok = tiny_tokenizer()
    texts = []
    for i in range(n):
        ids = torch.tensor([prompts[i]["prompt_input_ids"]])
        with torch.no_grad():
            out = model.generate(
                ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=EOS, pad_token_id=tok.pad_token_id
            )
        texts.append(tok.decode(out[0, ids.size(1) :], skip_special_tokens=True))
    return texts


def test_answers_are_the_greedy_decode_and_the_accuracy_their_mean_score(prompts, tmp_path):
    model = tiny_model(seed=0).eval()
    evaluation = _evaluation(prompts)
    evaluation.start(model, output_dir=str(tmp_path))
    expected = _greedy_by_generate(model, prompts, 24, 3)
    written = [json.loads(line) for line in (tmp_path / INITIAL_GENERATIONS).open()]
    assert [row["completion"] for row in written] == expected
    assert [row["prompt"] for row in written] == [json.loads(prompts[i]["prompt"]) for i in range(24)]
    raw_prompts = [row["prompt"] for row in written]
    accuracy = sum(exact_sum(raw_prompts, expected)) / 24
    assert evaluation.initial_metrics == {"initial_generation_accuracy": pytest.approx(accuracy)}

    # Another policy: its own greedy answers, scored, and judged against the initial ones.
    other = tiny_model(seed=1).eval()
    evaluation.judge = _evaluation(prompts, judge={"function": "alignment.tasks.arithmetic:closer_to_sum"}).judge
    metrics = evaluation.evaluate(other, output_dir=str(tmp_path))
    mine = _greedy_by_generate(other, prompts, 24, 3)
    assert [json.loads(line)["completion"] for line in (tmp_path / LATEST_GENERATIONS).open()] == mine
    assert metrics["generation_accuracy"] == pytest.approx(sum(exact_sum(raw_prompts, mine)) / 24)
    assert metrics["initial_generation_accuracy"] == pytest.approx(accuracy)
    won = closer_to_sum(raw_prompts, list(zip(mine, expected, strict=True)))
    assert metrics["win_rate_vs_initial"] == pytest.approx(sum(won) / 24)
    tok = tiny_tokenizer()
    lengths = [len(tok(t, add_special_tokens=False).input_ids) for t in mine]
    # A finished answer counts its EOS token too; an unfinished one stops at max_new_tokens.
    finished = [n < 3 for n in lengths]
    assert metrics["generation_length"] == pytest.approx(
        sum(n + f for n, f in zip(lengths, finished, strict=True)) / 24
    )
    assert metrics["generation_missing_eos"] == pytest.approx(sum(not f for f in finished) / 24)


def test_the_initial_policy_against_itself_ties_and_a_resume_reloads_its_answers(prompts, tmp_path):
    model = tiny_model(seed=0).eval()
    judge = {"function": "alignment.tasks.arithmetic:closer_to_sum"}
    evaluation = _evaluation(prompts, judge=judge)
    evaluation.start(model, output_dir=str(tmp_path))
    metrics = evaluation.evaluate(model)
    assert metrics["win_rate_vs_initial"] == 0.5  # the same answers: every pair ties
    assert metrics["generation_accuracy"] == metrics["initial_generation_accuracy"]

    resumed = _evaluation(prompts, judge=judge)
    assert resumed.resume(str(tmp_path)) and resumed.initial == evaluation.initial
    assert resumed.initial_metrics == evaluation.initial_metrics
    assert not _evaluation(prompts, max_prompts=5).resume(str(tmp_path))  # other prompts: generate anew


def test_sampled_evaluation_is_seeded_and_leaves_the_training_rng_alone(prompts):
    model = tiny_model(seed=0).eval()
    evaluation = _evaluation(prompts, temperature=1.0)
    torch.manual_seed(123)
    first = evaluation.evaluate(model)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert evaluation.evaluate(model) == first
    assert torch.equal(torch.rand(3), after)
