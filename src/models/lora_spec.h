// Naming a LoRA to merge: `FILE[:STRENGTH]`, as `--lora` and a shot list's `lora:` take it. Free of
// LibTorch (the shot list parser, which is fuzzed alone, uses it); reading and merging the file is
// models/lora.h.
#pragma once
#include <string>
#include <vector>

namespace vdm::models {

// A file (or a folder holding pytorch_lora_weights.safetensors or adapter_model.safetensors) and the
// strength it is merged with (default 1).
struct LoraSpec {
  std::string path;
  double strength = 1.0;
  bool operator==(const LoraSpec& o) const { return path == o.path && strength == o.strength; }
};

// "style.safetensors:0.7" -> {path, 0.7}; a suffix that is not a number stays part of the path.
// InputError for an empty path or a strength that is not finite.
LoraSpec parse_lora_spec(const std::string& text);

// "a.safetensors:0.7, b.safetensors" -> two specs (comma-separated, spaces around them ignored).
// InputError as parse_lora_spec, or for an empty entry.
std::vector<LoraSpec> parse_lora_list(const std::string& text);

// The safetensors file `path` names: the path itself, or the LoRA file inside a folder. InputError
// naming the path when neither exists.
std::string lora_weights_file(const std::string& path);

}  // namespace vdm::models
