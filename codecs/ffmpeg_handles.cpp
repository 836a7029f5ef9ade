#include "codecs/ffmpeg_handles.h"

#include <fmt/format.h>

#include <mutex>

#include "core/error.h"

extern "C" {
#include <libavutil/error.h>
#include <libavutil/log.h>
#include <libavutil/mem.h>
}

namespace vdm::codecs {

void init_ffmpeg() {
  static std::once_flag once;
  std::call_once(once, [] { av_log_set_level(AV_LOG_ERROR); });
}

std::string av_error_string(int errnum) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {0};
  if (av_strerror(errnum, buf, sizeof(buf)) < 0)
    return fmt::format("unknown FFmpeg error {}", errnum);
  return buf;
}

int check(int ret, std::string_view what, const std::string& file, bool input_fault,
          std::string_view hint) {
  if (ret >= 0) return ret;
  std::string msg = fmt::format("{}: {} failed: {}", file, what, av_error_string(ret));
  if (!hint.empty()) msg += fmt::format("; {}", hint);
  throw CodecError(msg, input_fault);
}

void InputFormatDeleter::operator()(AVFormatContext* ctx) const { avformat_close_input(&ctx); }

void OutputFormatDeleter::operator()(AVFormatContext* ctx) const {
  if (!ctx) return;
  if (ctx->oformat && !(ctx->oformat->flags & AVFMT_NOFILE) && ctx->pb) avio_closep(&ctx->pb);
  avformat_free_context(ctx);
}

void CodecContextDeleter::operator()(AVCodecContext* ctx) const { avcodec_free_context(&ctx); }
void FrameDeleter::operator()(AVFrame* frame) const { av_frame_free(&frame); }
void PacketDeleter::operator()(AVPacket* packet) const { av_packet_free(&packet); }
void SwsDeleter::operator()(SwsContext* ctx) const { sws_freeContext(ctx); }
void FilterGraphDeleter::operator()(AVFilterGraph* graph) const { avfilter_graph_free(&graph); }
void FilterInOutDeleter::operator()(AVFilterInOut* io) const { avfilter_inout_free(&io); }

void IoContextDeleter::operator()(AVIOContext* io) const {
  if (!io) return;
  av_freep(&io->buffer);
  avio_context_free(&io);
}

Dictionary::~Dictionary() { av_dict_free(&dict_); }

Dictionary& Dictionary::operator=(Dictionary&& other) noexcept {
  if (this != &other) {
    av_dict_free(&dict_);
    dict_ = other.dict_;
    other.dict_ = nullptr;
  }
  return *this;
}

void Dictionary::set(const std::string& key, const std::string& value) {
  check(av_dict_set(&dict_, key.c_str(), value.c_str(), 0), fmt::format("setting '{}'", key),
        "<options>");
}

const char* Dictionary::get(const std::string& key) const {
  const AVDictionaryEntry* e = av_dict_get(dict_, key.c_str(), nullptr, AV_DICT_MATCH_CASE);
  return e ? e->value : nullptr;
}

int Dictionary::count() const { return av_dict_count(dict_); }

AVDictionary* Dictionary::release() {
  AVDictionary* d = dict_;
  dict_ = nullptr;
  return d;
}

FramePtr make_frame() {
  FramePtr f(av_frame_alloc());
  if (!f) throw CodecError("av_frame_alloc failed: out of memory");
  return f;
}

PacketPtr make_packet() {
  PacketPtr p(av_packet_alloc());
  if (!p) throw CodecError("av_packet_alloc failed: out of memory");
  return p;
}

CodecContextPtr make_codec_context(const AVCodec* codec, const std::string& file) {
  CodecContextPtr c(avcodec_alloc_context3(codec));
  if (!c)
    throw CodecError(fmt::format("{}: avcodec_alloc_context3 ({}) failed: out of memory", file,
                                 codec ? codec->name : "?"));
  return c;
}

}  // namespace vdm::codecs
