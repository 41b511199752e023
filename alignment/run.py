"""The training run, top to bottom: config -> tokenizer -> data -> models -> train -> evaluate.

Offline runs learn from the preference data; a recipe with an `online:` section
learns from completions sampled and judged during training, on the data's prompts."""

from __future__ import annotations

import functools
import logging
import os
import sys

import datasets
import transformers
from transformers import set_seed

from alignment.config import Config, ConfigError, dump_config
from alignment.config.loaded import check_backend, check_loaded
from alignment.config.loading import CONFIG_FILENAME
from alignment.data import build_datasets
from alignment.data.prompts import build_prompt_datasets
from alignment.models import load_policy, load_tokenizer
from alignment.online.engines import build_engine
from alignment.online.evaluation import GenerationEvaluation, evaluation_prompts
from alignment.online.judges import build_judge
from alignment.online.sampler import eos_ids
from alignment.reference.loading import build_reference
from alignment.rewards.contexts import add_user_contexts
from alignment.rewards.heads import model_head
from alignment.tools.model_card import render_model_card
from alignment.trainers.checkpoints import resolve_resume
from alignment.trainers.faults import Preempted, PreemptionCallback
from alignment.trainers.memory import out_of_memory_reported, probe_enabled, probe_longest_batch
from alignment.trainers.nodes import agree_on_resume, check_shared_output_dir
from alignment.trainers.online import OnlineTrainer
from alignment.trainers.output_dir import (
    DiskSpaceForecast,
    check_free_space,
    checkpoint_parts,
    disk_full_reported,
    removed_on_early_failure,
    weights_bytes,
)
from alignment.trainers.preference import LossStepEnd, PreferenceTrainer
from alignment.trainers.reward import RewardModelTrainer

logger = logging.getLogger("alignment")


def setup_logging(training_args) -> None:
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = training_args.get_process_log_level()
    # Our own progress notes (data report, reference cache, resume) are worth showing on
    # the main process unless the recipe chose a log level; the libraries stay quieter.
    own_level = logging.INFO if training_args.log_level == "passive" and training_args.should_log else level
    logger.setLevel(own_level)  # and so every alignment.* module logger
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)


def train(config: Config) -> dict[str, float]:
    trainer_box: list = []  # the trainer once built: its generation engine is closed at the end, whatever happens
    try:
        return _train(config, trainer_box)
    finally:
        for trainer in trainer_box:
            close = getattr(trainer, "close_engine", None)  # a judge's trainer has no engine
            if close is not None:
                close()


def _train(config: Config, trainer_box: list) -> dict[str, float]:
    training_args = config.training_arguments()
    setup_logging(training_args)
    resolved = dump_config(config)
    if training_args.process_index == 0:
        print(f"resolved config:\n{resolved}", flush=True)
    set_seed(training_args.seed)
    check_backend(config)  # before anything is loaded
    # Checked before anything is loaded: a bad checkpoint path should fail in seconds.
    resume = agree_on_resume(
        resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir), training_args
    )

    main_process = training_args.process_index == 0
    trainer = None
    # The output directory is written only once everything has loaded, and any failure before step 1,
    # whatever raised it, removes it again (transformers' Trainer creates it when it is built).
    with removed_on_early_failure(
        training_args.output_dir, main_process, lambda: 0 if trainer is None else trainer.state.global_step
    ):
        # Before anything is written there: a node that cannot see output_dir would fail only at the first resume.
        not_shared = check_shared_output_dir(training_args)
        if not_shared is not None:
            raise ConfigError(not_shared)
        trainer, data = build_trainer(config, training_args)
        trainer_box.append(trainer)
        # A disk too small for one checkpoint fails now, not at the first save.
        policy = trainer.accelerator.unwrap_model(trainer.model)
        check_free_space(policy, training_args)
        trainer.add_callback(DiskSpaceForecast(lambda: checkpoint_parts(policy, training_args)))
        if main_process:
            os.makedirs(training_args.output_dir, exist_ok=True)
            with open(os.path.join(training_args.output_dir, CONFIG_FILENAME), "w") as f:
                f.write(resolved)
        result, preemption = _train_loop(config, training_args, trainer, resume)
    if preemption.preempted_at is not None:
        raise Preempted.at_step(
            preemption.signal_name, preemption.preempted_at, training_args.output_dir, preemption.exit_code
        )

    final_model = lambda: {"weights": weights_bytes(policy)}  # noqa: E731
    with disk_full_reported("the final model", training_args.output_dir, training_args, final_model):
        return _finish(trainer, training_args, data, result, config)


