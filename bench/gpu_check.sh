#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one call on a lent GPU machine (a bare image with nvcc,
# torch and pytest, no network): build both native modules with CUDA for sm_90, run the CUDA
# tests, time the CUDA kernels (bench/cuda_kernels.py), then run the CUDA tests of the
# quantised ops again under compute-sanitizer's memcheck. Logs land in $OUT (default
# /tmp/gpu_check). Each step has its own time limit, so one that hangs leaves the others' logs.
#
#     bash bench/gpu_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
PY=$(command -v python3)
BUILD=/tmp/moeweave-gpu-build

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
"$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)" \
  | tee -a "$OUT/gpu.txt"

# The image's Python may lack its development headers; a copy of 3.12's can travel in .pyinc/.
include=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
headers=()
[ -f "$include/Python.h" ] || headers=(-DPython_INCLUDE_DIR="$PWD/.pyinc/python3.$("$PY" -c 'import sys; print(sys.version_info[1])')")
start=$SECONDS
if ! timeout 240 bash -c "cmake -S . -B $BUILD -G Ninja -DMOEWEAVE_CUDA=ON -DMOEWEAVE_CUDA_ARCHS=90 \
    -DPython_EXECUTABLE=$PY -Dpybind11_DIR=$("$PY" -m pybind11 --cmakedir) ${headers[*]} \
    && ninja -C $BUILD _C _C_cuda" > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"
  exit 1
fi
echo "build: $((SECONDS - start)) s"
cp "$BUILD"/_C*.so python/moeweave/
export PYTHONPATH=$PWD/python PYTHONUNBUFFERED=1
# -o filterwarnings=: pyproject's filters name pydantic's warning class, and the image may lack pydantic.
PYTEST=("$PY" -m pytest -q -p no:cacheprovider -o filterwarnings= -o addopts=-ra)

timeout 240 "${PYTEST[@]}" tests/cuda 2>&1 | tee "$OUT/tests.log" | tail -25
(cd bench && timeout 180 "$PY" cuda_kernels.py) 2>&1 | tee "$OUT/bench.log"
cp bench/results/cuda_kernels.jsonl "$OUT/" 2>/dev/null
timeout 120 compute-sanitizer --tool memcheck --print-limit 20 "${PYTEST[@]}" -x \
  tests/cuda/test_cuda_quant.py tests/cuda/test_expert_pool.py > "$OUT/memcheck.log" 2>&1
echo "memcheck: exit $?"
tail -8 "$OUT/memcheck.log"
