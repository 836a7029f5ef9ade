// Fused CPU kernel for group normalisation, optionally followed by SiLU, for inference. Every
// ResnetBlock2D and temporal convolution stage runs GroupNorm then SiLU: LibTorch reads and writes
// the activations once for the norm and once more for SiLU, and its bfloat16 kernels for both are
// scalar. Here statistics are taken in float32 (two passes: mean, then squared deviations), and
// the normalised, scaled and shifted value goes through SiLU before it is stored, in one more
// pass. float32 or bfloat16 (widened lane by lane); AVX-512, AVX2 and baseline builds, chosen at
// run time like the attention kernel's (VDM_CPU_ISA caps it).
#pragma once
#include <ATen/ATen.h>

namespace vdm::models {

// True when the fused kernel applies to `x`: a float32 or bfloat16 CPU tensor of at least 2
// dimensions that needs no gradient.
bool fused_group_norm_cpu_applies(const at::Tensor& x);

// x: [N, C, *] -> same shape, dtype and memory layout: group_norm(x, groups, weight, bias, eps),
// then SiLU when `silu`. weight and bias: [C] or undefined (no affine), any floating dtype.
// The [B, C, F, H, W] view of a [B, F, C, H, W] tensor (a temporal layer's permute) is read and
// written in place of its layout, without a copy.
at::Tensor fused_group_norm_cpu(const at::Tensor& x, int64_t groups, const at::Tensor& weight, const at::Tensor& bias,
                                double eps, bool silu);

// Layer normalisation over the last dimension for inference: the same statistics in float32 (mean,
// then squared deviations), float32 or bfloat16 in and out. True when it applies to `x` (as for
// the group norm kernel: a float32 or bfloat16 CPU tensor that needs no gradient).
bool fused_layer_norm_cpu_applies(const at::Tensor& x);
// x: [..., C] (rows at any stride, channels contiguous; otherwise copied) -> contiguous, same shape
// and dtype: layer_norm(x, {C}, weight, bias, eps). weight and bias: [C] or undefined.
at::Tensor fused_layer_norm_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps);

}  // namespace vdm::models
