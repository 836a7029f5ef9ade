// LoRA files (models/lora.h): the three key formats read into the same update, the update as PEFT
// defines it (a down projection or convolution, then a 1x1 up), alpha from each place it is kept,
// and every mismatch reported before any weight changes.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "io/tensor_io.h"
#include "models/lora.h"
#include "models/unet_3d_condition.h"
#include "tests/support/test_support.h"
#include "text/clip_text_model.h"

namespace fs = std::filesystem;
using vdm::models::LoraComponents;
using vdm::models::LoraSpec;

namespace {

const std::string kToQ = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
const std::string kToOut = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0";
const std::string kConv = "down_blocks.0.resnets.0.conv1";        // Conv2d 3x3
const std::string kTempConv = "down_blocks.0.temp_convs.0.conv1.2";  // Conv3d 3x1x1
const std::string kTextQ = "text_model.encoder.layers.0.self_attn.q_proj";

struct Models {
  vdm::models::UNet3DConditionModel unet{vdm::test::tiny_unet3d_config(8, 4, 12, 4)};
  vdm::text::CLIPTextModel text{vdm::test::tiny_clip_text_config()};
  LoraComponents components() { return {{"unet", unet.get()}, {"text_encoder", text.get()}}; }
  at::Tensor weight(const std::string& component, const std::string& module) {
    torch::nn::Module& m = component == "unet" ? static_cast<torch::nn::Module&>(*unet) : *text;
    return m.named_parameters().find(module + ".weight")->detach().clone();
  }
};

// A rank-r pair for a weight of shape [out, in, k...]: down [r, in, k...], up [out, r, 1...].
std::pair<at::Tensor, at::Tensor> random_pair(const at::Tensor& weight, int64_t rank) {
  std::vector<int64_t> down{rank, weight.size(1)}, up{weight.size(0), rank};
  for (int64_t d = 2; d < weight.dim(); ++d) {
    down.push_back(weight.size(d));
    up.push_back(1);
  }
  return {at::randn(down) * 0.3, at::randn(up) * 0.3};
}

struct Adapter {
  std::string component, module;
  at::Tensor down, up;
};

std::vector<Adapter> sample_adapters(Models& m) {
  at::manual_seed(5);
  std::vector<Adapter> out;
  for (const auto& [component, module, rank] :
       std::vector<std::tuple<std::string, std::string, int64_t>>{
           {"unet", kToQ, 2}, {"unet", kToOut, 2}, {"unet", kConv, 3}, {"unet", kTempConv, 2}, {"text_encoder", kTextQ, 2}}) {
    auto [down, up] = random_pair(m.weight(component, module), rank);
    out.push_back({component, module, down, up});
  }
  return out;
}

std::string kohya_name(const Adapter& a) {
  std::string flat = a.module;
  std::replace(flat.begin(), flat.end(), '.', '_');
  return (a.component == "unet" ? "lora_unet_" : "lora_te_") + flat;
}

std::string write(const std::string& path, const vdm::io::TensorMap& tensors,
                  const std::map<std::string, std::string>& metadata = {}) {
  vdm::io::save_safetensors(path, tensors, metadata);
  return path;
}

}  // namespace

TEST(Lora, SpecTakesAnOptionalStrength) {
  LoraSpec a = vdm::models::parse_lora_spec("style.safetensors:0.7");
  EXPECT_EQ(a.path, "style.safetensors");
  EXPECT_DOUBLE_EQ(a.strength, 0.7);
  LoraSpec b = vdm::models::parse_lora_spec("/data/run:3/style.safetensors");
  EXPECT_EQ(b.path, "/data/run:3/style.safetensors");
  EXPECT_DOUBLE_EQ(b.strength, 1.0);
  EXPECT_DOUBLE_EQ(vdm::models::parse_lora_spec("x:-1").strength, -1.0);
  EXPECT_THROW(vdm::models::parse_lora_spec(":0.5"), vdm::InputError);
  EXPECT_THROW(vdm::models::parse_lora_spec("x:inf"), vdm::InputError);
}

