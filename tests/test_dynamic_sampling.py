"""DAPO's dynamic sampling (online.dynamic_sampling): which groups are informative, how
the batch is assembled from several draws, and, on the tiny task, that the trained batch
keeps its size, never trains a group whose scores are all equal, respects the cap on
draws and logs what it did."""

from __future__ import annotations

import pytest
import torch

from alignment.online import dynamic_sampling
from alignment.online.dynamic_sampling import Draw, assemble, informative_groups
from alignment.online.feedback import Feedback
from alignment.online.sampler import GroupSamples
from tests.launch import log_history, train_in_process


def test_a_group_is_informative_when_its_scored_completions_differ():
    scores = torch.tensor([[1.0, 1.0, 1.0], [1.0, 2.0, 1.0], [0.0, 0.0, 5.0], [3.0, 3.0, 3.0]])
    scorable = torch.tensor([[True] * 3, [True] * 3, [True, True, False], [True, False, False]])
    assert informative_groups(scores).tolist() == [False, True, True, False]
    # the 5.0 is not scored, and a lone scored completion has no baseline
    assert informative_groups(scores, scorable).tolist() == [False, True, False, False]


def test_a_group_with_equal_rewards_has_no_policy_gradient():
    """Why the groups are dropped: with beta 0, the loss's gradient in the policy's
    log-probs is zero for a group whose K rewards are equal, and not for the other."""
    from alignment.losses import SequenceLogps, get_loss
    from alignment.losses.base import TokenLogps

    torch.manual_seed(0)
    token_logps = (-torch.rand(2, 4, 3)).requires_grad_()
    tokens = TokenLogps(token_logps, None, token_logps.detach(), torch.ones(2, 4, 3, dtype=torch.bool))
    logps = SequenceLogps(
        policy=token_logps.sum(-1),
        reference=None,
        scores=torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 2.0]]),
        mask=torch.ones(2, 4, dtype=torch.bool),
        lengths=torch.full((2, 4), 3.0),
        tokens=tokens,
    )
    get_loss("dapo").__call__(logps).loss.backward()
    assert token_logps.grad[0].abs().max() == 0 and token_logps.grad[1].abs().max() > 0


def draw_of(rewards: list[list[float]], prompt_width: int, completion_width: int, tag: int) -> Draw:
    """A draw of len(rewards) prompts whose ids all hold `tag` (to trace them)."""
    b, k = len(rewards), len(rewards[0])
    inputs = {
        "prompt_input_ids": torch.full((b, prompt_width), tag),
        "prompt_attention_mask": torch.ones(b, prompt_width, dtype=torch.long),
        "prompts": [f"p{tag}.{i}" for i in range(b)],
        "columns": [{"draw": tag, "row": i} for i in range(b)],
    }
    ids = torch.full((b, k, completion_width), tag)
    samples = GroupSamples(
        ids, torch.ones_like(ids), torch.ones(b, k, dtype=torch.bool), torch.ones(k, dtype=torch.bool)
    )
    return Draw(inputs, samples, Feedback.of_rewards(torch.tensor(rewards)))


def test_the_batch_takes_informative_groups_in_draw_order_padded_to_the_widest():
    first = draw_of([[1, 1], [0, 1], [2, 2]], prompt_width=3, completion_width=2, tag=1)
    second = draw_of([[5, 5], [3, 4], [0, 9]], prompt_width=5, completion_width=4, tag=2)
    batch = assemble([first, second], size=3, kind="rewards", pad_token_id=0)
    assert batch.inputs["prompts"] == ["p1.1", "p2.1", "p2.2"]
    assert batch.inputs["columns"] == [{"draw": 1, "row": 1}, {"draw": 2, "row": 1}, {"draw": 2, "row": 2}]
    assert batch.inputs["prompt_input_ids"].tolist() == [[1, 1, 1, 0, 0], [2] * 5, [2] * 5]
    assert batch.inputs["prompt_attention_mask"].sum(-1).tolist() == [3, 5, 5]
    assert batch.samples.completion_mask.sum(-1).tolist() == [[2, 2], [4, 4], [4, 4]]
    assert batch.feedback.rewards.tolist() == [[0, 1], [3, 4], [0, 9]]
    assert batch.trained.tolist() == [True, True, True]
    assert (batch.filtered, batch.draws, batch.short) == (3, 2, 0)


