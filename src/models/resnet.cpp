#include "models/resnet.h"

#include <fmt/format.h>

#include "core/error.h"
#include "models/cuda_ops.h"

namespace vdm::models {

namespace {
// conv1 and conv2: 3x3, stride 1, padding 1.
constexpr int64_t kConvKernel = 3, kConvPadding = 1;

GroupNorm group_norm(int64_t groups, int64_t channels, double eps, const char* who) {
  if (groups <= 0 || channels % groups != 0)
    throw ConfigError(fmt::format("{}: {} channels cannot be split into {} groups", who, channels, groups));
  return GroupNorm(torch::nn::GroupNormOptions(groups, channels).eps(eps).affine(true));
}
}  // namespace

ResnetBlock2DImpl::ResnetBlock2DImpl(const ResnetBlock2DOptions& o) : options_(o) {
  const int64_t in = o.in_channels;
  const int64_t out = o.out_channels.value_or(in);
  norm1_ = register_module("norm1", group_norm(o.groups, in, o.eps, "ResnetBlock2D norm1"));
  conv1_ = register_module(
      "conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, kConvKernel).stride(1).padding(kConvPadding)));
  if (o.temb_channels) time_emb_proj_ = register_module("time_emb_proj", Linear(*o.temb_channels, out));
  norm2_ = register_module("norm2", group_norm(o.groups_out.value_or(o.groups), out, o.eps, "ResnetBlock2D norm2"));
  dropout_ = register_module("dropout", torch::nn::Dropout(torch::nn::DropoutOptions(o.dropout)));
  conv2_ = register_module(
      "conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(out, out, kConvKernel).stride(1).padding(kConvPadding)));
  if (o.use_in_shortcut.value_or(in != out))
    conv_shortcut_ = register_module(
        "conv_shortcut", torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 1).stride(1).padding(0).bias(o.conv_shortcut_bias)));
}

at::Tensor ResnetBlock2DImpl::forward(const at::Tensor& x, const at::Tensor& temb) {
  const Activation act = options_.non_linearity;
  // GroupNorm then the activation; SiLU (every diffusers UNet and VAE) runs fused with the norm.
  auto norm_act = [act](GroupNorm& norm, const at::Tensor& t) {
    return act == Activation::kSilu ? norm->forward_silu(t) : apply_activation(act, norm->forward(t));
  };
  at::Tensor h = norm_act(norm1_, x);
  // With SiLU, norm2 takes conv1's bias and the time embedding as one added term: on channels-last
  // CUDA its kernel adds them while it reads conv1's output, instead of two passes over it.
  const bool bias_in_norm = act == Activation::kSilu && conv1_->options.bias() && norm_takes_conv_bias(h);
  h = bias_in_norm ? at::conv2d(h, conv1_->weight, {}, 1, kConvPadding) : conv1_->forward(h);
  at::Tensor added = bias_in_norm ? conv1_->bias : at::Tensor();  // [C] or [N, C]
  if (time_emb_proj_ && temb.defined()) {
    at::Tensor t = time_emb_proj_->forward(apply_activation(act, temb));  // [N, C]
    if (act == Activation::kSilu)
      added = added.defined() ? t + added : t;
    else
      h = h + t.unsqueeze(-1).unsqueeze(-1);
  }
  h = added.defined() ? norm2_->forward_silu(h, added) : norm_act(norm2_, h);
  h = dropout_->forward(h);
  // On channels-last CUDA conv2's bias, the shortcut and the output scale are one pass after it; a
  // shortcut convolution's bias joins conv2's there instead of taking a pass of its own.
  if (conv2_->options.bias() && residual_takes_conv_bias(h)) {
    at::Tensor bias = conv2_->bias, shortcut = x;
    if (conv_shortcut_) {
      const bool shortcut_bias = conv_shortcut_->options.bias();
      shortcut = at::conv2d(x, conv_shortcut_->weight);
      if (shortcut_bias) bias = bias + conv_shortcut_->bias;
    }
    return add_bias_residual(at::conv2d(h, conv2_->weight, {}, 1, kConvPadding), bias, shortcut,
                             options_.output_scale_factor);
  }
  at::Tensor shortcut = conv_shortcut_ ? conv_shortcut_->forward(x) : x;
  h = conv2_->forward(h);
  at::Tensor out = shortcut + h;
  if (options_.output_scale_factor != 1.0) out = out / options_.output_scale_factor;
  return out;
}

Downsample2DImpl::Downsample2DImpl(const Downsample2DOptions& o) : options_(o) {
  const int64_t out = o.out_channels.value_or(o.channels);
  if (o.use_conv) {
    conv_ = register_module(
        "conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(o.channels, out, 3).stride(2).padding(o.padding)));
  } else if (out != o.channels) {
    throw ConfigError(fmt::format("Downsample2D: average pooling cannot change channels ({} -> {})", o.channels, out));
  }
}

at::Tensor Downsample2DImpl::forward(const at::Tensor& x) {
  if (!conv_) return at::avg_pool2d(x, {2, 2}, {2, 2});
  if (options_.padding == 0) return conv_->forward(at::constant_pad_nd(x, {0, 1, 0, 1}, 0));
  return conv_->forward(x);
}

Upsample2DImpl::Upsample2DImpl(const Upsample2DOptions& o) : options_(o) {
  const int64_t out = o.out_channels.value_or(o.channels);
  if (o.use_conv)
    conv_ = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(o.channels, out, 3).padding(1)));
  else if (out != o.channels)
    throw ConfigError(fmt::format("Upsample2D: without a conv the channels cannot change ({} -> {})", o.channels, out));
}

at::Tensor Upsample2DImpl::forward(const at::Tensor& x, const std::vector<int64_t>& output_size) {
  // Nearest-neighbour upsampling has no bfloat16 CPU kernel on some builds: run it in float32.
  const auto dtype = x.scalar_type();
  const bool widen = dtype == at::kBFloat16 && x.device().is_cpu();
  at::Tensor h = widen ? x.to(at::kFloat) : x;
  if (h.size(0) >= 64) h = h.contiguous(h.suggest_memory_format());
  const std::vector<int64_t> size =
      output_size.empty() ? std::vector<int64_t>{h.size(2) * 2, h.size(3) * 2} : std::vector<int64_t>{output_size.at(0), output_size.at(1)};
  h = at::upsample_nearest2d(h, at::IntArrayRef(size));
  if (widen) h = h.to(dtype);
  return conv_ ? conv_->forward(h) : h;
}

}  // namespace vdm::models
