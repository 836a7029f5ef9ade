// GroupNorm (+ SiLU) over channels-last tensors [N, rows, C]: three launches.
//   1. partial statistics: one block per (chunk of rows, group, sample), Welford in float32;
//   2. per (sample, group): the chunks merged into (mean, rstd);
//   3. the affine normalisation (and SiLU), vectorised 16-byte loads and stores along C.
#include "models/group_norm_nhwc.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

namespace vdm::models::cuda {

namespace {

constexpr int kThreads = 256;
// Enough blocks for the partial statistics to fill the chip several times over.
constexpr int64_t kTargetStatBlocks = 2048;
constexpr int64_t kMinRowsPerChunk = 8;

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

struct Welford {
  float mean = 0.f, m2 = 0.f, n = 0.f;
};

__device__ __forceinline__ Welford merge(const Welford& a, const Welford& b) {
  if (b.n == 0.f) return a;
  if (a.n == 0.f) return b;
  Welford r;
  r.n = a.n + b.n;
  const float delta = b.mean - a.mean;
  const float wb = b.n / r.n;
  r.mean = a.mean + delta * wb;
  r.m2 = a.m2 + b.m2 + delta * delta * a.n * wb;
  return r;
}

__device__ Welford block_merge(Welford w) {
  __shared__ Welford warps[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) {
    Welford o;
    o.mean = __shfl_down_sync(0xffffffffu, w.mean, offset);
    o.m2 = __shfl_down_sync(0xffffffffu, w.m2, offset);
    o.n = __shfl_down_sync(0xffffffffu, w.n, offset);
    w = merge(w, o);
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warps[warp] = w;
  __syncthreads();
  if (warp == 0) {
    w = lane < kThreads / 32 ? warps[lane] : Welford{};
    for (int offset = 16; offset > 0; offset /= 2) {
      Welford o;
      o.mean = __shfl_down_sync(0xffffffffu, w.mean, offset);
      o.m2 = __shfl_down_sync(0xffffffffu, w.m2, offset);
      o.n = __shfl_down_sync(0xffffffffu, w.n, offset);
      w = merge(w, o);
    }
  }
  return w;  // complete in thread 0
}

// grid (chunks, G, N); partial: [N, G, chunks, 3] (mean, m2, count).
template <typename T>
__global__ void __launch_bounds__(kThreads) partial_stats(const T* __restrict__ x, int64_t rows, int64_t C, int64_t D,
                                                          int64_t rows_per_chunk, float* __restrict__ partial) {
  const int64_t chunk = blockIdx.x, g = blockIdx.y, n = blockIdx.z;
  const int64_t r0 = chunk * rows_per_chunk;
  const int64_t r1 = min(rows, r0 + rows_per_chunk);
  const int64_t count = (r1 - r0) * D;
  const T* base = x + (n * rows + r0) * C + g * D;
  Welford w;
  for (int64_t i = threadIdx.x; i < count; i += kThreads) {
    const int64_t r = i / D;
    const float v = to_float(base[r * C + (i - r * D)]);
    w.n += 1.f;
    const float delta = v - w.mean;
    w.mean += delta / w.n;
    w.m2 += delta * (v - w.mean);
  }
  w = block_merge(w);
  if (threadIdx.x == 0) {
    float* p = partial + ((n * gridDim.y + g) * gridDim.x + chunk) * 3;
    p[0] = w.mean;
    p[1] = w.m2;
    p[2] = w.n;
  }
}

// One thread per (n, g): stats [N, G, 2] (mean, rstd), the biased variance as torch's group norm.
__global__ void finalize_stats(const float* __restrict__ partial, int64_t groups_total, int64_t chunks, float eps,
                               float* __restrict__ stats) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= groups_total) return;
  Welford w;
  for (int64_t c = 0; c < chunks; ++c) {
    const float* p = partial + (i * chunks + c) * 3;
    w = merge(w, Welford{p[0], p[1], p[2]});
  }
  const float var = w.n > 0.f ? fmaxf(w.m2 / w.n, 0.f) : 0.f;
  stats[2 * i] = w.mean;
  stats[2 * i + 1] = rsqrtf(var + eps);
}

template <typename T, int Vec>
struct alignas(sizeof(T) * Vec) Pack {
  T v[Vec];
};

template <typename T, int Vec>
__global__ void __launch_bounds__(kThreads) apply_norm(const T* __restrict__ x, const T* __restrict__ gamma,
                                                       const T* __restrict__ beta, const float* __restrict__ stats,
                                                       int64_t rows, int64_t C, int64_t D, int64_t G, int64_t packs,
                                                       bool silu, T* __restrict__ y) {
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t p = blockIdx.x * int64_t(kThreads) + threadIdx.x; p < packs; p += stride) {
    const int64_t e = p * Vec;
    const int64_t c0 = e % C;
    const int64_t n = e / (rows * C);
    const Pack<T, Vec> in = reinterpret_cast<const Pack<T, Vec>*>(x)[p];
    Pack<T, Vec> out;
#pragma unroll
    for (int k = 0; k < Vec; ++k) {
      const int64_t c = c0 + k;
      const float* s = stats + 2 * (n * G + c / D);
      const float scale = s[1] * (gamma ? to_float(gamma[c]) : 1.f);
      const float shift = (beta ? to_float(beta[c]) : 0.f) - s[0] * scale;
      float h = to_float(in.v[k]) * scale + shift;
      if (silu) h = h / (1.f + __expf(-h));
      out.v[k] = from_float<T>(h);
    }
    reinterpret_cast<Pack<T, Vec>*>(y)[p] = out;
  }
}

