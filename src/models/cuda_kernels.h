// vdm's CUDA kernels, without LibTorch (raw device pointers and a cudaStream_t passed as void*):
// built only where CMake finds CUDA's compiler and LibTorch has CUDA. models/cuda_ops.h wraps them
// for tensors. Each call launches on the given stream, never synchronises, and throws
// std::runtime_error when a launch fails.
//   group_norm_nhwc.cu: GroupNorm (+ SiLU) over channels-last tensors. LibTorch's CUDA group norm
//     makes its input NCHW-contiguous first: two layout copies per norm in a channels-last network.
//   layer_norm_rows.cu: LayerNorm over the last dimension, one warp per row.
//   geglu.cu: GEGLU's a * GELU(b) over the halves of a projection, in one pass (LibTorch runs the
//     GELU and the product as two strided passes over the halves).
//   bias_residual.cu: (x + bias + residual) * scale in one pass, the end of a residual branch whose
//     last convolution ran without its bias.
//   short_attention.cu: attention over at most 64 keys (temporal attention over frames), where a
//     flash-attention tile would be mostly padding.
// With VDM_CUDA_EMULATION the same sources build as C++ for the CPU (tests/cuda_emulation): the
// functions are then declared and defined in vdm::models::cuda_emulated, so that a test program
// can hold both; the types below are shared.
#pragma once
#include <cstdint>
#include <initializer_list>

#ifdef VDM_CUDA_EMULATION
#define VDM_CUDA_KERNELS_NAMESPACE cuda_emulated
#else
#define VDM_CUDA_KERNELS_NAMESPACE cuda
#endif

namespace vdm::models::cuda {

enum class DType { kFloat, kHalf, kBFloat16 };

struct GroupNormNhwcShape {
  int64_t samples = 0;   // N
  int64_t rows = 0;      // spatial positions per sample (H*W, or F*H*W)
  int64_t channels = 0;  // C, the innermost dimension
  int64_t groups = 0;    // G; C % G == 0
  int64_t add_sample_stride = 0;  // of the added term: C for [N, C], 0 for [C]
};

constexpr int64_t kShortAttentionMaxKeys = 64;

// Attention per (batch, inner batch, head) over `keys` positions. The inner batch lets a sequence be
// strided through the tokens (temporal attention over [B, F, positions, C] tokens attends over F for
// each of B * positions sequences, which no single batch stride reaches).
struct ShortAttentionShape {
  int64_t batch = 0, inner_batch = 1, heads = 0, queries = 0, keys = 0, head_dim = 0;
  // Element strides of q, k, v and out over (batch, inner batch, head, position); a head's channels
  // are contiguous.
  int64_t q_strides[4] = {0, 0, 0, 0};
  int64_t k_strides[4] = {0, 0, 0, 0};
  int64_t v_strides[4] = {0, 0, 0, 0};
  int64_t out_strides[4] = {0, 0, 0, 0};
};

// The functions below as a table (kernel_table()), so that models/cuda_ops.h can run the CUDA
// build's kernels on CUDA tensors and, in a test, the emulation's on CPU tensors.
struct KernelTable {
  int64_t (*group_norm_nhwc_workspace)(const GroupNormNhwcShape&);
  void (*group_norm_nhwc)(const GroupNormNhwcShape&, DType, const void*, const void*, const void*, const void*,
                          double, bool, void*, float*, void*);
  bool (*layer_norm_rows_supported)(int64_t, int64_t);
  void (*layer_norm_rows)(DType, const void*, const void*, const void*, const void*, int64_t, int64_t, double, void*,
                          void*, void*);
  void (*geglu)(DType, const void*, void*, int64_t, int64_t, void*);
  void (*bias_residual)(DType, const void*, const void*, const void*, int64_t, int64_t, double, void*, void*);
  bool (*short_attention_supported)(const ShortAttentionShape&, int64_t, std::initializer_list<const void*>);
  void (*short_attention)(const ShortAttentionShape&, DType, const void*, const void*, const void*, double, void*,
                          void*);
};

}  // namespace vdm::models::VDM_CUDA_KERNELS_NAMESPACE

namespace vdm::models::VDM_CUDA_KERNELS_NAMESPACE {

using cuda::DType;
using cuda::GroupNormNhwcShape;
using cuda::kShortAttentionMaxKeys;
using cuda::KernelTable;
using cuda::ShortAttentionShape;

// This build's kernels as a table.
const KernelTable& kernel_table();

// Floats of workspace group_norm_nhwc needs (float32 partial statistics per chunk of rows).
int64_t group_norm_nhwc_workspace(const GroupNormNhwcShape& s);

// x, y: [N, rows, C] contiguous; add: [N, C] or [C] (s.add_sample_stride) or null; gamma, beta:
// [C] or null; all of `dtype`. workspace: device floats of group_norm_nhwc_workspace(s).
// y = GroupNorm(x + add) (biased variance, as torch), then SiLU when `silu`; statistics in float32
// (Welford merges of shifted sums). At most 65535 samples, 6144 groups and 2^31 elements per sample.
void group_norm_nhwc(const GroupNormNhwcShape& s, DType dtype, const void* x, const void* add, const void* gamma,
                     const void* beta, double eps, bool silu, void* y, float* workspace, void* stream);

// True when layer_norm_rows takes rows of `channels` elements of `element_size` bytes: at most 256,
// or a multiple of the 16-byte pack up to 256 packs (2048 float16 or bfloat16, 1024 float32).
bool layer_norm_rows_supported(int64_t channels, int64_t element_size);

// x, y: [rows, channels] contiguous; gamma, beta: [channels] or null; all of `dtype`.
// y = (h - mean) / sqrt(var + eps) * gamma + beta per row of h (biased variance, as torch), float32,
// where h = x, or with `residual` ([rows, channels] like x) h = x + residual, rounded to `dtype` and
// written to `sum` (both null or both set; the transformer block's residual add and next norm).
void layer_norm_rows(DType dtype, const void* x, const void* residual, const void* gamma, const void* beta,
                     int64_t rows, int64_t channels, double eps, void* sum, void* y, void* stream);

// h: [rows, 2 * inner] contiguous, of `dtype`; out: [rows, inner].
// out = h[:, :inner] * GELU(h[:, inner:]) (the exact, erf form), computed in float32.
void geglu(DType dtype, const void* h, void* out, int64_t rows, int64_t inner, void* stream);

// x, residual, y: [rows, channels] contiguous (y may be x); bias: [channels] or null; all of `dtype`.
// y = (x + bias + residual) * scale, in float32, rounded once.
void bias_residual(DType dtype, const void* x, const void* bias, const void* residual, int64_t rows, int64_t channels,
                   double scale, void* y, void* stream);

// True when short_attention takes the shape: 1 to kShortAttentionMaxKeys keys and a head dimension
// of at most 32 (any strides), or a multiple of 8 up to 256 with strides of whole 16-byte packs and
// every pointer 16-byte aligned.
bool short_attention_supported(const ShortAttentionShape& s, int64_t element_size,
                               std::initializer_list<const void*> pointers);

// q, out: [batch, inner batch, heads, queries, head_dim], k, v: [batch, inner batch, heads, keys,
// head_dim] (s's strides), all of `dtype`.
// out = softmax(q k^T * scale) v per (batch, head), in float32 with an online softmax. Throws
// std::invalid_argument where short_attention_supported is false.
void short_attention(const ShortAttentionShape& s, DType dtype, const void* q, const void* k, const void* v,
                     double scale, void* out, void* stream);

}  // namespace vdm::models::VDM_CUDA_KERNELS_NAMESPACE
