// Joining rendered clips into one video, in order.
//
// When every input has the same codec, size, pixel format, frame rate and codec headers, and the
// output container can hold that codec, the compressed packets are copied (remuxed) with their
// timestamps shifted: fast and lossless. Otherwise every frame is decoded and encoded again with
// VideoWriter at the first input's size and rate (other sizes are scaled to fit with black bars,
// other rates are resampled by repeating or dropping frames so durations are kept).
// The output is written atomically. Needs FFmpeg (Error without it).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace vdm::batch {

struct ConcatOptions {
  bool allow_remux = true;  // false: always re-encode
  int crf = 18;             // re-encoding quality
  std::string preset = "medium";
  std::map<std::string, std::string> metadata;  // container tags of the output
};

struct ConcatResult {
  bool remuxed = false;
  std::string reencode_reason;  // why packets could not be copied ("" when remuxed)
  int64_t frames = 0;           // frames (packets) written
};

ConcatResult concat_videos(const std::vector<std::string>& inputs, const std::string& output,
                           const ConcatOptions& options = {});

}  // namespace vdm::batch
