// GEGLU over the two halves of a projection: out[m, j] = h[m, j] * GELU(h[m, inner + j]).
#include "models/cuda_common.cuh"
#include "models/cuda_kernels.h"

#include <algorithm>

namespace vdm::models::VDM_CUDA_KERNELS_NAMESPACE {

namespace {

constexpr int kThreads = 256;

template <typename T, int Vec>
__global__ void __launch_bounds__(kThreads) geglu_kernel(const T* __restrict__ h, T* __restrict__ out, int64_t inner,
                                                         int64_t packs) {
  const int64_t per_row = inner / Vec;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t p = blockIdx.x * int64_t(kThreads) + threadIdx.x; p < packs; p += stride) {
    const int64_t m = p / per_row, j = (p - m * per_row) * Vec;
    const T* row = h + m * 2 * inner;
    const Pack<T, Vec> a = *reinterpret_cast<const Pack<T, Vec>*>(row + j);
    const Pack<T, Vec> b = *reinterpret_cast<const Pack<T, Vec>*>(row + inner + j);
    Pack<T, Vec> o;
#pragma unroll
    for (int k = 0; k < Vec; ++k) {
      const float g = to_float(b.v[k]);
      o.v[k] = from_float<T>(to_float(a.v[k]) * 0.5f * g * (1.f + erff(g * 0.70710678118654752f)));
    }
    *reinterpret_cast<Pack<T, Vec>*>(out + m * inner + j) = o;
  }
}

template <typename T>
void launch(const T* h, T* out, int64_t rows, int64_t inner, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  auto grid = [](int64_t packs) { return unsigned(std::min<int64_t>((packs + kThreads - 1) / kThreads, 1 << 16)); };
  if (inner % kVec == 0 && detail::aligned16(h) && detail::aligned16(out)) {
    const int64_t packs = rows * inner / kVec;
    detail::launch("geglu", geglu_kernel<T, kVec>, grid(packs), kThreads, 0, stream, h, out, inner, packs);
  } else {
    detail::launch("geglu", geglu_kernel<T, 1>, grid(rows * inner), kThreads, 0, stream, h, out, inner, rows * inner);
  }
}

}  // namespace

void geglu(DType dtype, const void* h, void* out, int64_t rows, int64_t inner, void* stream) {
  if (rows <= 0 || inner <= 0) return;
  auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat:
      launch(static_cast<const float*>(h), static_cast<float*>(out), rows, inner, st);
      break;
    case DType::kHalf:
      launch(static_cast<const __half*>(h), static_cast<__half*>(out), rows, inner, st);
      break;
    case DType::kBFloat16:
      launch(static_cast<const __nv_bfloat16*>(h), static_cast<__nv_bfloat16*>(out), rows, inner, st);
      break;
  }
}

}  // namespace vdm::models::VDM_CUDA_KERNELS_NAMESPACE
