#include "pipelines/memory_guard.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <limits>
#include <sstream>

#include "core/error.h"
#include "temporal/frame_window_ranges.h"

namespace vdm::pipelines {

namespace {

// The VAE decoder's activations per call that auto_decode_chunk() aims for.
constexpr double kDecodeChunkBytes = 1.5e9;
// Working tensors of one UNet level, in multiples of the level's activation: a transformer
// block's GEGLU feed-forward holds its 8x-wide projection, the 4x gated product and the input
// with its norm; a resnet on the up path holds the concatenated skip, its norm and conv outputs.
constexpr double kLevelWorkingSet = 20.0;
// With frame windows, the tensors of a temporal transformer block that hold every window's tokens
// (the gathered windows, q, k, v, the attention's output and its weighted copy), in copies of the
// level's activations per window copy of the frames.
constexpr double kWindowedWorkingSet = 6.0;
// Attention holds the scores, their softmax and one temporary of the same size.
constexpr double kScoreCopies = 3.0;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

uint64_t to_bytes(double v) {
  if (!(v > 0)) return 0;
  if (v >= 1.8e19) return std::numeric_limits<uint64_t>::max();
  return static_cast<uint64_t>(std::ceil(v));
}

uint64_t saturating_add(uint64_t a, uint64_t b) {
  return a > std::numeric_limits<uint64_t>::max() - b ? std::numeric_limits<uint64_t>::max() : a + b;
}

double widest_vae_channels(const MemoryModel& m) {
  return m.vae_block_out_channels.empty() ? 512.0 : static_cast<double>(m.vae_block_out_channels.back());
}

// Decoder activations per frame at full resolution: about 6 live tensors of the widest level.
double decode_bytes_per_frame(const MemoryModel& m, int64_t width, int64_t height) {
  return 6.0 * 4.0 * static_cast<double>(width) * static_cast<double>(height) * widest_vae_channels(m);
}

double score_bytes(const MemoryModel& m, double scores) {
  if (m.attention_score_budget > 0) scores = std::min(scores, static_cast<double>(m.attention_score_budget));
  return scores * 4.0 * kScoreCopies;
}

// The value of `key` in /proc/meminfo, in bytes, or 0.
uint64_t meminfo_bytes(const std::string& key) {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) != 0) continue;
    std::istringstream ss(line.substr(key.size() + 1));
    uint64_t kib = 0;
    if (ss >> kib) return kib * 1024;
  }
  return 0;
}

// The number in a one-line file such as memory.max; false when absent or not a number ("max").
bool read_number_file(const std::string& path, uint64_t* out) {
  std::ifstream in(path);
  std::string text;
  if (!(in >> text) || text.empty() || !std::isdigit(static_cast<unsigned char>(text[0]))) return false;
  *out = std::strtoull(text.c_str(), nullptr, 10);
  return true;
}

// What the process's cgroup still allows (limit - usage), or 0 when it sets no limit.
uint64_t cgroup_headroom() {
  // cgroup v2: "0::/some/path" in /proc/self/cgroup names this process's group.
  std::string group;
  {
    std::ifstream in("/proc/self/cgroup");
    std::string line;
    while (std::getline(in, line))
      if (line.rfind("0::", 0) == 0) group = line.substr(3);
  }
  uint64_t limit = 0, usage = 0;
  for (const std::string& dir : {"/sys/fs/cgroup" + group, std::string("/sys/fs/cgroup")}) {
    if (read_number_file(dir + "/memory.max", &limit) && read_number_file(dir + "/memory.current", &usage))
      return limit > usage ? limit - usage : 1;
  }
  // cgroup v1.
  if (read_number_file("/sys/fs/cgroup/memory/memory.limit_in_bytes", &limit) &&
      read_number_file("/sys/fs/cgroup/memory/memory.usage_in_bytes", &usage) && limit < (uint64_t{1} << 60))
    return limit > usage ? limit - usage : 1;
  return 0;
}

}  // namespace

uint64_t MemoryEstimate::total() const {
  return saturating_add(saturating_add(latents, std::max(denoise_phase(), decode)), overhead);
}

std::string MemoryEstimate::describe() const {
  return fmt::format("{} (UNet activations {}, attention scores {}, VAE decode {} in chunks of {} "
                     "frame{}, latents {}, allocator overhead {})",
                     format_bytes(total()), format_bytes(unet), format_bytes(attention),
                     format_bytes(decode), decode_chunk, decode_chunk == 1 ? "" : "s",
                     format_bytes(latents), format_bytes(overhead));
}

