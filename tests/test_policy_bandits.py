"""The policy losses on one-token bandits, checked against exact tabular optima.

The bandit of tests/test_online_bandit.py (one fixed prompt, a completion is one token of
a 7-token vocabulary, "no answer" = pad or EOS, the initial model's next-token
distribution is the reference mu), with feedback the other bandit tests do not use:

- a preference game with an intransitive core: a generalised rock-paper-scissors among
  a, c, e with unequal strengths, each of which beats the two likely answers b and d
  (b and d are transitively ordered), and no answer losing to everything. SPO (tau > 0,
  K = 4 policy samples) and Nash-MD (the mixture sampler, K = 2) must both reach the
  regularised equilibrium pi* ∝ mu exp(P(y > pi*) / tau) of `alignment.tabular_nash`;
- a reward per answer, learnt by CoPG from a fixed set of uniformly drawn (off-policy)
  pairs: the optimum is pi* ∝ mu exp(R / beta);
- a three-arm reward bandit (a, c, e; any other answer is worth 0) for RLOO and GRPO
  (with one and with two optimizer steps per batch of samples), whose expected reward
  must come within 0.05 of the best arm's (beta = 0), and for RLOO with beta > 0 within
  0.05 of the KL-regularised optimum pi ∝ mu exp(r / beta)'s."""

from __future__ import annotations

import copy
import json

import datasets
import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from alignment.losses import get_loss
from alignment.online.judges import Judge, RewardJudge
from alignment.schema.online import JudgeConfig, OnlineConfig
from alignment.tabular_nash import geometric_mixture, regularized_nash_equilibrium, total_variation
from alignment.trainers.arguments import AlignmentTrainingArguments
from alignment.trainers.online import OnlineTrainer
from alignment.trainers.preference import PreferenceTrainer
from tests.helpers import ANSWERS, PROMPT_ID, VOCAB, bandit_model, next_token_distribution

torch.set_num_threads(1)  # tiny matrices: more threads would only contend with other jobs

# Each test launches training runs (seconds each): the full suite runs them, the fast tier does not.
pytestmark = pytest.mark.slow

TAU = 0.1
MIXTURE = 0.125
COPG_BETA = 0.25
# CoPG's rewards, one per answer ("" is no answer).
COPG_REWARDS = {"a": 0.1, "b": -0.3, "c": 0.4, "d": 0.0, "e": 0.25, "": -0.5}
# The three-arm bandit: any other answer (b, d, no answer) is worth 0.
ARM_REWARDS = {"a": 0.2, "c": 1.0, "e": 0.5}
RLOO_BETA = 0.2  # large enough that the KL-regularised optimum is far from the best arm alone
SPO_STEPS, NASH_STEPS, COPG_STEPS, PG_STEPS = 300, 500, 150, 150


def answer_of_token() -> list[int]:
    """The answer (index into ANSWERS) each vocabulary token decodes to."""
    return [ANSWERS.index("" if token.startswith("<") else token) for token in VOCAB]


def game() -> torch.Tensor:
    """P[i, j] = P(answer i > answer j) over ANSWERS, P + P^T = 1."""
    a, b, c, d, e, none = (ANSWERS.index(x) for x in ("a", "b", "c", "d", "e", ""))
    wins = {(a, c): 0.7, (c, e): 0.8, (e, a): 0.65, (d, b): 0.55}  # the cycle, then b < d
    wins |= {(x, b): 0.65 for x in (a, c, e)} | {(x, d): 0.6 for x in (a, c, e)}
    wins |= {(x, none): 0.95 for x in (a, b, c, d, e)}
    P = torch.full((len(ANSWERS), len(ANSWERS)), 0.5, dtype=torch.float64)
    for (i, j), p in wins.items():
        P[i, j], P[j, i] = p, 1 - p
    return P


def game_on_tokens() -> torch.Tensor:
    index = torch.tensor(answer_of_token())
    return game()[index][:, index]


def rewards_on_tokens(rewards: dict[str, float]) -> torch.Tensor:
    return torch.tensor([rewards.get(ANSWERS[i], 0.0) for i in answer_of_token()], dtype=torch.float64)


class GameJudge(Judge):
    name = "intransitive game judge"

    def _probabilities(self, prompts, completions):
        index = torch.tensor([[ANSWERS.index(y) for y in pair] for pair in completions])
        return game()[index[:, 0], index[:, 1]]


class ArmRewardJudge(RewardJudge):
    name = "three-arm reward judge"

    def _rewards(self, prompts, completions):
        return [ARM_REWARDS.get(y, 0.0) for y in completions]


