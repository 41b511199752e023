"""Several reward functions (online.judge as a list): the built-in rewards against hand
values and TRL's own, the aggregation against TRL 1.16's `multi_objective_aggregation`
(sum_then_normalize, normalize_then_sum = GDPO) through our loss's advantages, None
rewards, TRL's keyword call with the prompt rows' columns, and the recipe checks. Fast:
no training runs (tests/test_dynamic_sampling.py trains)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from trl.rewards import get_soft_overlong_punishment
from trl.trainer.utils import nanstd as trl_nanstd

from alignment.config import ConfigError, load_config
from alignment.data import PromptCollator
from alignment.data.prompts import build_prompt_datasets
from alignment.losses import SequenceLogps, get_loss
from alignment.online.feedback import aggregate_rewards, judge_samples, win_rates
from alignment.online.judges import JudgeError, RewardFunctionJudge, build_judge
from alignment.online.reward_functions import ExactMatch, FormatReward, SoftOverlongPunishment
from alignment.schema import DataConfig, JudgeConfig, SourceConfig
from tests.helpers import ROOT, tiny_tokenizer, write_jsonl

# ----------------------------------------------------------------------------- built-in rewards


def test_format_reward_matches_the_whole_completion():
    reward = FormatReward(r"<think>.*</think>\d+")
    texts = ["<think>3+4\nis 7</think>7", "<think>x</think>7 then more", "7", "<think>a</think>12"]
    assert reward(completions=texts) == [1.0, 0.0, 0.0, 1.0]  # `.` crosses the newline; a tail fails fullmatch


def test_soft_overlong_punishment_is_daPOs_eq_13_and_trls():
    """L_max 10, L_cache 4: 0 up to 6 tokens, then (6 - |y|) / 4 down to -1 at 10, and -1 beyond."""
    ours = SoftOverlongPunishment(10, 4)
    ids = [[1] * n for n in range(14)]
    assert ours(completion_ids=ids) == [0.0] * 7 + [-0.25, -0.5, -0.75, -1.0, -1.0, -1.0, -1.0]
    assert ours(completion_ids=ids) == get_soft_overlong_punishment(10, 4)(ids)
    for max_length, cache in [(24, 8), (5, 1), (7, 0)]:
        lengths = [[0] * n for n in range(max_length + 3)]
        if cache:  # TRL divides by L_cache: with 0 it has no band (and would divide by zero in it)
            assert ours.__class__(max_length, cache)(completion_ids=lengths) == get_soft_overlong_punishment(
                max_length, cache
            )(lengths)
    assert SoftOverlongPunishment(7, 0)(completion_ids=[[0] * 7, [0] * 8]) == [0.0, -1.0]  # a hard cut


def test_exact_match_reads_a_column_and_skips_rows_without_one():
    whole = ExactMatch("answer")
    assert whole(completions=[" 7\n", "8", "7", "x"], answer=["7", "7", None, ""]) == [1.0, 0.0, None, None]
    after_equals = ExactMatch("answer", r"=\s*(-?\d+)")
    texts = ["3 + 4 = 7.", "3+4=5, no: 3+4=7", "The sum is 7", "= -2"]
    assert after_equals(completions=texts, answer=[7, "7", "7", "-2"]) == [1.0, 1.0, 0.0, 1.0]  # the last match
    with pytest.raises(KeyError, match="no column 'answer'"):
        whole(completions=["7"], solution=["7"])


# ----------------------------------------------------------------------------- aggregation against TRL


def trl_advantages(rewards_per_func: torch.Tensor, weights: torch.Tensor, k: int, how: str, scale: str):
    """TRL 1.16 GRPOTrainer._generate_and_score_completions, the aggregation block, verbatim
    but for `self.` (trl/trainer/grpo_trainer.py), on one process."""
    unscorable_mask = torch.isnan(rewards_per_func).all(dim=1)
    if how == "sum_then_normalize":
        rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
        rewards[unscorable_mask] = torch.nan
        mean_grouped_rewards = torch.nanmean(rewards.view(-1, k), dim=1).repeat_interleave(k, dim=0)
        if scale in ["group", "none"]:
            std_rewards = trl_nanstd(rewards.view(-1, k), dim=1).repeat_interleave(k, dim=0)
        else:
            std_rewards = trl_nanstd(rewards).expand_as(rewards)
        advantages = rewards - mean_grouped_rewards
        if scale != "none":
            advantages = advantages / (std_rewards + 1e-4)
    else:
        grouped = rewards_per_func.view(-1, k, rewards_per_func.size(1))
        mean_k = torch.nanmean(grouped, dim=1, keepdim=True)
        std_k = trl_nanstd(grouped, dim=1, keepdim=True)
        reward_k = ((grouped - mean_k) / (std_k + 1e-4)).view(-1, rewards_per_func.size(1))
        rewards = (reward_k * weights.unsqueeze(0)).nansum(dim=1)
        rewards[unscorable_mask] = torch.nan
        std_rewards = trl_nanstd(rewards).expand_as(rewards)
        advantages = (rewards - torch.nanmean(rewards)) / (std_rewards + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0)


def per_function_rewards(seed: int, b: int = 5, k: int = 4, f: int = 3) -> torch.Tensor:
    """Rewards [B, K, F] with None (NaN) answers: a function that applies to part of a
    group, one that skips a whole group, and a completion no function scores; every group
    keeps at least two scored completions."""
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(b, k, f, generator=g) * torch.tensor([1.0, 3.0, 0.2]) + torch.tensor([0.0, 2.0, -1.0])
    rewards[0, 1, 2] = float("nan")  # function 2 skips one completion
    rewards[1, :, 1] = float("nan")  # function 1 applies to none of group 1
    rewards[2, 3, :] = float("nan")  # nobody scores group 2's last completion
    rewards[3, 0, 0] = rewards[3, 2, 0] = float("nan")
    return rewards


@pytest.mark.parametrize(
    "how, scale",
    [(h, s) for h in ("sum_then_normalize",) for s in ("group", "batch", "none")] + [("normalize_then_sum", "batch")],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_several_rewards_give_trls_advantages(how, scale, seed):
    """Our aggregation, then the GRPO loss's own group (or batch) normalization, gives
    TRL's advantages; a completion no function scores is left out (TRL: advantage 0)."""
    per_function = per_function_rewards(seed)
    b, k, f = per_function.shape
    weights = torch.tensor([1.0, 0.5, 2.0])
    expected = trl_advantages(per_function.reshape(b * k, f), weights, k, how, scale).view(b, k)

    from alignment.online.feedback import Feedback

    feedback = Feedback.of_rewards(aggregate_rewards(per_function, weights, how))
    mask = feedback.scorable
    assert mask.tolist()[2] == [True, True, True, False] and mask.sum() == b * k - 1
    zeros = torch.zeros(b, k)
    logps = SequenceLogps(policy=zeros, reference=zeros, scores=feedback.rewards, mask=mask, lengths=zeros + 1)
    got = get_loss("grpo", scale_rewards=scale).advantages(logps)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


