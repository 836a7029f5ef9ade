#include "models/pretrained_io.h"

#include <fmt/format.h>

#include <filesystem>

#include "core/error.h"
#include "io/atomic_file.h"

namespace vdm::models {

namespace fs = std::filesystem;

std::string find_weights_file(const std::string& dir, const std::string& preferred, const std::string& fallback) {
  const fs::path d(dir);
  if (fs::is_regular_file(d / preferred)) return (d / preferred).string();
  if (!fallback.empty() && fs::is_regular_file(d / fallback)) return (d / fallback).string();
  std::string hint = "check the model folder";
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(d, ec)) {
    if (e.path().extension() == ".bin") {
      hint = fmt::format("found the PyTorch pickle '{}', which vdm does not read: convert it to safetensors",
                         e.path().filename().string());
      break;
    }
  }
  if (!fs::is_directory(d, ec)) hint = "the folder does not exist";
  throw InputError(fmt::format("{}: no weights file '{}'{}; {}", dir, preferred,
                               fallback.empty() ? "" : fmt::format(" (nor '{}')", fallback), hint));
}

void load_weights(torch::nn::Module& module, const std::string& path, const io::StateDictOptions& options) {
  io::load_module_weights(module, path, options);
}

void save_pretrained(const torch::nn::Module& module, const nlohmann::json& config, const std::string& dir,
                     const std::string& weights_name, c10::optional<c10::ScalarType> dtype) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(fmt::format("cannot create model folder '{}': {}", dir, ec.message()));
  io::save_safetensors((fs::path(dir) / weights_name).string(), io::state_dict(module, dtype), {{"format", "pt"}});
  io::write_file_atomic((fs::path(dir) / "config.json").string(), config.dump(2) + "\n");
}

}  // namespace vdm::models
