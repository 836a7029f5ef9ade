// Helpers shared by vdm's CUDA kernels: float32 conversions of the storage types, 16-byte packs,
// dynamic shared memory, launches.
// With VDM_CUDA_EMULATION defined the kernels compile as C++ against tests/cuda_emulation, which runs
// each block's threads on the CPU (tests/cuda_emulation/cuda_emulation.h); that is how the test
// suite checks them on machines without a GPU.
#pragma once
#include "models/cuda_kernels.h"

#ifdef VDM_CUDA_EMULATION
#include "cuda_emulation.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include <cstdint>
#include <stdexcept>
#include <string>

namespace vdm::models::VDM_CUDA_KERNELS_NAMESPACE::detail {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Vec elements loaded and stored as one access (16 bytes for Vec = 16 / sizeof(T)).
template <typename T, int Vec>
struct alignas(sizeof(T) * Vec) Pack {
  T v[Vec];
};

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The block's dynamic shared memory (the launch's `shared` bytes), as T.
template <typename T>
__device__ __forceinline__ T* dynamic_shared() {
#ifdef VDM_CUDA_EMULATION
  return static_cast<T*>(::vdm::cuda_emulation::dynamic_shared());
#else
  extern __shared__ float4 vdm_dynamic_shared[];  // one type for every T: 16-byte aligned
  return reinterpret_cast<T*>(vdm_dynamic_shared);
#endif
}

// kernel<<<grid, block, shared, stream>>>(args...), then throws std::runtime_error naming `name`
// when the launch failed.
template <typename... Params, typename... Args>
void launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared, cudaStream_t stream,
            Args... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "launch: one argument per kernel parameter");
#ifdef VDM_CUDA_EMULATION
  (void)stream;
  ::vdm::cuda_emulation::run_grid(name, grid, block, shared, [&] { kernel(Params(args)...); });
#else
  kernel<<<grid, block, shared, stream>>>(Params(args)...);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("vdm CUDA kernel ") + name + ": launch failed: " + cudaGetErrorString(err));
#endif
}

}  // namespace vdm::models::VDM_CUDA_KERNELS_NAMESPACE::detail

namespace vdm::models::VDM_CUDA_KERNELS_NAMESPACE {
using detail::from_float;
using detail::Pack;
using detail::to_float;
}  // namespace vdm::models::VDM_CUDA_KERNELS_NAMESPACE
