#include "train/shapes_eval.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <limits>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/error.h"

namespace vdm::train {

namespace {

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  const size_t mid = v.size() / 2;
  std::nth_element(v.begin(), v.begin() + mid, v.end());
  double hi = v[mid];
  if (v.size() % 2 == 1) return hi;
  double lo = *std::max_element(v.begin(), v.begin() + mid);
  return 0.5 * (lo + hi);
}

double quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0.0;
  const size_t k = std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5));
  std::nth_element(v.begin(), v.begin() + k, v.end());
  return v[k];
}

double dist2(const std::array<double, 3>& a, const std::array<double, 3>& b) {
  double s = 0;
  for (int k = 0; k < 3; ++k) s += (a[k] - b[k]) * (a[k] - b[k]);
  return s;
}

std::array<double, 3> as_double(const std::array<uint8_t, 3>& c) { return {double(c[0]), double(c[1]), double(c[2])}; }

// Least-squares line through (t, v); returns slope and R^2 (1 when v is constant).
void fit_line(const std::vector<double>& t, const std::vector<double>& v, double* slope, double* r2) {
  const double n = static_cast<double>(t.size());
  double mt = 0, mv = 0;
  for (size_t i = 0; i < t.size(); ++i) mt += t[i], mv += v[i];
  mt /= n, mv /= n;
  double stt = 0, stv = 0, svv = 0;
  for (size_t i = 0; i < t.size(); ++i) {
    stt += (t[i] - mt) * (t[i] - mt);
    stv += (t[i] - mt) * (v[i] - mv);
    svv += (v[i] - mv) * (v[i] - mv);
  }
  *slope = stt > 0 ? stv / stt : 0.0;
  *r2 = svv > 1e-12 && stt > 0 ? (stv * stv) / (stt * svv) : 1.0;
}

void append_reason(std::string& out, const std::string& reason) {
  if (!out.empty()) out += "; ";
  out += reason;
}

}  // namespace

Colour nearest_colour(const std::array<double, 3>& rgb) {
  int best = 0;
  double best_d = std::numeric_limits<double>::max();
  for (int c = 0; c < kNumColours; ++c) {
    double d = dist2(rgb, as_double(colour_rgb(static_cast<Colour>(c))));
    if (d < best_d) best_d = d, best = c;
  }
  return static_cast<Colour>(best);
}

Background nearest_background(const std::array<double, 3>& rgb) {
  double d_black = dist2(rgb, as_double(background_rgb(Background::kBlack)));
  double d_gray = dist2(rgb, as_double(background_rgb(Background::kGray)));
  return d_black <= d_gray ? Background::kBlack : Background::kGray;
}

Shape classify_shape(double skew, double corner) {
  // Prototypes measured on rendered clips (tests/unit/shapes_eval_test.cpp prints their ranges).
  struct Proto {
    Shape shape;
    double skew, corner;
  };
  const Proto protos[] = {{Shape::kCircle, 0.0, 0.0}, {Shape::kSquare, 0.0, -0.43}, {Shape::kTriangle, -0.58, 0.04}};
  Shape best = Shape::kCircle;
  double best_d = std::numeric_limits<double>::max();
  for (const Proto& p : protos) {
    const double d = (skew - p.skew) * (skew - p.skew) + (corner - p.corner) * (corner - p.corner);
    if (d < best_d) best_d = d, best = p.shape;
  }
  return best;
}

