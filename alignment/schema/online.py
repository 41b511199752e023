"""The `online:` recipe section: how completions are sampled and who judges them.

Present in a recipe, it turns the run into online training (Nash-MD, online IPO,
IPO-MD, online DPO): prompts come from `data`, completions from the sampler, and
preferences from the judge."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from typing import Literal

from alignment.schema.values import ConfigError

# How a pairwise preference model reads a prompt and two completions: its training
# (`pairwise_preference`) and its judge lay them out the same way.
PAIR_TEMPLATE = "{prompt}\n\nResponse A:\n{completion_a}\n\nResponse B:\n{completion_b}"
PAIR_PLACEHOLDERS = ("{prompt}", "{completion_a}", "{completion_b}")

JUDGE_TYPES = ("callable", "reward_function", "reward_model", "pairwise", "vpl", "format", "overlong", "exact_match")
# The built-in reward functions (`alignment.online.reward_functions`), judged like a reward function.
BUILTIN_REWARDS = ("format", "overlong", "exact_match")
# Judges of one scalar reward per completion: the ones a list of judges may hold (their rewards are summed).
REWARD_JUDGES = ("reward_function", "reward_model", "vpl", *BUILTIN_REWARDS)


@dataclass
class JudgeConfig:
    """Who judges the sampled completions: a preference judge answers P(y_i > y_j) for
    pairs of a prompt's completions, a reward judge one scalar per completion.

    - `callable`: `function` is `module:function`, called as
      `function(prompts, completions) -> P` with `completions` a list of (y0, y1) text
      pairs (a preference judge). With `function` the only way a recipe runs code of its
      own, and only code named here.
    - `reward_function`: `function(prompts, completions) -> rewards`, one completion text
      per prompt and one float per completion (e.g. unit tests passed); a reward judge.
    - `reward_model`: `name_or_path` of an AutoModelForSequenceClassification with one
      output, the scalar reward r; P = sigmoid(r0 - r1) (Bradley-Terry).
    - `pairwise`: `name_or_path` of an AutoModelForSequenceClassification that reads
      the prompt and both completions (rendered with `pairwise_template`) and outputs
      the logit of P(y0 > y1); it is asked in both orders and the answers averaged,
      P = (f(y0, y1) + 1 - f(y1, y0)) / 2, so position bias cancels.
    - `vpl`: `name_or_path` of a VPL reward model trained here (loss `vpl`) and
      `user_context`, a JSON/JSONL file of one user's labelled pairs: the reward is
      r(x, y, z) with z the posterior mean given those pairs.

    - built-in reward functions (`alignment.online.reward_functions`):
      `format`: 1 when the completion matches the regular expression `pattern` whole
      (`re.fullmatch`, `.` matching newlines too), else 0; `overlong`: DAPO's soft
      overlong punishment (Yu et al. 2025, eq. 13) from the completion's token count,
      with L_max = `max_completion_length` (default `online.max_new_tokens`) and
      L_cache = `soft_punish_cache`; `exact_match`: 1 when the completion's answer
      equals the row's `column` (both stripped), else 0, and no reward (None) for a row
      without one; the answer is the whole completion, or with `pattern` the last match
      of its first group.

    A reward function may return None for a completion it does not apply to (as in
    TRL). A reward function is called with keywords, TRL's way, when it has a
    `completions` or `completion_ids` parameter or `**kwargs`: `prompts`, `completions` (texts), `completion_ids`, the
    prompt row's other columns (one value per completion) and `trainer_state`, each
    passed if the function takes it by name or has `**kwargs`; otherwise as
    `function(prompts, completions)`.

    In a list of judges (`online.judge: [...]`), each is a reward judge with a
    `weight` (default 1) and a `name` for its logged mean (`online/rewards/<name>`;
    default: the function's or type's name).

    A reward or pairwise model trained here (its directory holds `alignment_judge.json`)
    is given exactly the token sequences it was trained on.

    `device` is where the judge runs ("auto": the training process's device)."""

    SCALAR_KEY = "function"

    type: Literal[
        "callable", "reward_function", "reward_model", "pairwise", "vpl", "format", "overlong", "exact_match"
    ] = "callable"
    function: str | None = None
    weight: float = 1.0
    name: str | None = None
    pattern: str | None = None
    column: str | None = None
    max_completion_length: int | None = None
    soft_punish_cache: int | None = None
    name_or_path: str | None = None
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    batch_size: int = 16
    max_length: int = 1024
    trust_remote_code: bool = False
    pairwise_template: str = PAIR_TEMPLATE
    user_context: str | None = None

    def __post_init__(self) -> None:
        self._check_builtin()
        if self.type in BUILTIN_REWARDS:
            if self.function is not None or self.name_or_path is not None:
                raise ConfigError(
                    f"online.judge: a built-in {self.type} reward takes neither function nor name_or_path"
                )
        elif self.type in ("callable", "reward_function"):
            if not self.function or ":" not in self.function:
                raise ConfigError(
                    f"online.judge.function: a {self.type} judge is named as 'module:function' "
                    f"(e.g. alignment.tasks.arithmetic:closer_to_sum), got {self.function!r}"
                )
            if self.name_or_path is not None:
                raise ConfigError("online.judge.name_or_path applies to reward_model and pairwise judges only")
        else:
            if not self.name_or_path:
                raise ConfigError(f"online.judge.name_or_path is required for a {self.type} judge")
            if self.function is not None:
                raise ConfigError("online.judge.function applies to callable judges only")
        if self.type == "vpl":
            if not self.user_context or not os.path.isfile(os.path.expanduser(self.user_context)):
                raise ConfigError(
                    "online.judge.user_context: a vpl judge needs a JSON/JSONL file of the user's labelled pairs, "
                    f"got {self.user_context!r}"
                )
        elif self.user_context is not None:
            raise ConfigError("online.judge.user_context applies to vpl judges only")
        if not math.isfinite(self.weight):
            raise ConfigError(f"online.judge.weight must be a finite number, got {self.weight}")
        if self.batch_size < 1:
            raise ConfigError(f"online.judge.batch_size must be >= 1, got {self.batch_size}")
        if self.max_length < 2:
            raise ConfigError(f"online.judge.max_length must be >= 2, got {self.max_length}")

    def _check_builtin(self) -> None:
        """Each built-in reward's own keys, and only its own."""
        own = {"format": ("pattern",), "overlong": ("max_completion_length", "soft_punish_cache")}
        own["exact_match"] = ("column", "pattern")
        for key in ("pattern", "column", "max_completion_length", "soft_punish_cache"):
            if getattr(self, key) is not None and key not in own.get(self.type, ()):
                users = [t for t, keys in own.items() if key in keys]
                raise ConfigError(f"online.judge.{key} applies to {' and '.join(users)} rewards only, not {self.type}")
        if self.type == "format" and not self.pattern:
            raise ConfigError("online.judge.pattern: a format reward needs a regular expression, e.g. '^\\d+$'")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as err:
                raise ConfigError(
                    f"online.judge.pattern: {self.pattern!r} is not a regular expression: {err}"
                ) from None
            if self.type == "exact_match" and re.compile(self.pattern).groups < 1:
                raise ConfigError(
                    f"online.judge.pattern: exact_match reads the answer from the pattern's first group; "
                    f"{self.pattern!r} has none (e.g. '=\\s*(-?\\d+)')"
                )
        if self.type == "exact_match" and not self.column:
            raise ConfigError("online.judge.column: exact_match compares with a column of the prompt rows, e.g. answer")
        if self.type == "overlong":
            if self.soft_punish_cache is None or self.soft_punish_cache < 0:
                raise ConfigError(
                    "online.judge.soft_punish_cache: an overlong reward needs L_cache >= 0 tokens, the band below "
                    f"max_completion_length where the punishment grows (DAPO), got {self.soft_punish_cache}"
                )
            if self.max_completion_length is not None and self.max_completion_length <= self.soft_punish_cache:
                raise ConfigError(
                    f"online.judge.max_completion_length ({self.max_completion_length}) must exceed "
                    f"soft_punish_cache ({self.soft_punish_cache})"
                )


@dataclass
class OnlineConfig:
    """Sampling and judging for online preference training.

    `sampler` draws the completions the loss compares: `policy` (online IPO, online
    DPO), `reference`, or `mixture`, the geometric mixture
    softmax((1 - m) * policy_logits + m * reference_logits) with m = `mixture_coef`
    (Nash-MD, IPO-MD). A loss that needs one sample from the policy itself (`nash_md`:
    y ~ policy, y' ~ sampler) gets it whatever the sampler.

    Generation: `temperature`, `top_k` (0: off), `top_p` (1: off), `max_new_tokens`.
    A completion that reaches `max_new_tokens` without EOS is cut there, and
    `missing_eos_penalty` is subtracted from its side of the judge's probability
    (P(y0 > y1) += penalty * (missing_eos(y1) - missing_eos(y0)), clipped to [0, 1]),
    so with a penalty of 1 an unfinished completion loses to a finished one (a reward
    judge's reward is lowered by the penalty instead).

    `num_samples` is K, the completions drawn per prompt (2: a pair); the judge is
    asked the K(K-1)/2 pairs of each prompt, or K rewards. `updates_per_batch` > 1
    trains several optimizer steps on each batch of samples (GRPO's mu, with its
    clipped importance ratio); the prompts are repeated so none is skipped.

    Several reward judges: `judge` is a list, each with its `weight`, aggregated as TRL
    1.16's `multi_objective_aggregation` says: `sum_then_normalize` (the weighted sum of
    the rewards, None skipped, is the score) or `normalize_then_sum` (GDPO: each
    function's rewards normalized within the prompt's group, (r - mean) / (std + 1e-4)
    over the completions it scores, then the weighted sum; pair it with the loss's
    `scale_rewards: batch` for GDPO's batch normalization). A completion no function
    scores is left out of the loss.

    `dynamic_sampling` (DAPO, Yu et al. 2025): a group whose K scores are all equal has
    no advantage, so it is dropped and more prompts are drawn until the micro-batch holds
    `per_device_train_batch_size` informative groups, at most
    `dynamic_sampling_max_draws` draws of a micro-batch of prompts each (the first
    included). Short after the last draw, the batch is filled with dropped groups that
    are masked out of the loss. Logged: `online/dynamic_sampling/filtered`,
    `online/dynamic_sampling/draws`, `online/dynamic_sampling/short`.

    Generation engine (`engine`): `native` samples with the trainer's own model (no extra
    dependency). `vllm` samples with vLLM (TRL's `use_vllm`), colocated in the trainer's
    process (`vllm_mode: colocate`) or from `alignment vllm-serve` (`server`, at
    `vllm_server_base_url`; `--mixture` for the samplers that need the reference). vLLM is sent the policy's weights before it generates after
    each optimizer step; each optimizer step's samples are generated in one call. Its
    token log-probs differ from the trainer's by its kernels' numerics, so the GRPO
    family weighs each token's loss by TRL 1.16's importance-sampling correction
    `vllm_importance_sampling_mode` (`token_truncate`, `token_mask`, `sequence_truncate`,
    `sequence_mask`) bounded by `vllm_importance_sampling_clip_min/max`; on by default
    with vLLM (None) where the loss can take it, and the mismatch is logged as
    `online/engine/logp_difference_{mean,max}`. Memory: `vllm_gpu_memory_utilization`
    (GPU), `vllm_cpu_kvcache_space_gib` (CPU, whole GiB; None: 2), and
    `vllm_enable_sleep_mode` (GPU: vLLM's memory is released while the trainer trains)."""

    judge: list[JudgeConfig] | JudgeConfig | None = None
    multi_objective_aggregation: Literal["sum_then_normalize", "normalize_then_sum"] = "sum_then_normalize"
    dynamic_sampling: bool = False
    dynamic_sampling_max_draws: int = 4
    sampler: Literal["policy", "reference", "mixture"] = "policy"
    mixture_coef: float = 0.125
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    missing_eos_penalty: float = 0.0
    eval_max_new_tokens: int | None = None
    num_samples: int = 2
    updates_per_batch: int = 1
    engine: Literal["native", "vllm"] = "native"
    vllm_mode: Literal["colocate", "server"] = "colocate"
    vllm_server_base_url: str = "http://127.0.0.1:8000"
    vllm_server_timeout: float = 240.0
    vllm_gpu_memory_utilization: float = 0.3
    vllm_cpu_kvcache_space_gib: int | None = None
    vllm_enable_sleep_mode: bool = False
    vllm_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    vllm_max_model_len: int | None = None
    vllm_importance_sampling_correction: bool | None = None
    vllm_importance_sampling_mode: Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"] = (
        "sequence_mask"
    )
    vllm_importance_sampling_clip_min: float | None = None
    vllm_importance_sampling_clip_max: float | None = 3.0

    def __post_init__(self) -> None:
        self._check_engine()
        if self.num_samples < 2:
            raise ConfigError(f"online.num_samples must be >= 2 (the losses compare samples), got {self.num_samples}")
        if self.updates_per_batch < 1:
            raise ConfigError(f"online.updates_per_batch must be >= 1, got {self.updates_per_batch}")
        if self.judge is None:
            raise ConfigError(
                "online.judge is required: 'module:function' for a Python judge, or a mapping with "
                f"type ({', '.join(JUDGE_TYPES)}) and name_or_path"
            )
        if isinstance(self.judge, list):
            self._check_judge_list(self.judge)
        elif self.judge.weight != 1.0 and self.judge.type not in REWARD_JUDGES:
            raise ConfigError(f"online.judge.weight weighs rewards; a {self.judge.type} judge answers preferences")
        if self.dynamic_sampling_max_draws < 1:
            raise ConfigError(
                f"online.dynamic_sampling_max_draws must be >= 1 (the first draw counts), "
                f"got {self.dynamic_sampling_max_draws}"
            )
        if not 0.0 <= self.mixture_coef <= 1.0:
            raise ConfigError(f"online.mixture_coef must be in [0, 1], got {self.mixture_coef}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"online.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ConfigError(f"online.temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"online.top_k must be >= 0 (0 turns it off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"online.top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.missing_eos_penalty <= 1.0:
            raise ConfigError(f"online.missing_eos_penalty must be in [0, 1], got {self.missing_eos_penalty}")
        if self.eval_max_new_tokens is not None and self.eval_max_new_tokens < 1:
            raise ConfigError(f"online.eval_max_new_tokens must be >= 1, got {self.eval_max_new_tokens}")

    def _check_engine(self) -> None:
        vllm_keys = [
            spec.name
            for spec in dataclasses.fields(self)
            if spec.name.startswith("vllm_") and getattr(self, spec.name) != spec.default
        ]
        if self.engine == "native":
            if self.vllm_importance_sampling_correction:
                raise ConfigError(
                    "online.vllm_importance_sampling_correction corrects an external engine's samples; "
                    "online.engine native samples with the trained model itself (set online.engine: vllm)"
                )
            if vllm_keys:
                raise ConfigError(f"online.{vllm_keys[0]} is a vLLM setting; set online.engine: vllm to use it")
            return
        if not 0.0 < self.vllm_gpu_memory_utilization <= 1.0:
            raise ConfigError(
                f"online.vllm_gpu_memory_utilization must be in (0, 1], got {self.vllm_gpu_memory_utilization}"
            )
        if self.vllm_cpu_kvcache_space_gib is not None and self.vllm_cpu_kvcache_space_gib < 1:
            raise ConfigError(
                f"online.vllm_cpu_kvcache_space_gib must be a whole number of GiB >= 1, got {self.vllm_cpu_kvcache_space_gib}"
            )
        if self.vllm_server_timeout <= 0:
            raise ConfigError(f"online.vllm_server_timeout must be > 0 seconds, got {self.vllm_server_timeout}")
        if not re.fullmatch(r"https?://[^\s/]+(:\d+)?/?", self.vllm_server_base_url):
            raise ConfigError(
                f"online.vllm_server_base_url {self.vllm_server_base_url!r}: expected http://HOST:PORT "
                "(alignment vllm-serve listens on http://127.0.0.1:8000 by default)"
            )
        low, high = self.vllm_importance_sampling_clip_min, self.vllm_importance_sampling_clip_max
        for key, value in (("clip_min", low), ("clip_max", high)):
            if value is not None and value < 0:
                raise ConfigError(f"online.vllm_importance_sampling_{key} must be >= 0, got {value}")
        if low is not None and high is not None and low > high:
            raise ConfigError(
                f"online.vllm_importance_sampling_clip_min ({low}) is above online.vllm_importance_sampling_clip_max "
                f"({high})"
            )
        if low is None and high is None and self.vllm_importance_sampling_mode.endswith("truncate"):
            raise ConfigError(
                f"online.vllm_importance_sampling_mode {self.vllm_importance_sampling_mode} clamps to "
                "[clip_min, clip_max]: set at least one of online.vllm_importance_sampling_clip_min/clip_max"
            )
        if self.vllm_max_model_len is not None and self.vllm_max_model_len < 2:
            raise ConfigError(f"online.vllm_max_model_len must be >= 2, got {self.vllm_max_model_len}")

    @staticmethod
    def _check_judge_list(judges: list[JudgeConfig]) -> None:
        if not judges:
            raise ConfigError("online.judge: an empty list; give one judge or several reward judges")
        for i, judge in enumerate(judges):
            if judge.type not in REWARD_JUDGES:
                raise ConfigError(
                    f"online.judge.{i}: a list of judges sums their rewards, so each must give rewards "
                    f"({', '.join(REWARD_JUDGES)}); a {judge.type} judge answers preferences"
                )


@dataclass
class EvaluationConfig:
    """The `evaluation:` recipe section: evaluation by generation on the held-out
    prompts (`data.test`), for offline and online recipes alike.

    Before step 1 the initial policy answers every test prompt once; at each evaluation
    the policy answers them again (greedy with the default `temperature: 0`), and:

    - `score` (`module:function`, called as `function(prompts, completions)` with one
      completion text per prompt) returns a score in [0, 1] per completion, 1 for a
      right answer: the means are `eval_generation_accuracy` (the policy now) and
      `eval_initial_generation_accuracy` (before step 1);
    - `judge` (the same forms as `online.judge`) is asked P(policy's completion >
      initial policy's completion): the mean is `eval_win_rate_vs_initial`.

    `max_prompts` caps the number of test prompts used (None: all)."""

    SCALAR_KEY = "score"

    score: str | None = None
    judge: JudgeConfig | None = None
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    max_prompts: int | None = None

    def __post_init__(self) -> None:
        if self.score is None and self.judge is None:
            raise ConfigError(
                "evaluation: name a `score` function ('module:function', a score in [0, 1] per completion) "
                "and/or a `judge` (as online.judge)"
            )
        if self.score is not None and ":" not in self.score:
            raise ConfigError(f"evaluation.score: a score function is named as 'module:function', got {self.score!r}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"evaluation.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"evaluation.temperature must be >= 0 (0: greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"evaluation.top_k must be >= 0 (0 turns it off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"evaluation.top_p must be in (0, 1], got {self.top_p}")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ConfigError(f"evaluation.max_prompts must be >= 1, got {self.max_prompts}")