def test_normalize_then_sum_weighs_each_function_on_its_own_scale():
    """GDPO's point: a function with a larger spread does not drown a small one. Two
    functions, the second 100 times the first's scale: summed first, the first is noise;
    normalized first, both count as their weights say."""
    small = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    large = torch.tensor([[100.0, 0.0, 0.0, 100.0]])
    per_function = torch.stack([small, large], -1)
    weights = torch.ones(2)
    summed = aggregate_rewards(per_function, weights, "sum_then_normalize")
    assert summed.tolist() == [[100.0, 1.0, 0.0, 101.0]]
    normalized = aggregate_rewards(per_function, weights, "normalize_then_sum")
    z = 0.5 / (3**-0.5 + 1e-4)  # each function's (r - mean) / (std + eps)
    zl = 50.0 / (100 * 3**-0.5 + 1e-4)  # unbiased std of [0, 1, 0, 1]: sqrt(1/3)
    assert normalized[0].tolist() == pytest.approx([-z + zl, z - zl, -z - zl, z + zl], abs=1e-6)


def test_a_function_that_scores_one_completion_of_a_group_adds_nothing_normalized():
    """With one scored completion the group std is undefined (NaN, as TRL's nanstd): the
    function contributes nothing to that group under normalize_then_sum."""
    per_function = torch.tensor([[[1.0, float("nan")], [2.0, 5.0], [3.0, float("nan")]]])
    got = aggregate_rewards(per_function, torch.ones(2), "normalize_then_sum")
    first = (torch.tensor([1.0, 2.0, 3.0]) - 2.0) / (1.0 + 1e-4)
    assert got[0].tolist() == pytest.approx(first.tolist())


