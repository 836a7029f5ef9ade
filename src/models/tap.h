// Taps: a way to observe intermediate outputs of a model by module path ("down_blocks.0.resnets.0",
// "mid_block", "encoder.conv_in"), used by parity tests and debugging. An inactive Tap costs
// nothing: no strings are built and no callback runs.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>

namespace vdm::models {

// Called with the module path and that module's output (the first tensor when it returns several).
// Video blocks report the internal [B*F, C, H, W] layout.
using TapFn = std::function<void(const std::string& name, const at::Tensor& value)>;

class Tap {
 public:
  Tap() = default;  // inactive
  // `fn` must outlive this Tap and every child made from it.
  explicit Tap(const TapFn* fn, std::string path = {}) : fn_(fn && *fn ? fn : nullptr), path_(std::move(path)) {}

  bool active() const { return fn_ != nullptr; }
  const std::string& path() const { return path_; }

  // The tap of a child module: "<path>.<name>" (or "<name>" at the root).
  Tap child(const std::string& name) const {
    if (!fn_) return {};
    return Tap(fn_, path_.empty() ? name : path_ + "." + name);
  }
  // The tap of the index-th module of a list: "<path>.<name>.<index>".
  Tap child(const std::string& name, int64_t index) const {
    if (!fn_) return {};
    return child(name + "." + std::to_string(index));
  }

  // Records `value` as the output of the module at this path.
  void operator()(const at::Tensor& value) const {
    if (fn_) (*fn_)(path_, value);
  }
  // Records `value` as the output of child `name`.
  void record(const std::string& name, const at::Tensor& value) const {
    if (fn_) (*fn_)(path_.empty() ? name : path_ + "." + name, value);
  }

 private:
  const TapFn* fn_ = nullptr;
  std::string path_;
};

}  // namespace vdm::models
