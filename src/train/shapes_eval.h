// The prompt-adherence measure of the moving-shapes world, computed on decoded frames with no model
// involved: segment the object from the background, then check its colour, shape, motion direction
// and that it persists as one region in every frame.
//
// Segmentation of a frame: the background colour is the per-channel median of a 2-pixel border
// ring; candidate pixels differ from it by more than `detect_threshold` (RGB distance); the object
// colour is the median of the strongest candidates; a pixel belongs to the object when it lies past
// the half-way point from the background colour to the object colour. The largest 4-connected
// region is the object.
#pragma once
#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "train/shapes_dataset.h"

namespace vdm::train {

struct ShapeEvalConfig {
  double detect_threshold = 60.0;  // RGB distance from the background marking candidate pixels
  double min_area = 0.004;         // object area bounds, fraction of the frame area
  double max_area = 0.25;
  double min_main_fraction = 0.85;  // the largest region holds at least this share of object pixels
  double max_area_ratio = 2.0;      // each frame's area within [median / r, median * r]
  double min_travel = 0.08;         // first-to-last displacement on the motion axis, fraction of the side
  double min_axis_ratio = 2.0;      // motion-axis displacement over cross-axis displacement
  double min_r2 = 0.8;              // linearity of the motion-axis trajectory (R^2 of a line fit)
};

// What was found in one frame.
struct FrameMeasure {
  bool found = false;          // any object pixels at all
  int64_t area = 0;            // pixels of the largest region
  double main_fraction = 0;    // largest region / all object pixels
  double cx = 0, cy = 0;       // centroid of the largest region, pixels
  double fill = 0;             // area / bounding-box area
  double skew = 0;             // vertical skewness (upward triangle about -0.57, else 0)
  double corner = 0;           // E[r^4 cos 4theta] / E[r^4] (square about -0.43, circle 0)
  std::array<double, 3> colour{0, 0, 0};      // mean RGB of the region's core pixels
  std::array<double, 3> background{0, 0, 0};  // estimated background RGB
  bool ok = false;             // one region of sane area (set by score_clip)
};

// Segments one frame: frame uint8 [H, W, 3].
FrameMeasure measure_frame(const at::Tensor& frame, const ShapeEvalConfig& config = {});

// Nearest palette entries, and the shape classifier on the region's moments (nearest prototype in
// (skew, corner): circle (0, 0), square (0, -0.43), upward triangle (-0.57, ...)).
Colour nearest_colour(const std::array<double, 3>& rgb);
Background nearest_background(const std::array<double, 3>& rgb);
Shape classify_shape(double skew, double corner);

struct ShapeClipScore {
  bool colour_ok = false;
  bool direction_ok = false;
  bool shape_ok = false;
  bool persistence_ok = false;
  bool background_ok = false;  // informative; not part of the gate
  bool all_ok() const { return colour_ok && direction_ok && shape_ok && persistence_ok; }
  // What was detected ("" when nothing could be measured).
  std::string colour, shape, direction, background;
  double travel_x = 0, travel_y = 0;  // first-to-last displacement from the line fit, fraction of side
  double start_x = 0, start_y = 0;    // the line fit's centre at frame 0, fraction of side
  double r2 = 0;                      // linearity of the motion-axis trajectory
  double fill = 0, skew = 0, corner = 0;  // medians over frames (fill: area / bounding box)
  double size = 0;  // median over frames of sqrt(object area) / frame side (0: too few frames)
  int64_t frames_ok = 0, frames = 0;
  std::string failure;                // human-readable reasons of failed measures ("" when all pass)
  // Why the direction missed: "" (it did not), "reversed" (the caption's axis, the other way),
  // "axis" (the other axis), "unsteady" (the caption's way but too short, slanted or not linear),
  // "unmeasured" (too few frames with an object).
  std::string direction_miss;
};

// Scores a clip: frames uint8 [F, H, W, 3] against the attributes it should show.
ShapeClipScore score_clip(const at::Tensor& frames, const ShapeAttributes& expected,
                          const ShapeEvalConfig& config = {});

struct ShapeRates {
  int64_t n = 0;
  double colour = 0, direction = 0, shape = 0, persistence = 0, background = 0, all = 0;
  // Clips whose direction missed, by ShapeClipScore::direction_miss.
  int64_t reversed = 0, wrong_axis = 0, unsteady = 0, unmeasured = 0;
  double size = 0;  // median ShapeClipScore::size of the clips where it was measured (0: none)
};
ShapeRates summarize(const std::vector<ShapeClipScore>& scores);

}  // namespace vdm::train
