// Frame windows for long clips (temporal/frame_windows.h): the windows and weights FreeNoise uses,
// the blended attention of a transformer block, the noise, and the UNet with windows on.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "models/attention.h"
#include "models/unet_3d_condition.h"
#include "temporal/frame_windows.h"
#include "temporal/transformer_temporal.h"
#include "tests/support/test_support.h"

using namespace vdm;
using temporal::FrameWindows;
using Ranges = std::vector<std::pair<int64_t, int64_t>>;

namespace {

FrameWindows windows(int64_t length, int64_t stride, std::string weighting = "pyramid") {
  FrameWindows w;
  w.length = length;
  w.stride = stride;
  w.weighting = std::move(weighting);
  return w;
}

models::BasicTransformerBlock temporal_block() {
  at::manual_seed(5);
  models::TransformerBlockOptions o;
  o.dim = 16;
  o.num_attention_heads = 2;
  o.attention_head_dim = 8;
  o.double_self_attention = true;
  models::BasicTransformerBlock block(o);
  test::perturb(*block);
  block->eval();
  return block;
}

std::string error_of(const FrameWindows& w) {
  try {
    temporal::validate_frame_windows(w);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(FrameWindows, RangesStartEveryStrideAndTheLastEndsAtTheClip) {
  // diffusers' example: 24 frames, windows of 16 every 4.
  EXPECT_EQ(temporal::frame_window_ranges(24, windows(16, 4)), (Ranges{{0, 16}, {4, 20}, {8, 24}}));
  // 25 frames: one more window, ending at the last frame.
  EXPECT_EQ(temporal::frame_window_ranges(25, windows(16, 4)), (Ranges{{0, 16}, {4, 20}, {8, 24}, {9, 25}}));
  EXPECT_EQ(temporal::frame_window_ranges(20, windows(8, 8)), (Ranges{{0, 8}, {8, 16}, {12, 20}}));
  // A clip no longer than a window is one window: computed as without windows.
  EXPECT_EQ(temporal::frame_window_ranges(16, windows(16, 4)), (Ranges{{0, 16}}));
  EXPECT_EQ(temporal::frame_window_ranges(9, windows(16, 4)), (Ranges{{0, 9}}));
  EXPECT_EQ(temporal::frame_window_ranges(9, windows(0, 4)), (Ranges{{0, 9}}));
  EXPECT_FALSE(windows(16, 4).splits(16));
  EXPECT_TRUE(windows(16, 4).splits(17));
  EXPECT_FALSE(windows(0, 4).splits(1000));
}

TEST(FrameWindows, WeightingSchemes) {
  using W = std::vector<double>;
  EXPECT_EQ(temporal::frame_window_weights(4, "flat"), (W{1, 1, 1, 1}));
  EXPECT_EQ(temporal::frame_window_weights(4, "pyramid"), (W{1, 2, 2, 1}));
  EXPECT_EQ(temporal::frame_window_weights(5, "pyramid"), (W{1, 2, 3, 2, 1}));
  EXPECT_EQ(temporal::frame_window_weights(4, "delayed_reverse_sawtooth"), (W{0.01, 2, 2, 1}));
  EXPECT_EQ(temporal::frame_window_weights(5, "delayed_reverse_sawtooth"), (W{0.01, 0.01, 3, 2, 1}));
  EXPECT_EQ(temporal::frame_window_weights(16, "delayed_reverse_sawtooth").size(), 16u);
  EXPECT_THROW(temporal::frame_window_weights(4, "triangle"), InputError);
}

TEST(FrameWindows, PlanCountsTheEndWindowOnlyWhereNoOtherWindowReaches) {
  // 10 frames, windows of 4 every 3: [0,4) [3,7) [6,10) are regular; no end window.
  auto plan = temporal::plan_frame_windows(10, windows(4, 3, "flat"));
  EXPECT_EQ(plan.windows, 3);
  EXPECT_EQ(plan.length, 4);
  EXPECT_TRUE(at::equal(plan.index, at::tensor({0, 1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 9}, at::kLong)));
  EXPECT_TRUE(at::equal(plan.weight, at::ones({12})));
  EXPECT_TRUE(at::allclose(plan.inverse_total, at::tensor({1.f, 1.f, 1.f, .5f, 1.f, 1.f, .5f, 1.f, 1.f, 1.f})));
  // 9 frames, windows of 4 every 4: [0,4) [4,8), then the end window [5,9) adds frame 8 alone, with
  // its position's weight (pyramid 1, 2, 2, 1: the last position weighs 1).
  plan = temporal::plan_frame_windows(9, windows(4, 4));
  EXPECT_EQ(plan.windows, 3);
  EXPECT_TRUE(at::equal(plan.index, at::tensor({0, 1, 2, 3, 4, 5, 6, 7, 5, 6, 7, 8}, at::kLong)));
  EXPECT_TRUE(at::equal(plan.weight, at::tensor({1.f, 2.f, 2.f, 1.f, 1.f, 2.f, 2.f, 1.f, 0.f, 0.f, 0.f, 1.f})));
  EXPECT_TRUE(at::allclose(plan.inverse_total, at::tensor({1.f, .5f, .5f, 1.f, 1.f, .5f, .5f, 1.f, 1.f})));
}

TEST(FrameWindows, BadSettingsNameTheOptionAndTheRange) {
  EXPECT_EQ(error_of(windows(16, 4)), "");
  EXPECT_EQ(error_of(windows(0, 0)), "");  // off: the stride is not used
  EXPECT_NE(error_of(windows(1, 1)).find("--context-frames 1: expected 0 (off) or 2..1024"), std::string::npos);
  EXPECT_NE(error_of(windows(-3, 1)).find("--context-frames -3"), std::string::npos);
  EXPECT_NE(error_of(windows(16, 0)).find("--context-stride 0: expected 1..16"), std::string::npos);
  EXPECT_NE(error_of(windows(16, 17)).find("--context-stride 17: expected 1..16"), std::string::npos);
  EXPECT_NE(error_of(windows(16, 4, "steps")).find("--context-weights steps: expected flat, pyramid"),
            std::string::npos);
  FrameWindows w = windows(16, 4);
  w.noise = "fresh";
  EXPECT_NE(error_of(w).find("--context-noise fresh: expected shuffle_context, repeat_context or random"),
            std::string::npos);
  EXPECT_EQ(windows(16, 4).describe(), "16 frames every 4, pyramid weights, shuffle_context noise");
  EXPECT_EQ(windows(0, 4).describe(), "off");
}

TEST(FrameWindows, NoiseRepeatsEveryWindowShuffledWithinStrides) {
  const at::Tensor noise = at::randn({1, 2, 11, 3, 3});
  FrameWindows w = windows(4, 2);
  at::Generator gen = at::detail::createCPUGenerator(7);
  const at::Tensor out = temporal::frame_window_noise(noise, w, gen);
  ASSERT_EQ(out.sizes(), noise.sizes());
  EXPECT_TRUE(at::equal(out.narrow(2, 0, 4), noise.narrow(2, 0, 4)));  // the first window is as drawn
  // Every later block of 2 frames holds the frames of the block 4 earlier, in some order.
  for (int64_t i = 4; i < 11; i += 2) {
    const int64_t n = std::min<int64_t>(2, 11 - i);
    for (int64_t f = i; f < i + n; ++f) {
      bool found = false;
      for (int64_t g = i - 4; g < i - 4 + 2; ++g) found |= at::equal(out.select(2, f), out.select(2, g));
      EXPECT_TRUE(found) << "frame " << f;
    }
    if (n == 2) EXPECT_FALSE(at::equal(out.select(2, i), out.select(2, i + 1)));
  }
  // The permutations come from the generator: the same seed, the same noise.
  at::Generator again = at::detail::createCPUGenerator(7);
  EXPECT_TRUE(at::equal(temporal::frame_window_noise(noise, w, again), out));
  w.noise = "repeat_context";
  const at::Tensor repeated = temporal::frame_window_noise(noise, w, gen);
  for (int64_t f = 0; f < 11; ++f) EXPECT_TRUE(at::equal(repeated.select(2, f), noise.select(2, f % 4)));
  w.noise = "random";
  EXPECT_TRUE(at::equal(temporal::frame_window_noise(noise, w, gen), noise));
  // A clip that does not split keeps its noise and draws nothing.
  at::Generator before = gen.clone();
  EXPECT_TRUE(at::equal(temporal::frame_window_noise(noise.narrow(2, 0, 4), windows(4, 2), gen), noise.narrow(2, 0, 4)));
  EXPECT_TRUE(at::equal(at::randn({4}, gen), at::randn({4}, before)));
}

TEST(FrameWindows, BlockHalvesMakeTheBlock) {
  auto block = temporal_block();
  c10::InferenceMode inference;
  const at::Tensor x = at::randn({3, 7, 16});
  EXPECT_LT(test::max_abs_diff(block->feed_forward(block->attentions(x)), block->forward(x)), 1e-5);
}

TEST(FrameWindows, DisjointWindowsAreTheBlockOverEachPart) {
  auto block = temporal_block();
  c10::InferenceMode inference;
  const at::Tensor x = at::randn({3, 12, 16});
  const auto plan = temporal::plan_frame_windows(12, windows(4, 4));
  const at::Tensor out = temporal::transformer_block_in_windows(*block, x, plan);
  for (int64_t s = 0; s < 12; s += 4)
    EXPECT_LT(test::max_abs_diff(out.narrow(1, s, 4), block->forward(x.narrow(1, s, 4).contiguous())), 1e-5) << s;
}

TEST(FrameWindows, OverlappingWindowsAreTheWeightedMeanOfTheirAttentions) {
  auto block = temporal_block();
  c10::InferenceMode inference;
  const int64_t F = 11;
  const at::Tensor x = at::randn({2, F, 16});
  for (const std::string weighting : {"pyramid", "flat", "delayed_reverse_sawtooth"}) {
    const FrameWindows w = windows(4, 3, weighting);  // [0,4) [3,7) [6,10), then the end window [7,11)
    const auto weights = temporal::frame_window_weights(4, weighting);
    at::Tensor sum = at::zeros_like(x, at::kDouble), total = at::zeros({F}, at::kDouble);
    const Ranges ranges = temporal::frame_window_ranges(F, w);
    ASSERT_EQ(ranges, (Ranges{{0, 4}, {3, 7}, {6, 10}, {7, 11}}));
    for (size_t k = 0; k < ranges.size(); ++k) {
      const at::Tensor a = block->attentions(x.narrow(1, ranges[k].first, 4).contiguous()).to(at::kDouble);
      for (int64_t i = 0; i < 4; ++i) {
        const int64_t f = ranges[k].first + i;
        if (k == 3 && f < 10) continue;  // the end window adds only frame 10
        sum.select(1, f) += weights[i] * a.select(1, i);
        total[f] += weights[i];
      }
    }
    const at::Tensor expected = block->feed_forward((sum / total.view({1, F, 1})).to(at::kFloat));
    const at::Tensor out = temporal::transformer_block_in_windows(*block, x, temporal::plan_frame_windows(F, w));
    EXPECT_LT(test::max_abs_diff(out, expected), 1e-5) << weighting;
  }
}

TEST(FrameWindows, AFrameReachesOnlyTheFramesItSharesAWindowWith) {
  auto block = temporal_block();
  c10::InferenceMode inference;
  const at::Tensor x = at::randn({2, 24, 16});
  at::Tensor y = x.clone();
  y.select(1, 0).add_(1.0);
  const auto plan = temporal::plan_frame_windows(24, windows(8, 4));  // frame 0 is in [0, 8) only
  const at::Tensor a = temporal::transformer_block_in_windows(*block, x, plan);
  const at::Tensor b = temporal::transformer_block_in_windows(*block, y, plan);
  for (int64_t f = 0; f < 8; ++f) EXPECT_FALSE(at::equal(a.select(1, f), b.select(1, f))) << f;
  EXPECT_TRUE(at::equal(a.narrow(1, 8, 16), b.narrow(1, 8, 16)));
  // Without windows every frame sees frame 0.
  EXPECT_FALSE(at::equal(block->forward(x).narrow(1, 8, 16), block->forward(y).narrow(1, 8, 16)));
}

TEST(FrameWindows, UNetWithWindowsAsLongAsTheClipIsUnchanged) {
  at::manual_seed(3);
  models::UNet3DConditionModel unet(test::tiny_unet3d_config(8, 4, 12, 4));
  test::perturb(*unet);
  unet->eval();
  c10::InferenceMode inference;
  const at::Tensor x = at::randn({1, 4, 6, 8, 8}), t = at::tensor({500}), text = at::randn({1, 5, 12});
  const at::Tensor plain = unet->forward(x, t, text);
  // transformer_in and the down, mid and up blocks' temporal transformers
  int64_t temporal_transformers = 0;
  for (const auto& m : unet->modules()) temporal_transformers += m->as<temporal::TransformerTemporalModelImpl>() != nullptr;
  EXPECT_GE(temporal_transformers, 4);
  EXPECT_EQ(unet->set_frame_windows(windows(6, 2)), temporal_transformers);
  EXPECT_TRUE(at::equal(unet->forward(x, t, text), plain));
  EXPECT_EQ(unet->set_frame_windows(windows(3, 2)), temporal_transformers);
  const at::Tensor windowed = unet->forward(x, t, text);
  EXPECT_GT(test::max_abs_diff(windowed, plain), 1e-4);
  EXPECT_TRUE(windowed.isfinite().all().item<bool>());
  unet->set_frame_windows(FrameWindows{});
  EXPECT_TRUE(at::equal(unet->forward(x, t, text), plain));
  EXPECT_THROW(unet->set_frame_windows(windows(1, 1)), InputError);
}
