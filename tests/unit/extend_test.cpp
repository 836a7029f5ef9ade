// Video extension (vdm extend): the source frames kept, new frames continuing from the last one, and
// the checks on the frame count.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/error.h"
#include "pipelines/video_pipeline.h"
#include "tests/support/test_support.h"
#include "train/shapes_eval.h"

using namespace vdm;

TEST(Extend, KeepsTheSourceAndContinuesItsObjectAcrossTheSeam) {
  auto pipe = test::load_shapes_pipeline();
  pipelines::GenerateOptions g;
  g.prompt = "a red circle moving right on a black background";
  g.frames = 8;
  g.steps = 10;
  g.guidance = 4;
  g.seed = 5;
  const at::Tensor source = pipe->generate(g);  // [8, 64, 64, 3]
  pipelines::GenerateOptions e = g;
  e.seed = 6;
  const at::Tensor out = pipe->extend(source, e);
  ASSERT_EQ(out.sizes(), (std::vector<int64_t>{16, 64, 64, 3}));
  EXPECT_TRUE(out.slice(0, 0, 8).equal(source));
  // One object throughout; the step across the seam (frame 7 to 8) is like the source's own steps.
  std::vector<train::FrameMeasure> m;
  for (int64_t f = 0; f < 16; ++f) {
    m.push_back(train::measure_frame(out[f]));
    ASSERT_TRUE(m.back().found) << f;
  }
  auto step = [&](int64_t f) { return std::hypot(m[f + 1].cx - m[f].cx, m[f + 1].cy - m[f].cy); };
  std::vector<double> source_steps;
  for (int64_t f = 0; f + 1 < 8; ++f) source_steps.push_back(step(f));
  std::sort(source_steps.begin(), source_steps.end());
  EXPECT_LE(step(7), std::max(4.0, 3.0 * source_steps[source_steps.size() / 2])) << "seam step " << step(7);
  // The new part keeps moving right.
  EXPECT_GT(m[15].cx, m[8].cx);
  EXPECT_EQ(train::nearest_colour(m[12].colour), train::Colour::kRed);
}

TEST(Extend, FitsTheSourceAndChecksTheFramesToAdd) {
  auto pipe = test::load_shapes_pipeline();
  pipelines::GenerateOptions g = test::tiny_clip_options();
  const at::Tensor source = at::full({3, 32, 48, 3}, 40, at::kByte);
  g.frames = 2;
  EXPECT_EQ(pipe->extend(source, g).sizes(), (std::vector<int64_t>{5, 64, 64, 3}));
  for (int64_t bad : {0, 1024}) {
    g.frames = bad;
    try {
      pipe->extend(source, g);
      ADD_FAILURE() << bad << " was accepted";
    } catch (const InputError& err) {
      EXPECT_NE(std::string(err.what()).find("the frames to add must be between 1 and 1023"), std::string::npos)
          << err.what();
    }
  }
}
