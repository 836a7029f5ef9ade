#include "pipelines/model_folder.h"

#include <fmt/format.h>

#include <filesystem>
#include <set>
#include <sstream>

#include "core/error.h"
#include "io/json_config.h"
#include "io/safetensors.h"
#include "models/skip_connections.h"

namespace vdm::pipelines {

namespace fs = std::filesystem;

namespace {

const char* const kRequired[] = {"unet", "vae", "text_encoder", "tokenizer", "scheduler"};

std::string first_existing(const fs::path& dir, std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (fs::is_regular_file(dir / n)) return (dir / n).string();
  return {};
}

}  // namespace

ModelFolder ModelFolder::open(const std::string& dir) {
  if (!fs::is_directory(dir))
    throw InputError(fmt::format(
        "model folder '{}' does not exist or is not a folder; pass --model with a diffusers-format "
        "folder (one holding model_index.json)",
        dir));
  fs::path root = fs::absolute(dir);
  fs::path index_path = root / "model_index.json";
  if (!fs::is_regular_file(index_path))
    throw InputError(fmt::format(
        "{}: model_index.json not found; a diffusers-format model folder holds model_index.json "
        "and one folder per component (unet, vae, text_encoder, tokenizer, scheduler)",
        root.string()));
  io::JsonConfig index = io::JsonConfig::load(index_path.string());

  ModelFolder folder;
  folder.dir_ = root.string();
  folder.pipeline_class_ = index.get_string("_class_name", "");
  for (auto it = index.json().begin(); it != index.json().end(); ++it) {
    if (it.key().empty() || it.key()[0] == '_') continue;
    const auto& v = it.value();
    // diffusers writes [null, null] for an optional component it left out.
    if (v.is_null() || (v.is_array() && v.size() == 2 && v[0].is_null() && v[1].is_null())) continue;
    if (!v.is_array() || v.size() != 2 || !v[0].is_string() || !v[1].is_string())
      index.fail(it.key(), "a [library, class] pair such as [\"diffusers\", \"AutoencoderKL\"]");
    ComponentInfo c;
    c.name = it.key();
    c.library = v[0].get<std::string>();
    c.class_name = v[1].get<std::string>();
    c.dir = (root / c.name).string();
    folder.components_[c.name] = c;
  }

  std::vector<std::string> problems;
  for (const char* name : kRequired) {
    auto it = folder.components_.find(name);
    if (it == folder.components_.end()) {
      problems.push_back(fmt::format("component '{}' is not listed in model_index.json", name));
      continue;
    }
    ComponentInfo& c = it->second;
    fs::path cdir(c.dir);
    if (!fs::is_directory(cdir)) {
      problems.push_back(fmt::format("folder '{}/' is missing", name));
      continue;
    }
    if (c.name == "tokenizer") {
      for (const char* f : {"vocab.json", "merges.txt"})
        if (!fs::is_regular_file(cdir / f)) problems.push_back(fmt::format("{}/{} is missing", name, f));
      c.config_path = first_existing(cdir, {"tokenizer_config.json"});
    } else if (c.name == "scheduler") {
      c.config_path = first_existing(cdir, {"scheduler_config.json"});
      if (c.config_path.empty()) problems.push_back("scheduler/scheduler_config.json is missing");
    } else {
      c.config_path = first_existing(cdir, {"config.json"});
      if (c.config_path.empty()) problems.push_back(fmt::format("{}/config.json is missing", name));
      c.weights_path = first_existing(
          cdir, {"diffusion_pytorch_model.safetensors", "model.safetensors",
                 "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors"});
      if (c.weights_path.empty())
        problems.push_back(fmt::format(
            "{}/ has no safetensors weights (expected {})", name,
            name == std::string("text_encoder") ? "model.safetensors"
                                                : "diffusion_pytorch_model.safetensors"));
    }
  }
  if (!problems.empty()) {
    std::ostringstream ss;
    for (size_t i = 0; i < problems.size(); ++i) ss << (i ? "; " : "") << problems[i];
    throw InputError(fmt::format("{}: incomplete model folder: {}", root.string(), ss.str()));
  }
  return folder;
}

const ComponentInfo& ModelFolder::component(const std::string& name) const {
  auto it = components_.find(name);
  if (it == components_.end())
    throw InputError(fmt::format("{}: model folder has no component '{}'", dir_, name));
  return it->second;
}

std::string describe_model_folder(const ModelFolder& folder) {
  std::ostringstream out;
  out << fmt::format("model folder  {}\n", folder.dir());
  out << fmt::format("pipeline      {}\n", folder.pipeline_class().empty() ? "(unspecified)"
                                                                        : folder.pipeline_class());
  static const std::map<std::string, std::vector<std::string>> kKeys = {
      {"unet", {"in_channels", "out_channels", "block_out_channels", "layers_per_block",
                "attention_head_dim", "cross_attention_dim", "sample_size", "norm_num_groups"}},
      {"vae", {"block_out_channels", "latent_channels", "layers_per_block", "scaling_factor",
               "sample_size"}},
      {"text_encoder", {"hidden_size", "num_hidden_layers", "num_attention_heads",
                        "intermediate_size", "vocab_size", "hidden_act", "max_position_embeddings"}},
      {"tokenizer", {"model_max_length", "pad_token", "bos_token", "eos_token"}},
      {"scheduler", {"beta_schedule", "beta_start", "beta_end", "num_train_timesteps",
                     "prediction_type", "timestep_spacing", "steps_offset"}},
  };
  for (const auto& kv : folder.components()) {
    const ComponentInfo& c = kv.second;
    out << fmt::format("\n{:<13} {} ({})\n", c.name, c.class_name, c.library);
    if (!c.config_path.empty()) {
      io::JsonConfig cfg = io::JsonConfig::load(c.config_path);
      auto keys = kKeys.count(c.name) ? kKeys.at(c.name) : std::vector<std::string>{};
      for (const auto& k : keys)
        if (cfg.has(k)) out << fmt::format("  {:<24} {}\n", k, cfg.json().at(k).dump());
      if (c.name == "unet" && c.class_name == "UNet3DConditionModel") {
        // --deep-cache-branch takes the index of one of these.
        const auto names = models::skip_connection_names(cfg.get_int_list("block_out_channels", {}),
                                                         cfg.get_string_list("down_block_types", {}),
                                                         cfg.get_int("layers_per_block", 2));
        for (size_t i = 0; i < names.size(); ++i)
          out << fmt::format("  {:<24} {} {}\n", i == 0 ? "deep cache branches" : "", i, names[i]);
      }
    }
    if (!c.weights_path.empty()) {
      io::SafetensorsFile st(c.weights_path);
      int64_t params = 0;
      std::map<std::string, int64_t> by_dtype;
      for (const auto& t : st.tensors()) {
        params += t.second.numel();
        by_dtype[io::dtype_to_string(t.second.dtype)] += t.second.numel();
      }
      std::string dtypes;
      for (const auto& d : by_dtype) dtypes += fmt::format("{} ({} values) ", d.first, d.second);
      out << fmt::format("  {:<24} {} ({:.2f} M) in {} tensors\n", "parameters", params,
                         params / 1e6, st.tensors().size());
      out << fmt::format("  {:<24} {}\n", "dtypes", dtypes);
      out << fmt::format("  {:<24} {}\n", "weights", fs::path(c.weights_path).filename().string());
    }
  }
  return out.str();
}

}  // namespace vdm::pipelines