# ----------------------------------------------------------------------------- the judges, None, keywords


def test_win_rates_count_only_the_scored_completions():
    preferences = torch.tensor([[[0.5, 0.9, 0.3], [0.1, 0.5, 0.6], [0.7, 0.4, 0.5]]])
    scorable = torch.tensor([[True, True, False]])
    assert win_rates(preferences, scorable)[0].tolist() == pytest.approx([0.9, 0.1, 0.55])


def module_with(tmp_path, monkeypatch, name: str, body: str) -> str:
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    return name


def test_reward_functions_are_called_trls_way_with_the_rows_columns(tmp_path, monkeypatch):
    """A TRL-style function (`completions`, a column, **kwargs) gets, per completion, the
    row's column, the token ids and the trainer state; an old-style `f(prompts,
    completions)` still works; None answers are NaN and leave the completion unscored."""
    name = module_with(
        tmp_path,
        monkeypatch,
        "trl_style_rewards",
        "CALLS = []\n"
        "def accuracy(completions, answer, **kwargs):\n"
        "    CALLS.append((list(completions), list(answer), kwargs))\n"
        "    return [None if a is None else float(c == a) for c, a in zip(completions, answer)]\n"
        "def length(prompts, completions):\n"
        "    return [float(len(c)) for c in completions]\n",
    )
    judges = [
        JudgeConfig(type="reward_function", function=f"{name}:accuracy"),
        JudgeConfig(type="reward_function", function=f"{name}:length", weight=0.5),
    ]
    panel = build_judge(judges, "cpu")
    context = {
        "completion_ids": [[[7], [8, 9]], [[1], [2]]],
        "answer": ["7", None],
        "trainer_state": "state",
    }
    feedback = judge_samples(panel, ["3+4=", "1+1="], [["7", "89"], ["1", "2"]], context)
    completions, answers, kwargs = sys.modules[name].CALLS[0]
    assert completions == ["7", "89", "1", "2"] and answers == ["7", "7", None, None]
    assert kwargs["prompts"] == ["3+4=", "3+4=", "1+1=", "1+1="]
    assert kwargs["completion_ids"] == [[7], [8, 9], [1], [2]] and kwargs["trainer_state"] == "state"
    per_function = feedback.per_function
    assert per_function[..., 0].isnan().tolist() == [[False, False], [True, True]]
    assert per_function[..., 1].tolist() == [[1.0, 2.0], [1.0, 1.0]]
    assert feedback.rewards.tolist() == [[1.0 + 0.5, 0.0 + 1.0], [0.5, 0.5]]  # nansum of w * r
    assert feedback.names == ("accuracy", "length") and feedback.scorable is None


