#!/usr/bin/env bash
# One-command GPU validation of fastfer's kernels (bench/README.md, "GPU validation"):
#   bench/gpu_check.sh OUTDIR [--dry-run] [--only facts,smoke,tests,bench,models] [--budget SECONDS]
# Runs from the source tree (PYTHONPATH=.), writes at most 8 files into OUTDIR and prints a summary table last.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m bench.gpu_check "$@"
