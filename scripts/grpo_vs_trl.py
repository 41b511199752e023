"""GRPO on SmolLM2-135M-Instruct for chat addition: our recipe against TRL 1.16's
GRPOTrainer given the same training wall time, then both graded the same way.

    python scripts/prepare_smollm2.py      # once
    python scripts/grpo_vs_trl.py          # writes benchmarks/grpo-recipe-vs-trl-<YYYY-MM-DD>-<commit7>.json

1. Ours: the recipe as a user runs it, `accelerate launch --num_processes 1
   scripts/train.py --config recipes/smollm2-135m/grpo.yaml` (a subprocess, its whole
   wall time measured). Its held-out greedy accuracy before and after comes from its
   `eval_results.json`, its training time (`train_runtime`: the training loop, without
   loading or the two evaluations) from `train_results.json`.
2. TRL: `GRPOTrainer` in this process with everything the recipe sets that TRL has: the
   model, the training prompts (conversational, through the same chat template), the
   reward (`alignment.tasks.chat_addition:score` wrapped as a TRL reward function), K =
   `num_generations`, `max_completion_length`, temperature, top-k/top-p, the loss under
   the same `loss_type` with the same epsilon, beta, scale_rewards and KL options,
   `num_iterations` = `online.updates_per_batch`, the learning rate, scheduler,
   optimizer, weight decay, gradient clipping and seed, prompts x K completions per
   step; float32 on CPU, no vLLM, no gradient checkpointing. A callback stops it at the
   end of the first step at or past our training time, so TRL gets at least as much
   training time as ours.
3. TRL's policy before and after is graded by alignment's own evaluation code
   (`GenerationEvaluation`: the recipe's `evaluation:` section, the 100 held-out prompts,
   greedy, its max_new_tokens), so both sides are measured identically; the step-0
   accuracy must equal our run's. The final TRL model is also graded by a plain
   `model.generate(do_sample=False)`, one prompt at a time, as an independent check.

Both sides run with the same number of torch threads (`--threads`; the child's
OMP_NUM_THREADS). The JSON holds the command, git commit, library versions, CPU, thread
count, both sides' accuracy before/after, steps and times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "scripts") not in sys.path:  # scripts/ is not a package
    sys.path.insert(0, str(ROOT / "scripts"))
import benchmark  # noqa: E402  (the records: file naming and provenance)

RECIPE = "recipes/smollm2-135m/grpo.yaml"
SERIES = "grpo-recipe-vs-trl"
WORK = "outputs/grpo-vs-trl"  # git-ignored


# ----------------------------------------------------------------------------- ours


def _shown(path: Path) -> str:
    """`path` relative to the repository when inside it, so the recorded JSON holds no
    machine's absolute paths."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def run_ours(recipe: str, output_dir: Path, threads: int, overrides: list[str]) -> dict:
    """The recipe as a user launches it; the whole wall time and its own results."""
    command = [
        "accelerate",
        "launch",
        "--num_processes",
        "1",
        "scripts/train.py",
        "--config",
        recipe,
        f"--training.output_dir={_shown(output_dir)}",
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    print("ours:", " ".join(command), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"our recipe failed with exit status {proc.returncode}")
    result = read_ours(output_dir)
    result |= {"command": " ".join(command), "wall_s": round(wall, 1)}
    return result


def read_ours(output_dir: Path) -> dict:
    evaluation = json.loads((output_dir / "eval_results.json").read_text())
    train = json.loads((output_dir / "train_results.json").read_text())
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return {
        "accuracy_before": evaluation["eval_initial_generation_accuracy"],
        "accuracy_after": evaluation["eval_generation_accuracy"],
        "steps": state["global_step"],
        "train_s": round(train["train_runtime"], 1),
        "reward_by_step": [round(e["online/reward"], 4) for e in state["log_history"] if "online/reward" in e],
        "output_dir": _shown(output_dir),
    }


# ----------------------------------------------------------------------------- TRL


def chat_addition_reward(prompts, completions, **kwargs) -> list[float]:
    """alignment.tasks.chat_addition:score as a TRL reward function: TRL passes a
    conversational completion as a list of messages, the score reads its text."""
    from alignment.tasks.chat_addition import score

    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return score(list(prompts), texts)


def trl_loss_options(loss) -> dict:
    """Our GRPO-family loss's parameters under GRPOConfig's names (the shared ones)."""
    return {
        "loss_type": loss.name,
        "beta": loss.beta,
        "epsilon": loss.epsilon,
        "epsilon_high": loss.epsilon_high,
        "delta": loss.delta,
        "importance_sampling_level": loss.importance_sampling_level,
        "scale_rewards": loss.scale_rewards,
        "use_bias_correction_kl": loss.use_bias_correction_kl,
        "mask_truncated_completions": loss.mask_truncated_completions,
        "top_entropy_quantile": loss.top_entropy_quantile,
        "entropy_coef": loss.entropy_coef,
    }


class StopAtWallTime(TrainerCallback):
    """Stops training at the end of the first step at or past `seconds` of training."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.start = seconds, time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if time.perf_counter() - self.start >= self.seconds:
            control.should_training_stop = True
        return control


def greedy_generate_accuracy(model, tokenizer, prompts, max_new_tokens: int, eos: tuple[int, ...]) -> float:
    """An independent check: transformers' greedy `generate`, one prompt at a time."""
    from alignment.tasks.chat_addition import score

    texts, raw = [], []
    for row in prompts:
        ids = torch.tensor([row["prompt_input_ids"]])
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=list(eos),
                pad_token_id=tokenizer.pad_token_id,
            )
        texts.append(tokenizer.decode(out[0, ids.size(1) :], skip_special_tokens=True))
        raw.append(json.loads(row["prompt"]))
    return sum(score(raw, texts)) / len(texts)


