// Attention over short key sequences (temporal attention: one sequence of frames per position and
// head), without tensor cores. A flash-attention kernel gives each (sequence, head) a tile of 64 or
// more queries and 128 keys; at 16 frames that tile is mostly padding, and the temporal layers have
// tens of thousands of such sequences per call. Each query row walks the keys once with an online
// softmax (running maximum and sum in float32). Rows are independent: no shared memory, no block
// barriers. Two layouts of the work:
//   wide heads (a multiple of 8 channels, 16-byte aligned): a group of W threads per row, each
//     holding 8 of the head's channels, the dot products summed by W-wide shuffles;
//   narrow heads (up to 32 channels, any alignment; vdm's default model has heads of 4): one
//     thread per (row, head), heads fastest, so that a warp reads neighbouring heads' channels,
//     which lie side by side, together.
#include "models/cuda_common.cuh"
#include "models/cuda_kernels.h"

#include <stdexcept>

namespace vdm::models::VDM_CUDA_KERNELS_NAMESPACE {

namespace {

constexpr int kThreads = 256;
constexpr int kSlice = 8;  // channels per thread

// Element strides over (batch, inner batch, head, position).
struct Strides {
  int64_t batch, inner, head, pos;
  __device__ __forceinline__ int64_t at(int64_t b, int64_t bi, int h, int pos_index) const {
    return b * batch + bi * inner + h * head + pos_index * this->pos;
  }
};

// Reads 8 channels starting at p (16-byte aligned) as float32.
template <typename T>
__device__ __forceinline__ void load_slice(const T* p, float (&out)[kSlice]) {
  constexpr int kVec = 16 / sizeof(T);
#pragma unroll
  for (int i = 0; i < kSlice / kVec; ++i) {
    const Pack<T, kVec> in = *reinterpret_cast<const Pack<T, kVec>*>(p + i * kVec);
#pragma unroll
    for (int k = 0; k < kVec; ++k) out[i * kVec + k] = to_float(in.v[k]);
  }
}

template <typename T>
__device__ __forceinline__ void store_slice(T* p, const float (&in)[kSlice]) {
  constexpr int kVec = 16 / sizeof(T);
#pragma unroll
  for (int i = 0; i < kSlice / kVec; ++i) {
    Pack<T, kVec> out;
#pragma unroll
    for (int k = 0; k < kVec; ++k) out.v[k] = from_float<T>(in[i * kVec + k]);
    *reinterpret_cast<Pack<T, kVec>*>(p + i * kVec) = out;
  }
}

// Softmax-weighted sum over keys seen one at a time: o = sum_j exp(s_j - m) v_j and
// sum = sum_j exp(s_j - m), m the running maximum, both rescaled when it grows.
template <int N>
struct OnlineSoftmax {
  float running_max = -INFINITY, sum = 0.f, o[N] = {};
  __device__ __forceinline__ void add(float s, const float (&v)[N]) {
    const float new_max = fmaxf(running_max, s);
    const float rescale = __expf(running_max - new_max);  // 0 at the first key
    const float p = __expf(s - new_max);
    sum = sum * rescale + p;
#pragma unroll
    for (int c = 0; c < N; ++c) o[c] = o[c] * rescale + p * v[c];
    running_max = new_max;
  }
};

// Row r of queries * heads * inner batches * batches (query fastest): W threads, thread s holding
// channels [8s, 8s + 8) of the head (none when 8s >= D).
template <typename T, int W>
__global__ void __launch_bounds__(kThreads)
    short_attention_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, Strides qs,
                           Strides ks, Strides vs, Strides os, int64_t rows, int64_t inner, int heads, int queries,
                           int keys, int D, float scale, T* __restrict__ out) {
  const int64_t row = int64_t(blockIdx.x) * (kThreads / W) + threadIdx.x / W;
  const int c0 = int(threadIdx.x % W) * kSlice;
  // Every lane of a group runs the shuffles, also past the last row or the head's channels.
  const bool active = row < rows && c0 < D;
  const int64_t r = row < rows ? row : 0;
  const int i = int(r % queries);
  const int64_t rest = r / queries;
  const int h = int(rest % heads);
  const int64_t bi = rest / heads % inner, b = rest / heads / inner;

  float qf[kSlice] = {};
  if (active) {
    load_slice(q + qs.at(b, bi, h, i) + c0, qf);
#pragma unroll
    for (int c = 0; c < kSlice; ++c) qf[c] *= scale;
  }
  const T* kb = k + ks.at(b, bi, h, 0) + c0;
  const T* vb = v + vs.at(b, bi, h, 0) + c0;
  OnlineSoftmax<kSlice> acc;
  for (int j = 0; j < keys; ++j) {
    float kf[kSlice] = {}, vf[kSlice] = {};
    if (active) {
      load_slice(kb + j * ks.pos, kf);
      load_slice(vb + j * vs.pos, vf);
    }
    float s = 0.f;
#pragma unroll
    for (int c = 0; c < kSlice; ++c) s += qf[c] * kf[c];
#pragma unroll
    for (int offset = W / 2; offset > 0; offset /= 2) s += __shfl_xor_sync(0xffffffffu, s, offset, W);
    acc.add(s, vf);
  }
  if (active) {
    const float inv = 1.f / acc.sum;
#pragma unroll
    for (int c = 0; c < kSlice; ++c) acc.o[c] *= inv;
    store_slice(out + os.at(b, bi, h, i) + c0, acc.o);
  }
}

constexpr int kNarrowMaxDim = 32;

// The first d of N channels at p as float32, the rest 0.
template <typename T, int N>
__device__ __forceinline__ void load_narrow(const T* p, int d, float (&out)[N]) {
#pragma unroll
  for (int c = 0; c < N; ++c) out[c] = c < d ? to_float(p[c]) : 0.f;
}

// Thread r of heads * queries * inner batches * batches (head fastest): one (query, head) with its
// D <= N channels in registers.
template <typename T, int N>
__global__ void __launch_bounds__(kThreads)
    narrow_head_attention_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                 Strides qs, Strides ks, Strides vs, Strides os, int64_t rows, int64_t inner,
                                 int heads, int queries, int keys, int D, float scale, T* __restrict__ out) {
  const int64_t r = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (r >= rows) return;
  const int h = int(r % heads);
  const int64_t rest = r / heads;
  const int i = int(rest % queries);
  const int64_t bi = rest / queries % inner, b = rest / queries / inner;
  float qf[N];
  load_narrow(q + qs.at(b, bi, h, i), D, qf);
#pragma unroll
  for (int c = 0; c < N; ++c) qf[c] *= scale;
  const T* kb = k + ks.at(b, bi, h, 0);
  const T* vb = v + vs.at(b, bi, h, 0);
  OnlineSoftmax<N> acc;
  for (int j = 0; j < keys; ++j) {
    float kf[N], vf[N];
    load_narrow(kb + j * ks.pos, D, kf);
    load_narrow(vb + j * vs.pos, D, vf);
    float s = 0.f;
#pragma unroll
    for (int c = 0; c < N; ++c) s += qf[c] * kf[c];
    acc.add(s, vf);
  }
  const float inv = 1.f / acc.sum;
  T* o = out + os.at(b, bi, h, i);
#pragma unroll
  for (int c = 0; c < N; ++c)
    if (c < D) o[c] = from_float<T>(acc.o[c] * inv);
}