def bandit_tokenizer() -> PreTrainedTokenizerFast:
    word_level = models.WordLevel({token: i for i, token in enumerate(VOCAB)}, unk_token=VOCAB[0])
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(word_level), pad_token=VOCAB[0], eos_token=VOCAB[1])


# CPU, no logging to services, no checkpoints, no progress bar, a fixed seed.
QUIET_RUN = {"use_cpu": True, "report_to": "none", "save_strategy": "no", "disable_tqdm": True, "seed": 0}


def training_arguments(out, steps: int, batch: int, learning_rate: float) -> AlignmentTrainingArguments:
    """`steps` steps of Adam at `learning_rate` decaying linearly to 0, logged once at the end."""
    schedule = {"learning_rate": learning_rate, "lr_scheduler_type": "linear", "weight_decay": 0.0}
    return AlignmentTrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        logging_steps=steps,
        per_device_train_batch_size=batch,
        **schedule,
        **QUIET_RUN,
    )


def train_online(out, loss_fn, judge: Judge, *, steps: int, batch: int, learning_rate: float, **online):
    """(mu, final pi, the training logs) after online training of the bandit model on `batch` copies of the prompt."""
    model = bandit_model()
    mu = next_token_distribution(model)
    prompts = datasets.Dataset.from_dict(
        {"prompt": [json.dumps(VOCAB[PROMPT_ID])] * batch, "prompt_input_ids": [[PROMPT_ID]] * batch}
    )
    trainer = OnlineTrainer(
        model=model,
        args=training_arguments(out, steps, batch, learning_rate),
        loss_fn=loss_fn,
        judge=judge,
        online=OnlineConfig(judge=JudgeConfig(function="tests.test_policy_bandits:unused"), max_new_tokens=1, **online),
        ref_model=copy.deepcopy(model).eval(),
        processing_class=bandit_tokenizer(),
        train_dataset=prompts,
    )
    trainer.train()
    return mu, next_token_distribution(model), trainer.state.log_history


def mixture_stationary_point(P: torch.Tensor, mu: torch.Tensor, tau: float, m: float, start: torch.Tensor):
    """The fixed point pi ∝ mu exp(P pi_m / tau) of Nash-MD with an m-mixture opponent (damped iteration)."""
    pi = start.clone()
    for _ in range(5000):
        pi = 0.9 * pi + 0.1 * torch.softmax(torch.log(mu) + P @ geometric_mixture(pi, mu, m) / tau, -1)
    return pi


def test_spo_and_nash_md_reach_the_same_regularised_equilibrium(tmp_path, record_property):
    """SPO's fixed point with tau > 0: E_pi[(r - 1/2 - tau rho) grad log pi] = 0 for every
    logit iff P(y > pi) - tau log(pi / mu) is constant in y, i.e. pi ∝ mu exp(P(y > pi) / tau),
    the equilibrium Nash-MD targets too."""
    judge, loss = GameJudge(), {"tau": TAU}
    mu, spo, _ = train_online(
        tmp_path / "spo",
        get_loss("spo", **loss),
        judge,
        steps=SPO_STEPS,
        batch=64,
        learning_rate=3e-3,
        sampler="policy",
        num_samples=4,
    )
    _, nash, _ = train_online(
        tmp_path / "nash_md",
        get_loss("nash_md", **loss),
        judge,
        steps=NASH_STEPS,
        batch=64,
        learning_rate=3e-3,
        sampler="mixture",
        mixture_coef=MIXTURE,
        num_samples=2,
    )
    P = game_on_tokens()
    star = regularized_nash_equilibrium(P, mu, TAU)
    # Independent of the solver: pi* is the regularised best response to itself.
    assert torch.allclose(star, torch.softmax(torch.log(mu) + P @ star / TAU, -1), atol=1e-9)
    assert total_variation(mu, star) > 0.15  # training has somewhere to go
    # Nash-MD's exact stationary point (against the m-mixture) is within 0.01 of pi*.
    assert total_variation(mixture_stationary_point(P, mu, TAU, MIXTURE, star), star) < 0.01
    distances = {"spo": total_variation(spo, star), "nash_md": total_variation(nash, star)}
    distances["spo_vs_nash_md"] = total_variation(spo, nash)
    for key, value in distances.items():
        record_property(f"tv_{key}", value)
    print(f"TV(mu, pi*) = {total_variation(mu, star):.4f}, " + ", ".join(f"{k} {v:.4f}" for k, v in distances.items()))
    assert distances["spo"] <= 0.05
    assert distances["nash_md"] <= 0.05
    assert distances["spo_vs_nash_md"] <= 0.1


