"""Several processes on several nodes: who writes which file where, and a clean end.

What one process writes and another reads, and where (each decision is also written
down where the file is written):

| artifact | written by | where |
|---|---|---|
| tokenized data | each node's local main process (`main_process_first` is local) | that node's datasets cache |
| reference precompute | each node's local main process, from the gathered values | beside that node's tokenized data |
| checkpoints, their markers, the final model, `alignment_judge.json`, the generations files | `TrainingArguments.should_save`: the global main process (each node's local main with `save_on_each_node`) | `output_dir` |

`output_dir` must therefore be shared by all nodes unless `save_on_each_node` is set:
`check_shared_output_dir` proves it before step 1 rather than at the first resume. A
node-local cache is never read by another node: paths are never sent between nodes,
and every decision to reuse a file is taken by all processes together.

`close_process_group` ends the run's process group after success, an error, SIGTERM or
Ctrl-C, and `exit_status` then ends a process that had one without the interpreter's
teardown. Both are needed: DDP's reducer keeps the gloo process group (and its worker
threads) alive after `destroy_process_group`, and a worker thread that frees the last
all-reduce while the interpreter finalizes needs the GIL, is stopped by Python with
`pthread_exit`, and aborts the process ("terminate called without an active
exception"). Its launcher then exits 1 for a run that finished. Measured with a bare
DDP script under torchrun, 2 gloo processes, 30-40 launches each: 1 of 30 aborted with
no destroy, 5 of 30 with `destroy_process_group` alone, 0 of 40 with the exit below."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import torch.distributed as dist

from alignment.trainers.checkpoints import CheckpointError

logger = logging.getLogger(__name__)

# How long a node waits to see the probe file: a shared filesystem (NFS) may cache a
# directory listing for some seconds, so a first miss is not yet proof of a local disk.
SHARED_PROBE_WAIT_S = 30.0
SHARED_PROBE_PREFIX = ".alignment-shared-probe-"


_had_process_group = False  # whether this process ran with a process group (set by close_process_group)


def close_process_group() -> None:
    """Destroy the default process group, if this process has one."""
    global _had_process_group
    if dist.is_available() and dist.is_initialized():
        _had_process_group = True
        dist.destroy_process_group()


def exit_status(status: int) -> int:
    """`status` for `sys.exit`, in a process that never had a process group. A process
    that had one exits here with `status`, after what the interpreter's exit would do
    that matters (other threads joined, atexit handlers run: logging, wandb, tensorboard;
    output flushed), but without its teardown, where the gloo threads can abort it."""
    if not _had_process_group:
        return status
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)


def node_rank() -> int:
    """This process's node (torchrun's GROUP_RANK; accelerate passes --machine_rank to it)."""
    return int(os.environ.get("GROUP_RANK", os.environ.get("NODE_RANK", "0")))


def _sees(path: Path, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with path.open("rb"):  # open(), not stat(): NFS revalidates on open (close-to-open)
                return True
        except FileNotFoundError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)


def check_shared_output_dir(args: Any, wait_s: float = SHARED_PROBE_WAIT_S) -> str | None:
    """None when every node's local main process sees what the global main process
    writes in `output_dir`; otherwise what is wrong, naming the nodes that do not.

    Checkpoint markers and the RNG states of every process land in one `checkpoint-N`
    directory, and a resume reads them on every node, so an output directory on a
    node-local disk would only fail at the first resume. With one process, or with
    `save_on_each_node` (every node saves its own copy), there is nothing to check."""
    if args.world_size == 1 or args.save_on_each_node:
        return None
    output_dir = Path(args.output_dir).expanduser()
    name = [f"{SHARED_PROBE_PREFIX}{uuid.uuid4().hex}" if args.process_index == 0 else None]
    probe = None
    if args.process_index == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / name[0]
        probe.write_text("written by the global main process to check that every node sees output_dir\n")
    dist.broadcast_object_list(name, src=0)
    probe = output_dir / name[0]
    sees = _sees(probe, wait_s) if args.local_process_index == 0 else True
    seen = _all_gather((node_rank(), sees), args.world_size)
    if args.process_index == 0:
        probe.unlink(missing_ok=True)
    blind = sorted({node for node, ok in seen if not ok})
    if not blind:
        return None
    return (
        f"training.output_dir {str(args.output_dir)!r} is not shared: node(s) {', '.join(map(str, blind))} cannot "
        "see a file node 0 wrote there. Checkpoints are written by node 0 and read by every node on resume; "
        "point output_dir at a filesystem all nodes mount, or set training.save_on_each_node: true"
    )


def _all_gather(value: Any, world_size: int) -> list[Any]:
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, value)
    return gathered


def agree_on_resume(resume: str | None, args: Any) -> str | None:
    """The checkpoint every process resumes from: the same one, or a CheckpointError
    naming what each node found (a node that started afresh while the others resumed
    would train a different model, or hang in the first collective)."""
    if args.world_size == 1:
        return resume
    found = _all_gather((node_rank(), args.process_index, resume), args.world_size)
    choices = {path for _, _, path in found}
    if len(choices) == 1:
        return resume
    by_node = {}
    for node, _, path in found:
        by_node.setdefault(node, path)
    seen = "; ".join(f"node {node}: {path or 'no complete checkpoint'}" for node, path in sorted(by_node.items()))
    raise CheckpointError(
        f"training.resume_from_checkpoint: the nodes do not find the same checkpoint ({seen}). "
        "The output directory must be shared by all nodes (or set training.save_on_each_node: true)"
    )