int64_t auto_decode_chunk(const MemoryModel& model, int64_t width, int64_t height) {
  const double per_frame = decode_bytes_per_frame(model, width, height);
  return std::max<int64_t>(1, static_cast<int64_t>(kDecodeChunkBytes / per_frame));
}

MemoryEstimate estimate_memory(const MemoryModel& m, const MemoryJob& job) {
  MemoryEstimate est;
  const int64_t f = std::max<int64_t>(1, m.vae_factor);
  const int64_t frames = std::max<int64_t>(1, job.frames);
  const int64_t h = ceil_div(std::max<int64_t>(1, job.height), f);
  const int64_t w = ceil_div(std::max<int64_t>(1, job.width), f);
  const double batch = job.guidance ? 2.0 : 1.0;
  const double F = static_cast<double>(frames);
  const double N = batch * F;  // images through the spatial layers per UNet call
  const double e = static_cast<double>(std::max<int64_t>(1, m.activation_bytes));
  const double L = static_cast<double>(m.text_length);

  // Latents [1, C, F, h, w] in float32: the latents, the noise, the model input and prediction
  // for the batch, the guided prediction, up to three scheduler model outputs; conditioning
  // channels for the batch; the text embeddings.
  const double latent = static_cast<double>(m.latent_channels) * F * static_cast<double>(h * w) * 4.0;
  const double cond_channels = static_cast<double>(std::max<int64_t>(0, m.unet_in_channels - m.latent_channels));
  est.latents = to_bytes(latent * (6.0 + 3.0 * batch) + cond_channels * F * h * w * 4.0 * batch * 2.0 +
                         batch * L * static_cast<double>(m.text_dim) * e * 2.0 * (job.text_per_frame ? F : 1.0));

  // Frame windows: the temporal attention's query-key pairs per sequence, and how many copies of
  // each frame's tokens the windows hold.
  temporal::FrameWindows window_settings;
  window_settings.length = job.window_length;
  window_settings.stride = job.window_stride;
  const bool windowed = job.window_stride > 0 && window_settings.splits(frames);
  const double window_tokens =
      windowed ? static_cast<double>(temporal::frame_window_ranges(frames, window_settings).size()) *
                     static_cast<double>(job.window_length)
               : 0.0;
  const double temporal_pairs = windowed ? window_tokens * static_cast<double>(job.window_length) : F * F;
  const double window_copies = windowed ? window_tokens / F : 0.0;

  // UNet: skip connections kept from the down path, plus the widest working set of one level.
  const size_t levels = m.unet_block_out_channels.size();
  double skips = 0, working = 0, scores = 0;
  for (size_t i = 0; i < levels; ++i) {
    const double c = static_cast<double>(m.unet_block_out_channels[i]);
    const int64_t hi = ceil_div(h, int64_t{1} << i), wi = ceil_div(w, int64_t{1} << i);
    const double hw = static_cast<double>(hi * wi);
    if (i == 0) skips += c * hw;  // conv_in
    skips += static_cast<double>(m.unet_layers_per_block) * c * hw;
    if (i + 1 < levels) {
      const double next = static_cast<double>(ceil_div(hi, 2) * ceil_div(wi, 2));
      skips += c * next;  // the downsampler's output
    }
    working = std::max(working, std::max(kLevelWorkingSet, kWindowedWorkingSet * window_copies + 2.0) * c * hw);
    const double heads = static_cast<double>(i < m.unet_heads.size() ? std::max<int64_t>(1, m.unet_heads[i]) : 8);
    scores = std::max({scores,
                       N * heads * hw * hw,      // spatial self-attention over h*w tokens
                       N * heads * hw * L,       // cross-attention to the text
                       batch * hw * heads * temporal_pairs});  // temporal attention over the frames
  }
  if (job.feature_cache && levels > 0)
    skips += static_cast<double>(*std::max_element(m.unet_block_out_channels.begin(), m.unet_block_out_channels.end())) *
             static_cast<double>(h * w);
  est.unet = to_bytes(N * e * (skips + working));
  est.attention = to_bytes(score_bytes(m, scores));

  // VAE decode: one chunk of frames through the decoder, its mid-block attention over the
  // latent tokens, and the decoded clip (float chunks, their concatenation, uint8 frames).
  const int64_t auto_chunk = auto_decode_chunk(m, job.width, job.height);
  est.decode_chunk = std::min<int64_t>(frames, job.decode_chunk > 0 ? job.decode_chunk : auto_chunk);
  const double chunk = static_cast<double>(est.decode_chunk);
  const double pixels = static_cast<double>(job.width) * static_cast<double>(job.height);
  const double clip = F * pixels * 3.0 * (4.0 * 2.0 + 2.0);
  est.decode = to_bytes(chunk * decode_bytes_per_frame(m, job.width, job.height) +
                        score_bytes(m, chunk * static_cast<double>(h * w) * static_cast<double>(h * w)) + clip);
  est.overhead = to_bytes(kAllocatorOverhead *
                          static_cast<double>(saturating_add(est.latents, std::max(est.denoise_phase(), est.decode))));
  return est;
}

