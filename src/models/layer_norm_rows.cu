// LayerNorm over the last dimension of [rows, C], optionally of the sum of two inputs (a residual add
// and the norm after it, the sum written too): one warp per row, the row held in registers, exact
// two-pass statistics in float32, 16-byte loads and stores. LibTorch's kernel takes a block per row,
// which leaves most of a block idle at the 320 to 1280 channels of a UNet's tokens.
#include "models/cuda_common.cuh"
#include "models/cuda_kernels.h"

#include <algorithm>

namespace vdm::models::VDM_CUDA_KERNELS_NAMESPACE {

namespace {

constexpr int kWarps = 8;  // rows per block

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Packs: 16-byte packs per lane (the row has at most 32 * Packs packs of Vec elements).
template <typename T, int Vec, int Packs>
__global__ void __launch_bounds__(kWarps * 32)
    layer_norm_kernel(const T* __restrict__ x, const T* __restrict__ residual, const T* __restrict__ gamma,
                      const T* __restrict__ beta, int64_t rows, int C, float eps, T* __restrict__ sum_out,
                      T* __restrict__ y) {
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= rows) return;
  const int per_row = C / Vec;
  const T* xr = x + row * C;
  float v[Packs][Vec] = {};  // read only where written; the initialiser costs nothing once unrolled
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < Packs; ++i) {
    const int p = lane + 32 * i;
    if (p < per_row) {
      const Pack<T, Vec> in = *reinterpret_cast<const Pack<T, Vec>*>(xr + p * Vec);
      if (residual) {
        // The sum is stored in T and normalised as stored, as an add followed by a norm would.
        const Pack<T, Vec> r = *reinterpret_cast<const Pack<T, Vec>*>(residual + row * C + p * Vec);
        Pack<T, Vec> added;
#pragma unroll
        for (int k = 0; k < Vec; ++k) added.v[k] = from_float<T>(to_float(in.v[k]) + to_float(r.v[k]));
        *reinterpret_cast<Pack<T, Vec>*>(sum_out + row * C + p * Vec) = added;
#pragma unroll
        for (int k = 0; k < Vec; ++k) v[i][k] = to_float(added.v[k]);
      } else {
#pragma unroll
        for (int k = 0; k < Vec; ++k) v[i][k] = to_float(in.v[k]);
      }
#pragma unroll
      for (int k = 0; k < Vec; ++k) sum += v[i][k];
    }
  }
  const float mean = warp_sum(sum) / C;
  float sq = 0.f;
#pragma unroll
  for (int i = 0; i < Packs; ++i) {
    if (lane + 32 * i < per_row) {
#pragma unroll
      for (int k = 0; k < Vec; ++k) {
        const float d = v[i][k] - mean;
        sq += d * d;
      }
    }
  }
  const float rstd = rsqrtf(warp_sum(sq) / C + eps);
  T* yr = y + row * C;
#pragma unroll
  for (int i = 0; i < Packs; ++i) {
    const int p = lane + 32 * i;
    if (p < per_row) {
      Pack<T, Vec> g, b, out;
      if (gamma) g = *reinterpret_cast<const Pack<T, Vec>*>(gamma + p * Vec);
      if (beta) b = *reinterpret_cast<const Pack<T, Vec>*>(beta + p * Vec);
#pragma unroll
      for (int k = 0; k < Vec; ++k) {
        const float h = (v[i][k] - mean) * rstd;
        out.v[k] = from_float<T>(h * (gamma ? to_float(g.v[k]) : 1.f) + (beta ? to_float(b.v[k]) : 0.f));
      }
      *reinterpret_cast<Pack<T, Vec>*>(yr + p * Vec) = out;
    }
  }
}

template <typename T, int Vec>
void launch_vec(const T* x, const T* residual, const T* gamma, const T* beta, int64_t rows, int C, float eps,
                T* sum_out, T* y, cudaStream_t st) {
  const unsigned blocks = unsigned((rows + kWarps - 1) / kWarps);
  const int packs = (C / Vec + 31) / 32;
  const char* name = "layer_norm_rows";
  if (packs <= 1)
    detail::launch(name, layer_norm_kernel<T, Vec, 1>, blocks, kWarps * 32, 0, st, x, residual, gamma, beta, rows, C,
                   eps, sum_out, y);
  else if (packs <= 2)
    detail::launch(name, layer_norm_kernel<T, Vec, 2>, blocks, kWarps * 32, 0, st, x, residual, gamma, beta, rows, C,
                   eps, sum_out, y);
  else if (packs <= 4)
    detail::launch(name, layer_norm_kernel<T, Vec, 4>, blocks, kWarps * 32, 0, st, x, residual, gamma, beta, rows, C,
                   eps, sum_out, y);
  else
    detail::launch(name, layer_norm_kernel<T, Vec, 8>, blocks, kWarps * 32, 0, st, x, residual, gamma, beta, rows, C,
                   eps, sum_out, y);
}

template <typename T>
void launch(const T* x, const T* residual, const T* gamma, const T* beta, int64_t rows, int64_t C, double eps,
            T* sum_out, T* y, cudaStream_t st) {
  constexpr int kVec = 16 / sizeof(T);
  const bool aligned = detail::aligned16(x) && detail::aligned16(y) && (!gamma || detail::aligned16(gamma)) &&
                       (!beta || detail::aligned16(beta)) && (!residual || detail::aligned16(residual)) &&
                       (!sum_out || detail::aligned16(sum_out));
  if (aligned && C % kVec == 0 && C <= 256 * kVec)
    launch_vec<T, kVec>(x, residual, gamma, beta, rows, int(C), float(eps), sum_out, y, st);
  else if (C <= 256)
    launch_vec<T, 1>(x, residual, gamma, beta, rows, int(C), float(eps), sum_out, y, st);
  else
    throw std::invalid_argument("layer_norm_rows: a row must be at most 256 elements, or 256 aligned 16-byte packs");
}

}  // namespace

bool layer_norm_rows_supported(int64_t channels, int64_t element_size) {
  const int64_t vec = 16 / element_size;
  return channels > 0 && (channels <= 256 || (channels % vec == 0 && channels <= 256 * vec));
}

void layer_norm_rows(DType dtype, const void* x, const void* residual, const void* gamma, const void* beta,
                     int64_t rows, int64_t channels, double eps, void* sum, void* y, void* stream) {
  if (rows <= 0) return;
  if ((residual == nullptr) != (sum == nullptr))
    throw std::invalid_argument("layer_norm_rows: the residual and the sum's output come together");
  auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat:
      launch(static_cast<const float*>(x), static_cast<const float*>(residual), static_cast<const float*>(gamma),
             static_cast<const float*>(beta), rows, channels, eps, static_cast<float*>(sum), static_cast<float*>(y),
             st);
      break;
    case DType::kHalf:
      launch(static_cast<const __half*>(x), static_cast<const __half*>(residual), static_cast<const __half*>(gamma),
             static_cast<const __half*>(beta), rows, channels, eps, static_cast<__half*>(sum),
             static_cast<__half*>(y), st);
      break;
    case DType::kBFloat16:
      launch(static_cast<const __nv_bfloat16*>(x), static_cast<const __nv_bfloat16*>(residual),
             static_cast<const __nv_bfloat16*>(gamma), static_cast<const __nv_bfloat16*>(beta), rows, channels, eps,
             static_cast<__nv_bfloat16*>(sum), static_cast<__nv_bfloat16*>(y), st);
      break;
  }
}

}  // namespace vdm::models::VDM_CUDA_KERNELS_NAMESPACE
