// CLIPTextModel against transformers 4.45 (golden/text_encoder.safetensors): every model listed
// in manifest.json cases.text_encoder.models, every hidden state, last_hidden_state and
// pooler_output, with and without the padding mask.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <string>

#include "io/tensor_io.h"
#include "tests/support/test_support.h"
#include "text/clip_text_model.h"

namespace {

constexpr double kTolerance = 1e-4;

const at::Tensor& golden_tensor(const vdm::io::TensorMap& golden, const std::string& key) {
  auto it = golden.find(key);
  if (it == golden.end()) throw std::runtime_error("golden/text_encoder.safetensors has no key " + key);
  return it->second;
}

TEST(TextEncoderParity, AllModelsAllOutputs) {
  VDM_REQUIRE_FIXTURES(root);
  nlohmann::json manifest;
  {
    std::ifstream in(root + "/golden/manifest.json");
    ASSERT_TRUE(in.good());
    manifest = nlohmann::json::parse(in);
  }
  const auto& models = manifest.at("cases").at("text_encoder").at("models");
  ASSERT_FALSE(models.empty());
  const vdm::io::TensorMap golden = vdm::io::load_safetensors(root + "/golden/text_encoder.safetensors");
  const at::Tensor& input_ids = golden_tensor(golden, "input_ids");
  const at::Tensor& attention_mask = golden_tensor(golden, "attention_mask");

  at::NoGradGuard no_grad;
  for (const auto& [name, rel_dir] : models.items()) {
    SCOPED_TRACE("model " + name);
    vdm::text::CLIPTextModel model = vdm::text::load_clip_text_model(root + "/" + rel_dir.get<std::string>());
    const auto& cfg = model->config();

    auto out = model->forward(input_ids);
    ASSERT_EQ(static_cast<int64_t>(out.hidden_states.size()), cfg.num_hidden_layers + 1);
    for (size_t i = 0; i < out.hidden_states.size(); ++i) {
      const double diff = vdm::test::max_abs_diff(out.hidden_states[i],
                                                  golden_tensor(golden, name + ".hidden_states." + std::to_string(i)));
      EXPECT_LT(diff, kTolerance) << "hidden_states." << i;
      std::printf("[ %-9s ] hidden_states.%zu max diff %.3g\n", name.c_str(), i, diff);
    }
    const double last = vdm::test::max_abs_diff(out.last_hidden_state, golden_tensor(golden, name + ".last_hidden_state"));
    const double pooled = vdm::test::max_abs_diff(out.pooler_output, golden_tensor(golden, name + ".pooler_output"));
    EXPECT_LT(last, kTolerance);
    EXPECT_LT(pooled, kTolerance);

    auto masked = model->forward(input_ids, attention_mask);
    const double mlast =
        vdm::test::max_abs_diff(masked.last_hidden_state, golden_tensor(golden, name + ".masked.last_hidden_state"));
    const double mpooled =
        vdm::test::max_abs_diff(masked.pooler_output, golden_tensor(golden, name + ".masked.pooler_output"));
    EXPECT_LT(mlast, kTolerance);
    EXPECT_LT(mpooled, kTolerance);
    // The padding mask must matter somewhere, or the masked comparison proves nothing.
    EXPECT_GT(vdm::test::max_abs_diff(masked.last_hidden_state, out.last_hidden_state), 1e-3);
    std::printf("[ %-9s ] last_hidden_state %.3g pooler_output %.3g masked: %.3g %.3g\n", name.c_str(), last, pooled,
                mlast, mpooled);
  }
}

}  // namespace
