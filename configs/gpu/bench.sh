#!/usr/bin/env bash
# GPU check and benchmark in one go, for a machine with a CUDA GPU, Python's LibTorch (CUDA) and no
# FFmpeg headers:
#   1. builds vdm (FFmpeg off) with vdm's CUDA kernels, and the CUDA test suite;
#   2. runs the CUDA tests (each vdm kernel against LibTorch, the UNet on CUDA against the CPU);
#   3. times the ModelScope 1.7B UNet3D step (random weights from configs/) at batch 2 (guidance),
#      16 frames at 256x256: float16 and bfloat16, NCHW and channels-last, eager and as a CUDA graph,
#      and with single vdm kernels left out (VDM_DISABLE_CUDA_KERNELS) against LibTorch's operators;
#   4. profiles the device time per CUDA kernel of a few eager steps in each layout.
# Prints one table row per run for docs/performance.md and the top kernels; JSON reports and logs
# land in OUT_DIR.
#
#   configs/gpu/bench.sh OUT_DIR [STEPS=20]        (QUICK=1: fewer rows)
#
# Missing header-only dependencies (nlohmann/json.hpp, CLI/CLI.hpp) are taken from
# .gpu-deps/include, and GoogleTest's sources from .gpu-deps/googletest, when those folders exist.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:?usage: bench.sh OUT_DIR [STEPS]}
STEPS=${2:-20}
mkdir -p "$OUT"
start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - start )) s"; }
PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
export CUDACXX=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
EXTRA=()
if [ -d .gpu-deps/include ]; then EXTRA+=(-DVDM_EXTRA_INCLUDE="$PWD/.gpu-deps/include"); fi
if [ -d .gpu-deps/googletest ]; then EXTRA+=(-DVDM_GTEST_SOURCE="$PWD/.gpu-deps/googletest"); fi
LOG="$OUT/build.log"
# VDM_OPENMP=OFF: the pip LibTorch carries its own renamed libgomp; vdm's CPU kernels (not used on
# the GPU path) stay out of a second OpenMP runtime there.
configure() {
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PREFIX" -DVDM_WITH_FFMPEG=OFF \
    -DVDM_OPENMP=OFF -DVDM_BUILD_BENCHMARKS=OFF -DCMAKE_CXX_FLAGS=-DFMT_HEADER_ONLY "${EXTRA[@]}" "$@" >> "$LOG" 2>&1
}
TESTS=1
if ! configure -DVDM_BUILD_TESTS=ON -DVDM_CUDA_KERNELS=ON; then
  echo "configure with tests failed; building without them"; TESTS=0
  rm -rf build-gpu; configure -DVDM_BUILD_TESTS=OFF -DVDM_CUDA_KERNELS=ON || { tail -30 "$LOG"; exit 1; }
fi
grep -E '^-- vdm:' "$LOG" | sort -u
if ! cmake --build build-gpu --target vdm -j"$(nproc)" >> "$LOG" 2>&1; then
  grep -E 'error|Error' "$LOG" | head -20
  echo "build with vdm's CUDA kernels failed; building without them"
  configure -DVDM_CUDA_KERNELS=OFF && cmake --build build-gpu --target vdm -j"$(nproc)" >> "$LOG" 2>&1 \
    || { tail -30 "$LOG"; exit 1; }
fi
if [ "$TESTS" = 1 ] && ! cmake --build build-gpu --target cuda_kernels_test -j"$(nproc)" >> "$LOG" 2>&1; then
  grep -E 'error' "$LOG" | head -10; echo "cuda_kernels_test did not build"; TESTS=0
fi
echo "build $(elapsed)"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader || true
if [ "$TESTS" = 1 ]; then
  timeout 300 ./build-gpu/tests/cuda_kernels_test > "$OUT/cuda_tests.log" 2>&1; echo "cuda tests rc=$? $(elapsed)"
  grep -E '^\[  (PASSED|FAILED|SKIPPED) |Failure|rel|expected' "$OUT/cuda_tests.log" | head -30
fi

