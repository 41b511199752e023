"""The bandit test: the deep online trainer reaches the regularised Nash equilibrium
that the tabular solver computes.

One fixed prompt; a completion is one token of a 7-token vocabulary; the judge is a
fixed preference matrix: five answers in a cycle with no Condorcet winner (each beats
two and loses to two, with probability 0.9), and "no answer" (pad or EOS, decoded as
"") losing to every answer with probability 0.9. The reference mu is the initial
model's next-token distribution, and the target is pi* ∝ mu exp(P pi* / tau)."""

from __future__ import annotations

import copy
import json

import datasets
import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from alignment.losses import get_loss
from alignment.online.judges import Judge
from alignment.schema.online import JudgeConfig, OnlineConfig
from alignment.tabular_nash import (
    cyclic_preference_matrix,
    geometric_mixture,
    regularized_nash_equilibrium,
    total_variation,
)
from alignment.trainers.arguments import AlignmentTrainingArguments
from alignment.trainers.online import OnlineTrainer
from tests.helpers import ANSWERS, PROMPT_ID, VOCAB, bandit_model, next_token_distribution

# Each test launches training runs (seconds to a minute each): the full suite runs them, the fast tier does not.
pytestmark = pytest.mark.slow

TAU = 0.1
MIXTURE = 0.1


def answer_matrix() -> torch.Tensor:
    P = torch.full((6, 6), 0.5, dtype=torch.float64)
    P[:5, :5] = cyclic_preference_matrix(5, 0.8)
    P[:5, 5], P[5, :5] = 0.9, 0.1
    return P


def token_matrix() -> torch.Tensor:
    """The same preferences over the 7 tokens a completion can be."""
    answer = [ANSWERS.index(t if not t.startswith("<") else "") for t in VOCAB]
    P = answer_matrix()
    return torch.tensor([[P[answer[i], answer[j]] for j in range(7)] for i in range(7)], dtype=torch.float64)


class MatrixJudge(Judge):
    name = "matrix judge"

    def _probabilities(self, prompts, completions):
        P = answer_matrix()
        return [float(P[ANSWERS.index(y0), ANSWERS.index(y1)]) for y0, y1 in completions]


@pytest.mark.parametrize(
    ("loss", "sampler"),
    [("nash_md", "mixture"), ("online_ipo", "policy")],
    ids=["nash_md-mixture", "online_ipo-policy"],
)
def test_online_trainer_converges_to_the_regularised_equilibrium(loss, sampler, tmp_path, record_property):
    vocab = {token: i for i, token in enumerate(VOCAB)}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")), pad_token="<pad>", eos_token="<eos>"
    )
    model = bandit_model()
    reference = copy.deepcopy(model).eval()
    mu = next_token_distribution(model)
    P = token_matrix()
    star = regularized_nash_equilibrium(P, mu, TAU)
    assert total_variation(mu, star) > 0.15  # the equilibrium is far from where training starts

    # Online IPO draws both samples from the policy, a noisier gradient than Nash-MD's: at 64
    # prompts per step its final TV to pi* ranged 0.005-0.06 over training seeds 0-3; at 128 it
    # measured 0.032 (seed 0) and 0.009 (seed 1).
    batch = 128 if loss == "online_ipo" else 64
    prompts = datasets.Dataset.from_dict(
        {"prompt": [json.dumps("a")] * batch, "prompt_input_ids": [[PROMPT_ID]] * batch}
    )
    args = AlignmentTrainingArguments(
        output_dir=str(tmp_path),
        max_steps=1000,
        per_device_train_batch_size=batch,
        learning_rate=3e-3,
        lr_scheduler_type="linear",
        weight_decay=0.0,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=100,
        disable_tqdm=True,
        seed=0,
    )
    online = OnlineConfig(
        judge=JudgeConfig(function="tests.test_online_bandit:unused"),
        sampler=sampler,
        mixture_coef=MIXTURE,
        max_new_tokens=1,
    )
    trainer = OnlineTrainer(
        model=model,
        args=args,
        loss_fn=get_loss(loss, tau=TAU),
        judge=MatrixJudge(),
        online=online,
        ref_model=reference,
        processing_class=tokenizer,
        train_dataset=prompts,
    )
    trainer.train()

    final = next_token_distribution(model)
    distance = total_variation(final, star)
    record_property("tv_to_equilibrium", distance)
    print(f"{loss} ({sampler}): TV(pi, pi*) = {distance:.4f}, TV(mu, pi*) = {total_variation(mu, star):.4f}")
    assert distance < 0.05
    if sampler == "mixture":
        # The exact stationary point with an m-mixture opponent, pi ∝ mu exp(P pi_m / tau),
        # is itself within 0.01 of pi*: the 0.05 is the trainer's error, not the theory's.
        pi = star.clone()
        for _ in range(5000):
            pi = 0.9 * pi + 0.1 * torch.softmax(torch.log(mu) + P @ geometric_mixture(pi, mu, MIXTURE) / TAU, -1)
        assert total_variation(pi, star) < 0.01
