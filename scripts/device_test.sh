#!/usr/bin/env bash
# Build modaq on a GPU machine (no network) and run the GPU tests, then the CPU suite's fast
# part as a smoke check.  Usage (repo root):  bash scripts/device_test.sh [pytest args...]
# Logs go to $OUT (if set) so the device tool brings them back.
set -euo pipefail
out=${OUT:-/tmp/modaq-device}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/device.txt"
start=$(date +%s)
MODAQ_CUDA_ARCHS=${MODAQ_CUDA_ARCHS:-90a} python3 -m pip install --no-build-isolation --no-deps -e . -q 2>&1 | tail -n 20
echo "build: $(( $(date +%s) - start )) s" | tee -a "$out/device.txt"
python3 -c "import modaq.ops as o, json; print(json.dumps(o.backends(), indent=1))" | tee "$out/backends.json"
python3 -m pytest -q -m gpu -p no:cacheprovider "$@" 2>&1 | tee "$out/gpu_tests.txt"