def build_trainer(config: Config, training_args):
    """Tokenizer, data, judge, model, reference and the trainer that holds them: the
    policy's trainer (offline or online), or a judge's when the loss trains one."""
    tokenizer = load_tokenizer(config.model)
    loss_fn = config.loss_fn
    data, users = build_data(config, training_args, tokenizer)
    common = dict(
        args=training_args,
        loss_fn=loss_fn,
        processing_class=tokenizer,
        train_dataset=data.train,
        eval_dataset=data.test,
        model_card=functools.partial(render_model_card, config),
    )
    if loss_fn.model_head != "policy":  # the recipe trains a judge: a reward, preference or VPL model
        head = model_head(loss_fn, tokenizer)
        logger.info("training a %s model; loss: %s", head.kind, loss_fn.name)
        return RewardModelTrainer(model=head.load(config, training_args), head=head, users=users, **common), data

    # A judge that cannot be imported or loaded fails before the policy is loaded.
    judge = (
        None
        if config.online is None
        else build_judge(
            config.online.judge,
            training_args.device,
            config.online.multi_objective_aggregation,
            config.online.max_new_tokens,
        )
    )
    if judge is not None:
        logger.info(
            "online: %s sampler, %d samples per prompt, judge: %s",
            config.online.sampler,
            config.online.num_samples,
            judge.name,
        )
    # The reference first: a soup the policy starts from must exist before the policy.
    reference = build_reference(config.model, config.reference, config.lora, config.quantization)
    model = load_policy(
        config.model,
        lora=config.lora,
        quantization=config.quantization,
        gradient_checkpointing=training_args.checkpointing_enabled,
        gradient_checkpointing_kwargs=training_args.checkpointing_kwargs,
        initial_weights=reference.weights() if config.model.init_from_reference else None,
    )
    check_loaded(config, model)
    logger.info(
        "loss: %s; reference: %s",
        " + ".join(f"{s.weight} * {s.name}({s.params})" for s in config.loss),
        config.reference.type,
    )
    common |= dict(model=model, reference=reference, reference_update=config.reference.update)
    if config.online is None:
        trainer = PreferenceTrainer(**common)
    else:
        engine = build_engine(config.online, model, training_args, generation_lengths(config))
        try:
            trainer = OnlineTrainer(judge=judge, online=config.online, engine=engine, **common)
        except BaseException:
            engine.close()  # an in-process vLLM left open would hold its memory and distributed state
            raise
    del reference  # the trainer holds the prepared strategy (and a precompute pass frees its source)
    if config.evaluation is not None:
        trainer.generation_eval = generation_evaluation(config, training_args, tokenizer, model)
    return trainer, data


def build_data(config: Config, training_args, tokenizer):
    """The training and evaluation data, and for VPL the test split's users: preference
    lists offline (a judge's too), prompts online.

    Per node: each node's first process tokenizes into that node's datasets cache
    (local=True), the others read it there; no node reads another's cache (trainers/nodes.py)."""
    loss_fn, users = config.loss_fn, None
    with training_args.main_process_first(desc="preprocessing the data"):
        if config.online is not None:
            return build_prompt_datasets(config.data, tokenizer), users
        policy = loss_fn.model_head == "policy"
        unpaired = policy and loss_fn.accepts_unpaired
        data = build_datasets(config.data, tokenizer, require_order=True, unpaired=unpaired)  # logs its report
        if loss_fn.model_head == "vpl":  # each list gets its user's context pairs
            n, seed = loss_fn.context_pairs, config.data.seed
            data.train, _ = add_user_contexts(data.train, n, seed, "train")
            if data.test is not None:
                data.test, users = add_user_contexts(data.test, n, seed + 1, "test")
    return data, users


