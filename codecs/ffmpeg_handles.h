// RAII holders for FFmpeg objects and the one error path for FFmpeg return codes.
//
// Every FFmpeg object that vdm creates lives in one of the unique_ptr aliases below, so an
// exception thrown half-way through opening or encoding never leaks a context or leaves a file
// handle open. This header is free of LibTorch: the image decoding core built on it can be
// linked (for example into a fuzzer) with FFmpeg, fmt and src/core alone.
#pragma once
#include <memory>
#include <string>
#include <string_view>

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavfilter/avfilter.h>
#include <libavformat/avformat.h>
#include <libavutil/dict.h>
#include <libavutil/frame.h>
#include <libswscale/swscale.h>
}

namespace vdm::codecs {

// Sets FFmpeg's log level to errors only (libx264 and libvpx are chatty otherwise). Runs once per
// process; every entry point of codecs/ calls it, so callers never need to.
void init_ffmpeg();

// FFmpeg's message for an error code (av_strerror), e.g. "Invalid data found when processing input".
std::string av_error_string(int errnum);

// Throws vdm::CodecError when `ret` < 0, with the message
//   "<file>: <what> failed: <FFmpeg's message>[; <hint>]".
// `input_fault` marks failures caused by the user's file (unreadable, corrupt), which the CLI
// reports as bad input. Returns `ret` unchanged otherwise, so it can wrap calls inline.
int check(int ret, std::string_view what, const std::string& file, bool input_fault = false,
          std::string_view hint = {});

// ---- deleters --------------------------------------------------------------------------------

struct InputFormatDeleter {
  void operator()(AVFormatContext* ctx) const;  // avformat_close_input
};
// An output context: closes its AVIOContext (unless the muxer is AVFMT_NOFILE) and frees it.
struct OutputFormatDeleter {
  void operator()(AVFormatContext* ctx) const;
};
struct CodecContextDeleter {
  void operator()(AVCodecContext* ctx) const;
};
struct FrameDeleter {
  void operator()(AVFrame* frame) const;
};
struct PacketDeleter {
  void operator()(AVPacket* packet) const;
};
struct SwsDeleter {
  void operator()(SwsContext* ctx) const;
};
struct FilterGraphDeleter {
  void operator()(AVFilterGraph* graph) const;
};
struct FilterInOutDeleter {
  void operator()(AVFilterInOut* io) const;
};
// A custom AVIOContext: frees its buffer too.
struct IoContextDeleter {
  void operator()(AVIOContext* io) const;
};

using InputFormatPtr = std::unique_ptr<AVFormatContext, InputFormatDeleter>;
using OutputFormatPtr = std::unique_ptr<AVFormatContext, OutputFormatDeleter>;
using CodecContextPtr = std::unique_ptr<AVCodecContext, CodecContextDeleter>;
using FramePtr = std::unique_ptr<AVFrame, FrameDeleter>;
using PacketPtr = std::unique_ptr<AVPacket, PacketDeleter>;
using SwsPtr = std::unique_ptr<SwsContext, SwsDeleter>;
using FilterGraphPtr = std::unique_ptr<AVFilterGraph, FilterGraphDeleter>;
using FilterInOutPtr = std::unique_ptr<AVFilterInOut, FilterInOutDeleter>;
using IoContextPtr = std::unique_ptr<AVIOContext, IoContextDeleter>;

// An AVDictionary (options or metadata). FFmpeg functions that consume options take `AVDictionary**`:
// pass `dict.out()`; whatever FFmpeg leaves there (unused options) is freed with the holder.
class Dictionary {
 public:
  Dictionary() = default;
  ~Dictionary();
  Dictionary(const Dictionary&) = delete;
  Dictionary& operator=(const Dictionary&) = delete;
  Dictionary(Dictionary&& other) noexcept : dict_(other.dict_) { other.dict_ = nullptr; }
  Dictionary& operator=(Dictionary&& other) noexcept;

  // Sets key=value (replacing an earlier value); throws CodecError on allocation failure.
  void set(const std::string& key, const std::string& value);
  // The value of `key`, or nullptr.
  const char* get(const std::string& key) const;
  int count() const;
  AVDictionary* get() const { return dict_; }
  AVDictionary** out() { return &dict_; }
  // Gives up ownership (for FFmpeg fields that take over a dictionary, e.g. AVFormatContext::metadata).
  AVDictionary* release();

 private:
  AVDictionary* dict_ = nullptr;
};

// Allocating constructors that throw CodecError (out of memory) instead of returning nullptr.
FramePtr make_frame();
PacketPtr make_packet();
CodecContextPtr make_codec_context(const AVCodec* codec, const std::string& file);

}  // namespace vdm::codecs
