// vdm's CUDA kernels, without LibTorch (raw device pointers and a cudaStream_t passed as void*):
// built only where CMake finds CUDA's compiler and LibTorch has CUDA. models/cuda_ops.h wraps them
// for tensors. Each call launches on the given stream, never synchronises, and throws
// std::runtime_error when a launch fails.
//   group_norm_nhwc.cu: GroupNorm (+ SiLU) over channels-last tensors. LibTorch's CUDA group norm
//     makes its input NCHW-contiguous first: two layout copies per norm in a channels-last network.
//   layer_norm_rows.cu: LayerNorm over the last dimension, one warp per row.
//   geglu.cu: GEGLU's a * GELU(b) over the halves of a projection, in one pass (LibTorch runs the
//     GELU and the product as two strided passes over the halves).
#pragma once
#include <cstdint>

namespace vdm::models::cuda {

enum class DType { kFloat, kHalf, kBFloat16 };

struct GroupNormNhwcShape {
  int64_t samples = 0;   // N
  int64_t rows = 0;      // spatial positions per sample (H*W, or F*H*W)
  int64_t channels = 0;  // C, the innermost dimension
  int64_t groups = 0;    // G; C % G == 0
  int64_t add_sample_stride = 0;  // of the added term: C for [N, C], 0 for [C]
};

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
// y = (x - mean) / sqrt(var + eps) * gamma + beta per row (biased variance, as torch), float32.
void layer_norm_rows(DType dtype, const void* x, const void* gamma, const void* beta, int64_t rows, int64_t channels,
                     double eps, void* y, void* stream);

// h: [rows, 2 * inner] contiguous, of `dtype`; out: [rows, inner].
// out = h[:, :inner] * GELU(h[:, inner:]) (the exact, erf form), computed in float32.
void geglu(DType dtype, const void* h, void* out, int64_t rows, int64_t inner, void* stream);

}  // namespace vdm::models::cuda
