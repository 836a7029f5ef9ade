// FreeInit (--free-init): the low-pass filter, the frequency mix, the checks, and the passes of the
// pipeline.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/error.h"
#include "pipelines/video_pipeline.h"
#include "temporal/free_init.h"
#include "tests/support/test_support.h"

using namespace vdm;
using temporal::FreeInit;

namespace {

// The filter at one position, written out entry by entry as diffusers' loops compute it.
double filter_at(const FreeInit& f, int64_t t, int64_t y, int64_t x, int64_t F, int64_t H, int64_t W) {
  const double s = f.spatial_stop;
  const double dt = (s / f.temporal_stop) * (2.0 * t / F - 1), dy = 2.0 * y / H - 1, dx = 2.0 * x / W - 1;
  const double d2 = dt * dt + dy * dy + dx * dx;
  if (f.filter == "butterworth") return 1 / (1 + std::pow(d2 / (s * s), f.order));
  if (f.filter == "gaussian") return std::exp(-1 / (2 * s * s) * d2);
  return d2 <= s * 2 ? 1.0 : 0.0;
}


}  // namespace

TEST(FreeInit, LowPassFollowsDiffusersFormulas) {
  const int64_t F = 5, H = 6, W = 8;
  for (const char* filter : {"butterworth", "gaussian", "ideal"}) {
    FreeInit f;
    f.iterations = 3;
    f.filter = filter;
    f.order = 3;
    f.spatial_stop = 0.4;
    f.temporal_stop = 0.5;
    const at::Tensor lp = temporal::free_init_low_pass(f, F, H, W);
    ASSERT_EQ(lp.sizes(), (std::vector<int64_t>{F, H, W}));
    EXPECT_EQ(lp.scalar_type(), at::kFloat);
    int ones = 0;
    for (int64_t t = 0; t < F; ++t)
      for (int64_t y = 0; y < H; ++y)
        for (int64_t x = 0; x < W; ++x) {
          const double expected = filter_at(f, t, y, x, F, H, W);
          ASSERT_NEAR(lp[t][y][x].item<double>(), expected, 1e-6) << filter << " " << t << "," << y << "," << x;
          ones += expected > 0.9;
        }
    // A low pass: high weight around the centre only (with 5 frames the centre falls between two
    // of them, as in diffusers).
    EXPECT_GT(ones, 0) << filter;
    EXPECT_LT(ones, F * H * W / 2) << filter;
  }
}

TEST(FreeInit, MixTakesLowFrequenciesFromTheLatentAndHighOnesFromTheNoise) {
  at::manual_seed(4);
  const at::Tensor z = at::randn({1, 4, 5, 6, 8}), noise = at::randn({1, 4, 5, 6, 8});
  EXPECT_TRUE(at::allclose(temporal::free_init_mix(z, noise, at::ones({5, 6, 8})), z, 1e-4, 1e-5));
  EXPECT_TRUE(at::allclose(temporal::free_init_mix(z, noise, at::zeros({5, 6, 8})), noise, 1e-4, 1e-5));
  // Only the centre of the shifted spectrum (frequency 0) from z: its mean, with the noise's other
  // frequencies, so the noise minus its own mean plus z's.
  at::Tensor dc = at::zeros({5, 6, 8});
  dc[5 / 2][6 / 2][8 / 2] = 1;
  const at::Tensor mixed = temporal::free_init_mix(z, noise, dc);
  const at::Tensor expected = noise - noise.mean({2, 3, 4}, true) + z.mean({2, 3, 4}, true);
  EXPECT_TRUE(at::allclose(mixed, expected, 1e-4, 1e-5));
}

// Coarse to fine: the passes run a growing share of the steps, the last all of them (also where
// diffusers' floating-point arithmetic drops one: 61 steps in 7 passes).
TEST(FreeInit, FastPassesRunAGrowingShareOfTheSteps) {
  FreeInit f;
  f.iterations = 3;
  EXPECT_EQ(f.pass_steps(0, 25), 25);  // not fast: every pass runs all steps
  f.fast = true;
  EXPECT_EQ(f.pass_steps(0, 25), 8);
  EXPECT_EQ(f.pass_steps(1, 25), 16);
  EXPECT_EQ(f.pass_steps(2, 25), 25);
  EXPECT_EQ(f.pass_steps(0, 2), 1);  // at least one step
  f.iterations = 7;
  EXPECT_EQ(f.pass_steps(6, 61), 61);
  EXPECT_EQ(f.pass_steps(5, 61), 52);
}

TEST(FreeInit, SettingsAreChecked) {
  auto error_of = [](FreeInit f) {
    try {
      temporal::validate_free_init(f);
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  FreeInit f;
  EXPECT_EQ(error_of(f), "no error");
  f.iterations = 11;
  EXPECT_NE(error_of(f).find("--free-init 11: must be between 0 and 10"), std::string::npos);
  f = {};
  f.filter = "box";
  EXPECT_NE(error_of(f).find("--free-init-filter box: expected butterworth, gaussian or ideal"), std::string::npos);
  f = {};
  f.order = 0;
  EXPECT_NE(error_of(f).find("--free-init-order 0"), std::string::npos);
  f = {};
  f.temporal_stop = 0;
  EXPECT_NE(error_of(f).find("--free-init-temporal 0: the stop frequency must be in (0, 1]"), std::string::npos);
  f = {};
  f.spatial_stop = std::nan("");
  EXPECT_NE(error_of(f).find("--free-init-spatial nan"), std::string::npos);
}

// One pass is the plain render; more passes change it, repeat with the seed, and report each
// pass's progress under its own stage; a render that starts part-way (SDEdit) is refused.
TEST(FreeInit, PipelineRunsItsPasses) {
  auto pipe = test::load_shapes_pipeline();
  pipelines::GenerateOptions g = test::tiny_clip_options();
  g.steps = 3;
  g.guidance = 4;
  const at::Tensor plain = pipe->generate(g);
  g.free_init.iterations = 1;
  EXPECT_TRUE(pipe->generate(g).equal(plain));

  g.free_init.iterations = 3;
  std::vector<std::string> stages;
  g.progress = [&](const pipelines::ProgressEvent& e) {
    if (stages.empty() || stages.back() != e.stage) stages.push_back(e.stage);
  };
  const at::Tensor three = pipe->generate(g);
  EXPECT_EQ(stages, (std::vector<std::string>{"free-init 1/3", "free-init 2/3", "denoise"}));
  EXPECT_GT((three.to(at::kInt) - plain.to(at::kInt)).abs().max().item<int>(), 8);
  g.progress = {};
  EXPECT_TRUE(pipe->generate(g).equal(three));
  g.free_init.filter = "ideal";
  EXPECT_FALSE(pipe->generate(g).equal(three));
  // Coarse to fine: 1, 2 and 3 steps; the steps the progress reports add up to that.
  g.free_init.filter = "butterworth";
  g.free_init.fast = true;
  int64_t steps_run = 0;
  g.progress = [&](const pipelines::ProgressEvent& e) {
    if (e.step == e.total && e.stage != "decode") steps_run += e.total;
  };
  pipe->generate(g);
  EXPECT_EQ(steps_run, 1 + 2 + 3);
  g.progress = {};

  // restyle starts from the source noised part-way.
  try {
    pipe->restyle(plain, g);
    FAIL() << "restyle with FreeInit should be refused";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("--free-init 3: FreeInit samples from pure noise"), std::string::npos)
        << e.what();
  }
}
