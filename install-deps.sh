#!/usr/bin/env bash
# Installs the Debian packages vdm needs, only those missing, and says what it installs.
# Idempotent: a second run installs nothing. Usage: ./install-deps.sh [--check] [--fuzz]
# --fuzz adds clang and its libFuzzer runtime, for the fuzz targets (make fuzz).
set -euo pipefail

check_only=0
with_fuzz=0
for arg in "$@"; do
  case "$arg" in
    --check) check_only=1 ;;
    --fuzz) with_fuzz=1 ;;
    *) echo "install-deps: unknown argument '$arg'; use --check and/or --fuzz" >&2; exit 2 ;;
  esac
done

PACKAGES=(
  build-essential cmake ccache pkg-config
  libtorch-dev            # LibTorch 1.13 (CPU)
  libopenblas0-pthread    # fast BLAS (Debian's default reference BLAS is ~20x slower)
  libdnnl-dev             # oneDNN's headers: Linear calls the matmul LibTorch links (src/models/linear_onednn.h)
  ocl-icd-opencl-dev      # Debian's oneDNN CMake package requires OpenCL (only recommended by libdnnl-dev)
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libavfilter-dev
  ffmpeg                  # ffprobe, used by the tests to check outputs independently
  libfmt-dev nlohmann-json3-dev libcli11-dev libyaml-cpp-dev libssl-dev
  libgtest-dev libgmock-dev libbenchmark-dev
)
if [ "$with_fuzz" -eq 1 ]; then
  PACKAGES+=(clang libclang-rt-dev)  # libFuzzer and the sanitizer runtimes for clang
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi
if [ "$check_only" -eq 1 ]; then
  echo "install-deps: missing: ${missing[*]}"
  exit 1
fi

echo "install-deps: installing ${#missing[@]} missing package(s): ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y --no-install-recommends "${missing[@]}"; then
  echo "install-deps: apt-get install failed; refreshing the package index and retrying"
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi

# Make sure the fast BLAS is the one LibTorch picks up.
if [ -e /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 ]; then
  $SUDO update-alternatives --set libblas.so.3-x86_64-linux-gnu \
    /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 >/dev/null 2>&1 || true
fi
echo "install-deps: done"
