#include "temporal/frame_windows.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.h"

namespace vdm::temporal {

namespace {
const std::vector<std::string> kWeightings{"flat", "pyramid", "delayed_reverse_sawtooth"};
const std::vector<std::string> kNoises{"shuffle_context", "repeat_context", "random"};

bool one_of(const std::string& s, const std::vector<std::string>& names) {
  return std::find(names.begin(), names.end(), s) != names.end();
}

InputError unknown_weighting(const std::string& weighting) {
  return InputError(
      fmt::format("--context-weights {}: expected flat, pyramid or delayed_reverse_sawtooth", weighting));
}
}  // namespace

std::string FrameWindows::describe() const {
  if (length <= 0) return "off";
  return fmt::format("{} frames every {}, {} weights, {} noise", length, stride, weighting, noise);
}

void validate_frame_windows(const FrameWindows& w) {
  if (w.length < 0 || w.length == 1 || w.length > 1024)
    throw InputError(fmt::format("--context-frames {}: expected 0 (off) or 2..1024 frames per window, "
                                 "usually the frame count the model was trained on (16 for ModelScope 1.7B "
                                 "and the embedded model)",
                                 w.length));
  if (w.length > 0 && (w.stride < 1 || w.stride > w.length))
    throw InputError(fmt::format("--context-stride {}: expected 1..{} (at most --context-frames); 4 is usual",
                                 w.stride, w.length));
  if (!one_of(w.weighting, kWeightings)) throw unknown_weighting(w.weighting);
  if (!one_of(w.noise, kNoises))
    throw InputError(fmt::format("--context-noise {}: expected shuffle_context, repeat_context or random", w.noise));
}

std::vector<std::pair<int64_t, int64_t>> frame_window_ranges(int64_t frames, const FrameWindows& w) {
  if (!w.splits(frames)) return {{0, frames}};
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t s = 0; s + w.length <= frames; s += w.stride) out.emplace_back(s, s + w.length);
  if (out.back().second < frames) out.emplace_back(frames - w.length, frames);
  return out;
}

std::vector<double> frame_window_weights(int64_t length, const std::string& weighting) {
  std::vector<double> out(static_cast<size_t>(length), 1.0);
  if (weighting == "flat") return out;
  if (weighting == "pyramid") {
    // 1, 2, ..., 2, 1: position i weighs min(i, length - 1 - i) + 1
    for (int64_t i = 0; i < length; ++i) out[i] = static_cast<double>(std::min(i, length - 1 - i) + 1);
    return out;
  }
  if (weighting == "delayed_reverse_sawtooth") {
    // Even length 2m: 0.01 (m - 1 times), m, then m, m - 1, ..., 1. Odd length 2m - 1: 0.01 (m - 1
    // times), then m, m - 1, ..., 1 (the pattern diffusers documents, [0.01, 0.01, 3, 2, 1] for 5).
    const int64_t m = (length + 1) / 2;
    std::vector<double> w(static_cast<size_t>(m - 1), 0.01);
    if (length % 2 == 0) w.push_back(static_cast<double>(m));
    for (int64_t v = m; v >= 1; --v) w.push_back(static_cast<double>(v));
    return w;
  }
  throw unknown_weighting(weighting);
}

FrameWindowPlan plan_frame_windows(int64_t frames, const FrameWindows& w) {
  const auto ranges = frame_window_ranges(frames, w);
  const int64_t length = ranges.front().second - ranges.front().first;
  const auto weights = frame_window_weights(length, w.weighting);
  FrameWindowPlan plan;
  plan.windows = static_cast<int64_t>(ranges.size());
  plan.length = length;
  plan.index = at::empty({plan.windows * length}, at::kLong);
  plan.weight = at::empty({plan.windows * length}, at::kFloat);
  std::vector<double> total(static_cast<size_t>(frames), 0.0);
  auto* index = plan.index.data_ptr<int64_t>();
  auto* weight = plan.weight.data_ptr<float>();
  for (int64_t k = 0; k < plan.windows; ++k) {
    const int64_t start = ranges[k].first;
    // The end window (the one appended to reach the last frame, closer than `stride` to the window
    // before it) adds only the frames no earlier window holds.
    const int64_t covered = k > 0 && start - ranges[k - 1].first != w.stride ? ranges[k - 1].second : 0;
    for (int64_t i = 0; i < length; ++i) {
      const int64_t f = start + i;
      const double wt = f < covered ? 0.0 : weights[i];
      index[k * length + i] = f;
      weight[k * length + i] = static_cast<float>(wt);
      total[f] += wt;
    }
  }
  plan.inverse_total = at::empty({frames}, at::kFloat);
  auto* inv = plan.inverse_total.data_ptr<float>();
  for (int64_t f = 0; f < frames; ++f) inv[f] = static_cast<float>(1.0 / total[f]);
  return plan;
}

at::Tensor frame_window_noise(const at::Tensor& noise, const FrameWindows& w, at::Generator& generator) {
  const int64_t F = noise.size(2);
  if (!w.splits(F) || w.noise == "random") return noise;
  using at::indexing::Slice;
  at::Tensor out = noise.clone();
  if (w.noise == "repeat_context") {
    for (int64_t f = w.length; f < F; ++f) out.select(2, f).copy_(out.select(2, f % w.length));
    return out;
  }
  for (int64_t i = w.length; i < F; i += w.stride) {
    const int64_t src = i - w.length, n = std::min(w.stride, F - src);
    at::Tensor order = at::randperm(n, generator, at::TensorOptions().dtype(at::kLong)) + src;
    const int64_t m = std::min(n, F - i);
    out.index_put_({Slice(), Slice(), Slice(i, i + m)}, out.index_select(2, order.narrow(0, 0, m)));
  }
  return out;
}

}  // namespace vdm::temporal
