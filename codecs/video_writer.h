// Writes RGB frames as a video file or an image sequence through FFmpeg, one frame at a time.
//
// Formats (chosen by VideoWriterOptions::format, or by the path when it is empty):
//   mp4   ".mp4", ".m4v", ".mov": H.264 (libx264), yuv420p BT.709 limited range, CRF + preset.
//         Width and height must be even (yuv420p halves chroma): an odd size is refused with an
//         InputError before anything is written; frames are never padded or cropped silently.
//   webm  ".webm", ".mkv": VP9 (libvpx-vp9) constant quality (CRF), yuv420p; any size.
//   gif   ".gif": one 256-colour palette for the whole clip, made by FFmpeg's palettegen and
//         applied by paletteuse (ordered Bayer dither, which does not crawl between frames).
//         The global palette needs every frame, so the clip's RGB frames stay in memory until
//         finish() (width * height * 3 bytes per frame). GIF delays are in 1/100 s: fps values
//         that do not divide 100 (e.g. 8) get alternating delays that average to the right rate.
//   png   a folder of frame_00000.png, frame_00001.png, ... (a path with no extension or ending in
//         '/'), or a pattern such as "out/shot_%04d.png" (the folder is the pattern's parent).
//         Encoded by FFmpeg's PNG encoder, one file per frame, full RGB.
//
// Output is atomic: a file is written under a hidden temporary name in the target folder and
// renamed onto the final name by finish(); an image sequence is written into a hidden temporary
// folder next to its folder, which finish() renames into place. A writer destroyed without
// finish() (an exception, an interrupted job) removes the temporary and leaves nothing under the
// final name. An existing file under the final name is replaced. If the sequence folder already
// exists, finish() removes the frames in it that match the naming pattern and moves the new frames
// in one by one (each file appears whole; other files in the folder are left alone).
//
// Metadata (prompt, seed, model, steps, sampler, ...: whatever the options carry) is stored as
// container tags: MP4 with movflags +use_metadata_tags (custom keys survive; `ffprobe
// -show_entries format_tags` lists them), WebM as Matroska tags (ffprobe shows keys upper-case),
// PNG as text chunks in every frame. GIF has no place for tags: they are not written.
//
// Every frame given is in the file: encoders are flushed and each packet carries its duration,
// so the MP4 edit list does not drop the last frame.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>

namespace at {
class Tensor;
}

namespace vdm::codecs {

enum class VideoFormat { kMp4, kWebm, kGif, kPngSequence };

struct VideoWriterOptions {
  int fps = 8;  // frames per second, 1..1000
  // Constant-quality level, lower is better: H.264 0..51 (mp4; 18 is visually lossless),
  // VP9 0..63 (webm). Not used by gif and png.
  int crf = 18;
  // x264 preset: ultrafast, superfast, veryfast, faster, fast, medium, slow, slower, veryslow.
  // For webm the same names map onto libvpx's cpu-used (ultrafast = fastest).
  std::string preset = "medium";
  // "" = from the path's extension; otherwise "mp4", "webm", "gif" or "png".
  std::string format;
  // Container tags, e.g. {"prompt", "a red ball"}, {"seed", "42"}.
  std::map<std::string, std::string> metadata;
};

// The format VideoWriter would use for `path` with `format` ("" = by extension). InputError for an
// unknown format or extension. Lets a CLI validate its output argument before generating.
VideoFormat resolve_video_format(const std::string& path, const std::string& format = "");

// InputError when crf is out of range for the format's encoder (H.264 0..51, VP9 0..63) or the
// preset is not an x264 preset name (MP4 and WebM); `where` starts the message.
void check_quality_settings(VideoFormat format, int crf, const std::string& preset, const std::string& where);

// "mp4", "webm", "gif", "png".
const char* video_format_name(VideoFormat format);

class VideoWriter {
 public:
  // Validates everything that can be checked up front (format, size, fps, crf, preset, output
  // folder) and opens the encoder and the temporary output. InputError for bad arguments or an
  // output folder that is missing or not writable; CodecError if FFmpeg cannot set up the encoder.
  VideoWriter(std::string path, int width, int height, VideoWriterOptions options = {});
  ~VideoWriter();
  VideoWriter(const VideoWriter&) = delete;
  VideoWriter& operator=(const VideoWriter&) = delete;

  // One frame of packed RGB24: height rows of `row_stride` bytes (0 = 3 * width).
  void write(const uint8_t* rgb, int64_t row_stride = 0);
  // frame: [height, width, 3] uint8 (any device, any strides).
  void write_frame(const at::Tensor& frame);
  // frames: [F, height, width, 3] uint8.
  void write_frames(const at::Tensor& frames);
  // Flushes the encoder, finalises the container and renames it onto the final path. At least
  // one frame must have been written. No writes are accepted afterwards.
  void finish();

  int64_t frames_written() const;
  VideoFormat format() const;
  const std::string& path() const;
  int width() const;
  int height() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vdm::codecs
