// Trainable LoRA adapters on a frozen model (`vdm train` with a recipe's "lora" section).
//
// Each adapted Linear or convolution gets down (A) [r, in(, k...)] and up (B) [out, r(, 1...)], named by
// the PEFT keys its file will carry ("unet.<module>.lora_A.weight"). A starts Kaiming-uniform and B at
// zero, as PEFT does, so the adapted model starts as the base. While an Applied guard lives, each
// module's `weight` member is W + alpha / r * B @ A (a tensor with a gradient to A and B); every
// forward path reads that member, so the fast paths that need a weight without a gradient step
// aside on their own. The registered parameter W stays as it was and is never trained.
#pragma once
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <torch/nn/module.h>

#include <memory>
#include <string>
#include <vector>

#include "io/tensor_io.h"
#include "train/optim.h"

namespace vdm::train {

struct LoraAdapterOptions {
  int64_t rank = 4;
  double alpha = 4.0;
  // Module name suffixes adapted (PEFT's target_modules): a module is adapted when its name is one
  // of these or ends with "." + one of these.
  std::vector<std::string> target_modules = {"to_q", "to_k", "to_v", "to_out.0"};
};

class LoraAdapters {
 public:
  // Adds adapters to every Linear / Conv2d / Conv3d of `component` matched by options.target_modules,
  // on the weights' device, from `generator`. ConfigError naming the targets when none matches.
  LoraAdapters(torch::nn::Module& component, const std::string& component_name, const LoraAdapterOptions& options,
               at::Generator& generator);
  ~LoraAdapters();
  LoraAdapters(const LoraAdapters&) = delete;
  LoraAdapters& operator=(const LoraAdapters&) = delete;

  // The trainable tensors by their file keys (A and B of every adapted module).
  const NamedParams& parameters() const { return params_; }
  int64_t size() const;  // adapted modules
  const std::string& component() const { return component_; }
  // The adapters' tensors (float32) and their LoraConfig, as diffusers' save_lora_weights writes them.
  io::TensorMap state_dict() const;
  nlohmann::json adapter_metadata() const;

  // Sets every adapted module's weight to W + scale * B @ A for its lifetime, then back to W.
  class Applied {
   public:
    explicit Applied(LoraAdapters& adapters);
    ~Applied();
    Applied(const Applied&) = delete;
    Applied& operator=(const Applied&) = delete;

   private:
    LoraAdapters& adapters_;
  };

  struct Target;

 private:
  std::string component_;
  LoraAdapterOptions options_;
  std::vector<std::unique_ptr<Target>> targets_;
  NamedParams params_;
};

// Writes <dir>/pytorch_lora_weights.safetensors (keys "unet.<module>.lora_A.weight",
// "text_encoder.<module>...", metadata "lora_adapter_metadata" with each component's LoraConfig under
// its prefix, as diffusers does) atomically. `adapters`: one per component.
void save_lora_weights(const std::vector<const LoraAdapters*>& adapters, const std::string& dir);

}  // namespace vdm::train
