// FreeU (--freeu): the Fourier filter of the skip connections, the backbone scaling, which up blocks
// take which stage, the text form, and its use in the pipeline.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/module.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/error.h"
#include "models/freeu.h"
#include "models/unet_3d_condition.h"
#include "pipelines/video_pipeline.h"
#include "tests/support/test_support.h"

using namespace vdm;
using models::FreeU;

namespace {

constexpr double kPi = 3.14159265358979323846;

// [1, 1, H, W] holding cos(2 pi k h / H), constant along W.
at::Tensor cosine_rows(int64_t H, int64_t W, int64_t k) {
  at::Tensor h = at::arange(H, at::kDouble).mul(2 * kPi * static_cast<double>(k) / static_cast<double>(H)).cos();
  return h.view({1, 1, H, 1}).expand({1, 1, H, W}).to(at::kFloat).contiguous();
}

}  // namespace

// The filter scales the frequencies 0 and -1 of each axis (the 2 x 2 square around the centre after
// fftshift). A constant keeps only frequency 0: it is scaled as a whole. cos(2 pi h / H) is half
// frequency +1 and half -1: only the -1 half is scaled, so the real part is (1 + s) / 2 of it.
// Higher frequencies pass unchanged.
TEST(FreeU, FourierFilterScalesTheLowestFrequenciesOnly) {
  const double s = 0.3;
  for (auto [H, W] : {std::pair<int64_t, int64_t>{8, 8}, {5, 3}, {1, 6}, {2, 2}}) {
    const at::Tensor constant = at::full({2, 3, H, W}, 1.5);
    EXPECT_TRUE(at::allclose(models::fourier_filter(constant, 1, s), constant * s, 1e-5, 1e-6)) << H << "x" << W;
  }
  const at::Tensor first = cosine_rows(8, 4, 1);
  EXPECT_TRUE(at::allclose(models::fourier_filter(first, 1, s), first * ((1 + s) / 2), 1e-5, 1e-6));
  const at::Tensor third = cosine_rows(8, 4, 3);
  EXPECT_TRUE(at::allclose(models::fourier_filter(third, 1, s), third, 1e-5, 1e-6));
  // Zero mean, so the constant part does not hide the rest: scale 1 is the identity up to rounding.
  at::manual_seed(0);
  const at::Tensor x = at::randn({2, 4, 6, 10});
  EXPECT_TRUE(at::allclose(models::fourier_filter(x, 1, 1.0), x, 1e-5, 1e-5));
  EXPECT_FALSE(at::allclose(models::fourier_filter(x, 1, 0.5), x, 1e-3, 1e-3));
  // Half types in, the same type out (the transform itself runs in float32).
  const at::Tensor half = x.to(at::kBFloat16);
  const at::Tensor filtered = models::fourier_filter(half, 1, 0.5);
  EXPECT_EQ(filtered.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::allclose(filtered.to(at::kFloat), models::fourier_filter(half.to(at::kFloat), 1, 0.5), 2e-2, 2e-2));
}

TEST(FreeU, ApplyScalesTheFirstHalfOfTheBackboneAndFiltersTheSkip) {
  at::manual_seed(1);
  const at::Tensor h = at::randn({3, 5, 4, 4}), skip = at::randn({3, 2, 4, 4});
  const at::Tensor h_before = h.clone(), skip_before = skip.clone();
  const auto [scaled, filtered] = models::apply_freeu({1.4, 0.2}, h, skip);
  // 5 channels: the first 2 are scaled, as diffusers' hidden_states[:, :C // 2].
  EXPECT_TRUE(at::allclose(scaled.narrow(1, 0, 2), h.narrow(1, 0, 2) * 1.4));
  EXPECT_TRUE(scaled.narrow(1, 2, 3).equal(h.narrow(1, 2, 3)));
  EXPECT_TRUE(filtered.equal(models::fourier_filter(skip, 1, 0.2)));
  // The inputs are left alone (DeepCache may hold one of them).
  EXPECT_TRUE(h.equal(h_before));
  EXPECT_TRUE(skip.equal(skip_before));
}

