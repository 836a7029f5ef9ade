#include "models/normalization.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <vector>

#include "models/normalization_cpu.h"
#include "models/cuda_ops.h"

namespace vdm::models {

namespace {
at::Tensor widened(const at::Tensor& t) { return t.defined() ? t.to(at::kFloat) : t; }
bool needs_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }
// The fused kernels have no backward: they run only where the affine parameters need no gradient.
bool parameters_need_no_grad(const at::Tensor& weight, const at::Tensor& bias) {
  return !(at::GradMode::is_enabled() && (needs_grad(weight) || needs_grad(bias)));
}
// The fused kernel made the fixture UNet step about 5% faster in bfloat16 (LibTorch's bfloat16 SiLU is
// scalar) and, once vdm's kernels ran on every thread, about 4% in float32 (docs/performance.md).
bool group_norm_fused(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return fused_group_norm_cpu_applies(x) && parameters_need_no_grad(weight, bias);
}
// Channels-last CUDA inference: vdm's NHWC kernels, which keep the layout.
bool group_norm_nhwc_runs(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return group_norm_nhwc_applies(x, weight, bias) && parameters_need_no_grad(weight, bias);
}
}  // namespace

bool norm_runs_in_float32(const at::Tensor& x) {
  return x.device().is_cpu() && (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf);
}

at::Tensor LayerNormImpl::forward(const at::Tensor& x) {
  // Inference over the last dimension: vdm's kernels, on CUDA or the fused CPU one (float32
  // statistics, bfloat16 read and written directly).
  const auto& shape = options.normalized_shape();
  if (shape.size() == 1 && x.dim() >= 1 && x.size(-1) == shape[0] && parameters_need_no_grad(weight, bias)) {
    if (layer_norm_cuda_applies(x, weight, bias)) return layer_norm_cuda(x, weight, bias, options.eps());
    if (fused_layer_norm_cpu_applies(x)) return fused_layer_norm_cpu(x, weight, bias, options.eps());
  }
  if (!norm_runs_in_float32(x)) return torch::nn::LayerNormImpl::forward(x);
  return at::layer_norm(x.to(at::kFloat), options.normalized_shape(), widened(weight), widened(bias), options.eps())
      .to(x.scalar_type());
}

std::pair<at::Tensor, at::Tensor> LayerNormImpl::forward_add(const at::Tensor& x, const at::Tensor& residual) {
  const auto& shape = options.normalized_shape();
  if (shape.size() == 1 && x.dim() >= 1 && x.size(-1) == shape[0] && parameters_need_no_grad(weight, bias) &&
      add_layer_norm_cuda_applies(x, residual, weight, bias))
    return add_layer_norm_cuda(x, residual, weight, bias, options.eps());
  at::Tensor sum = x + residual;
  return {sum, forward(sum)};
}

at::Tensor GroupNormImpl::forward(const at::Tensor& x) {
  if (group_norm_nhwc_runs(x, weight, bias))
    return group_norm_nhwc(x, options.num_groups(), weight, bias, options.eps(), /*silu=*/false);
  if (group_norm_fused(x, weight, bias))
    return fused_group_norm_cpu(x, options.num_groups(), weight, bias, options.eps(), /*silu=*/false);
  if (!norm_runs_in_float32(x)) return torch::nn::GroupNormImpl::forward(x);
  return at::group_norm(x.to(at::kFloat), options.num_groups(), widened(weight), widened(bias), options.eps())
      .to(x.scalar_type());
}

at::Tensor GroupNormImpl::forward_silu(const at::Tensor& x) {
  if (group_norm_nhwc_runs(x, weight, bias))
    return group_norm_nhwc(x, options.num_groups(), weight, bias, options.eps(), /*silu=*/true);
  if (group_norm_fused(x, weight, bias))
    return fused_group_norm_cpu(x, options.num_groups(), weight, bias, options.eps(), /*silu=*/true);
  return at::silu(forward(x));
}

at::Tensor GroupNormImpl::forward_silu(const at::Tensor& x, const at::Tensor& add) {
  const bool per_sample = add.dim() == 2;
  const bool fits = (per_sample ? add.size(0) == x.size(0) && add.size(1) == x.size(1)
                                : add.dim() == 1 && add.size(0) == x.size(1)) &&
                    add.scalar_type() == x.scalar_type() && add.is_contiguous();
  if (fits && group_norm_nhwc_runs(x, weight, bias))
    return group_norm_nhwc(x, options.num_groups(), weight, bias, options.eps(), /*silu=*/true, add);
  std::vector<int64_t> shape(x.dim(), 1);
  shape[0] = per_sample ? add.size(0) : 1;
  shape[1] = add.size(-1);
  return forward_silu(x + add.view(shape));
}

at::Tensor group_norm_silu(GroupNorm& norm, const at::Tensor& x, const Tap& tap, const std::string& name) {
  if (!tap.active()) return norm->forward_silu(x);
  at::Tensor h = norm->forward(x);
  tap.record(name, h);
  return at::silu(h);
}

}  // namespace vdm::models
