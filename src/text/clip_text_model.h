// CLIPTextModel (transformers 4.45): the CLIP text transformer that turns token ids into the
// embeddings the UNet attends to. Every size comes from config.json; named_parameters() are the
// checkpoint keys of model.safetensors ("text_model.embeddings.token_embedding.weight",
// "text_model.encoder.layers.0.self_attn.q_proj.weight", "text_model.final_layer_norm.bias").
#pragma once
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>

#include <cstdint>
#include <string>
#include <vector>

#include "io/json_config.h"
#include "models/linear.h"
#include "models/normalization.h"

namespace vdm::text {

// Mirrors transformers' CLIPTextConfig; defaults are transformers' defaults.
struct CLIPTextConfig {
  int64_t vocab_size = 49408;
  int64_t hidden_size = 512;
  int64_t intermediate_size = 2048;
  int64_t projection_dim = 512;          // unused by CLIPTextModel; kept for config.json round trips
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 8;
  int64_t max_position_embeddings = 77;
  std::string hidden_act = "quick_gelu";  // gelu | quick_gelu | gelu_new | gelu_pytorch_tanh | gelu_fast | relu
  double layer_norm_eps = 1e-5;
  double attention_dropout = 0.0;        // inference only: not applied
  double initializer_range = 0.02;
  double initializer_factor = 1.0;       // scales the initial weights of a fresh model
  int64_t pad_token_id = 1;
  int64_t bos_token_id = 49406;
  // Pooling: the first position holding eos_token_id; when it is 2 (older configs) the position
  // of the largest id instead, as transformers does.
  int64_t eos_token_id = 49407;

  // Parses a CLIPTextModel config.json; ConfigError naming the file and key on bad values.
  static CLIPTextConfig from_json(const io::JsonConfig& json);
  static CLIPTextConfig load(const std::string& path);
  void validate(const std::string& source = "CLIPTextConfig") const;
  // transformers' config.json ("architectures": ["CLIPTextModel"], "model_type": "clip_text_model").
  nlohmann::json to_json() const;

  int64_t head_dim() const { return hidden_size / num_attention_heads; }
};

// text_model.embeddings: token and learned position embeddings.
class CLIPTextEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit CLIPTextEmbeddingsImpl(const CLIPTextConfig& config);
  at::Tensor forward(const at::Tensor& input_ids);  // input_ids: [B, L] -> [B, L, D]

  torch::nn::Embedding token_embedding{nullptr};     // [vocab_size, D]
  torch::nn::Embedding position_embedding{nullptr};  // [max_position_embeddings, D]
};
TORCH_MODULE(CLIPTextEmbeddings);

// self_attn: multi-head attention with q/k/v/out projections (all with bias).
class CLIPAttentionImpl : public torch::nn::Module {
 public:
  explicit CLIPAttentionImpl(const CLIPTextConfig& config);
  // x: [B, L, D]; mask: additive, broadcastable to [B, heads, L, L] -> [B, L, D].
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask);

  models::Linear k_proj{nullptr}, v_proj{nullptr}, q_proj{nullptr}, out_proj{nullptr};

 private:
  int64_t heads_, head_dim_;
};
TORCH_MODULE(CLIPAttention);

// mlp: fc1 -> activation -> fc2.
class CLIPMLPImpl : public torch::nn::Module {
 public:
  explicit CLIPMLPImpl(const CLIPTextConfig& config);
  at::Tensor forward(const at::Tensor& x);  // x: [B, L, D] -> [B, L, D]

  models::Linear fc1{nullptr}, fc2{nullptr};

 private:
  std::string act_;
};
TORCH_MODULE(CLIPMLP);

// encoder.layers.N: pre-norm attention and MLP blocks with residuals.
class CLIPEncoderLayerImpl : public torch::nn::Module {
 public:
  explicit CLIPEncoderLayerImpl(const CLIPTextConfig& config);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask);  // x: [B, L, D] -> [B, L, D]

  CLIPAttention self_attn{nullptr};
  models::LayerNorm layer_norm1{nullptr};
  CLIPMLP mlp{nullptr};
  models::LayerNorm layer_norm2{nullptr};
};
TORCH_MODULE(CLIPEncoderLayer);

// encoder: the stack of layers.
class CLIPEncoderImpl : public torch::nn::Module {
 public:
  explicit CLIPEncoderImpl(const CLIPTextConfig& config);
  // x: [B, L, D]; mask: additive [B or 1, 1, L, L]. Appends the output of every layer to
  // `hidden_states` when given. -> [B, L, D]
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask, std::vector<at::Tensor>* hidden_states = nullptr);

  torch::nn::ModuleList layers{nullptr};  // CLIPEncoderLayer

 private:
  std::vector<CLIPEncoderLayer> layer_list_;
};
TORCH_MODULE(CLIPEncoder);

struct CLIPTextModelOutput {
  at::Tensor last_hidden_state;            // [B, L, D], after final_layer_norm
  at::Tensor pooler_output;                // [B, D], last_hidden_state at the eos position
  std::vector<at::Tensor> hidden_states;   // num_hidden_layers + 1 of [B, L, D]: 0 = embeddings,
                                           // i = after layer i (before final_layer_norm)
};

// text_model: embeddings -> encoder.layers (causal self-attention) -> final_layer_norm.
class CLIPTextTransformerImpl : public torch::nn::Module {
 public:
  explicit CLIPTextTransformerImpl(const CLIPTextConfig& config);
  // input_ids: [B, L] int64 with L <= max_position_embeddings; attention_mask: [B, L] (1 = token,
  // 0 = padding) or undefined.
  CLIPTextModelOutput forward(const at::Tensor& input_ids, const at::Tensor& attention_mask = {});

  CLIPTextEmbeddings embeddings{nullptr};
  CLIPEncoder encoder{nullptr};
  models::LayerNorm final_layer_norm{nullptr};

 private:
  CLIPTextConfig config_;
};
TORCH_MODULE(CLIPTextTransformer);

class CLIPTextModelImpl : public torch::nn::Module {
 public:
  // A model with freshly initialised weights (transformers' initialisation scheme, drawn from
  // the default generator); with init_weights false, LibTorch's default initialisation (for
  // models whose weights are loaded next).
  explicit CLIPTextModelImpl(const CLIPTextConfig& config, bool init_weights = true);
  // input_ids: [B, L] int64; attention_mask: [B, L] or undefined (causal attention only).
  CLIPTextModelOutput forward(const at::Tensor& input_ids, const at::Tensor& attention_mask = {});

  const CLIPTextConfig& config() const { return config_; }
  CLIPTextTransformer text_model{nullptr};

 private:
  void init_weights();
  CLIPTextConfig config_;
};
TORCH_MODULE(CLIPTextModel);

// Loads a transformers CLIPTextModel folder: config.json + model.safetensors, strictly (the
// position_ids buffer that older checkpoints carry is accepted and ignored, as transformers does).
CLIPTextModel load_clip_text_model(const std::string& dir);

// Writes `dir`/config.json and `dir`/model.safetensors (floating-point weights cast to `dtype`
// when given), each atomically; the folder loads in transformers as CLIPTextModel.
void save_clip_text_model(const CLIPTextModel& model, const std::string& dir,
                          c10::optional<c10::ScalarType> dtype = c10::nullopt);

}  // namespace vdm::text
