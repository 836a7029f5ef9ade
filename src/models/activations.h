// Activation functions named as in diffusers configs ("silu"/"swish", "gelu", "mish", "relu").
#pragma once
#include <ATen/core/Tensor.h>

#include <string>

namespace vdm::models {

enum class Activation { kSilu, kGelu, kMish, kRelu };

// Parses a diffusers act_fn name; ConfigError naming `source` and the value when unknown.
Activation parse_activation(const std::string& name, const std::string& source = "config");
std::string activation_name(Activation act);
at::Tensor apply_activation(Activation act, const at::Tensor& x);

}  // namespace vdm::models
