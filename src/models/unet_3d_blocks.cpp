#include "models/unet_3d_blocks.h"

#include <fmt/format.h>

#include "core/error.h"
#include "models/attention.h"
#include "models/resnet.h"
#include "temporal/temporal_conv.h"
#include "temporal/transformer_temporal.h"

namespace vdm::models {

namespace {

// Dropout of the temporal convolutions in every UNet3D block (diffusers hard-codes it).
constexpr double kTempConvDropout = 0.1;

ResnetBlock2D make_resnet(const Block3DOptions& o, int64_t in, int64_t out) {
  return make_block_resnet(o, in, out, o.temb_channels);
}

temporal::TemporalConvLayer make_temp_conv(const Block3DOptions& o, int64_t channels) {
  temporal::TemporalConvOptions t;
  t.in_dim = channels;
  t.out_dim = channels;
  t.dropout = kTempConvDropout;
  t.norm_num_groups = o.resnet_groups;
  return temporal::TemporalConvLayer(t);
}

void check_heads(const Block3DOptions& o, int64_t channels) {
  if (o.num_attention_heads <= 0 || channels % o.num_attention_heads != 0)
    throw ConfigError(fmt::format("UNet3D block: {} channels are not divisible by attention_head_dim {}", channels,
                                  o.num_attention_heads));
}

// diffusers passes (channels // n, n) positionally as (num_attention_heads, attention_head_dim).
Transformer2DModel make_attention(const Block3DOptions& o, int64_t channels) {
  check_heads(o, channels);
  Transformer2DOptions t;
  t.num_attention_heads = channels / o.num_attention_heads;
  t.attention_head_dim = o.num_attention_heads;
  t.in_channels = channels;
  t.num_layers = 1;
  t.cross_attention_dim = o.cross_attention_dim;
  t.norm_num_groups = o.resnet_groups;
  t.use_linear_projection = o.use_linear_projection;
  t.only_cross_attention = o.only_cross_attention;
  return Transformer2DModel(t);
}

temporal::TransformerTemporalModel make_temp_attention(const Block3DOptions& o, int64_t channels) {
  check_heads(o, channels);
  temporal::TransformerTemporalOptions t;
  t.num_attention_heads = channels / o.num_attention_heads;
  t.attention_head_dim = o.num_attention_heads;
  t.in_channels = channels;
  t.num_layers = 1;
  t.cross_attention_dim = o.cross_attention_dim;
  t.norm_num_groups = o.resnet_groups;
  return temporal::TransformerTemporalModel(t);
}

torch::nn::ModuleList make_downsamplers(const Block3DOptions& o) {
  Downsample2DOptions d;
  d.channels = o.out_channels;
  d.use_conv = true;
  d.out_channels = o.out_channels;
  d.padding = o.downsample_padding;
  return torch::nn::ModuleList(Downsample2D(d));
}

torch::nn::ModuleList make_upsamplers(const Block3DOptions& o) {
  Upsample2DOptions u;
  u.channels = o.out_channels;
  u.use_conv = true;
  u.out_channels = o.out_channels;
  return torch::nn::ModuleList(Upsample2D(u));
}

template <typename T>
T* at_(const torch::nn::ModuleList& list, size_t i) {
  return list->ptr(i)->template as<T>();
}

at::Tensor pop_back(std::vector<at::Tensor>& res_samples) {
  if (res_samples.empty()) throw Error("UNet3D up block: no skip connection left (down/up blocks do not match)");
  at::Tensor r = std::move(res_samples.back());
  res_samples.pop_back();
  return r;
}

// h: [B*F, C, H, W] joined with the next skip connection along the channels, after FreeU's factors
// when the block has them.
at::Tensor join_skip(const at::Tensor& h, std::vector<at::Tensor>& res_samples,
                     const std::optional<FreeUStage>& freeu) {
  at::Tensor skip = pop_back(res_samples);
  if (!freeu) return at::cat({h, skip}, 1);
  const auto [backbone, filtered] = apply_freeu(*freeu, h, skip);
  return at::cat({backbone, filtered}, 1);
}

// Layer i of a block's spatial-then-temporal pairs, each output tapped under its attribute name:
// resnets[i] (with the time embedding) then temp_convs[i]. h: [B*F, C, H, W].
at::Tensor resnet_and_temp_conv(const torch::nn::ModuleList& resnets, const torch::nn::ModuleList& temp_convs,
                                size_t i, const at::Tensor& x, const at::Tensor& temb, int64_t num_frames,
                                const Tap& tap) {
  at::Tensor h = at_<ResnetBlock2DImpl>(resnets, i)->forward(x, temb);
  tap.child("resnets", i)(h);
  h = at_<temporal::TemporalConvLayerImpl>(temp_convs, i)->forward(h, num_frames);
  tap.child("temp_convs", i)(h);
  return h;
}

// attentions[i] (self- and cross-attention to the text) then temp_attentions[i].
at::Tensor attention_and_temp_attention(const torch::nn::ModuleList& attentions,
                                        const torch::nn::ModuleList& temp_attentions, size_t i, const at::Tensor& x,
                                        const at::Tensor& encoder_hidden_states, int64_t num_frames, const Tap& tap) {
  at::Tensor h = at_<Transformer2DModelImpl>(attentions, i)->forward(x, encoder_hidden_states);
  tap.child("attentions", i)(h);
  h = at_<temporal::TransformerTemporalModelImpl>(temp_attentions, i)->forward(h, num_frames);
  tap.child("temp_attentions", i)(h);
  return h;
}

// A down block's tail: its downsamplers (if any), the result kept as a skip connection.
at::Tensor downsample(const torch::nn::ModuleList& downsamplers, at::Tensor h, std::vector<at::Tensor>& res_samples,
                      const Tap& tap) {
  if (!downsamplers) return h;
  for (size_t i = 0; i < downsamplers->size(); ++i) {
    h = at_<Downsample2DImpl>(downsamplers, i)->forward(h);
    tap.child("downsamplers", i)(h);
  }
  res_samples.push_back(h);
  return h;
}

at::Tensor upsample(const torch::nn::ModuleList& upsamplers, at::Tensor h, const std::vector<int64_t>& upsample_size,
                    const Tap& tap) {
  if (!upsamplers) return h;
  for (size_t i = 0; i < upsamplers->size(); ++i) {
    h = at_<Upsample2DImpl>(upsamplers, i)->forward(h, upsample_size);
    tap.child("upsamplers", i)(h);
  }
  return h;
}

// How many skip connections a down block appends: max_skips < 0 means all of them.
int64_t skip_limit(int64_t max_skips, int64_t num_skips) {
  return max_skips < 0 ? num_skips : std::min(max_skips, num_skips);
}

// The end of an up block's layer range [begin, end): end < 0 means the last layer; a range outside
// the block is a programming error.
int64_t layer_end(int64_t begin, int64_t end, int64_t num_layers) {
  if (end < 0) end = num_layers;
  if (begin < 0 || begin > end || end > num_layers)
    throw Error(fmt::format("UNet3D up block: layer range [{}, {}) outside its {} layers", begin, end, num_layers));
  return end;
}

// An up block's resnet input channels for layer i: the previous layer's output (or the block
// below's) plus the skip connection it concatenates.
int64_t up_resnet_in_channels(const Block3DOptions& o, int64_t i) {
  const int64_t res_skip = i == o.num_layers - 1 ? o.in_channels : o.out_channels;
  const int64_t resnet_in = i == 0 ? o.prev_output_channel : o.out_channels;
  return resnet_in + res_skip;
}

}  // namespace

// ---- down blocks ----------------------------------------------------------------------------

CrossAttnDownBlock3DImpl::CrossAttnDownBlock3DImpl(const Block3DOptions& o) {
  resnets_ = register_module("resnets", torch::nn::ModuleList());
  temp_convs_ = register_module("temp_convs", torch::nn::ModuleList());
  attentions_ = register_module("attentions", torch::nn::ModuleList());
  temp_attentions_ = register_module("temp_attentions", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.num_layers; ++i) {
    resnets_->push_back(make_resnet(o, i == 0 ? o.in_channels : o.out_channels, o.out_channels));
    temp_convs_->push_back(make_temp_conv(o, o.out_channels));
    attentions_->push_back(make_attention(o, o.out_channels));
    temp_attentions_->push_back(make_temp_attention(o, o.out_channels));
  }
  if (o.add_downsample) downsamplers_ = register_module("downsamplers", make_downsamplers(o));
}

at::Tensor CrossAttnDownBlock3DImpl::forward(const at::Tensor& x, const at::Tensor& temb,
                                             const at::Tensor& encoder_hidden_states, int64_t num_frames,
                                             std::vector<at::Tensor>& res_samples, const Tap& tap,
                                             int64_t max_skips) {
  at::Tensor h = x;
  const int64_t limit = skip_limit(max_skips, num_skips());
  for (int64_t i = 0; i < std::min<int64_t>(limit, resnets_->size()); ++i) {
    h = resnet_and_temp_conv(resnets_, temp_convs_, i, h, temb, num_frames, tap);
    h = attention_and_temp_attention(attentions_, temp_attentions_, i, h, encoder_hidden_states, num_frames, tap);
    res_samples.push_back(h);
  }
  if (limit <= static_cast<int64_t>(resnets_->size())) return h;
  return downsample(downsamplers_, h, res_samples, tap);
}

int64_t CrossAttnDownBlock3DImpl::num_skips() const {
  return static_cast<int64_t>(resnets_->size()) + (downsamplers_ ? 1 : 0);
}

DownBlock3DImpl::DownBlock3DImpl(const Block3DOptions& o) {
  resnets_ = register_module("resnets", torch::nn::ModuleList());
  temp_convs_ = register_module("temp_convs", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.num_layers; ++i) {
    resnets_->push_back(make_resnet(o, i == 0 ? o.in_channels : o.out_channels, o.out_channels));
    temp_convs_->push_back(make_temp_conv(o, o.out_channels));
  }
  if (o.add_downsample) downsamplers_ = register_module("downsamplers", make_downsamplers(o));
}

at::Tensor DownBlock3DImpl::forward(const at::Tensor& x, const at::Tensor& temb, const at::Tensor&,
                                    int64_t num_frames, std::vector<at::Tensor>& res_samples, const Tap& tap,
                                    int64_t max_skips) {
  at::Tensor h = x;
  const int64_t limit = skip_limit(max_skips, num_skips());
  for (int64_t i = 0; i < std::min<int64_t>(limit, resnets_->size()); ++i) {
    h = resnet_and_temp_conv(resnets_, temp_convs_, i, h, temb, num_frames, tap);
    res_samples.push_back(h);
  }
  if (limit <= static_cast<int64_t>(resnets_->size())) return h;
  return downsample(downsamplers_, h, res_samples, tap);
}

int64_t DownBlock3DImpl::num_skips() const {
  return static_cast<int64_t>(resnets_->size()) + (downsamplers_ ? 1 : 0);
}

// ---- mid block ------------------------------------------------------------------------------

UNetMidBlock3DCrossAttnImpl::UNetMidBlock3DCrossAttnImpl(const Block3DOptions& o) {
  const int64_t c = o.in_channels;
  resnets_ = register_module("resnets", torch::nn::ModuleList());
  temp_convs_ = register_module("temp_convs", torch::nn::ModuleList());
  attentions_ = register_module("attentions", torch::nn::ModuleList());
  temp_attentions_ = register_module("temp_attentions", torch::nn::ModuleList());
  resnets_->push_back(make_resnet(o, c, c));
  temp_convs_->push_back(make_temp_conv(o, c));
  for (int64_t i = 0; i < o.num_layers; ++i) {
    attentions_->push_back(make_attention(o, c));
    temp_attentions_->push_back(make_temp_attention(o, c));
    resnets_->push_back(make_resnet(o, c, c));
    temp_convs_->push_back(make_temp_conv(o, c));
  }
}

at::Tensor UNetMidBlock3DCrossAttnImpl::forward(const at::Tensor& x, const at::Tensor& temb,
                                                const at::Tensor& encoder_hidden_states, int64_t num_frames,
                                                const Tap& tap) {
  at::Tensor h = resnet_and_temp_conv(resnets_, temp_convs_, 0, x, temb, num_frames, tap);
  for (size_t i = 0; i < attentions_->size(); ++i) {
    h = attention_and_temp_attention(attentions_, temp_attentions_, i, h, encoder_hidden_states, num_frames, tap);
    h = resnet_and_temp_conv(resnets_, temp_convs_, i + 1, h, temb, num_frames, tap);
  }
  return h;
}

// ---- up blocks ------------------------------------------------------------------------------

CrossAttnUpBlock3DImpl::CrossAttnUpBlock3DImpl(const Block3DOptions& o) {
  resnets_ = register_module("resnets", torch::nn::ModuleList());
  temp_convs_ = register_module("temp_convs", torch::nn::ModuleList());
  attentions_ = register_module("attentions", torch::nn::ModuleList());
  temp_attentions_ = register_module("temp_attentions", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.num_layers; ++i) {
    resnets_->push_back(make_resnet(o, up_resnet_in_channels(o, i), o.out_channels));
    temp_convs_->push_back(make_temp_conv(o, o.out_channels));
    attentions_->push_back(make_attention(o, o.out_channels));
    temp_attentions_->push_back(make_temp_attention(o, o.out_channels));
  }
  if (o.add_upsample) upsamplers_ = register_module("upsamplers", make_upsamplers(o));
}

at::Tensor CrossAttnUpBlock3DImpl::forward(const at::Tensor& x, std::vector<at::Tensor>& res_samples,
                                           const at::Tensor& temb, const at::Tensor& encoder_hidden_states,
                                           int64_t num_frames, const std::vector<int64_t>& upsample_size,
                                           const Tap& tap, int64_t begin, int64_t end) {
  at::Tensor h = x;
  end = layer_end(begin, end, num_resnets());
  for (int64_t i = begin; i < end; ++i) {
    h = join_skip(h, res_samples, freeu);
    h = resnet_and_temp_conv(resnets_, temp_convs_, i, h, temb, num_frames, tap);
    h = attention_and_temp_attention(attentions_, temp_attentions_, i, h, encoder_hidden_states, num_frames, tap);
  }
  return end == num_resnets() ? upsample(upsamplers_, h, upsample_size, tap) : h;
}

UpBlock3DImpl::UpBlock3DImpl(const Block3DOptions& o) {
  resnets_ = register_module("resnets", torch::nn::ModuleList());
  temp_convs_ = register_module("temp_convs", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.num_layers; ++i) {
    resnets_->push_back(make_resnet(o, up_resnet_in_channels(o, i), o.out_channels));
    temp_convs_->push_back(make_temp_conv(o, o.out_channels));
  }
  if (o.add_upsample) upsamplers_ = register_module("upsamplers", make_upsamplers(o));
}

at::Tensor UpBlock3DImpl::forward(const at::Tensor& x, std::vector<at::Tensor>& res_samples, const at::Tensor& temb,
                                  const at::Tensor&, int64_t num_frames, const std::vector<int64_t>& upsample_size,
                                  const Tap& tap, int64_t begin, int64_t end) {
  at::Tensor h = x;
  end = layer_end(begin, end, num_resnets());
  for (int64_t i = begin; i < end; ++i) {
    h = join_skip(h, res_samples, freeu);
    h = resnet_and_temp_conv(resnets_, temp_convs_, i, h, temb, num_frames, tap);
  }
  return end == num_resnets() ? upsample(upsamplers_, h, upsample_size, tap) : h;
}

// ---- factories ------------------------------------------------------------------------------

std::shared_ptr<DownBlock3DBase> make_down_block_3d(const std::string& type, const Block3DOptions& options,
                                                    const std::string& source) {
  if (type == "CrossAttnDownBlock3D") return std::make_shared<CrossAttnDownBlock3DImpl>(options);
  if (type == "DownBlock3D") return std::make_shared<DownBlock3DImpl>(options);
  throw ConfigError(fmt::format("{}: unsupported down block type '{}' (expected CrossAttnDownBlock3D or DownBlock3D)",
                                source, type));
}

std::shared_ptr<UpBlock3DBase> make_up_block_3d(const std::string& type, const Block3DOptions& options,
                                                const std::string& source) {
  if (type == "CrossAttnUpBlock3D") return std::make_shared<CrossAttnUpBlock3DImpl>(options);
  if (type == "UpBlock3D") return std::make_shared<UpBlock3DImpl>(options);
  throw ConfigError(fmt::format("{}: unsupported up block type '{}' (expected CrossAttnUpBlock3D or UpBlock3D)", source,
                                type));
}

}  // namespace vdm::models
