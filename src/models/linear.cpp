#include "models/linear.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <ATen/core/grad_mode.h>
#include <fmt/format.h>

#include <algorithm>
#include <vector>

#include "core/error.h"
#include "models/linear_onednn.h"

namespace vdm::models {

bool linear_uses_onednn(const at::Tensor& x) {
  static const bool available = at::hasMKLDNN();
  const bool dtype_ok =
      x.scalar_type() == at::kFloat || (x.scalar_type() == at::kBFloat16 && onednn_linear_available());
  if (!available || !x.device().is_cpu() || !dtype_ok || x.dim() < 2) return false;
  return !at::GradMode::is_enabled() || !x.requires_grad();
}

namespace {
// The oneDNN path applies: autocast (bf16 training) and mixed dtypes keep LibTorch's linear, which
// casts to one dtype.
bool onednn_path(const at::Tensor& x, const at::Tensor& weight) {
  return linear_uses_onednn(x) && !(at::GradMode::is_enabled() && weight.requires_grad()) &&
         x.scalar_type() == weight.scalar_type() &&
         c10::impl::tls_is_dispatch_key_excluded(c10::DispatchKey::AutocastCPU);
}
}  // namespace

at::Tensor linear_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  if (!onednn_path(x, weight)) return at::linear(x, weight, bias);
  const int64_t in = x.size(-1);
  const at::Tensor x2 = x.reshape({-1, in}).contiguous();
  at::Tensor y;
  if (onednn_linear_available()) {
    y = onednn_linear(x2, weight.contiguous(), bias.defined() ? bias.contiguous() : at::Tensor());
  } else {
    const at::Tensor b = bias.defined() ? bias.to_mkldnn() : at::Tensor();
    y = at::mkldnn_linear(x2.to_mkldnn(), weight.contiguous().to_mkldnn(), b).to_dense();
  }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = weight.size(0);
  return y.view(shape);
}

at::Tensor linear_forward_add(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, at::Tensor& acc) {
  check_accumulator("Linear", x, weight.size(0), acc);
  if (onednn_path(x, weight) && onednn_linear_available() && acc.is_contiguous() &&
      acc.scalar_type() == x.scalar_type() && !(at::GradMode::is_enabled() && acc.requires_grad())) {
    onednn_linear(x.reshape({-1, x.size(-1)}).contiguous(), weight.contiguous(),
                  bias.defined() ? bias.contiguous() : at::Tensor(), acc.view({-1, weight.size(0)}));
    return acc;
  }
  return acc.add_(linear_forward(x, weight, bias));
}

void check_accumulator(const char* who, const at::Tensor& x, int64_t out_features, const at::Tensor& acc) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  if (!shape.empty()) shape.back() = out_features;
  if (acc.sizes() != at::IntArrayRef(shape))
    throw Error(fmt::format("{}: cannot add an output of shape {} to a tensor of shape {}", who, c10::str(shape),
                            c10::str(acc.sizes())));
}

at::Tensor LinearImpl::forward(const at::Tensor& x) { return linear_forward(x, weight, bias); }

at::Tensor LinearImpl::forward_add_to(const at::Tensor& x, at::Tensor& acc) {
  return linear_forward_add(x, weight, bias, acc);
}

}  // namespace vdm::models
