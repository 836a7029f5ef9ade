// Prompt weighting (--prompt-weights): the bracket syntax, and the weighted text embeddings.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/error.h"
#include "pipelines/video_pipeline.h"
#include "tests/support/test_support.h"
#include "text/prompt_weights.h"

using namespace vdm;
using text::parse_prompt_weights;
using text::WeightedText;

namespace {

void expect_segments(const std::string& prompt, const std::vector<WeightedText>& expected) {
  SCOPED_TRACE(prompt);
  const auto got = parse_prompt_weights(prompt);
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].text, expected[i].text) << i;
    EXPECT_NEAR(got[i].weight, expected[i].weight, 1e-12) << i;
  }
}

std::unique_ptr<pipelines::VideoPipeline> shapes_pipeline(bool weights) {
  pipelines::PipelineConfig pc;
  pc.prompt_weights = weights;
  return test::load_shapes_pipeline(pc);
}

}  // namespace

TEST(PromptWeights, BracketsNestEscapeAndStayOpenToTheEnd) {
  expect_segments("normal text", {{"normal text", 1.0}});
  expect_segments("an (important) word", {{"an ", 1.0}, {"important", 1.1}, {" word", 1.0}});
  expect_segments("(unbalanced", {{"unbalanced", 1.1}});
  expect_segments("\\(literal\\]", {{"(literal]", 1.0}});
  expect_segments("(unnecessary)(parens)", {{"unnecessaryparens", 1.1}});
  expect_segments("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
                  {{"a ", 1.0},
                   {"house", 1.3 * 1.1 * 1.1},
                   {" ", 1.1},
                   {"on", 1.0},
                   {" a ", 1.1},
                   {"hill", 0.55},
                   {", sun, ", 1.1},
                   {"sky", 1.1 * 1.1 * 1.1 * 1.1},
                   {".", 1.1}});
  expect_segments("[[dim]] and (bright: 2 ) time: noon", {{"dim", 1 / 1.21}, {" and ", 1.0}, {"bright", 2.0},
                                                          {" time: noon", 1.0}});
  expect_segments("", {{"", 1.0}});
  try {
    parse_prompt_weights("a (red:1.2.3) circle");
    ADD_FAILURE() << "accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("prompt weight '1.2.3' in 'a (red:1.2.3) circle' is not a number"),
              std::string::npos)
        << e.what();
  }
}

TEST(PromptWeights, WeightedEmbeddingsScaleTheirTokensAndKeepTheMean) {
  auto plain = shapes_pipeline(false);
  auto weighted = shapes_pipeline(true);
  const std::string text = "a red circle moving right on a black background";
  const at::Tensor base = plain->encode_prompt(text, "", false);
  // Without brackets, or with weights of 1, the embedding is the plain one.
  EXPECT_LT(test::max_abs_diff(weighted->encode_prompt(text, "", false), base), 1e-6);
  EXPECT_LT(test::max_abs_diff(weighted->encode_prompt("a (red:1) circle moving right on a black background", "", false),
                               base),
            1e-6);
  // (red:1.5): token 2 (after the start token and "a") scaled against the others, the mean kept.
  const at::Tensor up = weighted->encode_prompt("a (red:1.5) circle moving right on a black background", "", false);
  EXPECT_NEAR(up.mean().item<double>(), base.mean().item<double>(), 1e-5);
  const at::Tensor k = up / base;  // one factor per token where the weights are equal
  const double others = k[0][1].mean().item<double>();
  EXPECT_NEAR(k[0][2].mean().item<double>() / others, 1.5, 1e-3);
  EXPECT_NEAR(k[0][5].mean().item<double>() / others, 1.0, 1e-3);
  // Without --prompt-weights the brackets are text: another embedding.
  EXPECT_GT(test::max_abs_diff(plain->encode_prompt("a (red:1) circle moving right on a black background", "", false),
                               base),
            1e-3);
  // A bad weight is found by validate, before any work.
  pipelines::GenerateOptions g = test::tiny_clip_options();
  g.prompt = "a (red:x1) circle";
  EXPECT_NO_THROW(weighted->validate(g));  // ":x1)" is not a weight: plain text
  g.negative_prompt = "(blurry:1..2)";
  EXPECT_THROW(weighted->validate(g), InputError);
  EXPECT_NO_THROW(plain->validate(g));
}