def test_a_completion_no_function_scores_is_left_out(tmp_path, monkeypatch):
    name = module_with(
        tmp_path, monkeypatch, "partial_rewards", "def r(completions, **kw):\n    return [None, 1.0, 0.0]\n"
    )
    judge = RewardFunctionJudge(f"{name}:r")
    feedback = judge_samples(judge, ["p"], [["a", "b", "c"]])
    assert feedback.scorable.tolist() == [[False, True, True]]
    assert feedback.scores("rewards").tolist() == [[0.0, 1.0, 0.0]]  # a placeholder where unscored


def test_a_reward_of_inf_or_the_wrong_count_is_refused_naming_the_function(tmp_path, monkeypatch):
    name = module_with(
        tmp_path,
        monkeypatch,
        "bad_rewards",
        "def inf(completions, **kw):\n    return [float('inf')] * len(completions)\n"
        "def short(completions, **kw):\n    return [1.0]\n",
    )
    with pytest.raises(JudgeError, match=rf"reward function {name}:inf returned a value that is not finite"):
        judge_samples(RewardFunctionJudge(f"{name}:inf"), ["p"], [["a", "b"]])
    with pytest.raises(JudgeError, match=rf"reward function {name}:short returned values of shape \[1\]"):
        judge_samples(RewardFunctionJudge(f"{name}:short"), ["p"], [["a", "b"]])


def test_one_weighted_reward_judge_scales_its_rewards():
    judge = build_judge(JudgeConfig(type="format", pattern=r"\d", weight=2.5), "cpu")
    assert judge_samples(judge, ["p"], [["7", "x"]]).rewards.tolist() == [[2.5, 0.0]]


def test_the_overlong_reward_defaults_to_max_new_tokens():
    judge = build_judge(JudgeConfig(type="overlong", soft_punish_cache=2), "cpu", max_new_tokens=4)
    ids = [[[0] * 2, [0] * 3, [0] * 4]]
    assert judge_samples(judge, ["p"], [["a", "b", "c"]], {"completion_ids": ids}).rewards.tolist() == [
        [0.0, -0.5, -1.0]
    ]


# ----------------------------------------------------------------------------- data columns reach the judge


def test_prompt_rows_keep_their_other_columns_for_reward_functions(tmp_path):
    rows = [{"prompt": "3+4=", "answer": "7", "meta": {"level": 1}}, {"prompt": "1+1=", "answer": "2", "meta": None}]
    write_jsonl(tmp_path / "prompts.jsonl", rows)
    cfg = DataConfig(train=[SourceConfig(path=str(tmp_path / "prompts.jsonl"))], test_size=0)
    tokenizer = tiny_tokenizer()
    prepared = build_prompt_datasets(cfg, tokenizer)
    batch = PromptCollator(tokenizer.pad_token_id)([prepared.train[i] for i in range(2)])
    assert sorted(batch["prompts"]) == ["1+1=", "3+4="]
    by_prompt = dict(zip(batch["prompts"], batch["columns"], strict=True))
    assert by_prompt["3+4="] == {"answer": "7", "meta": {"level": 1}}
    assert by_prompt["1+1="] == {"answer": "2", "meta": None}
    judge = build_judge(JudgeConfig(type="exact_match", column="answer"), "cpu")
    columns = {"answer": [c["answer"] for c in batch["columns"]]}
    truth = [by_prompt[p]["answer"] for p in batch["prompts"]]
    feedback = judge_samples(judge, batch["prompts"], [[t, "0"] for t in truth], columns)
    assert feedback.rewards.tolist() == [[1.0, 0.0], [1.0, 0.0]]


# ----------------------------------------------------------------------------- recipes


def recipe_with(tmp_path, judge: str, extra: str = "") -> str:
    text = (ROOT / "recipes/tiny/grpo.yaml").read_text()
    start = text.index("  judge:")
    end = text.index("\n", start)
    path = tmp_path / "recipe.yaml"
    path.write_text(text[:start] + judge + extra + text[end:])
    return str(path)


