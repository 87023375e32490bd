#!/usr/bin/env bash
# The GPU pack (issue 27): the suite's GPU cases, POI's training throughput at 224 px / batch 256
# with peak GPU memory, and cross-entropy, POI and the clean-and-teach recipe at 30 % label noise
# on FERPlus at 112 px, as one call of at most 10 minutes on one GPU. Every stage runs under a
# hard time limit and its result is written as soon as it is known; see scripts/gpu_pack.py.
#
#   bash scripts/gpu_pack.sh [--out DIR] [--budget SECONDS] [--stages env,tests,...] [--data PREPARED_DIR]
#   bash scripts/gpu_pack.sh --dry-run [--out DIR]    # the CPU, tiny sizes, synthetic data: a minute or two
#
# Results: --out, else $OUT (the device tool's folder), else runs/gpu_pack: summary.json,
# summary.md, pack.log and details.tar.gz (4 files, no sub-folders).
# The noise runs read the FERPlus pack at prepared/gpu_pack_ferplus (made where FERPlus is by
# `python scripts/gpu_pack.py pack-data`; a device call carries it), or --data PREPARED_DIR.
# PYTHON: the interpreter (default .venv/bin/python where it exists, else python3: on the GPU
# machine its image's Python, which has torch); poi runs from this checkout (PYTHONPATH).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

# Without `pip install -e .` (the GPU machine: a bare copy of the tree), the package
# poi_cli.data_manifests (data_manifests/, mapped by pyproject's package-dir) is missing:
# link it into the copy for this run and remove the link afterwards.
made_link=""
if ! "$PYTHON" -c "import poi_cli.data_manifests" 2>/dev/null; then
  if [ ! -e poi_cli/data_manifests ]; then
    ln -s ../data_manifests poi_cli/data_manifests && made_link=1
  fi
fi
cleanup() { if [ -n "$made_link" ]; then rm -f poi_cli/data_manifests; fi; }
trap cleanup EXIT

"$PYTHON" scripts/gpu_pack.py run "$@"
