// The windows themselves, without LibTorch (the memory guard counts them too): the settings, their
// check, the ranges and the weights. frame_windows.h adds the gather plan and the noise.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace vdm::temporal {

struct FrameWindows {
  int64_t length = 0;                    // frames per window; 0 = off (every frame sees every frame)
  int64_t stride = 4;                    // frames between the starts of neighbouring windows
  std::string weighting = "pyramid";     // flat | pyramid | delayed_reverse_sawtooth
  std::string noise = "shuffle_context"; // shuffle_context | repeat_context | random

  // True when a clip of `frames` frames is split into windows.
  bool splits(int64_t frames) const { return length > 0 && frames > length; }
  bool operator==(const FrameWindows& o) const {
    return length == o.length && stride == o.stride && weighting == o.weighting && noise == o.noise;
  }
  bool operator!=(const FrameWindows& o) const { return !(*this == o); }
  // "16 frames every 4, pyramid weights, shuffle_context noise", or "off".
  std::string describe() const;
};

// InputError naming the option (--context-frames, --context-stride, --context-weights,
// --context-noise) when a value is out of range or unknown.
void validate_frame_windows(const FrameWindows& w);

// [start, end) of each window over `frames` frames: starts 0, stride, 2 stride, ... while a whole
// window fits, then one window ending at the last frame if the clip is not covered yet. A single
// [0, frames) when the clip does not split.
std::vector<std::pair<int64_t, int64_t>> frame_window_ranges(int64_t frames, const FrameWindows& w);

// Weight of each position in a window of `length` frames: flat 1, 1, ...; pyramid 1, 2, ..., 2, 1;
// delayed_reverse_sawtooth 0.01, ..., 0.01, then falling to 1 (diffusers' three schemes).
std::vector<double> frame_window_weights(int64_t length, const std::string& weighting);

}  // namespace vdm::temporal
