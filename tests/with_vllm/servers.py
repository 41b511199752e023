"""`alignment vllm-serve` for the tests: the tiny head_dim-32 model saved as safetensors,
a free port, and the server as a subprocess that is killed (its process group) at the end."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "recipes" / "tiny" / "model-h32"  # head_dim 32: vLLM's CPU attention supports it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_tiny_model(path: Path) -> Path:
    """The tiny model with seeded random weights, saved as safetensors in `path`."""
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(CONFIG)).save_pretrained(path, safe_serialization=True)
    return path


@contextlib.contextmanager
def running_server(model_dir: Path, log: Path, *flags: str, timeout_s: float = 240) -> Iterator[dict]:
    """`alignment vllm-serve` on `model_dir` (float32, 64 positions, a 1 GiB KV cache, the
    default host) with `flags`, once it listens: its process, URL, port and log."""
    port = free_port()
    command = [sys.executable, "-m", "alignment.cli", "vllm-serve", "--model", str(model_dir), "--port", str(port)]
    command += ["--dtype", "float32", "--max-model-len", "64", "--cpu-kvcache-space-gib", "1", *flags]
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                pytest.fail(f"alignment vllm-serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"alignment vllm-serve did not listen within {timeout_s:g} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield {"process": process, "url": f"http://127.0.0.1:{port}", "port": port, "log": log}
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
