// The adherence measure: perfect on rendered ground truth (also under mild noise and blur), and
// failing on deliberately wrong clips.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include "core/runtime.h"
#include "train/shapes_dataset.h"
#include "train/shapes_eval.h"

namespace vdm::train {
namespace {

constexpr int64_t kFrames = 16;
constexpr int64_t kSize = 64;

// Blur (3x3 box) and Gaussian noise, as a decoder might leave them.
at::Tensor degrade(const at::Tensor& clip, double noise_sigma, at::Generator& gen) {
  at::Tensor x = clip.to(at::kFloat).permute({0, 3, 1, 2});  // [F, 3, H, W]
  x = at::avg_pool2d(x, {3, 3}, {1, 1}, {1, 1}, false, false);
  x = x + at::randn(x.sizes(), gen, x.options()) * noise_sigma;
  return x.permute({0, 2, 3, 1}).round().clamp(0, 255).to(at::kByte).contiguous();
}

TEST(ShapesEval, GroundTruthScoresPerfectly) {
  at::Generator gen = make_generator(11);
  at::Generator noise = make_generator(12);
  std::vector<ShapeClipScore> clean, noisy;
  std::map<std::string, std::pair<double, double>> fill_range, skew_range, corner_range;
  for (int i = 0; i < 150; ++i) {
    ShapeClipSpec spec = sample_spec(gen);
    at::Tensor clip = render_clip(spec, kFrames, kSize);
    ShapeClipScore s = score_clip(clip, spec.attributes);
    EXPECT_TRUE(s.all_ok() && s.background_ok) << caption(spec) << ": " << s.failure;
    // Where the object starts (a triangle's centroid sits below its box centre).
    EXPECT_NEAR(s.start_x, spec.x0, 0.02) << caption(spec);
    if (spec.attributes.shape != Shape::kTriangle) {
      EXPECT_NEAR(s.start_y, spec.y0, 0.02) << caption(spec);
    }
    clean.push_back(s);
    ShapeClipScore n = score_clip(degrade(clip, 8.0, noise), spec.attributes);
    EXPECT_TRUE(n.all_ok()) << "degraded " << caption(spec) << ": " << n.failure;
    noisy.push_back(n);
    auto& fr = fill_range.emplace(s.shape, std::make_pair(1e9, -1e9)).first->second;
    fr.first = std::min(fr.first, s.fill), fr.second = std::max(fr.second, s.fill);
    auto& sr = skew_range.emplace(s.shape, std::make_pair(1e9, -1e9)).first->second;
    sr.first = std::min(sr.first, s.skew), sr.second = std::max(sr.second, s.skew);
    auto& cr = corner_range.emplace(s.shape, std::make_pair(1e9, -1e9)).first->second;
    cr.first = std::min(cr.first, s.corner), cr.second = std::max(cr.second, s.corner);
  }
  for (const auto& [shape, r] : fill_range) {
    std::printf("%-9s fill %.3f..%.3f  skew %.3f..%.3f  corner %.3f..%.3f\n", shape.c_str(), r.first, r.second,
                skew_range[shape].first, skew_range[shape].second, corner_range[shape].first,
                corner_range[shape].second);
  }
  ShapeRates r = summarize(clean);
  EXPECT_EQ(r.n, 150);
  EXPECT_DOUBLE_EQ(r.colour, 1.0);
  EXPECT_DOUBLE_EQ(r.direction, 1.0);
  EXPECT_DOUBLE_EQ(r.shape, 1.0);
  EXPECT_DOUBLE_EQ(r.persistence, 1.0);
  EXPECT_DOUBLE_EQ(summarize(noisy).all, 1.0);
}

TEST(ShapesEval, OtherResolutionsAndFrameCounts) {
  at::Generator gen = make_generator(5);
  for (int64_t size : {48, 96, 128}) {
    for (int i = 0; i < 20; ++i) {
      ShapeClipSpec spec = sample_spec(gen);
      ShapeClipScore s = score_clip(render_clip(spec, 8, size), spec.attributes);
      EXPECT_TRUE(s.all_ok()) << size << " px " << caption(spec) << ": " << s.failure;
    }
  }
}

ShapeClipSpec fixed_spec() {
  ShapeClipSpec spec;
  spec.attributes = {Shape::kCircle, Colour::kCyan, Direction::kRight, Background::kBlack};
  spec.radius = 0.12;
  spec.x0 = 0.2, spec.x1 = 0.7, spec.y0 = spec.y1 = 0.4;
  return spec;
}

// The size measure: sqrt(area) / side of the rendered object, whatever the resolution; a circle of
// radius r covers pi r^2 of the frame, a square (2r)^2.
TEST(ShapesEval, SizeIsTheObjectsSideFraction) {
  ShapeClipSpec spec = fixed_spec();
  for (int64_t size : {64, 128}) {
    for (double radius : {0.1, 0.2}) {
      spec.radius = radius;
      spec.attributes.shape = Shape::kCircle;
      EXPECT_NEAR(score_clip(render_clip(spec, kFrames, size), spec.attributes).size, std::sqrt(M_PI) * radius, 0.012)
          << size << " px, radius " << radius;
      spec.attributes.shape = Shape::kSquare;
      EXPECT_NEAR(score_clip(render_clip(spec, kFrames, size), spec.attributes).size, 2 * radius, 0.012)
          << size << " px, radius " << radius;
    }
  }
  spec.radius = 0.1;
  ShapeClipScore small = score_clip(render_clip(spec, kFrames, 64), spec.attributes);
  spec.radius = 0.2;
  ShapeClipScore large = score_clip(render_clip(spec, kFrames, 64), spec.attributes);
  EXPECT_DOUBLE_EQ(summarize({small, large, large}).size, large.size);
  EXPECT_DOUBLE_EQ(summarize({small, small, large}).size, small.size);
}

TEST(ShapesEval, WrongColourFailsOnlyColour) {
  ShapeClipSpec spec = fixed_spec();
  ShapeClipSpec wrong = spec;
  wrong.attributes.colour = Colour::kGreen;
  ShapeClipScore s = score_clip(render_clip(wrong, kFrames, kSize), spec.attributes);
  EXPECT_FALSE(s.colour_ok);
  EXPECT_EQ(s.colour, "green");
  EXPECT_TRUE(s.direction_ok && s.shape_ok && s.persistence_ok) << s.failure;
}

TEST(ShapesEval, WrongShapeFailsOnlyShape) {
  ShapeClipSpec spec = fixed_spec();
  for (Shape other : {Shape::kSquare, Shape::kTriangle}) {
    ShapeClipSpec wrong = spec;
    wrong.attributes.shape = other;
    ShapeClipScore s = score_clip(render_clip(wrong, kFrames, kSize), spec.attributes);
    EXPECT_FALSE(s.shape_ok);
    EXPECT_EQ(s.shape, to_string(other));
    EXPECT_TRUE(s.colour_ok && s.direction_ok && s.persistence_ok) << s.failure;
  }
}

TEST(ShapesEval, ReversedAndShuffledMotionFailDirection) {
  ShapeClipSpec spec = fixed_spec();
  at::Tensor clip = render_clip(spec, kFrames, kSize);
  ShapeClipScore reversed = score_clip(clip.flip({0}), spec.attributes);
  EXPECT_FALSE(reversed.direction_ok);
  EXPECT_EQ(reversed.direction, "left");
  EXPECT_EQ(reversed.direction_miss, "reversed");
  EXPECT_TRUE(reversed.colour_ok && reversed.shape_ok && reversed.persistence_ok);

  // Several fixed shuffles: a permuted trajectory is not a steady line.
  at::Generator gen = make_generator(99);
  for (int k = 0; k < 10; ++k) {
    at::Tensor perm = at::randperm(kFrames, gen, at::TensorOptions().dtype(at::kLong));
    ShapeClipScore s = score_clip(clip.index_select(0, perm), spec.attributes);
    EXPECT_FALSE(s.direction_ok) << "shuffle " << k << " R2 " << s.r2;
    EXPECT_TRUE(s.persistence_ok);
  }

  // Up/down: a vertical clip measured against a horizontal caption, and a static object.
  ShapeClipSpec vertical = spec;
  vertical.attributes.direction = Direction::kUp;
  vertical.x1 = vertical.x0 = 0.5, vertical.y0 = 0.75, vertical.y1 = 0.3;
  ShapeClipScore v = score_clip(render_clip(vertical, kFrames, kSize), spec.attributes);
  EXPECT_FALSE(v.direction_ok);
  EXPECT_EQ(v.direction, "up");
  EXPECT_EQ(v.direction_miss, "axis");
  ShapeClipScore right = score_clip(render_clip(vertical, kFrames, kSize), vertical.attributes);
  EXPECT_TRUE(right.direction_ok);
  EXPECT_EQ(right.direction_miss, "");
  ShapeClipSpec still = spec;
  still.x1 = still.x0;
  ShapeClipScore st = score_clip(render_clip(still, kFrames, kSize), spec.attributes);
  EXPECT_FALSE(st.direction_ok);
  EXPECT_EQ(st.direction_miss, "unsteady");
  ShapeClipScore blank = score_clip(at::zeros({kFrames, kSize, kSize, 3}, at::kByte), spec.attributes);
  EXPECT_EQ(blank.direction_miss, "unmeasured");
  // The rates count each kind of miss.
  ShapeRates r = summarize({reversed, v, right, st, blank, reversed});
  EXPECT_EQ(r.reversed, 2);
  EXPECT_EQ(r.wrong_axis, 1);
  EXPECT_EQ(r.unsteady, 1);
  EXPECT_EQ(r.unmeasured, 1);
  EXPECT_NEAR(r.direction, 1.0 / 6.0, 1e-12);
}

TEST(ShapesEval, MissingOrSplitObjectFailsPersistence) {
  ShapeClipSpec spec = fixed_spec();
  at::Tensor clip = render_clip(spec, kFrames, kSize);
  at::Tensor missing = clip.clone();
  missing[5].zero_();  // black background only
  ShapeClipScore s = score_clip(missing, spec.attributes);
  EXPECT_FALSE(s.persistence_ok);
  EXPECT_EQ(s.frames_ok, kFrames - 1);
  EXPECT_TRUE(s.colour_ok && s.shape_ok && s.direction_ok) << s.failure;

  // A second object of the same colour in some frames.
  at::Tensor split = clip.clone();
  split.slice(0, 3, 6).slice(1, 50, 60).slice(2, 5, 15).select(3, 1).fill_(255);
  split.slice(0, 3, 6).slice(1, 50, 60).slice(2, 5, 15).select(3, 2).fill_(255);
  EXPECT_FALSE(score_clip(split, spec.attributes).persistence_ok);

  // The object shrinking to a speck and growing to fill the frame.
  ShapeClipSpec tiny = spec;
  tiny.radius = 0.02;
  EXPECT_FALSE(score_clip(render_clip(tiny, kFrames, kSize), spec.attributes).persistence_ok);
  at::Tensor flooded = clip.clone();
  flooded[8].select(2, 1).fill_(255);
  flooded[8].select(2, 2).fill_(255);
  EXPECT_FALSE(score_clip(flooded, spec.attributes).persistence_ok);

  // Pure noise finds nothing sane.
  at::Generator gen = make_generator(1);
  at::Tensor noise = at::randint(0, 256, {kFrames, kSize, kSize, 3}, gen, at::TensorOptions().dtype(at::kLong)).to(at::kByte);
  ShapeClipScore n = score_clip(noise, spec.attributes);
  EXPECT_FALSE(n.persistence_ok);
  EXPECT_FALSE(n.all_ok());
}

TEST(ShapesEval, RejectsMalformedInput) {
  EXPECT_THROW(score_clip(at::zeros({4, 8, 8}, at::kByte), fixed_spec().attributes), std::exception);
  EXPECT_THROW(score_clip(at::zeros({4, 8, 8, 3}, at::kFloat), fixed_spec().attributes), std::exception);
}

}  // namespace
}  // namespace vdm::train
