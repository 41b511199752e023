"""The real recipes (recipes/qwen2.5-0.5b, recipes/llama-3.1-8b-qlora), their accelerate
configs and launchers, checked without a GPU or the network.

Each recipe is loaded as written, with only its Hub dataset names swapped for the local
fixtures under tests/fixtures/hub (same repo layout, splits, columns and nesting as
HuggingFaceH4/ultrafeedback_binarized and openbmb/UltraFeedback; see
tests/fixtures/make_hub_fixtures.py), and its data section goes through the real
pipeline with the tiny character-level tokenizer. The assertions are on values: rows,
list sizes, scores in order, the exact prompt and completion token ids, truncation counts.

Ties: the real data holds rows with no preference order (a pair with score_chosen ==
score_rejected; a list whose four overall_scores are equal). The recipes set
`data.bad_rows: skip`, so such a row is dropped and counted under `all_tied` in the data
report; with `bad_rows: error` the same row stops the run, naming its index and reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from accelerate.commands.config.config_args import load_config_from_file

from alignment.config import load_config
from alignment.data import BadRowError, build_datasets
from tests.helpers import ASSISTANT, EOS, ROOT, USER, char_ids

HUB = ROOT / "tests" / "fixtures" / "hub"
BINARIZED = HUB / "HuggingFaceH4" / "ultrafeedback_binarized"
ULTRAFEEDBACK = HUB / "openbmb" / "UltraFeedback"
LOCAL_COPIES = {"HuggingFaceH4/ultrafeedback_binarized": BINARIZED, "openbmb/UltraFeedback": ULTRAFEEDBACK}

QWEN_PAIRWISE = ["dpo", "ipo", "rdpo", "rpo"]
PAIRWISE_RECIPES = [f"recipes/qwen2.5-0.5b/{name}.yaml" for name in QWEN_PAIRWISE] + [
    "recipes/llama-3.1-8b-qlora/dpo.yaml"
]
LIPO_RECIPE = "recipes/qwen2.5-0.5b/lipo.yaml"
ALL_RECIPES = PAIRWISE_RECIPES + [LIPO_RECIPE]
ACCELERATE_CONFIGS = ROOT / "recipes" / "accelerate_configs"

TIED_ROW = 11  # the fixtures' row with no preference order (train_prefs and UltraFeedback)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Run from the repository root (recipes use relative paths) with a fresh datasets cache."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def raw_recipe(path: str) -> dict:
    return yaml.safe_load((ROOT / path).read_text())


def local_data_overrides(path: str) -> list[str]:
    """`--data.<part>.<i>.path=<fixture dir>` for every Hub source of the recipe; splits,
    layouts and everything else stay as the recipe has them."""
    overrides = []
    for part in ("train", "test"):
        for i, source in enumerate(raw_recipe(path)["data"].get(part) or []):
            overrides.append(f"--data.{part}.{i}.path={LOCAL_COPIES[source['path']]}")
    return overrides


def fixture_rows(directory: Path, split: str) -> list[dict]:
    """The fixture's rows as written, read with pyarrow (not through the code under test)."""
    return pq.read_table(directory / "data" / f"{split}-00000-of-00001.parquet").to_pylist()


def chat_prompt_ids(user: str) -> list[int]:
    """The tiny chat template: <|user|>content<|end|><|assistant|>, one token per character."""
    return [USER, *char_ids(user), EOS, ASSISTANT]


def by_prompt(dataset) -> dict[tuple[int, ...], dict]:
    rows = {tuple(row["prompt_input_ids"]): row for row in dataset}
    assert len(rows) == len(dataset), "every prompt appears once"
    return rows


# ----------------------------------------------------------------------------- pairwise data


