// Reads any FFmpeg-readable video (MP4, WebM, MKV, GIF, MOV, ...) or image sequence as RGB frames,
// one at a time or all at once.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "codecs/image_codec.h"

namespace at {
class Tensor;
}

namespace vdm::codecs {

class VideoReader {
 public:
  // `path`: a video file; a folder written by VideoWriter as a PNG sequence (frame_00000.png,
  // ...); or an image-sequence pattern such as "frames/frame_%05d.png". Image sequences carry no
  // rate: fps() is then FFmpeg's default of 25. A missing, empty or unreadable file, or one without
  // a video stream, gives CodecError(input_fault=true) naming the path and FFmpeg's message.
  explicit VideoReader(const std::string& path);
  ~VideoReader();
  VideoReader(const VideoReader&) = delete;
  VideoReader& operator=(const VideoReader&) = delete;

  int width() const;
  int height() const;
  // Frames per second as the container declares it (the stream's r_frame_rate, else its average).
  double fps() const;
  // Number of frames, best effort: the container's count, else duration x fps rounded; -1 when
  // unknown. read() may deliver a few more or fewer.
  int64_t frame_count() const;

  // Decodes the next frame into `frame` ([H, W, 3] uint8, a new tensor each call). Returns false
  // at the end of the stream. Decoding errors throw CodecError(input_fault=true).
  bool read(at::Tensor& frame);
  // The same without LibTorch.
  bool read(RgbImage& frame);
  // Reads the remaining frames (at most max_frames when >= 0).
  // returns: [F, H, W, 3] uint8. A stream that yields no frame (with max_frames != 0) gives
  // CodecError(input_fault=true); so do frames that change size mid-stream.
  at::Tensor read_all(int64_t max_frames = -1);

  const std::string& path() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vdm::codecs
