// GroupNorm (+ SiLU) over channels-last tensors [N, rows, C], in two launches:
//   1. partial statistics: one block per (chunk of rows, group, sample); each thread keeps shifted
//      float32 sums of its values, and the block merges them as Welford triples (mean, m2, count);
//   2. the affine normalisation: each block merges its sample's partials into (mean, rstd) per group;
//      each thread folds them with gamma and beta into the scale and shift of its own pack of
//      channels (registers), then streams its rows in 16-byte packs: one multiply-add (and SiLU) per
//      element.
// An optional per-channel or per-(sample, channel) term is added to x before the norm (a
// convolution's bias, a ResNet block's time embedding), without writing the sum.
#include "models/cuda_common.cuh"
#include "models/cuda_kernels.h"

#include <algorithm>

namespace vdm::models::VDM_CUDA_KERNELS_NAMESPACE {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kTargetStatBlocks = 512;    // partial-statistics blocks per call, about
constexpr int64_t kTargetApplyBlocks = 1024;  // normalisation blocks per call, about

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

__device__ __forceinline__ Welford warp_merge(Welford w) {
  for (int offset = 16; offset > 0; offset /= 2) {
    Welford o;
    o.mean = __shfl_down_sync(0xffffffffu, w.mean, offset);
    o.m2 = __shfl_down_sync(0xffffffffu, w.m2, offset);
    o.n = __shfl_down_sync(0xffffffffu, w.n, offset);
    w = merge(w, o);
  }
  return w;
}

__device__ __forceinline__ Welford block_merge(Welford w) {
  __shared__ Welford warps[kThreads / 32];
  w = warp_merge(w);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warps[warp] = w;
  __syncthreads();
  if (warp == 0) w = warp_merge(lane < kThreads / 32 ? warps[lane] : Welford{});
  return w;  // complete in thread 0
}

// Shifted sums of one thread's values: the shift (its first value) keeps the float32 sum of
// squares from cancelling when the mean is large against the spread.
struct ShiftedSums {
  float shift = 0.f, s = 0.f, ss = 0.f, n = 0.f;
  __device__ __forceinline__ void add(float v) {
    if (n == 0.f) shift = v;
    const float d = v - shift;
    s += d;
    ss += d * d;
    n += 1.f;
  }
  __device__ __forceinline__ Welford welford() const {
    Welford w;
    if (n > 0.f) {
      w.n = n;
      w.mean = shift + s / n;
      w.m2 = fmaxf(ss - s * s / n, 0.f);
    }
    return w;
  }
};

// grid (chunks, G, N); partial: [N, G, chunks, 3] (mean, m2, count). Thread t reads channel
// g*D + t % lanes of every rows_per_iter-th row.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    partial_stats(const T* __restrict__ x, const T* __restrict__ add, int add_stride, int rows, int C, int D,
                  int rows_per_chunk,
                  float* __restrict__ partial) {
  const int chunk = blockIdx.x, g = blockIdx.y, n = blockIdx.z;
  const int r0 = chunk * rows_per_chunk, r1 = min(rows, r0 + rows_per_chunk);
  const int lanes = min(D, kThreads), step = kThreads / lanes;
  const int lane = threadIdx.x % lanes, first = threadIdx.x / lanes;
  ShiftedSums acc;
  if (first < step) {
    const T* base = x + int64_t(n) * rows * C + g * D;
    for (int d = lane; d < D; d += lanes) {
      const float a = add ? to_float(add[int64_t(n) * add_stride + g * D + d]) : 0.f;
      int r = r0 + first;
      for (; r + 3 * step < r1; r += 4 * step) {  // four independent loads in flight
        const float v0 = to_float(base[int64_t(r) * C + d]);
        const float v1 = to_float(base[int64_t(r + step) * C + d]);
        const float v2 = to_float(base[int64_t(r + 2 * step) * C + d]);
        const float v3 = to_float(base[int64_t(r + 3 * step) * C + d]);
        acc.add(v0 + a);
        acc.add(v1 + a);
        acc.add(v2 + a);
        acc.add(v3 + a);
      }
      for (; r < r1; r += step) acc.add(to_float(base[int64_t(r) * C + d]) + a);
    }
  }
  const Welford w = block_merge(acc.welford());
  if (threadIdx.x == 0) {
    float* p = partial + ((int64_t(n) * gridDim.y + g) * gridDim.x + chunk) * 3;
    p[0] = w.mean;
    p[1] = w.m2;
    p[2] = w.n;
  }
}

