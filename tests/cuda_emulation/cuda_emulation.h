// A CPU stand-in for the parts of CUDA that vdm's kernels use, so that the test suite runs the
// kernels' own source (src/models/*.cu, compiled as C++ with VDM_CUDA_EMULATION) on machines without
// a GPU.
//
// Each block runs its threads as cooperative fibers on the calling thread. A thread runs until it
// reaches __syncthreads(), a warp shuffle or its end; a block barrier opens once every thread still
// running waits at it, a warp's once its 32 lanes do. The emulator checks what CUDA leaves undefined
// and a GPU would not report:
//   - a barrier that can never open (threads of one block waiting at different barriers);
//   - a shuffle over the full mask with a lane of the warp already returned;
//   - blocks that are not a whole number of warps.
// The order in which a block's threads run between barriers is a setting (ThreadOrder): a kernel
// that reads shared memory before the barrier that should guard it gives different results in the
// two orders. Dynamic shared memory starts as NaN in every block.
//
// Not emulated: memory spaces (pointers are host pointers), atomics, streams (launches run at once),
// warp divergence within a shuffle (lanes shuffle only at the same call).
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct CUstream_st;
using cudaStream_t = CUstream_st*;
enum cudaError_t { cudaSuccess = 0 };
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t) { return "no error"; }

// The storage types: LibTorch's round to nearest even, as __float2half_rn and __float2bfloat16_rn.
using __half = c10::Half;
using __nv_bfloat16 = c10::BFloat16;
inline float __half2float(__half v) { return static_cast<float>(v); }
inline float __bfloat162float(__nv_bfloat16 v) { return static_cast<float>(v); }
inline __half __float2half_rn(float v) { return __half(v); }
inline __nv_bfloat16 __float2bfloat16_rn(float v) { return __nv_bfloat16(v); }

struct alignas(16) float4 {
  float x, y, z, w;
};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Static storage is shared by all threads of a block, and blocks run one after another.
#define __shared__ static

inline float rsqrtf(float v) { return 1.f / std::sqrt(v); }
inline float __expf(float v) { return std::exp(v); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline int64_t min(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max(int64_t a, int64_t b) { return a > b ? a : b; }

namespace vdm::cuda_emulation {

enum class ThreadOrder { kAscending, kDescending };
// The order in which each block's threads run between barriers, for launches from now on.
void set_thread_order(ThreadOrder order);

// Runs `body` once per thread of every block of the grid; throws std::runtime_error naming `kernel`
// for a block shape or a barrier that CUDA would leave undefined, or when `body` throws.
void run_grid(const char* kernel, dim3 grid, dim3 block, std::size_t shared_bytes, const std::function<void()>& body);

// The running thread's indices and the launch's shape.
const dim3& thread_idx();
const dim3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();
void* dynamic_shared();

void sync_block();
// Publishes `bytes` (at most 16) of the calling lane and returns the slot of lane `src` of its warp,
// after all 32 lanes have published; `full_mask` requires every lane of the warp to be running.
void exchange(const void* value, std::size_t bytes, int src, bool full_mask, void* out);

template <typename T>
T shuffle(unsigned mask, T value, int src) {
  static_assert(sizeof(T) <= 16, "a shuffle moves at most 16 bytes");
  T out;
  exchange(&value, sizeof(T), src, mask == 0xffffffffu, &out);
  return out;
}

}  // namespace vdm::cuda_emulation

#define threadIdx (::vdm::cuda_emulation::thread_idx())
#define blockIdx (::vdm::cuda_emulation::block_idx())
#define blockDim (::vdm::cuda_emulation::block_dim())
#define gridDim (::vdm::cuda_emulation::grid_dim())

inline void __syncthreads() { ::vdm::cuda_emulation::sync_block(); }

template <typename T>
T __shfl_sync(unsigned mask, T value, int src_lane, int width = 32) {
  const int lane = int(threadIdx.x % 32);
  return ::vdm::cuda_emulation::shuffle(mask, value, (lane / width) * width + src_lane % width);
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  const int lane = int(threadIdx.x % 32);
  const int src = lane ^ lane_mask;
  // A source beyond the lane's own segment of `width` lanes returns the lane's own value.
  return ::vdm::cuda_emulation::shuffle(mask, value, src / width == lane / width ? src : lane);
}

template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  const int lane = int(threadIdx.x % 32);
  const int src = lane + int(delta);
  return ::vdm::cuda_emulation::shuffle(mask, value, src / width == lane / width ? src : lane);
}
