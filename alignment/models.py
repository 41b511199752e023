"""Load the policy, the reference and the tokenizer described by a recipe: full weights,
bitsandbytes 4/8-bit weights, and PEFT LoRA adapters on top."""

from __future__ import annotations

import contextlib
import logging
import tempfile

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from alignment.gguf import plain_from_gguf
from alignment.schema import ConfigError, LoraConfig, ModelConfig, QuantizationConfig, ReferenceConfig

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The tokenizer of `model.tokenizer` (default: the model's). A tokenizer without a
    pad token pads with EOS, as is usual for causal LMs; pad positions are masked anyway."""
    if cfg.trust_remote_code:
        logger.warning(
            "model.trust_remote_code is true: code shipped with %s will run", cfg.tokenizer or cfg.name_or_path
        )
    gguf = {"gguf_file": cfg.gguf_file} if cfg.gguf_file is not None and cfg.tokenizer is None else {}
    tokenizer = AutoTokenizer.from_pretrained(
        cfg.tokenizer or cfg.name_or_path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, **gguf
    )
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer {cfg.tokenizer or cfg.name_or_path!r} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("tokenizer has no pad token; padding with EOS (%r)", tokenizer.eos_token)
    return tokenizer


def bitsandbytes_config(cfg: QuantizationConfig):
    from transformers import BitsAndBytesConfig

    if cfg.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.quant_type,
        bnb_4bit_compute_dtype=DTYPES[cfg.compute_dtype],
        bnb_4bit_use_double_quant=cfg.double_quant,
    )


@contextlib.contextmanager
def _without_zero3_init():
    """Build outside DeepSpeed's `zero.Init`, which initialises weights in its own order:
    a seeded model must have the same weights under every backend. DeepSpeed shards it
    when the engine starts. (Only for models built from a config; checkpoints still
    load straight into shards.)"""
    from transformers.integrations import deepspeed as hf_deepspeed

    weak_ref = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    ds_config = weak_ref() if weak_ref is not None else None
    if ds_config is None:
        yield
        return
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(ds_config)


def _build_from_config(
    config_path: str, init_seed: int, cfg: ModelConfig, kwargs: dict, auto_class=AutoModelForCausalLM, head=None
) -> PreTrainedModel:
    config = AutoConfig.from_pretrained(config_path, **kwargs)
    for key, value in (head or {}).items():  # e.g. num_labels for a reward model's head
        setattr(config, key, value)
    # A private RNG stream: the same seed always gives the same weights, and building
    # a model does not shift the training seed.
    with torch.random.fork_rng(devices=[]), _without_zero3_init():
        torch.manual_seed(init_seed)
        return auto_class.from_config(config, dtype=DTYPES.get(cfg.dtype, torch.float32), **kwargs)


def _build_or_load(
    name_or_path: str | None,
    config_path: str | None,
    init_seed: int,
    cfg: ModelConfig,
    quantization: QuantizationConfig | None = None,
    gguf_file: str | None = None,
    auto_class=AutoModelForCausalLM,
    head: dict | None = None,
) -> PreTrainedModel:
    """`auto_class` is the transformers class to build (a causal LM; for judges a
    sequence classifier or the bare backbone) and `head` config values it needs
    (`num_labels`): a causal-LM checkpoint then gives the backbone, and the new head
    starts from transformers' initialisation."""
    kwargs = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation is not None:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if config_path is not None and quantization is None:
        return _build_from_config(config_path, init_seed, cfg, kwargs, auto_class, head)
    if gguf_file is not None:
        model = plain_from_gguf(name_or_path, gguf_file, DTYPES.get(cfg.dtype, torch.float32), cfg.revision, **kwargs)
        if quantization is None and auto_class is AutoModelForCausalLM:
            return model.train()
        # bitsandbytes quantizes while loading (and another head class loads from a checkpoint),
        # so the plain model goes through a checkpoint once.
        with tempfile.TemporaryDirectory(prefix="alignment-gguf-") as tmp:
            model.save_pretrained(tmp)
            del model
            return _build_or_load(tmp, None, init_seed, cfg, quantization, auto_class=auto_class, head=head).train()
    load_kwargs = {"revision": cfg.revision, "dtype": DTYPES.get(cfg.dtype, "auto"), **kwargs}
    if quantization is not None:
        from accelerate import PartialState

        load_kwargs["quantization_config"] = bitsandbytes_config(quantization)
        # Quantized weights are placed at load time: each process on its own device.
        load_kwargs["device_map"] = {"": str(PartialState().device)}
        if cfg.dtype == "auto":
            load_kwargs["dtype"] = DTYPES[quantization.compute_dtype]
    if config_path is not None:
        # bitsandbytes quantizes while loading a checkpoint, so a model built from a config
        # is written out once and loaded back through the same path as a real checkpoint.
        with tempfile.TemporaryDirectory(prefix="alignment-built-") as tmp:
            _build_from_config(config_path, init_seed, cfg, kwargs, auto_class, head).save_pretrained(tmp)
            return auto_class.from_pretrained(tmp, **load_kwargs)
    if not cfg.allow_unsafe_weights:
        # Pickle-based weights (.bin, .pt) can run code when loaded: safetensors only, unless the recipe allows them.
        load_kwargs["use_safetensors"] = True
    try:
        return auto_class.from_pretrained(name_or_path, **load_kwargs, **(head or {}))
    except OSError as err:
        if cfg.allow_unsafe_weights or "safetensors" not in str(err):
            raise
        raise ConfigError(
            f"{name_or_path!r} has no safetensors weights. Only safetensors are loaded: pickle-based weights can "
            "run code when loaded. Convert the checkpoint, or set model.allow_unsafe_weights: true if you trust it"
        ) from None


def peft_lora_config(cfg: LoraConfig, task_type: str = "CAUSAL_LM"):
    import peft

    return peft.LoraConfig(
        task_type=task_type,
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        modules_to_save=cfg.modules_to_save,
        bias=cfg.bias,
        use_rslora=cfg.use_rslora,
        use_dora=cfg.use_dora,
    )


def add_lora(
    model: PreTrainedModel,
    lora: LoraConfig,
    quantized: bool,
    gradient_checkpointing: bool = False,
    gradient_checkpointing_kwargs: dict | None = None,
    task_type: str = "CAUSAL_LM",
):
    """Wrap `model` in PEFT LoRA adapters; only the adapters (and `modules_to_save`) train.
    `task_type` "SEQ_CLS" (a reward model) also trains the classification head."""
    import peft

    if quantized:
        # Casts the non-quantized parameters (norms) to fp32 and, with gradient
        # checkpointing, makes the frozen embeddings' output require grad.
        model = peft.prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs=gradient_checkpointing_kwargs,
        )
    elif gradient_checkpointing:
        # Checkpointed blocks only backpropagate when their input requires grad, and the
        # frozen embeddings' output does not.
        model.enable_input_require_grads()
    model = peft.get_peft_model(model, peft_lora_config(lora, task_type))
    trainable, total = model.get_nb_trainable_parameters()
    logger.info("LoRA: %d of %d parameters train (%.2f%%)", trainable, total, 100 * trainable / max(total, 1))
    return model