bench() {  # name, then vdm bench flags
  local name=$1; shift
  timeout 240 ./build-gpu/vdm bench --config configs/modelscope-t2v-1.7b --frames 16 --width 256 --height 256 \
    --guidance 7.5 --device cuda --json "$@" > "$OUT/$name.json" 2> "$OUT/$name.log" \
    || { echo "$name failed: $(tail -3 "$OUT/$name.log")"; return 1; }
}
row() {  # name, dtype, layout, mode
  python3 - "$OUT/$1.json" "$2" "$3" "$4" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
st = next(v for k, v in r["stages"].items() if k.startswith("unet_step"))
mem = r.get("peak_device_mb", 0) / 1024
vae = r["stages"].get("vae_decode")
extra = f" (VAE decode of the 16 frames {vae['median_ms']:.1f} ms)" if vae else ""
shallow = r["stages"].get("unet_step_shallow")
if shallow:
    extra += f" (DeepCache shallow pass, branch 0: {shallow['median_ms']:.1f} ms)"
print(f"| {sys.argv[2]} | {sys.argv[3]} | {sys.argv[4]} | {st['median_ms']:.1f} | {st['min_ms']:.1f} | {st['max_ms']:.1f} | {mem:.1f} GiB |{extra}", flush=True)
PY
}
echo "| dtype | layout | mode | UNet step median (ms) | min | max | peak memory |"
echo "|---|---|---|---|---|---|---|"
# dtype, channels-last, mode, then optional: "nobench" (cuDNN benchmark off), "noqkv" (q, k, v
# projections apart), "no:KERNELS" (vdm's CUDA kernels left out, VDM_DISABLE_CUDA_KERNELS), "vae"
# (the VAE decode timed too, 3 runs), "upsep" / "vae-upsep" (the upsamplers as upsampling then
# convolution, VDM_UPSAMPLE=separate), "tconv3d" (the temporal convolutions as NDHWC Conv3d instead
# of 2-D convolutions over [B, C, F, H*W], VDM_TEMPORAL_CONV=conv3d), "deepcache" (DeepCache's shallow
# UNet pass at branch 0 timed too), "freeu" (FreeU's factors on the two deepest up blocks, in the
# captured graph: checks that its FFTs capture).
# QUICK=1: the channels-last rows, the VAE decode in both layouts and the A/B rows of the changes
# not yet measured on a GPU.
RUNS=("float16 on graph" "float16 on eager vae" "float16 off eager vae" "float16 off graph" "bfloat16 on graph"
      "float16 on graph nobench" "float16 on graph no:layer_norm" "float16 on graph no:geglu"
      "float16 on graph no:short_attention" "float16 on graph no:bias_residual" "float16 on graph noqkv"
      "float16 on graph upsep" "float16 on eager vae-upsep" "float16 on graph tconv3d" "float16 on eager deepcache"
      "float16 on graph freeu")
[ "${QUICK:-0}" = 1 ] && RUNS=("float16 on graph" "float16 on eager vae" "float16 off eager vae" "bfloat16 on graph" "float16 on graph no:layer_norm"
                                "float16 on graph no:short_attention" "float16 on graph no:bias_residual" "float16 on graph noqkv"
                                "float16 on graph upsep" "float16 on eager vae-upsep" "float16 on graph tconv3d"
                                "float16 on eager deepcache" "float16 on graph freeu")
for run in "${RUNS[@]}"; do
  read -r dtype layout mode extra <<< "$run"
  flags=(--dtype "$dtype" --channels-last "$layout" --steps "$STEPS")
  [ "$mode" = graph ] && flags+=(--cuda-graph)
  [ "${extra:-}" = nobench ] && flags+=(--no-cudnn-benchmark)
  [ "${extra:-}" = noqkv ] && flags+=(--fuse-qkv off)
  [ "${extra:-}" = deepcache ] && flags+=(--deep-cache-branch 0)
  [ "${extra:-}" = freeu ] && flags+=(--freeu b1=1.2,b2=1.4,s1=0.9,s2=0.2)
  case "${extra:-}" in vae*) flags+=(--repeat 3) ;; *) flags+=(--skip-vae) ;; esac
  upsample=""; [[ "${extra:-}" == *upsep ]] && upsample=separate
  tconv=""; [ "${extra:-}" = tconv3d ] && tconv=conv3d
  disable=""; [[ "${extra:-}" == no:* ]] && disable=${extra#no:}
  name="unet_${dtype}_cl-${layout}_${mode}${extra:+_${extra/:/-}}"
  label=$([ "$layout" = on ] && echo channels-last || echo nchw)${extra:+ ($extra)}
  VDM_UPSAMPLE=$upsample VDM_TEMPORAL_CONV=$tconv VDM_DISABLE_CUDA_KERNELS=$disable bench "$name" "${flags[@]}" && row "$name" "$dtype" "$label" "$mode"
done
echo "benchmarks $(elapsed)"
LAYOUTS=(on off); [ "${QUICK:-0}" = 1 ] && LAYOUTS=(on)
for layout in "${LAYOUTS[@]}"; do
  name="profile_float16_cl-${layout}"
  bench "$name" --dtype float16 --channels-last "$layout" --steps 3 --profile --skip-vae || continue
  python3 - "$OUT/$name.json" "$layout" <<'PY'
import json, sys, re
r = json.load(open(sys.argv[1]))
ops = r["unet_ops"]["ops"]
total = sum(o["self_ms"] for o in ops) / 3
print(f"\nchannels-last {sys.argv[2]}: {total:.1f} ms of kernel time per step, {len(ops)} kernels")
def short(n):
    n = re.sub(r"<.*", "", n.replace("void ", ""))
    return n[-70:]
for o in ops[:22]:
    print(f"  {o['self_ms']/3:7.2f} ms {o['calls']//3:5d}x  {short(o['name'])}")
PY
done
echo "total $(elapsed)"
