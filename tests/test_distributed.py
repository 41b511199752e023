"""Two processes on CPU under each backend, with a live and a precomputed reference,
against one process with the same global batch; and the same two processes as two
simulated nodes (one process each on 127.0.0.1, each node with its own datasets cache
and TMPDIR, the output directory shared), against one node.

DeepSpeed runs on CPU with DS_ACCELERATOR=cpu; its first run compiles a communication
op (about a minute). Every run uses a fresh datasets cache, so `precompute` really
computes on two processes rather than reusing another run's column."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import datasets
import pytest
from safetensors.torch import load_file

from alignment.trainers.checkpoints import COMPLETE_MARKER
from tests.helpers import assert_float32_close, float32_approx
from tests.launch import (
    PROCESS_GROUP_CLOSED,
    REPORTING_SCRIPT,
    accelerate_launch,
    kill_tree,
    logged,
    main_process_port,
    run,
    sigterm_after_first_loss,
    start_nodes,
    train,
    train_command,
    train_on_nodes,
    wait_nodes,
)

COMMON = [
    "--training.max_steps=3",
    "--training.logging_steps=1",
    "--training.eval_on_start=false",
    "--training.learning_rate=0.01",
]
CONFIG_FILES = {"ddp": None, "zero3": "zero3.yaml", "fsdp": "fsdp.yaml"}


def eval_accuracy(out: Path) -> float:
    return json.loads((out / "eval_results.json").read_text())["eval_reward_accuracy"]


def assert_same_weights(out: Path, expected: Path, ulps: float = 8) -> None:
    """The saved models hold the same tensors to float32 rounding."""
    ours, theirs = load_file(out / "model.safetensors"), load_file(expected / "model.safetensors")
    assert sorted(ours) == sorted(theirs)
    for name, tensor in theirs.items():
        assert_float32_close(ours[name], tensor, ulps)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    cache = tmp_path_factory.mktemp("one-cache")
    train("dpo", out, "--training.per_device_train_batch_size=32", *COMMON, env={"HF_DATASETS_CACHE": str(cache)})
    return out


@pytest.fixture(scope="module")
def one_node(tmp_path_factory):
    """Two processes on one node, per (backend, reference): each launched once and shared
    by the comparison with one process and the comparison with two nodes."""
    runs: dict[tuple[str, str], tuple[Path, str]] = {}

    def launched(backend: str, reference: str) -> tuple[Path, str]:
        if (backend, reference) not in runs:
            root = tmp_path_factory.mktemp(f"one-node-{backend}-{reference}")
            env = {"HF_DATASETS_CACHE": str(root / "cache"), "DS_ACCELERATOR": "cpu"}
            proc = train(
                "dpo",
                root / "run",
                "--training.per_device_train_batch_size=16",
                f"--reference.type={reference}",
                *COMMON,
                launcher=accelerate_launch(2, CONFIG_FILES[backend]),
                env=env,
            )
            runs[backend, reference] = (root / "run", proc.stdout)
        return runs[backend, reference]

    return launched


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend, reference",
    [("ddp", "model"), ("ddp", "precompute"), ("zero3", "model"), ("zero3", "precompute"), ("fsdp", "model")],
)
def test_two_processes_match_one_process(one_process, one_node, backend, reference):
    """2 x 16 rows gives the same per-step losses and eval accuracy as 1 x 32 rows."""
    out, stdout = one_node(backend, reference)
    if reference == "precompute":
        # Each process computed its share of the reference pass.
        assert "reference log-probs (train): computing 4000 rows on 2 process(es)" in stdout
    losses_one, losses_two = logged(one_process), logged(out)
    assert len(losses_one) == len(losses_two) == 3
    # Bit-identical on CPU so far, but two processes reduce each step's loss and gradients in
    # another order (2 x 16 rows, then across processes), and the optimizer steps carry it on.
    assert losses_two == float32_approx(losses_one, ulps=8)
    assert losses_one[2] != pytest.approx(losses_one[0], abs=1e-3)  # it trained
    # The eval metric is reduced exactly across both processes.
    assert eval_accuracy(out) == float32_approx(eval_accuracy(one_process), ulps=1)


# ----------------------------------------------------------------------------- simulated nodes


def reference_columns(root: Path, rank: int) -> dict[str, list[list[float]]]:
    """The precomputed reference column files in node `rank`'s own datasets cache, by split size."""
    files = sorted((root / f"node{rank}" / "datasets").rglob("reference-logps-*.arrow"))
    return {
        str(len(column)): column
        for column in (datasets.Dataset.from_file(str(f))["reference_logps"] for f in files if ".tmp-" not in f.name)
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend, reference", [("ddp", "model"), ("ddp", "precompute"), ("zero3", "model"), ("fsdp", "model")]
)
def test_two_nodes_match_one_node(one_node, backend, reference, tmp_path):
    """The same two processes as two nodes with node-local caches reach the same weights,
    losses and eval accuracy as on one node; every launcher exits 0 and every process
    closes its process group."""
    expected, _ = one_node(backend, reference)
    out = tmp_path / "run"
    outputs = train_on_nodes(
        "dpo",
        out,
        "--training.per_device_train_batch_size=16",
        f"--reference.type={reference}",
        *COMMON,
        root=tmp_path,
        config_file=CONFIG_FILES[backend],
    )
    assert_same_weights(out, expected)
    assert logged(out) == float32_approx(logged(expected), ulps=8)
    assert eval_accuracy(out) == float32_approx(eval_accuracy(expected), ulps=1)
    if reference == "precompute":
        for rank, output in enumerate(outputs):
            # Each node wrote the column into its own cache and read only that one.
            cached = re.findall(r"reference log-probs \(\w+\): cached in (\S+)", output)
            assert len(cached) == 2 and all(path.startswith(str(tmp_path / f"node{rank}")) for path in cached)
            assert str(tmp_path / f"node{1 - rank}") not in output


