#include "models/lora_spec.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "core/error.h"

namespace vdm::models {

namespace fs = std::filesystem;

LoraSpec parse_lora_spec(const std::string& text) {
  LoraSpec spec{text, 1.0};
  const auto colon = text.rfind(':');
  if (colon != std::string::npos && colon + 1 < text.size()) {
    const std::string tail = text.substr(colon + 1);
    char* end = nullptr;
    const double v = std::strtod(tail.c_str(), &end);
    if (end == tail.c_str() + tail.size()) {
      if (!std::isfinite(v))
        throw InputError(fmt::format("LoRA '{}': strength '{}' is not a finite number; write FILE or FILE:0.8", text, tail));
      spec = {text.substr(0, colon), v};
    }
  }
  if (spec.path.empty())
    throw InputError(fmt::format("LoRA '{}': no file before the strength; write FILE or FILE:0.8", text));
  return spec;
}

std::vector<LoraSpec> parse_lora_list(const std::string& text) {
  std::vector<LoraSpec> out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    std::string item = text.substr(start, end - start);
    const size_t a = item.find_first_not_of(" \t"), b = item.find_last_not_of(" \t");
    item = a == std::string::npos ? "" : item.substr(a, b - a + 1);
    if (item.empty())
      throw InputError(fmt::format("LoRA list '{}' has an empty entry; write FILE[:STRENGTH] entries separated by commas",
                                   text));
    out.push_back(parse_lora_spec(item));
    start = end + 1;
  }
  return out;
}

std::string lora_weights_file(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    for (const char* name : {"pytorch_lora_weights.safetensors", "adapter_model.safetensors"}) {
      const fs::path p = fs::path(path) / name;
      if (fs::is_regular_file(p, ec)) return p.string();
    }
    throw InputError(fmt::format(
        "LoRA folder '{}' holds neither pytorch_lora_weights.safetensors nor adapter_model.safetensors; "
        "pass the .safetensors file itself",
        path));
  }
  if (!fs::is_regular_file(path, ec))
    throw InputError(fmt::format("LoRA file '{}' does not exist; check the path", path));
  return path;
}

}  // namespace vdm::models
