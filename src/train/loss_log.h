// The training loss log: a CSV file (step, then named columns) appended as training runs and
// truncated back to the checkpoint's step on resume, and a loss-curve image drawn from it.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace vdm::train {

class LossLog {
 public:
  // Opens (or creates) `csv_path` with header "step,<columns...>". Rows of an existing file with
  // a different header are an InputError (a different stage or recipe wrote it).
  LossLog(std::string csv_path, std::vector<std::string> columns);

  // Drops rows with step > `step` (rewrites the file atomically); used when resuming.
  void truncate_after(int64_t step);
  // Appends one row (flushed immediately).
  void append(int64_t step, const std::vector<double>& values);

  const std::vector<int64_t>& steps() const { return steps_; }
  // The values of one column, parallel to steps(); empty for an unknown column.
  std::vector<double> column(const std::string& name) const;
  const std::string& path() const { return path_; }

 private:
  void rewrite() const;
  std::string path_;
  std::vector<std::string> columns_;
  std::vector<int64_t> steps_;
  std::vector<std::vector<double>> rows_;
};

// Draws a loss curve: log-scaled y axis with grid lines at powers of ten (and at 2x, 5x), x axis
// from the first to the last step, the raw values as light dots and their moving average as a
// line. Returns uint8 [height, width, 3]; an empty series gives a blank plot.
at::Tensor draw_loss_curve(const std::vector<int64_t>& steps, const std::vector<double>& values,
                           int64_t width = 640, int64_t height = 360);

// Writes `log`'s column as a PNG curve next to the CSV (<csv without .csv>.png). The PNG carries
// the axis ranges as text. Returns the path written, or "" when this build has no image writer
// (FFmpeg off).
std::string write_loss_curve(const LossLog& log, const std::string& column);

}  // namespace vdm::train
