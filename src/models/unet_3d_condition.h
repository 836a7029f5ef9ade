// UNet3DConditionModel (diffusers v0.31): the spatio-temporal denoiser of ModelScope
// text-to-video and zeroscope. Every size comes from config.json; named_parameters() are the
// checkpoint keys of diffusion_pytorch_model.safetensors.
#pragma once
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "io/json_config.h"
#include "models/embeddings.h"
#include "models/normalization.h"
#include "models/tap.h"
#include "models/unet_3d_blocks.h"
#include "temporal/transformer_temporal.h"

namespace vdm::models {

// Mirrors diffusers' UNet3DConditionModel config.json; defaults are diffusers' defaults.
struct UNet3DConditionConfig {
  c10::optional<int64_t> sample_size;      // latent size the model was trained at (informational)
  int64_t in_channels = 4;                 // may exceed the latent channels (image conditioning)
  int64_t out_channels = 4;
  std::vector<std::string> down_block_types{"CrossAttnDownBlock3D", "CrossAttnDownBlock3D",
                                            "CrossAttnDownBlock3D", "DownBlock3D"};
  std::vector<std::string> up_block_types{"UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D",
                                          "CrossAttnUpBlock3D"};
  std::vector<int64_t> block_out_channels{320, 640, 1280, 1280};
  int64_t layers_per_block = 2;
  int64_t downsample_padding = 1;
  double mid_block_scale_factor = 1.0;
  std::string act_fn = "silu";
  int64_t norm_num_groups = 32;
  double norm_eps = 1e-5;
  int64_t cross_attention_dim = 1024;
  // Per down block. diffusers uses it as the number of heads of each block (and as the head
  // width of transformer_in, which has 8 heads); a single int in config.json.
  std::vector<int64_t> attention_head_dim{64, 64, 64, 64};
  bool attention_head_dim_is_list = false;  // how config.json wrote it (kept by to_json)

  // Parses config.json (unknown keys are ignored; num_attention_heads and time_cond_proj_dim
  // must be null as diffusers requires); ConfigError naming the file and key on bad values.
  static UNet3DConditionConfig from_json(const io::JsonConfig& json);
  static UNet3DConditionConfig load(const std::string& path);
  // Checks the invariants (list lengths, divisibility by norm_num_groups and heads);
  // ConfigError naming `source`.
  void validate(const std::string& source = "UNet3DConditionConfig") const;
  // diffusers config.json, with "_class_name" and "_diffusers_version".
  nlohmann::json to_json() const;

  int64_t time_embed_dim() const { return block_out_channels.at(0) * 4; }
  // Spatial factor between the input and the deepest level: 2^(number of downsamplers).
  int64_t downsample_factor() const { return int64_t(1) << (block_out_channels.size() - 1); }
};

// DeepCache (Ma et al. 2023): between neighbouring denoising steps the UNet's deep features change
// little. A refresh pass runs the whole network and keeps the input of the up layer that takes skip
// connection `branch`; a shallow pass runs only what lies above that skip connection (conv_in,
// transformer_in, the down layers up to skip `branch`, the up layers from it, conv_out) and takes
// everything deeper from the cache.
struct FeatureCache {
  // The skip connections in the order the down path makes them: 0 = transformer_in's output, then
  // one per down layer and one per downsampler (UNet3DConditionModelImpl::num_skip_connections()).
  int64_t branch = 0;
  at::Tensor feature;  // [B*F, C, h, w] after a refresh pass; undefined before
};

class UNet3DConditionModelImpl : public torch::nn::Module {
 public:
  explicit UNet3DConditionModelImpl(const UNet3DConditionConfig& config);

  // sample: [B, in_channels, F, H, W]; timestep: 0-d, [1] or [B] tensor, integer or floating;
  // encoder_hidden_states: [B, L, cross_attention_dim] (one text per video), or [B*F, L,
  // cross_attention_dim] (one per frame, video-major: prompt travel). Returns [B, out_channels, F, H, W] in the
  // model's dtype (inputs are cast to it). H and W need not be multiples of downsample_factor().
  at::Tensor forward(const at::Tensor& sample, const at::Tensor& timestep, const at::Tensor& encoder_hidden_states);
  // The same with the feature cache (above): refresh = true runs the whole network and fills
  // `cache`; false runs the shallow part and needs a cache filled for the same batch and size.
  // A refresh pass returns exactly what forward() does.
  at::Tensor forward(const at::Tensor& sample, const at::Tensor& timestep, const at::Tensor& encoder_hidden_states,
                     FeatureCache& cache, bool refresh);
  // Skip connections between the down and the up path: valid FeatureCache::branch values are
  // 0 .. num_skip_connections() - 1.
  int64_t num_skip_connections() const;

