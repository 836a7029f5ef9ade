// AutoencoderKL (diffusers v0.31): the image VAE that maps frames to latents and back.
// named_parameters() are the checkpoint keys (encoder.*, quant_conv, post_quant_conv, decoder.*).
#pragma once
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>

#include <cstdint>
#include <string>
#include <vector>

#include "io/json_config.h"
#include "models/normalization.h"
#include "models/tap.h"
#include "models/unet_2d_blocks.h"

namespace vdm::models {

// Mirrors diffusers' AutoencoderKL config.json; defaults are diffusers' defaults.
struct AutoencoderKLConfig {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  std::vector<std::string> down_block_types{"DownEncoderBlock2D"};
  std::vector<std::string> up_block_types{"UpDecoderBlock2D"};
  std::vector<int64_t> block_out_channels{64};
  int64_t layers_per_block = 1;
  std::string act_fn = "silu";
  int64_t latent_channels = 4;
  int64_t norm_num_groups = 32;
  int64_t sample_size = 32;
  double scaling_factor = 0.18215;          // latents = scaling_factor * (z - shift_factor)
  c10::optional<double> shift_factor;
  bool force_upcast = true;
  bool use_quant_conv = true;
  bool use_post_quant_conv = true;
  bool mid_block_add_attention = true;

  static AutoencoderKLConfig from_json(const io::JsonConfig& json);
  static AutoencoderKLConfig load(const std::string& path);
  void validate(const std::string& source = "AutoencoderKLConfig") const;
  nlohmann::json to_json() const;  // with "_class_name" and "_diffusers_version"
};

// The encoder's posterior: a diagonal Gaussian per latent element.
struct DiagonalGaussian {
  at::Tensor mean;    // [N, latent, h, w]
  at::Tensor logvar;  // [N, latent, h, w], clamped to [-30, 20]
  at::Tensor std() const { return at::exp(0.5 * logvar); }
  at::Tensor mode() const { return mean; }
  // mean + std * eps, eps ~ N(0, 1) drawn on the CPU in float32 from `generator` (a CPU
  // generator; the default one when none), then moved to mean's device and dtype.
  at::Tensor sample(c10::optional<at::Generator> generator = c10::nullopt) const;
};

// conv_in -> down_blocks -> mid_block -> conv_norm_out -> SiLU -> conv_out (2 * latent channels)
class VaeEncoderImpl : public torch::nn::Module {
 public:
  explicit VaeEncoderImpl(const AutoencoderKLConfig& config);
  at::Tensor forward(const at::Tensor& x, const Tap& tap = {});  // [N, in, H, W] -> [N, 2*latent, H/f, W/f]

 private:
  torch::nn::Conv2d conv_in_{nullptr}, conv_out_{nullptr};
  torch::nn::ModuleList down_blocks_{nullptr};
  UNetMidBlock2D mid_block_{nullptr};
  GroupNorm conv_norm_out_{nullptr};
};
TORCH_MODULE(VaeEncoder);

// conv_in -> mid_block -> up_blocks (reversed channels) -> conv_norm_out -> SiLU -> conv_out
class VaeDecoderImpl : public torch::nn::Module {
 public:
  explicit VaeDecoderImpl(const AutoencoderKLConfig& config);
  at::Tensor forward(const at::Tensor& z, const Tap& tap = {});  // [N, latent, h, w] -> [N, out, h*f, w*f]

 private:
  torch::nn::Conv2d conv_in_{nullptr}, conv_out_{nullptr};
  UNetMidBlock2D mid_block_{nullptr};
  torch::nn::ModuleList up_blocks_{nullptr};
  GroupNorm conv_norm_out_{nullptr};
};
TORCH_MODULE(VaeDecoder);

class AutoencoderKLImpl : public torch::nn::Module {
 public:
  explicit AutoencoderKLImpl(const AutoencoderKLConfig& config);

  // x: [N, in_channels, H, W] in [-1, 1] (cast to the model dtype) -> posterior over
  // [N, latent, H/f, W/f] (f = downsample_factor()). Latents for the UNet are
  // scaling_factor * sample (minus shift_factor first when set); that scaling is the caller's.
  DiagonalGaussian encode(const at::Tensor& x);
  // z: [N, latent, h, w], NOT scaled (divide UNet latents by scaling_factor first)
  // -> [N, out_channels, h*f, w*f], roughly in [-1, 1].
  at::Tensor decode(const at::Tensor& z);
  int64_t downsample_factor() const { return int64_t(1) << (config_.block_out_channels.size() - 1); }

  // Runs encoder and decoder on channels-last activations (conv weights stored to match), as the
  // UNet does on CUDA: cuDNN's fast convolutions and vdm's group-norm kernel are NHWC. Inputs and
  // outputs of encode() and decode() keep the ordinary layout.
  void set_channels_last(bool on);
  bool channels_last() const { return channels_last_; }

  // Observes intermediate outputs: "encoder.conv_in", "encoder.down_blocks.0", "encoder.mid_block",
  // "encoder.conv_out", "quant_conv" during encode(); "post_quant_conv", "decoder.conv_in",
  // "decoder.mid_block", "decoder.mid_block.resnets.0", "decoder.up_blocks.0",
  // "decoder.conv_norm_out", "decoder.conv_out" during decode(); and deeper paths.
  void set_tap(TapFn fn) { tap_ = std::move(fn); }
  void clear_tap() { tap_ = nullptr; }

  const AutoencoderKLConfig& config() const { return config_; }
  c10::ScalarType dtype() const;
  c10::Device device() const;

 private:
  AutoencoderKLConfig config_;
  bool channels_last_ = false;
  TapFn tap_;
  at::Tensor in_layout(const at::Tensor& x) const;  // x, channels-last when set
  VaeEncoder encoder_{nullptr};
  VaeDecoder decoder_{nullptr};
  torch::nn::Conv2d quant_conv_{nullptr}, post_quant_conv_{nullptr};
};
TORCH_MODULE(AutoencoderKL);

// Maps older diffusers VAE attention names to the current ones:
// "...attentions.0.query.weight" -> "...attentions.0.to_q.weight"; key -> to_k, value -> to_v,
// proj_attn -> to_out.0. Other keys are returned unchanged.
std::string rename_legacy_vae_attention_key(const std::string& key);

// Loads dir/config.json and dir/diffusion_pytorch_model.safetensors (or the fp16 variant when
// only that exists) strictly, accepting the older attention names. Float32, CPU, eval mode.
AutoencoderKL load_autoencoder_kl(const std::string& dir);

// Writes dir/config.json and dir/diffusion_pytorch_model.safetensors (cast to `dtype` when
// given) in the layout diffusers' AutoencoderKL.from_pretrained reads.
void save_autoencoder_kl(const AutoencoderKL& model, const std::string& dir,
                         c10::optional<c10::ScalarType> dtype = c10::nullopt);

}  // namespace vdm::models
