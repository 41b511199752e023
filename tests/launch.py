"""Running the training script as a user does: a subprocess, optionally under `accelerate launch`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.helpers import ROOT

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
if os.environ.get("PYTEST_XDIST_WORKER"):  # one thread per process beside the other worker (tests/conftest.py)
    ENV |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ACCELERATE_CONFIGS = ROOT / "recipes" / "accelerate_configs"


def run(args: list[str], check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=ROOT, env={**ENV, **(env or {})}, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def train_command(
    recipe: str, out: Path, *overrides: str, launcher: list[str] | None = None, script: str = "scripts/train.py"
) -> list[str]:
    launcher = [sys.executable] if launcher is None else launcher
    return [
        *launcher,
        script,
        "--config",
        f"recipes/tiny/{recipe}.yaml",
        f"--training.output_dir={out}",
        *overrides,
    ]


def train(
    recipe: str,
    out: Path,
    *overrides: str,
    launcher: list[str] | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    return run(train_command(recipe, out, *overrides, launcher=launcher), check=check, env=env)


def train_in_process(recipe: str, out: Path, *overrides: str) -> dict[str, float]:
    """recipes/tiny/<recipe>.yaml trained in this process, as `alignment train` does: for
    tests of what a recipe learns, which need no process boundary (the launch path is
    tested by the tests that call `train`). Saves the interpreter and import start-up."""
    from alignment.config import load_config
    from alignment.run import train as run_training

    config = load_config(ROOT / "recipes" / "tiny" / f"{recipe}.yaml", [f"--training.output_dir={out}", *overrides])
    return run_training(config)


def sigterm_after_first_loss(command: list[str]) -> tuple[int, str]:
    """Run `command`, send SIGTERM (as a scheduler does) once training has logged its first
    loss, and return its exit status and whole output."""
    env = {**ENV, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:  # wait until training has really started, then preempt
        seen.append(line)
        if "'loss':" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=300)
    return proc.returncode, "".join(seen) + rest


def main_process_port() -> int:
    """Accelerate's default port, offset per pytest-xdist worker so that two workers'
    multi-process runs never bind the same port."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return 29500 + 17 * int(worker.removeprefix("gw") or 0)


def accelerate_launch(num_processes: int = 2, config_file: str | None = None) -> list[str]:
    """`accelerate launch` for N CPU processes: plain gloo DDP, or the backend of a
    shipped accelerate config with its GPU-only settings (bf16) turned off."""
    launcher = ["accelerate", "launch", "--num_processes", str(num_processes), "--num_machines", "1"]
    return launcher + ["--main_process_port", str(main_process_port())] + _backend(config_file)


def _backend(config_file: str | None) -> list[str]:
    backend = ["--multi_gpu"] if config_file is None else ["--config_file", str(ACCELERATE_CONFIGS / config_file)]
    return backend + ["--mixed_precision", "no", "--dynamo_backend", "no"]


# ----------------------------------------------------------------------------- simulated nodes

# Prints whether the process still holds a process group after the CLI returns.
REPORTING_SCRIPT = "tests/fixtures/train_and_report.py"
PROCESS_GROUP_CLOSED = "process group after train_main: closed"


def node_launcher(
    rank: int, nodes: int, per_node: int, config_file: str | None = None, port: int | None = None
) -> list[str]:
    """`accelerate launch` as node `rank` of `nodes` machines, all on 127.0.0.1: what
    each node of a cluster runs, with node 0 as the main address."""
    launcher = ["accelerate", "launch", "--num_processes", str(nodes * per_node), "--num_machines", str(nodes)]
    launcher += ["--machine_rank", str(rank), "--main_process_ip", "127.0.0.1"]
    launcher += ["--main_process_port", str(port or main_process_port())]
    return launcher + _backend(config_file)


def node_env(root: Path, rank: int) -> dict[str, str]:
    """A node's own disk: its datasets cache and TMPDIR, as on a cluster whose nodes
    cache on local disk. Only the output directory is shared."""
    cache, tmp = root / f"node{rank}" / "datasets", root / f"node{rank}" / "tmp"
    cache.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    return {"HF_DATASETS_CACHE": str(cache), "TMPDIR": str(tmp), "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"}


def start_nodes(
    command: list[str], root: Path, nodes: int = 2, per_node: int = 1, config_file: str | None = None, **kw
) -> list[subprocess.Popen]:
    """`command` (a script and its arguments) on `nodes` simulated nodes at once, each in
    its own session (so a test can kill a node's whole process tree) and logging to
    root/node<R>.log."""
    procs = []
    for rank in range(nodes):
        env = {**ENV, **node_env(root, rank), **kw.get("env", {})}
        launcher = node_launcher(rank, nodes, per_node, config_file, kw.get("port"))
        with (root / f"node{rank}.log").open("w") as log:  # the child keeps its own handle
            procs.append(
                subprocess.Popen(
                    [*launcher, *command],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    return procs


def wait_nodes(procs: list[subprocess.Popen], root: Path, timeout: float = 900.0) -> list[tuple[int, str]]:
    """Each node's (exit status, output). A node still running at the timeout (waiting in
    a collective for a node that died) is killed with its whole tree."""
    deadline = time.monotonic() + timeout
    results = []
    for rank, proc in enumerate(procs):
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in procs:
                kill_tree(other)
            proc.wait()
        results.append((proc.returncode, (root / f"node{rank}.log").read_text()))
    return results


def kill_tree(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """`sig` to a node's launcher and every process under it, as when the node dies.
    torchrun starts each worker in a session of its own, so the launcher's process group
    does not reach them: the tree is walked instead."""
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for member in tree:
        try:
            member.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def train_on_nodes(
    recipe: str,
    out: Path,
    *overrides: str,
    root: Path,
    nodes: int = 2,
    per_node: int = 1,
    config_file: str | None = None,
    port: int | None = None,
) -> list[str]:
    """The tiny recipe trained on simulated nodes; every launcher must exit 0, and every
    process must have closed its process group. Returns each node's output."""
    command = train_command(recipe, out, *overrides, launcher=[], script=REPORTING_SCRIPT)
    results = wait_nodes(start_nodes(command, root, nodes, per_node, config_file, port=port), root)
    for rank, (status, output) in enumerate(results):
        assert status == 0, f"node {rank} exited {status}:\n{output[-6000:]}"
        assert output.count(PROCESS_GROUP_CLOSED) == per_node, output[-3000:]
    return [output for _, output in results]


def log_history(out: Path) -> list[dict]:
    return json.loads((out / "trainer_state.json").read_text())["log_history"]


def logged(out: Path, key: str = "loss") -> list[float]:
    return [entry[key] for entry in log_history(out) if key in entry]


def run_recipe(name: str, out: Path, *overrides: str) -> tuple[dict, dict]:
    """(the step-0 evaluation, the final one) of recipes/tiny/<name>.yaml."""
    train_in_process(name, out, *overrides)
    final = json.loads((out / "eval_results.json").read_text())
    start = next(entry for entry in log_history(out) if entry.get("epoch") == 0 and any("eval_" in k for k in entry))
    return start, final
