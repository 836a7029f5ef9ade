// Bridges safetensors files and LibTorch: load to at::Tensor, save from at::Tensor, and strict
// state-dict loading into a torch::nn::Module by its parameter names (the checkpoint keys).
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <functional>
#include <map>
#include <string>

namespace vdm::io {

using TensorMap = std::map<std::string, at::Tensor>;

// Loads every tensor of a safetensors file (copied out of the mapping, CPU).
TensorMap load_safetensors(const std::string& path);

// Saves tensors (made contiguous, moved to CPU) atomically; dtypes F32/F16/BF16/F64/I64/I32/I16/I8/U8/BOOL.
void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata = {});

struct StateDictOptions {
  // Maps a key found in the file to the module's key (e.g. older VAE attention names); identity
  // when empty.
  std::function<std::string(const std::string&)> rename;
  // Reject weights that contain NaN or Inf.
  bool check_finite = true;
};

// Copies `tensors` into the module's parameters and buffers, converting dtypes. Strict: every
// missing key, unexpected key and shape mismatch is collected and reported together in one
// WeightsError naming `source` (the file), the keys, expected and got shapes.
void load_state_dict(torch::nn::Module& module, const TensorMap& tensors, const std::string& source,
                     const StateDictOptions& options = {});

// Loads a safetensors file into a module (load_safetensors + load_state_dict).
void load_module_weights(torch::nn::Module& module, const std::string& path,
                         const StateDictOptions& options = {});

// The module's parameters and buffers by name, optionally cast to `dtype` (for saving).
TensorMap state_dict(const torch::nn::Module& module,
                     c10::optional<c10::ScalarType> dtype = c10::nullopt);

// Total number of parameter elements.
int64_t parameter_count(const torch::nn::Module& module);

}  // namespace vdm::io
