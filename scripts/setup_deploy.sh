#!/usr/bin/env bash
# The deploy environment: .venv-deploy with the base install only (`pip install poi-fer`:
# ONNX Runtime, numpy, Pillow, PyAV, FastAPI; no torch), poi in editable mode.
# Idempotent. Override VENV or PYTHON if needed. WITH_PYTEST=1 adds pytest (for `make test`).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv-deploy}"
PYTHON="${PYTHON:-python3}"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install --quiet --upgrade pip
$PIP install --quiet -e .
[ "${WITH_PYTEST:-0}" = 1 ] && $PIP install --quiet "pytest>=8"
echo "deploy setup done: $("$VENV/bin/poi" --version) in $VENV ($(du -sh "$VENV" | cut -f1))"
