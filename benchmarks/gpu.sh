#!/usr/bin/env bash
# One go on a CUDA machine (about 3.5 minutes on an H100): the CUDA tests, then the GPU benchmark
# (batched 1080p sharpen against the memory-bandwidth roofline, eager / compile / the Triton
# stencil and its tile shapes, eager against triton on the filters the stencil takes, JPEGs end
# to end with GPU decoding, the CLI on the GPU), then bench_filters' rows on the GPU next to
# kornia.
# Usage: bash benchmarks/gpu.sh   (PYTHON=... to pick the interpreter)
# The Triton stencil's CUDA tests compile about 95 kernel variants (about a second each): with
# pytest-xdist installed they run in 4 processes. On a machine without network, carry the wheels
# (pytest-xdist, execnet, kornia, kornia_rs) in a folder and first run
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site WHEELS/*.whl
#   export PYTHONPATH=$PWD:/tmp/site PYTHON=python3
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3 || command -v python)}
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
# the benchmark scripts import convkit from this checkout, installed or not
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
  || echo "nvidia-smi not found"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available())"

"$PY" -c "import cv2, PIL, torchvision; print('torchvision', torchvision.__version__, \
'opencv', cv2.__version__, 'pillow', PIL.__version__)"

status=0
echo "== CUDA tests (every test parametrized on cuda, the slow torch.compile one and the"
echo "   Triton stencil's included: each of its variants compiles once, about a second)"
# several test processes when pytest-xdist is there: the compile test alone takes a while
XDIST=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 4")
# shellcheck disable=SC2086
# SIGINT at the limit: pytest still prints which tests failed and the slowest ones
timeout -s INT -k 15 180 "$PY" -m pytest -q -rfE --durations=10 -p no:cacheprovider $XDIST \
  -m "cuda or not slow" -k cuda tests/ || status=$?

echo "== GPU benchmark"
# the first torch.compile of the fused kernel takes 10-15 s (H100), in the roofline
timeout -s INT -k 10 165 "$PY" benchmarks/bench_gpu.py || status=$?

echo "== the filter rows on the GPU, convkit beside kornia (bench_filters.py --device cuda)"
timeout -s INT -k 10 55 "$PY" benchmarks/bench_filters.py --device cuda --rounds 5 || status=$?
exit $status
