#include "models/autoencoder_kl.h"

#include <fmt/format.h>

#include <regex>

#include "core/error.h"
#include "models/config_checks.h"
#include "models/cuda_ops.h"
#include "models/shape.h"
#include "models/pretrained_io.h"
#include "models/unet_3d_condition.h"

namespace vdm::models {

// ---- config ---------------------------------------------------------------------------------

AutoencoderKLConfig AutoencoderKLConfig::from_json(const io::JsonConfig& j) {
  AutoencoderKLConfig c;
  c.in_channels = j.get_int("in_channels", c.in_channels);
  c.out_channels = j.get_int("out_channels", c.out_channels);
  c.down_block_types = j.get_string_list("down_block_types", c.down_block_types);
  c.up_block_types = j.get_string_list("up_block_types", c.up_block_types);
  c.block_out_channels = j.get_int_list("block_out_channels", c.block_out_channels);
  c.layers_per_block = j.get_int("layers_per_block", c.layers_per_block);
  c.act_fn = j.get_string("act_fn", c.act_fn);
  c.latent_channels = j.get_int("latent_channels", c.latent_channels);
  c.norm_num_groups = j.get_int("norm_num_groups", c.norm_num_groups);
  c.sample_size = j.get_int("sample_size", c.sample_size);
  c.scaling_factor = j.get_double("scaling_factor", c.scaling_factor);
  if (j.has("shift_factor")) c.shift_factor = j.get_double("shift_factor");
  c.force_upcast = j.get_bool("force_upcast", c.force_upcast);
  c.use_quant_conv = j.get_bool("use_quant_conv", c.use_quant_conv);
  c.use_post_quant_conv = j.get_bool("use_post_quant_conv", c.use_post_quant_conv);
  c.mid_block_add_attention = j.get_bool("mid_block_add_attention", c.mid_block_add_attention);
  if (j.has("latents_mean") || j.has("latents_std"))
    throw ConfigError(fmt::format("{}: 'latents_mean'/'latents_std' are not supported; they must be null", j.source()));
  c.validate(j.source());
  return c;
}

AutoencoderKLConfig AutoencoderKLConfig::load(const std::string& path) { return from_json(io::JsonConfig::load(path)); }

void AutoencoderKLConfig::validate(const std::string& source) const {
  auto fail = [&](const std::string& what) { throw ConfigError(fmt::format("{}: {}", source, what)); };
  check_block_layout(source, block_out_channels, down_block_types, up_block_types, norm_num_groups);
  for (const auto& t : down_block_types)
    if (t != "DownEncoderBlock2D") fail(fmt::format("unsupported down block type '{}' (expected DownEncoderBlock2D)", t));
  for (const auto& t : up_block_types)
    if (t != "UpDecoderBlock2D") fail(fmt::format("unsupported up block type '{}' (expected UpDecoderBlock2D)", t));
  if (in_channels <= 0 || out_channels <= 0 || latent_channels <= 0 || layers_per_block <= 0)
    fail("'in_channels', 'out_channels', 'latent_channels' and 'layers_per_block' must be positive");
  parse_activation(act_fn, source);
}

nlohmann::json AutoencoderKLConfig::to_json() const {
  nlohmann::json j;
  j["_class_name"] = "AutoencoderKL";
  j["_diffusers_version"] = kDiffusersVersion;
  j["act_fn"] = act_fn;
  j["block_out_channels"] = block_out_channels;
  j["down_block_types"] = down_block_types;
  j["force_upcast"] = force_upcast;
  j["in_channels"] = in_channels;
  j["latent_channels"] = latent_channels;
  j["latents_mean"] = nullptr;
  j["latents_std"] = nullptr;
  j["layers_per_block"] = layers_per_block;
  j["mid_block_add_attention"] = mid_block_add_attention;
  j["norm_num_groups"] = norm_num_groups;
  j["out_channels"] = out_channels;
  j["sample_size"] = sample_size;
  j["scaling_factor"] = scaling_factor;
  j["shift_factor"] = shift_factor ? nlohmann::json(*shift_factor) : nlohmann::json(nullptr);
  j["up_block_types"] = up_block_types;
  j["use_post_quant_conv"] = use_post_quant_conv;
  j["use_quant_conv"] = use_quant_conv;
  return j;
}

at::Tensor DiagonalGaussian::sample(c10::optional<at::Generator> generator) const {
  // Drawn in float32 on the CPU, so a seed gives the same noise on every device and dtype.
  at::Tensor eps = at::randn(mean.sizes(), generator, at::TensorOptions().dtype(at::kFloat));
  return mean + std() * eps.to(mean.device(), mean.scalar_type());
}

// ---- encoder / decoder ----------------------------------------------------------------------

namespace {
constexpr double kVaeEps = 1e-6;

torch::nn::Conv2d conv3x3(int64_t in, int64_t out) {
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).stride(1).padding(1));
}

