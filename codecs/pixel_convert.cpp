#include "codecs/pixel_convert.h"

#include <fmt/format.h>

#include "core/error.h"

extern "C" {
#include <libavutil/pixdesc.h>
}

namespace vdm::codecs {

namespace {

// True for planar/packed YUV formats (the ones whose matrix and range matter).
bool is_yuv(AVPixelFormat format) {
  const AVPixFmtDescriptor* desc = av_pix_fmt_desc_get(format);
  return desc && desc->nb_components >= 3 &&
         !(desc->flags & (AV_PIX_FMT_FLAG_RGB | AV_PIX_FMT_FLAG_PAL));
}

bool is_full_range_format(AVPixelFormat format) {
  switch (format) {
    case AV_PIX_FMT_YUVJ420P:
    case AV_PIX_FMT_YUVJ422P:
    case AV_PIX_FMT_YUVJ444P:
    case AV_PIX_FMT_YUVJ440P:
    case AV_PIX_FMT_YUVJ411P:
      return true;
    default:
      return false;
  }
}

const char* format_name(int format) {
  const char* name = av_get_pix_fmt_name(static_cast<AVPixelFormat>(format));
  return name ? name : "unknown";
}

}  // namespace

void ToRgbConverter::convert(const AVFrame& frame, uint8_t* dst, int dst_stride,
                             const std::string& file) {
  const auto src_format = static_cast<AVPixelFormat>(frame.format);
  const int range = (frame.color_range == AVCOL_RANGE_JPEG || is_full_range_format(src_format));
  if (!sws_ || frame.width != width_ || frame.height != height_ || frame.format != format_ ||
      frame.colorspace != colorspace_ || range != range_) {
    if (frame.width <= 0 || frame.height <= 0)
      throw CodecError(fmt::format("{}: decoded frame has no pixels ({}x{}); the file is damaged",
                                   file, frame.width, frame.height),
                       true);
    sws_.reset(sws_getContext(frame.width, frame.height, src_format, frame.width, frame.height,
                              AV_PIX_FMT_RGB24,
                              SWS_BICUBIC | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INT, nullptr,
                              nullptr, nullptr));
    if (!sws_)
      throw CodecError(fmt::format("{}: cannot convert pixel format {} ({}x{}) to RGB24", file,
                                   format_name(frame.format), frame.width, frame.height),
                       true);
    if (is_yuv(src_format)) {
      // sws_getCoefficients maps unknown/unspecified matrices to BT.601.
      sws_setColorspaceDetails(sws_.get(), sws_getCoefficients(frame.colorspace), range,
                               sws_getCoefficients(SWS_CS_DEFAULT), 1, 0, 1 << 16, 1 << 16);
    }
    width_ = frame.width;
    height_ = frame.height;
    format_ = frame.format;
    colorspace_ = frame.colorspace;
    range_ = range;
  }
  uint8_t* dst_planes[4] = {dst, nullptr, nullptr, nullptr};
  int dst_strides[4] = {dst_stride, 0, 0, 0};
  int rows = sws_scale(sws_.get(), frame.data, frame.linesize, 0, frame.height, dst_planes,
                       dst_strides);
  if (rows != frame.height)
    throw CodecError(fmt::format("{}: converting a {} frame to RGB24 failed ({} of {} rows)", file,
                                 format_name(frame.format), rows, frame.height),
                     true);
}

FromRgbConverter::FromRgbConverter(int width, int height, AVPixelFormat dst_format,
                                   const std::string& file)
    : width_(width), height_(height), file_(file) {
  sws_.reset(sws_getContext(width, height, AV_PIX_FMT_RGB24, width, height, dst_format,
                            SWS_BICUBIC | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INP, nullptr, nullptr,
                            nullptr));
  if (!sws_)
    throw CodecError(fmt::format("{}: cannot convert RGB24 to {} at {}x{}", file,
                                 format_name(dst_format), width, height));
  if (is_yuv(dst_format)) {
    // Full-range RGB in, BT.709 limited-range YUV out (matching the stream's colour tags).
    sws_setColorspaceDetails(sws_.get(), sws_getCoefficients(SWS_CS_DEFAULT), 1,
                             sws_getCoefficients(SWS_CS_ITU709), 0, 0, 1 << 16, 1 << 16);
  }
}

void FromRgbConverter::convert(const uint8_t* rgb, int64_t stride, AVFrame& dst) {
  const uint8_t* src_planes[4] = {rgb, nullptr, nullptr, nullptr};
  int src_strides[4] = {static_cast<int>(stride), 0, 0, 0};
  int rows = sws_scale(sws_.get(), src_planes, src_strides, 0, height_, dst.data, dst.linesize);
  if (rows != height_)
    throw CodecError(fmt::format("{}: converting RGB24 to {} failed ({} of {} rows)", file_,
                                 format_name(dst.format), rows, height_));
}

}  // namespace vdm::codecs
