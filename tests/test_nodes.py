"""The collective checks of alignment.trainers.nodes with two real gloo processes that
play two nodes (each its node's first process): an output directory that one node
cannot see, checkpoints the nodes disagree on, and the process group's end.

The two processes are spawned once for the module (the imports take seconds) and run
every case in turn; the launched multi-node runs are in tests/test_distributed.py."""

from __future__ import annotations

import os
import traceback
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch.multiprocessing as mp

from tests.launch import main_process_port


def _cases(root: Path) -> dict[str, tuple[list[str], list[str | None], bool]]:
    """name -> (each node's output_dir, each node's resume_from_checkpoint, save_on_each_node)."""
    shared, latest = str(root / "run"), str(root / "run" / "checkpoint-8")
    return {
        "shared": ([shared, shared], [latest, latest], False),
        "not shared": ([str(root / "node0-disk"), str(root / "node1-disk")], [None, None], False),
        "save_on_each_node": ([str(root / "a"), str(root / "b")], [None, None], True),
        "different checkpoints": ([shared, shared], [latest, None], False),
    }


def _node(rank: int, port: int, root: Path, results) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK="0",
        GROUP_RANK=str(rank),
        OMP_NUM_THREADS="1",
    )
    try:
        import torch.distributed as dist

        from alignment.trainers.checkpoints import CheckpointError
        from alignment.trainers.nodes import agree_on_resume, check_shared_output_dir, close_process_group

        dist.init_process_group("gloo")  # as TrainingArguments does under a launcher
        out = {}
        for name, (dirs, resume, save_on_each_node) in _cases(root).items():
            args = SimpleNamespace(
                world_size=2,
                process_index=rank,
                local_process_index=0,
                save_on_each_node=save_on_each_node,
                output_dir=dirs[rank],
            )
            shared = check_shared_output_dir(args, wait_s=0.5)
            try:
                agreed = agree_on_resume(resume[rank], args)
            except CheckpointError as err:
                agreed = f"CheckpointError: {err}"
            out[name] = (shared, agreed)
        close_process_group()
        out["process group open"] = dist.is_initialized()
        results.put((rank, out))
    except Exception:
        results.put((rank, traceback.format_exc()))


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory) -> tuple[Path, dict[int, dict]]:
    root = tmp_path_factory.mktemp("nodes")
    context = mp.get_context("spawn")
    results = context.Queue()
    port = main_process_port() + 7
    procs = [context.Process(target=_node, args=(rank, port, root, results)) for rank in (0, 1)]
    for proc in procs:
        proc.start()
    out = dict(results.get(timeout=180) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
    assert all(isinstance(value, dict) for value in out.values()), out
    return root, out


def test_shared_output_dir_passes_and_leaves_no_probe(two_nodes):
    root, results = two_nodes
    latest = str(root / "run" / "checkpoint-8")
    # Seen by both nodes, and the same checkpoint found on both.
    assert results[0]["shared"] == results[1]["shared"] == (None, latest)
    assert list((root / "run").iterdir()) == []  # the probe file is gone
    assert results[0]["process group open"] is results[1]["process group open"] is False


def test_output_dir_that_a_node_cannot_see_is_named_before_step_1(two_nodes):
    """Node 1 looks in a directory of its own (as with a node-local disk): every process
    gets the same one-line message, naming node 1."""
    root, results = two_nodes
    message = (
        "training.output_dir {} is not shared: node(s) 1 cannot see a file node 0 wrote there. Checkpoints are "
        "written by node 0 and read by every node on resume; point output_dir at a filesystem all nodes mount, "
        "or set training.save_on_each_node: true"
    )
    for rank in (0, 1):
        assert results[rank]["not shared"] == (message.format(repr(str(root / f"node{rank}-disk"))), None)
    # With save_on_each_node every node keeps its own copy: nothing to check.
    assert results[0]["save_on_each_node"] == results[1]["save_on_each_node"] == (None, None)


def test_nodes_that_find_different_checkpoints_do_not_resume(two_nodes):
    root, results = two_nodes
    expected = (
        "CheckpointError: training.resume_from_checkpoint: the nodes do not find the same checkpoint (node 0: "
        f"{root / 'run' / 'checkpoint-8'}; node 1: no complete checkpoint). The output directory must be shared "
        "by all nodes (or set training.save_on_each_node: true)"
    )
    assert results[0]["different checkpoints"] == results[1]["different checkpoints"] == (None, expected)
