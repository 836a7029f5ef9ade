// Mixed precision for training: bfloat16 autocast on CPU (oneDNN/AMX) or CUDA, with
// normalisation layers kept in float32.
#pragma once
#include <c10/core/Device.h>

#include <string>

namespace vdm::train {

enum class Precision { kFloat32, kBF16 };

// "float32" | "bf16" | "auto" (bf16 on CUDA; on CPU bf16 when the CPU has native bf16 matrix
// units (AMX or AVX512-BF16), else float32). InputError for other names.
Precision choose_precision(const std::string& name, c10::Device device);
const char* precision_name(Precision p);

// On CUDA: TF32 for float32 matmuls and convolutions, and cuDNN autotuning (training shapes
// repeat). On CPU (glibc): freed memory stays in the heap instead of going back to the system
// after each step, which spares the page faults of re-mapping every large activation (measured:
// 9.0-10.4 -> 6.8-7.7 s per UNet step of the shapes recipe on 2 cores).
void configure_device_for_training(c10::Device device);

// Enables autocast for `device` while alive (no-op for kFloat32). On LibTorch 1.x CPU autocast
// passes bf16 activations to group_norm/layer_norm with float32 weights, which those kernels reject;
// this module registers float32 autocast kernels for both on first use.
class AutocastScope {
 public:
  AutocastScope(c10::Device device, Precision precision);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool active_ = false;
  bool cuda_ = false;
  bool previous_ = false;
};

}  // namespace vdm::train