def scored_pairs(rewards: torch.Tensor, n: int) -> datasets.Dataset:
    """n tokenized rows, each the prompt and two distinct arms drawn uniformly (not from
    any policy), scored by their rewards: the layout PreferenceCollator reads."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(n):
        pair = torch.randperm(len(rewards), generator=generator)[:2].tolist()
        rows.append(
            {
                "prompt_input_ids": [PROMPT_ID],
                "completion_input_ids": [[arm] for arm in pair],
                "scores": [float(rewards[arm]) for arm in pair],
            }
        )
    return datasets.Dataset.from_list(rows)


def test_copg_on_fixed_off_policy_pairs_reaches_the_tilted_reference(tmp_path, record_property):
    """CoPG's gradient on a pair vanishes when R - beta rho is equal on both items, so on
    any pair distribution covering every arm the optimum is pi* ∝ mu exp(R / beta)."""
    model = bandit_model()
    mu = next_token_distribution(model)
    rewards = rewards_on_tokens(COPG_REWARDS)
    star = torch.softmax(torch.log(mu) + rewards / COPG_BETA, -1)
    assert total_variation(mu, star) > 0.15
    trainer = PreferenceTrainer(
        model=model,
        args=training_arguments(tmp_path, COPG_STEPS, 32, 1e-2),
        loss_fn=get_loss("copg", beta=COPG_BETA),
        ref_model=copy.deepcopy(model).eval(),
        processing_class=bandit_tokenizer(),
        train_dataset=scored_pairs(rewards, 512),
    )
    trainer.train()
    distance = total_variation(next_token_distribution(model), star)
    record_property("tv_to_optimum", distance)
    print(f"copg: TV(pi, pi*) = {distance:.4f}, TV(mu, pi*) = {total_variation(mu, star):.4f}")
    assert distance <= 0.05


@pytest.mark.parametrize(
    ("loss", "beta", "updates_per_batch"),
    [("rloo", 0.0, 1), ("rloo", RLOO_BETA, 1), ("grpo", 0.0, 1), ("grpo", 0.0, 2)],
    ids=["rloo", "rloo-kl", "grpo", "grpo-2-updates"],
)
def test_policy_gradient_reaches_the_best_arm(loss, beta, updates_per_batch, tmp_path, record_property):
    """Expected reward within 0.05 of the optimum's, and the policy within 0.05 of it in TV:
    for beta = 0 the optimum is the best arm alone, for beta > 0 (RLOO's reward shaping
    r - beta rho) the KL-regularised optimum pi_beta ∝ mu exp(r / beta)."""
    mu, final, logs = train_online(
        tmp_path,
        get_loss(loss, beta=beta),
        ArmRewardJudge(),
        steps=PG_STEPS,
        batch=64,
        learning_rate=1e-2,
        sampler="policy",
        num_samples=4,
        updates_per_batch=updates_per_batch,
    )
    r = rewards_on_tokens(ARM_REWARDS)
    greedy = torch.nn.functional.one_hot(r.argmax(), len(r)).double()
    optimum = torch.softmax(torch.log(mu) + r / beta, -1) if beta > 0 else greedy
    best = float(optimum @ r)
    assert total_variation(mu, optimum) > 0.15  # the initial policy is far from it
    if beta > 0:
        assert total_variation(optimum, greedy) > 0.15  # the KL term matters
    gap = best - float(final @ r)
    distance = total_variation(final, optimum)
    record_property("reward_gap", gap)
    record_property("tv_to_optimum", distance)
    print(f"{loss} beta={beta} x{updates_per_batch}: E_mu r = {float(mu @ r):.4f}, optimum {best:.4f}, ", end="")
    print(f"gap {gap:.4f}, TV(pi, optimum) = {distance:.4f}")
    assert abs(gap) <= 0.05
    assert distance <= 0.05
    if loss == "grpo":
        # The importance ratio pi / pi_old is exactly 1 with one update per batch of samples,
        # and moves (and is clipped on some tokens) at the second update on the same samples.
        metrics = logs[0]
        if updates_per_batch == 1:
            assert metrics["grpo/ratio"] == 1.0 and metrics["grpo/clip_fraction"] == 0.0
        else:
            assert metrics["grpo/ratio"] != 1.0 and metrics["grpo/clip_fraction"] > 0.0
