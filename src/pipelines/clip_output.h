// Where and how a rendered clip is written: format by extension (mp4, webm, gif, or a folder of
// PNG frames), checked before the long work starts, written atomically with the generation
// settings as container metadata.
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <string>

namespace vdm::pipelines {

struct OutputSpec {
  std::string path;
  std::string format;  // mp4 | webm | gif | png
  int64_t fps = 8;
  int64_t crf = 18;
  std::string preset = "medium";
};

// Resolves the format (explicit `format` or the extension; a path without extension or ending
// in '/' is a PNG folder) and checks that the folder exists and is writable. InputError otherwise.
OutputSpec resolve_output(const std::string& path, const std::string& format, int64_t fps,
                          int64_t crf, const std::string& preset);

// InputError when the size cannot be written in the chosen format (H.264/yuv420p needs even sizes).
void check_output_size(const OutputSpec& spec, int64_t width, int64_t height);

// frames: uint8 [F, H, W, 3]. Written under a temporary name and renamed when complete.
// Needs FFmpeg (Error otherwise).
void write_clip(const OutputSpec& spec, const at::Tensor& frames,
                const std::map<std::string, std::string>& metadata);

}  // namespace vdm::pipelines
