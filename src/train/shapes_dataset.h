// The synthetic "moving shapes" world the default model is trained on.
//
// One object per clip: a circle, square or triangle of one of seven pure colours, moving left,
// right, up or down in a straight line over a black or gray background, staying inside the frame.
// Every clip has the caption `a {colour} {shape} moving {direction} on a {background} background`.
// Clips are rendered with tensor ops (anti-aliased by signed-distance coverage), deterministically
// from a ShapeClipSpec; specs are drawn from a seeded generator.
#pragma once
#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace vdm::train {

enum class Shape { kCircle, kSquare, kTriangle };
enum class Colour { kRed, kGreen, kBlue, kYellow, kWhite, kCyan, kMagenta };
enum class Direction { kLeft, kRight, kUp, kDown };
enum class Background { kBlack, kGray };

constexpr int kNumShapes = 3;
constexpr int kNumColours = 7;
constexpr int kNumDirections = 4;
constexpr int kNumBackgrounds = 2;

const char* to_string(Shape shape);            // "circle"
const char* to_string(Colour colour);          // "red"
const char* to_string(Direction direction);    // "left"
const char* to_string(Background background);  // "black"

// Pure RGB values: red (255,0,0) ... magenta (255,0,255); backgrounds black (0,0,0), gray (128,128,128).
std::array<uint8_t, 3> colour_rgb(Colour colour);
std::array<uint8_t, 3> background_rgb(Background background);

// The attributes a caption names.
struct ShapeAttributes {
  Shape shape = Shape::kCircle;
  Colour colour = Colour::kRed;
  Direction direction = Direction::kRight;
  Background background = Background::kBlack;
};

// One clip. Geometry is in fractions of the frame side (x to the right, y downwards), so the same
// spec renders at any resolution and any frame count (the trajectory is sampled evenly).
struct ShapeClipSpec {
  ShapeAttributes attributes;
  double radius = 0.12;  // half extent: circle radius, half side of the square / triangle box
  double x0 = 0.3, y0 = 0.5;  // centre in the first frame
  double x1 = 0.7, y1 = 0.5;  // centre in the last frame
};

// Where an object starts.
//   kFeasible  anywhere its travel keeps it inside the frame. An object then starts on the side away
//              from where it goes, so the first frame alone tells the likely direction.
//   kNeutral   at a point from which it could travel the same distance left, right, up or down
//              (both coordinates within [lo + travel, hi - travel]): the first frame says nothing
//              about the direction, which only the caption gives. The travel is capped at half the
//              free span so that such a point exists.
enum class StartPosition { kFeasible, kNeutral };
const char* to_string(StartPosition start);  // "feasible" | "neutral"
std::optional<StartPosition> parse_start_position(const std::string& name);

// Ranges the specs are drawn from.
struct ShapeWorldConfig {
  double min_radius = 0.10;  // object half extent, fraction of the frame side
  double max_radius = 0.17;
  double min_travel = 0.25;  // distance covered from first to last frame, fraction of the side
  double max_travel = 0.45;
  double margin = 0.03;      // the object stays this far from the frame border
  StartPosition start = StartPosition::kFeasible;
};

// Draws a spec: attributes uniformly, size/start/travel uniformly within `config` (CPU generator).
ShapeClipSpec sample_spec(at::Generator& generator, const ShapeWorldConfig& config = {});

// `a {colour} {shape} moving {direction} on a {background} background`
std::string caption(const ShapeAttributes& attributes);
inline std::string caption(const ShapeClipSpec& spec) { return caption(spec.attributes); }
// The inverse of caption(); nullopt when `text` is not a caption of this grammar.
std::optional<ShapeAttributes> parse_caption(const std::string& text);
// Every caption of the grammar (3*7*4*2 = 168), in a fixed order.
std::vector<std::string> all_captions();

// Object centre at frame f of `frames` (fractions of the side).
std::array<double, 2> centre_at(const ShapeClipSpec& spec, int64_t f, int64_t frames);

// Renders clips. `device` is where the tensors are built (rendering on the training device avoids
// a host copy). Returns
//   coverage: [B, F, H, W] float in [0, 1] (object mask, anti-aliased), H = W = size
//   rgb:      [B, F, H, W, 3] float in [0, 255]
struct RenderedBatch {
  at::Tensor coverage;
  at::Tensor rgb;
};
RenderedBatch render_specs(const std::vector<ShapeClipSpec>& specs, int64_t frames, int64_t size,
                           c10::Device device = c10::Device(c10::kCPU));

// One clip as uint8 frames [F, H, W, 3].
at::Tensor render_clip(const ShapeClipSpec& spec, int64_t frames, int64_t size);
// One clip for training: float [3, F, H, W] in [-1, 1].
at::Tensor render_clip_float(const ShapeClipSpec& spec, int64_t frames, int64_t size);
// The object mask of one clip: float [F, H, W] in [0, 1].
at::Tensor render_mask(const ShapeClipSpec& spec, int64_t frames, int64_t size);

// A training batch.
struct ShapeBatch {
  at::Tensor video;  // [B, 3, F, H, W] float in [-1, 1], on the requested device
  at::Tensor mask;   // [B, 1, F, H, W] float in [0, 1] (object coverage, for loss weighting)
  std::vector<std::string> captions;
  std::vector<ShapeClipSpec> specs;
};
ShapeBatch sample_batch(at::Generator& generator, int64_t batch, int64_t frames, int64_t size,
                        c10::Device device = c10::Device(c10::kCPU), const ShapeWorldConfig& config = {});

}  // namespace vdm::train
