#!/usr/bin/env bash
# The GPU benchmark in one command (after benchmarks/gpu_prepare.sh): SD 2.1-base architecture with
# random weights, 512x512, paper settings (S=10, N=10, t1=5, t2=7, CFG 7.5, background guidance, DAM
# with its gate forced open), bf16, batches 1 and 8, DDIM-50 and the fp32 reference in the same run.
# Writes bench-gpu.json / .png / .log to $OUT (the device tool's folder) or the folder it is run
# from; an existing one is refused unless --overwrite is passed. Extra arguments go to the
# benchmark, e.g.:  bash benchmarks/gpu_run.sh --compile
set -euo pipefail
out="${OUT:-$PWD}"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac  # relative to where it is run, not to the checkout
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
overwrite=0
for arg in "$@"; do [ "$arg" = "--overwrite" ] && overwrite=1; done
if [ "$overwrite" = 0 ]; then
  for f in "$out"/bench-gpu.json "$out"/bench-gpu.png "$out"/bench-gpu.log; do
    if [ -e "$f" ]; then echo "$f already exists; pass --overwrite to replace it, or set OUT=ANOTHER_FOLDER" >&2; exit 2; fi
  done
fi
# the carried wheels go first on the path when diffusers/pydantic are missing or cv2 is 5.x (no Haar cascades)
cv2_ok='import cv2, sys; sys.exit(int(cv2.__version__.split(".")[0]) >= 5)'
if [ -d .bench/whl ] && ! { "$python" -c "import diffusers, pydantic" 2>/dev/null && "$python" -c "$cv2_ok" 2>/dev/null; }; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/sow-site .bench/whl/*.whl
  export PYTHONPATH="/tmp/sow-site${PYTHONPATH:+:$PYTHONPATH}"
fi
model="${SD21_CONFIG:-.bench/sd21-base-config}"
[ -d "$model" ] || model=../shared/data/sd21-base-config
if [ ! -f "$model/unet/config.json" ]; then
  echo "SD 2.1-base configs not found: run benchmarks/gpu_prepare.sh first, or set SD21_CONFIG=FOLDER (a diffusers folder of its configs)" >&2
  exit 2
fi
mkdir -p "$out"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)'
  "$python" -c 'import cv2; print("cv2", cv2.__version__, "haar", bool(cv2.data.haarcascades))' || echo "cv2 missing"
} 2>&1 | tee "$out/bench-gpu-versions.log"
# SOW_DEBUG=1: a failure on a lent GPU (rare, short-lived) shows its whole traceback, not one line
SOW_DEBUG=1 PYTHONUNBUFFERED=1 "$python" benchmarks/bench_sow.py --model "$model" --random-weights --device cuda --dtype bf16 \
  --batch 1,8 --warmup 2 --repeats 5 --baseline-repeats 3 \
  --json "$out/bench-gpu.json" --plot "$out/bench-gpu.png" "$@" 2>&1 | tee "$out/bench-gpu.log"
# the flow families (SD 3.5 Medium, FLUX.1 schnell, FLUX.2 klein 4B, Qwen-Image, Z-Image-Turbo) at 1024², one SOW image each, beside
# their own diffusers pipelines on the same modules (benchmarks/flow_gpu_run.py); FLOW=0 skips them
if [ "${FLOW:-1}" = 1 ]; then
  SOW_DEBUG=1 PYTHONUNBUFFERED=1 "$python" benchmarks/flow_gpu_run.py --out "$out/bench-flow-gpu.json" 2>&1 | tee "$out/bench-flow-gpu.log"
fi