@pytest.mark.parametrize("recipe", PAIRWISE_RECIPES)
def test_binarized_ultrafeedback_through_the_recipe(recipe, tok):
    cfg = load_config(recipe, local_data_overrides(recipe))
    assert [(s.split, s.layout) for s in cfg.data.train] == [("train_prefs", "auto")]
    assert [(s.split, s.layout) for s in cfg.data.test] == [("test_prefs", "auto")]
    assert cfg.data.bad_rows == "skip"
    data = build_datasets(cfg.data, tok, require_order=True)

    train_rows, test_rows = fixture_rows(BINARIZED, "train_prefs"), fixture_rows(BINARIZED, "test_prefs")
    assert len(train_rows) == len(test_rows) == 12
    tied = train_rows[TIED_ROW]
    assert tied["score_chosen"] == tied["score_rejected"]

    # Rows and list sizes: the tie is dropped from train_prefs and counted; test_prefs is whole.
    assert data.report.rows == {"train": 11, "test": 12}
    assert data.report.k_distribution == {"train": {2: 11}, "test": {2: 12}}
    train_report, test_report = data.report.sources
    assert train_report.source == f"{BINARIZED}[train_prefs]"
    assert (train_report.layout, train_report.rows_loaded, train_report.rows_used) == ("pairwise", 12, 11)
    assert train_report.skipped == {"all_tied": 1}
    assert (test_report.rows_loaded, test_report.rows_used, test_report.skipped) == (12, 12, {})
    assert data.report.skipped == {"all_tied": 1}

    # Values: the prompt is the user turn alone (no system turn added), the completions are
    # the assistant turns, chosen first, and the scores are score_chosen, score_rejected.
    max_length = cfg.data.max_length
    truncated = dropped = 0
    for split, rows, dataset in (("train", train_rows, data.train), ("test", test_rows, data.test)):
        got = by_prompt(dataset)
        kept = [row for i, row in enumerate(rows) if not (split == "train" and i == TIED_ROW)]
        assert set(got) == {tuple(chat_prompt_ids(row["prompt"])) for row in kept}
        for row in kept:
            assert row["chosen"][0] == row["rejected"][0] == {"content": row["prompt"], "role": "user"}
            prompt = chat_prompt_ids(row["prompt"])
            out = got[tuple(prompt)]
            assert tok.decode(out["prompt_input_ids"], skip_special_tokens=True) == row["prompt"]
            assert out["scores"] == [row["score_chosen"], row["score_rejected"]]
            assert out["scores"][0] > out["scores"][1]
            room = max_length - len(prompt)
            for completion, messages in zip(out["completion_input_ids"], (row["chosen"], row["rejected"]), strict=True):
                full = [*char_ids(messages[1]["content"]), EOS]
                assert completion == full[:room]
                truncated += len(full) > room
                dropped += max(0, len(full) - room)
        assert tuple(chat_prompt_ids(tied["prompt"])) not in got
    # train_prefs row 0's chosen answer is longer than 1024 tokens: cut (and counted) by the
    # Qwen recipes, whole under the QLoRA recipe's max_length of 2048.
    assert (data.report.completions_truncated, data.report.tokens_dropped) == (truncated, dropped)
    assert truncated == (1 if max_length == 1024 else 0)
    assert data.report.prompts_truncated == 0


def test_tied_pair_stops_the_run_under_bad_rows_error(tok):
    recipe = PAIRWISE_RECIPES[0]
    cfg = load_config(recipe, local_data_overrides(recipe) + ["--data.bad_rows=error"])
    with pytest.raises(BadRowError) as info:
        build_datasets(cfg.data, tok, require_order=True)
    err = info.value
    assert (err.index, err.reason, err.source) == (TIED_ROW, "all_tied", f"{BINARIZED}[train_prefs]")


# ----------------------------------------------------------------------------- listwise data


def test_openbmb_ultrafeedback_through_the_lipo_recipe(tok):
    cfg = load_config(LIPO_RECIPE, local_data_overrides(LIPO_RECIPE))
    assert [(s.split, s.layout) for s in cfg.data.train] == [("train", "ultrafeedback")]
    assert (cfg.data.test, cfg.data.test_size, cfg.data.bad_rows) == ([], 0.02, "skip")
    data = build_datasets(cfg.data, tok, require_order=True)

    rows = fixture_rows(ULTRAFEEDBACK, "train")
    assert len(rows) == 12 and all(len(row["completions"]) == 4 for row in rows)
    assert len({c["overall_score"] for c in rows[TIED_ROW]["completions"]}) == 1

    # 12 rows, the all-tied one dropped and counted, then 2% (rounded up: 1 row) held out.
    (source,) = data.report.sources
    assert (source.layout, source.rows_loaded, source.rows_used, source.skipped) == (
        "ultrafeedback",
        12,
        11,
        {"all_tied": 1},
    )
    assert data.report.rows == {"train": 10, "test": 1}
    assert data.report.k_distribution == {"train": {4: 10}, "test": {4: 1}}

    # Values: instruction and responses are plain strings (tokenized as text: no chat
    # template, EOS after each response); the scores are the overall_scores in the
    # dataset's completion order.
    got = {**by_prompt(data.train), **by_prompt(data.test)}
    kept = [row for i, row in enumerate(rows) if i != TIED_ROW]
    assert set(got) == {tuple(char_ids(row["instruction"])) for row in kept}
    truncated = 0
    for row in kept:
        out = got[tuple(char_ids(row["instruction"]))]
        assert tok.decode(out["prompt_input_ids"]) == row["instruction"]
        assert out["scores"] == [c["overall_score"] for c in row["completions"]]
        room = cfg.data.max_length - len(row["instruction"])
        for completion, record in zip(out["completion_input_ids"], row["completions"], strict=True):
            full = [*char_ids(record["response"]), EOS]
            assert completion == full[:room]
            truncated += len(full) > room
    assert data.report.completions_truncated == truncated == 1  # the long Fibonacci answer