FrameMeasure measure_frame(const at::Tensor& frame, const ShapeEvalConfig& config) {
  if (frame.dim() != 3 || frame.size(2) != 3 || frame.scalar_type() != at::kByte) {
    throw InputError(fmt::format("shapes eval: expected a frame uint8 [H, W, 3], got {} of {}",
                                 fmt::join(frame.sizes().vec(), "x"), c10::toString(frame.scalar_type())));
  }
  at::Tensor f = frame.to(at::kCPU).contiguous();
  const int64_t H = f.size(0), W = f.size(1);
  const uint8_t* p = f.data_ptr<uint8_t>();
  auto px = [&](int64_t y, int64_t x) { return p + (y * W + x) * 3; };
  FrameMeasure m;

  // Background: per-channel median of a 2-pixel border ring.
  const int64_t ring = std::min<int64_t>(2, std::min(H, W) / 2);
  std::array<std::vector<double>, 3> border;
  for (int64_t y = 0; y < H; ++y) {
    for (int64_t x = 0; x < W; ++x) {
      if (y < ring || y >= H - ring || x < ring || x >= W - ring) {
        for (int k = 0; k < 3; ++k) border[k].push_back(px(y, x)[k]);
      }
    }
  }
  for (int k = 0; k < 3; ++k) m.background[k] = median(border[k]);

  // Candidates far from the background; object colour from the strongest of them.
  std::vector<double> dist(H * W);
  std::vector<double> cand_dist;
  for (int64_t i = 0; i < H * W; ++i) {
    const uint8_t* q = p + i * 3;
    double s = 0;
    for (int k = 0; k < 3; ++k) s += (q[k] - m.background[k]) * (q[k] - m.background[k]);
    dist[i] = std::sqrt(s);
    if (dist[i] > config.detect_threshold) cand_dist.push_back(dist[i]);
  }
  if (cand_dist.empty()) return m;
  const double strong = 0.5 * quantile(cand_dist, 0.95);
  std::array<std::vector<double>, 3> strong_px;
  for (int64_t i = 0; i < H * W; ++i) {
    if (dist[i] > config.detect_threshold && dist[i] >= strong) {
      for (int k = 0; k < 3; ++k) strong_px[k].push_back(p[i * 3 + k]);
    }
  }
  std::array<double, 3> obj;
  for (int k = 0; k < 3; ++k) obj[k] = median(strong_px[k]);
  std::array<double, 3> axis;
  double axis2 = 0;
  for (int k = 0; k < 3; ++k) axis[k] = obj[k] - m.background[k], axis2 += axis[k] * axis[k];
  if (axis2 <= 1e-9) return m;

  // Object pixels: past the half-way point from background to object colour.
  std::vector<double> proj(H * W);
  std::vector<uint8_t> mask(H * W, 0);
  int64_t total = 0;
  for (int64_t i = 0; i < H * W; ++i) {
    const uint8_t* q = p + i * 3;
    double d = 0;
    for (int k = 0; k < 3; ++k) d += (q[k] - m.background[k]) * axis[k];
    proj[i] = d / axis2;
    if (proj[i] > 0.5 && dist[i] > 0.5 * config.detect_threshold) mask[i] = 1, ++total;
  }
  if (total == 0) return m;
  m.found = true;

  // Largest 4-connected region.
  std::vector<int32_t> label(H * W, -1);
  std::vector<int64_t> stack;
  int32_t best_label = -1;
  int64_t best_size = 0;
  int32_t next = 0;
  for (int64_t s = 0; s < H * W; ++s) {
    if (!mask[s] || label[s] >= 0) continue;
    int64_t size = 0;
    stack.push_back(s);
    label[s] = next;
    while (!stack.empty()) {
      int64_t i = stack.back();
      stack.pop_back();
      ++size;
      const int64_t y = i / W, x = i % W;
      const int64_t nb[4] = {x > 0 ? i - 1 : -1, x + 1 < W ? i + 1 : -1, y > 0 ? i - W : -1, y + 1 < H ? i + W : -1};
      for (int64_t j : nb) {
        if (j >= 0 && mask[j] && label[j] < 0) label[j] = next, stack.push_back(j);
      }
    }
    if (size > best_size) best_size = size, best_label = next;
    ++next;
  }
  m.area = best_size;
  m.main_fraction = static_cast<double>(best_size) / static_cast<double>(total);

  int64_t x0 = W, x1 = -1, y0 = H, y1 = -1;
  double sx = 0, sy = 0;
  std::array<double, 3> core_sum{0, 0, 0}, all_sum{0, 0, 0};
  int64_t core_n = 0;
  for (int64_t i = 0; i < H * W; ++i) {
    if (label[i] != best_label) continue;
    const int64_t y = i / W, x = i % W;
    x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
    sx += x + 0.5, sy += y + 0.5;
    for (int k = 0; k < 3; ++k) all_sum[k] += p[i * 3 + k];
    if (proj[i] >= 0.75) {
      for (int k = 0; k < 3; ++k) core_sum[k] += p[i * 3 + k];
      ++core_n;
    }
  }
  m.cx = sx / static_cast<double>(best_size);
  m.cy = sy / static_cast<double>(best_size);
  const int64_t bw = x1 - x0 + 1, bh = y1 - y0 + 1;
  m.fill = static_cast<double>(best_size) / static_cast<double>(bw * bh);
  // Central moments of the region: the vertical skewness separates the upward triangle (about
  // -0.57) from the symmetric shapes, and the four-fold moment E[r^4 cos 4theta] / E[r^4] separates
  // the square (about -0.43: mass in the corners) from the circle (0).
  double m02 = 0, m03 = 0, c4 = 0, r4 = 0;
  for (int64_t i = 0; i < H * W; ++i) {
    if (label[i] != best_label) continue;
    const double dx = static_cast<double>(i % W) + 0.5 - m.cx;
    const double dy = static_cast<double>(i / W) + 0.5 - m.cy;
    const double xx = dx * dx, yy = dy * dy;
    m02 += yy, m03 += yy * dy;
    c4 += (xx - yy) * (xx - yy) - 4.0 * xx * yy;
    r4 += (xx + yy) * (xx + yy);
  }
  const double n = static_cast<double>(best_size);
  m02 /= n, m03 /= n;
  m.skew = m02 > 1e-9 ? m03 / std::pow(m02, 1.5) : 0.0;
  m.corner = r4 > 1e-9 ? c4 / r4 : 0.0;
  for (int k = 0; k < 3; ++k) {
    m.colour[k] = core_n > 0 ? core_sum[k] / core_n : all_sum[k] / static_cast<double>(best_size);
  }
  return m;
}