int threads_per_row(int64_t head_dim) {
  int w = 1;
  while (w * kSlice < head_dim) w *= 2;
  return w;
}

Strides strides_of(const int64_t (&s)[4]) { return Strides{s[0], s[1], s[2], s[3]}; }

// Either layout's kernel (the same parameters), run over the shape's rows, rows_per_block to a block.
template <typename T>
using AttentionKernel = void (*)(const T*, const T*, const T*, Strides, Strides, Strides, Strides, int64_t, int64_t,
                                 int, int, int, int, float, T*);

template <typename T>
void launch_rows(AttentionKernel<T> kernel, int rows_per_block, const ShortAttentionShape& s, const T* q, const T* k,
                 const T* v, float scale, T* out, cudaStream_t stream) {
  const int64_t rows = s.batch * s.inner_batch * s.heads * s.queries;
  const unsigned blocks = unsigned((rows + rows_per_block - 1) / rows_per_block);
  detail::launch("short_attention", kernel, blocks, kThreads, 0, stream, q, k, v, strides_of(s.q_strides),
                 strides_of(s.k_strides), strides_of(s.v_strides), strides_of(s.out_strides), rows, s.inner_batch,
                 int(s.heads), int(s.queries), int(s.keys), int(s.head_dim), scale, out);
}

