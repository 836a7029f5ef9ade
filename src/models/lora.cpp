#include "models/lora.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <regex>
#include <set>
#include <sstream>

#include "core/error.h"
#include "io/safetensors.h"
#include "io/tensor_io.h"

namespace vdm::models {

namespace fs = std::filesystem;

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

// The weights of a component that a LoRA may adapt, by module name ("....to_q" for "....to_q.weight"):
// Linear [out, in] and convolution [out, in, k...] weights.
std::map<std::string, at::Tensor> adaptable_weights(torch::nn::Module& component) {
  std::map<std::string, at::Tensor> out;
  for (const auto& p : component.named_parameters(/*recurse=*/true)) {
    const std::string& key = p.key();
    if (ends_with(key, ".weight") && p.value().dim() >= 2) out.emplace(key.substr(0, key.size() - 7), p.value());
  }
  return out;
}

// The PEFT LoraConfig that sets alpha, from the file's metadata or an adapter_config.json beside it.
struct AlphaConfig {
  std::optional<double> lora_alpha;
  std::vector<std::pair<std::regex, double>> alpha_pattern;
  bool use_rslora = false;
  bool use_dora = false;
  std::string source;
};

AlphaConfig parse_alpha_config(const nlohmann::json& j, const std::string& source, const std::string& prefix) {
  AlphaConfig c;
  c.source = source;
  auto get = [&](const std::string& name) -> const nlohmann::json* {
    for (const std::string& k : {prefix + name, name}) {
      auto it = j.find(k);
      if (it != j.end() && !it->is_null()) return &*it;
    }
    return nullptr;
  };
  try {
    if (const auto* a = get("lora_alpha")) c.lora_alpha = a->get<double>();
    if (const auto* r = get("use_rslora")) c.use_rslora = r->get<bool>();
    if (const auto* d = get("use_dora")) c.use_dora = d->get<bool>();
    if (const auto* p = get("alpha_pattern")) {
      for (const auto& [pattern, value] : p->items()) {
        c.alpha_pattern.emplace_back(std::regex("^(.*\\.)?(" + pattern + ")$"), value.get<double>());
      }
    }
  } catch (const std::exception& e) {
    throw ConfigError(fmt::format("{}: malformed LoRA config ({}); expected PEFT's LoraConfig fields "
                                  "(lora_alpha a number, use_rslora a boolean, alpha_pattern an object of numbers)",
                                  source, e.what()));
  }
  return c;
}

std::optional<AlphaConfig> read_alpha_config(const io::SafetensorsFile& file, const std::string& component) {
  auto it = file.metadata().find("lora_adapter_metadata");
  if (it != file.metadata().end()) {
    nlohmann::json j = nlohmann::json::parse(it->second, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object())
      throw ConfigError(fmt::format("{}: metadata 'lora_adapter_metadata' is not a JSON object; the file is damaged",
                                    file.path()));
    return parse_alpha_config(j, file.path() + " (metadata)", component + ".");
  }
  const fs::path config = fs::path(file.path()).parent_path() / "adapter_config.json";
  std::error_code ec;
  if (!fs::is_regular_file(config, ec)) return std::nullopt;
  std::ifstream in(config);
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object())
    throw ConfigError(fmt::format("{}: not a JSON object; expected PEFT's adapter_config.json", config.string()));
  return parse_alpha_config(j, config.string(), component + ".");
}

// What one key of a LoRA file is.
enum class Role { kDown, kUp, kAlpha };
struct ParsedKey {
  std::string component;
  std::string module;  // diffusers name, or the flattened kohya name until resolved
  Role role = Role::kDown;
  std::string format;
  bool kohya = false;
};

