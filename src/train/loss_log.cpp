#include "train/loss_log.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "core/error.h"
#include "io/atomic_file.h"
#ifdef VDM_WITH_FFMPEG
#include "codecs/image_codec.h"
#endif

namespace vdm::train {

namespace {

std::string header_of(const std::vector<std::string>& columns) {
  std::string h = "step";
  for (const auto& c : columns) h += "," + c;
  return h;
}

std::string row_of(int64_t step, const std::vector<double>& values) {
  std::string r = std::to_string(step);
  for (double v : values) r += fmt::format(",{:.6g}", v);
  return r;
}

}  // namespace

LossLog::LossLog(std::string csv_path, std::vector<std::string> columns)
    : path_(std::move(csv_path)), columns_(std::move(columns)) {
  std::ifstream in(path_);
  if (!in) return;
  std::string line;
  if (!std::getline(in, line)) return;
  // A log written before columns were added (a run that turned on a metric part-way) is read into
  // the new layout, the added columns NaN for its rows; any other difference is an error.
  std::vector<std::string> old_columns;
  {
    std::istringstream hs(line);
    std::string cell;
    for (size_t i = 0; std::getline(hs, cell, ','); ++i)
      if (i > 0) old_columns.push_back(cell);
  }
  std::vector<int64_t> source(columns_.size(), -1);  // new column -> old column (-1: added)
  size_t matched = 0;
  for (size_t c = 0; c < columns_.size() && matched < old_columns.size(); ++c)
    if (columns_[c] == old_columns[matched]) source[c] = static_cast<int64_t>(matched++);
  if (line.rfind("step", 0) != 0 || matched != old_columns.size()) {
    throw InputError(fmt::format("{}: the loss log has header '{}', expected '{}'; move it away or use another "
                                 "output folder",
                                 path_, line, header_of(columns_)));
  }
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    std::istringstream ls(line);
    std::string cell;
    std::vector<double> row;
    int64_t step = -1;
    bool ok = true;
    for (size_t i = 0; std::getline(ls, cell, ','); ++i) {
      try {
        if (i == 0) step = std::stoll(cell);
        else row.push_back(std::stod(cell));
      } catch (const std::exception&) {
        ok = false;  // a row cut short by a crash: skipped
      }
    }
    if (!ok || step < 0 || row.size() != old_columns.size()) continue;
    std::vector<double> full(columns_.size(), std::nan(""));
    for (size_t c = 0; c < columns_.size(); ++c)
      if (source[c] >= 0) full[c] = row[static_cast<size_t>(source[c])];
    steps_.push_back(step);
    rows_.push_back(full);
  }
}

void LossLog::rewrite() const {
  std::string text = header_of(columns_) + "\n";
  for (size_t i = 0; i < steps_.size(); ++i) text += row_of(steps_[i], rows_[i]) + "\n";
  io::write_file_atomic(path_, text);
}

void LossLog::truncate_after(int64_t step) {
  size_t keep = 0;
  while (keep < steps_.size() && steps_[keep] <= step) ++keep;
  steps_.resize(keep);
  rows_.resize(keep);
  rewrite();
}

void LossLog::append(int64_t step, const std::vector<double>& values) {
  if (values.size() != columns_.size()) {
    throw Error(fmt::format("{}: {} values for {} columns", path_, values.size(), columns_.size()));
  }
  const bool fresh = !std::filesystem::exists(path_);
  steps_.push_back(step);
  rows_.push_back(values);
  if (fresh) {
    rewrite();
    return;
  }
  std::ofstream out(path_, std::ios::app);
  out << row_of(step, values) << "\n";
  out.flush();
  if (!out) throw Error(fmt::format("{}: cannot append to the loss log; check free disk space", path_));
}

std::vector<double> LossLog::column(const std::string& name) const {
  auto it = std::find(columns_.begin(), columns_.end(), name);
  if (it == columns_.end()) return {};
  const size_t c = static_cast<size_t>(it - columns_.begin());
  std::vector<double> out;
  for (const auto& r : rows_) out.push_back(r[c]);
  return out;
}

