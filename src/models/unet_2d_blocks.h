// The 2-D blocks of AutoencoderKL (diffusers v0.31 unet_2d_blocks): DownEncoderBlock2D,
// UpDecoderBlock2D and UNetMidBlock2D (resnets + attentions with group_norm).
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>

#include <cstdint>

#include "models/activations.h"
#include "models/tap.h"

namespace vdm::models {

struct Block2DOptions {
  int64_t in_channels = 0;
  int64_t out_channels = 0;
  int64_t num_layers = 1;
  double dropout = 0.0;
  double resnet_eps = 1e-6;
  Activation resnet_act_fn = Activation::kSilu;
  int64_t resnet_groups = 32;
  double output_scale_factor = 1.0;
  bool add_downsample = true;
  int64_t downsample_padding = 1;
  bool add_upsample = true;
  int64_t attention_head_dim = 1;   // mid block: heads = in_channels / attention_head_dim
  bool add_attention = true;        // mid block
};

// resnets (no time embedding) -> downsamplers.0
class DownEncoderBlock2DImpl : public torch::nn::Module {
 public:
  explicit DownEncoderBlock2DImpl(const Block2DOptions& options);
  at::Tensor forward(const at::Tensor& x, const Tap& tap = {});  // [N, Cin, H, W] -> [N, Cout, H', W']

 private:
  torch::nn::ModuleList resnets_{nullptr}, downsamplers_{nullptr};
};
TORCH_MODULE(DownEncoderBlock2D);

// resnets (no time embedding) -> upsamplers.0
class UpDecoderBlock2DImpl : public torch::nn::Module {
 public:
  explicit UpDecoderBlock2DImpl(const Block2DOptions& options);
  at::Tensor forward(const at::Tensor& x, const Tap& tap = {});  // [N, Cin, H, W] -> [N, Cout, H', W']

 private:
  torch::nn::ModuleList resnets_{nullptr}, upsamplers_{nullptr};
};
TORCH_MODULE(UpDecoderBlock2D);

// resnets.0, then per layer attentions.i (GroupNorm + single-head residual attention), resnets.i+1.
class UNetMidBlock2DImpl : public torch::nn::Module {
 public:
  explicit UNetMidBlock2DImpl(const Block2DOptions& options);  // uses in_channels
  at::Tensor forward(const at::Tensor& x, const Tap& tap = {});  // [N, C, H, W] -> [N, C, H, W]

 private:
  torch::nn::ModuleList resnets_{nullptr}, attentions_{nullptr};
};
TORCH_MODULE(UNetMidBlock2D);

}  // namespace vdm::models
