#include "models/unet_3d_condition.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/error.h"
#include "models/attention.h"
#include "models/config_checks.h"
#include "models/cuda_ops.h"
#include "models/shape.h"
#include "models/pretrained_io.h"
#include "models/skip_connections.h"

namespace vdm::models {

// ---- config ---------------------------------------------------------------------------------

UNet3DConditionConfig UNet3DConditionConfig::from_json(const io::JsonConfig& j) {
  UNet3DConditionConfig c;
  if (j.has("sample_size")) c.sample_size = j.get_int("sample_size");
  c.in_channels = j.get_int("in_channels", c.in_channels);
  c.out_channels = j.get_int("out_channels", c.out_channels);
  c.down_block_types = j.get_string_list("down_block_types", c.down_block_types);
  c.up_block_types = j.get_string_list("up_block_types", c.up_block_types);
  c.block_out_channels = j.get_int_list("block_out_channels", c.block_out_channels);
  c.layers_per_block = j.get_int("layers_per_block", c.layers_per_block);
  c.downsample_padding = j.get_int("downsample_padding", c.downsample_padding);
  c.mid_block_scale_factor = j.get_double("mid_block_scale_factor", c.mid_block_scale_factor);
  c.act_fn = j.get_string("act_fn", c.act_fn);
  c.norm_num_groups = j.get_int("norm_num_groups", c.norm_num_groups);
  c.norm_eps = j.get_double("norm_eps", c.norm_eps);
  c.cross_attention_dim = j.get_int("cross_attention_dim", c.cross_attention_dim);
  c.attention_head_dim_is_list = j.has("attention_head_dim") && j.json().at("attention_head_dim").is_array();
  c.attention_head_dim = j.get_int_or_list("attention_head_dim", c.down_block_types.size(), 64);
  if (j.has("num_attention_heads"))
    throw ConfigError(fmt::format("{}: 'num_attention_heads' must be null for UNet3DConditionModel (diffusers uses "
                                  "'attention_head_dim' as the number of heads); remove it",
                                  j.source()));
  if (j.has("time_cond_proj_dim"))
    throw ConfigError(fmt::format("{}: 'time_cond_proj_dim' (timestep conditioning projection) is not supported; it "
                                  "must be null",
                                  j.source()));
  c.validate(j.source());
  return c;
}

UNet3DConditionConfig UNet3DConditionConfig::load(const std::string& path) {
  return from_json(io::JsonConfig::load(path));
}

void UNet3DConditionConfig::validate(const std::string& source) const {
  auto fail = [&](const std::string& what) { throw ConfigError(fmt::format("{}: {}", source, what)); };
  check_block_layout(source, block_out_channels, down_block_types, up_block_types, norm_num_groups);
  const size_t n = block_out_channels.size();
  if (attention_head_dim.size() != n)
    fail(fmt::format("'attention_head_dim' has {} entries, expected {}", attention_head_dim.size(), n));
  if (attention_head_dim_is_list)
    fail("'attention_head_dim' must be a single integer for UNet3DConditionModel (transformer_in uses it as its head "
         "width)");
  if (in_channels <= 0 || out_channels <= 0) fail("'in_channels' and 'out_channels' must be positive");
  if (layers_per_block <= 0) fail("'layers_per_block' must be positive");
  if (cross_attention_dim <= 0) fail("'cross_attention_dim' must be positive");
  parse_activation(act_fn, source);
  for (size_t i = 0; i < n; ++i) {
    const int64_t ch = block_out_channels[i];
    const int64_t heads = attention_head_dim[i];
    if (heads <= 0 || ch % heads != 0)
      fail(fmt::format("block_out_channels[{}] = {} is not divisible by attention_head_dim {}", i, ch, heads));
    if (down_block_types[i] != "CrossAttnDownBlock3D" && down_block_types[i] != "DownBlock3D")
      fail(fmt::format("unsupported down block type '{}' (expected CrossAttnDownBlock3D or DownBlock3D)",
                       down_block_types[i]));
    if (up_block_types[i] != "CrossAttnUpBlock3D" && up_block_types[i] != "UpBlock3D")
      fail(fmt::format("unsupported up block type '{}' (expected CrossAttnUpBlock3D or UpBlock3D)", up_block_types[i]));
  }
}

nlohmann::json UNet3DConditionConfig::to_json() const {
  nlohmann::json j;
  j["_class_name"] = "UNet3DConditionModel";
  j["_diffusers_version"] = kDiffusersVersion;
  j["act_fn"] = act_fn;
  if (attention_head_dim_is_list)
    j["attention_head_dim"] = attention_head_dim;
  else
    j["attention_head_dim"] = attention_head_dim.empty() ? 64 : attention_head_dim[0];
  j["block_out_channels"] = block_out_channels;
  j["cross_attention_dim"] = cross_attention_dim;
  j["down_block_types"] = down_block_types;
  j["downsample_padding"] = downsample_padding;
  j["in_channels"] = in_channels;
  j["layers_per_block"] = layers_per_block;
  j["mid_block_scale_factor"] = mid_block_scale_factor;
  j["norm_eps"] = norm_eps;
  j["norm_num_groups"] = norm_num_groups;
  j["num_attention_heads"] = nullptr;
  j["out_channels"] = out_channels;
  j["sample_size"] = sample_size ? nlohmann::json(*sample_size) : nlohmann::json(nullptr);
  j["time_cond_proj_dim"] = nullptr;
  j["up_block_types"] = up_block_types;
  return j;
}

// ---- model ----------------------------------------------------------------------------------

namespace {
// The head count of transformer_in, fixed by diffusers.
constexpr int64_t kTransformerInHeads = 8;
}  // namespace

UNet3DConditionModelImpl::UNet3DConditionModelImpl(const UNet3DConditionConfig& config) : config_(config) {
  const auto& c = config_;
  c.validate();
  const Activation act = parse_activation(c.act_fn);
  const auto& boc = c.block_out_channels;
  const int64_t n = static_cast<int64_t>(boc.size());
  const int64_t temb = c.time_embed_dim();

  conv_in_ = register_module("conv_in", torch::nn::Conv2d(torch::nn::Conv2dOptions(c.in_channels, boc[0], 3).padding(1)));
  time_embedding_ = register_module("time_embedding", TimestepEmbedding(boc[0], temb, act));

  temporal::TransformerTemporalOptions ti;
  ti.num_attention_heads = kTransformerInHeads;
  ti.attention_head_dim = c.attention_head_dim[0];
  ti.in_channels = boc[0];
  ti.num_layers = 1;
  ti.norm_num_groups = c.norm_num_groups;
  transformer_in_ = register_module("transformer_in", temporal::TransformerTemporalModel(ti));

  down_blocks_ = register_module("down_blocks", torch::nn::ModuleList());
  int64_t output_channel = boc[0];
  for (int64_t i = 0; i < n; ++i) {
    Block3DOptions o;
    o.in_channels = output_channel;
    output_channel = boc[i];
    o.out_channels = output_channel;
    o.temb_channels = temb;
    o.num_layers = c.layers_per_block;
    o.resnet_eps = c.norm_eps;
    o.resnet_act_fn = act;
    o.resnet_groups = c.norm_num_groups;
    o.cross_attention_dim = c.cross_attention_dim;
    o.num_attention_heads = c.attention_head_dim[i];
    o.add_downsample = i != n - 1;
    o.downsample_padding = c.downsample_padding;
    auto block = make_down_block_3d(c.down_block_types[i], o, "UNet3DConditionModel");
    down_blocks_->push_back(block);
    down_.push_back(block);
  }

  Block3DOptions mo;
  mo.in_channels = boc.back();
  mo.temb_channels = temb;
  mo.resnet_eps = c.norm_eps;
  mo.resnet_act_fn = act;
  mo.output_scale_factor = c.mid_block_scale_factor;
  mo.cross_attention_dim = c.cross_attention_dim;
  mo.num_attention_heads = c.attention_head_dim.back();
  mo.resnet_groups = c.norm_num_groups;
  mid_block_ = register_module("mid_block", UNetMidBlock3DCrossAttn(mo));

  up_blocks_ = register_module("up_blocks", torch::nn::ModuleList());
  std::vector<int64_t> rev(boc.rbegin(), boc.rend());
  std::vector<int64_t> rev_heads(c.attention_head_dim.rbegin(), c.attention_head_dim.rend());
  output_channel = rev[0];
  for (int64_t i = 0; i < n; ++i) {
    Block3DOptions o;
    o.prev_output_channel = output_channel;
    output_channel = rev[i];
    o.out_channels = output_channel;
    o.in_channels = rev[std::min(i + 1, n - 1)];
    o.temb_channels = temb;
    o.num_layers = c.layers_per_block + 1;
    o.add_upsample = i != n - 1;
    o.resnet_eps = c.norm_eps;
    o.resnet_act_fn = act;
    o.resnet_groups = c.norm_num_groups;
    o.cross_attention_dim = c.cross_attention_dim;
    o.num_attention_heads = rev_heads[i];
    auto block = make_up_block_3d(c.up_block_types[i], o, "UNet3DConditionModel");
    up_blocks_->push_back(block);
    up_.push_back(block);
  }

  conv_norm_out_ = register_module(
      "conv_norm_out", GroupNorm(torch::nn::GroupNormOptions(c.norm_num_groups, boc[0]).eps(c.norm_eps)));
  conv_out_ = register_module("conv_out", torch::nn::Conv2d(torch::nn::Conv2dOptions(boc[0], c.out_channels, 3).padding(1)));
}

void UNet3DConditionModelImpl::set_channels_last(bool on) {
  set_conv_weights_channels_last(*this, on);
  channels_last_ = on;
}

int64_t UNet3DConditionModelImpl::fuse_qkv_projections(bool on) {
  int64_t fused = 0;
  for (const auto& m : modules())
    if (auto* a = m->as<AttentionImpl>()) fused += a->fuse_projections(on) ? 1 : 0;
  return fused;
}

int64_t UNet3DConditionModelImpl::set_frame_windows(const temporal::FrameWindows& windows) {
  temporal::validate_frame_windows(windows);
  int64_t n = 0;
  for (const auto& m : modules())
    if (auto* t = m->as<temporal::TransformerTemporalModelImpl>()) {
      t->set_frame_windows(windows);
      ++n;
    }
  frame_windows_ = windows;
  return n;
}

void UNet3DConditionModelImpl::set_freeu(const std::optional<FreeU>& freeu) {
  for (size_t i = 0; i < up_.size(); ++i) {
    if (!freeu || i > 1)
      up_[i]->freeu.reset();
    else
      up_[i]->freeu = i == 0 ? FreeUStage{freeu->b1, freeu->s1} : FreeUStage{freeu->b2, freeu->s2};
  }
  freeu_ = freeu;
}

c10::ScalarType UNet3DConditionModelImpl::dtype() const { return conv_in_->weight.scalar_type(); }
c10::Device UNet3DConditionModelImpl::device() const { return conv_in_->weight.device(); }

int64_t UNet3DConditionModelImpl::num_skip_connections() const {
  int64_t n = 1;  // transformer_in's output
  for (const auto& d : down_) n += d->num_skips();
  return n;
}

at::Tensor UNet3DConditionModelImpl::forward(const at::Tensor& sample, const at::Tensor& timestep,
                                             const at::Tensor& encoder_hidden_states) {
  return forward_impl(sample, timestep, encoder_hidden_states, nullptr, true);
}

at::Tensor UNet3DConditionModelImpl::forward(const at::Tensor& sample, const at::Tensor& timestep,
                                             const at::Tensor& encoder_hidden_states, FeatureCache& cache,
                                             bool refresh) {
  const int64_t skips = num_skip_connections();
  if (cache.branch < 0 || cache.branch >= skips)
    throw InputError(fmt::format("UNet3DConditionModel: feature cache branch {} is not a skip connection of this "
                                 "UNet; it has {} (use 0..{})",
                                 cache.branch, skips, skips - 1));
  return forward_impl(sample, timestep, encoder_hidden_states, &cache, refresh);
}

at::Tensor UNet3DConditionModelImpl::forward_impl(const at::Tensor& sample_in, const at::Tensor& timestep,
                                                  const at::Tensor& encoder_hidden_states_in, FeatureCache* cache,
                                                  bool refresh) {
  const auto& c = config_;
  if (sample_in.dim() != 5 || sample_in.size(1) != c.in_channels)
    throw InputError(fmt::format("UNet3DConditionModel: sample must be [B, {}, F, H, W], got {}", c.in_channels,
                                 shape_str(sample_in.sizes())));
  const int64_t B = sample_in.size(0), F = sample_in.size(2), H = sample_in.size(3), W = sample_in.size(4);
  if (encoder_hidden_states_in.dim() != 3 ||
      (encoder_hidden_states_in.size(0) != B && encoder_hidden_states_in.size(0) != B * F) ||
      encoder_hidden_states_in.size(2) != c.cross_attention_dim)
    throw InputError(fmt::format("UNet3DConditionModel: encoder_hidden_states must be [{}, L, {}] (one text per "
                                 "video) or [{}, L, {}] (one per frame), got {}",
                                 B, c.cross_attention_dim, B * F, c.cross_attention_dim,
                                 shape_str(encoder_hidden_states_in.sizes())));
  const int64_t nt = timestep.numel();
  if (timestep.dim() > 1 || (nt != 1 && nt != B))
    throw InputError(fmt::format("UNet3DConditionModel: timestep must be a scalar, [1] or [{}], got {}", B,
                                 shape_str(timestep.sizes())));

  const Tap tap(&tap_);
  const auto dtype = this->dtype();
  const auto device = this->device();
  at::Tensor sample = sample_in.to(device, dtype);
  at::Tensor ehs = encoder_hidden_states_in.to(device, dtype);

  // Upsampler outputs are forced to the skip connections' sizes when H or W is not a multiple
  // of the overall factor.
  const int64_t num_upsamplers = static_cast<int64_t>(up_.size()) - 1;
  const int64_t factor = int64_t(1) << num_upsamplers;
  const bool forward_upsample_size = H % factor != 0 || W % factor != 0;

  // 1. time
  at::Tensor t = timestep.reshape({-1}).to(device).expand({B});
  at::Tensor t_emb = timestep_embedding(t, c.block_out_channels[0], /*flip_sin_to_cos=*/true, /*shift=*/0.0);
  tap.record("time_proj", t_emb);
  at::Tensor emb = time_embedding_->forward(t_emb.to(dtype));
  tap.record("time_embedding", emb);
  emb = emb.repeat_interleave(F, 0);
  // ehs stays [B, S, D]: the cross-attentions take one context per video for its F frames
  // (Attention::forward), so the keys and values are projected once per video, not per frame.
  // With prompt travel it is [B*F, S, D], one context per frame.

  // 2. pre-process: [B, C, F, H, W] -> [B*F, C, H, W]
  at::Tensor h = sample.permute({0, 2, 1, 3, 4}).reshape({B * F, c.in_channels, H, W});
  if (channels_last_) h = h.contiguous(at::MemoryFormat::ChannelsLast);
  h = conv_in_->forward(h);
  tap.record("conv_in", h);
  h = transformer_in_->forward(h, F);
  tap.record("transformer_in", h);

  // With the feature cache, the up layer that takes skip connection `branch` is layer
  // cache_layer of up block cache_block (the up path takes the skips in reverse order).
  const bool shallow = cache != nullptr && !refresh;
  int64_t cache_block = -1, cache_layer = -1;
  if (cache != nullptr) {
    int64_t taken = num_skip_connections() - 1 - cache->branch;  // skips the up path takes before it
    for (size_t i = 0; i < up_.size() && cache_block < 0; ++i) {
      if (taken < up_[i]->num_resnets()) {
        cache_block = static_cast<int64_t>(i);
        cache_layer = taken;
      }
      taken -= up_[i]->num_resnets();
    }
    if (shallow && (!cache->feature.defined() || cache->feature.size(0) != B * F))
      throw Error(fmt::format("UNet3DConditionModel: the feature cache holds {} for a batch of {} frames; run a "
                              "refresh pass first",
                              cache->feature.defined() ? shape_str(cache->feature.sizes()) : "nothing", B * F));
  }

  // 3. down (a shallow pass stops at skip connection `branch`)
  std::vector<at::Tensor> res{h};
  for (size_t i = 0; i < down_.size(); ++i) {
    int64_t max_skips = -1;
    if (shallow) {
      max_skips = cache->branch + 1 - static_cast<int64_t>(res.size());
      if (max_skips <= 0) break;
    }
    h = down_[i]->forward(h, emb, ehs, F, res, tap.child("down_blocks", i), max_skips);
    if (!shallow) tap.child("down_blocks", i)(h);
  }

  // 4. mid
  if (!shallow) {
    h = mid_block_->forward(h, emb, ehs, F, tap.child("mid_block"));
    tap.record("mid_block", h);
  }

  // 5. up
  // Runs layers [begin, end) of up block i; its upsampler, with the last layer, is forced to the
  // size of the skip connection the next block takes first when H or W is not a multiple of the
  // factor.
  auto run_up = [&](size_t i, const at::Tensor& x, int64_t begin, int64_t end) {
    const int64_t layers = up_[i]->num_resnets();
    const int64_t used = (end < 0 ? layers : end) - begin;
    if (static_cast<int64_t>(res.size()) < used)
      throw Error("UNet3DConditionModel: fewer skip connections than the up blocks need (inconsistent blocks)");
    std::vector<int64_t> upsample_size;
    if (i + 1 != up_.size() && forward_upsample_size && end < 0) {
      const at::Tensor& next = res[res.size() - used - 1];
      upsample_size = {next.size(2), next.size(3)};
    }
    return up_[i]->forward(x, res, emb, ehs, F, upsample_size, tap.child("up_blocks", i), begin, end);
  };
  for (size_t i = shallow ? cache_block : 0; i < up_.size(); ++i) {
    int64_t begin = 0;
    if (static_cast<int64_t>(i) == cache_block) {
      if (shallow) {
        h = cache->feature;
        begin = cache_layer;
      } else {
        if (cache_layer > 0) h = run_up(i, h, 0, cache_layer);
        cache->feature = h;
        begin = cache_layer;
      }
    }
    h = run_up(i, h, begin, -1);
    tap.child("up_blocks", i)(h);
  }

  // 6. post-process
  h = conv_out_->forward(group_norm_silu(conv_norm_out_, h, tap, "conv_norm_out"));
  tap.record("conv_out", h);
  // [B*F, C, H, W] -> [B, C, F, H, W]
  if (channels_last_) h = h.contiguous();
  return h.reshape({B, F, c.out_channels, H, W}).permute({0, 2, 1, 3, 4});
}

std::vector<std::string> skip_connection_names(const UNet3DConditionConfig& c) {
  return skip_connection_names(c.block_out_channels, c.down_block_types, c.layers_per_block);
}

// ---- loading and saving ---------------------------------------------------------------------

UNet3DConditionModel load_unet3d(const std::string& dir) {
  auto config = UNet3DConditionConfig::load(dir + "/config.json");
  UNet3DConditionModel model(config);
  load_weights(*model, find_weights_file(dir, kDiffusersWeightsName, kDiffusersFp16WeightsName));
  model->eval();
  return model;
}

void save_unet3d(const UNet3DConditionModel& model, const std::string& dir, c10::optional<c10::ScalarType> dtype) {
  save_pretrained(*model, model->config().to_json(), dir, kDiffusersWeightsName, dtype);
}

}  // namespace vdm::models
