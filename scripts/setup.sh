#!/usr/bin/env bash
# One-shot environment setup: a virtual environment in .venv with a matching
# torch/torchvision pair, facenet-pytorch without its stale pins, and poi itself.
# Idempotent: re-running only installs what is missing. Override VENV or PYTHON if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
# torch and torchvision must come as a pair from the registry: the CPU-only torch
# wheel some machines carry breaks torchvision's compiled ops. The CUDA builds run on CPU.
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
if [ -z "${TORCH_SPEC:-}" ]; then
    if "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info >= (3, 11))'; then
        TORCH_SPEC="torch==2.14.1 torchvision==0.29.2"  # torch 2.15.0 has no wheel for Python 3.10
    else
        TORCH_SPEC="torch==2.15.0 torchvision==0.29.2"
    fi
fi
PIP="$VENV/bin/python -m pip"
$PIP install --quiet --upgrade pip
$PIP install --quiet $TORCH_SPEC
# facenet-pytorch 2.6.0 pins torch<2.3, numpy<2, Pillow<10.3, yet works with current
# versions; install it without its pins. Its runtime needs (tqdm, requests) are in
# pyproject.toml's dependencies.
$PIP install --quiet --no-deps facenet-pytorch==2.6.0
$PIP install --quiet -e ".[dev]"
echo "setup done: $("$VENV/bin/poi" --version)"
