"""The offline training run, top to bottom: config -> tokenizer -> data -> models -> train -> evaluate."""

from __future__ import annotations

import logging
import os
import sys

import datasets
import transformers
from transformers import set_seed

from alignment.config import Config, dump_config
from alignment.data import build_datasets
from alignment.losses import build_loss
from alignment.models import load_policy, load_reference, load_tokenizer
from alignment.trainers import PreferenceTrainer

logger = logging.getLogger("alignment")

CONFIG_FILENAME = "alignment_config.yaml"


def setup_logging(training_args) -> None:
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = training_args.get_process_log_level()
    logger.setLevel(level)  # and so every alignment.* module logger
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)


def train(config: Config) -> dict[str, float]:
    training_args = config.training_arguments()
    setup_logging(training_args)
    if training_args.process_index == 0:
        resolved = dump_config(config)
        print(f"resolved config:\n{resolved}", flush=True)
        os.makedirs(training_args.output_dir, exist_ok=True)
        with open(os.path.join(training_args.output_dir, CONFIG_FILENAME), "w") as f:
            f.write(resolved)
    set_seed(training_args.seed)

    tokenizer = load_tokenizer(config.model)
    loss_fn = build_loss(config.loss)
    # Ties are only usable by losses that learn from something other than the order.
    with training_args.main_process_first(desc="preprocessing the preference data"):
        data = build_datasets(config.data, tokenizer, require_order=True)  # logs its report

    model = load_policy(config.model)
    ref_model = None
    if config.reference.type == "model":
        ref_model = load_reference(config.model, config.reference)
    logger.info(
        "loss: %s; reference: %s",
        " + ".join(f"{s.weight} * {s.name}({s.params})" for s in config.loss),
        config.reference.type,
    )

    trainer = PreferenceTrainer(
        model=model,
        args=training_args,
        loss_fn=loss_fn,
        ref_model=ref_model,
        processing_class=tokenizer,
        train_dataset=data.train,
        eval_dataset=data.test,
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()

    metrics = dict(result.metrics)
    if data.test is not None:
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)  # writes <output_dir>/eval_results.json
        metrics.update(eval_metrics)
    return metrics