# ----------------------------------------------------------------------------- static facts


@pytest.mark.parametrize("name", QWEN_PAIRWISE + ["lipo"])
def test_qwen_recipe_facts(name):
    cfg = load_config(f"recipes/qwen2.5-0.5b/{name}.yaml")
    assert cfg.model.name_or_path == "Qwen/Qwen2.5-0.5B-Instruct"
    assert (cfg.model.dtype, cfg.model.attn_implementation) == ("bfloat16", "sdpa")
    assert cfg.lora is None and cfg.quantization is None  # a full fine-tune
    assert cfg.reference.type == "model"
    assert [spec.name for spec in cfg.loss] == [name]
    assert (cfg.data.max_length, cfg.data.max_prompt_length) == (1024, 512)
    t = cfg.training
    assert t["output_dir"] == f"outputs/qwen2.5-0.5b-{name}"
    assert 8 * t["per_device_train_batch_size"] * t["gradient_accumulation_steps"] == 64  # on 8 GPUs
    assert (t["learning_rate"], t["lr_scheduler_type"], t["num_train_epochs"]) == (5e-7, "cosine", 1)
    hub = [source.path for source in cfg.data.train + cfg.data.test]
    if name == "lipo":
        assert hub == ["openbmb/UltraFeedback"] and cfg.loss[0].params == {"beta": 0.05}
    else:
        assert hub == ["HuggingFaceH4/ultrafeedback_binarized"] * 2


def test_qlora_recipe_facts():
    cfg = load_config("recipes/llama-3.1-8b-qlora/dpo.yaml")
    assert cfg.model.name_or_path == "meta-llama/Llama-3.1-8B-Instruct"
    q = cfg.quantization
    assert (q.bits, q.quant_type, q.compute_dtype, q.double_quant) == (4, "nf4", "bfloat16", True)
    lora = cfg.lora
    assert (lora.r, lora.alpha, lora.dropout, lora.target_modules) == (16, 32.0, 0.05, "all-linear")
    assert cfg.reference.type == "adapter"  # no second copy of the 8B weights
    assert (cfg.data.max_length, cfg.data.max_prompt_length) == (2048, 1024)
    t = cfg.training
    assert (t["per_device_train_batch_size"], t["gradient_accumulation_steps"]) == (1, 16)
    assert t["gradient_checkpointing"] is True and t["bf16"] is True


@pytest.mark.parametrize("recipe", ALL_RECIPES)
def test_recipe_training_arguments_construct(recipe):
    # bf16 needs a GPU that supports it, or CPU autocast (use_cpu) on a machine without one.
    gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    cfg = load_config(recipe, [] if gpu_bf16 else ["--training.use_cpu=true"])
    args = cfg.training_arguments()
    assert args.bf16 is True
    assert args.gradient_checkpointing is True and args.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert args.get_warmup_steps(1000) == 100  # warmup_steps: 0.1 is a ratio
    assert (args.eval_strategy.value, args.save_strategy.value) == ("steps", "steps")
    assert args.save_total_limit >= 1 and args.logging_steps == 10 and args.report_to == []
    assert args.remove_unused_columns is False


@pytest.mark.parametrize("recipe", ALL_RECIPES)
def test_recipe_header_states_launch_gpus_and_memory(recipe):
    header = "\n".join(line for line in (ROOT / recipe).read_text().splitlines() if line.startswith("#"))
    assert "accelerate launch" in header and f"--config {recipe}" in header
    for config_file in re.findall(r"--config_file (\S+)", header):
        assert (ROOT / config_file).is_file(), config_file
    assert re.search(r"\bGPU", header) and re.search(r"\d+ GB", header) and "memory" in header.lower()


# ----------------------------------------------------------------------------- launch files


