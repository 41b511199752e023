"""Running the training script as a user does: a subprocess, optionally under `accelerate launch`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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


def train_command(recipe: str, out: Path, *overrides: str, launcher: list[str] | None = None) -> list[str]:
    launcher = launcher or [sys.executable]
    return [
        *launcher,
        "scripts/train.py",
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


def main_process_port() -> int:
    """Accelerate's default port, offset per pytest-xdist worker so that two workers'
    multi-process runs never bind the same port."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return 29500 + 17 * int(worker.removeprefix("gw") or 0)


def accelerate_launch(num_processes: int = 2, config_file: str | None = None) -> list[str]:
    """`accelerate launch` for N CPU processes: plain gloo DDP, or the backend of a
    shipped accelerate config with its GPU-only settings (bf16) turned off."""
    launcher = ["accelerate", "launch", "--num_processes", str(num_processes), "--num_machines", "1"]
    launcher += ["--main_process_port", str(main_process_port())]
    if config_file is None:
        launcher += ["--multi_gpu"]
    else:
        launcher += ["--config_file", str(ACCELERATE_CONFIGS / config_file)]
    return launcher + ["--mixed_precision", "no", "--dynamo_backend", "no"]


def log_history(out: Path) -> list[dict]:
    return json.loads((out / "trainer_state.json").read_text())["log_history"]


def logged(out: Path, key: str = "loss") -> list[float]:
    return [entry[key] for entry in log_history(out) if key in entry]
