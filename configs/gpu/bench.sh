#!/usr/bin/env bash
# GPU benchmark in one go: builds vdm without FFmpeg against the machine's Python LibTorch (CUDA),
# then times the ModelScope 1.7B UNet3D step (random weights from configs/) at batch 2 (guidance),
# 16 frames at 256x256, in float16 and bfloat16, eager and as a CUDA graph. Prints one table row per
# run for docs/performance.md; the JSON reports land in OUT_DIR.
#
#   configs/gpu/bench.sh OUT_DIR [STEPS=20]
#
# Header-only dependencies missing on the machine (nlohmann/json.hpp, CLI/CLI.hpp) are taken from
# .gpu-deps/include when that folder exists.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:?usage: bench.sh OUT_DIR [STEPS]}
STEPS=${2:-20}
mkdir -p "$OUT"
start=$(date +%s)
PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
EXTRA=()
if [ -d .gpu-deps/include ]; then EXTRA=(-DVDM_EXTRA_INCLUDE="$PWD/.gpu-deps/include"); fi
# VDM_OPENMP=OFF: the pip LibTorch carries its own renamed libgomp; vdm's CPU kernels (not used on
# the GPU path) stay out of a second OpenMP runtime there.
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PREFIX" -DVDM_WITH_FFMPEG=OFF -DVDM_OPENMP=OFF \
  -DVDM_BUILD_TESTS=OFF -DVDM_BUILD_BENCHMARKS=OFF -DCMAKE_CXX_FLAGS=-DFMT_HEADER_ONLY "${EXTRA[@]}" > "$OUT/build.log" 2>&1
cmake --build build-gpu --target vdm -j"$(nproc)" >> "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "build $(( $(date +%s) - start )) s"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "| dtype | mode | UNet step median (ms) | min | max | peak memory |"
echo "|---|---|---|---|---|---|"
for dtype in float16 bfloat16; do
  for graph in "" "--cuda-graph"; do
    name="unet_${dtype}${graph:+_graph}"
    ./build-gpu/vdm bench --config configs/modelscope-t2v-1.7b --frames 16 --width 256 --height 256 \
      --guidance 7.5 --steps "$STEPS" --dtype "$dtype" --device cuda --skip-vae $graph --json \
      > "$OUT/$name.json" 2> "$OUT/$name.log" || { tail -5 "$OUT/$name.log"; continue; }
    python3 - "$OUT/$name.json" "$dtype" "${graph:-eager}" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
st = next(v for k, v in r["stages"].items() if k.startswith("unet_step"))
mem = r.get("peak_device_mb", 0) / 1024
print(f"| {sys.argv[2]} | {sys.argv[3].lstrip('-')} | {st['median_ms']:.1f} | {st['min_ms']:.1f} | {st['max_ms']:.1f} | {mem:.1f} GiB |")
PY
  done
done
echo "total $(( $(date +%s) - start )) s"
