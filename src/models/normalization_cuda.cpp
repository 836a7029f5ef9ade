#include "models/normalization_cuda.h"

#include <fmt/format.h>

#include <string>

#include "core/error.h"
#ifdef VDM_WITH_CUDA_KERNELS
#include <c10/cuda/CUDAStream.h>

#include "models/group_norm_nhwc.h"
#endif

namespace vdm::models {

#ifdef VDM_WITH_CUDA_KERNELS
namespace {
bool channels_last_dense(const at::Tensor& x) { return x.dim() >= 3 && x.movedim(1, -1).is_contiguous(); }
bool parameter_fits(const at::Tensor& p, const at::Tensor& x) {
  return !p.defined() || (p.scalar_type() == x.scalar_type() && p.is_contiguous() && p.device() == x.device() &&
                          p.numel() == x.size(1));
}
std::string strides_of(const at::Tensor& x) {
  std::string s;
  for (int64_t v : x.strides()) s += (s.empty() ? "" : ",") + std::to_string(v);
  return s;
}
}  // namespace

bool channels_last_pays(const c10::Device& device) { return device.is_cuda(); }

bool group_norm_nhwc_applies(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  if (!x.is_cuda() || x.requires_grad() || !channels_last_dense(x) || x.is_contiguous()) return false;
  const auto t = x.scalar_type();
  if (t != at::kFloat && t != at::kHalf && t != at::kBFloat16) return false;
  return parameter_fits(weight, x) && parameter_fits(bias, x);
}

at::Tensor group_norm_nhwc(const at::Tensor& x, int64_t groups, const at::Tensor& weight, const at::Tensor& bias,
                           double eps, bool silu) {
  if (!group_norm_nhwc_applies(x, weight, bias))
    throw Error(fmt::format("group_norm_nhwc: expected a channels-last CUDA tensor of float32, float16 or bfloat16 "
                            "with parameters of its dtype; got {} {} with strides {}",
                            x.device().str(), c10::toString(x.scalar_type()), strides_of(x)));
  at::Tensor y = at::empty_like(x);  // preserves x's strides: dense, channels innermost
  cuda::GroupNormNhwcShape s;
  s.samples = x.size(0);
  s.channels = x.size(1);
  s.rows = x.numel() / std::max<int64_t>(1, s.samples * s.channels);
  s.groups = groups;
  if (groups <= 0 || s.channels % groups != 0)
    throw Error(fmt::format("group_norm_nhwc: {} channels cannot be split into {} groups", s.channels, groups));
  at::Tensor workspace = at::empty({cuda::group_norm_nhwc_workspace(s)}, x.options().dtype(at::kFloat));
  const cuda::NormDtype dtype = x.scalar_type() == at::kFloat  ? cuda::NormDtype::kFloat
                                : x.scalar_type() == at::kHalf ? cuda::NormDtype::kHalf
                                                               : cuda::NormDtype::kBFloat16;
  auto ptr = [](const at::Tensor& t) -> const void* { return t.defined() ? t.data_ptr() : nullptr; };
  cuda::group_norm_nhwc(s, dtype, x.data_ptr(), ptr(weight), ptr(bias), eps, silu, y.data_ptr(),
                        workspace.data_ptr<float>(), c10::cuda::getCurrentCUDAStream(x.device().index()).stream());
  return y;
}
#else
bool channels_last_pays(const c10::Device&) { return false; }

bool group_norm_nhwc_applies(const at::Tensor&, const at::Tensor&, const at::Tensor&) { return false; }

at::Tensor group_norm_nhwc(const at::Tensor& x, int64_t, const at::Tensor&, const at::Tensor&, double, bool) {
  throw Error(fmt::format("group_norm_nhwc: this build of vdm has no CUDA kernels (tensor on {})", x.device().str()));
}
#endif

}  // namespace vdm::models
