"""Throughput and memory of `alignment` against TRL's DPOTrainer, side by side.

    python scripts/benchmark.py --preset cpu-small
    python scripts/benchmark.py --preset listwise-cpu
    python scripts/benchmark.py --preset gpu-0.5b            # on a GPU
    python scripts/benchmark.py --preset gpu-8b-qlora-24gb   # on a GPU, 4-bit + LoRA

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
are ours against the better TRL run. Results go to a JSON file and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path

from flops import Shape, matmul_peak, ours_forward_flops, trl_forward_flops

ROOT = Path(__file__).resolve().parents[1]


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

    from alignment.config import DataConfig, SourceConfig
    from alignment.data import build_datasets
    from alignment.losses import get_loss
    from alignment.reference import FrozenModel, Precomputed
    from alignment.trainers.arguments import AlignmentTrainingArguments
    from alignment.trainers.preference import PreferenceTrainer

    tokenizer, policy, reference = _models(preset, directory)
    args = AlignmentTrainingArguments(**_training_kwargs(preset, directory / "ours", preset.batch), forward="auto")
    loss = get_loss("dpo", beta=0.1, pairs="all")
    start = time.perf_counter()
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
    wall = time.perf_counter() - start

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
    return {"wall_s": wall, "first_loss": trainer.state.log_history[0]["loss"], "flops": flops, "forward": strategy}


def run_trl(preset: Preset, directory: Path, best: bool) -> dict:
    import datasets
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
    start = time.perf_counter()
    rows = datasets.load_dataset("json", data_files=str(directory / "pairs.jsonl"), split="train")
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=rows, processing_class=tokenizer)
    trainer.train()
    wall = time.perf_counter() - start
    # A training forward + backward per batch, and one reference forward per batch: live
    # every step (default), or in the precompute pass over the same rows (best).
    flops = 4 * trl_forward_flops(Shape.of(policy), trainer.get_train_dataloader())
    return {
        "wall_s": wall,
        "first_loss": trainer.state.log_history[0]["loss"],
        "flops": flops,
        "forward": "padded rows",
    }


def worker(run: str, preset_name: str, directory: Path, result: Path, tokens: int) -> None:
    import torch

    preset = PRESETS[preset_name]
    outcome = run_ours(preset, directory) if run == "ours" else run_trl(preset, directory, best=run == "trl-best")
    if preset.device == "cuda":
        outcome["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        outcome["memory_kind"] = "CUDA max allocated"
    else:
        outcome["peak_memory_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
        outcome["memory_kind"] = "peak RSS"
    outcome["tokens_per_s"] = tokens / outcome["wall_s"]
    outcome["achieved_tflops"] = outcome["flops"] / outcome["wall_s"] / 1e12
    result.write_text(json.dumps(outcome))


# ----------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {', '.join(RUNS)}")
    parser.add_argument("--out", default=None, help="JSON result file (default: benchmarks/<preset>.json)")
    parser.add_argument("--worker", choices=RUNS, help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.preset, Path(args.dir), Path(args.result), args.tokens)
        return 0

    preset = PRESETS[args.preset]
    runs = args.runs.split(",")
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
    out = Path(args.out or ROOT / "benchmarks" / f"{args.preset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(markdown(summary))
    return 0


def measured_peak(preset: Preset) -> float:
    """The matmul FLOP/s of this machine in the preset's precision, measured now."""
    import torch

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


if __name__ == "__main__":
    sys.exit(main())
