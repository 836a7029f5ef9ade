// A diffusers-format model folder: model_index.json naming the components, one sub-folder each.
//
//   model_index.json                 {"_class_name": "TextToVideoSDPipeline", "unet": ["diffusers", "UNet3DConditionModel"], ...}
//   unet/config.json + diffusion_pytorch_model.safetensors
//   vae/config.json + diffusion_pytorch_model.safetensors
//   text_encoder/config.json + model.safetensors
//   tokenizer/vocab.json + merges.txt (+ tokenizer_config.json, special_tokens_map.json)
//   scheduler/scheduler_config.json
#pragma once
#include <map>
#include <string>
#include <vector>

namespace vdm::pipelines {

struct ComponentInfo {
  std::string name;        // "unet"
  std::string library;     // "diffusers" / "transformers"
  std::string class_name;  // "UNet3DConditionModel"
  std::string dir;         // absolute folder of the component
  std::string config_path; // config.json / scheduler_config.json / tokenizer_config.json ("" if none)
  std::string weights_path;// safetensors file ("" for tokenizer and scheduler)
};

class ModelFolder {
 public:
  // Reads model_index.json and checks that every component needed for text-to-video (unet, vae,
  // text_encoder, tokenizer, scheduler) is listed and present with its files. Throws InputError
  // (missing folder or component) or ConfigError (malformed model_index.json) naming what is
  // missing and where.
  static ModelFolder open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const std::string& pipeline_class() const { return pipeline_class_; }
  const ComponentInfo& component(const std::string& name) const;
  const std::map<std::string, ComponentInfo>& components() const { return components_; }

 private:
  std::string dir_;
  std::string pipeline_class_;
  std::map<std::string, ComponentInfo> components_;
};

// Human-readable summary for `vdm info`: components, key config settings, parameter counts and
// dtypes (read from the safetensors headers; no weights are loaded).
std::string describe_model_folder(const ModelFolder& folder);

}  // namespace vdm::pipelines
