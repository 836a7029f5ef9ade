// Progress of long work: step i/N, rate, ETA; as text on stderr or one JSON object per line.
#pragma once
#include <chrono>
#include <functional>
#include <string>

namespace vdm::pipelines {

struct ProgressEvent {
  std::string stage;    // "denoise", "decode", "train-vae", ...
  int64_t step = 0;     // 1-based steps done
  int64_t total = 0;
  double elapsed_s = 0;
  double rate = 0;      // steps per second
  double eta_s = 0;
  std::string detail;   // free text, e.g. "loss 0.0123"
};

using ProgressCallback = std::function<void(const ProgressEvent&)>;

enum class ProgressFormat { kText, kJson, kNone };

// Measures rate and ETA for a stage and forwards events to a printer.
class ProgressMeter {
 public:
  // first_step: steps already done before this meter started (a resumed run), left out of the rate.
  ProgressMeter(std::string stage, int64_t total, ProgressCallback sink, int64_t first_step = 0);
  // Marks `step` (1-based) done; emits an event.
  void update(int64_t step, const std::string& detail = "");

 private:
  std::string stage_;
  int64_t total_;
  ProgressCallback sink_;
  int64_t first_step_;
  std::chrono::steady_clock::time_point start_;
};

// A sink printing events on stderr: text ("denoise  12/25  3.4 it/s  ETA 4s") or JSON lines.
ProgressCallback make_progress_printer(ProgressFormat format);
ProgressFormat parse_progress_format(const std::string& name);  // text | json | none

}  // namespace vdm::pipelines