// The same adapters written as PEFT (alpha in the file's metadata), kohya (alpha tensors) and
// older diffusers keys (alpha = rank) give W + strength * alpha / rank * up @ down, computed here
// in float64 apart from the code under test.
TEST(Lora, EveryFormatMergesTheSameUpdate) {
  Models base;
  const std::vector<Adapter> adapters = sample_adapters(base);
  const std::string dir = vdm::test::make_temp_dir("lora_formats");
  const double alpha = 4.0;

  vdm::io::TensorMap peft, kohya, legacy;
  for (const Adapter& a : adapters) {
    const std::string p = a.component + "." + a.module;
    peft[p + ".lora_A.weight"] = a.down;
    peft[p + ".lora_B.weight"] = a.up;
    kohya[kohya_name(a) + ".lora_down.weight"] = a.down;
    kohya[kohya_name(a) + ".lora_up.weight"] = a.up;
    kohya[kohya_name(a) + ".alpha"] = at::scalar_tensor(alpha);
    // The attention processors' keys where they exist, else LoRACompatible layers' ".lora.down".
    std::string legacy_key = p;
    if (a.module == kToQ) legacy_key = a.component + "." + kToQ.substr(0, kToQ.size() - 5) + ".processor.to_q_lora";
    if (a.module == kToOut) legacy_key = a.component + "." + kToQ.substr(0, kToQ.size() - 5) + ".processor.to_out_lora";
    else if (a.module != kToQ) legacy_key += ".lora";
    legacy[legacy_key + ".down.weight"] = a.down * std::sqrt(alpha / a.down.size(0));  // alpha folded in
    legacy[legacy_key + ".up.weight"] = a.up * std::sqrt(alpha / a.down.size(0));
  }
  const std::string metadata = R"({"unet.lora_alpha": 4, "unet.r": 2, "text_encoder.lora_alpha": 4, "text_encoder.r": 2})";
  const std::vector<std::pair<std::string, std::string>> files = {
      {"peft", write(dir + "/peft.safetensors", peft, {{"format", "pt"}, {"lora_adapter_metadata", metadata}})},
      {"kohya", write(dir + "/kohya.safetensors", kohya)},
      {"diffusers-legacy", write(dir + "/legacy.safetensors", legacy)}};
  for (const auto& [format, path] : files) {
    Models m;
    {
      torch::NoGradGuard g;  // same starting weights
      for (const auto& p : base.unet->named_parameters()) m.unet->named_parameters()[p.key()].copy_(p.value());
      for (const auto& p : base.text->named_parameters()) m.text->named_parameters()[p.key()].copy_(p.value());
    }
    const double strength = 0.6;
    auto files_read = vdm::models::apply_loras({{path, strength}}, m.components());
    ASSERT_EQ(files_read.size(), 1u);
    EXPECT_EQ(files_read[0].format, format);
    EXPECT_EQ(files_read[0].layers.size(), adapters.size());
    for (const Adapter& a : adapters) {
      const at::Tensor w0 = base.weight(a.component, a.module).to(at::kDouble);
      const at::Tensor delta =
          a.up.flatten(1).to(at::kDouble).mm(a.down.flatten(1).to(at::kDouble)).view(w0.sizes());
      const at::Tensor expected = w0 + strength * alpha / a.down.size(0) * delta;
      EXPECT_LT(vdm::test::max_abs_diff(m.weight(a.component, a.module).to(at::kDouble), expected), 2e-6)
          << format << " " << a.module;
    }
    // Untouched modules stay bit-identical.
    EXPECT_TRUE(m.weight("unet", "conv_in").equal(base.weight("unet", "conv_in"))) << format;
  }
}

// PEFT's convolution LoRA is a down convolution with the layer's kernel and padding, then a 1x1 up
// convolution: the merged layer gives the base output plus that branch.
TEST(Lora, MergedConvolutionEqualsTheAdapterBranch) {
  Models m;
  const at::Tensor w = m.weight("unet", kConv);
  at::manual_seed(2);
  auto [down, up] = random_pair(w, 3);
  const std::string path = write(vdm::test::make_temp_dir("lora_conv") + "/a.safetensors",
                                 {{"unet." + kConv + ".lora_A.weight", down}, {"unet." + kConv + ".lora_B.weight", up}});
  vdm::models::apply_loras({{path, 1.0}}, m.components());
  const at::Tensor x = at::randn({2, w.size(1), 6, 5});
  const at::Tensor merged = at::conv2d(x, m.weight("unet", kConv), {}, 1, 1);
  const at::Tensor branch = at::conv2d(at::conv2d(x, down, {}, 1, 1), up);
  EXPECT_LT(vdm::test::max_abs_diff(merged, at::conv2d(x, w, {}, 1, 1) + branch), 1e-4);
}

// alpha from PEFT's adapter_config.json beside the file, alpha_pattern over it, and rsLoRA's
// alpha / sqrt(rank); without any config alpha is the rank (scale 1).
TEST(Lora, AlphaFromAdapterConfig) {
  Models m;
  at::manual_seed(4);
  auto [dq, uq] = random_pair(m.weight("unet", kToQ), 4);
  auto [dc, uc] = random_pair(m.weight("unet", kConv), 4);
  const vdm::io::TensorMap t = {{"base_model.model." + kToQ + ".lora_A.weight", dq},
                                {"base_model.model." + kToQ + ".lora_B.weight", uq},
                                {"base_model.model." + kConv + ".lora_A.weight", dc},
                                {"base_model.model." + kConv + ".lora_B.weight", uc}};
  const std::string bare = vdm::test::make_temp_dir("lora_bare");
  write(bare + "/adapter_model.safetensors", t);
  auto plain = vdm::models::read_lora(bare, m.components());  // a folder: adapter_model.safetensors inside
  for (const auto& l : plain.layers) EXPECT_DOUBLE_EQ(l.scale, 1.0) << l.module;

  const std::string dir = vdm::test::make_temp_dir("lora_config");
  write(dir + "/adapter_model.safetensors", t);
  std::ofstream(dir + "/adapter_config.json")
      << R"({"r": 4, "lora_alpha": 8, "alpha_pattern": {"resnets.0.conv1": 2}, "use_rslora": true})";
  auto lora = vdm::models::read_lora(dir + "/adapter_model.safetensors", m.components());
  ASSERT_EQ(lora.layers.size(), 2u);
  for (const auto& l : lora.layers) EXPECT_DOUBLE_EQ(l.scale, (l.module == kConv ? 2.0 : 8.0) / 2.0) << l.module;

  std::ofstream(dir + "/adapter_config.json") << R"({"r": 4, "lora_alpha": 8, "use_dora": true})";
  EXPECT_THROW(vdm::models::read_lora(dir + "/adapter_model.safetensors", m.components()), vdm::WeightsError);
}