// Splits a key into component, module and role; an error text when it is none of the formats.
std::optional<ParsedKey> parse_key(const std::string& key, std::string& error) {
  ParsedKey k;
  std::string rest = key;
  if (starts_with(rest, "lora_unet_") || starts_with(rest, "lora_te_") || starts_with(rest, "lora_te1_")) {
    k.kohya = true;
    k.format = "kohya";
    k.component = starts_with(rest, "lora_unet_") ? "unet" : "text_encoder";
    rest = rest.substr(rest.find('_', 5) + 1);
  } else if (starts_with(rest, "unet.")) {
    k.component = "unet";
    rest = rest.substr(5);
  } else if (starts_with(rest, "text_encoder.")) {
    k.component = "text_encoder";
    rest = rest.substr(13);
  } else if (starts_with(rest, "base_model.model.")) {
    k.component = "unet";
    rest = rest.substr(17);
  } else {
    for (const char* other : {"text_encoder_2.", "transformer.", "vae.", "prior."}) {
      if (starts_with(rest, other)) {
        error = fmt::format("'{}' adapts a component this model does not have ('{}')", key,
                            std::string(other, std::strlen(other) - 1));
        return std::nullopt;
      }
    }
    k.component = "unet";
  }
  struct Suffix {
    const char* text;
    Role role;
    const char* format;
  };
  static const Suffix suffixes[] = {
      {".lora_A.weight", Role::kDown, "peft"},       {".lora_B.weight", Role::kUp, "peft"},
      {".lora_down.weight", Role::kDown, "kohya"},   {".lora_up.weight", Role::kUp, "kohya"},
      {".lora.down.weight", Role::kDown, "diffusers-legacy"}, {".lora.up.weight", Role::kUp, "diffusers-legacy"},
      {"_lora.down.weight", Role::kDown, "diffusers-legacy"}, {"_lora.up.weight", Role::kUp, "diffusers-legacy"},
      {".alpha", Role::kAlpha, "kohya"},
  };
  for (const Suffix& s : suffixes) {
    if (!ends_with(rest, s.text)) continue;
    k.role = s.role;
    if (k.format.empty()) k.format = s.format;
    k.module = rest.substr(0, rest.size() - std::strlen(s.text));
    if (std::strcmp(s.text, "_lora.down.weight") == 0 || std::strcmp(s.text, "_lora.up.weight") == 0) {
      // <attention>.processor.to_q_lora -> <attention>.to_q; to_out_lora -> to_out.0
      const auto pos = k.module.rfind(".processor.");
      if (pos == std::string::npos) break;
      const std::string proj = k.module.substr(pos + 11);
      k.module = k.module.substr(0, pos) + "." + (proj == "to_out" ? "to_out.0" : proj);
    }
    return k;
  }
  if (key.find("lora_magnitude_vector") != std::string::npos)
    error = fmt::format("'{}' is a DoRA magnitude, which vdm does not merge; use a plain LoRA", key);
  else if (key.find("lora_embedding_") != std::string::npos)
    error = fmt::format("'{}' adapts an embedding, which vdm does not merge", key);
  else
    error = fmt::format("'{}' is not a LoRA key vdm knows (expected <module>.lora_A.weight / .lora_B.weight, "
                        ".lora_down.weight / .lora_up.weight / .alpha, or .processor.to_q_lora.down.weight)",
                        key);
  return std::nullopt;
}

std::string shape_str(const at::Tensor& t) { return fmt::format("[{}]", fmt::join(t.sizes(), ", ")); }

// Why `down` and `up` cannot update `weight`, or "" when they fit.
std::string shape_problem(const at::Tensor& down, const at::Tensor& up, const at::Tensor& weight) {
  const auto w = weight.sizes();
  std::string kernel, ones;
  for (size_t d = 2; d < w.size(); ++d) {
    kernel += fmt::format(", {}", w[d]);
    ones += ", 1";
  }
  const std::string expected = fmt::format("down [r, {}{}] and up [{}, r{}]", w[1], kernel, w[0], ones);
  auto bad = [&] {
    return fmt::format("weight {} needs {}, got down {} and up {}", shape_str(weight), expected, shape_str(down),
                       shape_str(up));
  };
  if (down.dim() != weight.dim() || up.dim() != weight.dim()) return bad();
  if (up.size(1) != down.size(0) || up.size(0) != w[0] || down.size(1) != w[1]) return bad();
  for (int64_t d = 2; d < weight.dim(); ++d)
    if (down.size(d) != w[d] || up.size(d) != 1) return bad();
  return "";
}

}  // namespace

at::Tensor LoraLayer::delta() const {
  // [out, r] @ [r, in * k...] -> [out, in, k...]
  std::vector<int64_t> shape{up.size(0)};
  for (int64_t d = 1; d < down.dim(); ++d) shape.push_back(down.size(d));
  return up.flatten(1).mm(down.flatten(1)).mul(scale).view(shape);
}

std::string LoraFile::summary() const {
  std::map<std::string, int> per_component;
  int64_t lo = 0, hi = 0;
  for (const LoraLayer& l : layers) {
    ++per_component[l.component];
    lo = lo == 0 ? l.rank() : std::min(lo, l.rank());
    hi = std::max(hi, l.rank());
  }
  std::vector<std::string> parts;
  for (const auto& [c, n] : per_component) parts.push_back(fmt::format("{} {}", c, n));
  return fmt::format("{}, {} layer{} ({}), rank {}", format, layers.size(), layers.size() == 1 ? "" : "s",
                     fmt::join(parts, ", "),
                     lo == hi ? std::to_string(lo) : fmt::format("{}..{}", lo, hi));
}

