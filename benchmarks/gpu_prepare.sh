#!/usr/bin/env bash
# Prepare .bench/ for a GPU run on a machine without network (the device machine of this workplace):
# the wheels it lacks (diffusers, pydantic and their small needs, and opencv-python-headless<5:
# OpenCV 5 ships no Haar cascades, so the heuristic planner would fail; for CPython 3.12 x86-64)
# and the SD 2.1-base configs. Run it here, from anywhere in the checkout; then, on the GPU machine, in the
# repository root with .bench carried:  bash benchmarks/gpu_run.sh
set -euo pipefail
root="$(git rev-parse --show-toplevel)"
cd "$root"
git check-ignore -q .bench/whl/x.whl || { echo ".bench/ must be ignored (.gitignore)" >&2; exit 2; }
python="${PYTHON:-python3}"  # any Python with pip; it only downloads
config="${SD21_CONFIG:-$root/../shared/data/sd21-base-config}"
[ -d "$config" ] || config="$root/../../shared/data/sd21-base-config"  # a worktree sits one level deeper
[ -f "$config/unet/config.json" ] || { echo "SD 2.1-base configs not found; set SD21_CONFIG=PATH" >&2; exit 2; }

mkdir -p .bench/whl
rm -rf .bench/sd21-base-config && cp -r "$config" .bench/sd21-base-config
for flow in sd35-medium-config flux1-schnell-config flux2-klein-4b-config qwen-image-config z-image-turbo-config; do  # benchmarks/flow_gpu_run.py
  [ -d "$(dirname "$config")/$flow" ] && { rm -rf ".bench/$flow"; cp -r "$(dirname "$config")/$flow" ".bench/$flow"; }
done
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .bench/whl \
  "diffusers==${DIFFUSERS_VERSION:-0.42.1}" "pydantic==${PYDANTIC_VERSION:-2.14.3}" \
  "pydantic-core==${PYDANTIC_CORE_VERSION:-2.50.4}" "annotated-types==0.8.0" "typing-inspection==0.4.5" \
  "typing-extensions==4.16.0" "opencv-python-headless${OPENCV_VERSION:-==4.14.0}"
# importlib-metadata (and its zipp) are not carried: nothing on the GPU machine's path needs them
du -sh .bench
echo "ready: run 'bash benchmarks/gpu_run.sh' on the GPU machine with .bench carried"