def test_accelerate_configs():
    configs = {path.stem: load_config_from_file(str(path)) for path in ACCELERATE_CONFIGS.glob("*.yaml")}
    assert set(configs) == {"ddp", "zero2", "zero3", "zero3_offload", "fsdp", "multi_node"}
    for name, config in configs.items():
        assert config.mixed_precision == "bf16", name
    assert (configs["ddp"].distributed_type.value, configs["ddp"].num_processes) == ("MULTI_GPU", 8)
    stages = {
        name: (
            config.deepspeed_config["zero_stage"],
            config.deepspeed_config["offload_optimizer_device"],
            config.deepspeed_config["offload_param_device"],
            config.num_machines,
            config.num_processes,
        )
        for name, config in configs.items()
        if config.distributed_type.value == "DEEPSPEED"
    }
    assert stages == {
        "zero2": (2, "none", "none", 1, 8),
        "zero3": (3, "none", "none", 1, 8),
        "zero3_offload": (3, "cpu", "cpu", 1, 8),
        "multi_node": (3, "none", "none", 2, 16),
    }
    for name in ("zero3", "zero3_offload", "multi_node"):
        ds = configs[name].deepspeed_config
        assert ds["zero3_init_flag"] is True and ds["zero3_save_16bit_model"] is True, name
    fsdp = configs["fsdp"].fsdp_config
    assert configs["fsdp"].distributed_type.value == "FSDP"
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is True
    if fsdp.get("fsdp_version", 1) == 1:  # FULL_SHARD; rank 0 loads and broadcasts
        assert fsdp["fsdp_sharding_strategy"] == "FULL_SHARD"
        assert fsdp["fsdp_use_orig_params"] is True and fsdp["fsdp_sync_module_states"] is True
    else:  # FSDP2: fully_shard, resharded after forward (FULL_SHARD's equivalent)
        assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_reshard_after_forward"] is True


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_launch_slurm_gives_each_node_its_rank_and_forwards_arguments(tmp_path):
    """launch.slurm with stand-ins for srun (two nodes), scontrol and accelerate: every node
    runs accelerate launch with its own machine rank, the first node as the main address,
    16 processes, and the recipe's overrides intact."""
    script = ROOT / "recipes" / "launch.slurm"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    stubs, log = tmp_path / "bin", tmp_path / "calls.log"
    stubs.mkdir()
    (stubs / "scontrol").write_text('#!/bin/bash\n[[ "$1" == show ]] && printf "node-a\\nnode-b\\n"\n')
    (stubs / "srun").write_text(
        '#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nfor rank in 0 1; do SLURM_PROCID=$rank "$@"; done\n'
    )
    (stubs / "accelerate").write_text(f'#!/bin/bash\nprintf "%s\\t" "$@" >> {log}\necho >> {log}\n')
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{stubs}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "SLURM_NNODES": "2",
        "SLURM_JOB_ID": "1",
    }
    result = subprocess.run(
        ["bash", str(script), PAIRWISE_RECIPES[0], "zero3", "--loss.beta=0.05", "--training.run_name=a b"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    calls = [line.rstrip("\t").split("\t") for line in log.read_text().splitlines()]
    assert len(calls) == 2
    for rank, call in enumerate(calls):
        options = dict(zip(call[1:15:2], call[2:15:2], strict=True))
        assert call[0] == "launch"
        assert options == {
            "--config_file": "recipes/accelerate_configs/zero3.yaml",
            "--num_machines": "2",
            "--num_processes": "16",
            "--main_process_ip": "node-a",
            "--main_process_port": "29500",
            "--machine_rank": str(rank),
            "--rdzv_backend": "c10d",
        }
        assert call[15:] == [
            "scripts/train.py",
            "--config",
            PAIRWISE_RECIPES[0],
            "--training.resume_from_checkpoint=latest",
            "--loss.beta=0.05",
            "--training.run_name=a b",
        ]


def test_dockerfile_keeps_the_image_torch_and_runs_the_tiny_recipe():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"pytorch/pytorch:2\.\d+\.\d+-cuda12\.\d+-cudnn9-runtime", text)
    assert 'PIP_CONSTRAINT=/tmp/torch-constraints.txt pip install --no-cache-dir -e ".[all]"' in text
    assert "ENV HF_HOME=/cache" in text and "WORKDIR /workspace/alignment" in text
    cmd = yaml.safe_load(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    assert cmd[:4] == ["accelerate", "launch", "scripts/train.py", "--config"]
    assert (ROOT / cmd[4]).is_file() and cmd[5] == "--training.output_dir=/outputs/tiny-dpo"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", "outputs/"} <= set(ignored)