ShapeClipScore score_clip(const at::Tensor& frames, const ShapeAttributes& expected, const ShapeEvalConfig& config) {
  if (frames.dim() != 4 || frames.size(3) != 3 || frames.scalar_type() != at::kByte) {
    throw InputError(fmt::format("shapes eval: expected frames uint8 [F, H, W, 3], got {} of {}",
                                 fmt::join(frames.sizes().vec(), "x"), c10::toString(frames.scalar_type())));
  }
  const int64_t F = frames.size(0), H = frames.size(1), W = frames.size(2);
  const double frame_area = static_cast<double>(H * W);
  ShapeClipScore s;
  s.frames = F;
  std::vector<FrameMeasure> ms;
  for (int64_t f = 0; f < F; ++f) ms.push_back(measure_frame(frames[f], config));

  // Persistence: one region of sane, stable area in every frame.
  std::vector<double> areas;
  for (FrameMeasure& m : ms) {
    const double a = static_cast<double>(m.area) / frame_area;
    m.ok = m.found && a >= config.min_area && a <= config.max_area && m.main_fraction >= config.min_main_fraction;
    if (m.ok) areas.push_back(static_cast<double>(m.area));
  }
  const double med_area = median(areas);
  for (FrameMeasure& m : ms) {
    if (m.ok && (m.area > med_area * config.max_area_ratio || m.area * config.max_area_ratio < med_area)) m.ok = false;
    if (m.ok) ++s.frames_ok;
  }
  s.persistence_ok = s.frames_ok == F;
  if (!s.persistence_ok) append_reason(s.failure, fmt::format("object is one sane region in {}/{} frames", s.frames_ok, F));

  // Background (informative).
  std::array<double, 3> bg{0, 0, 0};
  for (const FrameMeasure& m : ms)
    for (int k = 0; k < 3; ++k) bg[k] += m.background[k] / static_cast<double>(F);
  Background bg_found = nearest_background(bg);
  s.background = to_string(bg_found);
  s.background_ok = bg_found == expected.background;

  // Colour: mean core colour over frames where an object was found.
  std::array<double, 3> colour{0, 0, 0};
  int64_t found = 0;
  for (const FrameMeasure& m : ms) {
    if (!m.found) continue;
    for (int k = 0; k < 3; ++k) colour[k] += m.colour[k];
    ++found;
  }
  if (found > 0) {
    for (int k = 0; k < 3; ++k) colour[k] /= static_cast<double>(found);
    Colour c = nearest_colour(colour);
    s.colour = to_string(c);
    s.colour_ok = c == expected.colour;
    if (!s.colour_ok) {
      append_reason(s.failure, fmt::format("colour {} (rgb {:.0f},{:.0f},{:.0f}), expected {}", s.colour, colour[0],
                                           colour[1], colour[2], to_string(expected.colour)));
    }
  } else {
    append_reason(s.failure, "no object found in any frame");
  }

  // Shape and direction use the frames where the object is a sane region; at least half of them.
  std::vector<double> fills, skews, corners, t, xs, ys, sizes;
  for (int64_t f = 0; f < F; ++f) {
    if (!ms[f].ok) continue;
    fills.push_back(ms[f].fill);
    sizes.push_back(std::sqrt(static_cast<double>(ms[f].area) / static_cast<double>(H * W)));
    skews.push_back(ms[f].skew);
    corners.push_back(ms[f].corner);
    t.push_back(static_cast<double>(f));
    xs.push_back(ms[f].cx / static_cast<double>(W));
    ys.push_back(ms[f].cy / static_cast<double>(H));
  }
  const bool enough = s.frames_ok >= std::max<int64_t>(2, (F + 1) / 2);
  if (enough) {
    s.fill = median(fills);
    s.size = median(sizes);
    s.skew = median(skews);
    s.corner = median(corners);
    Shape sh = classify_shape(s.skew, s.corner);
    s.shape = to_string(sh);
    s.shape_ok = sh == expected.shape;
    if (!s.shape_ok) {
      append_reason(s.failure, fmt::format("shape {} (skew {:.2f}, corner {:.2f}, fill {:.2f}), expected {}",
                                           s.shape, s.skew, s.corner, s.fill, to_string(expected.shape)));
    }
    double slope_x, r2_x, slope_y, r2_y;
    fit_line(t, xs, &slope_x, &r2_x);
    fit_line(t, ys, &slope_y, &r2_y);
    s.travel_x = slope_x * static_cast<double>(F - 1);
    s.travel_y = slope_y * static_cast<double>(F - 1);
    auto mean = [](const std::vector<double>& v) { return std::accumulate(v.begin(), v.end(), 0.0) / v.size(); };
    s.start_x = mean(xs) - slope_x * mean(t);
    s.start_y = mean(ys) - slope_y * mean(t);
    const bool horizontal = std::abs(s.travel_x) >= std::abs(s.travel_y);
    const double main = horizontal ? s.travel_x : s.travel_y;
    const double cross = horizontal ? s.travel_y : s.travel_x;
    s.r2 = horizontal ? r2_x : r2_y;
    Direction d = horizontal ? (main >= 0 ? Direction::kRight : Direction::kLeft)
                             : (main >= 0 ? Direction::kDown : Direction::kUp);
    s.direction = to_string(d);
    const bool moving = std::abs(main) >= config.min_travel;
    const bool straight = std::abs(main) >= config.min_axis_ratio * std::abs(cross);
    const bool steady = s.r2 >= config.min_r2;
    s.direction_ok = d == expected.direction && moving && straight && steady;
    const bool same_axis = horizontal == (expected.direction == Direction::kLeft || expected.direction == Direction::kRight);
    if (!s.direction_ok) {
      s.direction_miss = d == expected.direction ? "unsteady" : same_axis ? "reversed" : "axis";
      append_reason(s.failure, fmt::format("motion {} (travel x {:+.2f}, y {:+.2f}, R2 {:.2f}), expected {}", s.direction,
                                           s.travel_x, s.travel_y, s.r2, to_string(expected.direction)));
    }
  } else {
    append_reason(s.failure, "too few frames with a sane object to judge shape and motion");
    s.direction_miss = "unmeasured";
  }
  return s;
}

ShapeRates summarize(const std::vector<ShapeClipScore>& scores) {
  ShapeRates r;
  r.n = static_cast<int64_t>(scores.size());
  if (r.n == 0) return r;
  for (const ShapeClipScore& s : scores) {
    r.colour += s.colour_ok, r.direction += s.direction_ok, r.shape += s.shape_ok;
    r.persistence += s.persistence_ok, r.background += s.background_ok, r.all += s.all_ok();
    r.reversed += s.direction_miss == "reversed", r.wrong_axis += s.direction_miss == "axis";
    r.unsteady += s.direction_miss == "unsteady", r.unmeasured += s.direction_miss == "unmeasured";
  }
  std::vector<double> sizes;
  for (const ShapeClipScore& s : scores)
    if (s.size > 0) sizes.push_back(s.size);
  if (!sizes.empty()) r.size = median(sizes);
  const double n = static_cast<double>(r.n);
  r.colour /= n, r.direction /= n, r.shape /= n, r.persistence /= n, r.background /= n, r.all /= n;
  return r;
}

}  // namespace vdm::train
