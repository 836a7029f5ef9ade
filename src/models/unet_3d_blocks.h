// The blocks of UNet3DConditionModel (diffusers v0.31 unet_3d_blocks): CrossAttnDownBlock3D,
// DownBlock3D, UNetMidBlock3DCrossAttn, UpBlock3D, CrossAttnUpBlock3D. Children: resnets,
// temp_convs, attentions, temp_attentions, downsamplers / upsamplers. Hidden states use the
// internal layout [B*F, C, H, W] (frames of one video consecutive).
//
// diffusers quirk kept here: a block's `num_attention_heads` (the UNet's attention_head_dim) is
// passed to Transformer2DModel / TransformerTemporalModel as their head *width*, so they run
// channels / num_attention_heads heads of num_attention_heads channels each.
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "models/activations.h"
#include "models/freeu.h"
#include "models/tap.h"

namespace vdm::models {

struct Block3DOptions {
  int64_t in_channels = 0;
  int64_t out_channels = 0;
  int64_t prev_output_channel = 0;            // up blocks: channels coming from the block below
  int64_t temb_channels = 0;
  int64_t num_layers = 1;
  double dropout = 0.0;
  double resnet_eps = 1e-6;
  Activation resnet_act_fn = Activation::kSilu;
  int64_t resnet_groups = 32;
  double output_scale_factor = 1.0;
  int64_t num_attention_heads = 1;            // see the quirk above
  int64_t cross_attention_dim = 1280;
  bool use_linear_projection = true;          // as get_down_block/get_up_block pass it
  bool only_cross_attention = false;
  bool add_downsample = true;
  int64_t downsample_padding = 1;
  bool add_upsample = true;
};

// Common interface of the down blocks.
class DownBlock3DBase : public torch::nn::Module {
 public:
  // h: [B*F, Cin, H, W]; temb: [B*F, T]; encoder_hidden_states: [B*F, S, D] (ignored without
  // cross-attention). Appends each skip connection to `res_samples`; returns [B*F, Cout, H', W'].
  // max_skips >= 0 stops once that many skip connections are appended (the shallow pass of the
  // UNet's feature cache); the result is then the last one.
  virtual at::Tensor forward(const at::Tensor& h, const at::Tensor& temb, const at::Tensor& encoder_hidden_states,
                             int64_t num_frames, std::vector<at::Tensor>& res_samples, const Tap& tap = {},
                             int64_t max_skips = -1) = 0;
  virtual bool has_cross_attention() const = 0;
  // Skip connections forward() appends: one per layer, one more with a downsampler.
  virtual int64_t num_skips() const = 0;
};

// Common interface of the up blocks.
class UpBlock3DBase : public torch::nn::Module {
 public:
  // Pops one skip connection per resnet from the back of `res_samples`. upsample_size: forced
  // output size {H, W} of the upsampler (empty = x2). Only layers [begin, end) run (end -1 = all),
  // h being the input of layer `begin`; the upsampler runs when the last layer does.
  virtual at::Tensor forward(const at::Tensor& h, std::vector<at::Tensor>& res_samples, const at::Tensor& temb,
                             const at::Tensor& encoder_hidden_states, int64_t num_frames,
                             const std::vector<int64_t>& upsample_size = {}, const Tap& tap = {},
                             int64_t begin = 0, int64_t end = -1) = 0;
  virtual bool has_cross_attention() const = 0;
  virtual int64_t num_resnets() const = 0;
  // FreeU factors of this block's stage (models/freeu.h), applied before each layer joins its skip
  // connection; unset = off. Set by UNet3DConditionModelImpl::set_freeu.
  std::optional<FreeUStage> freeu;
};

class CrossAttnDownBlock3DImpl : public DownBlock3DBase {
 public:
  explicit CrossAttnDownBlock3DImpl(const Block3DOptions& options);
  at::Tensor forward(const at::Tensor& h, const at::Tensor& temb, const at::Tensor& encoder_hidden_states,
                     int64_t num_frames, std::vector<at::Tensor>& res_samples, const Tap& tap = {},
                     int64_t max_skips = -1) override;
  bool has_cross_attention() const override { return true; }
  int64_t num_skips() const override;