def load_policy(
    cfg: ModelConfig,
    lora: LoraConfig | None = None,
    quantization: QuantizationConfig | None = None,
    gradient_checkpointing: bool = False,
    gradient_checkpointing_kwargs: dict | None = None,
    initial_weights: dict[str, torch.Tensor] | None = None,
) -> PreTrainedModel:
    """The policy; `initial_weights` (a state dict of the same architecture, e.g. the
    reference soup for `model.init_from_reference`) replace its weights before LoRA."""
    if cfg.trust_remote_code:
        logger.warning("model.trust_remote_code is true: code shipped with %s will run", cfg.name_or_path)
    model = _build_or_load(cfg.name_or_path, cfg.config, cfg.init_seed, cfg, quantization, cfg.gguf_file)
    if initial_weights is not None:
        model.load_state_dict(initial_weights)
    model.config.use_cache = False  # the KV cache is useless in training and costs memory
    if lora is not None:
        model = add_lora(model, lora, quantization is not None, gradient_checkpointing, gradient_checkpointing_kwargs)
    return model


def load_reward_model(
    cfg: ModelConfig,
    pad_token_id: int,
    lora: LoraConfig | None = None,
    quantization: QuantizationConfig | None = None,
    gradient_checkpointing: bool = False,
    gradient_checkpointing_kwargs: dict | None = None,
) -> PreTrainedModel:
    """A scalar reward model: `AutoModelForSequenceClassification` with one output, the
    reward read at the last token that is not `pad_token_id`. From a causal-LM
    checkpoint (or GGUF file, or config) it is that LM's backbone with a new linear head
    on its final hidden state (a value head); from a reward-model checkpoint it continues."""
    from transformers import AutoModelForSequenceClassification

    if cfg.trust_remote_code:
        logger.warning("model.trust_remote_code is true: code shipped with %s will run", cfg.name_or_path)
    head = {"num_labels": 1, "pad_token_id": pad_token_id}
    model = _build_or_load(
        cfg.name_or_path,
        cfg.config,
        cfg.init_seed,
        cfg,
        quantization,
        cfg.gguf_file,
        auto_class=AutoModelForSequenceClassification,
        head=head,
    )
    # The head reads the last non-pad token: it must agree with the tokenizer's padding.
    model.config.pad_token_id = pad_token_id
    model.config.get_text_config().pad_token_id = pad_token_id
    model.config.use_cache = False
    if lora is not None:
        model = add_lora(
            model, lora, quantization is not None, gradient_checkpointing, gradient_checkpointing_kwargs, "SEQ_CLS"
        )
    return model


def load_backbone(cfg: ModelConfig) -> PreTrainedModel:
    """The transformer without any head (`AutoModel`): a causal-LM checkpoint's body, for
    models that put their own heads on its hidden states (VPL)."""
    from transformers import AutoModel

    model = _build_or_load(cfg.name_or_path, cfg.config, cfg.init_seed, cfg, None, cfg.gguf_file, auto_class=AutoModel)
    model.config.use_cache = False
    return model


def load_reference_weights(
    model_cfg: ModelConfig,
    name_or_path: str | None,
    quantization: QuantizationConfig | None = None,
    ref_cfg: ReferenceConfig | None = None,
) -> PreTrainedModel:
    """A frozen model for the reference: the checkpoint `name_or_path`, else
    `ref_cfg.name_or_path`, else the policy's own checkpoint (or its config and seed).
    With QLoRA the copy is quantized like the policy's base."""
    name_or_path = name_or_path or (ref_cfg.name_or_path if ref_cfg is not None else None)
    if name_or_path is not None:
        model = _build_or_load(name_or_path, None, 0, model_cfg, quantization)
    else:
        seed = model_cfg.init_seed if ref_cfg is None or ref_cfg.init_seed is None else ref_cfg.init_seed
        model = _build_or_load(
            model_cfg.name_or_path, model_cfg.config, seed, model_cfg, quantization, model_cfg.gguf_file
        )
    model.requires_grad_(False)
    model.eval()
    return model
