// Per-operator CPU time of a piece of work, from LibTorch's profiler (`vdm bench --profile`):
// which aten operators a UNet step spends its time in, self time (children excluded) and total.
// On CUDA: the device time of each kernel, from LibTorch's Kineto profiler.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace vdm::pipelines {

struct OpTime {
  std::string name;     // e.g. "aten::native_group_norm"
  int64_t calls = 0;
  double self_ms = 0;   // time in the operator itself, nested operators excluded
  double total_ms = 0;  // including nested operators (outermost calls only, no double counting)
};

struct OpProfile {
  std::string kind = "operator";  // "operator" (CPU self time) or "CUDA kernel" (device time)
  std::vector<OpTime> ops;  // by self time, largest first
  double wall_ms = 0;       // of the profiled work
  // The `top` operators with the most self time as a table.
  std::string to_table(size_t top = 25) const;
  nlohmann::json to_json() const;
};

// Runs `work` under the profiler and aggregates its operator events over all threads.
OpProfile profile_ops(const std::function<void()>& work);

// Runs `work` under the Kineto profiler and sums the device time of each CUDA kernel (and copy) by
// name: self_ms and total_ms are both that time. Needs a LibTorch with Kineto (the CUDA builds).
OpProfile profile_cuda_kernels(const std::function<void()>& work);

}  // namespace vdm::pipelines
