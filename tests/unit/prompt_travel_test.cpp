// Prompt travel (--prompt-at, shot-list prompt_at): per-frame text embeddings interpolated between
// keyframes as diffusers' FreeNoise prompt dictionary does, the UNet taking one text per frame, and
// the checks on the keyframes.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "core/error.h"
#include "models/unet_3d_condition.h"
#include "pipelines/video_pipeline.h"
#include "tests/support/test_support.h"

using namespace vdm;

namespace {

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const InputError& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(PromptTravel, FramesBetweenKeyframesBlendTheirTextsAndTheLastHolds) {
  auto pipe = test::load_shapes_pipeline();
  const std::string a = "a red circle moving right on a black background";
  const std::string b = "a blue square moving up on a gray background";
  const std::string n = "a green triangle";
  const at::Tensor ea = pipe->encode_prompt(a, "", false)[0], eb = pipe->encode_prompt(b, "", false)[0];
  const at::Tensor en = pipe->encode_prompt(n, "", false)[0], e0 = pipe->encode_prompt("", "", false)[0];
  pipelines::GenerateOptions g;
  g.prompt = a;
  g.frames = 9;
  g.prompt_at = {{4, b}};
  const at::Tensor text = pipe->encode_prompts(g, /*do_guidance=*/false);  // [9, L, D]
  ASSERT_EQ(text.size(0), 9);
  EXPECT_LT(test::max_abs_diff(text[0], ea), 1e-6);
  EXPECT_LT(test::max_abs_diff(text[1], ea * 0.75 + eb * 0.25), 1e-5);
  EXPECT_LT(test::max_abs_diff(text[2], (ea + eb) * 0.5), 1e-5);
  for (int64_t f = 4; f < 9; ++f) EXPECT_LT(test::max_abs_diff(text[f], eb), 1e-6) << f;
  // With guidance: the negative frames first, then the prompt's; the negative travels on its own keyframes.
  g.negative_prompt_at = {{8, n}};
  const at::Tensor both = pipe->encode_prompts(g, true);  // [18, L, D]
  ASSERT_EQ(both.size(0), 18);
  EXPECT_LT(test::max_abs_diff(both[0], e0), 1e-6);
  EXPECT_LT(test::max_abs_diff(both[4], (e0 + en) * 0.5), 1e-5);
  EXPECT_LT(test::max_abs_diff(both[8], en), 1e-6);
  EXPECT_TRUE(both.slice(0, 9, 18).equal(text));
  // Without keyframes: one text per video, as before.
  g.prompt_at.clear();
  g.negative_prompt_at.clear();
  EXPECT_EQ(pipe->encode_prompts(g, true).size(0), 2);
}

TEST(PromptTravel, UNetTakesOneTextPerFrame) {
  at::manual_seed(11);
  models::UNet3DConditionModel unet(test::tiny_unet3d_config(8, 4, 12, 4));
  unet->eval();
  at::NoGradGuard no_grad;
  const int64_t B = 2, F = 3;
  const at::Tensor x = at::randn({B, 4, F, 8, 8}), t = at::tensor(int64_t(300));
  const at::Tensor text = at::randn({B, 5, 12});
  const at::Tensor per_video = unet->forward(x, t, text);
  // The same text repeated for every frame is the per-video result.
  EXPECT_LT(test::max_abs_diff(unet->forward(x, t, text.repeat_interleave(F, 0)), per_video), 1e-5);
  // Another text for the last frame of video 1 changes that video, not video 0.
  at::Tensor frames = text.repeat_interleave(F, 0).clone();
  frames[B * F - 1].normal_();
  const at::Tensor travelled = unet->forward(x, t, frames);
  EXPECT_LT(test::max_abs_diff(travelled[0], per_video[0]), 1e-5);
  EXPECT_GT(test::max_abs_diff(travelled[1], per_video[1]), 1e-4);
  EXPECT_THROW(unet->forward(x, t, text.slice(0, 0, 1).repeat({5, 1, 1})), InputError);
}

TEST(PromptTravel, RendersAndChecksItsKeyframes) {
  auto pipe = test::load_shapes_pipeline();
  pipelines::GenerateOptions g = test::tiny_clip_options();
  const at::Tensor plain = pipe->generate_float(g);
  // A keyframe with the same prompt: the same text on every frame, the same clip (up to rounding).
  g.prompt_at = {{2, g.prompt}};
  EXPECT_LT(test::max_abs_diff(pipe->generate_float(g), plain), 1e-4);
  g.prompt_at = {{2, "a blue square moving up on a gray background"}};
  const at::Tensor travelled = pipe->generate_float(g);
  EXPECT_GT(test::max_abs_diff(travelled.select(0, g.frames - 1), plain.select(0, g.frames - 1)), 1e-3);
  g.prompt_at = {{g.frames, "x"}};
  EXPECT_NE(error_of([&] { pipe->validate(g); }).find("--prompt-at 4:x: frame 4 is not in the clip's frames 1..3"),
            std::string::npos);
  g.prompt_at.clear();
  g.negative_prompt_at = {{0, "x"}};
  EXPECT_NE(error_of([&] { pipe->validate(g); }).find("--negative-prompt-at 0:x"), std::string::npos);
}

TEST(PromptTravel, KeyframeArgumentsAreParsed) {
  std::map<int64_t, std::string> keys;
  pipelines::add_prompt_keyframe(keys, "8:a blue circle: bright", "--prompt-at");
  EXPECT_EQ(keys.at(8), "a blue circle: bright");
  for (const char* bad : {"a blue circle", ":x", "-1:x", "8x:y", "9999999999999999999999:x"})
    EXPECT_NE(error_of([&] { pipelines::add_prompt_keyframe(keys, bad, "--prompt-at"); })
                  .find("expected FRAME:PROMPT"),
              std::string::npos)
        << bad;
  EXPECT_NE(error_of([&] { pipelines::add_prompt_keyframe(keys, "8:again", "--prompt-at"); })
                .find("frame 8 already has a prompt"),
            std::string::npos);
  EXPECT_EQ(pipelines::describe_prompt_keyframes(keys), R"({"8":"a blue circle: bright"})");
}
