// Guidance rescale (--guidance-rescale, diffusers' guidance_rescale): the formula, and its use in the
// denoising loop of the embedded model.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "core/error.h"
#include "pipelines/video_pipeline.h"
#include "tests/support/test_support.h"

using namespace vdm;

TEST(GuidanceRescale, MatchesTheFormulaPerSample) {
  at::manual_seed(2);
  const at::Tensor text = at::randn({2, 4, 3, 5, 5});
  const at::Tensor guided = text * 3.0 + at::randn({2, 4, 3, 5, 5});
  const double phi = 0.7;
  const at::Tensor out = pipelines::rescale_guidance(guided, text, phi);
  for (int64_t b = 0; b < 2; ++b) {
    const at::Tensor g = guided[b].to(at::kDouble).flatten(), t = text[b].to(at::kDouble).flatten();
    auto stddev = [](const at::Tensor& v) {
      const double n = static_cast<double>(v.numel());
      return std::sqrt(((v - v.mean()).pow(2).sum() / (n - 1)).item<double>());
    };
    const at::Tensor expected = phi * g * (stddev(t) / stddev(g)) + (1 - phi) * g;
    EXPECT_LT((out[b].to(at::kDouble).flatten() - expected).abs().max().item<double>(), 1e-5) << b;
  }
  // phi 1: each sample takes the prompt prediction's spread; phi 0: unchanged.
  const at::Tensor full = pipelines::rescale_guidance(guided, text, 1.0);
  for (int64_t b = 0; b < 2; ++b)
    EXPECT_NEAR(full[b].std().item<double>(), text[b].std().item<double>(), 1e-5) << b;
  EXPECT_TRUE(pipelines::rescale_guidance(guided, text, 0.0).equal(guided));
}

TEST(GuidanceRescale, ChangesTheGuidedClipAndIsChecked) {
  auto pipe = test::load_shapes_pipeline();
  pipelines::GenerateOptions g = test::tiny_clip_options();
  const at::Tensor plain = pipe->generate_float(g);
  g.guidance_rescale = 0.7;
  const at::Tensor rescaled = pipe->generate_float(g);
  EXPECT_GT(test::max_abs_diff(rescaled, plain), 1e-3);
  // Without guidance there is nothing to rescale.
  g.guidance = 1.0;
  const at::Tensor unguided = pipe->generate_float(g);
  g.guidance_rescale = 0.0;
  EXPECT_TRUE(pipe->generate_float(g).equal(unguided));
  for (double bad : {-0.1, 1.5, std::numeric_limits<double>::quiet_NaN()}) {
    g.guidance_rescale = bad;
    try {
      pipe->validate(g);
      ADD_FAILURE() << bad << " was accepted";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("--guidance-rescale"), std::string::npos) << e.what();
    }
  }
}
