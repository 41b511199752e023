"""Load the policy, the reference and the tokenizer described by a recipe."""

from __future__ import annotations

import logging

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from alignment.config import ModelConfig, ReferenceConfig

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The tokenizer of `model.tokenizer` (default: the model's). A tokenizer without a
    pad token pads with EOS, as is usual for causal LMs; pad positions are masked anyway."""
    if cfg.trust_remote_code:
        logger.warning(
            "model.trust_remote_code is true: code shipped with %s will run", cfg.tokenizer or cfg.name_or_path
        )
    tokenizer = AutoTokenizer.from_pretrained(
        cfg.tokenizer or cfg.name_or_path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
    )
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer {cfg.tokenizer or cfg.name_or_path!r} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("tokenizer has no pad token; padding with EOS (%r)", tokenizer.eos_token)
    return tokenizer


def _build_or_load(
    name_or_path: str | None, config_path: str | None, init_seed: int, cfg: ModelConfig
) -> PreTrainedModel:
    kwargs = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation is not None:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if config_path is not None:
        config = AutoConfig.from_pretrained(config_path, **kwargs)
        dtype = _DTYPES.get(cfg.dtype, torch.float32)
        # A private RNG stream: the same seed always gives the same weights, and building
        # a model does not shift the training seed.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, **kwargs)
        return model
    return AutoModelForCausalLM.from_pretrained(
        name_or_path, revision=cfg.revision, dtype=_DTYPES.get(cfg.dtype, "auto"), **kwargs
    )


def load_policy(cfg: ModelConfig) -> PreTrainedModel:
    if cfg.trust_remote_code:
        logger.warning("model.trust_remote_code is true: code shipped with %s will run", cfg.name_or_path)
    model = _build_or_load(cfg.name_or_path, cfg.config, cfg.init_seed, cfg)
    model.config.use_cache = False  # the KV cache is useless in training and costs memory
    return model


def load_reference(model_cfg: ModelConfig, ref_cfg: ReferenceConfig) -> PreTrainedModel:
    """A separate frozen copy: the policy's own checkpoint (or its config and seed), or
    `reference.name_or_path`."""
    if ref_cfg.name_or_path is not None:
        model = _build_or_load(ref_cfg.name_or_path, None, 0, model_cfg)
    else:
        seed = model_cfg.init_seed if ref_cfg.init_seed is None else ref_cfg.init_seed
        model = _build_or_load(model_cfg.name_or_path, model_cfg.config, seed, model_cfg)
    model.requires_grad_(False)
    model.eval()
    return model
