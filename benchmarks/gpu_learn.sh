#!/usr/bin/env bash
# Learned filters on a GPU in one go (under 5 minutes): CUDA tests, short CUDA training runs with
# timing and held-out PSNR, CPU/CUDA agreement. Needs the bench extra (scikit-image).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" benchmarks/gpu_learn.py "$@"
