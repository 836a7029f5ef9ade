#include "text/clip_text_model.h"

#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <limits>

#include "core/error.h"
#include "core/log.h"
#include "io/tensor_io.h"
#include "models/attention.h"
#include "models/pretrained_io.h"
#include "models/shape.h"

namespace vdm::text {
namespace fs = std::filesystem;

namespace {

constexpr const char* kWeightsName = "model.safetensors";
constexpr const char* kFp16WeightsName = "model.fp16.safetensors";  // the "fp16" variant of hub folders
constexpr const char* kPositionIdsKey = "text_model.embeddings.position_ids";

bool known_activation(const std::string& act) {
  return act == "gelu" || act == "quick_gelu" || act == "gelu_new" || act == "gelu_pytorch_tanh" ||
         act == "gelu_fast" || act == "relu";
}

at::Tensor activate(const std::string& act, const at::Tensor& x) {
  if (act == "gelu") return at::gelu(x);
  if (act == "quick_gelu") return x * at::sigmoid(x * 1.702);
  if (act == "relu") return at::relu(x);
  return at::gelu(x, "tanh");  // gelu_new, gelu_pytorch_tanh, gelu_fast
}

// The most negative finite value of a floating dtype (transformers' torch.finfo(dtype).min).
double finfo_min(c10::ScalarType dtype) {
  switch (dtype) {
    case at::kHalf: return -65504.0;
    case at::kBFloat16: return -3.3895313892515355e38;
    case at::kDouble: return std::numeric_limits<double>::lowest();
    default: return std::numeric_limits<float>::lowest();
  }
}

}  // namespace

// ---- config -------------------------------------------------------------------------------------

CLIPTextConfig CLIPTextConfig::from_json(const io::JsonConfig& j) {
  CLIPTextConfig c;
  c.vocab_size = j.get_int("vocab_size", c.vocab_size);
  c.hidden_size = j.get_int("hidden_size", c.hidden_size);
  c.intermediate_size = j.get_int("intermediate_size", c.intermediate_size);
  c.projection_dim = j.get_int("projection_dim", c.projection_dim);
  c.num_hidden_layers = j.get_int("num_hidden_layers", c.num_hidden_layers);
  c.num_attention_heads = j.get_int("num_attention_heads", c.num_attention_heads);
  c.max_position_embeddings = j.get_int("max_position_embeddings", c.max_position_embeddings);
  c.hidden_act = j.get_string("hidden_act", c.hidden_act);
  c.layer_norm_eps = j.get_double("layer_norm_eps", c.layer_norm_eps);
  c.attention_dropout = j.get_double("attention_dropout", c.attention_dropout);
  c.initializer_range = j.get_double("initializer_range", c.initializer_range);
  c.initializer_factor = j.get_double("initializer_factor", c.initializer_factor);
  c.pad_token_id = j.get_int("pad_token_id", c.pad_token_id);
  c.bos_token_id = j.get_int("bos_token_id", c.bos_token_id);
  c.eos_token_id = j.get_int("eos_token_id", c.eos_token_id);
  c.validate(j.source());
  return c;
}

CLIPTextConfig CLIPTextConfig::load(const std::string& path) { return from_json(io::JsonConfig::load(path)); }

void CLIPTextConfig::validate(const std::string& source) const {
  auto positive = [&](const char* key, int64_t v) {
    if (v <= 0) throw ConfigError(fmt::format("{}: \"{}\" must be positive, got {}", source, key, v));
  };
  positive("vocab_size", vocab_size);
  positive("hidden_size", hidden_size);
  positive("intermediate_size", intermediate_size);
  positive("num_hidden_layers", num_hidden_layers);
  positive("num_attention_heads", num_attention_heads);
  positive("max_position_embeddings", max_position_embeddings);
  if (hidden_size % num_attention_heads != 0) {
    throw ConfigError(fmt::format("{}: hidden_size {} is not divisible by num_attention_heads {}", source,
                                  hidden_size, num_attention_heads));
  }
  if (!known_activation(hidden_act)) {
    throw ConfigError(fmt::format("{}: \"hidden_act\" is \"{}\"; expected gelu, quick_gelu, gelu_new, "
                                  "gelu_pytorch_tanh, gelu_fast or relu",
                                  source, hidden_act));
  }
  if (!(layer_norm_eps > 0)) {
    throw ConfigError(fmt::format("{}: \"layer_norm_eps\" must be positive, got {}", source, layer_norm_eps));
  }
}

nlohmann::json CLIPTextConfig::to_json() const {
  return nlohmann::json{
      {"architectures", {"CLIPTextModel"}},
      {"attention_dropout", attention_dropout},
      {"bos_token_id", bos_token_id},
      {"eos_token_id", eos_token_id},
      {"hidden_act", hidden_act},
      {"hidden_size", hidden_size},
      {"initializer_factor", initializer_factor},
      {"initializer_range", initializer_range},
      {"intermediate_size", intermediate_size},
      {"layer_norm_eps", layer_norm_eps},
      {"max_position_embeddings", max_position_embeddings},
      {"model_type", "clip_text_model"},
      {"num_attention_heads", num_attention_heads},
      {"num_hidden_layers", num_hidden_layers},
      {"pad_token_id", pad_token_id},
      {"projection_dim", projection_dim},
      {"torch_dtype", "float32"},
      {"vocab_size", vocab_size},
  };
}

// ---- modules ------------------------------------------------------------------------------------

CLIPTextEmbeddingsImpl::CLIPTextEmbeddingsImpl(const CLIPTextConfig& c) {
  token_embedding = register_module("token_embedding", torch::nn::Embedding(c.vocab_size, c.hidden_size));
  position_embedding =
      register_module("position_embedding", torch::nn::Embedding(c.max_position_embeddings, c.hidden_size));
}

at::Tensor CLIPTextEmbeddingsImpl::forward(const at::Tensor& input_ids) {
  const int64_t L = input_ids.size(1);
  // position_ids are 0..L-1: the learned table's first L rows, broadcast over the batch.
  return token_embedding->forward(input_ids) + position_embedding->weight.narrow(0, 0, L).unsqueeze(0);
}

CLIPAttentionImpl::CLIPAttentionImpl(const CLIPTextConfig& c)
    : heads_(c.num_attention_heads), head_dim_(c.head_dim()) {
  const int64_t d = c.hidden_size;
  k_proj = register_module("k_proj", models::Linear(d, d));
  v_proj = register_module("v_proj", models::Linear(d, d));
  q_proj = register_module("q_proj", models::Linear(d, d));
  out_proj = register_module("out_proj", models::Linear(d, d));
}

at::Tensor CLIPAttentionImpl::forward(const at::Tensor& x, const at::Tensor& mask) {
  const int64_t B = x.size(0), L = x.size(1);
  // [B, L, D] -> [B, heads, L, head_dim]
  auto split = [&](const at::Tensor& t) { return t.view({B, L, heads_, head_dim_}).transpose(1, 2); };
  at::Tensor a = models::scaled_dot_product_attention(split(q_proj->forward(x)), split(k_proj->forward(x)),
                                                      split(v_proj->forward(x)), mask);
  return out_proj->forward(a.transpose(1, 2).reshape({B, L, heads_ * head_dim_}));
}

CLIPMLPImpl::CLIPMLPImpl(const CLIPTextConfig& c) : act_(c.hidden_act) {
  fc1 = register_module("fc1", models::Linear(c.hidden_size, c.intermediate_size));
  fc2 = register_module("fc2", models::Linear(c.intermediate_size, c.hidden_size));
}

at::Tensor CLIPMLPImpl::forward(const at::Tensor& x) { return fc2->forward(activate(act_, fc1->forward(x))); }

CLIPEncoderLayerImpl::CLIPEncoderLayerImpl(const CLIPTextConfig& c) {
  auto ln = [&] { return models::LayerNorm(torch::nn::LayerNormOptions({c.hidden_size}).eps(c.layer_norm_eps)); };
  self_attn = register_module("self_attn", CLIPAttention(c));
  layer_norm1 = register_module("layer_norm1", ln());
  mlp = register_module("mlp", CLIPMLP(c));
  layer_norm2 = register_module("layer_norm2", ln());
}

at::Tensor CLIPEncoderLayerImpl::forward(const at::Tensor& x, const at::Tensor& mask) {
  at::Tensor h = x + self_attn->forward(layer_norm1->forward(x), mask);
  return h + mlp->forward(layer_norm2->forward(h));
}

CLIPEncoderImpl::CLIPEncoderImpl(const CLIPTextConfig& c) {
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    layer_list_.push_back(CLIPEncoderLayer(c));
    layers->push_back(layer_list_.back());
  }
}

