#include "pipelines/op_profile.h"

#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/csrc/autograd/profiler_legacy.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <set>

#include <fmt/format.h>

namespace vdm::pipelines {

namespace prof = torch::autograd::profiler;

namespace {
// Runs `work` under a profiler already started; on an exception stops it with `stop` and rethrows.
// Returns the wall time of the work in milliseconds.
template <typename Stop>
double run_profiled(const std::function<void()>& work, Stop&& stop) {
  const auto t0 = std::chrono::steady_clock::now();
  try {
    work();
  } catch (...) {
    stop();
    throw;
  }
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// The profile of `by_name`, largest self time first.
OpProfile sorted_profile(std::map<std::string, OpTime> by_name, double wall_ms, std::string kind) {
  OpProfile p;
  p.kind = std::move(kind);
  p.wall_ms = wall_ms;
  for (auto& [name, t] : by_name) p.ops.push_back(std::move(t));
  std::sort(p.ops.begin(), p.ops.end(), [](const OpTime& a, const OpTime& b) { return a.self_ms > b.self_ms; });
  return p;
}
}  // namespace

OpProfile profile_ops(const std::function<void()>& work) {
  prof::enableProfilerLegacy(prof::ProfilerConfig(prof::ProfilerState::CPU));
  const double wall_ms = run_profiled(work, [] { prof::disableProfilerLegacy(); });
  const prof::thread_event_lists threads = prof::disableProfilerLegacy();

  struct Open {
    const prof::LegacyEvent* push;
    double child_us = 0;
  };
  std::map<std::string, OpTime> by_name;
  std::map<std::string, int> depth_of_name;  // open calls per name: only outermost ones add to total
  for (const auto& events : threads) {
    std::vector<Open> stack;
    for (const auto& e : events) {
      if (e.kind() == prof::EventKind::PushRange) {
        stack.push_back({&e});
        ++depth_of_name[e.name()];
      } else if (e.kind() == prof::EventKind::PopRange && !stack.empty()) {
        const Open open = stack.back();
        stack.pop_back();
        const double us = open.push->cpuElapsedUs(e);
        const std::string name = open.push->name();
        OpTime& t = by_name[name];
        t.name = name;
        ++t.calls;
        t.self_ms += (us - open.child_us) / 1000.0;
        if (--depth_of_name[name] == 0) t.total_ms += us / 1000.0;
        if (!stack.empty()) stack.back().child_us += us;
      }
    }
  }
  return sorted_profile(std::move(by_name), wall_ms, "operator");
}

namespace {
// Kineto events give their duration in microseconds (LibTorch 1.13) or nanoseconds (2.x).
template <typename Event>
auto duration_ms(const Event& e, int) -> decltype(e.durationNs(), double()) {
  return static_cast<double>(e.durationNs()) / 1e6;
}
template <typename Event>
double duration_ms(const Event& e, long) {
  return static_cast<double>(e.durationUs()) / 1e3;
}
}  // namespace

OpProfile profile_cuda_kernels(const std::function<void()>& work) {
  namespace impl = torch::profiler::impl;
  const impl::ProfilerConfig config(impl::ProfilerState::KINETO);
  const std::set<impl::ActivityType> activities{impl::ActivityType::CPU, impl::ActivityType::CUDA};
  prof::prepareProfiler(config, activities);
  prof::enableProfiler(config, activities);
  const double wall_ms = run_profiled(work, [] { prof::disableProfiler(); });
  const std::unique_ptr<prof::ProfilerResult> result = prof::disableProfiler();
  std::map<std::string, OpTime> by_name;
  for (const prof::KinetoEvent& e : result->events()) {
    if (e.deviceType() != c10::DeviceType::CUDA) continue;
    OpTime& t = by_name[e.name()];
    t.name = e.name();
    ++t.calls;
    t.self_ms += duration_ms(e, 0);
    t.total_ms = t.self_ms;
  }
  return sorted_profile(std::move(by_name), wall_ms, "CUDA kernel");
}

std::string OpProfile::to_table(size_t top) const {
  double self_sum = 0;
  for (const auto& o : ops) self_sum += o.self_ms;
  std::string out = fmt::format("{:<40} {:>7} {:>10} {:>7} {:>10}\n", kind, "calls", "self ms", "self %",
                                "total ms");
  for (size_t i = 0; i < std::min(top, ops.size()); ++i) {
    const OpTime& o = ops[i];
    out += fmt::format("{:<40} {:>7} {:>10.1f} {:>6.1f}% {:>10.1f}\n", o.name.substr(0, 40), o.calls, o.self_ms,
                       self_sum > 0 ? 100.0 * o.self_ms / self_sum : 0.0, o.total_ms);
  }
  out += fmt::format("{} {}s, {:.1f} ms of {} self time in {:.1f} ms wall\n", ops.size(), kind, self_sum, kind,
                     wall_ms);
  return out;
}

nlohmann::json OpProfile::to_json() const {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& o : ops)
    list.push_back({{"name", o.name}, {"calls", o.calls}, {"self_ms", o.self_ms}, {"total_ms", o.total_ms}});
  return {{"kind", kind}, {"wall_ms", wall_ms}, {"ops", list}};
}

}  // namespace vdm::pipelines
