#include "train/model_export.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "core/error.h"
#include "io/atomic_file.h"
#include "models/pretrained_io.h"
#include "train/checkpoint.h"

namespace vdm::train {

namespace fs = std::filesystem;

void write_component(const std::string& model_dir, const std::string& name,
                     const std::function<void(const std::string& dir)>& write) {
  std::error_code ec;
  fs::create_directories(model_dir, ec);
  if (ec) throw Error(fmt::format("cannot create the model folder '{}': {}", model_dir, ec.message()));
  const fs::path final_dir = fs::path(model_dir) / name;
  const fs::path temp = fs::path(model_dir) / fmt::format(".{}.{}.tmp", name, ::getpid());
  const fs::path old = fs::path(model_dir) / fmt::format(".{}.{}.old", name, ::getpid());
  remove_tree(temp.string());
  fs::create_directories(temp, ec);
  if (ec) throw Error(fmt::format("cannot create '{}': {}", temp.string(), ec.message()));
  try {
    write(temp.string());
  } catch (...) {
    remove_tree(temp.string());
    throw;
  }
  remove_tree(old.string());
  if (fs::exists(final_dir)) io::commit_rename(final_dir.string(), old.string());
  io::commit_rename(temp.string(), final_dir.string());
  remove_tree(old.string());
}

void write_model_index(const std::string& model_dir) {
  // The scheduler entry names the class the folder's scheduler_config.json holds.
  std::string scheduler_class = "DDIMScheduler";
  const fs::path sched = fs::path(model_dir) / "scheduler" / "scheduler_config.json";
  if (fs::exists(sched)) {
    std::ifstream in(sched);
    nlohmann::json cfg = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (cfg.is_object() && cfg.contains("_class_name") && cfg["_class_name"].is_string())
      scheduler_class = cfg["_class_name"].get<std::string>();
  }
  nlohmann::json j = {{"_class_name", "TextToVideoSDPipeline"},
                      {"_diffusers_version", models::kDiffusersVersion},
                      {"scheduler", {"diffusers", scheduler_class}},
                      {"text_encoder", {"transformers", "CLIPTextModel"}},
                      {"tokenizer", {"transformers", "CLIPTokenizer"}},
                      {"unet", {"diffusers", "UNet3DConditionModel"}},
                      {"vae", {"diffusers", "AutoencoderKL"}}};
  std::error_code ec;
  fs::create_directories(model_dir, ec);
  io::write_file_atomic((fs::path(model_dir) / "model_index.json").string(), j.dump(2) + "\n");
}

void write_scheduler_config(const std::string& model_dir, const nlohmann::json& scheduler) {
  nlohmann::json j = scheduler;
  if (!j.contains("_class_name")) j["_class_name"] = "DDIMScheduler";
  if (!j.contains("_diffusers_version")) j["_diffusers_version"] = models::kDiffusersVersion;
  write_component(model_dir, "scheduler", [&](const std::string& dir) {
    io::write_file_atomic((fs::path(dir) / "scheduler_config.json").string(), j.dump(2) + "\n");
  });
}

}  // namespace vdm::train
