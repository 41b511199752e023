"""KTO on unpaired data: the loss by hand and against TRL 1.16's KTOTrainer, the KL
baseline from mismatched pairs, paired data as two unpaired rows, the unpaired layouts
(TRL's prompt/completion/label and LLaMA-Factory's messages + label), and the errors.
Its gradcheck, padding invariance and finiteness at log-ratios of +-1e4 (on lists and
on unpaired rows) are in test_loss_contract.py."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignment.config import ConfigError, load_config
from alignment.data import PreferenceCollator
from alignment.data.adapters import adapt_row, detect_layout
from alignment.data.example import BadRowError, DataError
from alignment.losses import SequenceLogps, get_loss
from alignment.losses.kto import desirability
from alignment.trainers.arguments import AlignmentTrainingArguments
from alignment.trainers.preference import PreferenceTrainer
from tests.helpers import TINY, tiny_model, tiny_tokenizer, tokenized, trl_cpu_args

UNPAIRED = TINY / "data" / "unpaired_train.jsonl"


def sigma(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def items(policy, reference, scores, mask=None, kl=0.0) -> SequenceLogps:
    policy = torch.tensor(policy, dtype=torch.float64, requires_grad=True)
    scores = torch.tensor(scores, dtype=torch.float32)
    return SequenceLogps(
        policy=policy,
        reference=torch.tensor(reference, dtype=torch.float64),
        scores=scores,
        mask=torch.ones_like(scores, dtype=torch.bool) if mask is None else torch.tensor(mask),
        lengths=torch.ones_like(scores, dtype=torch.long),
        kl_baseline=torch.tensor(kl, dtype=torch.float64),
    )


# ---------------------------------------------------------------- the loss by hand


def test_kto_values_by_hand_on_unpaired_rows():
    # Three unpaired rows: desirable r = 1, undesirable r = -0.5, desirable r = -2; z0 = 0.25.
    logps = items([[-1.0], [-3.0], [-4.0]], [[-2.0], [-2.5], [-2.0]], [[1.0], [0.0], [1.0]], kl=0.25)
    beta, wd, wu = 0.5, 1.3, 0.8
    expected = (
        wd * (1 - sigma(beta * (1.0 - 0.25))) + wu * (1 - sigma(beta * (0.25 - -0.5))) + wd * (1 - sigma(beta * -2.25))
    ) / 3
    out = get_loss("kto", beta=beta, desirable_weight=wd, undesirable_weight=wu)(logps)
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    assert out.metrics["kl"].item() == pytest.approx(0.25)


def test_kl_baseline_is_clamped_at_zero_and_carries_no_gradient():
    logps = items([[-1.0], [-3.0]], [[-2.0], [-2.5]], [[1.0], [0.0]], kl=-0.7)
    logps.kl_baseline = torch.tensor(-0.7, dtype=torch.float64, requires_grad=True)
    out = get_loss("kto", beta=1.0)(logps)
    assert out.loss.item() == pytest.approx(((1 - sigma(1.0)) + (1 - sigma(0.5))) / 2, rel=1e-12)
    assert not out.loss.requires_grad or torch.autograd.grad(out.loss, logps.kl_baseline, allow_unused=True)[0] is None


def test_a_pair_is_two_unpaired_rows():
    # K = 2 lists (and a K = 3 list: its best and worst items) against the same items unpaired.
    as_lists = items(
        [[-1.0, -3.0, 0.0], [-2.0, -1.0, -5.0]],
        [[-2.0, -2.5, 0.0], [-1.5, -1.0, -4.0]],
        [[1.0, 0.0, 0.0], [3.0, 2.0, 1.0]],
        mask=[[True, True, False], [True, True, True]],
        kl=0.1,
    )
    as_rows = items(
        [[-1.0], [-3.0], [-2.0], [-5.0]], [[-2.0], [-2.5], [-1.5], [-4.0]], [[1.0], [0.0], [1.0], [0.0]], kl=0.1
    )
    loss = get_loss("kto", beta=0.7, desirable_weight=1.2)
    assert loss(as_lists).loss.item() == pytest.approx(loss(as_rows).loss.item(), rel=1e-12)
    desirable, undesirable = desirability(as_lists.scores, as_lists.mask)
    assert desirable.tolist() == [[True, False, False], [True, False, False]]
    assert undesirable.tolist() == [[False, True, False], [False, False, True]]


# ---------------------------------------------------------------- against TRL's KTOTrainer


def in_file_order(dataset, rows: list[dict]) -> list[dict]:
    """The tokenized rows in the order of `rows` (the pipeline shuffles its mixture)."""
    tokenizer = tiny_tokenizer()
    decoded = [
        (
            tokenizer.decode(r["prompt_input_ids"], skip_special_tokens=True),
            tokenizer.decode(r["completion_input_ids"][0], skip_special_tokens=True),
            r,
        )
        for r in (dataset[i] for i in range(len(dataset)))
    ]
    ordered = []
    for row in rows:
        match = next(i for i, (p, c, _) in enumerate(decoded) if p == row["prompt"] and c == row["completion"])
        ordered.append(decoded.pop(match)[2])
    return ordered


def test_kto_matches_trl_ktotrainer_on_unpaired_rows(tmp_path):
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    rows = [json.loads(line) for line in UNPAIRED.read_text().splitlines()[:16]]
    assert 0 < sum(r["label"] for r in rows) < len(rows)
    params = {"beta": 0.5, "desirable_weight": 1.3, "undesirable_weight": 0.8}
    args = trl_cpu_args(KTOConfig, tmp_path / "trl", len(rows), **params)
    trl_trainer = KTOTrainer(
        model=tiny_model(seed=0),
        ref_model=tiny_model(seed=1),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tiny_tokenizer(),
    )
    trl_batch = next(iter(trl_trainer.get_train_dataloader()))
    trl_trainer.model.eval()
    with torch.no_grad():
        theirs = trl_trainer.compute_loss(trl_trainer.model, trl_batch).item()
    trl_kl = trl_trainer._metrics["eval"]["kl"][-1]

    # TRL pairs completion i with prompt i + 1 (cyclically); our trainer does the same to the batch as given.
    ours_trainer = PreferenceTrainer(
        model=tiny_model(seed=0).eval(),
        args=AlignmentTrainingArguments(output_dir=str(tmp_path / "ours"), use_cpu=True, report_to="none"),
        loss_fn=get_loss("kto", **params),
        ref_model=tiny_model(seed=1).eval(),
        processing_class=tiny_tokenizer(),
    )
    dataset = tokenized(rows, tmp_path, unpaired=True, max_length=None, max_prompt_length=None)
    batch = PreferenceCollator(pad_token_id=tiny_tokenizer().pad_token_id)(in_file_order(dataset, rows))
    with torch.no_grad():
        logps = ours_trainer.batch_logps(ours_trainer.model, batch)
        ours = ours_trainer.loss_fn(logps).loss.item()
    assert logps.kl_baseline.item() == pytest.approx(trl_kl, rel=1e-5)
    assert trl_kl > 0.01  # the reference differs from the policy: z0 is not clamped to 0
    assert ours == pytest.approx(theirs, rel=1e-5)


# ---------------------------------------------------------------- the layouts


def test_unpaired_layouts_are_detected_and_adapted():
    assert detect_layout(["prompt", "completion", "label"]) == "unpaired"
    assert detect_layout(["messages", "label"]) == "unpaired_messages"
    row = {"prompt": "3+4=", "completion": "7", "label": True}
    example = adapt_row(row, "unpaired", "s", 0)
    assert example.completions == ["7"] and example.scores == [1.0]
    assert adapt_row({**row, "label": 0}, "unpaired", "s", 0).scores == [0.0]
    chat = {
        "messages": [
            {"role": "system", "content": "Add."},
            {"role": "user", "content": "3+4="},
            {"role": "assistant", "content": "9"},
        ],
        "label": False,
    }
    example = adapt_row(chat, "unpaired_messages", "s", 1)
    assert example.prompt == chat["messages"][:2]
    assert example.completions == [chat["messages"][2:]] and example.scores == [0.0]
    sharegpt = {"messages": [{"from": "human", "value": "3+4="}, {"from": "gpt", "value": "7"}], "label": True}
    example = adapt_row(sharegpt, "unpaired_messages", "s", 2)
    assert example.prompt == [{"role": "user", "content": "3+4="}]
    assert example.completions == [[{"role": "assistant", "content": "7"}]]


@pytest.mark.parametrize(
    "row, layout, phrase",
    [
        ({"prompt": "1+1=", "completion": "2", "label": "yes"}, "unpaired", "'label' should be true or false"),
        ({"prompt": "1+1=", "completion": " ", "label": True}, "unpaired", "column 'completion' is empty"),
        (
            {"messages": [{"role": "user", "content": "1+1="}], "label": True},
            "unpaired_messages",
            "end with the assistant",
        ),
        (
            {"messages": [{"role": "assistant", "content": "2"}], "label": True},
            "unpaired_messages",
            "prompt is missing",
        ),
    ],
)
def test_a_bad_unpaired_row_names_its_index_source_and_problem(row, layout, phrase):
    with pytest.raises(BadRowError) as err:
        adapt_row(row, layout, "data/kto.jsonl", 7)
    assert "data/kto.jsonl" in str(err.value) and "7" in str(err.value) and phrase in str(err.value)


def test_unpaired_data_with_a_pairwise_loss_is_an_error_naming_kto(tmp_path):
    rows = [json.loads(line) for line in UNPAIRED.read_text().splitlines()[:4]]
    with pytest.raises(DataError, match=r"it is unpaired .* Train it with `loss: \{name: kto\}`"):
        tokenized(rows, tmp_path)


def test_kto_recipe_checks_at_load_time(tmp_path):
    recipe = TINY / "kto_unpaired.yaml"
    out = f"--training.output_dir={tmp_path / 'out'}"
    with pytest.raises(ConfigError, match="reference: 'precompute' stores one log-prob per completion, but loss kto"):
        load_config(recipe, [out, "--reference.type=precompute"])
    with pytest.raises(ConfigError, match="per_device_train_batch_size is 1, but loss kto"):
        load_config(recipe, [out, "--training.per_device_train_batch_size=1"])
    assert not (tmp_path / "out").exists()