uint64_t available_host_memory() {
  uint64_t available = meminfo_bytes("MemAvailable");
  const uint64_t headroom = cgroup_headroom();
  if (headroom > 0 && (available == 0 || headroom < available)) available = headroom;
  return available;
}

uint64_t parse_memory_size(const std::string& text, const std::string& flag) {
  auto bad = [&]() -> InputError {
    return InputError(fmt::format(
        "{} {}: expected a size such as 8G, 512M, 1.5G or a number of bytes (K, M, G, T are "
        "multiples of 1024; 0 turns the memory check off)",
        flag, text));
  };
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) ++i;
  const std::string number = text.substr(0, i);
  if (number.empty() || number == "." || std::count(number.begin(), number.end(), '.') > 1) throw bad();
  std::string unit = text.substr(i);
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (unit.size() >= 2 && unit.compare(unit.size() - 2, 2, "IB") == 0) unit.resize(unit.size() - 2);
  else if (unit.size() >= 2 && unit.back() == 'B') unit.pop_back();
  double scale = 1;
  if (unit == "" || unit == "B") scale = 1;
  else if (unit == "K") scale = 1024.0;
  else if (unit == "M") scale = 1024.0 * 1024.0;
  else if (unit == "G") scale = 1024.0 * 1024.0 * 1024.0;
  else if (unit == "T") scale = 1024.0 * 1024.0 * 1024.0 * 1024.0;
  else throw bad();
  const double bytes = std::strtod(number.c_str(), nullptr) * scale;
  if (!std::isfinite(bytes) || bytes >= 9.2e18) throw bad();
  return static_cast<uint64_t>(std::llround(bytes));
}

std::string format_bytes(uint64_t bytes) {
  static const char* const kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) return fmt::format("{} B", bytes);
  double v = static_cast<double>(bytes) / 1024.0;
  size_t u = 0;
  while (v >= 1024.0 && u + 1 < std::size(kUnits)) {
    v /= 1024.0;
    ++u;
  }
  return fmt::format("{:.1f} {}", v, kUnits[u]);
}

void check_memory(const MemoryModel& model, const MemoryJob& job, uint64_t available,
                  const std::string& available_source) {
  if (available == 0) return;
  const MemoryEstimate est = estimate_memory(model, job);
  if (est.total() <= available) return;
  auto fits = [&](MemoryJob j) { return estimate_memory(model, j).total() <= available; };

  std::string advice;
  if (est.decode_dominates() && est.decode_chunk > 1) {
    MemoryJob j = job;
    for (int64_t c = est.decode_chunk - 1; c >= 1 && advice.empty(); --c) {
      j.decode_chunk = c;
      if (fits(j)) advice = fmt::format("lower --decode-chunk (now {}; {} fits)", est.decode_chunk, c);
    }
  }
  if (advice.empty()) {
    // The most frames that fit at this size (the estimate grows with the frame count).
    int64_t lo = 0, hi = job.frames - 1;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo + 1) / 2;
      MemoryJob j = job;
      j.frames = mid;
      if (fits(j)) lo = mid;
      else hi = mid - 1;
    }
    advice = lo >= 1 ? fmt::format("lower --frames (now {}; at most {} fit at {}x{}) or --width/--height",
                                   job.frames, lo, job.width, job.height)
                     : fmt::format("lower --width/--height (now {}x{}; not even 1 frame fits at this "
                                   "size){}",
                                   job.width, job.height,
                                   est.decode_dominates() ? " or --decode-chunk" : "");
  }
  throw InputError(fmt::format(
      "not enough memory for this render: it needs about {}, but {} is available ({}); {} "
      "(--max-memory 0 turns this check off)",
      est.describe(), format_bytes(available), available_source, advice));
}

}  // namespace vdm::pipelines