  // Observes intermediate outputs during forward(): called with "conv_in", "time_proj",
  // "time_embedding", "transformer_in", "down_blocks.0", "down_blocks.0.resnets.0", ...,
  // "mid_block", "up_blocks.1.attentions.0", "conv_norm_out", "conv_out". time_proj and
  // time_embedding are [B, ...] (before the repeat over frames); the rest [B*F, C, H, W].
  void set_tap(TapFn fn) { tap_ = std::move(fn); }
  void clear_tap() { tap_ = nullptr; }

  // Channels-last activations (NHWC, and NDHWC around the temporal convolutions): the convolution
  // weights are re-laid out to match (call again after moving the model) and forward() runs the
  // network in that layout; outputs are the same tensors up to rounding. It pays on CUDA, where
  // cuDNN's convolutions are native NHWC and vdm's CUDA group norm keeps the layout; on CPU the
  // contiguous layout is faster (docs/performance.md).
  void set_channels_last(bool on);
  bool channels_last() const { return channels_last_; }

  // Every self-attention module's q, k and v projections as one matrix product
  // (AttentionImpl::fuse_projections; call again after moving the model). Returns how many modules
  // are fused. On by default on CUDA, where the three products over the same tokens are bound by
  // memory traffic (docs/performance.md).
  int64_t fuse_qkv_projections(bool on);

  // Long clips (temporal/frame_windows.h): every temporal transformer (transformer_in and the
  // blocks' temp_attentions) attends within frame windows of windows.length frames; length 0 turns
  // it off. Returns how many transformers were set.
  int64_t set_frame_windows(const temporal::FrameWindows& windows);
  const temporal::FrameWindows& frame_windows() const { return frame_windows_; }

  // FreeU (models/freeu.h): stage 1's factors on up_blocks.0, stage 2's on up_blocks.1, as
  // diffusers' enable_freeu; unset turns it off. The UNet's other up blocks are not touched.
  void set_freeu(const std::optional<FreeU>& freeu);
  const std::optional<FreeU>& freeu() const { return freeu_; }

  const UNet3DConditionConfig& config() const { return config_; }
  c10::ScalarType dtype() const;
  c10::Device device() const;

 private:
  at::Tensor forward_impl(const at::Tensor& sample, const at::Tensor& timestep, const at::Tensor& encoder_hidden_states,
                          FeatureCache* cache, bool refresh);

  UNet3DConditionConfig config_;
  TapFn tap_;
  bool channels_last_ = false;
  temporal::FrameWindows frame_windows_;
  std::optional<FreeU> freeu_;
  torch::nn::Conv2d conv_in_{nullptr}, conv_out_{nullptr};
  TimestepEmbedding time_embedding_{nullptr};
  temporal::TransformerTemporalModel transformer_in_{nullptr};
  torch::nn::ModuleList down_blocks_{nullptr}, up_blocks_{nullptr};
  std::vector<std::shared_ptr<DownBlock3DBase>> down_;
  std::vector<std::shared_ptr<UpBlock3DBase>> up_;
  UNetMidBlock3DCrossAttn mid_block_{nullptr};
  GroupNorm conv_norm_out_{nullptr};
};
TORCH_MODULE(UNet3DConditionModel);

// The skip connections of a UNet with this config (the FeatureCache::branch values), as
// models/skip_connections.h names them.
std::vector<std::string> skip_connection_names(const UNet3DConditionConfig& config);

// Weight file names inside a diffusers component folder.
constexpr const char* kDiffusersWeightsName = "diffusion_pytorch_model.safetensors";
constexpr const char* kDiffusersFp16WeightsName = "diffusion_pytorch_model.fp16.safetensors";

// Loads dir/config.json and dir/diffusion_pytorch_model.safetensors (falling back to the fp16
// variant when only that exists), strictly: WeightsError lists every missing/unexpected key and
// shape mismatch. The model is float32 on CPU, in eval mode.
UNet3DConditionModel load_unet3d(const std::string& dir);

// Writes dir/config.json and dir/diffusion_pytorch_model.safetensors (parameters cast to `dtype`
// when given, e.g. at::kHalf) so that diffusers' UNet3DConditionModel.from_pretrained loads it.
// Creates `dir`; each file is written atomically.
void save_unet3d(const UNet3DConditionModel& model, const std::string& dir,
                 c10::optional<c10::ScalarType> dtype = c10::nullopt);

}  // namespace vdm::models