PRECOMPUTE_ON_NODES = [
    "--training.per_device_train_batch_size=16",
    "--reference.type=precompute",
    *COMMON,
    "--training.max_steps=1",
    "--data.test=[]",
]


def test_precompute_on_two_nodes_with_node_local_caches(tmp_path):
    """Fast tier: the reference pass on two nodes that cannot see each other's datasets
    cache (the case that failed with FileNotFoundError on node 1). Each node writes the
    same column into its own cache, and both exit 0 with their process groups closed."""
    outputs = train_on_nodes("dpo", tmp_path / "run", *PRECOMPUTE_ON_NODES, root=tmp_path)
    for output in outputs:
        assert "reference log-probs (train): computing 4000 rows on 2 process(es)" in output
    columns = [reference_columns(tmp_path, rank) for rank in (0, 1)]
    assert list(columns[0]) == ["4000"] and columns[0] == columns[1]
    assert all(len(values) == 2 for values in columns[0]["4000"])  # a log-prob per completion


@pytest.mark.slow
def test_precompute_is_reused_only_when_every_node_has_it(tmp_path):
    """A node that finds its cache reuses it only when every node does: with node 1's
    deleted, both compute again (node 0 skipping the pass would leave node 1 waiting in
    its all-gather), and node 1's rewritten column equals node 0's."""
    train_on_nodes("dpo", tmp_path / "run", *PRECOMPUTE_ON_NODES, root=tmp_path)
    column = reference_columns(tmp_path, 0)
    for path in (tmp_path / "node1" / "datasets").rglob("reference-logps-*.arrow"):
        path.unlink()
    outputs = train_on_nodes("dpo", tmp_path / "rerun", *PRECOMPUTE_ON_NODES, root=tmp_path)
    assert all("reference log-probs (train): computing 4000 rows" in output for output in outputs)
    assert reference_columns(tmp_path, 1) == column
    outputs = train_on_nodes("dpo", tmp_path / "third", *PRECOMPUTE_ON_NODES, root=tmp_path)
    assert all("reference log-probs (train): reusing the cache" in output for output in outputs)


ONLINE = [
    "--training.max_steps=3",
    "--training.per_device_train_batch_size=8",
    "--training.per_device_eval_batch_size=50",
    "--training.logging_steps=1",
    "--training.eval_on_start=false",
    "--evaluation.max_prompts=40",
]


@pytest.mark.slow
def test_online_recipe_on_two_nodes_matches_one_node(tmp_path):
    """SPPO with its evaluation by generation: the initial answers, written once into the
    shared output directory, and the trained weights are those of one node."""
    expected = tmp_path / "one-node"
    train("sppo", expected, *ONLINE, launcher=accelerate_launch(2), env={"HF_DATASETS_CACHE": str(tmp_path / "c")})
    out = tmp_path / "run"
    train_on_nodes("sppo", out, *ONLINE, root=tmp_path)
    assert_same_weights(out, expected)
    initial = (out / "initial_generations.jsonl").read_text()
    assert initial == (expected / "initial_generations.jsonl").read_text()
    assert len(initial.splitlines()) == 40
    assert not list(out.glob("*.tmp-*"))
    ours, theirs = (
        json.loads((out / "eval_results.json").read_text()),
        json.loads((expected / "eval_results.json").read_text()),
    )
    for key in ("eval_win_rate_vs_initial", "eval_win_rate_vs_reference", "eval_online/kl", "eval_generation_length"):
        assert ours[key] == float32_approx(theirs[key], ulps=8), key


