"""The reference strategies (soup, updates), the judges' feedback shapes, K-sample draws,
per-token log-probs and the layout's import boundaries."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from alignment.config import ConfigError, ReferenceConfig, load_config
from alignment.logprobs import STRATEGIES, sequence_logps
from alignment.models import load_reference_weights
from alignment.online.feedback import Feedback, bradley_terry, judge_samples, preference_matrix, win_rates
from alignment.online.judges import Judge, RewardJudge
from alignment.online.sampler import POLICY, GenerationSettings, ModelStream, draw, mixture
from alignment.reference import FrozenModel, Soup, reference_identity
from alignment.reference.soup import SoupError, average_state_dicts, load_soup
from alignment.reference.updates import ReferenceUpdate, mix_into
from alignment.trainers.online import RepeatedBatches
from tests.helpers import ROOT, collate, tiny_model, tiny_model_config, tiny_rows, tokenized

TINY_DPO = ROOT / "recipes" / "tiny" / "dpo.yaml"


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    root = tmp_path_factory.mktemp("members")
    paths = []
    for seed in (0, 1, 2):
        path = root / f"seed{seed}"
        tiny_model(seed).save_pretrained(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    return collate(tokenized(tiny_rows("lists", n=6), tmp_path_factory.mktemp("lists")))


def test_soup_log_probs_are_those_of_the_hand_averaged_weights(members, batch):
    weights = [0.5, 0.3, 0.2]
    load = lambda path: load_reference_weights(tiny_model_config(), str(path))  # noqa: E731
    soup = Soup(load_soup(load, [str(p) for p in members], weights))
    by_hand = tiny_model(0).eval()
    states = [tiny_model(seed).state_dict() for seed in (0, 1, 2)]
    by_hand.load_state_dict({k: sum(w * s[k] for w, s in zip(weights, states, strict=True)) for k in states[0]})
    forward = lambda model, inputs: sequence_logps(model, inputs, "baseline")  # noqa: E731
    got = soup.logps(None, batch, forward)
    with torch.no_grad():
        expected = sequence_logps(by_hand, batch, "baseline")
    assert (got - expected).abs().max() <= 1e-6
    # Not the average of the members' log-probs: the soup is a model of its own.
    with torch.no_grad():
        mean_logps = sum(
            w * sequence_logps(tiny_model(s).eval(), batch) for w, s in zip(weights, (0, 1, 2), strict=True)
        )
    assert (got - mean_logps).abs().max() > 1e-3


def test_soup_refuses_members_of_other_shapes_or_integer_buffers():
    a = {"w": torch.ones(2), "steps": torch.tensor([3])}
    assert average_state_dicts([a, {"w": torch.zeros(2), "steps": torch.tensor([3])}], [0.25, 0.75])["w"].tolist() == [
        0.25,
        0.25,
    ]
    with pytest.raises(SoupError, match="shape"):
        average_state_dicts([a, {"w": torch.ones(3), "steps": torch.tensor([3])}], [0.5, 0.5], ["a", "b"])
    with pytest.raises(SoupError, match="integer buffer differs"):
        average_state_dicts([a, {"w": torch.ones(2), "steps": torch.tensor([4])}], [0.5, 0.5], ["a", "b"])
    with pytest.raises(SoupError, match="architecture"):
        average_state_dicts([a, {"w": torch.ones(2)}], [0.5, 0.5], ["a", "b"])


def test_soup_config_weights_identity_and_errors(members, tmp_path):
    paths = [str(p) for p in members[:2]]
    out = f"--training.output_dir={tmp_path / 'out'}"
    config = load_config(TINY_DPO, [out, "--reference.type=soup", f"--reference.models={paths}"])
    assert config.reference.type == "soup" and config.reference.soup_weights == [0.5, 0.5]
    auto = load_config(TINY_DPO, [out, "--reference.type=auto", f"--reference.models={paths}"])
    assert auto.reference.type == "soup"
    # The precompute fingerprint sees the soup's members and weights.
    base = reference_identity(config.model, config.reference, None)
    reweighted = ReferenceConfig(type="soup", models=paths, weights=[0.7, 0.3])
    assert reference_identity(config.model, reweighted, None) != base
    assert reference_identity(config.model, ReferenceConfig(type="model"), None) != base
    errors = [
        (["--reference.type=soup"], "needs reference.models"),
        (["--reference.type=soup", f"--reference.models=[{paths[0]}]"], "two or more checkpoints"),
        (["--reference.type=soup", f"--reference.models={paths}", "--reference.weights=[1.0]"], "one each"),
        (
            ["--reference.type=model", f"--reference.models={paths}"],
            "does not read reference.models, which applies to 'soup' and 'precompute' only",
        ),
        (["--model.init_from_reference=true"], "model.init_from_reference starts the policy from the reference"),
        (["--reference.type=precompute", "--reference.update.every=10"], "cannot follow the policy"),
        (["--reference.update.every=0"], "reference.update.every must be >= 1"),
        (["--reference.update.every=5", "--reference.update.alpha=1.5"], "alpha must be in"),
    ]
    for overrides, message in errors:
        with pytest.raises(ConfigError, match=message):
            load_config(TINY_DPO, [out, *overrides])
    assert load_config(TINY_DPO, [out, "--reference.update.every=epoch"]).reference.update.every == "epoch"


def test_reference_update_mixes_hard_and_soft():
    reference, policy = tiny_model(0), tiny_model(1)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    target = policy.state_dict()
    mix_into(reference, policy, 0.25)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(value, 0.25 * target[key] + 0.75 * before[key])
    mix_into(reference, policy, 1.0)
    assert all(torch.equal(v, target[k]) for k, v in reference.state_dict().items())

    callback = ReferenceUpdate(tiny_model(0), policy, every=3, alpha=1.0)
    for step in range(1, 8):
        callback.on_step_end(None, type("S", (), {"global_step": step})(), None)
    assert callback.updates == 2  # steps 3 and 6
    per_epoch = ReferenceUpdate(tiny_model(0), policy, every="epoch", alpha=1.0)
    per_epoch.on_step_end(None, type("S", (), {"global_step": 3})(), None)
    per_epoch.on_epoch_end(None, None, None)
    assert per_epoch.updates == 1


def test_repeated_batches_give_each_run_of_prompts_mu_times():
    assert list(RepeatedBatches(range(7), chunk=3, repeats=2)) == [0, 1, 2, 0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 6]
    assert len(RepeatedBatches(range(7), chunk=3, repeats=2)) == 14


def test_win_rates_bradley_terry_and_the_pair_matrix():
    beats = {("R", "S"), ("S", "P"), ("P", "R")}
    items = ["R", "P", "S", "R"]
    P = torch.tensor([[[0.5 if a == b else float((a, b) in beats) for b in items] for a in items]])
    assert win_rates(P)[0].tolist() == pytest.approx([0.5, 2 / 3, 1 / 3, 0.5])
    # K = 2: the win rates are [P(y0 > y1), P(y1 > y0)], the convention of the pairwise online losses.
    assert win_rates(torch.tensor([[[0.5, 0.8], [0.2, 0.5]]]))[0].tolist() == pytest.approx([0.8, 0.2])
    r = torch.tensor([[0.0, 1.0, 3.0]])
    bt = bradley_terry(r)[0]
    assert bt[1, 2].item() == pytest.approx(1 / (1 + torch.e**2)) and bt[2, 1].item() == pytest.approx(
        1 - bt[1, 2].item()
    )
    assert bt.diagonal().tolist() == [0.5] * 3
    m = preference_matrix(torch.tensor([[0.9, 0.2, 0.6]]), 3)[0]  # pairs (0,1), (0,2), (1,2)
    torch.testing.assert_close(m, torch.tensor([[0.5, 0.9, 0.2], [0.1, 0.5, 0.6], [0.8, 0.4, 0.5]]))


def test_feedback_scores_and_the_missing_eos_penalty():
    preference = Feedback(preference_matrix(torch.tensor([[0.9, 0.2, 0.6]]), 3))
    assert preference.scores("rewards").tolist() == preference.scores("preferences").tolist()
    assert preference.scores("any")[0].tolist() == pytest.approx([(0.9 + 0.2) / 2, (0.1 + 0.6) / 2, (0.8 + 0.4) / 2])
    rewards = Feedback(bradley_terry(torch.tensor([[1.0, 2.0]])), torch.tensor([[1.0, 2.0]]))
    assert rewards.scores("rewards").tolist() == [[1.0, 2.0]]
    assert rewards.scores("preferences")[0].tolist() == pytest.approx([1 / (1 + torch.e), 1 - 1 / (1 + torch.e)])
    # A reward judge's unfinished completion loses the penalty from its reward.
    assert rewards.penalised(torch.tensor([[False, True]]), 0.5).rewards.tolist() == [[1.0, 1.5]]
    # A preference judge's: P_ij += penalty (missing_j - missing_i), clipped, still P_ji = 1 - P_ij.
    shifted = preference.penalised(torch.tensor([[True, False, False]]), 0.5).preferences[0]
    torch.testing.assert_close(shifted, torch.tensor([[0.5, 0.4, 0.0], [0.6, 0.5, 0.6], [1.0, 0.4, 0.5]]))


def test_a_judge_is_asked_each_pair_once_or_each_completion_once():
    calls = []

    class Longer(Judge):
        def _probabilities(self, prompts, pairs):
            calls.append(len(pairs))
            return [float(len(a) > len(b)) + 0.5 * (len(a) == len(b)) for a, b in pairs]

    class Length(RewardJudge):
        def _rewards(self, prompts, completions):  # the form from before the context: still called
            calls.append(len(completions))
            return [float(len(c)) for c in completions]

    completions = [["a", "bbb", "cc"], ["dd", "e", "ffff"]]
    by_pairs = judge_samples(Longer(), ["x", "y"], completions)
    by_rewards = judge_samples(Length(), ["x", "y"], completions)
    assert calls == [6, 6]  # 2 prompts x 3 pairs in one call; 2 x 3 completions in one call
    assert by_pairs.preferences[0].tolist() == [[0.5, 0.0, 0.0], [1.0, 0.5, 1.0], [1.0, 0.0, 0.5]]
    assert by_rewards.rewards.tolist() == [[1.0, 3.0, 2.0], [2.0, 1.0, 4.0]]
    assert by_rewards.preferences[1, 2, 1].item() == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())


def test_draw_takes_k_samples_per_prompt_from_the_slots_samplers():
    policy, reference = tiny_model(0).eval(), tiny_model(1).eval()
    settings = GenerationSettings(max_new_tokens=4, eos_token_ids=(1,), pad_token_id=0)
    prompts = torch.tensor([[10, 11, 12], [13, 14, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    torch.manual_seed(0)
    got = draw(
        [POLICY, mixture(0.5), mixture(0.5)], ModelStream(policy), ModelStream(reference), prompts, mask, settings
    )
    assert got.completion_ids.shape[:2] == (2, 3) and got.finished.shape == (2, 3)
    assert got.from_policy.tolist() == [True, False, False]
    assert got.lengths.min() >= 1 and got.lengths.max() <= 4
    # A token past a completion's end is padding.
    assert (got.completion_ids[got.completion_mask == 0] == 0).all()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_per_token_log_probs_sum_to_the_sequence_log_probs(strategy, batch):
    model = tiny_model(0).eval()
    with torch.no_grad():
        tokens = sequence_logps(model, batch, strategy, per_token=True)
        sequences = sequence_logps(model, batch, strategy)
        baseline = sequence_logps(model, batch, "baseline", per_token=True)
    assert tokens.shape == batch["completion_input_ids"].shape
    torch.testing.assert_close(tokens.sum(-1), sequences, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tokens, baseline, rtol=1e-5, atol=1e-5)
    assert (tokens[batch["completion_attention_mask"] == 0] == 0).all()


def test_frozen_model_is_frozen():
    reference = FrozenModel(tiny_model(0).train())
    assert not reference.model.training and not any(p.requires_grad for p in reference.model.parameters())


def test_merge_and_the_config_do_not_import_trl_or_the_trainers():
    code = (
        "import sys, alignment.tools.merge, alignment.config; "
        "print(sorted(m for m in ('trl', 'alignment.trainers.online', 'alignment.trainers.preference') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
