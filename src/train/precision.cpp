#include "train/precision.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>
#include <torch/version.h>

#include <fstream>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <string>

#include "core/error.h"

namespace vdm::train {

namespace {

#if TORCH_VERSION_MAJOR < 2
// float32 kernels for the normalisation ops under CPU autocast (LibTorch 1.x lacks them).
c10::optional<at::Tensor> to_float(const c10::optional<at::Tensor>& t) {
  if (t && t->defined()) return t->to(at::kFloat);
  return t;
}

at::Tensor group_norm_fp32(const at::Tensor& input, int64_t groups, const c10::optional<at::Tensor>& weight,
                           const c10::optional<at::Tensor>& bias, double eps, bool cudnn_enabled) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  return at::group_norm(input.to(at::kFloat), groups, to_float(weight), to_float(bias), eps, cudnn_enabled);
}

at::Tensor layer_norm_fp32(const at::Tensor& input, at::IntArrayRef shape, const c10::optional<at::Tensor>& weight,
                           const c10::optional<at::Tensor>& bias, double eps, bool cudnn_enable) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  return at::layer_norm(input.to(at::kFloat), shape, to_float(weight), to_float(bias), eps, cudnn_enable);
}

TORCH_LIBRARY_IMPL(aten, AutocastCPU, m) {
  m.impl("group_norm", TORCH_FN(group_norm_fp32));
  m.impl("layer_norm", TORCH_FN(layer_norm_fp32));
}
#endif

bool cpu_has_native_bf16() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) == 0) {
      return line.find(" amx_bf16") != std::string::npos || line.find(" avx512_bf16") != std::string::npos;
    }
  }
  return false;
}

void set_enabled(bool cuda, bool on) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  at::autocast::set_autocast_enabled(cuda ? at::kCUDA : at::kCPU, on);
  if (on) at::autocast::set_autocast_dtype(cuda ? at::kCUDA : at::kCPU, at::kBFloat16);
#else
  if (cuda) {
    at::autocast::set_enabled(on);
    if (on) at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
  } else {
    at::autocast::set_cpu_enabled(on);
    if (on) at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
  }
#endif
}

bool is_enabled(bool cuda) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  return at::autocast::is_autocast_enabled(cuda ? at::kCUDA : at::kCPU);
#else
  return cuda ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
#endif
}

}  // namespace

Precision choose_precision(const std::string& name, c10::Device device) {
  if (name == "float32" || name == "fp32") return Precision::kFloat32;
  if (name == "bf16" || name == "bfloat16") return Precision::kBF16;
  if (name == "auto") {
    if (device.is_cuda()) return Precision::kBF16;
    return cpu_has_native_bf16() ? Precision::kBF16 : Precision::kFloat32;
  }
  throw InputError("precision '" + name + "' is not known; use auto, float32 or bf16");
}

void configure_device_for_training(c10::Device device) {
  if (!device.is_cuda()) {
    return;  // CPU allocator and BLAS threads: see init_runtime()
  }
  at::globalContext().setFloat32MatmulPrecision("high");
  at::globalContext().setAllowTF32CuDNN(true);
  at::globalContext().setBenchmarkCuDNN(true);
}

const char* precision_name(Precision p) { return p == Precision::kBF16 ? "bf16" : "float32"; }

AutocastScope::AutocastScope(c10::Device device, Precision precision) {
  if (precision != Precision::kBF16) return;
  cuda_ = device.is_cuda();
  previous_ = is_enabled(cuda_);
  set_enabled(cuda_, true);
  active_ = true;
}

AutocastScope::~AutocastScope() {
  if (!active_) return;
  set_enabled(cuda_, previous_);
  if (!previous_) at::autocast::clear_cache();
}

}  // namespace vdm::train