def test_a_list_of_judges_loads_with_shorthands_and_weights(tmp_path):
    judge = (
        "  judge:\n"
        "    - alignment.tasks.arithmetic:reward\n"
        "    - {type: format, pattern: '\\d+', weight: 0.5, name: digits}\n"
        "    - {type: overlong, soft_punish_cache: 1, weight: 0.1}\n"
        "  multi_objective_aggregation: normalize_then_sum"
    )
    config = load_config(recipe_with(tmp_path, judge))
    judges = config.online.judge
    assert [(j.type, j.weight) for j in judges] == [("reward_function", 1.0), ("format", 0.5), ("overlong", 0.1)]
    panel = build_judge(judges, "cpu", config.online.multi_objective_aggregation, config.online.max_new_tokens)
    assert panel.names == ["reward", "digits", "overlong"] and panel.aggregation == "normalize_then_sum"
    assert panel.weights.tolist() == pytest.approx([1.0, 0.5, 0.1])


@pytest.mark.parametrize(
    "judge, phrase",
    [
        (
            "  judge: [alignment.tasks.arithmetic:closer_to_sum2, {type: callable, function: a:b}]",
            r"online\.judge\.1: a list of judges sums their rewards, so each must give rewards .*a callable judge",
        ),
        ("  judge: []", "online.judge: an empty list"),
        ("  judge: [{type: format}]", "online.judge.pattern: a format reward needs a regular expression"),
        ("  judge: [{type: format, pattern: '(\\d'}]", r"online.judge.pattern: '\(\\\\d' is not a regular expression"),
        ("  judge: [{type: exact_match}]", "online.judge.column: exact_match compares with a column"),
        ("  judge: [{type: exact_match, column: a, pattern: '\\d'}]", "has none"),
        ("  judge: [{type: overlong}]", "online.judge.soft_punish_cache: an overlong reward needs L_cache >= 0"),
        (
            "  judge: [{type: overlong, soft_punish_cache: 4, max_completion_length: 4}]",
            r"max_completion_length \(4\) must exceed soft_punish_cache \(4\)",
        ),
        ("  judge: [{type: format, pattern: x, column: a}]", "online.judge.column applies to exact_match rewards only"),
        ("  judge: [{type: format, pattern: x, weight: .nan}]", "online.judge.weight must be a finite number"),
        (
            "  judge: {type: callable, function: alignment.tasks.arithmetic:closer_to_sum, weight: 2}",
            "online.judge.weight weighs rewards; a callable judge answers preferences",
        ),
        ("  judge: [{type: format, pattern: x, colour: red}]", "online.judge.0: unknown key 'colour'"),
    ],
)
def test_bad_judge_lists_fail_at_load_naming_the_key(judge, phrase, tmp_path):
    with pytest.raises(ConfigError, match=phrase):
        load_config(recipe_with(tmp_path, judge))


def test_two_reward_judges_with_one_name_are_refused():
    judges = [JudgeConfig(type="format", pattern="x"), JudgeConfig(type="format", pattern="y")]
    with pytest.raises(JudgeError, match="two reward judges are named 'format'; give each its own `name`"):
        build_judge(judges, "cpu")


def test_the_shipped_recipes_configure_what_they_say():
    rewards = load_config(ROOT / "recipes/tiny/grpo_rewards.yaml")
    assert [j.weight for j in rewards.online.judge] == [1.0, 0.5]
    assert rewards.online.multi_objective_aggregation == "normalize_then_sum"
    assert rewards.loss_fn.scale_rewards == "batch"
    dapo = load_config(ROOT / "recipes/tiny/dapo.yaml")
    assert dapo.online.dynamic_sampling and dapo.online.dynamic_sampling_max_draws == 4
    assert (dapo.loss[0].name, dapo.loss_fn.epsilon_high, dapo.loss_fn.beta) == ("dapo", 0.28, 0.0)
    assert json.loads(json.dumps(rewards.online.judge[1].pattern)) == r"\d{1,2}"