void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("group_norm_nhwc: launching ") + kernel + " failed: " + cudaGetErrorString(err));
}

int64_t rows_per_chunk(const GroupNormNhwcShape& s) {
  const int64_t groups_total = s.samples * s.groups;
  const int64_t chunks = std::max<int64_t>(1, kTargetStatBlocks / std::max<int64_t>(1, groups_total));
  return std::max(kMinRowsPerChunk, (s.rows + chunks - 1) / chunks);
}

int64_t chunk_count(const GroupNormNhwcShape& s) {
  const int64_t r = rows_per_chunk(s);
  return (s.rows + r - 1) / r;
}

template <typename T>
void launch(const GroupNormNhwcShape& s, const T* x, const T* gamma, const T* beta, double eps, bool silu, T* y,
            float* workspace, cudaStream_t stream) {
  const int64_t D = s.channels / s.groups;
  const int64_t chunks = chunk_count(s);
  const int64_t groups_total = s.samples * s.groups;
  float* partial = workspace;
  float* stats = workspace + groups_total * chunks * 3;
  partial_stats<T><<<dim3(unsigned(chunks), unsigned(s.groups), unsigned(s.samples)), kThreads, 0, stream>>>(
      x, s.rows, s.channels, D, rows_per_chunk(s), partial);
  check_launch("partial_stats");
  finalize_stats<<<unsigned((groups_total + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      partial, groups_total, chunks, float(eps), stats);
  check_launch("finalize_stats");
  const int64_t numel = s.samples * s.rows * s.channels;
  constexpr int kVec = 16 / sizeof(T);
  const bool aligned = reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(y) % 16 == 0;
  if (aligned && s.channels % kVec == 0) {
    const int64_t packs = numel / kVec;
    const unsigned blocks = unsigned(std::min<int64_t>((packs + kThreads - 1) / kThreads, 1 << 16));
    apply_norm<T, kVec><<<blocks, kThreads, 0, stream>>>(x, gamma, beta, stats, s.rows, s.channels, D, s.groups,
                                                          packs, silu, y);
  } else {
    const unsigned blocks = unsigned(std::min<int64_t>((numel + kThreads - 1) / kThreads, 1 << 16));
    apply_norm<T, 1><<<blocks, kThreads, 0, stream>>>(x, gamma, beta, stats, s.rows, s.channels, D, s.groups, numel,
                                                      silu, y);
  }
  check_launch("apply_norm");
}

}  // namespace

int64_t group_norm_nhwc_workspace(const GroupNormNhwcShape& s) {
  return s.samples * s.groups * (chunk_count(s) * 3 + 2);
}

void group_norm_nhwc(const GroupNormNhwcShape& s, NormDtype dtype, const void* x, const void* gamma, const void* beta,
                     double eps, bool silu, void* y, float* workspace, void* stream) {
  if (s.samples <= 0 || s.rows <= 0 || s.groups <= 0 || s.channels % s.groups != 0)
    throw std::invalid_argument("group_norm_nhwc: samples, rows and groups must be positive and channels % groups == 0");
  if (s.samples > 65535 || s.groups > 65535)
    throw std::invalid_argument("group_norm_nhwc: at most 65535 samples and groups");
  auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case NormDtype::kFloat:
      launch(s, static_cast<const float*>(x), static_cast<const float*>(gamma), static_cast<const float*>(beta), eps,
             silu, static_cast<float*>(y), workspace, st);
      break;
    case NormDtype::kHalf:
      launch(s, static_cast<const __half*>(x), static_cast<const __half*>(gamma), static_cast<const __half*>(beta),
             eps, silu, static_cast<__half*>(y), workspace, st);
      break;
    case NormDtype::kBFloat16:
      launch(s, static_cast<const __nv_bfloat16*>(x), static_cast<const __nv_bfloat16*>(gamma),
             static_cast<const __nv_bfloat16*>(beta), eps, silu, static_cast<__nv_bfloat16*>(y), workspace, st);
      break;
  }
}

}  // namespace vdm::models::cuda