def run_trl(recipe: str, seconds: float, threads: int, overrides: list[str], workdir: Path, check: bool) -> dict:
    import datasets
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from alignment.config import load_config
    from alignment.models import load_tokenizer
    from alignment.online.evaluation import GenerationEvaluation, evaluation_prompts
    from alignment.online.sampler import eos_ids

    torch.set_num_threads(threads)
    config = load_config(ROOT / recipe, overrides)
    ours_args = config.training_arguments()
    online, loss = config.online, config.loss_fn
    if config.lora is not None or config.quantization is not None or len(config.loss) != 1:
        raise SystemExit("this comparison covers a full-weight recipe with one GRPO-family loss")
    if online.sampler != "policy" or online.missing_eos_penalty or getattr(online, "dynamic_sampling", False):
        raise SystemExit("TRL samples the policy, with no missing-EOS penalty and no dynamic sampling")
    if ours_args.lr_scheduler_type != "constant":
        raise SystemExit("the recipe's schedule must be constant: TRL runs for a time, not a number of steps")

    rows = []
    for source in config.data.train:
        with open(ROOT / source.path, encoding="utf-8") as f:
            rows += [{"prompt": json.loads(line)["prompt"]} for line in f if line.strip()]
        if source.fraction != 1.0:
            raise SystemExit("data.train fractions other than 1 are not mirrored here")
    train = datasets.Dataset.from_list(rows)

    path = config.model.name_or_path
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    eval_tokenizer = load_tokenizer(config.model)  # alignment's, for alignment's evaluation
    eos = eos_ids(eval_tokenizer.eos_token_id, model.generation_config.eos_token_id)
    prompts = evaluation_prompts(config.data, eval_tokenizer)
    batch = ours_args.per_device_eval_batch_size
    evaluation = GenerationEvaluation(config.evaluation, prompts, eval_tokenizer, eos, batch, torch.device("cpu"))
    model.eval()
    evaluation.start(model)
    before = evaluation.initial_metrics["initial_generation_accuracy"]
    print(f"TRL side, step 0: greedy accuracy {before:.2f}", flush=True)

    args = GRPOConfig(
        output_dir=str(workdir / "trl"),
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_vllm=False,
        num_generations=online.num_samples,
        per_device_train_batch_size=ours_args.per_device_train_batch_size * online.num_samples,
        gradient_accumulation_steps=ours_args.gradient_accumulation_steps,
        num_iterations=online.updates_per_batch,
        max_completion_length=online.max_new_tokens,
        temperature=online.temperature,
        top_k=online.top_k,
        top_p=online.top_p,
        **trl_loss_options(loss),
        learning_rate=ours_args.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=ours_args.warmup_steps,
        weight_decay=ours_args.weight_decay,
        adam_beta1=ours_args.adam_beta1,
        adam_beta2=ours_args.adam_beta2,
        adam_epsilon=ours_args.adam_epsilon,
        optim=ours_args.optim,
        max_grad_norm=ours_args.max_grad_norm,
        max_steps=1_000_000,  # the callback stops it
        seed=ours_args.seed,
        logging_steps=ours_args.logging_steps,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        log_completions=False,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=chat_addition_reward,
        args=args,
        train_dataset=train,
        callbacks=[StopAtWallTime(seconds)],
    )
    result = trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    after = evaluation.evaluate(model)["generation_accuracy"]
    print(f"TRL side, step {trainer.state.global_step}: greedy accuracy {after:.2f}", flush=True)
    out = {
        "accuracy_before": before,
        "accuracy_after": after,
        "steps": trainer.state.global_step,
        "train_s": round(result.metrics["train_runtime"], 1),
        "stopped_at_s": round(seconds, 1),
        "reward_by_step": [round(e["reward"], 4) for e in trainer.state.log_history if "reward" in e],
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "options": {k: getattr(args, k) for k in ("loss_type", "beta", "epsilon", "epsilon_high", "scale_rewards")},
    }
    if check:
        out["accuracy_after_transformers_generate"] = greedy_generate_accuracy(
            model, eval_tokenizer, evaluation.prompts, config.evaluation.max_new_tokens, eos
        )
    return out


