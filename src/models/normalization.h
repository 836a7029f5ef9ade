// LayerNorm and GroupNorm: torch::nn's modules (same options, parameters "weight" and "bias", same
// results) whose forward on a reduced-precision CPU tensor (bfloat16, float16) computes in float32
// and rounds the result back. LibTorch 1.13's bfloat16 CPU norm kernels are scalar: on a 2-core
// EPYC a layer norm over [32, 1024, 32] takes 9.1 ms in bfloat16 against 0.66 ms through float32,
// conversions included. In CPU inference (float32 or bfloat16, parameters needing no gradient) both
// run the fused kernels of models/normalization_cpu.h instead (GroupNorm with SiLU when asked; same
// results to float32 rounding). On CUDA, inference runs vdm's kernels (models/cuda_ops.h): GroupNorm
// over a channels-last tensor keeping the layout, LayerNorm over the last dimension; other CUDA
// tensors and training go to torch::nn's forward unchanged.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <utility>

#include "models/tap.h"

namespace vdm::models {

// True when a norm over `x` runs in float32: a CPU tensor of a 16-bit floating type.
bool norm_runs_in_float32(const at::Tensor& x);

class LayerNormImpl : public torch::nn::LayerNormImpl {
 public:
  using torch::nn::LayerNormImpl::LayerNormImpl;
  // x: [..., normalized_shape] -> same shape and dtype (contiguous from the fused kernel, which takes
  // a normalized_shape of one dimension).
  at::Tensor forward(const at::Tensor& x);
  // A residual add and this norm: {x + residual, forward(x + residual)}, in one pass of vdm's kernel
  // on CUDA (the sum rounded to x's dtype before the norm, as the two steps give).
  std::pair<at::Tensor, at::Tensor> forward_add(const at::Tensor& x, const at::Tensor& residual);
};
TORCH_MODULE(LayerNorm);

// In CPU inference (no gradient) both forwards run the fused kernel of models/normalization_cpu.h.
class GroupNormImpl : public torch::nn::GroupNormImpl {
 public:
  using torch::nn::GroupNormImpl::GroupNormImpl;
  // x: [N, C, *] -> same shape and dtype.
  at::Tensor forward(const at::Tensor& x);
  // x: [N, C, *] -> SiLU(GroupNorm(x)), same shape and dtype.
  at::Tensor forward_silu(const at::Tensor& x);
  // x: [N, C, *], add: [N, C] or [C] -> SiLU(GroupNorm(x + add)), add broadcast over the positions
  // (and samples); on a channels-last CUDA tensor in one kernel pair that never writes the sum.
  at::Tensor forward_silu(const at::Tensor& x, const at::Tensor& add);
};
TORCH_MODULE(GroupNorm);

// SiLU(norm(x)) for a module's closing norm, whose output is a recorded intermediate: with an
// active tap the norm's output is recorded as child `name` first (so the two run unfused).
at::Tensor group_norm_silu(GroupNorm& norm, const at::Tensor& x, const Tap& tap, const std::string& name);

}  // namespace vdm::models
