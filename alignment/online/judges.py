"""Judges for online training, in two kinds: preference judges answer P(y0 > y1) for a
prompt and two completions, reward judges (`feedback = "rewards"`) one scalar reward per
completion (and P(y0 > y1) = sigmoid(r0 - r1) when asked a pair, Bradley-Terry).

A judge is built from the recipe's `online.judge` section (`JudgeConfig`) and called as
`judge(prompts, completions) -> Tensor[B]` (float32, CPU) for pairs, or
`judge.rewards(prompts, completions) -> Tensor[N]` for a reward judge. Every answer goes
through the same checks (one value per question, finite, probabilities in [0, 1]), so a
bad judge fails loudly, naming itself, instead of quietly turning into a wrong loss.
`alignment.online.feedback` asks a judge about K completions per prompt."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from alignment.data.adapters import adapt_row, detect_layout
from alignment.data.collator import right_padded
from alignment.data.example import PreferenceExample
from alignment.data.tokenize import tokenize_example
from alignment.models import DTYPES
from alignment.online.reward_functions import ExactMatch, FormatReward, SoftOverlongPunishment
from alignment.rewards.judge_file import read_judge_file
from alignment.rewards.pair_inputs import pair_ids, template_segments
from alignment.rewards.vpl import VPL_CONFIG, VPLRewardModel
from alignment.schema.online import BUILTIN_REWARDS, JudgeConfig

logger = logging.getLogger(__name__)

Prompt = str | list[dict[str, str]]
"""A plain prompt, or chat messages ({"role": ..., "content": ...})."""


class JudgeError(ValueError):
    """A judge could not be built, or returned something unusable. The message names the judge."""


class Judge:
    """P(y0 > y1) for each prompt and (y0, y1) pair. Subclasses implement `_probabilities`;
    `__call__` checks its inputs and its answer."""

    name: str = "judge"
    feedback: str = "preferences"

    def __call__(self, prompts: Sequence[Prompt], completions: Sequence[tuple[str, str]]) -> Tensor:
        if len(prompts) != len(completions):
            raise ValueError(f"{self.name}: {len(prompts)} prompts but {len(completions)} completion pairs")
        for i, pair in enumerate(completions):
            if len(pair) != 2:
                raise ValueError(f"{self.name}: completions[{i}] is not a (y0, y1) pair: {len(pair)} items")
        if not prompts:
            return torch.empty(0, dtype=torch.float32)
        return self._checked(self._probabilities(list(prompts), list(completions)), len(prompts))

    def _probabilities(self, prompts: list[Prompt], completions: list[tuple[str, str]]) -> Any:
        raise NotImplementedError

    def _checked(self, values: Any, batch_size: int, probabilities: bool = True, missing: bool = False) -> Tensor:
        """`values` as a float32 CPU tensor [batch_size], or JudgeError saying what is wrong.
        With `missing`, None (a reward that does not apply) becomes NaN."""
        if missing and isinstance(values, (list, tuple)):
            values = [math.nan if v is None else v for v in values]
        try:
            p = torch.as_tensor(values.detach() if isinstance(values, Tensor) else values, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as e:
            raise JudgeError(
                f"{self.name} returned {type(values).__name__}, not {batch_size} "
                f"{'probabilities' if probabilities else 'rewards'} (a list, tuple, numpy array or tensor of floats)"
            ) from e
        if p.shape != (batch_size,):
            raise JudgeError(
                f"{self.name} returned values of shape {list(p.shape)}; expected shape [{batch_size}], "
                + ("one P(y0 > y1) per prompt" if probabilities else "one reward per completion")
            )
        p = p.cpu()
        # A range check alone would let NaN through: it compares False to everything.
        checks = [(p.isinf() if missing else ~torch.isfinite(p), "a value that is not finite (NaN or inf)")]
        if probabilities:
            checks.append(((p < 0) | (p > 1), "a probability outside [0, 1]"))
        for bad, what in checks:
            if bad.any():
                i = int(bad.nonzero()[0])
                raise JudgeError(f"{self.name} returned {what}: {p[i].item()} at index {i}")
        return p


def import_function(spec: str, owner: str) -> Callable[..., Any]:
    """The callable `module:function` names, found by import and attribute access only:
    a recipe never has text evaluated. `owner` starts every error message."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise JudgeError(f"{owner}: a function is named as 'module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise JudgeError(f"{owner}: cannot import module {module_name!r}: {e}") from e
    target: Any = module
    for part in attr.split("."):  # `module:Class.method` reaches a nested attribute
        if not hasattr(target, part):
            raise JudgeError(f"{owner}: {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise JudgeError(f"{owner}: {attr!r} in {module_name!r} is a {type(target).__name__}, not callable")
    return target


class CallableJudge(Judge):
    """`module:function`, called as `function(prompts, completions)`."""

    def __init__(self, function: str):
        self.name = f"callable judge {function}"
        self.function: Callable[..., Any] = import_function(function, self.name)

    def _probabilities(self, prompts: list[Prompt], completions: list[tuple[str, str]]) -> Any:
        try:
            return self.function(prompts, completions)
        except Exception as e:  # user code: say whose code failed, keep the cause chained
            raise JudgeError(f"{self.name} raised {type(e).__name__}: {e}") from e


class RewardJudge(Judge):
    """A judge of one scalar reward per completion. Asked a pair, it answers by
    Bradley-Terry, P(y0 > y1) = sigmoid(r0 - r1)."""

    feedback = "rewards"
    missing_allowed = False  # whether it may answer None (NaN): reward functions may, as in TRL

    def rewards(
        self, prompts: Sequence[Prompt], completions: Sequence[str], context: Mapping[str, Any] | None = None
    ) -> Tensor:
        """float32 rewards [N] on CPU; NaN where a reward function answered None. `context`
        holds keyword arguments for reward functions: per-completion lists (`completion_ids`,
        the prompt rows' columns) and `trainer_state`."""
        if len(prompts) != len(completions):
            raise ValueError(f"{self.name}: {len(prompts)} prompts but {len(completions)} completions")
        if not prompts:
            return torch.empty(0, dtype=torch.float32)
        if _positional_count(type(self)._rewards) >= 4:
            values = self._rewards(list(prompts), list(completions), dict(context or {}))
        else:  # a subclass written before the context: `_rewards(prompts, completions)`
            values = self._rewards(list(prompts), list(completions))  # type: ignore[call-arg]
        return self._checked(values, len(prompts), probabilities=False, missing=self.missing_allowed)

    def _rewards(self, prompts: list[Prompt], completions: list[str], context: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _probabilities(self, prompts: list[Prompt], completions: list[tuple[str, str]]) -> Tensor:
        # One pass over all 2B texts: y0's in the first half, y1's in the second.
        r = self.rewards(prompts * 2, [y0 for y0, _ in completions] + [y1 for _, y1 in completions])
        r0, r1 = r.chunk(2)
        return torch.sigmoid(r0 - r1).nan_to_num(0.5)  # a reward that does not apply prefers neither


class RewardFunctionJudge(RewardJudge):
    """`module:function`: one reward per completion text (e.g. the fraction of unit tests
    passed), or None where it does not apply. Called TRL's way when it has a `completions` or
    `completion_ids` parameter or **kwargs, `function(prompts=..., completions=..., **context)`
    with the keys it takes (all of them with **kwargs); otherwise `function(prompts, completions)`."""

    missing_allowed = True

    def __init__(self, function: str | Callable[..., Any], name: str | None = None):
        if isinstance(function, str):
            self.name = f"reward function {function}"
            self.function: Callable[..., Any] = import_function(function, self.name)
        else:
            self.name, self.function = f"reward function {name}", function
        self.short_name = name or getattr(self.function, "__name__", None) or str(function).rpartition(":")[2]
        self.keywords, self.accepts = _keyword_parameters(self.function)

    def _rewards(self, prompts: list[Prompt], completions: list[str], context: dict[str, Any]) -> Any:
        try:
            if not self.keywords:
                return self.function(prompts, completions)
            given = {"prompts": prompts, "completions": completions, **context}
            return self.function(**{k: v for k, v in given.items() if self.accepts is None or k in self.accepts})
        except Exception as e:  # user code: say whose code failed, keep the cause chained
            raise JudgeError(f"{self.name} raised {type(e).__name__}: {e}") from e


@functools.cache
def _positional_count(method: Callable[..., Any]) -> int:
    """How many positional parameters `method` takes (self included); many, with *args."""
    parameters = inspect.signature(method).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return 99
    return sum(
        p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in parameters
    )


def _keyword_parameters(function: Callable[..., Any]) -> tuple[bool, frozenset[str] | None]:
    """Whether `function` is called with keywords (it has a `completions` or
    `completion_ids` parameter, or **kwargs), and the names it takes (None: any)."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # a builtin without a signature: the positional form
        return False, frozenset()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return True, None
    if "completions" not in parameters and "completion_ids" not in parameters:
        return False, frozenset()
    return True, frozenset(parameters)


class RewardPanel(RewardJudge):
    """Several reward judges with weights (`online.judge` as a list): each function's
    rewards [N, F] (NaN where one answered None), aggregated per prompt group by
    `alignment.online.feedback.aggregate_rewards`. Asked for one reward per completion
    (e.g. a pair at evaluation), it answers the weighted sum, None skipped."""

    missing_allowed = True

    def __init__(self, members: list[tuple[str, RewardJudge, float]], aggregation: str):
        names = [name for name, _, _ in members]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise JudgeError(f"online.judge: two reward judges are named {duplicated[0]!r}; give each its own `name`")
        self.members, self.aggregation = members, aggregation
        self.names = names
        self.weights = torch.tensor([w for _, _, w in members], dtype=torch.float32)
        self.name = "rewards " + " + ".join(f"{w:g} * {n}" for n, _, w in members)

    def rewards_per_function(
        self, prompts: Sequence[Prompt], completions: Sequence[str], context: Mapping[str, Any] | None = None
    ) -> Tensor:
        """[N, F]: each member's rewards, NaN where it answered None."""
        return torch.stack([judge.rewards(prompts, completions, context) for _, judge, _ in self.members], dim=1)

    def _rewards(self, prompts: list[Prompt], completions: list[str], context: dict[str, Any]) -> Tensor:
        per_function = self.rewards_per_function(prompts, completions, context)
        total = (per_function * self.weights).nansum(-1)
        return torch.where(per_function.isnan().all(-1), math.nan, total)


def messages_to_text(messages: list[dict[str, str]]) -> str:
    """Chat messages as plain `role: content` lines, for models without a chat template."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


class _ClassifierJudge(Judge):
    """Shared loading and batched scoring for judges built on AutoModelForSequenceClassification."""

    kind = "classifier judge"
    allowed_labels: tuple[int, ...] = ()
    labels_help = ""

    def __init__(
        self,
        name_or_path: str,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str = "auto",
        batch_size: int = 16,
        max_length: int = 1024,
        trust_remote_code: bool = False,
        revision: str | None = None,
    ):
        self.name = f"{self.kind} {name_or_path}"
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.max_length = max_length
        if trust_remote_code:
            logger.warning("online.judge.trust_remote_code is true: code shipped with %s will run", name_or_path)
        hub = {"revision": revision, "trust_remote_code": trust_remote_code}
        # The head's size is in the config: a wrong checkpoint fails before its weights load.
        num_labels = AutoConfig.from_pretrained(name_or_path, **hub).num_labels
        if num_labels not in self.allowed_labels:
            raise JudgeError(f"{self.name}: the model has {num_labels} outputs (num_labels); {self.labels_help}")
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path, **hub)
        if self.tokenizer.pad_token_id is None:
            if self.tokenizer.eos_token_id is None:
                raise JudgeError(f"{self.name}: the tokenizer has neither a pad nor an EOS token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model, info = AutoModelForSequenceClassification.from_pretrained(
            name_or_path, dtype=DTYPES.get(dtype, dtype), use_safetensors=True, output_loading_info=True, **hub
        )
        if info["missing_keys"]:
            # e.g. a causal LM checkpoint: its classification head would be random noise.
            raise JudgeError(
                f"{self.name}: weights missing from the checkpoint would be randomly initialised: "
                f"{sorted(info['missing_keys'])}; is it a trained sequence-classification model?"
            )
        # The model reads the score at the last token that is not `pad_token_id`, so it must
        # agree with the tokenizer's padding. (With EOS as pad, trailing EOS is skipped too.)
        model.config.pad_token_id = self.tokenizer.pad_token_id
        model.config.get_text_config().pad_token_id = self.tokenizer.pad_token_id  # where the head looks
        self.model: PreTrainedModel = model.to(self.device).eval().requires_grad_(False)
        # A model trained here scores the token sequences it was trained on (`alignment_judge.json`).
        self.trained_here = read_judge_file(name_or_path) if os.path.isdir(name_or_path) else None

    def _encode(self, text: str, templated: bool) -> list[int]:
        # Text from a chat template already holds its special tokens (BOS); don't add them twice.
        # Truncation follows the tokenizer's `truncation_side` (by default it keeps the beginning).
        return self.tokenizer(text, add_special_tokens=not templated, truncation=True, max_length=self.max_length)[
            "input_ids"
        ]

    def _logits(self, texts: list[tuple[str, bool]]) -> Tensor:
        """float32 logits [N, num_labels] on CPU for (text, templated) pairs, in batches."""
        return self._logits_of_ids([self._encode(t, templated) for t, templated in texts])

    @torch.no_grad()
    def _logits_of_ids(self, encoded: list[list[int]]) -> Tensor:
        """float32 logits [N, num_labels] on CPU for token id sequences, in batches."""
        pad = self.tokenizer.pad_token_id
        out = []
        for start in range(0, len(encoded), self.batch_size):
            chunk = encoded[start : start + self.batch_size]
            input_ids, attention_mask = right_padded(chunk, pad)  # a padded text scores as it would alone
            logits = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device))
            out.append(logits.logits.float().cpu())
        return torch.cat(out)

    def _trained_ids(self, prompt: Prompt, completions: list[str]) -> tuple[list[int], list[list[int]]]:
        """The prompt's and completions' ids exactly as training tokenized them (for a
        model trained here: `alignment_judge.json`), the prompt cut to leave room."""
        if not isinstance(prompt, str) and not getattr(self.tokenizer, "chat_template", None):
            prompt = messages_to_text(prompt)
        example = PreferenceExample(prompt, completions, [0.0] * len(completions))
        tokens = tokenize_example(
            example, self.tokenizer, max_length=self.max_length, max_prompt_length=self.max_length // 2
        )
        return tokens["prompt_input_ids"], tokens["completion_input_ids"]


class RewardModelJudge(_ClassifierJudge, RewardJudge):
    """A scalar reward model r(x, y); P(y0 > y1) = sigmoid(r0 - r1) (Bradley-Terry)."""

    kind = "reward model judge"
    allowed_labels = (1,)
    labels_help = "a reward model has exactly one output, the scalar reward (num_labels=1)"

    def _text(self, prompt: Prompt, completion: str) -> tuple[str, bool]:
        if isinstance(prompt, str):
            return prompt + completion, False
        messages = [*prompt, {"role": "assistant", "content": completion}]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False), True
        return messages_to_text(messages), False

    def _rewards(self, prompts: list[Prompt], completions: list[str], context: dict[str, Any]) -> Tensor:
        """float32 rewards [N] on CPU, one per (prompt, completion)."""
        pairs = list(zip(prompts, completions, strict=True))
        if self.trained_here is not None:
            encoded = []
            for prompt, completion in pairs:
                prompt_ids, (completion_ids,) = self._trained_ids(prompt, [completion])
                encoded.append(prompt_ids + completion_ids)
            return self._logits_of_ids(encoded)[:, 0]
        return self._logits([self._text(p, c) for p, c in pairs])[:, 0]


class PairwiseJudge(_ClassifierJudge):
    """A classifier reading the prompt and both completions through `template`, with
    placeholders {prompt}, {completion_a}, {completion_b}. Its answer f(a, b) is
    sigmoid(logit) for one output, softmax(logits)[0] for two (label 0: "A is better").
    Both orders are asked and averaged so position bias cancels:
    P = (f(y0, y1) + 1 - f(y1, y0)) / 2, hence P(y0, y1) + P(y1, y0) = 1.
    Chat prompts are rendered as `role: content` lines (the template frames them)."""

    kind = "pairwise judge"
    allowed_labels = (1, 2)
    labels_help = (
        "a pairwise judge outputs the logit of P(A > B) (num_labels=1) or two classes, A then B (num_labels=2)"
    )

    def __init__(self, name_or_path: str, *args: Any, template: str = JudgeConfig.pairwise_template, **kwargs: Any):
        try:  # before the model loads: a typo in the recipe should not cost a download
            template.format(prompt="", completion_a="", completion_b="")
        except (KeyError, IndexError, ValueError) as e:
            raise JudgeError(
                f"{self.kind} {name_or_path}: the template may only use {{prompt}}, {{completion_a}} and "
                f"{{completion_b}}: {e!r}"
            ) from e
        self.template = template
        super().__init__(name_or_path, *args, **kwargs)
        if self.trained_here is not None:  # its own layout, from token pieces (`alignment.rewards.pair_inputs`)
            self.template = self.trained_here.get("pair_template", template)
            self.segments = template_segments(self.template, self.tokenizer)

    def _text(self, prompt: Prompt, a: str, b: str) -> str:
        prompt_text = prompt if isinstance(prompt, str) else messages_to_text(prompt)
        return self.template.format(prompt=prompt_text, completion_a=a, completion_b=b)

    def preferences(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> Tensor:
        """f(a, b) [N]: the model's P(a > b) in one order only, float32 on CPU."""
        if self.trained_here is not None:
            encoded = []
            for p, x, y in zip(prompts, a, b, strict=True):
                prompt_ids, (x_ids, y_ids) = self._trained_ids(p, [x, y])
                encoded.append(pair_ids(prompt_ids, x_ids, y_ids, self.segments))
            logits = self._logits_of_ids(encoded)
        else:
            texts = [(self._text(p, x, y), False) for p, x, y in zip(prompts, a, b, strict=True)]
            logits = self._logits(texts)
        return torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else logits.softmax(-1)[:, 0]

    def _probabilities(self, prompts: list[Prompt], completions: list[tuple[str, str]]) -> Tensor:
        y0 = [c[0] for c in completions]
        y1 = [c[1] for c in completions]
        f = self.preferences(prompts * 2, y0 + y1, y1 + y0)
        forward, backward = f.chunk(2)
        # 0.5 + d/2 with d antisymmetric in (y0, y1): swapping the pair gives 1 - P up to rounding,
        # and the clamp keeps that rounding from leaving [0, 1].
        return (0.5 + (forward - backward) / 2).clamp(0.0, 1.0)


class VPLJudge(RewardJudge):
    """A VPL reward model (`alignment.rewards.vpl`) for one user: z is the posterior mean
    given that user's labelled pairs (`user_context`, a JSON/JSONL file of pairwise rows),
    and the reward is r(x, y, z). Inputs are tokenized as in training."""

    def __init__(
        self,
        name_or_path: str,
        user_context: str,
        device: torch.device | str = "cpu",
        batch_size: int = 16,
        max_length: int = 1024,
        **_: Any,
    ):
        self.name = f"vpl judge {name_or_path} (user context {user_context})"
        if not os.path.isfile(os.path.join(name_or_path, VPL_CONFIG)):
            raise JudgeError(f"{self.name}: {name_or_path!r} holds no VPL model ({VPL_CONFIG} is missing)")
        self.device, self.batch_size, self.max_length = torch.device(device), batch_size, max_length
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        self.model = VPLRewardModel.from_pretrained(name_or_path).to(self.device).requires_grad_(False)
        chosen, rejected = self._context_pairs(user_context)
        with torch.no_grad():
            e_chosen, e_rejected = self._embed(chosen), self._embed(rejected)
            mask = torch.ones((1, len(chosen)), dtype=torch.bool, device=self.device)
            mean, _ = self.model.posterior(e_chosen[None], e_rejected[None], mask)
        self.z = mean[0]

    def _context_pairs(self, path: str) -> tuple[list[list[int]], list[list[int]]]:
        import datasets

        if not os.path.isfile(path):
            raise JudgeError(f"{self.name}: the user context file {path!r} does not exist")
        rows = datasets.load_dataset("json", data_files=path, split="train")
        if len(rows) == 0:
            raise JudgeError(f"{self.name}: the user context file {path!r} has no pairs")
        layout = detect_layout(rows.column_names, rows[0])
        chosen, rejected = [], []
        for i, row in enumerate(rows):
            example = adapt_row(row, layout, path, i)
            best, worst = max(range(2), key=lambda k: example.scores[k]), min(range(2), key=lambda k: example.scores[k])
            prompt_ids, ids = self._trained_ids(example.prompt, [example.completions[best], example.completions[worst]])
            chosen.append(prompt_ids + ids[0])
            rejected.append(prompt_ids + ids[1])
        return chosen, rejected

    _trained_ids = _ClassifierJudge._trained_ids

    @torch.no_grad()
    def _embed(self, encoded: list[list[int]]) -> Tensor:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        out = []
        for start in range(0, len(encoded), self.batch_size):
            chunk = encoded[start : start + self.batch_size]
            input_ids, attention_mask = right_padded(chunk, pad)
            out.append(self.model.embed(input_ids.to(self.device), attention_mask.to(self.device)))
        return torch.cat(out)

    def _rewards(self, prompts: list[Prompt], completions: list[str], context: dict[str, Any]) -> Tensor:
        encoded = []
        for prompt, completion in zip(prompts, completions, strict=True):
            prompt_ids, (ids,) = self._trained_ids(prompt, [completion])
            encoded.append(prompt_ids + ids)
        with torch.no_grad():
            return self.model.reward(self._embed(encoded), self.z).float().cpu()


def _model_kwargs(cfg: JudgeConfig, device: torch.device) -> dict[str, Any]:
    keys = ("dtype", "batch_size", "max_length", "trust_remote_code", "revision")
    return {"device": device, **{key: getattr(cfg, key) for key in keys}}


def _builtin(cfg: JudgeConfig, max_new_tokens: int | None) -> RewardFunctionJudge:
    if cfg.type == "format":
        return RewardFunctionJudge(FormatReward(cfg.pattern or ""), cfg.name or "format")
    if cfg.type == "exact_match":
        return RewardFunctionJudge(ExactMatch(cfg.column or "", cfg.pattern), cfg.name or f"exact_match_{cfg.column}")
    max_length = cfg.max_completion_length or max_new_tokens
    if max_length is None:
        raise JudgeError("overlong reward: give online.judge.max_completion_length (L_max)")
    try:
        function = SoftOverlongPunishment(max_length, cfg.soft_punish_cache or 0)
    except ValueError as e:
        raise JudgeError(str(e)) from None
    return RewardFunctionJudge(function, cfg.name or "overlong")


_BUILDERS: dict[str, Callable[[JudgeConfig, torch.device], Judge]] = {
    "callable": lambda cfg, device: CallableJudge(cfg.function),
    "reward_function": lambda cfg, device: RewardFunctionJudge(cfg.function, cfg.name),
    "reward_model": lambda cfg, device: RewardModelJudge(cfg.name_or_path, **_model_kwargs(cfg, device)),
    "pairwise": lambda cfg, device: PairwiseJudge(
        cfg.name_or_path, template=cfg.pairwise_template, **_model_kwargs(cfg, device)
    ),
    "vpl": lambda cfg, device: VPLJudge(cfg.name_or_path, cfg.user_context, **_model_kwargs(cfg, device)),
}


def build_judge(
    cfg: JudgeConfig | list[JudgeConfig],
    device: torch.device | str,
    aggregation: str = "sum_then_normalize",
    max_new_tokens: int | None = None,
) -> Judge:
    """The judge `cfg` describes, or a `RewardPanel` of a list of reward judges. `device` is
    the training process's, used when `cfg.device` is "auto"; dtype "auto" keeps the
    checkpoint's own. `max_new_tokens` is the overlong reward's default L_max."""
    if isinstance(cfg, list):
        members = []
        for member in cfg:  # each built unweighted: the panel weighs them
            judge = build_judge(dataclasses.replace(member, weight=1.0), device, max_new_tokens=max_new_tokens)
            assert isinstance(judge, RewardJudge)  # the schema lets only reward judges into a list
            members.append((member.name or _short_name(member, judge), judge, member.weight))
        return RewardPanel(members, aggregation)
    if cfg.type in BUILTIN_REWARDS:
        judge: Judge = _builtin(cfg, max_new_tokens)
    elif cfg.type not in _BUILDERS:
        raise JudgeError(f"unknown judge type {cfg.type!r}; choose one of {sorted(_BUILDERS) + list(BUILTIN_REWARDS)}")
    else:
        judge = _BUILDERS[cfg.type](cfg, torch.device(device if cfg.device == "auto" else cfg.device))
    if cfg.weight != 1.0:  # one weighted reward judge: its rewards scaled, as TRL's reward_weights
        judge = RewardPanel([(cfg.name or _short_name(cfg, judge), judge, cfg.weight)], aggregation)  # type: ignore[list-item]
    return judge


def _short_name(cfg: JudgeConfig, judge: Judge) -> str:
    """The name a reward judge's mean is logged under: the function's, or the model's directory."""
    if isinstance(judge, RewardFunctionJudge):
        return judge.short_name
    return os.path.basename(os.path.normpath(cfg.name_or_path or cfg.type))
