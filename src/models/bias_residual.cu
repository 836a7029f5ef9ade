// The end of a residual branch in one pass: y = (x + bias + residual) * scale, with x the branch's
// last convolution run without its bias, over channels-innermost memory [rows, C]. LibTorch adds a
// convolution's bias to a channels-last output as a strided broadcast pass, then the residual as a
// second pass: five tensor-sized memory passes instead of three.
#include "models/cuda_common.cuh"
#include "models/cuda_kernels.h"

#include <algorithm>
#include <stdexcept>

namespace vdm::models::VDM_CUDA_KERNELS_NAMESPACE {

namespace {

constexpr int kThreads = 256;

// Pack p covers channels [(p % per_row) * Vec, + Vec) of row p / per_row.
template <typename T, int Vec>
__global__ void __launch_bounds__(kThreads)
    bias_residual_kernel(const T* x, const T* __restrict__ bias, const T* __restrict__ residual, float scale,
                         int64_t packs, int64_t per_row, T* y) {  // y may be x: neither is __restrict__
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t p = blockIdx.x * int64_t(kThreads) + threadIdx.x; p < packs; p += stride) {
    const int64_t c0 = (p % per_row) * Vec;
    const Pack<T, Vec> a = reinterpret_cast<const Pack<T, Vec>*>(x)[p];
    const Pack<T, Vec> r = reinterpret_cast<const Pack<T, Vec>*>(residual)[p];
    Pack<T, Vec> out;
#pragma unroll
    for (int k = 0; k < Vec; ++k) {
      const float b = bias ? to_float(bias[c0 + k]) : 0.f;
      out.v[k] = from_float<T>((to_float(a.v[k]) + b + to_float(r.v[k])) * scale);
    }
    reinterpret_cast<Pack<T, Vec>*>(y)[p] = out;
  }
}

template <typename T>
void launch(const T* x, const T* bias, const T* residual, int64_t rows, int64_t C, float scale, T* y,
            cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  auto grid = [](int64_t packs) { return unsigned(std::min<int64_t>((packs + kThreads - 1) / kThreads, 1 << 16)); };
  if (C % kVec == 0 && detail::aligned16(x) && detail::aligned16(residual) && detail::aligned16(y)) {
    const int64_t packs = rows * C / kVec;
    detail::launch("bias_residual", bias_residual_kernel<T, kVec>, grid(packs), kThreads, 0, stream, x, bias, residual,
                   scale, packs, C / kVec, y);
  } else {
    detail::launch("bias_residual", bias_residual_kernel<T, 1>, grid(rows * C), kThreads, 0, stream, x, bias, residual,
                   scale, rows * C, C, y);
  }
}

}  // namespace

void bias_residual(DType dtype, const void* x, const void* bias, const void* residual, int64_t rows, int64_t channels,
                   double scale, void* y, void* stream) {
  if (rows < 0 || channels <= 0) throw std::invalid_argument("bias_residual: rows must be >= 0 and channels > 0");
  if (rows == 0) return;
  auto st = static_cast<cudaStream_t>(stream);
  const float sc = float(scale);
  switch (dtype) {
    case DType::kFloat:
      launch(static_cast<const float*>(x), static_cast<const float*>(bias), static_cast<const float*>(residual), rows,
             channels, sc, static_cast<float*>(y), st);
      break;
    case DType::kHalf:
      launch(static_cast<const __half*>(x), static_cast<const __half*>(bias), static_cast<const __half*>(residual),
             rows, channels, sc, static_cast<__half*>(y), st);
      break;
    case DType::kBFloat16:
      launch(static_cast<const __nv_bfloat16*>(x), static_cast<const __nv_bfloat16*>(bias),
             static_cast<const __nv_bfloat16*>(residual), rows, channels, sc, static_cast<__nv_bfloat16*>(y), st);
      break;
  }
}

}  // namespace vdm::models::VDM_CUDA_KERNELS_NAMESPACE
