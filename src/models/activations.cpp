#include "models/activations.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "core/error.h"

namespace vdm::models {

Activation parse_activation(const std::string& name, const std::string& source) {
  if (name == "silu" || name == "swish") return Activation::kSilu;
  if (name == "gelu") return Activation::kGelu;
  if (name == "mish") return Activation::kMish;
  if (name == "relu") return Activation::kRelu;
  throw ConfigError(fmt::format("{}: unsupported activation '{}' (expected silu, swish, gelu, mish or relu)",
                                source, name));
}

std::string activation_name(Activation act) {
  switch (act) {
    case Activation::kSilu: return "silu";
    case Activation::kGelu: return "gelu";
    case Activation::kMish: return "mish";
    case Activation::kRelu: return "relu";
  }
  return "silu";
}

at::Tensor apply_activation(Activation act, const at::Tensor& x) {
  switch (act) {
    case Activation::kSilu: return at::silu(x);
    case Activation::kGelu: return at::gelu(x);
    case Activation::kMish: return at::mish(x);
    case Activation::kRelu: return at::relu(x);
  }
  return x;
}

}  // namespace vdm::models
