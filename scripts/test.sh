#!/usr/bin/env bash
# Install bertcli with its test dependencies into .venv and run the test suite.
# On a machine without an NVIDIA GPU the CPU build of torch is installed first,
# so pip never pulls a multi-GB CUDA build. Users with a GPU keep their own torch.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! command -v nvidia-smi >/dev/null 2>&1 && ! python -c "import torch" >/dev/null 2>&1; then
    python -m pip install -q torch==2.13.0
fi
python -m pip install -q -e ".[dev]"
# pytest exits 5 when it collects no test; set -e turns that into a failure.
python -m pytest -q -p no:cacheprovider "$@"
