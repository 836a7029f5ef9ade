// Pixel-format conversion between packed RGB24 (what vdm's tensors hold) and FFmpeg frames,
// through libswscale. Free of LibTorch.
//
// Colour conventions: RGB is full range (0..255). YUV written by vdm is BT.709, limited range,
// and tagged so in the stream. When decoding, the frame's own colour tags are honoured
// (matrix: BT.601/BT.709/BT.2020/...; range: limited or full, yuvj* = full); untagged YUV is
// read as BT.601 limited range (FFmpeg's default). Alpha, where present, is dropped.
#pragma once
#include <cstdint>
#include <string>

#include "codecs/ffmpeg_handles.h"

namespace vdm::codecs {

// Converts decoded frames of any pixel format and size to packed RGB24 of the same size.
class ToRgbConverter {
 public:
  // Writes `frame` as RGB24 into `dst`: frame.height rows of `dst_stride` bytes
  // (at least 3 * frame.width). Rebuilds the scaler when the frame's size, format or colour
  // tags change. `file` names the source in error messages.
  void convert(const AVFrame& frame, uint8_t* dst, int dst_stride, const std::string& file);

 private:
  SwsPtr sws_;
  int width_ = -1, height_ = -1, format_ = -1, colorspace_ = -1, range_ = -1;
};

// Converts packed RGB24 images of a fixed size into frames of `dst_format` (same size).
class FromRgbConverter {
 public:
  FromRgbConverter(int width, int height, AVPixelFormat dst_format, const std::string& file);
  // rgb: height rows of `stride` bytes; `dst` must be allocated with the target format and size
  // and writable.
  void convert(const uint8_t* rgb, int64_t stride, AVFrame& dst);

 private:
  SwsPtr sws_;
  int width_, height_;
  std::string file_;
};

}  // namespace vdm::codecs
