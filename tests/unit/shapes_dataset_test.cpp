// The moving-shapes world: captions, sampling, rendering geometry and determinism.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "core/runtime.h"
#include "train/shapes_dataset.h"

namespace vdm::train {
namespace {

TEST(ShapesDataset, CaptionGrammarRoundTrips) {
  ShapeAttributes a{Shape::kTriangle, Colour::kMagenta, Direction::kUp, Background::kGray};
  EXPECT_EQ(caption(a), "a magenta triangle moving up on a gray background");
  auto back = parse_caption(caption(a));
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->shape, a.shape);
  EXPECT_EQ(back->colour, a.colour);
  EXPECT_EQ(back->direction, a.direction);
  EXPECT_EQ(back->background, a.background);
  EXPECT_FALSE(parse_caption("a purple circle moving left on a black background").has_value());
  EXPECT_FALSE(parse_caption("a red circle moving left on a black").has_value());
  EXPECT_FALSE(parse_caption("a red circle moving sideways on a black background").has_value());
  auto all = all_captions();
  EXPECT_EQ(all.size(), 168u);
  EXPECT_EQ(std::set<std::string>(all.begin(), all.end()).size(), 168u);
  for (const auto& c : all) EXPECT_TRUE(parse_caption(c).has_value()) << c;
}

TEST(ShapesDataset, SamplingIsSeededAndCoversTheGrammar) {
  at::Generator g1 = make_generator(7), g2 = make_generator(7);
  std::set<int> shapes, colours, directions, backgrounds;
  ShapeWorldConfig cfg;
  for (int i = 0; i < 400; ++i) {
    ShapeClipSpec a = sample_spec(g1), b = sample_spec(g2);
    EXPECT_EQ(caption(a), caption(b));
    EXPECT_DOUBLE_EQ(a.x0, b.x0);
    EXPECT_DOUBLE_EQ(a.y1, b.y1);
    shapes.insert(int(a.attributes.shape));
    colours.insert(int(a.attributes.colour));
    directions.insert(int(a.attributes.direction));
    backgrounds.insert(int(a.attributes.background));
    // Inside the frame (with margin) at both ends, moving along the captioned axis only.
    for (double c : {a.x0, a.x1, a.y0, a.y1}) {
      EXPECT_GE(c - a.radius, cfg.margin - 1e-9);
      EXPECT_LE(c + a.radius, 1.0 - cfg.margin + 1e-9);
    }
    const double dx = a.x1 - a.x0, dy = a.y1 - a.y0;
    switch (a.attributes.direction) {
      case Direction::kLeft: EXPECT_LT(dx, -cfg.min_travel + 1e-9); EXPECT_EQ(dy, 0.0); break;
      case Direction::kRight: EXPECT_GT(dx, cfg.min_travel - 1e-9); EXPECT_EQ(dy, 0.0); break;
      case Direction::kUp: EXPECT_LT(dy, -cfg.min_travel + 1e-9); EXPECT_EQ(dx, 0.0); break;
      case Direction::kDown: EXPECT_GT(dy, cfg.min_travel - 1e-9); EXPECT_EQ(dx, 0.0); break;
    }
    EXPECT_GE(a.radius, cfg.min_radius);
    EXPECT_LE(a.radius, cfg.max_radius);
  }
  EXPECT_EQ(shapes.size(), 3u);
  EXPECT_EQ(colours.size(), 7u);
  EXPECT_EQ(directions.size(), 4u);
  EXPECT_EQ(backgrounds.size(), 2u);
}

// Neutral start positions: the object starts where it could travel its distance any of the four
// ways, so where it starts says nothing about where it goes; with feasible starts the start tells
// left from right (an object moving right starts in the left part of the frame).
TEST(ShapesDataset, NeutralStartsDoNotGiveTheDirectionAway) {
  EXPECT_EQ(parse_start_position("neutral"), StartPosition::kNeutral);
  EXPECT_EQ(parse_start_position("feasible"), StartPosition::kFeasible);
  EXPECT_FALSE(parse_start_position("centre").has_value());
  EXPECT_STREQ(to_string(StartPosition::kNeutral), "neutral");
  ShapeWorldConfig neutral;
  neutral.start = StartPosition::kNeutral;
  neutral.min_travel = 0.16;
  neutral.max_travel = 0.26;
  auto start_gap = [](const ShapeWorldConfig& cfg, bool check_box) {
    at::Generator g = make_generator(11);
    double sum[4] = {0, 0, 0, 0};
    int count[4] = {0, 0, 0, 0};
    for (int i = 0; i < 2000; ++i) {
      const ShapeClipSpec s = sample_spec(g, cfg);
      const int d = static_cast<int>(s.attributes.direction);
      const bool horizontal = s.attributes.direction == Direction::kLeft || s.attributes.direction == Direction::kRight;
      sum[d] += horizontal ? s.x0 : s.y0;
      ++count[d];
      if (!check_box) continue;
      const double lo = s.radius + cfg.margin, hi = 1.0 - s.radius - cfg.margin;
      const double travel = std::abs(horizontal ? s.x1 - s.x0 : s.y1 - s.y0);
      EXPECT_GE(travel, std::min(cfg.min_travel, 0.5 * (hi - lo)) - 1e-9);
      EXPECT_LE(travel, std::min(cfg.max_travel, 0.5 * (hi - lo)) + 1e-9);
      // Both start coordinates leave room for that travel in every direction.
      for (double c : {s.x0, s.y0}) {
        EXPECT_GE(c - travel, lo - 1e-9);
        EXPECT_LE(c + travel, hi + 1e-9);
      }
      for (double c : {s.x1, s.y1}) {
        EXPECT_GE(c, lo - 1e-9);
        EXPECT_LE(c, hi + 1e-9);
      }
    }
    // Mean start along the motion axis: right minus left and down minus up.
    const auto mean = [&](Direction d) { return sum[int(d)] / count[int(d)]; };
    return std::max(std::abs(mean(Direction::kRight) - mean(Direction::kLeft)),
                    std::abs(mean(Direction::kDown) - mean(Direction::kUp)));
  };
  EXPECT_LT(start_gap(neutral, true), 0.02);
  EXPECT_GT(start_gap(ShapeWorldConfig{}, false), 0.2);
}

TEST(ShapesDataset, RenderedGeometry) {
  ShapeClipSpec spec;
  spec.attributes = {Shape::kSquare, Colour::kYellow, Direction::kRight, Background::kGray};
  spec.radius = 0.125;  // 8 px half side at 64 px: a 16x16 square
  spec.x0 = 0.25, spec.x1 = 0.75, spec.y0 = spec.y1 = 0.5;
  at::Tensor clip = render_clip(spec, 16, 64);
  ASSERT_EQ(clip.sizes(), (std::vector<int64_t>{16, 64, 64, 3}));
  ASSERT_EQ(clip.scalar_type(), at::kByte);
  // First frame: square covers x in [8, 24), y in [24, 40); pure yellow inside, gray outside.
  auto px = [&](int64_t f, int64_t y, int64_t x, int k) { return clip[f][y][x][k].item<int>(); };
  EXPECT_EQ(px(0, 32, 16, 0), 255);
  EXPECT_EQ(px(0, 32, 16, 1), 255);
  EXPECT_EQ(px(0, 32, 16, 2), 0);
  EXPECT_EQ(px(0, 32, 40, 0), 128);
  EXPECT_EQ(px(0, 2, 2, 2), 128);
  at::Tensor mask = render_mask(spec, 16, 64);
  EXPECT_NEAR(mask[0].sum().item<double>(), 256.0, 1e-3);  // exact 16x16 area
  // Last frame: centre at x = 48.
  EXPECT_EQ(px(15, 32, 48, 0), 255);
  EXPECT_EQ(px(15, 32, 16, 0), 128);

  // Areas of the other shapes: circle pi r^2, triangle 2 r^2 (anti-aliased coverage sums).
  spec.attributes.shape = Shape::kCircle;
  EXPECT_NEAR(render_mask(spec, 1, 64)[0].sum().item<double>(), M_PI * 64.0, 1.0);
  spec.attributes.shape = Shape::kTriangle;
  EXPECT_NEAR(render_mask(spec, 1, 64)[0].sum().item<double>(), 2.0 * 64.0, 2.0);

  // Float variant matches the uint8 clip.
  at::Tensor f = render_clip_float(spec, 4, 32);
  ASSERT_EQ(f.sizes(), (std::vector<int64_t>{3, 4, 32, 32}));
  at::Tensor u = render_clip(spec, 4, 32).permute({3, 0, 1, 2}).to(at::kFloat).div(127.5).sub(1.0);
  EXPECT_LT((f - u).abs().max().item<double>(), 1.0 / 127.0);
  EXPECT_LE(f.max().item<double>(), 1.0);
  EXPECT_GE(f.min().item<double>(), -1.0);
}

TEST(ShapesDataset, BatchIsDeterministicAndConsistent) {
  at::Generator g1 = make_generator(3), g2 = make_generator(3);
  ShapeBatch a = sample_batch(g1, 5, 8, 32);
  ShapeBatch b = sample_batch(g2, 5, 8, 32);
  ASSERT_EQ(a.video.sizes(), (std::vector<int64_t>{5, 3, 8, 32, 32}));
  ASSERT_EQ(a.mask.sizes(), (std::vector<int64_t>{5, 1, 8, 32, 32}));
  EXPECT_TRUE(at::equal(a.video, b.video));
  EXPECT_EQ(a.captions, b.captions);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(a.captions[i], caption(a.specs[i]));
    EXPECT_LT((a.video[i] - render_clip_float(a.specs[i], 8, 32)).abs().max().item<double>(), 1e-5);
    EXPECT_GT(a.mask[i].sum().item<double>(), 8 * 10.0);
  }
  // A next batch differs.
  ShapeBatch c = sample_batch(g1, 5, 8, 32);
  EXPECT_FALSE(at::equal(a.video, c.video));
}

}  // namespace
}  // namespace vdm::train