at::Tensor CLIPEncoderImpl::forward(const at::Tensor& x, const at::Tensor& mask,
                                    std::vector<at::Tensor>* hidden_states) {
  at::Tensor h = x;
  for (auto& layer : layer_list_) {
    h = layer->forward(h, mask);
    if (hidden_states) hidden_states->push_back(h);
  }
  return h;
}

CLIPTextTransformerImpl::CLIPTextTransformerImpl(const CLIPTextConfig& c) : config_(c) {
  embeddings = register_module("embeddings", CLIPTextEmbeddings(c));
  encoder = register_module("encoder", CLIPEncoder(c));
  final_layer_norm = register_module(
      "final_layer_norm", models::LayerNorm(torch::nn::LayerNormOptions({c.hidden_size}).eps(c.layer_norm_eps)));
}

CLIPTextModelOutput CLIPTextTransformerImpl::forward(const at::Tensor& input_ids, const at::Tensor& attention_mask) {
  if (input_ids.dim() != 2) {
    throw InputError(fmt::format("CLIPTextModel: input_ids must be [batch, length], got {}",
                                 models::shape_str(input_ids.sizes())));
  }
  const int64_t B = input_ids.size(0), L = input_ids.size(1);
  if (L > config_.max_position_embeddings) {
    throw InputError(fmt::format("CLIPTextModel: sequence length {} exceeds max_position_embeddings {}; "
                                 "truncate the prompt tokens",
                                 L, config_.max_position_embeddings));
  }
  if (attention_mask.defined() && attention_mask.sizes() != input_ids.sizes()) {
    throw InputError(fmt::format("CLIPTextModel: attention_mask {} does not match input_ids {}",
                                 models::shape_str(attention_mask.sizes()), models::shape_str(input_ids.sizes())));
  }
  const at::Tensor ids = input_ids.to(at::kLong);

  CLIPTextModelOutput out;
  at::Tensor h = embeddings->forward(ids);  // [B, L, D]
  out.hidden_states.push_back(h);

  // Additive mask as transformers builds it: finfo.min above the diagonal (causal), plus
  // finfo.min on padded keys; both together overflow to -inf, as in the reference.
  const auto opts = h.options();
  const double neg = finfo_min(h.scalar_type());
  at::Tensor mask = at::full({L, L}, neg, opts).triu(1).view({1, 1, L, L});
  if (attention_mask.defined()) {
    at::Tensor pad = at::where(attention_mask.to(h.device()).ne(1), at::scalar_tensor(neg, opts),
                               at::scalar_tensor(0.0, opts));
    mask = mask + pad.view({B, 1, 1, L});
  }

  h = encoder->forward(h, mask, &out.hidden_states);
  out.last_hidden_state = final_layer_norm->forward(h);

  at::Tensor eos_pos = config_.eos_token_id == 2 ? ids.to(at::kInt).argmax(-1)
                                                 : ids.eq(config_.eos_token_id).to(at::kInt).argmax(-1);
  out.pooler_output = out.last_hidden_state.index({at::arange(B, ids.options()), eos_pos});
  return out;
}