// A file that does not fit lists every problem in one error, and apply_loras merges nothing when
// any of its files is bad, even the good ones before it.
TEST(Lora, MismatchesAreReportedTogetherAndNothingIsMerged) {
  Models m;
  at::manual_seed(6);
  auto [down, up] = random_pair(m.weight("unet", kToQ), 2);
  const std::string dir = vdm::test::make_temp_dir("lora_bad");
  const std::string good = write(dir + "/good.safetensors",
                                 {{"unet." + kToQ + ".lora_A.weight", down}, {"unet." + kToQ + ".lora_B.weight", up}});
  const std::string bad = write(dir + "/bad.safetensors",
                                {{"unet." + kToOut + ".lora_A.weight", at::randn({2, 5})},  // in 5, not 8
                                 {"unet." + kToOut + ".lora_B.weight", at::randn({8, 2})},
                                 {"unet.down_blocks.0.nothing.lora_A.weight", at::randn({2, 8})},
                                 {"unet." + kConv + ".lora_A.weight", at::randn({2, 8, 3, 3})},  // no B
                                 {"lora_unet_no_such_layer.lora_down.weight", at::randn({2, 8})},
                                 {"unet." + kToQ + ".lora_magnitude_vector", at::randn({8})},
                                 {"vae.decoder.conv_in.lora_A.weight", at::randn({2, 8})},
                                 {"unet.conv_in.weight", at::randn({2, 8})}});
  const at::Tensor before = m.weight("unet", kToQ);
  std::string message;
  try {
    vdm::models::apply_loras({{good, 1.0}, {bad, 1.0}}, m.components());
  } catch (const vdm::WeightsError& e) {
    message = e.what();
  }
  ASSERT_FALSE(message.empty());
  for (const char* expected : {"bad.safetensors", "(7 problems)", "needs down [r, 8] and up [8, r], got down [2, 5]",
                               "'down_blocks.0.nothing', which this model's unet does not have",
                               "has a down (A) but no up (B)", "names no unet module",
                               "DoRA", "a component this model does not have ('vae')",
                               "'unet.conv_in.weight' is not a LoRA key", "trained for this base model"})
    EXPECT_NE(message.find(expected), std::string::npos) << expected << "\n" << message;
  EXPECT_EQ(message.find('\n'), std::string::npos);
  EXPECT_TRUE(m.weight("unet", kToQ).equal(before)) << "the good file was merged before the bad one failed";

  Adapter q{"unet", kToQ, down, up};
  const std::string alpha = write(dir + "/alpha.safetensors", {{kohya_name(q) + ".lora_down.weight", down},
                                                               {kohya_name(q) + ".lora_up.weight", up},
                                                               {kohya_name(q) + ".alpha", at::ones({2})}});
  try {
    vdm::models::read_lora(alpha, m.components());
    ADD_FAILURE() << "an alpha of two numbers was accepted";
  } catch (const vdm::WeightsError& e) {
    EXPECT_NE(std::string(e.what()).find("alpha must be one number, got a tensor of shape [2]"), std::string::npos)
        << e.what();
  }

  EXPECT_THROW(vdm::models::read_lora(dir + "/missing.safetensors", m.components()), vdm::InputError);
  EXPECT_THROW(vdm::models::read_lora(dir, m.components()), vdm::InputError);  // a folder without one
}

// Strength scales the update linearly: +s then -s restores the weights.
TEST(Lora, OppositeStrengthsCancel) {
  Models m;
  at::manual_seed(8);
  auto [down, up] = random_pair(m.weight("unet", kTempConv), 2);
  const std::string path = write(vdm::test::make_temp_dir("lora_cancel") + "/a.safetensors",
                                 {{"unet." + kTempConv + ".lora_A.weight", down}, {"unet." + kTempConv + ".lora_B.weight", up}});
  const at::Tensor before = m.weight("unet", kTempConv);
  auto lora = vdm::models::read_lora(path, m.components());
  vdm::models::merge_lora(lora, 0.8, m.components());
  EXPECT_GT(vdm::test::max_abs_diff(m.weight("unet", kTempConv), before), 0.01);
  vdm::models::merge_lora(lora, -0.8, m.components());
  EXPECT_LT(vdm::test::max_abs_diff(m.weight("unet", kTempConv), before), 1e-6);
  EXPECT_EQ(lora.summary(), "peft, 1 layer (unet 1), rank 2");
}
