#!/usr/bin/env bash
# Retrains the shapes model on a CUDA machine within a wall-clock budget, then benchmarks it:
# builds vdm without FFmpeg against the Python LibTorch, runs every stage of the recipe with time
# budgets derived from what is left after the build, and runs `vdm eval shapes` on the result.
#
#   [RECIPE=configs/shapes/recipe.json] configs/shapes/train_gpu.sh OUT_DIR [TOTAL_SECONDS=540] [BATCH_SCALE=8] [EVAL_N=24]
#
# Header-only dependencies missing on the machine (nlohmann/json.hpp, CLI/CLI.hpp) are taken
# from .gpu-deps/include when that folder exists.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:?usage: train_gpu.sh OUT_DIR [TOTAL_SECONDS] [BATCH_SCALE]}
TOTAL=${2:-540}
SCALE=${3:-8}
EVAL_N=${4:-24}
RECIPE=${RECIPE:-configs/shapes/recipe.json}
start=$(date +%s)
mkdir -p "$OUT"
PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
EXTRA=()
if [ -d .gpu-deps/include ]; then EXTRA=(-DVDM_EXTRA_INCLUDE="$PWD/.gpu-deps/include"); fi
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PREFIX" -DVDM_WITH_FFMPEG=OFF \
  -DVDM_BUILD_TESTS=OFF -DVDM_BUILD_BENCHMARKS=OFF -DCMAKE_CXX_FLAGS=-DFMT_HEADER_ONLY "${EXTRA[@]}" > "$OUT/build.log" 2>&1
cmake --build build-gpu --target vdm -j"$(nproc)" >> "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
built=$(date +%s)
left=$((TOTAL - (built - start)))
vae=$((left * 17 / 100))
unet=$((left * 63 / 100))
echo "build $((built - start)) s; budgets: vae ${vae} s, unet ${unet} s"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
./build-gpu/vdm train --recipe "$RECIPE" --out "$OUT" --device cuda --batch-scale "$SCALE" \
  --time-budget-vae "$vae" --time-budget-unet "$unet" --progress json > "$OUT/train.log" 2>&1 || { tail -30 "$OUT/train.log"; exit 1; }
grep -v '^{' "$OUT/train.log" | tail -12
trained=$(date +%s)
echo "training $((trained - built)) s"
./build-gpu/vdm eval shapes --model "$OUT/model" --device cuda --n "$EVAL_N" --steps 25 --guidance 4 --out "$OUT/eval" \
  > "$OUT/eval.log" 2>&1 || { tail -20 "$OUT/eval.log"; exit 1; }
grep -v ' ok$' "$OUT/eval.log" | tail -20
echo "total $(( $(date +%s) - start )) s"
