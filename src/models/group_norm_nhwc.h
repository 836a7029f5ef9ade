// GroupNorm (optionally followed by SiLU) over channels-last CUDA tensors, without LibTorch: the
// kernels of group_norm_nhwc.cu, built only where CMake finds CUDA's compiler and LibTorch has CUDA.
// LibTorch's CUDA group norm makes its input NCHW-contiguous first, which costs two layout copies per
// norm in a network that otherwise runs channels-last (cuDNN's convolutions prefer NHWC).
#pragma once
#include <cstdint>

namespace vdm::models::cuda {

enum class NormDtype { kFloat, kHalf, kBFloat16 };

// Per sample n and group g, over its rows and the group's channels: float32 (mean, m2, count) of each
// chunk of rows, then (mean, rstd) per group.
struct GroupNormNhwcShape {
  int64_t samples = 0;   // N
  int64_t rows = 0;      // spatial positions per sample (H*W, or F*H*W)
  int64_t channels = 0;  // C, the innermost dimension
  int64_t groups = 0;    // G; C % G == 0
};

// Floats of workspace the call needs (partial statistics and the per-group statistics).
int64_t group_norm_nhwc_workspace(const GroupNormNhwcShape& s);

// x, y: [N, rows, C] contiguous, of `dtype`; gamma, beta: [C] of `dtype` or null; workspace: device
// floats of group_norm_nhwc_workspace(s); stream: a cudaStream_t. Launches three kernels on the
// stream, never synchronises; throws std::runtime_error on a launch error.
void group_norm_nhwc(const GroupNormNhwcShape& s, NormDtype dtype, const void* x, const void* gamma, const void* beta,
                     double eps, bool silu, void* y, float* workspace, void* stream);

}  // namespace vdm::models::cuda
