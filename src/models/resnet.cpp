#include "models/resnet.h"

#include <cstdlib>
#include <string>

#include <fmt/format.h>

#include "core/error.h"
#include "core/runtime.h"
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

namespace {
// Nearest 2x upsampling followed by a 3x3 convolution (padding 1) is one stride-2 transposed
// convolution with a 4x4 kernel: output row 2i sees input rows i-1 (kernel row 0) and i (rows 1 + 2),
// output row 2i+1 sees rows i (rows 0 + 1) and i+1 (row 2); the same for columns. Each output pixel
// then takes 4 taps instead of 9, and the 4x larger upsampled tensor is never written.
// w: [Cout, Cin, 3, 3] -> [Cin, Cout, 4, 4], summed in float32 at least, in w's dtype and memory
// format.
at::Tensor upsample_conv_as_transposed(const at::Tensor& w) {
  // Transposed-convolution tap k (output 2i + a takes input i + (a + 1 - k) / 2) per dimension.
  auto taps = [](const at::Tensor& t, int64_t dim) {
    const at::Tensor w0 = t.select(dim, 0), w1 = t.select(dim, 1), w2 = t.select(dim, 2);
    return at::stack({w2, w1 + w2, w0 + w1, w0}, dim);
  };
  const at::Tensor k = taps(taps(w.to(at::promote_types(w.scalar_type(), at::kFloat)), 2), 3).transpose(0, 1);
  return k.to(w.scalar_type()).contiguous(w.suggest_memory_format());
}
}  // namespace

bool upsample_as_transposed_conv() {
  static const bool on = env_switch("VDM_UPSAMPLE", "transposed", "separate");
  return on;
}

const at::Tensor& Upsample2DImpl::transposed_weight() {
  const at::Tensor& w = conv_->weight;
  // A converted or moved weight (to(), set_channels_last) is another storage; one changed in place
  // has another version. Weights created under inference mode keep no version counter; vdm changes
  // weights in place only outside it (training, EMA).
  const int64_t version = w.is_inference() ? -1 : int64_t(w._version());
  if (!transposed_weight_.defined() || !transposed_from_.is_alias_of(w) || transposed_version_ != version) {
    at::NoGradGuard no_grad;
    transposed_weight_ = upsample_conv_as_transposed(w);
    transposed_from_ = w.detach();  // holds that storage, so a replaced weight cannot reuse its address
    transposed_version_ = version;
  }
  return transposed_weight_;
}

at::Tensor Upsample2DImpl::forward(const at::Tensor& x, const std::vector<int64_t>& output_size) {
  const bool doubling = output_size.empty() || (output_size.at(0) == 2 * x.size(2) && output_size.at(1) == 2 * x.size(3));
  // On the CPU (oneDNN) the transposed convolution was 1.1-1.85x faster from 256 channels up
  // (docs/performance.md) and up to 5x slower at 32-64; LibTorch 1.13's CPU operator also gets the
  // output size wrong in bfloat16 (2x2 for 8x8 from 4x4). So the CPU takes it for float32 and
  // float64 from 256 channels.
  const bool cpu_ok = x.size(1) >= 256 && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble);
  if (conv_ && doubling && (!x.device().is_cpu() || cpu_ok) &&
      !(at::GradMode::is_enabled() && conv_->weight.requires_grad()) && upsample_as_transposed_conv()) {
    // The CPU operator returns NCHW for channels-last input; cuDNN keeps the layout (a no-op there).
    return at::conv_transpose2d(x, transposed_weight(), conv_->bias, 2, 1).contiguous(x.suggest_memory_format());
  }
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