// Stage 1 goes to up_blocks.0, stage 2 to up_blocks.1, nothing to the others; the UNet's output
// changes with it, factors of 1 leave it as it was, and turning FreeU off restores it exactly.
TEST(FreeU, TheUNetsTwoDeepestUpBlocksTakeTheStages) {
  models::UNet3DConditionConfig c = test::tiny_unet3d_config(8, 4, 12, 4);
  c.down_block_types = {"CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"};
  c.up_block_types = {"UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"};
  c.block_out_channels = {8, 16, 16};
  c.attention_head_dim = {4, 4, 4};
  models::UNet3DConditionModel unet(c);
  unet->eval();
  at::manual_seed(2);
  const at::Tensor x = at::randn({2, 4, 3, 8, 8}), t = at::tensor(int64_t(500)), text = at::randn({2, 5, 12});
  at::NoGradGuard no_grad;
  const at::Tensor plain = unet->forward(x, t, text);

  unet->set_freeu(FreeU{1.5, 1.3, 0.6, 0.4});
  auto stage_of = [&](const std::string& name) {
    for (const auto& item : unet->named_modules())
      if (item.key() == name) return item.value()->as<models::UpBlock3DBase>()->freeu;
    ADD_FAILURE() << name << " not found";
    return std::optional<models::FreeUStage>{};
  };
  ASSERT_TRUE(stage_of("up_blocks.0").has_value());
  EXPECT_EQ(stage_of("up_blocks.0")->backbone, 1.5);
  EXPECT_EQ(stage_of("up_blocks.0")->skip, 0.6);
  ASSERT_TRUE(stage_of("up_blocks.1").has_value());
  EXPECT_EQ(stage_of("up_blocks.1")->backbone, 1.3);
  EXPECT_EQ(stage_of("up_blocks.1")->skip, 0.4);
  EXPECT_FALSE(stage_of("up_blocks.2").has_value());
  const at::Tensor with = unet->forward(x, t, text);
  EXPECT_GT((with - plain).abs().max().item<double>(), 1e-3);

  unet->set_freeu(FreeU{});  // all factors 1
  EXPECT_TRUE(at::allclose(unet->forward(x, t, text), plain, 1e-4, 1e-5));
  unet->set_freeu(std::nullopt);
  EXPECT_FALSE(stage_of("up_blocks.0").has_value());
  EXPECT_TRUE(unet->forward(x, t, text).equal(plain));
}

TEST(FreeU, TextFormIsReadAndCheckedWhole) {
  const FreeU f = models::parse_freeu("s2=0.2,b1=1.2,s1=0.9,b2=1.4");
  EXPECT_EQ(f, (FreeU{1.2, 1.4, 0.9, 0.2}));
  EXPECT_EQ(models::describe_freeu(f), "b1=1.2,b2=1.4,s1=0.9,s2=0.2");
  EXPECT_EQ(models::parse_freeu(models::describe_freeu(f)), f);
  auto error_of = [](const std::string& text) {
    try {
      models::parse_freeu(text);
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error_of("b1=1.2,b2=1.4,s1=0.9").find("--freeu 'b1=1.2,b2=1.4,s1=0.9': s2 is missing"), std::string::npos);
  EXPECT_NE(error_of("b1=1,b2=1,s1=1,s2=1,b1=2").find("b1 is given twice"), std::string::npos);
  EXPECT_NE(error_of("b1=1,b2=1,s1=1,s3=1").find("'s3=1' is not KEY=VALUE"), std::string::npos);
  EXPECT_NE(error_of("b1=1,b2=1,s1=1,s2=0").find("s2 must be a positive number"), std::string::npos);
  EXPECT_NE(error_of("b1=1,b2=-1,s1=1,s2=1").find("b2 must be a positive number"), std::string::npos);
  EXPECT_NE(error_of("b1=1,b2=nan,s1=1,s2=1").find("b2 must be a positive number"), std::string::npos);
  EXPECT_NE(error_of("b1=1x,b2=1,s1=1,s2=1").find("got '1x'"), std::string::npos);
  EXPECT_NE(error_of("").find("is not KEY=VALUE"), std::string::npos);
}

// In the pipeline: FreeU changes the render, the next render without it is the plain one again (the
// setting does not stick to the loaded UNet), and factors of 1 render as without it up to rounding.
TEST(FreeU, PipelineRendersWithItAndResetsAfter) {
  auto pipe = test::load_shapes_pipeline();
  pipelines::GenerateOptions g = test::tiny_clip_options();
  g.steps = 4;
  g.guidance = 4;
  const at::Tensor plain = pipe->generate(g);
  pipelines::GenerateOptions f = g;
  f.freeu = FreeU{1.3, 1.3, 0.5, 0.5};
  const at::Tensor with = pipe->generate(f);
  EXPECT_GT((with.to(at::kInt) - plain.to(at::kInt)).abs().max().item<int>(), 8);
  EXPECT_TRUE(pipe->generate(g).equal(plain));
  f.freeu = FreeU{};
  EXPECT_LE((pipe->generate(f).to(at::kInt) - plain.to(at::kInt)).abs().max().item<int>(), 2);
}