 private:
  torch::nn::ModuleList resnets_{nullptr}, temp_convs_{nullptr}, attentions_{nullptr},
      temp_attentions_{nullptr}, downsamplers_{nullptr};
};
TORCH_MODULE(CrossAttnDownBlock3D);

class DownBlock3DImpl : public DownBlock3DBase {
 public:
  explicit DownBlock3DImpl(const Block3DOptions& options);
  at::Tensor forward(const at::Tensor& h, const at::Tensor& temb, const at::Tensor& encoder_hidden_states,
                     int64_t num_frames, std::vector<at::Tensor>& res_samples, const Tap& tap = {},
                     int64_t max_skips = -1) override;
  bool has_cross_attention() const override { return false; }
  int64_t num_skips() const override;

 private:
  torch::nn::ModuleList resnets_{nullptr}, temp_convs_{nullptr}, downsamplers_{nullptr};
};
TORCH_MODULE(DownBlock3D);

// resnets.0, temp_convs.0, then per layer: attentions.i, temp_attentions.i, resnets.i+1, temp_convs.i+1.
class UNetMidBlock3DCrossAttnImpl : public torch::nn::Module {
 public:
  explicit UNetMidBlock3DCrossAttnImpl(const Block3DOptions& options);  // uses in_channels
  // h: [B*F, C, H, W] -> [B*F, C, H, W]
  at::Tensor forward(const at::Tensor& h, const at::Tensor& temb, const at::Tensor& encoder_hidden_states,
                     int64_t num_frames, const Tap& tap = {});

 private:
  torch::nn::ModuleList resnets_{nullptr}, temp_convs_{nullptr}, attentions_{nullptr}, temp_attentions_{nullptr};
};
TORCH_MODULE(UNetMidBlock3DCrossAttn);

class CrossAttnUpBlock3DImpl : public UpBlock3DBase {
 public:
  explicit CrossAttnUpBlock3DImpl(const Block3DOptions& options);
  at::Tensor forward(const at::Tensor& h, std::vector<at::Tensor>& res_samples, const at::Tensor& temb,
                     const at::Tensor& encoder_hidden_states, int64_t num_frames,
                     const std::vector<int64_t>& upsample_size = {}, const Tap& tap = {}, int64_t begin = 0,
                     int64_t end = -1) override;
  bool has_cross_attention() const override { return true; }
  int64_t num_resnets() const override { return static_cast<int64_t>(resnets_->size()); }

 private:
  torch::nn::ModuleList resnets_{nullptr}, temp_convs_{nullptr}, attentions_{nullptr},
      temp_attentions_{nullptr}, upsamplers_{nullptr};
};
TORCH_MODULE(CrossAttnUpBlock3D);

class UpBlock3DImpl : public UpBlock3DBase {
 public:
  explicit UpBlock3DImpl(const Block3DOptions& options);
  at::Tensor forward(const at::Tensor& h, std::vector<at::Tensor>& res_samples, const at::Tensor& temb,
                     const at::Tensor& encoder_hidden_states, int64_t num_frames,
                     const std::vector<int64_t>& upsample_size = {}, const Tap& tap = {}, int64_t begin = 0,
                     int64_t end = -1) override;
  bool has_cross_attention() const override { return false; }
  int64_t num_resnets() const override { return static_cast<int64_t>(resnets_->size()); }

 private:
  torch::nn::ModuleList resnets_{nullptr}, temp_convs_{nullptr}, upsamplers_{nullptr};
};
TORCH_MODULE(UpBlock3D);

// Factories by diffusers block type name ("CrossAttnDownBlock3D", "DownBlock3D", "UpBlock3D",
// "CrossAttnUpBlock3D"); ConfigError naming `source` for other names.
std::shared_ptr<DownBlock3DBase> make_down_block_3d(const std::string& type, const Block3DOptions& options,
                                                    const std::string& source = "config");
std::shared_ptr<UpBlock3DBase> make_up_block_3d(const std::string& type, const Block3DOptions& options,
                                                const std::string& source = "config");

}  // namespace vdm::models
