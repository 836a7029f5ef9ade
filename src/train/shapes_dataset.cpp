#include "train/shapes_dataset.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "core/error.h"

namespace vdm::train {

namespace {

const char* const kShapeNames[kNumShapes] = {"circle", "square", "triangle"};
const char* const kColourNames[kNumColours] = {"red", "green", "blue", "yellow", "white", "cyan", "magenta"};
const char* const kDirectionNames[kNumDirections] = {"left", "right", "up", "down"};
const char* const kBackgroundNames[kNumBackgrounds] = {"black", "gray"};

template <typename Enum, int N>
std::optional<Enum> lookup(const char* const (&names)[N], const std::string& word) {
  for (int i = 0; i < N; ++i) {
    if (word == names[i]) return static_cast<Enum>(i);
  }
  return std::nullopt;
}

int pick(double u, int n) { return std::min(n - 1, static_cast<int>(std::floor(u * n))); }

}  // namespace

const char* to_string(Shape shape) { return kShapeNames[static_cast<int>(shape)]; }
const char* to_string(Colour colour) { return kColourNames[static_cast<int>(colour)]; }
const char* to_string(Direction direction) { return kDirectionNames[static_cast<int>(direction)]; }
const char* to_string(Background background) { return kBackgroundNames[static_cast<int>(background)]; }
const char* to_string(StartPosition start) { return start == StartPosition::kNeutral ? "neutral" : "feasible"; }

std::optional<StartPosition> parse_start_position(const std::string& name) {
  if (name == "feasible") return StartPosition::kFeasible;
  if (name == "neutral") return StartPosition::kNeutral;
  return std::nullopt;
}

std::array<uint8_t, 3> colour_rgb(Colour colour) {
  switch (colour) {
    case Colour::kRed: return {255, 0, 0};
    case Colour::kGreen: return {0, 255, 0};
    case Colour::kBlue: return {0, 0, 255};
    case Colour::kYellow: return {255, 255, 0};
    case Colour::kWhite: return {255, 255, 255};
    case Colour::kCyan: return {0, 255, 255};
    case Colour::kMagenta: return {255, 0, 255};
  }
  return {0, 0, 0};
}

std::array<uint8_t, 3> background_rgb(Background background) {
  return background == Background::kBlack ? std::array<uint8_t, 3>{0, 0, 0}
                                          : std::array<uint8_t, 3>{128, 128, 128};
}

ShapeClipSpec sample_spec(at::Generator& generator, const ShapeWorldConfig& config) {
  if (!(config.min_radius > 0 && config.max_radius >= config.min_radius && config.min_travel >= 0 &&
        config.max_travel >= config.min_travel)) {
    throw InputError("shapes world: invalid ranges (radius " + std::to_string(config.min_radius) + ".." +
                     std::to_string(config.max_radius) + ", travel " + std::to_string(config.min_travel) +
                     ".." + std::to_string(config.max_travel) + "); minimums must not exceed maximums");
  }
  at::Tensor u_t = at::rand({8}, generator, at::TensorOptions().dtype(at::kDouble));
  const double* u = u_t.data_ptr<double>();
  ShapeClipSpec spec;
  spec.attributes.shape = static_cast<Shape>(pick(u[0], kNumShapes));
  spec.attributes.colour = static_cast<Colour>(pick(u[1], kNumColours));
  spec.attributes.direction = static_cast<Direction>(pick(u[2], kNumDirections));
  spec.attributes.background = static_cast<Background>(pick(u[3], kNumBackgrounds));
  spec.radius = config.min_radius + u[4] * (config.max_radius - config.min_radius);
  const double lo = spec.radius + config.margin;
  const double hi = 1.0 - spec.radius - config.margin;
  const double span = hi - lo;
  if (span <= 0) {
    throw InputError("shapes world: objects of half extent " + std::to_string(spec.radius) +
                     " with margin " + std::to_string(config.margin) + " do not fit in the frame");
  }
  const Direction d = spec.attributes.direction;
  const bool positive = d == Direction::kRight || d == Direction::kDown;
  const double drawn_travel = config.min_travel + u[5] * (config.max_travel - config.min_travel);
  double travel, start, across;
  if (config.start == StartPosition::kNeutral) {
    // Both coordinates from the box every direction can leave by `travel` and stay inside.
    travel = std::min(0.5 * span, drawn_travel);
    const double box = span - 2 * travel;
    start = lo + travel + u[6] * box;
    across = lo + travel + u[7] * box;
  } else {
    travel = std::min(span, drawn_travel);
    start = positive ? lo + u[6] * (span - travel) : hi - u[6] * (span - travel);
    across = lo + u[7] * span;
  }
  const double end = positive ? start + travel : start - travel;
  if (d == Direction::kLeft || d == Direction::kRight) {
    spec.x0 = start, spec.x1 = end, spec.y0 = across, spec.y1 = across;
  } else {
    spec.y0 = start, spec.y1 = end, spec.x0 = across, spec.x1 = across;
  }
  return spec;
}

std::string caption(const ShapeAttributes& a) {
  return std::string("a ") + to_string(a.colour) + " " + to_string(a.shape) + " moving " +
         to_string(a.direction) + " on a " + to_string(a.background) + " background";
}

std::optional<ShapeAttributes> parse_caption(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> w;
  for (std::string word; in >> word;) w.push_back(word);
  if (w.size() != 9 || w[0] != "a" || w[3] != "moving" || w[5] != "on" || w[6] != "a" || w[8] != "background") {
    return std::nullopt;
  }
  auto colour = lookup<Colour>(kColourNames, w[1]);
  auto shape = lookup<Shape>(kShapeNames, w[2]);
  auto direction = lookup<Direction>(kDirectionNames, w[4]);
  auto background = lookup<Background>(kBackgroundNames, w[7]);
  if (!colour || !shape || !direction || !background) return std::nullopt;
  return ShapeAttributes{*shape, *colour, *direction, *background};
}

std::vector<std::string> all_captions() {
  std::vector<std::string> out;
  for (int s = 0; s < kNumShapes; ++s)
    for (int c = 0; c < kNumColours; ++c)
      for (int d = 0; d < kNumDirections; ++d)
        for (int b = 0; b < kNumBackgrounds; ++b)
          out.push_back(caption(ShapeAttributes{static_cast<Shape>(s), static_cast<Colour>(c),
                                                static_cast<Direction>(d), static_cast<Background>(b)}));
  return out;
}

std::array<double, 2> centre_at(const ShapeClipSpec& spec, int64_t f, int64_t frames) {
  const double t = frames > 1 ? static_cast<double>(f) / static_cast<double>(frames - 1) : 0.0;
  return {spec.x0 + (spec.x1 - spec.x0) * t, spec.y0 + (spec.y1 - spec.y0) * t};
}

RenderedBatch render_specs(const std::vector<ShapeClipSpec>& specs, int64_t frames, int64_t size,
                           c10::Device device) {
  if (specs.empty() || frames < 1 || size < 4) {
    throw InputError("shapes world: cannot render " + std::to_string(specs.size()) + " clips of " +
                     std::to_string(frames) + " frames at " + std::to_string(size) +
                     " pixels; need at least one clip, one frame and 4 pixels");
  }
  const int64_t B = static_cast<int64_t>(specs.size());
  std::vector<float> cx(B * frames), cy(B * frames), radius(B), shape(B), obj(B * 3), bg(B * 3);
  for (int64_t b = 0; b < B; ++b) {
    const ShapeClipSpec& s = specs[b];
    for (int64_t f = 0; f < frames; ++f) {
      auto c = centre_at(s, f, frames);
      cx[b * frames + f] = static_cast<float>(c[0]);
      cy[b * frames + f] = static_cast<float>(c[1]);
    }
    radius[b] = static_cast<float>(s.radius);
    shape[b] = static_cast<float>(static_cast<int>(s.attributes.shape));
    auto o = colour_rgb(s.attributes.colour);
    auto g = background_rgb(s.attributes.background);
    for (int k = 0; k < 3; ++k) obj[b * 3 + k] = o[k], bg[b * 3 + k] = g[k];
  }
  auto f32 = at::TensorOptions().dtype(at::kFloat);
  auto to_dev = [&](std::vector<float>& v, at::IntArrayRef shape_) {
    return at::from_blob(v.data(), shape_, f32).clone().to(device);
  };
  const double px = static_cast<double>(size);
  // Distances are measured in pixels so that coverage falls off over one pixel at any size.
  at::Tensor cx_t = to_dev(cx, {B, frames, 1, 1}).mul(px);
  at::Tensor cy_t = to_dev(cy, {B, frames, 1, 1}).mul(px);
  at::Tensor r_t = to_dev(radius, {B, 1, 1, 1}).mul(px);
  at::Tensor shape_t = to_dev(shape, {B, 1, 1, 1});
  at::Tensor grid = at::arange(size, f32.device(device)).add(0.5);
  at::Tensor dx = grid.view({1, 1, 1, size}) - cx_t;  // [B, F, 1, W]
  at::Tensor dy = grid.view({1, 1, size, 1}) - cy_t;  // [B, F, H, 1]
  dx = dx.expand({B, frames, size, size});
  dy = dy.expand({B, frames, size, size});

  at::Tensor circle = at::sqrt(dx * dx + dy * dy) - r_t;
  at::Tensor square = at::maximum(dx.abs(), dy.abs()) - r_t;
  // Triangle pointing up, inscribed in the box [cx-r, cx+r] x [cy-r, cy+r]: apex (cx, cy-r),
  // base from (cx-r, cy+r) to (cx+r, cy+r). Signed distance = max over the three edges.
  const double inv_sqrt5 = 1.0 / std::sqrt(5.0);
  at::Tensor base = dy - r_t;
  at::Tensor left = (dx * -2.0 - dy - r_t) * inv_sqrt5;
  at::Tensor right = (dx * 2.0 - dy - r_t) * inv_sqrt5;
  at::Tensor triangle = at::maximum(base, at::maximum(left, right));
  at::Tensor sd = at::where(shape_t == 0, circle, at::where(shape_t == 1, square, triangle));

  RenderedBatch out;
  out.coverage = (0.5 - sd).clamp(0.0, 1.0);  // [B, F, H, W]
  at::Tensor obj_t = to_dev(obj, {B, 1, 1, 1, 3});
  at::Tensor bg_t = to_dev(bg, {B, 1, 1, 1, 3});
  out.rgb = bg_t + (obj_t - bg_t) * out.coverage.unsqueeze(-1);  // [B, F, H, W, 3]
  return out;
}

at::Tensor render_clip(const ShapeClipSpec& spec, int64_t frames, int64_t size) {
  RenderedBatch r = render_specs({spec}, frames, size);
  return r.rgb[0].round().clamp(0, 255).to(at::kByte).contiguous();
}

at::Tensor render_clip_float(const ShapeClipSpec& spec, int64_t frames, int64_t size) {
  RenderedBatch r = render_specs({spec}, frames, size);
  return r.rgb[0].permute({3, 0, 1, 2}).div(127.5).sub(1.0).contiguous();
}

at::Tensor render_mask(const ShapeClipSpec& spec, int64_t frames, int64_t size) {
  return render_specs({spec}, frames, size).coverage[0].contiguous();
}

ShapeBatch sample_batch(at::Generator& generator, int64_t batch, int64_t frames, int64_t size,
                        c10::Device device, const ShapeWorldConfig& config) {
  ShapeBatch out;
  out.specs.reserve(batch);
  for (int64_t b = 0; b < batch; ++b) {
    out.specs.push_back(sample_spec(generator, config));
    out.captions.push_back(caption(out.specs.back()));
  }
  RenderedBatch r = render_specs(out.specs, frames, size, device);
  out.video = r.rgb.permute({0, 4, 1, 2, 3}).div(127.5).sub(1.0).contiguous();  // [B, 3, F, H, W]
  out.mask = r.coverage.unsqueeze(1).contiguous();                              // [B, 1, F, H, W]
  return out;
}

}  // namespace vdm::train