// Wide heads: whole 16-byte slices of 8 channels, up to 32 slices.
bool wide_heads(const ShortAttentionShape& s, int64_t element_size, std::initializer_list<const void*> pointers) {
  if (s.head_dim % kSlice != 0 || s.head_dim > 32 * kSlice) return false;
  for (const int64_t* strides : {s.q_strides, s.k_strides, s.v_strides, s.out_strides})
    for (int d = 0; d < 4; ++d)
      if ((strides[d] * element_size) % 16 != 0) return false;
  for (const void* p : pointers)
    if (!detail::aligned16(p)) return false;
  return true;
}

template <typename T>
void launch(const ShortAttentionShape& s, const T* q, const T* k, const T* v, float scale, T* out,
            cudaStream_t stream) {
  AttentionKernel<T> kernel = nullptr;
  int w = 1;  // threads per row
  if (!wide_heads(s, sizeof(T), {q, k, v, out})) {
    kernel = s.head_dim <= 8    ? narrow_head_attention_kernel<T, 8>
             : s.head_dim <= 16 ? narrow_head_attention_kernel<T, 16>
                                : narrow_head_attention_kernel<T, kNarrowMaxDim>;
  } else {
    w = threads_per_row(s.head_dim);
    switch (w) {
      case 1: kernel = short_attention_kernel<T, 1>; break;
      case 2: kernel = short_attention_kernel<T, 2>; break;
      case 4: kernel = short_attention_kernel<T, 4>; break;
      case 8: kernel = short_attention_kernel<T, 8>; break;
      case 16: kernel = short_attention_kernel<T, 16>; break;
      default: kernel = short_attention_kernel<T, 32>; break;
    }
  }
  launch_rows(kernel, kThreads / w, s, q, k, v, scale, out, stream);
}

}  // namespace

bool short_attention_supported(const ShortAttentionShape& s, int64_t element_size,
                               std::initializer_list<const void*> pointers) {
  if (s.batch <= 0 || s.inner_batch <= 0 || s.heads <= 0 || s.queries <= 0 || s.keys <= 0 ||
      s.keys > kShortAttentionMaxKeys || s.head_dim <= 0)
    return false;
  return s.head_dim <= kNarrowMaxDim || wide_heads(s, element_size, pointers);
}

void short_attention(const ShortAttentionShape& s, DType dtype, const void* q, const void* k, const void* v,
                     double scale, void* out, void* stream) {
  const int64_t element = dtype == DType::kFloat ? 4 : 2;
  if (!short_attention_supported(s, element, {q, k, v, out}))
    throw std::invalid_argument("short_attention: unsupported shape, strides or alignment (see "
                                "short_attention_supported)");
  auto st = static_cast<cudaStream_t>(stream);
  const float sc = float(scale);
  switch (dtype) {
    case DType::kFloat:
      launch(s, static_cast<const float*>(q), static_cast<const float*>(k), static_cast<const float*>(v), sc,
             static_cast<float*>(out), st);
      break;
    case DType::kHalf:
      launch(s, static_cast<const __half*>(q), static_cast<const __half*>(k), static_cast<const __half*>(v), sc,
             static_cast<__half*>(out), st);
      break;
    case DType::kBFloat16:
      launch(s, static_cast<const __nv_bfloat16*>(q), static_cast<const __nv_bfloat16*>(k),
             static_cast<const __nv_bfloat16*>(v), sc, static_cast<__nv_bfloat16*>(out), st);
      break;
  }
}

}  // namespace vdm::models::VDM_CUDA_KERNELS_NAMESPACE
