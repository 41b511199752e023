"""The Python API as a notebook: each `# %%` cell pastes into Jupyter as it is (VS Code and
PyCharm run them as cells), or run it whole with `python examples/notebook.py` from the
repository root. Everything trains the tiny assets on CPU, in seconds.

tests/test_python_api.py runs this file top to bottom and checks what it prints."""
# ruff: noqa: E402  (each cell imports what it uses, as a notebook's cells do)

# %% 1. A recipe, trained in this process, with overrides per section
# `loss={...}` is the command line's `--loss.name=ipo --loss.tau=0.5`: the recipe's other
# loss keys that IPO does not take (DPO's beta) are dropped, with a warning.
import alignment

metrics = alignment.train(
    "recipes/tiny/dpo.yaml",
    loss={"name": "ipo", "tau": 0.5},
    training={"max_steps": 10, "logging_steps": 5, "output_dir": "outputs/notebook/ipo"},
)
print(f"trained recipe: eval_loss={metrics['eval_loss']!r} eval_reward_accuracy={metrics['eval_reward_accuracy']!r}")

# %% 2. A mistake is an exception, not an exit: the notebook keeps its state
# IPO's strength is `tau`, not `beta`; the error names the key and lists what IPO takes.
try:
    alignment.train("recipes/tiny/dpo.yaml", loss={"name": "ipo", "beta": 0.5})
except alignment.ConfigError as err:
    print(f"config error: {err}")

# %% 3. Look at a recipe before training it
config = alignment.load_config("recipes/tiny/dpo.yaml", loss={"beta": 0.2})
print(
    f"loaded recipe: loss={config.loss_fn.name} beta={config.loss[0].params['beta']} reference={config.reference.type}"
)

# %% 4. The same run from objects, as with TRL's DPOTrainer
# The recipe's settings as objects: the same rows, model, loss and training arguments give
# the same metrics as cell 1, to the last bit.
import json

import torch
from datasets import Dataset
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer


def read_rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


tokenizer = AutoTokenizer.from_pretrained("recipes/tiny/tokenizer")
torch.manual_seed(0)  # the tiny model is random weights, seeded
model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained("recipes/tiny/model"))
trainer = alignment.PreferenceTrainer(
    model=model,  # no ref_model: a frozen copy of the model is the reference, as in TRL
    args=alignment.AlignmentTrainingArguments(
        output_dir="outputs/notebook/objects",
        max_steps=10,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=100,
        learning_rate=3e-3,
        lr_scheduler_type="cosine",
        warmup_steps=10,
        weight_decay=0.0,
        seed=0,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
    ),
    loss_fn=alignment.get_loss("ipo", tau=0.5),
    train_dataset=Dataset.from_list(read_rows("recipes/tiny/data/pairs_train.jsonl")),  # prompt/chosen/rejected
    eval_dataset=Dataset.from_list(read_rows("recipes/tiny/data/pairs_test.jsonl")),
    processing_class=tokenizer,
    data_config={"max_length": 32, "max_prompt_length": 16},
)
trainer.train()
evaluation = trainer.evaluate()
print(
    f"trained objects: eval_loss={evaluation['eval_loss']!r} "
    f"eval_reward_accuracy={evaluation['eval_reward_accuracy']!r}"
)

# %% 5. Online from objects: prompts, and a reward function as the judge (TRL's GRPOTrainer)
from alignment.tasks.arithmetic import distance, true_sum


def closeness(prompts, completions, **kwargs):
    """6 - |answer - sum| for each completion, -1 for no number (alignment/tasks/arithmetic.py)."""
    return [max(-1.0, 6 - distance(c, true_sum(p))) for p, c in zip(prompts, completions, strict=True)]


torch.manual_seed(0)
policy = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained("recipes/tiny/model"))
prompts = [{"prompt": row["prompt"]} for row in read_rows("recipes/tiny/data/pairs_train.jsonl")]
online = alignment.OnlineTrainer(
    model=policy,
    args=alignment.AlignmentTrainingArguments(
        output_dir="outputs/notebook/online",
        max_steps=6,
        per_device_train_batch_size=32,
        learning_rate=3e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
    ),
    loss_fn=alignment.get_loss("rloo", beta=0.05),
    judge=closeness,
    online={"num_samples": 4, "max_new_tokens": 3},
    train_dataset=Dataset.from_list(prompts),
    processing_class=tokenizer,
    data_config={"max_prompt_length": 16},
)
online.train()
rewards = [entry["online/reward"] for entry in online.state.log_history if "online/reward" in entry]
print(f"trained online: first_reward={rewards[0]:.6f} last_reward={rewards[-1]:.6f}")