// grid (blocks per sample, N); dynamic shared memory: mean [G], rstd [G]. Each thread owns one
// 16-byte pack of channels (per_row packs across a row, rows_in_flight rows at a time), keeps that
// pack's scale and shift in registers, and streams its rows.
template <typename T, int Vec>
__global__ void __launch_bounds__(kThreads)
    apply_norm(const T* __restrict__ x, const T* __restrict__ add, int add_stride, const T* __restrict__ gamma,
               const T* __restrict__ beta, const float* __restrict__ partial, int rows, int C, int D, int G,
               int stat_chunks, int rows_per_block, float eps, bool silu, T* __restrict__ y) {
  float* const shared = detail::dynamic_shared<float>();
  float* mean = shared;
  float* rstd = shared + G;
  const int n = blockIdx.y;
  for (int g = threadIdx.x; g < G; g += kThreads) {
    const float* p = partial + (int64_t(n) * G + g) * stat_chunks * 3;
    Welford w;
    for (int c = 0; c < stat_chunks; ++c) w = merge(w, Welford{p[3 * c], p[3 * c + 1], p[3 * c + 2]});
    mean[g] = w.mean;
    rstd[g] = rsqrtf((w.n > 0.f ? fmaxf(w.m2 / w.n, 0.f) : 0.f) + eps);
  }
  __syncthreads();
  const int per_row = C / Vec;
  const int lanes = min(per_row, kThreads), rows_in_flight = kThreads / lanes;
  const int lane = threadIdx.x % lanes, first = threadIdx.x / lanes;
  const int r0 = blockIdx.x * rows_per_block, r1 = min(rows, r0 + rows_per_block);
  if (first >= rows_in_flight || r0 >= r1) return;
  const T* xs = x + int64_t(n) * rows * C;
  T* ys = y + int64_t(n) * rows * C;
  for (int pack = lane; pack < per_row; pack += lanes) {
    const int c0 = pack * Vec;
    float scale[Vec], shift[Vec];
#pragma unroll
    for (int k = 0; k < Vec; ++k) {
      const int c = c0 + k, g = c / D;
      const float s = rstd[g] * (gamma ? to_float(gamma[c]) : 1.f);
      const float a = add ? to_float(add[int64_t(n) * add_stride + c]) : 0.f;
      scale[k] = s;
      shift[k] = (beta ? to_float(beta[c]) : 0.f) + (a - mean[g]) * s;
    }
#pragma unroll 4
    for (int r = r0 + first; r < r1; r += rows_in_flight) {
      const Pack<T, Vec> in = *reinterpret_cast<const Pack<T, Vec>*>(xs + int64_t(r) * C + c0);
      Pack<T, Vec> out;
#pragma unroll
      for (int k = 0; k < Vec; ++k) {
        float h = to_float(in.v[k]) * scale[k] + shift[k];
        if (silu) h = h / (1.f + __expf(-h));
        out.v[k] = from_float<T>(h);
      }
      *reinterpret_cast<Pack<T, Vec>*>(ys + int64_t(r) * C + c0) = out;
    }
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t stat_chunks(const GroupNormNhwcShape& s) {
  const int64_t want = std::max<int64_t>(1, kTargetStatBlocks / (s.samples * s.groups));
  return std::min(want, s.rows);
}

template <typename T>
void launch(const GroupNormNhwcShape& s, const T* x, const T* add, const T* gamma, const T* beta, double eps,
            bool silu, T* y, float* partial, cudaStream_t stream) {
  const int rows = int(s.rows), C = int(s.channels), G = int(s.groups), D = C / G;
  const int add_stride = int(s.add_sample_stride);
  const int64_t chunks = stat_chunks(s);
  const int rows_per_chunk = int(ceil_div(s.rows, chunks));
  detail::launch("group_norm_nhwc partial_stats", partial_stats<T>,
                 dim3(unsigned(ceil_div(s.rows, rows_per_chunk)), unsigned(G), unsigned(s.samples)), kThreads, 0, stream,
                 x, add, add_stride, rows, C, D, rows_per_chunk, partial);
  const int stat_blocks = int(ceil_div(s.rows, rows_per_chunk));
  const int64_t per_sample = std::clamp<int64_t>(kTargetApplyBlocks / s.samples, 1, s.rows);
  const int rows_per_block = int(ceil_div(s.rows, per_sample));
  const dim3 grid(unsigned(ceil_div(s.rows, rows_per_block)), unsigned(s.samples));
  const size_t shared = sizeof(float) * size_t(2 * G);
  constexpr int kVec = 16 / sizeof(T);
  if (C % kVec == 0 && detail::aligned16(x) && detail::aligned16(y))
    detail::launch("group_norm_nhwc apply_norm", apply_norm<T, kVec>, grid, kThreads, shared, stream, x, add,
                   add_stride, gamma, beta, partial, rows, C, D, G, stat_blocks, rows_per_block, float(eps), silu, y);
  else
    detail::launch("group_norm_nhwc apply_norm", apply_norm<T, 1>, grid, kThreads, shared, stream, x, add, add_stride,
                   gamma, beta, partial, rows, C, D, G, stat_blocks, rows_per_block, float(eps), silu, y);
}

}  // namespace

int64_t group_norm_nhwc_workspace(const GroupNormNhwcShape& s) {
  const int64_t rows_per_chunk = ceil_div(s.rows, stat_chunks(s));
  return s.samples * s.groups * ceil_div(s.rows, rows_per_chunk) * 3;
}

void group_norm_nhwc(const GroupNormNhwcShape& s, DType dtype, const void* x, const void* add, const void* gamma,
                     const void* beta, double eps, bool silu, void* y, float* workspace, void* stream) {
  if (s.samples <= 0 || s.rows <= 0 || s.groups <= 0 || s.channels % s.groups != 0)
    throw std::invalid_argument("group_norm_nhwc: samples, rows and groups must be positive and channels % groups == 0");
  if (s.samples > 65535 || s.groups > 6144 || s.rows * s.channels >= (int64_t(1) << 31))
    throw std::invalid_argument("group_norm_nhwc: at most 65535 samples, 6144 groups and 2^31 elements per sample");
  auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat:
      launch(s, static_cast<const float*>(x), static_cast<const float*>(add), static_cast<const float*>(gamma),
             static_cast<const float*>(beta), eps, silu, static_cast<float*>(y), workspace, st);
      break;
    case DType::kHalf:
      launch(s, static_cast<const __half*>(x), static_cast<const __half*>(add), static_cast<const __half*>(gamma),
             static_cast<const __half*>(beta), eps, silu, static_cast<__half*>(y), workspace, st);
      break;
    case DType::kBFloat16:
      launch(s, static_cast<const __nv_bfloat16*>(x), static_cast<const __nv_bfloat16*>(add),
             static_cast<const __nv_bfloat16*>(gamma), static_cast<const __nv_bfloat16*>(beta), eps, silu,
             static_cast<__nv_bfloat16*>(y), workspace, st);
      break;
  }
}

}  // namespace vdm::models::VDM_CUDA_KERNELS_NAMESPACE
