// Reading and writing diffusers component folders (config.json + safetensors weights).
#pragma once
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <torch/nn/module.h>

#include <string>

#include "io/tensor_io.h"

namespace vdm::models {

// The diffusers version vdm writes into config.json files.
constexpr const char* kDiffusersVersion = "0.31.0";

// The weights file of a component folder: `preferred` when present, else `fallback` when given
// and present; InputError naming the folder and both names otherwise (and mentioning a
// PyTorch .bin file when one is there, which vdm does not read).
std::string find_weights_file(const std::string& dir, const std::string& preferred,
                              const std::string& fallback = {});

// Loads `path` into `module` strictly (see io::load_state_dict).
void load_weights(torch::nn::Module& module, const std::string& path, const io::StateDictOptions& options = {});

// Creates `dir` (and parents), writes dir/config.json (pretty-printed) and dir/<weights_name>
// with the module's parameters and buffers (floating-point ones cast to `dtype` when given).
// Both files are written atomically.
void save_pretrained(const torch::nn::Module& module, const nlohmann::json& config, const std::string& dir,
                     const std::string& weights_name, c10::optional<c10::ScalarType> dtype = c10::nullopt);

}  // namespace vdm::models
