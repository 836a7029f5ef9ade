// FreeU (Si et al. 2023, "FreeU: Free Lunch in Diffusion U-Net"; diffusers' enable_freeu): in the
// two deepest up blocks of the UNet, before each layer joins its skip connection, the first half of
// the backbone's channels is scaled by b and the lowest spatial frequencies of the skip connection
// by s. Stage 1 is up_blocks.0 (the lowest resolution), stage 2 up_blocks.1. No weights, inference
// only; the values that suit a model are found by trying (docs/cli.md#freeu).
#pragma once
#include <ATen/ATen.h>

#include <utility>

#include "models/freeu_spec.h"

namespace vdm::models {

// One stage's pair of factors.
struct FreeUStage {
  double backbone = 1.0;
  double skip = 1.0;
};

// x: [N, C, H, W]. Scales the spatial frequencies within `threshold` of zero (after fftshift, the
// square [H/2 - threshold, H/2 + threshold) x [W/2 - threshold, W/2 + threshold)) by `scale` and
// returns the real part of the inverse transform, in x's dtype. The transform runs in float32.
at::Tensor fourier_filter(const at::Tensor& x, int64_t threshold, double scale);

// h: [N, Ch, H, W] (the backbone), skip: [N, Cs, H, W] -> both after the stage's factors; new
// tensors, the inputs are not modified (a cached feature may be one of them).
std::pair<at::Tensor, at::Tensor> apply_freeu(const FreeUStage& stage, const at::Tensor& h, const at::Tensor& skip);

}  // namespace vdm::models