CLIPTextModelImpl::CLIPTextModelImpl(const CLIPTextConfig& config, bool init_weights) : config_(config) {
  config_.validate();
  text_model = register_module("text_model", CLIPTextTransformer(config_));
  if (init_weights) this->init_weights();
}

void CLIPTextModelImpl::init_weights() {
  // transformers' CLIPPreTrainedModel._init_weights for the text tower.
  at::NoGradGuard no_grad;
  const double f = config_.initializer_factor;
  const double d = static_cast<double>(config_.hidden_size);
  const double layers = static_cast<double>(config_.num_hidden_layers);
  const double in_proj_std = std::pow(d, -0.5) * std::pow(2.0 * layers, -0.5) * f;
  const double out_proj_std = std::pow(d, -0.5) * f;
  const double fc_std = std::pow(2.0 * d, -0.5) * f;
  auto& emb = text_model->embeddings;
  emb->token_embedding->weight.normal_(0.0, 0.02 * f);
  emb->position_embedding->weight.normal_(0.0, 0.02 * f);
  for (const auto& m : *text_model->encoder->layers) {
    auto layer = m->as<CLIPEncoderLayerImpl>();
    for (auto* lin : {&layer->self_attn->q_proj, &layer->self_attn->k_proj, &layer->self_attn->v_proj}) {
      (*lin)->weight.normal_(0.0, in_proj_std);
    }
    layer->self_attn->out_proj->weight.normal_(0.0, out_proj_std);
    layer->mlp->fc1->weight.normal_(0.0, fc_std);
    layer->mlp->fc2->weight.normal_(0.0, in_proj_std);
  }
  for (auto& m : modules(/*include_self=*/false)) {
    if (auto* lin = m->as<torch::nn::LinearImpl>()) {
      if (lin->bias.defined()) lin->bias.zero_();
    } else if (auto* ln = m->as<torch::nn::LayerNormImpl>()) {
      ln->weight.fill_(1.0);
      ln->bias.zero_();
    }
  }
}

CLIPTextModelOutput CLIPTextModelImpl::forward(const at::Tensor& input_ids, const at::Tensor& attention_mask) {
  return text_model->forward(input_ids, attention_mask);
}

// ---- folders ------------------------------------------------------------------------------------

CLIPTextModel load_clip_text_model(const std::string& dir) {
  const std::string config_path = (fs::path(dir) / "config.json").string();
  CLIPTextConfig config = CLIPTextConfig::load(config_path);
  const std::string weights = models::find_weights_file(dir, kWeightsName, kFp16WeightsName);
  io::TensorMap tensors = io::load_safetensors(weights);
  // Older checkpoints store the position_ids buffer; transformers ignores it and uses 0..L-1.
  if (tensors.erase(kPositionIdsKey)) log::debug("{}: ignoring {}", weights, kPositionIdsKey);
  CLIPTextModel model(config, /*init_weights=*/false);
  io::load_state_dict(*model, tensors, weights);
  model->eval();
  return model;
}

void save_clip_text_model(const CLIPTextModel& model, const std::string& dir, c10::optional<c10::ScalarType> dtype) {
  nlohmann::json config = model->config().to_json();
  if (dtype) {
    config["torch_dtype"] = *dtype == at::kHalf       ? "float16"
                            : *dtype == at::kBFloat16 ? "bfloat16"
                            : *dtype == at::kDouble   ? "float64"
                                                      : "float32";
  }
  models::save_pretrained(*model, config, dir, kWeightsName, dtype);
}

}  // namespace vdm::text
