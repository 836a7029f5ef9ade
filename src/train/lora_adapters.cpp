#include "train/lora_adapters.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>

#include <cmath>
#include <filesystem>

#include "core/error.h"

namespace vdm::train {

struct LoraAdapters::Target {
  std::string name;                         // module name in the component
  std::shared_ptr<torch::nn::Module> module;  // keeps `weight_member` alive
  at::Tensor* weight_member = nullptr;      // the module's `weight`, which its forward reads
  at::Tensor base;                          // the registered parameter W
  at::Tensor down, up;                      // A [r, in(, k...)], B [out, r(, 1...)]
};

namespace {

// The `weight` member a module's forward reads: Linear, Conv2d, Conv3d (nullptr for other modules).
at::Tensor* weight_member(torch::nn::Module& m) {
  if (auto* l = dynamic_cast<torch::nn::LinearImpl*>(&m)) return &l->weight;
  if (auto* c = dynamic_cast<torch::nn::Conv2dImpl*>(&m)) return &c->weight;
  if (auto* c = dynamic_cast<torch::nn::Conv3dImpl*>(&m)) return &c->weight;
  return nullptr;
}

bool targeted(const std::string& name, const std::vector<std::string>& targets) {
  for (const std::string& t : targets) {
    if (name == t) return true;
    if (name.size() > t.size() && name.compare(name.size() - t.size(), t.size(), t) == 0 &&
        name[name.size() - t.size() - 1] == '.')
      return true;
  }
  return false;
}

double scale_of(const LoraAdapterOptions& o) { return o.alpha / static_cast<double>(o.rank); }

}  // namespace

LoraAdapters::LoraAdapters(torch::nn::Module& component, const std::string& component_name,
                           const LoraAdapterOptions& options, at::Generator& generator)
    : component_(component_name), options_(options) {
  if (options.rank < 1 || !(options.alpha > 0))
    throw ConfigError(fmt::format("LoRA rank {} and alpha {}: need rank >= 1 and alpha > 0", options.rank, options.alpha));
  for (const auto& item : component.named_modules("", /*include_self=*/false)) {
    if (!targeted(item.key(), options.target_modules)) continue;
    at::Tensor* member = weight_member(*item.value());
    if (member == nullptr) continue;
    auto t = std::make_unique<Target>();
    t->name = item.key();
    t->module = item.value();
    t->weight_member = member;
    t->base = *member;
    const at::Tensor& w = t->base;
    std::vector<int64_t> down{options.rank, w.size(1)}, up{w.size(0), options.rank};
    for (int64_t d = 2; d < w.dim(); ++d) {
      down.push_back(w.size(d));
      up.push_back(1);
    }
    const double fan_in = static_cast<double>(w[0].numel());
    const double bound = 1.0 / std::sqrt(fan_in);  // Kaiming uniform with a = sqrt(5), as PEFT
    const auto opts = at::TensorOptions().dtype(at::kFloat);
    t->down = (at::rand(down, generator, opts) * (2 * bound) - bound).to(w.device()).requires_grad_();
    t->up = at::zeros(up, opts.device(w.device())).requires_grad_();
    const std::string key = component_name + "." + t->name;
    params_.push_back({key + ".lora_A.weight", t->down});
    params_.push_back({key + ".lora_B.weight", t->up});
    targets_.push_back(std::move(t));
  }
  if (targets_.empty())
    throw ConfigError(fmt::format("LoRA target_modules [{}] match no Linear or convolution of the {}; use module "
                                  "names such as to_q, to_k, to_v, to_out.0, proj_in, ff.net.2",
                                  fmt::join(options.target_modules, ", "), component_name));
}

LoraAdapters::~LoraAdapters() {
  for (auto& t : targets_) *t->weight_member = t->base;
}

int64_t LoraAdapters::size() const { return static_cast<int64_t>(targets_.size()); }

io::TensorMap LoraAdapters::state_dict() const {
  io::TensorMap out;
  for (const auto& [key, value] : params_) out[key] = value.detach().to(at::kCPU, at::kFloat).contiguous();
  return out;
}

nlohmann::json LoraAdapters::adapter_metadata() const {
  return {{"r", options_.rank},
          {"lora_alpha", options_.alpha},
          {"target_modules", options_.target_modules},
          {"use_rslora", false},
          {"use_dora", false},
          {"init_lora_weights", true},
          {"lora_dropout", 0.0},
          {"bias", "none"}};
}

LoraAdapters::Applied::Applied(LoraAdapters& adapters) : adapters_(adapters) {
  const double scale = scale_of(adapters.options_);
  for (auto& t : adapters.targets_) {
    at::Tensor delta = t->up.flatten(1).mm(t->down.flatten(1)).view(t->base.sizes());
    *t->weight_member = t->base + delta.mul(scale).to(t->base.scalar_type());
  }
}

LoraAdapters::Applied::~Applied() {
  for (auto& t : adapters_.targets_) *t->weight_member = t->base;
}

void save_lora_weights(const std::vector<const LoraAdapters*>& adapters, const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw Error(fmt::format("cannot create the LoRA folder '{}': {}", dir, ec.message()));
  // diffusers' pipeline-level save prefixes each LoraConfig field with its component.
  nlohmann::json meta = nlohmann::json::object();
  io::TensorMap tensors;
  for (const LoraAdapters* a : adapters) {
    const nlohmann::json config = a->adapter_metadata();  // items() refers to it: keep it alive
    for (const auto& [k, v] : config.items()) meta[a->component() + "." + k] = v;
    tensors.merge(a->state_dict());
  }
  io::save_safetensors((std::filesystem::path(dir) / "pytorch_lora_weights.safetensors").string(), tensors,
                       {{"format", "pt"}, {"lora_adapter_metadata", meta.dump(2)}});
}

}  // namespace vdm::train
