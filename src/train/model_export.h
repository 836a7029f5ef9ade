// Writing the trained model as a diffusers-format folder:
//   model_index.json (TextToVideoSDPipeline), unet/, vae/, text_encoder/, tokenizer/, scheduler/.
// Each component is written into a hidden temporary folder next to its final place and swapped in
// by renames, so an interrupted export never leaves a half-written component.
#pragma once
#include <nlohmann/json.hpp>

#include <functional>
#include <string>

namespace vdm::train {

// Writes `<model_dir>/<name>/` by calling `write(temp_dir)`, then replaces the old component.
void write_component(const std::string& model_dir, const std::string& name,
                     const std::function<void(const std::string& dir)>& write);

// model_index.json naming TextToVideoSDPipeline and its five components.
void write_model_index(const std::string& model_dir);

// scheduler/scheduler_config.json from the recipe's scheduler object (with _class_name and
// _diffusers_version filled in when absent).
void write_scheduler_config(const std::string& model_dir, const nlohmann::json& scheduler);

}  // namespace vdm::train
