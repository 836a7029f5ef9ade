#include "pipelines/progress.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstdio>

#include "core/error.h"

namespace vdm::pipelines {

ProgressMeter::ProgressMeter(std::string stage, int64_t total, ProgressCallback sink, int64_t first_step)
    : stage_(std::move(stage)), total_(total), sink_(std::move(sink)), first_step_(first_step),
      start_(std::chrono::steady_clock::now()) {}

void ProgressMeter::update(int64_t step, const std::string& detail) {
  if (!sink_) return;
  ProgressEvent e;
  e.stage = stage_;
  e.step = step;
  e.total = total_;
  e.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  e.rate = e.elapsed_s > 0 ? static_cast<double>(step - first_step_) / e.elapsed_s : 0.0;
  e.eta_s = e.rate > 0 ? static_cast<double>(total_ - step) / e.rate : 0.0;
  e.detail = detail;
  sink_(e);
}

namespace {
std::string format_duration(double s) {
  if (s < 60) return fmt::format("{:.0f}s", s);
  if (s < 3600) return fmt::format("{}m{:02d}s", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  return fmt::format("{}h{:02d}m", static_cast<int>(s) / 3600, (static_cast<int>(s) % 3600) / 60);
}
}  // namespace

ProgressCallback make_progress_printer(ProgressFormat format) {
  switch (format) {
    case ProgressFormat::kNone: return {};
    case ProgressFormat::kJson:
      return [](const ProgressEvent& e) {
        nlohmann::json j = {{"stage", e.stage},         {"step", e.step},
                            {"total", e.total},         {"elapsed_s", e.elapsed_s},
                            {"rate", e.rate},           {"eta_s", e.eta_s}};
        if (!e.detail.empty()) j["detail"] = e.detail;
        std::fprintf(stderr, "%s\n", j.dump().c_str());
        std::fflush(stderr);
      };
    case ProgressFormat::kText:
    default:
      return [](const ProgressEvent& e) {
        const bool per_second = e.rate >= 1.0 || e.rate == 0.0;
        std::string rate = per_second ? fmt::format("{:.2f} it/s", e.rate)
                                      : fmt::format("{:.2f} s/it", 1.0 / e.rate);
        std::fprintf(stderr, "%-10s %*lld/%lld  %s  elapsed %s  ETA %s%s%s\n", e.stage.c_str(),
                     static_cast<int>(std::to_string(e.total).size()),
                     static_cast<long long>(e.step), static_cast<long long>(e.total), rate.c_str(),
                     format_duration(e.elapsed_s).c_str(), format_duration(e.eta_s).c_str(),
                     e.detail.empty() ? "" : "  ", e.detail.c_str());
        std::fflush(stderr);
      };
  }
}

ProgressFormat parse_progress_format(const std::string& name) {
  if (name == "text") return ProgressFormat::kText;
  if (name == "json") return ProgressFormat::kJson;
  if (name == "none") return ProgressFormat::kNone;
  throw InputError(fmt::format("--progress {}: unknown format; expected text, json or none", name));
}

}  // namespace vdm::pipelines
