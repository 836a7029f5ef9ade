#include "temporal/temporal_conv.h"

#include <fmt/format.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/dropout.h>

#include "core/error.h"
#include "core/runtime.h"
#include "models/cuda_ops.h"
#include "models/normalization.h"

namespace vdm::temporal {

namespace {
models::GroupNorm norm(int64_t groups, int64_t channels) {
  if (groups <= 0 || channels % groups != 0)
    throw ConfigError(fmt::format("TemporalConvLayer: {} channels cannot be split into {} groups", channels, groups));
  return models::GroupNorm(torch::nn::GroupNormOptions(groups, channels));
}
// Each convolution mixes three frames: kernel (3, 1, 1), padding (1, 0, 0).
const std::vector<int64_t> kKernel{3, 1, 1}, kPadding{1, 0, 0};

torch::nn::Conv3d conv(int64_t in, int64_t out) {
  return torch::nn::Conv3d(torch::nn::Conv3dOptions(in, out, {kKernel[0], kKernel[1], kKernel[2]})
                               .padding({kPadding[0], kPadding[1], kPadding[2]}));
}

bool channels_last_5d(const at::Tensor& x) {
  return x.is_contiguous(at::MemoryFormat::ChannelsLast3d) && !x.is_contiguous();
}

// One stage: GroupNorm, SiLU, [Dropout,] Conv3d, with the norm and SiLU fused. `bias` carries a
// convolution bias from one stage to what follows it where `takes_bias` says that adds it as it reads
// (channels-last CUDA): the next stage's norm (models::norm_takes_conv_bias), or after the last stage
// the residual add (models::residual_takes_conv_bias).
at::Tensor run_stage(torch::nn::Sequential& stage, const at::Tensor& x, at::Tensor& bias,
                     bool (*takes_bias)(const at::Tensor& conv_input)) {
  auto it = stage->begin();
  models::GroupNorm norm = it->get<models::GroupNorm>();
  at::Tensor h = bias.defined() ? norm->forward_silu(x, bias) : norm->forward_silu(x);
  bias = at::Tensor();
  for (it += 2; it != stage->end(); ++it) {
    auto* c = it->ptr()->as<torch::nn::Conv3dImpl>();
    if (!c) {
      h = it->forward(h);
      continue;
    }
    const bool defer_bias = c->options.bias() && takes_bias(h);
    h = conv_frames(h, c->weight, defer_bias ? at::Tensor() : c->bias);
    if (defer_bias) bias = c->bias;
  }
  // A channels-last input gives a channels-last output: cuDNN's Conv3d keeps NDHWC, LibTorch 1.13's
  // CPU one returns NCDHW (a no-op where the layout is kept).
  if (channels_last_5d(x) && !h.is_contiguous(at::MemoryFormat::ChannelsLast3d))
    h = h.contiguous(at::MemoryFormat::ChannelsLast3d);
  return h;
}
}  // namespace

at::Tensor conv_frames(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias) {
  if (!temporal_conv_as_2d()) return at::conv3d(h, weight, bias, 1, kPadding);
  const int64_t B = h.size(0), F = h.size(2), H = h.size(3), W = h.size(4);
  const at::Tensor out = at::conv2d(h.flatten(3), weight.squeeze(-1), bias, 1, {kPadding[0], 0});
  return out.view({B, out.size(1), F, H, W});
}

bool temporal_conv_as_2d() {
  static const bool on = env_switch("VDM_TEMPORAL_CONV", "conv2d", "conv3d");
  return on;
}

TemporalConvLayerImpl::TemporalConvLayerImpl(const TemporalConvOptions& o) : options_(o) {
  const int64_t in = o.in_dim, out = o.out_dim.value_or(o.in_dim);
  const int64_t g = o.norm_num_groups;
  conv1_ = register_module("conv1", torch::nn::Sequential(norm(g, in), torch::nn::SiLU(), conv(in, out)));
  auto stage = [&]() {
    return torch::nn::Sequential(norm(g, out), torch::nn::SiLU(), torch::nn::Dropout(torch::nn::DropoutOptions(o.dropout)),
                                 conv(out, in));
  };
  conv2_ = register_module("conv2", stage());
  conv3_ = register_module("conv3", stage());
  conv4_ = register_module("conv4", stage());
}

at::Tensor TemporalConvLayerImpl::forward(const at::Tensor& x, int64_t num_frames) {
  const int64_t BF = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  if (num_frames <= 0 || BF % num_frames != 0)
    throw Error(fmt::format("TemporalConvLayer: {} frames in the batch is not a multiple of num_frames {}", BF, num_frames));
  // [B*F, C, H, W] -> [B, C, F, H, W]
  at::Tensor identity = x.reshape({BF / num_frames, num_frames, C, H, W}).permute({0, 2, 1, 3, 4});
  at::Tensor bias;
  at::Tensor h = run_stage(conv1_, identity, bias, models::norm_takes_conv_bias);
  h = run_stage(conv2_, h, bias, models::norm_takes_conv_bias);
  h = run_stage(conv3_, h, bias, models::norm_takes_conv_bias);
  h = run_stage(conv4_, h, bias, models::residual_takes_conv_bias);
  h = bias.defined() ? models::add_bias_residual(h, bias, identity, 1.0) : identity + h;
  // [B, C, F, H, W] -> [B*F, C, H, W]
  return h.permute({0, 2, 1, 3, 4}).reshape({BF, h.size(1), H, W});
}

}  // namespace vdm::temporal
