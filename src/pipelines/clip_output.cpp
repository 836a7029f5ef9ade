#include "pipelines/clip_output.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fmt/format.h>

#include "core/error.h"
#ifdef VDM_WITH_FFMPEG
#include "codecs/video_writer.h"
#endif

namespace vdm::pipelines {

namespace fs = std::filesystem;

OutputSpec resolve_output(const std::string& path, const std::string& format, int64_t fps,
                          int64_t crf, const std::string& preset) {
  if (path.empty()) throw InputError("--output is empty; give a file such as out/clip.mp4");
  OutputSpec spec{path, format, fps, crf, preset};
  if (spec.format.empty()) {
    std::string ext = fs::path(path).extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
    if (ext == ".mp4" || ext == ".webm" || ext == ".gif")
      spec.format = ext.substr(1);
    else if (ext.empty() || path.back() == '/')
      spec.format = "png";
    else
      throw InputError(fmt::format(
          "--output {}: unknown extension '{}'; use .mp4, .webm, .gif, or a folder name for PNG "
          "frames (or set --format)",
          path, ext));
  }
  if (spec.format != "mp4" && spec.format != "webm" && spec.format != "gif" && spec.format != "png")
    throw InputError(fmt::format("--format {}: expected mp4, webm, gif or png", spec.format));
  fs::path target(path);
  if (spec.format == "png" && path.back() == '/') target = fs::path(path.substr(0, path.size() - 1));
  spec.path = target.string();
  fs::path dir = target.parent_path();
  if (dir.empty()) dir = ".";
  if (!fs::is_directory(dir))
    throw InputError(fmt::format("--output {}: folder '{}' does not exist; create it first", path,
                                 dir.string()));
  if (::access(dir.c_str(), W_OK) != 0)
    throw InputError(fmt::format("--output {}: folder '{}' is not writable; choose another folder",
                                 path, dir.string()));
  if (fs::is_directory(target) && spec.format != "png")
    throw InputError(fmt::format("--output {}: is a folder; give a file name", path));
#ifdef VDM_WITH_FFMPEG
  codecs::check_quality_settings(codecs::resolve_video_format(spec.path, spec.format), static_cast<int>(crf),
                                 preset, fmt::format("--output {} (--crf/--preset)", path));
#endif
  return spec;
}

void check_output_size(const OutputSpec& spec, int64_t width, int64_t height) {
  if (spec.format == "mp4" && (width % 2 != 0 || height % 2 != 0))
    throw InputError(fmt::format(
        "--output {}: H.264 (yuv420p) needs even width and height, got {}x{}; use an even size "
        "or write .webm, .gif or PNG frames",
        spec.path, width, height));
}

void write_clip(const OutputSpec& spec, const at::Tensor& frames,
                const std::map<std::string, std::string>& metadata) {
#ifdef VDM_WITH_FFMPEG
  codecs::VideoWriterOptions opts;
  opts.fps = static_cast<int>(spec.fps);
  opts.crf = static_cast<int>(spec.crf);
  opts.preset = spec.preset;
  opts.format = spec.format;
  opts.metadata = metadata;
  codecs::VideoWriter writer(spec.path, static_cast<int>(frames.size(2)),
                             static_cast<int>(frames.size(1)), opts);
  writer.write_frames(frames);
  writer.finish();
#else
  (void)frames;
  (void)metadata;
  throw Error(fmt::format("{}: writing video needs a build with FFmpeg (VDM_WITH_FFMPEG=ON)",
                          spec.path));
#endif
}

}  // namespace vdm::pipelines
