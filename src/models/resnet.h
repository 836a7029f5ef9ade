// ResnetBlock2D, Downsample2D and Upsample2D as in diffusers v0.31 (time_embedding_norm
// "default", pre-norm). Children use the diffusers names: norm1, conv1, time_emb_proj, norm2,
// conv2, conv_shortcut; "conv" in the samplers.
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/dropout.h>

#include <cstdint>
#include <vector>

#include "models/activations.h"
#include "models/linear.h"
#include "models/normalization.h"

namespace vdm::models {

struct ResnetBlock2DOptions {
  int64_t in_channels = 0;                    // required
  c10::optional<int64_t> out_channels;        // default: in_channels
  c10::optional<int64_t> temb_channels;       // time_emb_proj input width; none = no time embedding
  int64_t groups = 32;
  c10::optional<int64_t> groups_out;          // norm2 groups; default: groups
  double eps = 1e-6;
  double dropout = 0.0;
  double output_scale_factor = 1.0;
  Activation non_linearity = Activation::kSilu;
  c10::optional<bool> use_in_shortcut;        // default: in_channels != out_channels
  bool conv_shortcut_bias = true;
};

// out = (shortcut(x) + conv2(drop(act(norm2(conv1(act(norm1(x))) + proj(act(temb))))))) / scale
class ResnetBlock2DImpl : public torch::nn::Module {
 public:
  explicit ResnetBlock2DImpl(const ResnetBlock2DOptions& options);
  // x: [N, Cin, H, W]; temb: [N, temb_channels] (undefined when the block has no time embedding)
  // -> [N, Cout, H, W]
  at::Tensor forward(const at::Tensor& x, const at::Tensor& temb = {});

 private:
  ResnetBlock2DOptions options_;
  GroupNorm norm1_{nullptr}, norm2_{nullptr};
  torch::nn::Conv2d conv1_{nullptr}, conv2_{nullptr}, conv_shortcut_{nullptr};
  Linear time_emb_proj_{nullptr};
  torch::nn::Dropout dropout_{nullptr};
};
TORCH_MODULE(ResnetBlock2D);

// The resnet of a UNet or VAE block, from the block's options (resnet_eps, resnet_groups, dropout,
// resnet_act_fn, output_scale_factor, as diffusers' blocks pass them on).
template <typename BlockOptions>
ResnetBlock2D make_block_resnet(const BlockOptions& o, int64_t in, int64_t out,
                                c10::optional<int64_t> temb_channels = c10::nullopt) {
  ResnetBlock2DOptions r;
  r.in_channels = in;
  r.out_channels = out;
  r.temb_channels = temb_channels;
  r.eps = o.resnet_eps;
  r.groups = o.resnet_groups;
  r.dropout = o.dropout;
  r.non_linearity = o.resnet_act_fn;
  r.output_scale_factor = o.output_scale_factor;
  return ResnetBlock2D(r);
}

struct Downsample2DOptions {
  int64_t channels = 0;                  // required
  bool use_conv = true;                  // 3x3 stride-2 conv "conv"; else 2x2 average pooling
  c10::optional<int64_t> out_channels;   // default: channels
  int64_t padding = 1;                   // 0: pad right/bottom by one first (VAE encoder)
};

class Downsample2DImpl : public torch::nn::Module {
 public:
  explicit Downsample2DImpl(const Downsample2DOptions& options);
  at::Tensor forward(const at::Tensor& x);  // x: [N, C, H, W] -> [N, Cout, ceil(H/2), ceil(W/2)]

 private:
  Downsample2DOptions options_;
  torch::nn::Conv2d conv_{nullptr};
};
TORCH_MODULE(Downsample2D);

struct Upsample2DOptions {
  int64_t channels = 0;                  // required
  bool use_conv = true;                  // 3x3 conv "conv" after the nearest-neighbour upsampling
  c10::optional<int64_t> out_channels;   // default: channels
};

// True unless VDM_UPSAMPLE=separate: Upsample2D's nearest 2x upsampling and 3x3 convolution run as
// one stride-2 transposed convolution (for inference). Read once; InputError for an unknown value.
bool upsample_as_transposed_conv();

class Upsample2DImpl : public torch::nn::Module {
 public:
  explicit Upsample2DImpl(const Upsample2DOptions& options);
  // x: [N, C, H, W] -> [N, Cout, 2H, 2W], or [N, Cout, output_size[0], output_size[1]] when given.
  at::Tensor forward(const at::Tensor& x, const std::vector<int64_t>& output_size = {});

 private:
  // conv's weight as the equivalent stride-2 transposed convolution's [Cin, Cout, 4, 4], rebuilt
  // when the weight changes (another storage, or another version of it).
  const at::Tensor& transposed_weight();

  Upsample2DOptions options_;
  torch::nn::Conv2d conv_{nullptr};
  at::Tensor transposed_weight_;
  at::Tensor transposed_from_;  // a view of the conv weight's storage transposed_weight_ was built from
  int64_t transposed_version_ = -1;
};
TORCH_MODULE(Upsample2D);

}  // namespace vdm::models