RESUMABLE = [
    "--training.max_steps=12",
    "--training.per_device_train_batch_size=16",
    "--training.save_strategy=steps",
    "--training.save_steps=4",
    "--training.logging_steps=1",
    "--training.eval_on_start=false",
    "--training.learning_rate=0.01",
]


@pytest.mark.slow
def test_resume_after_kill_9_on_both_nodes_matches_one_node(tmp_path):
    """Both nodes killed (SIGKILL to every launcher and worker) once checkpoint-4 is
    complete, then relaunched with resume_from_checkpoint=latest: both nodes resume from
    the same checkpoint and end with the weights of one uninterrupted node."""
    expected = tmp_path / "one-node"
    train("dpo", expected, *RESUMABLE, launcher=accelerate_launch(2), env={"HF_DATASETS_CACHE": str(tmp_path / "c")})
    out = tmp_path / "run"
    command = train_command("dpo", out, *RESUMABLE, launcher=[], script=REPORTING_SCRIPT)
    procs = start_nodes(command, tmp_path)
    marker = out / "checkpoint-4" / COMPLETE_MARKER
    deadline = time.monotonic() + 600
    while not marker.exists():
        assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, "a node ended before checkpoint-4"
        time.sleep(0.005)
    for proc in procs:
        kill_tree(proc)
    assert [status for status, _ in wait_nodes(procs, tmp_path)] == [-9, -9]
    assert not (out / "eval_results.json").exists()  # it really died mid-run

    port = main_process_port() + 1  # the killed run's port may still be held
    outputs = train_on_nodes(
        "dpo", out, *RESUMABLE, "--training.resume_from_checkpoint=latest", root=tmp_path, port=port
    )
    resumed = [re.findall(r"resuming from \S+/(checkpoint-\d+)", output) for output in outputs]
    assert resumed[0] == resumed[1] and resumed[0] and resumed[0][0] != "checkpoint-12"
    assert_same_weights(out, expected)
    assert eval_accuracy(out) == float32_approx(eval_accuracy(expected), ulps=1)


@pytest.mark.slow
def test_process_group_is_closed_after_an_error_and_after_sigterm(tmp_path):
    """Every process destroys its process group however the run ends: a NaN loss stops
    both processes (each exits 1), and SIGTERM to the launcher, as a scheduler sends it,
    checkpoints and stops them (each exits 143). The success path is checked by every
    train_on_nodes run."""
    diverge = ["--training.learning_rate=1.0e+6", "--training.max_steps=20", "--training.eval_on_start=false"]
    launcher = accelerate_launch(2)
    failed = run(train_command("dpo", tmp_path / "nan", *diverge, launcher=launcher, script=REPORTING_SCRIPT), False)
    assert failed.returncode != 0
    assert failed.stderr.count("alignment: training stopped: the training loss is nan at step ") == 2
    assert failed.stdout.count(PROCESS_GROUP_CLOSED) == 2, failed.stdout[-3000:] + failed.stderr[-3000:]

    long_run = ["--training.max_steps=2000", "--training.logging_steps=5", "--training.eval_on_start=false"]
    command = train_command("dpo", tmp_path / "term", *long_run, launcher=launcher, script=REPORTING_SCRIPT)
    _, output = sigterm_after_first_loss(command)
    assert output.count("alignment: stopped by SIGTERM at step ") == 2, output[-3000:]
    assert output.count(PROCESS_GROUP_CLOSED) == 2, output[-3000:]


@pytest.mark.slow
def test_qlora_under_zero3_is_refused_before_loading(tmp_path):
    proc = train(
        "dpo",
        tmp_path / "run",
        "--lora.r=4",
        "--quantization.bits=4",
        launcher=accelerate_launch(2, "zero3.yaml"),
        env={"DS_ACCELERATOR": "cpu"},
        check=False,
    )
    assert proc.returncode != 0
    # One clean line per process, from the CLI, not a traceback from inside DeepSpeed.
    assert "alignment: config error: quantization: 4/8-bit weights cannot be sharded by DeepSpeed ZeRO-3" in proc.stderr
    assert not (tmp_path / "run" / "model.safetensors").exists()
