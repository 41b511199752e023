"""Online training end to end: the four tiny online recipes, LoRA, 2-process DDP, the
prompt data path, and clear failures for bad judges and bad online configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alignment.config import ConfigError, DataConfig, SourceConfig, load_config
from alignment.data import BadRowError
from alignment.data.prompts import build_prompt_datasets
from alignment.online.judges import CallableJudge, JudgeError
from alignment.tasks.arithmetic import closer_to_sum
from tests.helpers import ASSISTANT, EOS, ROOT, char_ids, tiny_tokenizer, write_jsonl
from tests.launch import accelerate_launch, log_history, train, train_in_process

# Each test launches training runs (seconds to a minute each): the full suite runs them, the fast tier does not.
pytestmark = pytest.mark.slow

ONLINE_RECIPES = ["nash_md", "online_ipo", "ipo_md", "online_dpo"]


def eval_results(out: Path) -> dict:
    return json.loads((out / "eval_results.json").read_text())


@pytest.mark.parametrize("recipe", ONLINE_RECIPES)
def test_tiny_online_recipe_beats_the_initial_policy(recipe, tmp_path):
    train_in_process(recipe, tmp_path)
    results = eval_results(tmp_path)
    assert results["eval_win_rate_vs_initial"] >= 0.6, results
    start = [e for e in log_history(tmp_path) if "eval_win_rate_vs_initial" in e][0]
    assert start["step"] == 0 and 0.4 <= start["eval_win_rate_vs_initial"] <= 0.6  # policy == initial: a coin flip
    assert start["eval_online/kl"] == 0.0  # the reference is the initial policy
    assert results["eval_online/kl"] > 0.0


def test_each_recipe_samples_as_its_paper_says():
    samplers = {name: load_config(ROOT / f"recipes/tiny/{name}.yaml") for name in ONLINE_RECIPES}
    assert [(c.loss[0].name, c.online.sampler) for c in samplers.values()] == [
        ("nash_md", "mixture"),
        ("online_ipo", "policy"),
        ("online_ipo", "mixture"),
        ("dpo", "policy"),
    ]


def wide_init_config(tmp_path: Path) -> Path:
    """The tiny model with initializer_range 0.3. At the default 0.02 its embeddings have
    norm 0.16, so with the (tied) embeddings frozen, as under LoRA, no logit can move by
    more than about 8 * 0.16: LoRA cannot express the task at all. Real checkpoints have
    embeddings of a useful scale; this gives the tiny model one."""
    config = json.loads((ROOT / "recipes/tiny/model/config.json").read_text())
    config["initializer_range"] = 0.3
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    return tmp_path / "model"


def test_online_lora_with_the_adapter_reference(tmp_path):
    out = tmp_path / "out"
    overrides = [
        f"--model.config={wide_init_config(tmp_path)}",
        "--lora.r=8",
        "--lora.dropout=0.0",
        "--reference=adapter",
        "--training.learning_rate=1.0e-2",
    ]
    proc = train("nash_md", out, *overrides)
    assert "reference: adapter" in proc.stdout + proc.stderr
    assert (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists()
    results = eval_results(out)
    # The win rate is against the adapter-disabled model: the initial policy.
    assert results["eval_win_rate_vs_initial"] >= 0.6, results


def test_online_two_process_ddp(tmp_path):
    """2 gloo processes with half the batch each: the data is split between them (the
    epoch count doubles) and the jointly trained policy beats the initial one."""
    proc = train(
        "nash_md",
        tmp_path,
        "--training.per_device_train_batch_size=32",
        "--training.per_device_eval_batch_size=50",
        launcher=accelerate_launch(2),
    )
    results = eval_results(tmp_path)
    assert results["eval_win_rate_vs_initial"] >= 0.6, results
    # 4000 prompts / (2 processes * 32) = 63 steps per epoch: 150 steps are 2.38 epochs (1.2 on one process).
    assert results["epoch"] == pytest.approx(150 / 63, abs=1e-3), proc.stdout[-2000:]


def test_grpo_two_updates_per_batch_under_two_process_ddp(tmp_path):
    """updates_per_batch 2 under gloo DDP: each process gets back its own micro-batch of
    prompts at the second update (the trainer raises otherwise), the repeat doubles the
    epoch's steps, the first update of a batch has importance ratio exactly 1 and the
    second, after the policy moved, does not."""
    train(
        "grpo",
        tmp_path,
        "--training.max_steps=6",
        "--training.per_device_train_batch_size=16",
        "--training.logging_steps=1",
        "--training.eval_strategy=no",
        "--training.eval_on_start=false",
        launcher=accelerate_launch(2),
    )
    logs = [entry for entry in log_history(tmp_path) if "grpo/ratio" in entry]
    assert [entry["step"] for entry in logs] == [1, 2, 3, 4, 5, 6]
    # 4000 prompts, each given twice, in steps of 2 processes x 16: 250 steps per epoch.
    assert logs[-1]["epoch"] == pytest.approx(6 / 250)
    for entry in logs:
        fresh = entry["step"] % 2 == 1  # steps 1, 3, 5 sample; 2, 4, 6 reuse those samples
        assert (entry["grpo/ratio"] == 1.0) == fresh, entry


# --------------------------------------------------------------------------- judges


def test_arithmetic_judge():
    pairs = [("7", "9"), ("9", "7"), ("5", "9"), ("x", "12"), ("x", "y"), ("71", "7!")]
    assert closer_to_sum(["3+4="] * 6, pairs) == [1.0, 0.0, 0.5, 0.0, 0.5, 0.0]


def write_judge_module(tmp_path: Path, monkeypatch, body: str) -> str:
    (tmp_path / "bad_judges.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "bad_judges"


@pytest.mark.parametrize(
    ("body", "phrase"),
    [
        ("def judge(prompts, completions):\n    return [0.5] * (len(prompts) + 1)\n", "shape"),
        ("def judge(prompts, completions):\n    return [float('nan')] * len(prompts)\n", "not finite"),
        ("def judge(prompts, completions):\n    return [1.5] * len(prompts)\n", "outside [0, 1]"),
    ],
    ids=["wrong-shape", "nan", "out-of-range"],
)
def test_a_bad_judge_stops_training_naming_itself(body, phrase, tmp_path, monkeypatch):
    module = write_judge_module(tmp_path, monkeypatch, body)
    proc = train(
        "nash_md",
        tmp_path / "out",
        f"--online.judge={module}:judge",
        "--training.max_steps=2",
        "--training.eval_on_start=false",
        env={"PYTHONPATH": str(tmp_path)},
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("alignment: ")]
    assert len(errors) == 1 and errors[0].startswith("alignment: judge error: callable judge bad_judges:judge")
    assert phrase in errors[0]
    assert "Traceback" not in proc.stderr


def test_a_missing_judge_fails_before_any_model_loads(tmp_path):
    proc = train("nash_md", tmp_path, "--online.judge=no_such_module:judge", check=False)
    assert proc.returncode == 2
    assert "no_such_module" in proc.stderr.strip().splitlines()[-1]
    assert "loss: " not in proc.stdout  # the models were never loaded


def test_judge_probabilities_are_checked_in_process():
    judge = CallableJudge("alignment.tasks.arithmetic:closer_to_sum")
    assert judge(["3+4="], [("7", "8")]).tolist() == [1.0]
    with pytest.raises(JudgeError, match="alignment.tasks.arithmetic:true_sum"):
        CallableJudge("alignment.tasks.arithmetic:true_sum")(["3+4="], [("7", "8")])


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("overrides", "phrase"),
    [
        (["--reference.type=precompute"], "cannot work online"),
        (["--online.judge=not-a-function"], "'module:function'"),
        (["--online.mixture_coef=1.5"], "online.mixture_coef must be in [0, 1]"),
        (["--online.sampler=beam"], "online.sampler: 'beam' is not allowed"),
        (["--online.top_p=0"], "online.top_p must be in (0, 1]"),
        (["--online.judge.type=reward_model"], "online.judge.name_or_path is required"),
        (["--online.max_new_tokens=200"], "exceeds the model's 128 positions"),
    ],
)
def test_bad_online_configs_fail_before_training(overrides, phrase, tmp_path):
    proc = train("nash_md", tmp_path, *overrides, check=False)
    assert proc.returncode == 2, proc.stdout[-1000:]
    assert phrase in proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr


def test_an_online_loss_without_an_online_section_is_refused(tmp_path):
    proc = train("dpo", tmp_path, "--loss.name=nash_md", check=False)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "loss nash_md learns from completions sampled during training: add an `online:` section" in last


def test_offline_training_on_prompt_only_data_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "3+4="}, {"prompt": "1+1="}])
    proc = train("dpo", tmp_path / "out", f"--data.train=[{path}]", "--data.test=[]", check=False)
    assert proc.returncode != 0
    assert "prompt-only data is for online training" in proc.stderr


# --------------------------------------------------------------------------- prompt data


def test_prompts_from_prompt_only_and_preference_files(tmp_path):
    only = write_jsonl(tmp_path / "only.jsonl", [{"prompt": "3+4="}, {"prompt": "12+7="}])
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}])
    chat = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {
                "chosen": [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}],
                "rejected": [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "5"}],
            }
        ],
    )
    cfg = DataConfig(train=[SourceConfig(path=str(p)) for p in (only, pairs, chat)], max_prompt_length=4)
    data = build_prompt_datasets(cfg, tiny_tokenizer())
    rows = {json.dumps(json.loads(r["prompt"])): r["prompt_input_ids"] for r in data.train}
    assert rows['"3+4="'] == char_ids("3+4=")
    assert rows['"12+7="'] == char_ids("2+7=")  # cut to max_prompt_length, keeping the end
    assert rows['"1+1="'] == char_ids("1+1=")
    # The chat prompt is cut out of the pair and rendered with the generation prompt, then truncated.
    chat_key = json.dumps([{"role": "user", "content": "2+2="}])
    text = tiny_tokenizer().apply_chat_template(
        [{"role": "user", "content": "2+2="}], add_generation_prompt=True, tokenize=False
    )
    assert text == "<|user|>2+2=<|end|><|assistant|>"
    assert rows[chat_key] == (char_ids("2+2=") + [EOS, ASSISTANT])[-4:]
    assert [s.prompts_truncated for s in data.report.sources] == [1, 0, 1]


def test_bad_prompt_rows(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "3+4="}, {"prompt": "  "}, {"prompt": "5+5="}])
    with pytest.raises(BadRowError, match=r"bad row 1 in .*p.jsonl: column 'prompt' is empty \[empty_prompt\]"):
        build_prompt_datasets(DataConfig(train=[SourceConfig(path=str(path))]), tiny_tokenizer())
    data = build_prompt_datasets(DataConfig(train=[SourceConfig(path=str(path))], bad_rows="skip"), tiny_tokenizer())
    assert len(data.train) == 2 and data.report.skipped == {"empty_prompt": 1}


def test_missing_judge_section_is_named():
    with pytest.raises(ConfigError, match="online.judge is required"):
        load_config(ROOT / "recipes/tiny/nash_md.yaml", ["--online.judge=null"])


def test_missing_eos_penalty_shifts_the_preference():
    """P(y0 > y1) += penalty * (missing(y1) - missing(y0)), clipped to [0, 1]."""
    from alignment.online.judges import Judge
    from alignment.online.sampler import GroupSamples
    from alignment.trainers.online import OnlineTrainer

    class Fixed(Judge):
        def _probabilities(self, prompts, pairs):
            return [0.5, 0.9, 0.2]

    class Stub:
        online = type("O", (), {"missing_eos_penalty": 0.5})()
        args = type("A", (), {"device": torch.device("cpu")})()
        judge = Fixed()
        state = None

        def _decode(self, samples):
            return [["7", "8"]] * 3, [[[7], [8]]] * 3

    ids = torch.ones(3, 2, 2, dtype=torch.long)
    finished = torch.tensor([[True, False], [False, False], [True, True]])
    samples = GroupSamples(ids, torch.ones_like(ids), finished, torch.tensor([True, True]))
    feedback = OnlineTrainer._judge(Stub(), {"prompts": ["3+4="] * 3}, samples)
    assert feedback.preferences[:, 0, 1].tolist() == pytest.approx([1.0, 0.9, 0.2])
    assert feedback.preferences[:, 1, 0].tolist() == pytest.approx([0.0, 0.1, 0.8])


def test_the_online_trainer_gives_the_grpo_family_its_inputs(tmp_path, monkeypatch):
    """Truncation and the token budget reach the loss: each sample that hit
    `online.max_new_tokens` is marked truncated (its share is the logged missing-EOS rate),
    and the budget is the recipe's max_new_tokens (dr_grpo's constant)."""
    from alignment.losses.grpo import GroupPolicyLoss

    seen = []
    original = GroupPolicyLoss.__call__

    def spy(self, logps):
        seen.append((logps.truncated.float().mean().item(), logps.completion_budget, logps.across_processes))
        return original(self, logps)

    monkeypatch.setattr(GroupPolicyLoss, "__call__", spy)
    overrides = ["--loss.name=dr_grpo", "--loss.mask_truncated_completions=true", "--loss.scale_rewards=batch"]
    overrides.append("--training.max_steps=2")
    train_in_process("grpo", tmp_path, *overrides, "--training.logging_steps=1", "--training.eval_strategy=no")
    logged = [entry for entry in log_history(tmp_path) if "online/missing_eos" in entry]
    assert [budget for _, budget, _ in seen] == [3, 3]  # recipes/tiny/grpo.yaml: max_new_tokens 3
    assert [share for share, _, _ in seen] == pytest.approx([e["online/missing_eos"] for e in logged], abs=1e-6)
    assert all(reduce(torch.tensor(2.0)).item() == 2.0 for _, _, reduce in seen)  # one process: the sum is itself


def test_the_adaptive_entropy_coefficient_is_saved_and_resumed(tmp_path):
    """The trainer ends each optimizer step in the loss (its adaptive coefficient moves by
    entropy_coef_delta: the tiny model's entropy, below log 100 nats, is under a target of
    10) and checkpoints the coefficient; a resumed run continues from it."""
    adaptive = [
        "--loss.name=dapo",
        "--loss.use_adaptive_entropy=true",
        "--loss.entropy_target=10",
        "--loss.entropy_coef_delta=0.01",
        "--loss.top_entropy_quantile=0.5",
    ]
    saving = ["--training.save_strategy=steps", "--training.save_steps=1", "--training.eval_strategy=no"]
    train_in_process("grpo", tmp_path, *adaptive, *saving, "--training.max_steps=3")

    def state(step: int) -> dict:
        return json.loads((tmp_path / f"checkpoint-{step}" / "loss_state.json").read_text())

    assert [state(step)["entropy_coef"] for step in (1, 2, 3)] == pytest.approx([0.01, 0.02, 0.03])
    assert all(0 < state(step)["last_world_entropy"] < 10 for step in (1, 2, 3))
    resume = f"--training.resume_from_checkpoint={tmp_path / 'checkpoint-2'}"
    train_in_process("grpo", tmp_path, *adaptive, *saving, "--training.max_steps=4", resume)
    assert state(4)["entropy_coef"] == pytest.approx(0.04)  # 0.02 from the checkpoint, then two steps