LoraFile read_lora(const std::string& path, const LoraComponents& components) {
  LoraFile out;
  out.path = lora_weights_file(path);
  const io::SafetensorsFile file(out.path);
  const io::TensorMap tensors = io::load_safetensors(out.path);

  std::map<std::string, std::map<std::string, at::Tensor>> weights;  // component -> module -> weight
  std::map<std::string, std::map<std::string, std::string>> flat;    // component -> kohya name -> module
  for (const auto& [name, module] : components) {
    weights[name] = adaptable_weights(*module);
    for (const auto& w : weights[name]) {
      std::string f = w.first;
      std::replace(f.begin(), f.end(), '.', '_');
      flat[name][f] = w.first;
    }
  }

  struct Pending {
    at::Tensor down, up, alpha;
    std::vector<std::string> keys;
  };
  std::map<std::pair<std::string, std::string>, Pending> pending;  // (component, module)
  std::vector<std::string> problems;
  std::set<std::string> formats;
  for (const auto& [key, tensor] : tensors) {
    std::string error;
    auto k = parse_key(key, error);
    if (!k) {
      problems.push_back(error);
      continue;
    }
    if (!components.count(k->component)) {
      problems.push_back(fmt::format("'{}' adapts the {}, which this model does not have", key, k->component));
      continue;
    }
    if (k->kohya) {
      auto it = flat[k->component].find(k->module);
      if (it == flat[k->component].end()) {
        problems.push_back(fmt::format("'{}' names no {} module of this model", key, k->component));
        continue;
      }
      k->module = it->second;
    } else if (!weights[k->component].count(k->module)) {
      problems.push_back(fmt::format("'{}' targets '{}', which this model's {} does not have{}", key, k->module,
                                     k->component,
                                     components.at(k->component)->named_modules().contains(k->module)
                                         ? " as a Linear or convolution"
                                         : ""));
      continue;
    }
    formats.insert(k->format);
    Pending& p = pending[{k->component, k->module}];
    p.keys.push_back(key);
    at::Tensor t = tensor.to(at::kFloat);
    (k->role == Role::kDown ? p.down : k->role == Role::kUp ? p.up : p.alpha) = t;
  }

  std::map<std::string, std::optional<AlphaConfig>> alpha_configs;
  for (const auto& [name, module] : components) {
    (void)module;
    alpha_configs[name] = read_alpha_config(file, name);
    if (alpha_configs[name] && alpha_configs[name]->use_dora)
      problems.push_back(fmt::format("{} says use_dora: DoRA adapters are not merged by vdm; use a plain LoRA",
                                     alpha_configs[name]->source));
  }
  for (auto& [target, p] : pending) {
    const auto& [component, module] = target;
    if (!p.down.defined() || !p.up.defined()) {
      problems.push_back(fmt::format("module '{}' of the {} has {} but no {} ({})", module, component,
                                     p.down.defined() ? "a down (A)" : "an up (B)",
                                     p.down.defined() ? "up (B)" : "down (A)", fmt::join(p.keys, ", ")));
      continue;
    }
    std::string bad = shape_problem(p.down, p.up, weights[component].at(module));
    if (bad.empty() && p.alpha.defined() && p.alpha.numel() != 1)
      bad = fmt::format("alpha must be one number, got a tensor of shape {}", shape_str(p.alpha));
    if (!bad.empty()) {
      problems.push_back(fmt::format("module '{}' of the {}: {}", module, component, bad));
      continue;
    }
    LoraLayer layer{component, module, p.down, p.up, 1.0};
    const double rank = static_cast<double>(layer.rank());
    double alpha = rank;
    const auto& config = alpha_configs[component];
    bool rslora = false;
    if (p.alpha.defined()) {
      alpha = p.alpha.item<double>();
    } else if (config) {
      rslora = config->use_rslora;
      if (config->lora_alpha) alpha = *config->lora_alpha;
      for (const auto& [pattern, value] : config->alpha_pattern)
        if (std::regex_match(module, pattern)) alpha = value;
    }
    layer.scale = alpha / (rslora ? std::sqrt(rank) : rank);
    out.layers.push_back(std::move(layer));
  }
  if (out.layers.empty() && problems.empty()) problems.push_back("it holds no LoRA layers");
  if (!problems.empty()) {
    const size_t shown = std::min<size_t>(problems.size(), 8);
    throw WeightsError(fmt::format(
        "LoRA '{}' does not fit this model ({} problem{}): {}{}; check that the LoRA was trained for this base model",
        out.path, problems.size(), problems.size() == 1 ? "" : "s",
        fmt::join(problems.begin(), problems.begin() + static_cast<std::ptrdiff_t>(shown), "; "),
        shown < problems.size() ? fmt::format("; and {} more", problems.size() - shown) : ""));
  }
  out.format = fmt::format("{}", fmt::join(formats, "+"));
  return out;
}

void merge_lora(const LoraFile& lora, double strength, const LoraComponents& components) {
  torch::NoGradGuard no_grad;
  for (const LoraLayer& layer : lora.layers) {
    const auto component = components.find(layer.component);
    const at::Tensor* found = component == components.end()
                                  ? nullptr
                                  : component->second->named_parameters().find(layer.module + ".weight");
    if (!found)
      throw Error(fmt::format("LoRA '{}': '{}.weight' of the {} is gone since the file was read; read it again "
                              "against the model it is merged into",
                              lora.path, layer.module, layer.component));
    at::Tensor weight = *found;
    weight.add_(layer.delta().mul_(strength).to(weight.device(), weight.scalar_type()));
  }
}

std::vector<LoraFile> apply_loras(const std::vector<LoraSpec>& specs, const LoraComponents& components) {
  std::vector<LoraFile> files;
  for (const LoraSpec& spec : specs) files.push_back(read_lora(spec.path, components));
  for (size_t i = 0; i < specs.size(); ++i) merge_lora(files[i], specs[i].strength, components);
  return files;
}

}  // namespace vdm::models