# ----------------------------------------------------------------------------- main


def settings(recipe: str, overrides: list[str]) -> dict:
    from alignment.config import load_config

    config = load_config(ROOT / recipe, overrides)
    args = config.training_arguments()
    return {
        "loss": config.loss_fn.name,
        "beta": config.loss_fn.beta,
        "K": config.online.num_samples,
        "prompts_per_step": args.per_device_train_batch_size,
        "max_new_tokens": config.online.max_new_tokens,
        "temperature": config.online.temperature,
        "learning_rate": args.learning_rate,
        "max_steps": args.max_steps,
        "eval_max_new_tokens": config.evaluation.max_new_tokens,
        "eval_prompts": 100 if config.evaluation.max_prompts is None else config.evaluation.max_prompts,
    }


def table(result: dict) -> str:
    lines = [
        "| run | greedy accuracy before → after | steps | training time (s) | whole run (s) |",
        "|---|---|---|---|---|",
    ]
    ours, theirs = result["ours"], result["trl"]
    lines.append(
        f"| ours (`{result['recipe']}`) | {ours['accuracy_before']:.2f} → **{ours['accuracy_after']:.2f}** "
        f"| {ours['steps']} | {ours['train_s']} | {ours.get('wall_s', 'n/a')} |"
    )
    lines.append(
        f"| TRL GRPOTrainer | {theirs['accuracy_before']:.2f} → **{theirs['accuracy_after']:.2f}** "
        f"| {theirs['steps']} | {theirs['train_s']} | n/a |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--recipe", default=RECIPE)
    parser.add_argument(
        "--out", help=f"the JSON file to write (default benchmarks/{SERIES}-<YYYY-MM-DD>-<commit7>.json)"
    )
    parser.add_argument("--work-dir", default=WORK, help="our run's output directory and TRL's")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of both sides (OMP_NUM_THREADS)")
    parser.add_argument("--ours-dir", help="reuse this finished run of the recipe instead of running it")
    parser.add_argument("--seconds", type=float, help="TRL's training time (default: our run's train_runtime)")
    parser.add_argument("--no-generate-check", action="store_true", help="skip the transformers generate check")
    # Anything else is a recipe override for both sides, --section.key=value.
    args, overrides = parser.parse_known_args(argv)

    record = {
        "preset": SERIES,
        "series": SERIES,
        **benchmark.provenance(["python", "scripts/grpo_vs_trl.py", *(sys.argv[1:] if argv is None else argv)]),
        "torch_threads": args.threads,  # both sides' OMP_NUM_THREADS
        "versions": benchmark.package_versions("torch", "transformers", "trl", "accelerate"),
        "recipe": args.recipe,
        "overrides": overrides,
        "settings": settings(args.recipe, overrides),
    }
    workdir = ROOT / args.work_dir
    if args.ours_dir:
        record["ours"] = read_ours(Path(args.ours_dir))
    else:
        record["ours"] = run_ours(args.recipe, workdir / "ours", args.threads, overrides)
    seconds = args.seconds if args.seconds is not None else record["ours"]["train_s"]
    record["trl"] = run_trl(args.recipe, seconds, args.threads, overrides, workdir, not args.no_generate_check)
    # The same evaluation on the same initial weights: the step-0 accuracies must agree.
    record["same_step0_accuracy"] = record["ours"]["accuracy_before"] == record["trl"]["accuracy_before"]
    out = benchmark.write_record(record, args.out and str(ROOT / args.out))
    print(table(record))
    if not record["same_step0_accuracy"]:
        print("WARNING: the two sides' step-0 accuracies differ: not the same evaluation", file=sys.stderr)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
