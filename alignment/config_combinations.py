"""Checks across sections of a recipe: the reference that the losses need (and what
`auto` resolves to), what online training needs, and what evaluation by generation needs. Run by `load_config` once every
section is built."""

from __future__ import annotations

from typing import TYPE_CHECKING

from alignment.config_schema import ConfigError

if TYPE_CHECKING:
    from alignment.config import DataConfig, LoraConfig, LossSpec, ReferenceConfig
    from alignment.online.config import EvaluationConfig, OnlineConfig


def resolve_reference(reference: ReferenceConfig, loss: list[LossSpec], lora: LoraConfig | None) -> None:
    """Turn `auto` into a concrete reference and reject combinations that cannot work."""
    from alignment.losses import loss_class

    needing = [s.name for s in loss if loss_class(s.name).needs_reference]
    if reference.type == "auto":
        reference.type = ("adapter" if lora is not None else "model") if needing else "none"
    if reference.type == "none" and needing:
        raise ConfigError(
            f"reference: 'none' but loss {', '.join(needing)} needs a reference; "
            "use reference: model, adapter (with lora) or precompute"
        )
    if reference.type == "precompute" and not needing:
        raise ConfigError(
            "reference: 'precompute' but no loss term needs a reference "
            f"({', '.join(s.name for s in loss)} are reference-free); use reference: none"
        )
    if reference.type == "adapter":
        if lora is None:
            raise ConfigError(
                "reference: 'adapter' means the policy with its LoRA adapters disabled; add a `lora:` section"
            )
        if reference.name_or_path is not None or reference.init_seed is not None:
            raise ConfigError(
                "reference: 'adapter' is the policy's own base weights; reference.name_or_path and "
                "reference.init_seed apply to 'model' and 'precompute' only"
            )


def check_online(online: OnlineConfig | None, loss: list[LossSpec], reference: ReferenceConfig) -> None:
    """Online losses need the `online:` section, and online training a live reference."""
    from alignment.losses import loss_class

    online_only = [s.name for s in loss if loss_class(s.name).online_only]
    if online is None:
        if online_only:
            raise ConfigError(
                f"loss {', '.join(online_only)} learns from completions sampled during training: add an `online:` "
                "section (sampler and judge), or use an offline loss"
            )
        return
    if reference.type == "precompute":
        raise ConfigError(
            "reference: 'precompute' cannot work online (new completions are sampled every step); "
            "use reference: model, or adapter with lora"
        )
    if reference.type == "none" and online.sampler != "policy":
        raise ConfigError(f"online.sampler: {online.sampler!r} samples from the reference, but reference is 'none'")


def check_evaluation(evaluation: EvaluationConfig | None, data: DataConfig, online: OnlineConfig | None) -> None:
    """Evaluation by generation needs held-out prompts of its own: a `test_size` split is
    made after the rows are checked, so its prompts could not be matched exactly."""
    if evaluation is None:
        return
    if online is not None and evaluation.judge is not None:
        raise ConfigError(
            "evaluation.judge: an online recipe already reports eval_win_rate_vs_initial, judged by online.judge; "
            "keep `evaluation.score` here (evaluation.judge is for offline recipes)"
        )
    if not data.test:
        raise ConfigError(
            "evaluation: generates on the held-out prompts of data.test, which is empty; "
            "add data.test sources (data.test_size splits are not used for it)"
        )