def generation_lengths(config: Config) -> int:
    """The longest prompt + completion an engine must hold: the prompt limit and the
    longest of the online, online-evaluation and `evaluation:` completions."""
    online, evaluation = config.online, config.evaluation
    new = max(online.max_new_tokens, online.eval_max_new_tokens or 0, evaluation.max_new_tokens if evaluation else 0)
    prompt = config.data.max_prompt_length or config.data.max_length or 2048
    return prompt + new


def generation_evaluation(config: Config, training_args, tokenizer, model) -> GenerationEvaluation:
    """The `evaluation:` section's prompts, sampler settings, score function and judge."""
    with training_args.main_process_first(desc="preprocessing the evaluation prompts"):
        prompts = evaluation_prompts(config.data, tokenizer)
    generation_config = getattr(model, "generation_config", None)
    evaluation = GenerationEvaluation(
        config.evaluation,
        prompts,
        tokenizer,
        eos_ids(tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)),
        batch_size=training_args.per_device_eval_batch_size,
        device=training_args.device,
        seed=training_args.seed,
        rank=training_args.process_index,
        world=training_args.world_size,
        writes=training_args.should_save,
    )
    logger.info("evaluation: %d held-out prompts, %s", len(evaluation.prompts), config.evaluation.score or "judge only")
    return evaluation


def _train_loop(config: Config, training_args, trainer, resume: str | None):
    """The reference precompute, the memory probe and `Trainer.train`, with SIGTERM and
    Ctrl-C turned into a checkpoint and a stop."""
    preemption = PreemptionCallback(trainer.accelerator)
    trainer.add_callback(preemption)
    try:
        LossStepEnd(trainer).resume(resume)  # a stateful loss continues where its checkpoint left it
        trainer.prepare_reference()  # the precompute pass, for reference: precompute
        trainer.start_generation_eval(resume)
        if probe_enabled(training_args.memory_probe, trainer):
            probing = "in the memory probe (one forward and backward of the longest lists, before step 1)"
            with out_of_memory_reported(config, training_args, lambda: probing):
                probe_longest_batch(trainer)
        with out_of_memory_reported(config, training_args, lambda: f"at step {trainer.state.global_step + 1}"):
            result = trainer.train(resume_from_checkpoint=resume)
    finally:
        preemption.restore()
    return result, preemption


def _finish(trainer, training_args, data, result, config: Config) -> dict[str, float]:
    """The final model, metrics, evaluation, state and model card (and the Hub upload)."""
    # An internal save: with push_to_hub, transformers would otherwise upload here,
    # before the evaluation and the model card; the push below uploads them together.
    trainer.save_model(training_args.output_dir, _internal_call=True)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)

    metrics = dict(result.metrics)
    if data.test is not None:
        evaluating = (
            f"in the final evaluation (training.per_device_eval_batch_size {training_args.per_device_eval_batch_size})"
        )
        with out_of_memory_reported(config, training_args, lambda: evaluating):
            eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)  # writes <output_dir>/eval_results.json
        metrics.update(eval_metrics)
    trainer.save_state()  # after the final evaluation, so the log history (and `alignment plot`) has it
    trainer.final_metrics = metrics
    if training_args.push_to_hub:
        # Saves the model, writes the card and uploads the output directory, as in transformers.
        trainer.push_to_hub(commit_message="End of training")
    else:
        trainer.create_model_card()
    return metrics
