// DeepCache (--deep-cache): the UNet's refresh and shallow passes (models::FeatureCache), and their use
// in the denoising loop.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/module.h>

#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "models/unet_3d_condition.h"
#include "pipelines/video_pipeline.h"
#include "tests/support/test_support.h"

using namespace vdm;
using models::FeatureCache;
using models::UNet3DConditionModel;

namespace {

// Three levels of two layers each, so that a branch can fall inside an up block, and an odd latent
// size so that the upsamplers are forced to the skip connections' sizes.
models::UNet3DConditionConfig three_level_config() {
  models::UNet3DConditionConfig c = test::tiny_unet3d_config(8, 4, 12, 4);
  c.down_block_types = {"CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"};
  c.up_block_types = {"UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"};
  c.block_out_channels = {8, 16, 16};
  c.attention_head_dim = {4, 4, 4};
  c.layers_per_block = 2;
  return c;
}

struct Inputs {
  at::Tensor x, t, text;
};

Inputs inputs(uint64_t seed) {
  at::manual_seed(seed);
  return {at::randn({2, 4, 3, 7, 9}), at::tensor(int64_t(400)), at::randn({2, 5, 12})};
}

}  // namespace

TEST(DeepCache, SkipConnectionsAreCountedAndNamed) {
  const auto c = three_level_config();
  UNet3DConditionModel unet(c);
  // transformer_in, then 2 layers + a downsampler, 2 layers + a downsampler, 2 layers.
  EXPECT_EQ(unet->num_skip_connections(), 9);
  const auto names = models::skip_connection_names(c);
  ASSERT_EQ(names.size(), 9u);
  EXPECT_EQ(names[0], "transformer_in (8 ch, 1/1)");
  EXPECT_EQ(names[2], "down_blocks.0.temp_attentions.1 (8 ch, 1/1)");
  EXPECT_EQ(names[3], "down_blocks.0.downsamplers.0 (8 ch, 1/2)");
  EXPECT_EQ(names[8], "down_blocks.2.temp_convs.1 (16 ch, 1/4)");
  // ModelScope 1.7B: 4 levels of 2 layers and 3 downsamplers.
  EXPECT_EQ(models::skip_connection_names(models::UNet3DConditionConfig{}).size(), 12u);
}

TEST(DeepCache, RefreshIsTheFullNetworkAndShallowPassesReuseItsDeepFeatures) {
  UNet3DConditionModel unet(three_level_config());
  unet->eval();
  at::NoGradGuard no_grad;
  const Inputs a = inputs(3), b = inputs(4);
  const at::Tensor full_a = unet->forward(a.x, a.t, a.text);
  const at::Tensor full_b = unet->forward(b.x, a.t, a.text);
  for (int64_t branch = 0; branch < unet->num_skip_connections(); ++branch) {
    SCOPED_TRACE(branch);
    FeatureCache cache{branch, {}};
    EXPECT_TRUE(unet->forward(a.x, a.t, a.text, cache, /*refresh=*/true).equal(full_a));
    ASSERT_TRUE(cache.feature.defined());
    // The same input again: the cached deep features are exactly what the full network computes.
    EXPECT_LT(test::max_abs_diff(unet->forward(a.x, a.t, a.text, cache, false), full_a), 1e-5);
    // Another input: the shallow layers see it (the output moves) but the deep ones are a's.
    const at::Tensor shallow_b = unet->forward(b.x, a.t, a.text, cache, false);
    EXPECT_GT(test::max_abs_diff(shallow_b, full_a), 1e-4);
    EXPECT_GT(test::max_abs_diff(shallow_b, full_b), 1e-6);
  }
}

TEST(DeepCache, ShallowPassRunsNothingBelowTheBranch) {
  UNet3DConditionModel unet(three_level_config());
  unet->eval();
  at::NoGradGuard no_grad;
  const Inputs a = inputs(5), b = inputs(6);
  FeatureCache cache{0, {}};
  unet->forward(a.x, a.t, a.text, cache, true);
  const at::Tensor shallow = unet->forward(b.x, a.t, a.text, cache, false);
  // Branch 0 needs conv_in, transformer_in, the time embedding, the last layer of the last up block
  // and the output layers: poisoning everything else leaves the shallow pass as it was.
  for (auto& p : unet->named_parameters()) {
    const std::string& name = p.key();
    auto starts = [&](const char* prefix) { return name.rfind(prefix, 0) == 0; };
    const bool last_up_layer = starts("up_blocks.2.") && name.find("s.2.", 12) != std::string::npos;
    const bool used = starts("conv_in.") || starts("transformer_in.") || starts("time_embedding.") ||
                      starts("conv_norm_out.") || starts("conv_out.") || last_up_layer;
    if (!used) p.value().fill_(std::numeric_limits<float>::quiet_NaN());
  }
  EXPECT_TRUE(unet->forward(b.x, a.t, a.text, cache, false).equal(shallow));
  EXPECT_FALSE(at::isfinite(unet->forward(b.x, a.t, a.text, cache, true)).all().item<bool>());
}

TEST(DeepCache, BadBranchesAndEmptyCachesAreErrors) {
  UNet3DConditionModel unet(three_level_config());
  unet->eval();
  at::NoGradGuard no_grad;
  const Inputs a = inputs(7);
  FeatureCache bad{9, {}};
  try {
    unet->forward(a.x, a.t, a.text, bad, true);
    ADD_FAILURE() << "branch 9 was accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("use 0..8"), std::string::npos) << e.what();
  }
  FeatureCache cache{2, {}};
  EXPECT_THROW(unet->forward(a.x, a.t, a.text, cache, false), Error);
  unet->forward(a.x, a.t, a.text, cache, true);
  // A cache filled for 3 frames does not serve 2.
  EXPECT_THROW(unet->forward(a.x.slice(2, 0, 2), a.t, a.text, cache, false), Error);
}

TEST(DeepCache, DenoisingLoopRefreshesOnItsFirstStepAndEveryIntervalAfter) {
  auto pipe = test::load_shapes_pipeline();
  pipelines::GenerateOptions g = test::tiny_clip_options();
  g.steps = 4;
  const at::Tensor plain = pipe->generate_float(g);
  // Interval 1 refreshes on every step: the plain network.
  g.deep_cache_interval = 1;
  EXPECT_TRUE(pipe->generate_float(g).equal(plain));
  g.deep_cache_interval = 2;
  const at::Tensor cached = pipe->generate_float(g);
  EXPECT_GT(test::max_abs_diff(cached, plain), 1e-4);
  EXPECT_LT((cached - plain).abs().mean().item<double>(), 0.1);
  // A strength-limited run starts at step 3 of 6: its first step must be a refresh, or the shallow
  // pass would find the cache empty.
  pipelines::GenerateOptions v = g;
  v.steps = 6;
  v.strength = 0.5;
  v.frames = 4;
  const at::Tensor video = at::full({4, 64, 64, 3}, 90, at::kByte);
  EXPECT_EQ(pipe->restyle(video, v).sizes(), (std::vector<int64_t>{4, 64, 64, 3}));
  for (auto [interval, branch, flag] : {std::tuple{-1, 0, "--deep-cache"}, std::tuple{2, 4, "--deep-cache-branch"},
                                        std::tuple{2, -1, "--deep-cache-branch"}}) {
    g.deep_cache_interval = interval;
    g.deep_cache_branch = branch;
    try {
      pipe->validate(g);
      ADD_FAILURE() << interval << " " << branch << " was accepted";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find(flag), std::string::npos) << e.what();
    }
  }
}