// The encoder's and the decoder's mid block: resnet, attention over all pixels (one head as wide
// as the channels), resnet.
UNetMidBlock2D make_mid_block(const AutoencoderKLConfig& c) {
  Block2DOptions m;
  m.in_channels = c.block_out_channels.back();
  m.resnet_eps = kVaeEps;
  m.resnet_act_fn = parse_activation(c.act_fn);
  m.resnet_groups = c.norm_num_groups;
  m.attention_head_dim = c.block_out_channels.back();
  m.add_attention = c.mid_block_add_attention;
  return UNetMidBlock2D(m);
}

}  // namespace

VaeEncoderImpl::VaeEncoderImpl(const AutoencoderKLConfig& c) {
  const auto& boc = c.block_out_channels;
  const Activation act = parse_activation(c.act_fn);
  conv_in_ = register_module("conv_in", conv3x3(c.in_channels, boc[0]));
  down_blocks_ = register_module("down_blocks", torch::nn::ModuleList());
  int64_t output_channel = boc[0];
  for (size_t i = 0; i < boc.size(); ++i) {
    Block2DOptions o;
    o.in_channels = output_channel;
    output_channel = boc[i];
    o.out_channels = output_channel;
    o.num_layers = c.layers_per_block;
    o.resnet_eps = kVaeEps;
    o.resnet_act_fn = act;
    o.resnet_groups = c.norm_num_groups;
    o.add_downsample = i + 1 != boc.size();
    o.downsample_padding = 0;
    down_blocks_->push_back(DownEncoderBlock2D(o));
  }
  mid_block_ = register_module("mid_block", make_mid_block(c));
  conv_norm_out_ = register_module(
      "conv_norm_out", GroupNorm(torch::nn::GroupNormOptions(c.norm_num_groups, boc.back()).eps(kVaeEps)));
  conv_out_ = register_module("conv_out", conv3x3(boc.back(), 2 * c.latent_channels));
}

at::Tensor VaeEncoderImpl::forward(const at::Tensor& x, const Tap& tap) {
  at::Tensor h = conv_in_->forward(x);
  tap.record("conv_in", h);
  for (size_t i = 0; i < down_blocks_->size(); ++i) {
    h = down_blocks_[i]->as<DownEncoderBlock2DImpl>()->forward(h, tap.child("down_blocks", i));
    tap.child("down_blocks", i)(h);
  }
  h = mid_block_->forward(h, tap.child("mid_block"));
  tap.record("mid_block", h);
  h = conv_out_->forward(group_norm_silu(conv_norm_out_, h, tap, "conv_norm_out"));
  tap.record("conv_out", h);
  return h;
}

VaeDecoderImpl::VaeDecoderImpl(const AutoencoderKLConfig& c) {
  const auto& boc = c.block_out_channels;
  const Activation act = parse_activation(c.act_fn);
  conv_in_ = register_module("conv_in", conv3x3(c.latent_channels, boc.back()));
  mid_block_ = register_module("mid_block", make_mid_block(c));
  up_blocks_ = register_module("up_blocks", torch::nn::ModuleList());
  std::vector<int64_t> rev(boc.rbegin(), boc.rend());
  int64_t output_channel = rev[0];
  for (size_t i = 0; i < rev.size(); ++i) {
    Block2DOptions o;
    o.in_channels = output_channel;
    output_channel = rev[i];
    o.out_channels = output_channel;
    o.num_layers = c.layers_per_block + 1;
    o.resnet_eps = kVaeEps;
    o.resnet_act_fn = act;
    o.resnet_groups = c.norm_num_groups;
    o.add_upsample = i + 1 != rev.size();
    up_blocks_->push_back(UpDecoderBlock2D(o));
  }
  conv_norm_out_ = register_module(
      "conv_norm_out", GroupNorm(torch::nn::GroupNormOptions(c.norm_num_groups, boc[0]).eps(kVaeEps)));
  conv_out_ = register_module("conv_out", conv3x3(boc[0], c.out_channels));
}