def test_a_short_batch_is_filled_with_groups_that_are_not_trained():
    only = draw_of([[1, 1], [0, 1], [2, 2]], prompt_width=2, completion_width=2, tag=1)
    batch = assemble([only], size=3, kind="rewards", pad_token_id=0)
    assert batch.inputs["prompts"] == ["p1.0", "p1.1", "p1.2"]  # the draw's own order
    assert batch.trained.tolist() == [False, True, False]
    assert (batch.filtered, batch.draws, batch.short) == (2, 1, 2)


# ----------------------------------------------------------------------------- on the tiny task


@pytest.fixture
def assembled(monkeypatch):
    """Every batch the trainer assembles, and the loss inputs it trains on."""
    from alignment.losses.grpo import GroupPolicyLoss

    batches, trained = [], []
    original_assemble, original_loss = dynamic_sampling.assemble, GroupPolicyLoss.__call__

    def spy_assemble(draws, size, kind, pad_token_id):
        batch = original_assemble(draws, size, kind, pad_token_id)
        batches.append((size, batch))
        return batch

    def spy_loss(self, logps):
        trained.append((logps.scores.detach().clone(), logps.mask.clone()))
        return original_loss(self, logps)

    monkeypatch.setattr("alignment.trainers.online.assemble", spy_assemble)
    monkeypatch.setattr(GroupPolicyLoss, "__call__", spy_loss)
    return batches, trained


@pytest.mark.slow
def test_dynamic_sampling_on_the_tiny_task(tmp_path, assembled):
    """8 prompts per step, at most 3 draws: each trained batch holds 8 groups, every
    trained group has differing rewards, the draws stay within the cap, and the logged
    counts are the batches' own."""
    batches, trained = assembled
    overrides = ["--training.max_steps=4", "--training.logging_steps=1", "--training.eval_strategy=no"]
    overrides += ["--training.per_device_train_batch_size=8", "--online.dynamic_sampling_max_draws=3"]
    train_in_process("dapo", tmp_path, *overrides)
    assert len(batches) == len(trained) == 4
    for (size, batch), (scores, mask) in zip(batches, trained, strict=True):
        assert size == 8 and scores.shape == (8, 4) and 1 <= batch.draws <= 3
        groups = mask.any(-1)
        assert groups.sum() == 8 - batch.short
        assert (scores[groups].amax(-1) > scores[groups].amin(-1)).all()  # no zero-variance group is trained
    assert any(batch.filtered > 0 for _, batch in batches)  # the tiny policy often answers a prompt alike 4 times
    logged = [e for e in log_history(tmp_path) if "online/dynamic_sampling/draws" in e]
    assert [e["online/dynamic_sampling/draws"] for e in logged] == [float(b.draws) for _, b in batches]
    assert [e["online/dynamic_sampling/filtered"] for e in logged] == [float(b.filtered) for _, b in batches]
    assert [e["online/dynamic_sampling/short"] for e in logged] == [float(b.short) for _, b in batches]


@pytest.mark.slow
def test_the_cap_on_draws_holds_when_no_group_is_informative(tmp_path, assembled):
    """A reward that is the same for every completion: every step makes exactly the cap's
    draws, trains no group (the loss and its gradient are 0) and logs the batch as short."""
    batches, trained = assembled
    overrides = ["--training.max_steps=2", "--training.logging_steps=1", "--training.eval_strategy=no"]
    overrides += ["--training.per_device_train_batch_size=4", "--online.dynamic_sampling_max_draws=3"]
    overrides += ["--online.judge.type=format", "--online.judge.function=null", "--online.judge.pattern=.*"]
    train_in_process("dapo", tmp_path, *overrides)
    assert [(b.draws, b.short, b.filtered) for _, b in batches] == [(3, 4, 12), (3, 4, 12)]
    assert all(not mask.any() for _, mask in trained)
    logged = [e for e in log_history(tmp_path) if "loss" in e and "online/dynamic_sampling/draws" in e]
    assert [e["loss"] for e in logged] == [0.0, 0.0] and [e["grad_norm"] for e in logged] == [0.0, 0.0]
