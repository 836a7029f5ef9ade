#include "models/unet_2d_blocks.h"

#include <fmt/format.h>

#include "core/error.h"
#include "models/attention.h"
#include "models/resnet.h"

namespace vdm::models {


DownEncoderBlock2DImpl::DownEncoderBlock2DImpl(const Block2DOptions& o) {
  resnets_ = register_module("resnets", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.num_layers; ++i)
    resnets_->push_back(make_block_resnet(o, i == 0 ? o.in_channels : o.out_channels, o.out_channels));
  if (o.add_downsample) {
    Downsample2DOptions d;
    d.channels = o.out_channels;
    d.out_channels = o.out_channels;
    d.padding = o.downsample_padding;
    downsamplers_ = register_module("downsamplers", torch::nn::ModuleList(Downsample2D(d)));
  }
}

at::Tensor DownEncoderBlock2DImpl::forward(const at::Tensor& x, const Tap& tap) {
  at::Tensor h = x;
  for (size_t i = 0; i < resnets_->size(); ++i) {
    h = resnets_[i]->as<ResnetBlock2DImpl>()->forward(h);
    tap.child("resnets", i)(h);
  }
  if (downsamplers_) {
    for (size_t i = 0; i < downsamplers_->size(); ++i) {
      h = downsamplers_[i]->as<Downsample2DImpl>()->forward(h);
      tap.child("downsamplers", i)(h);
    }
  }
  return h;
}

UpDecoderBlock2DImpl::UpDecoderBlock2DImpl(const Block2DOptions& o) {
  resnets_ = register_module("resnets", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.num_layers; ++i)
    resnets_->push_back(make_block_resnet(o, i == 0 ? o.in_channels : o.out_channels, o.out_channels));
  if (o.add_upsample) {
    Upsample2DOptions u;
    u.channels = o.out_channels;
    u.out_channels = o.out_channels;
    upsamplers_ = register_module("upsamplers", torch::nn::ModuleList(Upsample2D(u)));
  }
}

at::Tensor UpDecoderBlock2DImpl::forward(const at::Tensor& x, const Tap& tap) {
  at::Tensor h = x;
  for (size_t i = 0; i < resnets_->size(); ++i) {
    h = resnets_[i]->as<ResnetBlock2DImpl>()->forward(h);
    tap.child("resnets", i)(h);
  }
  if (upsamplers_) {
    for (size_t i = 0; i < upsamplers_->size(); ++i) {
      h = upsamplers_[i]->as<Upsample2DImpl>()->forward(h);
      tap.child("upsamplers", i)(h);
    }
  }
  return h;
}

UNetMidBlock2DImpl::UNetMidBlock2DImpl(const Block2DOptions& o) {
  const int64_t c = o.in_channels;
  if (o.attention_head_dim <= 0 || c % o.attention_head_dim != 0)
    throw ConfigError(fmt::format("UNetMidBlock2D: {} channels are not divisible by attention_head_dim {}", c,
                                  o.attention_head_dim));
  resnets_ = register_module("resnets", torch::nn::ModuleList());
  attentions_ = register_module("attentions", torch::nn::ModuleList());
  resnets_->push_back(make_block_resnet(o, c, c));
  for (int64_t i = 0; i < o.num_layers; ++i) {
    if (o.add_attention) {
      AttentionOptions a;
      a.query_dim = c;
      a.heads = c / o.attention_head_dim;
      a.dim_head = o.attention_head_dim;
      a.rescale_output_factor = o.output_scale_factor;
      a.eps = o.resnet_eps;
      a.norm_num_groups = o.resnet_groups;
      a.residual_connection = true;
      a.bias = true;
      attentions_->push_back(Attention(a));
    }
    resnets_->push_back(make_block_resnet(o, c, c));
  }
}

at::Tensor UNetMidBlock2DImpl::forward(const at::Tensor& x, const Tap& tap) {
  at::Tensor h = resnets_[0]->as<ResnetBlock2DImpl>()->forward(x);
  tap.child("resnets", 0)(h);
  for (size_t i = 0; i + 1 < resnets_->size(); ++i) {
    if (i < attentions_->size()) {
      h = attentions_[i]->as<AttentionImpl>()->forward(h);
      tap.child("attentions", i)(h);
    }
    h = resnets_[i + 1]->as<ResnetBlock2DImpl>()->forward(h);
    tap.child("resnets", i + 1)(h);
  }
  return h;
}

}  // namespace vdm::models
