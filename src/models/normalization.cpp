#include "models/normalization.h"

#include <ATen/ATen.h>

namespace vdm::models {

namespace {
at::Tensor widened(const at::Tensor& t) { return t.defined() ? t.to(at::kFloat) : t; }
}  // namespace

bool norm_runs_in_float32(const at::Tensor& x) {
  return x.device().is_cpu() && (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf);
}

at::Tensor LayerNormImpl::forward(const at::Tensor& x) {
  if (!norm_runs_in_float32(x)) return torch::nn::LayerNormImpl::forward(x);
  return at::layer_norm(x.to(at::kFloat), options.normalized_shape(), widened(weight), widened(bias), options.eps())
      .to(x.scalar_type());
}

at::Tensor GroupNormImpl::forward(const at::Tensor& x) {
  if (!norm_runs_in_float32(x)) return torch::nn::GroupNormImpl::forward(x);
  return at::group_norm(x.to(at::kFloat), options.num_groups(), widened(weight), widened(bias), options.eps())
      .to(x.scalar_type());
}

}  // namespace vdm::models
