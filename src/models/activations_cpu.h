// Fused CPU kernels for the exact GELU of the transformer feed-forward layers, for inference:
// GELU(x) = x/2 (1 + erf(x / sqrt(2))) and GEGLU(h) = h[..., :W] * GELU(h[..., W:]) in one pass
// (LibTorch's chunk, gelu and mul read and write the activations three times, and its erf is the
// slowest part of a small UNet's step after attention). erf is computed as in Abramowitz and
// Stegun 7.1.26 (absolute error below 1.5e-7) with a vectorised exp; AVX-512, AVX2 and baseline
// builds, chosen at run time like the attention kernel's.
#pragma once
#include <ATen/ATen.h>

namespace vdm::models {

// True when the fused kernels apply to `x`: a float32 or bfloat16 CPU tensor that needs no
// gradient.
bool fused_gelu_cpu_applies(const at::Tensor& x);

// x: any shape -> GELU(x), same shape and dtype (bfloat16 is widened, computed in float32 and
// rounded, lane by lane in the kernel).
at::Tensor fused_gelu_cpu(const at::Tensor& x);

// h: [..., 2W] -> [..., W]: h[..., :W] * GELU(h[..., W:]), same dtype.
at::Tensor fused_geglu_cpu(const at::Tensor& h);

}  // namespace vdm::models