at::Tensor VaeDecoderImpl::forward(const at::Tensor& z, const Tap& tap) {
  at::Tensor h = conv_in_->forward(z);
  tap.record("conv_in", h);
  h = mid_block_->forward(h, tap.child("mid_block"));
  tap.record("mid_block", h);
  for (size_t i = 0; i < up_blocks_->size(); ++i) {
    h = up_blocks_[i]->as<UpDecoderBlock2DImpl>()->forward(h, tap.child("up_blocks", i));
    tap.child("up_blocks", i)(h);
  }
  h = conv_out_->forward(group_norm_silu(conv_norm_out_, h, tap, "conv_norm_out"));
  tap.record("conv_out", h);
  return h;
}

// ---- AutoencoderKL --------------------------------------------------------------------------

AutoencoderKLImpl::AutoencoderKLImpl(const AutoencoderKLConfig& config) : config_(config) {
  config_.validate();
  encoder_ = register_module("encoder", VaeEncoder(config_));
  decoder_ = register_module("decoder", VaeDecoder(config_));
  const int64_t l = config_.latent_channels;
  if (config_.use_quant_conv)
    quant_conv_ = register_module("quant_conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(2 * l, 2 * l, 1)));
  if (config_.use_post_quant_conv)
    post_quant_conv_ = register_module("post_quant_conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(l, l, 1)));
}

c10::ScalarType AutoencoderKLImpl::dtype() const { return parameters().front().scalar_type(); }
c10::Device AutoencoderKLImpl::device() const { return parameters().front().device(); }

DiagonalGaussian AutoencoderKLImpl::encode(const at::Tensor& x) {
  if (x.dim() != 4 || x.size(1) != config_.in_channels)
    throw InputError(fmt::format("AutoencoderKL.encode: expected images [N, {}, H, W], got {}", config_.in_channels,
                                 shape_str(x.sizes())));
  const Tap tap(&tap_);
  at::Tensor h = encoder_->forward(in_layout(x.to(device(), dtype())), tap.child("encoder"));
  if (quant_conv_) {
    h = quant_conv_->forward(h);
    tap.record("quant_conv", h);
  }
  auto parts = h.contiguous().chunk(2, 1);
  DiagonalGaussian g;
  g.mean = parts[0];
  g.logvar = at::clamp(parts[1], -30.0, 20.0);
  return g;
}

at::Tensor AutoencoderKLImpl::decode(const at::Tensor& z_in) {
  if (z_in.dim() != 4 || z_in.size(1) != config_.latent_channels)
    throw InputError(fmt::format("AutoencoderKL.decode: expected latents [N, {}, h, w], got {}", config_.latent_channels,
                                 shape_str(z_in.sizes())));
  const Tap tap(&tap_);
  at::Tensor z = in_layout(z_in.to(device(), dtype()));
  if (post_quant_conv_) {
    z = post_quant_conv_->forward(z);
    tap.record("post_quant_conv", z);
  }
  return decoder_->forward(z, tap.child("decoder")).contiguous();
}

void AutoencoderKLImpl::set_channels_last(bool on) {
  set_conv_weights_channels_last(*this, on);
  channels_last_ = on;
}

at::Tensor AutoencoderKLImpl::in_layout(const at::Tensor& x) const {
  return channels_last_ ? x.contiguous(at::MemoryFormat::ChannelsLast) : x;
}

// ---- loading and saving ---------------------------------------------------------------------

std::string rename_legacy_vae_attention_key(const std::string& key) {
  static const std::regex re(R"(^(.*\.attentions\.\d+\.)(query|key|value|proj_attn)\.(weight|bias)$)");
  std::smatch m;
  if (!std::regex_match(key, m, re)) return key;
  const std::string& name = m[2];
  const char* renamed = name == "query" ? "to_q" : name == "key" ? "to_k" : name == "value" ? "to_v" : "to_out.0";
  return m[1].str() + renamed + "." + m[3].str();
}

AutoencoderKL load_autoencoder_kl(const std::string& dir) {
  auto config = AutoencoderKLConfig::load(dir + "/config.json");
  AutoencoderKL model(config);
  io::StateDictOptions opts;
  opts.rename = rename_legacy_vae_attention_key;
  load_weights(*model, find_weights_file(dir, kDiffusersWeightsName, kDiffusersFp16WeightsName), opts);
  model->eval();
  return model;
}

void save_autoencoder_kl(const AutoencoderKL& model, const std::string& dir, c10::optional<c10::ScalarType> dtype) {
  save_pretrained(*model, model->config().to_json(), dir, kDiffusersWeightsName, dtype);
}

}  // namespace vdm::models
