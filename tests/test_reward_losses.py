"""The judge-training losses: hand-computed values, TRL's RewardTrainer as the oracle,
Plackett-Luce against Bradley-Terry, and the heads' forwards. Their gradcheck, padding
invariance and finiteness at margins of +-1e4 are in test_loss_contract.py."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoConfig, AutoModelForSequenceClassification

from alignment.losses import LossParameterError, SequenceLogps, get_loss
from alignment.losses.base import LatentPosterior
from alignment.rewards.heads import PreferenceHead, RewardHead
from alignment.rewards.pair_inputs import pair_ids, template_segments
from tests.helpers import TINY, collate, float32_approx, tiny_rows, tiny_tokenizer, tokenized


def pairs(r_w: list[float], r_l: list[float], margins: list[float] | None = None, dtype=torch.float64):
    policy = torch.tensor([r_w, r_l], dtype=dtype).T.contiguous().requires_grad_(True)
    n = len(r_w)
    return SequenceLogps(
        policy=policy,
        reference=None,
        scores=torch.tensor([[1.0, 0.0]] * n, dtype=dtype),
        mask=torch.ones(n, 2, dtype=torch.bool),
        lengths=torch.ones(n, 2, dtype=torch.long),
        margins=None if margins is None else torch.tensor(margins, dtype=dtype),
    )


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_bradley_terry_by_hand_with_margin_and_centering():
    logps = pairs([2.0, -1.0], [0.5, 1.0], margins=[0.5, 0.0])
    out = get_loss("bradley_terry", center_rewards_coefficient=0.1)(logps)
    # pair 1: L(2 - 0.5 - 0.5) = softplus(-1); pair 2: L(-1 - 1 - 0) = softplus(2)
    likelihood = (softplus(-1.0) + softplus(2.0)) / 2
    centering = ((2.0 + 0.5) ** 2 + (-1.0 + 1.0) ** 2) / 2
    assert out.loss.item() == pytest.approx(likelihood + 0.1 * centering, rel=1e-12)
    assert out.metrics["accuracy"].item() == 0.5 and out.metrics["reward_accuracy"].item() == 0.5
    out.loss.backward()
    # d/dr_w of L(h) is -sigmoid(-h), / 2 pairs; centering adds 0.1 * 2 (r_w + r_l) / 2.
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected_w = [-sig(-1.0) / 2 + 0.1 * 2.5, -sig(2.0) / 2 + 0.0]
    assert logps.policy.grad[:, 0].tolist() == pytest.approx(expected_w, rel=1e-12)


def test_plackett_luce_with_two_items_is_bradley_terry_and_ignores_padding():
    logps = pairs([0.3, -2.0, 5.0], [1.1, 0.4, -3.0])
    pl = get_loss("plackett_luce")(logps).loss
    bt = get_loss("bradley_terry")(logps).loss
    assert pl.item() == pytest.approx(bt.item(), rel=1e-12)
    # A list of three, by hand: order (score) 2 > 1 > 0 with rewards r = [0.2, -0.4, 1.0]
    r = torch.tensor([[0.2, -0.4, 1.0, 0.0]], dtype=torch.float64)
    scores = torch.tensor([[0.0, 1.0, 2.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False]])

    def loss(pad_value: float) -> float:
        padded = r.clone()
        padded[0, 3] = pad_value
        batch = SequenceLogps(padded, None, scores, mask, torch.ones(1, 4, dtype=torch.long))
        return get_loss("plackett_luce")(batch).loss.item()

    lse = lambda xs: math.log(sum(math.exp(x) for x in xs))  # noqa: E731
    expected = -((1.0 - lse([1.0, -0.4, 0.2])) + (-0.4 - lse([-0.4, 0.2])))
    assert loss(0.0) == pytest.approx(expected, rel=1e-12)
    assert loss(1e4) == loss(-1e4) == loss(0.0)


def test_pairwise_preference_loss_by_hand():
    # One pair: f(x, w, l) = 1.5, f(x, l, w) = -0.5.
    logits = torch.zeros(1, 2, 2, dtype=torch.float64)
    logits[0, 0, 1], logits[0, 1, 0] = 1.5, -0.5
    logits.requires_grad_(True)
    batch = pairs([0.0], [0.0])
    batch.pair_logits = logits
    out = get_loss("pairwise_preference")(batch)
    assert out.loss.item() == pytest.approx((softplus(-1.5) + softplus(-0.5)) / 2, rel=1e-12)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert out.metrics["symmetry_gap"].item() == pytest.approx(abs(sig(1.5) + sig(-0.5) - 1), rel=1e-12)
    assert out.metrics["accuracy"].item() == 1.0
    out.loss.backward()
    assert logits.grad[0, 0, 1].item() == pytest.approx(-sig(-1.5) / 2, rel=1e-12)
    assert logits.grad[0, 1, 0].item() == pytest.approx(sig(-0.5) / 2, rel=1e-12)


def test_vpl_loss_is_the_negative_elbo_with_the_authors_annealing():
    loss = get_loss("vpl", kl_weight=0.5, anneal_steps=10)
    batch = pairs([1.0], [0.0])
    mean = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    log_var = torch.tensor([[0.0, math.log(0.25)]], dtype=torch.float64)
    kl = -0.5 * ((1 + 0 - 0.25 - 1) + (1 + math.log(0.25) - 1.0 - 0.25))
    for step, a in ((0, 0.1), (5, 0.1 + 0.9 * 0.5), (10, 0.1)):
        batch.latent = LatentPosterior(mean, log_var, step)
        assert loss(batch).loss.item() == pytest.approx(softplus(-1.0) + 0.5 * a * kl, rel=1e-12)
    with pytest.raises(LossParameterError, match="context_pairs must be an integer >= 1"):
        get_loss("vpl", context_pairs=0)


def tiny_classifier(seed: int = 0):
    config = AutoConfig.from_pretrained(TINY / "model")
    config.num_labels, config.pad_token_id = 1, tiny_tokenizer().pad_token_id
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(config)
        with torch.no_grad():
            model.score.weight.normal_(0.0, 0.5)  # rewards far apart, so the check can tell them apart
    return model


def test_bradley_terry_equals_trl_reward_trainer_with_margin_and_centering(tmp_path):
    """TRL 1.16's RewardTrainer.compute_loss on the same model and the same token ids."""
    from trl import RewardConfig, RewardTrainer

    rows = [dict(row, margin=0.25 * i) for i, row in enumerate(tiny_rows(n=6))]
    data = tokenized(rows, tmp_path, max_length=32, max_prompt_length=16)
    batch = collate(data)
    model = tiny_classifier()
    ours = get_loss("bradley_terry", center_rewards_coefficient=0.01)
    logps = RewardHead(tiny_tokenizer(), ours).logps(model, batch, step=0)
    loss = ours(logps).loss
    (grad_ours,) = torch.autograd.grad(loss, [model.score.weight])

    examples = [
        {
            "chosen_ids": list(row["prompt_input_ids"]) + list(row["completion_input_ids"][0]),
            "rejected_ids": list(row["prompt_input_ids"]) + list(row["completion_input_ids"][1]),
            "margin": row["margin"],
        }
        for row in data
    ]
    args = RewardConfig(
        output_dir=str(tmp_path / "trl"), center_rewards_coefficient=0.01, bf16=False, use_cpu=True, report_to="none"
    )
    trainer = RewardTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tiny_tokenizer()
    )
    inputs = trainer.data_collator(examples)
    assert inputs["margin"].tolist() == batch["margins"].tolist()  # the pipeline shuffled the rows
    assert sorted(batch["margins"].tolist()) == [0.25 * i for i in range(6)]
    reference = trainer.compute_loss(model, inputs)
    (grad_trl,) = torch.autograd.grad(reference, [model.score.weight])
    assert loss.item() == pytest.approx(reference.item(), abs=1e-5)
    torch.testing.assert_close(grad_ours, grad_trl, rtol=1e-4, atol=1e-6)
    assert abs(reference.item() - math.log(2)) > 0.05  # the margins and rewards move the loss


