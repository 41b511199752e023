"""Evaluation by generation (the recipe's `evaluation:` section): the policy answers the
held-out prompts, and a score function and/or a judge grades the answers.

It serves offline and online recipes alike and reuses the online pieces: the prompt
pipeline (`build_prompt_datasets` on `data.test`), the sampler and the judges. The
initial policy's answers are generated once before step 1 and written to
`initial_generations.jsonl` in the output directory, so a resumed run compares against
the same answers rather than the checkpoint's."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import datasets
import torch
from accelerate.utils import gather_object
from torch import Tensor, nn

from alignment.data import PromptCollator
from alignment.data.prompts import build_prompt_datasets
from alignment.online.engines.base import GenerationEngine
from alignment.online.engines.native import NativeEngine
from alignment.online.judges import Judge, JudgeError, Prompt, build_judge, import_function
from alignment.online.sampler import POLICY, GenerationSettings, ModelStream
from alignment.schema.online import EvaluationConfig

INITIAL_GENERATIONS = "initial_generations.jsonl"
LATEST_GENERATIONS = "eval_generations.jsonl"  # the last evaluation's answers, beside eval_results.json


class ScoreFunction:
    """`module:function`, called as `function(prompts, completions)` with one completion
    text per prompt; it returns one score in [0, 1] per completion (1: right)."""

    def __init__(self, spec: str) -> None:
        self.name = f"evaluation.score {spec}"
        self.function = import_function(spec, self.name)

    def __call__(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> Tensor:
        if not prompts:
            return torch.empty(0)
        try:
            values = self.function(list(prompts), list(completions))
        except Exception as e:  # user code: say whose code failed, keep the cause chained
            raise JudgeError(f"{self.name} raised {type(e).__name__}: {e}") from e
        try:
            scores = torch.as_tensor(values, dtype=torch.float64).cpu()
        except (TypeError, ValueError, RuntimeError) as e:
            raise JudgeError(f"{self.name} returned {type(values).__name__}, not a list of floats") from e
        if scores.shape != (len(prompts),):
            raise JudgeError(
                f"{self.name} returned values of shape {list(scores.shape)}; expected [{len(prompts)}], "
                "one score per completion"
            )
        bad = ~torch.isfinite(scores) | (scores < 0) | (scores > 1)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise JudgeError(f"{self.name} returned {scores[i].item()} at index {i}; a score is in [0, 1]")
        return scores


def evaluation_prompts(data_config: Any, tokenizer: Any) -> datasets.Dataset:
    """The held-out prompts: `data.test`'s sources through the online prompt pipeline
    (any layout; completions are ignored), with its bad-row policy and report."""
    prompts_only = replace(data_config, train=data_config.test, test=[], test_size=0.0)
    return build_prompt_datasets(prompts_only, tokenizer).train


class GenerationEvaluation:
    """Answers `prompts` with a model and grades them. `start` records the initial
    policy's answers; `evaluate` returns the metrics (names without the `eval_` prefix):
    `generation_accuracy`, `initial_generation_accuracy`, `win_rate_vs_initial`,
    `generation_length` (tokens) and `generation_missing_eos` (share cut at
    `max_new_tokens`). Each process answers every `world`-th prompt; the means are over
    all prompts."""

    def __init__(
        self,
        cfg: EvaluationConfig,
        prompts: datasets.Dataset,
        tokenizer: Any,
        eos_token_ids: tuple[int, ...],
        batch_size: int,
        device: torch.device,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        writes: bool | None = None,
    ) -> None:
        if cfg.max_prompts is not None and cfg.max_prompts < len(prompts):
            prompts = prompts.select(range(cfg.max_prompts))
        self.prompts = prompts
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = device
        self.seed = seed
        self.rank, self.world = rank, world  # this process answers every world-th prompt from rank
        # Whether this process writes the answers files: where checkpoints are written
        # (`TrainingArguments.should_save`): the global main process on a shared output
        # directory, or each node's local main process with `save_on_each_node`.
        self.writes = rank == 0 if writes is None else writes
        greedy = cfg.temperature == 0.0
        self.settings = GenerationSettings(
            max_new_tokens=cfg.max_new_tokens,
            eos_token_ids=eos_token_ids,
            pad_token_id=tokenizer.pad_token_id,
            temperature=1.0 if greedy else cfg.temperature,
            top_k=1 if greedy else cfg.top_k,
            top_p=1.0 if greedy else cfg.top_p,
        )
        self.score = ScoreFunction(cfg.score) if cfg.score else None
        self.judge: Judge | None = build_judge(cfg.judge, device) if cfg.judge else None
        self.collator = PromptCollator(pad_token_id=tokenizer.pad_token_id)
        self.initial: dict[int, str] = {}
        self.initial_metrics: dict[str, float] = {}
        # Who generates the answers: the online trainer sets its own engine (`online.engine`).
        self.engine: GenerationEngine = NativeEngine()

    def _answers(self, model: nn.Module) -> list[tuple[int, Prompt, str, int, bool]]:
        """(index, prompt, completion text, length, finished) for this process's prompts."""
        out = []
        mine = list(range(self.rank, len(self.prompts), self.world))
        # Seeded and forked: sampled evaluations repeat, and training's random stream is untouched.
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(self.seed)
            for start in range(0, len(mine), self.batch_size):
                indices = mine[start : start + self.batch_size]
                batch = self.collator([self.prompts[i] for i in indices])
                ids = batch["prompt_input_ids"].to(self.device)
                mask = batch["prompt_attention_mask"].to(self.device)
                samples = self.engine.generate([POLICY], ids, mask, self.settings, policy=ModelStream(model))
                lengths = samples.lengths[:, 0].tolist()
                rows = [row[:n].tolist() for row, n in zip(samples.completion_ids[:, 0], lengths, strict=True)]
                texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
                finished = samples.finished[:, 0].tolist()
                out += list(zip(indices, batch["prompts"], texts, lengths, finished, strict=True))
        return out

    def _mean(self, values: list[float]) -> float:
        total = [(sum(values), len(values))]
        total = gather_object(total) if self.world > 1 else total
        return sum(s for s, _ in total) / max(1, sum(n for _, n in total))

    def start(self, model: nn.Module, output_dir: str | None = None) -> None:
        """The initial policy's answers (and accuracy), before step 1; written to
        `output_dir/initial_generations.jsonl` by the main process."""
        answers = self._answers(model)
        self.initial = {i: text for i, _, text, _, _ in answers}
        if self.score is not None:
            scores = self.score([p for _, p, *_ in answers], [t for _, _, t, _, _ in answers]).tolist()
            self.initial_metrics["initial_generation_accuracy"] = self._mean(scores)
        if output_dir is not None:
            self._write(answers, os.path.join(output_dir, INITIAL_GENERATIONS))

    def resume(self, output_dir: str) -> bool:
        """Reload the initial answers a previous run wrote; False when there are none."""
        path = os.path.join(output_dir, INITIAL_GENERATIONS)
        rows = []
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f]
        found = len(rows) == len(self.prompts)
        # Collective: a process that generated afresh would wait in an all-gather for the
        # ones that reloaded, so either every process reloads or none does.
        if self.world > 1:
            found = all(gather_object([found]))
        if not found:
            return False
        mine = set(range(self.rank, len(self.prompts), self.world))
        self.initial = {row["index"]: row["completion"] for row in rows if row["index"] in mine}
        if self.score is not None:
            indices = sorted(self.initial)
            scores = self.score(
                [json.loads(self.prompts[i]["prompt"]) for i in indices], [self.initial[i] for i in indices]
            )
            self.initial_metrics["initial_generation_accuracy"] = self._mean(scores.tolist())
        return True

    def evaluate(self, model: nn.Module, output_dir: str | None = None) -> dict[str, float]:
        answers = self._answers(model)
        if output_dir is not None:
            self._write(answers, os.path.join(output_dir, LATEST_GENERATIONS))
        prompts = [p for _, p, *_ in answers]
        texts = [t for _, _, t, _, _ in answers]
        metrics = dict(self.initial_metrics)
        if self.score is not None:
            metrics["generation_accuracy"] = self._mean(self.score(prompts, texts).tolist())
        if self.judge is not None and self.initial:
            pairs = [(t, self.initial[i]) for (i, _, t, _, _) in answers]
            metrics["win_rate_vs_initial"] = self._mean(self.judge(prompts, pairs).tolist())
        metrics["generation_length"] = self._mean([float(n) for *_, n, _ in answers])
        metrics["generation_missing_eos"] = self._mean([float(not f) for *_, f in answers])
        return metrics

    def _write(self, answers: list[tuple], path: str) -> None:
        """Every process's answers, in prompt order, as JSON lines (by the writing process)."""
        everything = gather_object(answers) if self.world > 1 else answers
        if self.writes:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            # Renamed into place whole: a resume after a kill never reads half a file, and
            # two nodes saving into one shared directory never interleave their lines.
            tmp = f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"
            with open(tmp, "w", encoding="utf-8") as f:
                for i, prompt, text, _, _ in sorted(everything, key=lambda a: a[0]):
                    f.write(json.dumps({"index": i, "prompt": prompt, "completion": text}) + "\n")
            os.replace(tmp, path)