at::Tensor draw_loss_curve(const std::vector<int64_t>& steps, const std::vector<double>& values, int64_t width,
                           int64_t height) {
  at::Tensor img = at::full({height, width, 3}, 255, at::TensorOptions().dtype(at::kByte));
  uint8_t* p = img.data_ptr<uint8_t>();
  auto put = [&](int64_t x, int64_t y, uint8_t r, uint8_t g, uint8_t b) {
    if (x < 0 || y < 0 || x >= width || y >= height) return;
    uint8_t* q = p + (y * width + x) * 3;
    q[0] = r, q[1] = g, q[2] = b;
  };
  const int64_t left = 40, right = width - 15, top = 15, bottom = height - 30;
  // Frame.
  for (int64_t x = left; x <= right; ++x) put(x, top, 0, 0, 0), put(x, bottom, 0, 0, 0);
  for (int64_t y = top; y <= bottom; ++y) put(left, y, 0, 0, 0), put(right, y, 0, 0, 0);

  std::vector<std::pair<double, double>> pts;  // (step, log10 value)
  for (size_t i = 0; i < steps.size() && i < values.size(); ++i) {
    if (std::isfinite(values[i]) && values[i] > 0) pts.emplace_back(double(steps[i]), std::log10(values[i]));
  }
  if (pts.empty()) return img;
  double x0 = pts.front().first, x1 = pts.back().first;
  double y0 = pts.front().second, y1 = y0;
  for (const auto& q : pts) y0 = std::min(y0, q.second), y1 = std::max(y1, q.second);
  y0 = std::floor(y0 * 10) / 10 - 0.05, y1 = std::ceil(y1 * 10) / 10 + 0.05;
  if (x1 <= x0) x1 = x0 + 1;
  auto px = [&](double s) { return left + static_cast<int64_t>(std::lround((s - x0) / (x1 - x0) * double(right - left))); };
  auto py = [&](double v) { return bottom - static_cast<int64_t>(std::lround((v - y0) / (y1 - y0) * double(bottom - top))); };

  // Grid: powers of ten (dark) and 2x, 5x (light).
  for (int e = static_cast<int>(std::floor(y0)); e <= static_cast<int>(std::ceil(y1)); ++e) {
    for (double m : {1.0, 2.0, 5.0}) {
      const double v = e + std::log10(m);
      if (v <= y0 || v >= y1) continue;
      const uint8_t shade = m == 1.0 ? 150 : 215;
      for (int64_t x = left + 1; x < right; ++x) put(x, py(v), shade, shade, shade);
      // Tick marks on the left: one per power of ten, short ones for 2x and 5x.
      for (int64_t x = left - (m == 1.0 ? 8 : 4); x < left; ++x) put(x, py(v), 0, 0, 0);
    }
  }
  // x ticks at tenths.
  for (int k = 0; k <= 10; ++k) {
    const int64_t x = left + (right - left) * k / 10;
    for (int64_t y = bottom; y < bottom + (k % 5 == 0 ? 8 : 4); ++y) put(x, y, 0, 0, 0);
  }
  // Raw values.
  for (const auto& q : pts) put(px(q.first), py(q.second), 150, 180, 230);
  // Moving average (exponential, span ~ 2% of the points), as a connected line.
  const double alpha = std::min(1.0, 2.0 / (std::max<double>(1.0, pts.size() * 0.02) + 1.0));
  double avg = pts.front().second;
  int64_t lx = px(pts.front().first), ly = py(avg);
  for (const auto& q : pts) {
    avg = alpha * q.second + (1 - alpha) * avg;
    const int64_t nx = px(q.first), ny = py(avg);
    const int64_t n = std::max<int64_t>(1, std::max(std::abs(nx - lx), std::abs(ny - ly)));
    for (int64_t i = 0; i <= n; ++i) {
      const int64_t x = lx + (nx - lx) * i / n, y = ly + (ny - ly) * i / n;
      put(x, y, 200, 30, 30);
      put(x, y + 1, 200, 30, 30);
    }
    lx = nx, ly = ny;
  }
  return img;
}

std::string write_loss_curve(const LossLog& log, const std::string& column) {
#ifdef VDM_WITH_FFMPEG
  std::vector<double> v = log.column(column);
  at::Tensor img = draw_loss_curve(log.steps(), v);
  std::string path = log.path();
  if (path.size() > 4 && path.substr(path.size() - 4) == ".csv") path = path.substr(0, path.size() - 4);
  path += ".png";
  double lo = 0, hi = 0;
  if (!v.empty()) {
    lo = *std::min_element(v.begin(), v.end());
    hi = *std::max_element(v.begin(), v.end());
  }
  std::map<std::string, std::string> text{
      {"Title", fmt::format("{} by step ({})", column, log.path())},
      {"Comment", fmt::format("x: step {}..{}; y: {} on a log scale, {:.4g}..{:.4g}; dark grid lines at powers of "
                              "ten, light ones at 2x and 5x; red: moving average",
                              log.steps().empty() ? 0 : log.steps().front(),
                              log.steps().empty() ? 0 : log.steps().back(), column, lo, hi)}};
  codecs::write_png_file(path, img.data_ptr<uint8_t>(), static_cast<int>(img.size(1)),
                         static_cast<int>(img.size(0)), 0, text);
  return path;
#else
  (void)log;
  (void)column;
  return "";
#endif
}

}  // namespace vdm::train