def test_preference_head_lays_out_pairs_as_the_template_says(tmp_path):
    tokenizer = tiny_tokenizer()
    data = tokenized(tiny_rows(n=3), tmp_path, max_length=32, max_prompt_length=16)
    batch = collate(data)
    loss = get_loss("pairwise_preference", template="{prompt}<{completion_a}|{completion_b}>")
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, input_ids, attention_mask, use_cache=False):
            seen.extend(ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask, strict=True))
            return type("Out", (), {"logits": torch.arange(len(input_ids), dtype=torch.float32)[:, None]})()

    logps = PreferenceHead(tokenizer, loss).logps(Recorder(), batch, step=0)
    segments = template_segments(loss.template, tokenizer)
    row = data[0]
    prompt, (w, lose) = list(row["prompt_input_ids"]), [list(c) for c in row["completion_input_ids"]]
    assert seen[0] == pair_ids(prompt, w, lose, segments) and seen[3] == pair_ids(prompt, lose, w, segments)
    assert tokenizer.decode(seen[0]) == f"{rows_text(row, tokenizer)}"
    # logits 0, 1, 2 are the (w, l) orders of the three rows and 3, 4, 5 the (l, w) orders
    assert logps.pair_logits[:, 0, 1].tolist() == [0.0, 1.0, 2.0]
    assert logps.pair_logits[:, 1, 0].tolist() == [3.0, 4.0, 5.0]
    assert logps.policy[:, 0].tolist() == float32_approx([-1.5, -1.5, -1.5], ulps=1)


def rows_text(row, tokenizer) -> str:
    prompt = tokenizer.decode(row["prompt_input_ids"])
    w, lose = (tokenizer.decode(c) for c in row["completion_input_ids"])
    return f"{prompt}<{w}|{lose}>"
