#include "batch/video_concat.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "core/interrupt.h"
#ifdef VDM_WITH_FFMPEG
#include <ATen/ATen.h>

#include "codecs/ffmpeg_handles.h"
#include "codecs/video_reader.h"
#include "codecs/video_writer.h"
#include "io/atomic_file.h"
#include "pipelines/video_pipeline.h"
extern "C" {
#include <libavutil/mathematics.h>
}
#endif

namespace vdm::batch {

#ifdef VDM_WITH_FFMPEG

namespace {

using codecs::check;

struct OpenInput {
  std::string path;
  codecs::InputFormatPtr ctx;
  AVStream* stream = nullptr;
};

OpenInput open_input(const std::string& path) {
  OpenInput in;
  in.path = path;
  AVFormatContext* raw = nullptr;
  check(avformat_open_input(&raw, path.c_str(), nullptr, nullptr), "opening", path,
        /*input_fault=*/true);
  in.ctx.reset(raw);
  check(avformat_find_stream_info(raw, nullptr), "reading stream information", path, true);
  int index = av_find_best_stream(raw, AVMEDIA_TYPE_VIDEO, -1, -1, nullptr, 0);
  if (index < 0)
    throw CodecError(fmt::format("{}: has no video stream to concatenate", path), true);
  in.stream = raw->streams[index];
  return in;
}

AVRational frame_rate(const AVStream* s) {
  return s->r_frame_rate.num > 0 ? s->r_frame_rate : s->avg_frame_rate;
}

// "" when `b` can be appended to `a` packet for packet, else the difference.
std::string stream_difference(const OpenInput& a, const OpenInput& b) {
  const AVCodecParameters* p = a.stream->codecpar;
  const AVCodecParameters* q = b.stream->codecpar;
  if (p->codec_id != q->codec_id)
    return fmt::format("{} is {} but {} is {}", a.path, avcodec_get_name(p->codec_id), b.path,
                       avcodec_get_name(q->codec_id));
  if (p->width != q->width || p->height != q->height)
    return fmt::format("{} is {}x{} but {} is {}x{}", a.path, p->width, p->height, b.path,
                       q->width, q->height);
  if (p->format != q->format) return fmt::format("{} and {} differ in pixel format", a.path, b.path);
  if (av_cmp_q(frame_rate(a.stream), frame_rate(b.stream)) != 0)
    return fmt::format("{} and {} differ in frame rate", a.path, b.path);
  if (p->extradata_size != q->extradata_size ||
      (p->extradata_size > 0 && std::memcmp(p->extradata, q->extradata, p->extradata_size) != 0))
    return fmt::format("{} and {} were encoded with different settings (codec headers differ)",
                       a.path, b.path);
  return {};
}

ConcatResult remux(std::vector<OpenInput>& inputs, const std::string& output,
                   const AVOutputFormat* ofmt, const ConcatOptions& options) {
  ConcatResult result;
  result.remuxed = true;
  const std::string temp = io::temp_path_for(output);
  AVFormatContext* raw = nullptr;
  check(avformat_alloc_output_context2(&raw, ofmt, nullptr, temp.c_str()),
        "setting up the muxer", output);
  codecs::OutputFormatPtr oc(raw);
  AVStream* out = avformat_new_stream(oc.get(), nullptr);
  if (!out) throw CodecError(fmt::format("{}: cannot add a video stream", output));
  const AVStream* first = inputs.front().stream;
  check(avcodec_parameters_copy(out->codecpar, first->codecpar), "copying stream parameters",
        output);
  out->codecpar->codec_tag = 0;
  out->time_base = first->time_base;
  out->avg_frame_rate = frame_rate(first);
  out->r_frame_rate = frame_rate(first);
  for (const auto& [key, value] : options.metadata)
    check(av_dict_set(&oc->metadata, key.c_str(), value.c_str(), 0), "setting metadata", output);

  struct TempGuard {
    std::string path;
    bool armed = false;
    ~TempGuard() {
      if (armed) std::remove(path.c_str());
    }
  } guard{temp};
  if (!(oc->oformat->flags & AVFMT_NOFILE)) {
    int ret = avio_open(&oc->pb, temp.c_str(), AVIO_FLAG_WRITE);
    if (ret < 0)
      throw InputError(fmt::format("{}: cannot create output file: {}; check that the folder "
                                   "exists and is writable",
                                   output, codecs::av_error_string(ret)));
    guard.armed = true;
  }
  codecs::Dictionary muxer_options;
  if (std::strcmp(ofmt->name, "mp4") == 0 || std::strcmp(ofmt->name, "mov") == 0)
    muxer_options.set("movflags", "+use_metadata_tags+faststart");
  check(avformat_write_header(oc.get(), muxer_options.out()), "writing the container header",
        output);
  const AVRational out_tb = out->time_base;

  codecs::PacketPtr pkt = codecs::make_packet();
  int64_t offset = 0;  // start of the current clip in the output, in out_tb
  int64_t last_dts = std::numeric_limits<int64_t>::min();
  for (OpenInput& in : inputs) {
    throw_if_interrupted();
    const AVRational in_tb = in.stream->time_base;
    int64_t start = in.stream->start_time != AV_NOPTS_VALUE ? in.stream->start_time : 0;
    start = av_rescale_q(start, in_tb, out_tb);
    int64_t clip_end = offset;
    while (true) {
      int ret = av_read_frame(in.ctx.get(), pkt.get());
      if (ret == AVERROR_EOF) break;
      check(ret, "reading a packet", in.path, true);
      if (pkt->stream_index != in.stream->index) {
        av_packet_unref(pkt.get());
        continue;
      }
      av_packet_rescale_ts(pkt.get(), in_tb, out_tb);
      if (pkt->pts == AV_NOPTS_VALUE) pkt->pts = pkt->dts;
      if (pkt->dts == AV_NOPTS_VALUE) pkt->dts = pkt->pts;
      pkt->pts += offset - start;
      pkt->dts += offset - start;
      if (last_dts != std::numeric_limits<int64_t>::min() && pkt->dts <= last_dts)
        pkt->dts = last_dts + 1;
      if (pkt->pts < pkt->dts) pkt->pts = pkt->dts;
      last_dts = pkt->dts;
      int64_t duration = pkt->duration > 0 ? pkt->duration
                                            : av_rescale_q(1, av_inv_q(frame_rate(in.stream)), out_tb);
      pkt->duration = duration;
      clip_end = std::max(clip_end, pkt->pts + duration);
      pkt->stream_index = 0;
      pkt->pos = -1;
      check(av_interleaved_write_frame(oc.get(), pkt.get()), "writing a packet", output);
      ++result.frames;
    }
    offset = clip_end;
  }
  check(av_write_trailer(oc.get()), "finishing the container", output);
  oc.reset();  // closes the file
  guard.armed = false;
  io::commit_rename(temp, output);
  return result;
}

ConcatResult reencode(const std::vector<std::string>& paths, const std::string& output,
                      const ConcatOptions& options, std::string reason) {
  ConcatResult result;
  result.reencode_reason = std::move(reason);
  std::unique_ptr<codecs::VideoWriter> writer;
  int width = 0, height = 0;
  double out_fps = 0;
  for (const std::string& path : paths) {
    codecs::VideoReader reader(path);
    if (!writer) {
      width = reader.width();
      height = reader.height();
      out_fps = std::clamp(std::round(reader.fps()), 1.0, 240.0);
      codecs::VideoWriterOptions wo;
      wo.fps = static_cast<int>(out_fps);
      wo.crf = options.crf;
      wo.preset = options.preset;
      wo.metadata = options.metadata;
      // H.264 needs even sizes; round the first clip's size down when it is odd.
      if (codecs::resolve_video_format(output) == codecs::VideoFormat::kMp4) {
        width -= width % 2;
        height -= height % 2;
      }
      writer = std::make_unique<codecs::VideoWriter>(output, width, height, wo);
    }
    const double in_fps = reader.fps() > 0 ? reader.fps() : out_fps;
    // Source frame k covers [k, k+1) / in_fps; output frame j shows the source frame at j / out_fps.
    int64_t k = 0;
    int64_t emitted = 0;  // output frames of this clip so far
    at::Tensor frame;
    while (reader.read(frame)) {
      throw_if_interrupted();
      if (frame.size(0) != height || frame.size(1) != width)
        frame = pipelines::fit_image(frame, width, height, "pad");
      const int64_t until = static_cast<int64_t>(std::ceil((k + 1) * out_fps / in_fps - 1e-9));
      for (; emitted < until; ++emitted) {
        writer->write_frame(frame);
        ++result.frames;
      }
      ++k;
    }
  }
  if (!writer || result.frames == 0)
    throw InputError(fmt::format("{}: nothing to concatenate: the inputs hold no frames", output));
  writer->finish();
  return result;
}

}  // namespace

ConcatResult concat_videos(const std::vector<std::string>& inputs, const std::string& output,
                           const ConcatOptions& options) {
  codecs::init_ffmpeg();
  if (inputs.empty()) throw InputError(fmt::format("{}: no clips to concatenate", output));
  const codecs::VideoFormat format = codecs::resolve_video_format(output);
  if (format == codecs::VideoFormat::kPngSequence)
    throw InputError(fmt::format("--concat {}: give a video file (.mp4, .webm, .gif)", output));

  std::string reason = options.allow_remux ? std::string() : "re-encoding was requested";
  const AVOutputFormat* ofmt = nullptr;
  std::vector<OpenInput> opened;
  if (reason.empty()) {
    for (const auto& path : inputs) opened.push_back(open_input(path));
    ofmt = av_guess_format(nullptr, output.c_str(), nullptr);
    const AVCodecID codec = opened.front().stream->codecpar->codec_id;
    if (!ofmt) {
      reason = "FFmpeg has no muxer for the output's extension";
    } else if (format == codecs::VideoFormat::kGif || codec == AV_CODEC_ID_GIF) {
      reason = "GIF clips are re-encoded with one palette";
    } else if (avformat_query_codec(ofmt, codec, FF_COMPLIANCE_NORMAL) != 1) {
      reason = fmt::format("the {} container cannot hold {} video", ofmt->name,
                           avcodec_get_name(codec));
    } else {
      for (size_t i = 1; i < opened.size() && reason.empty(); ++i)
        reason = stream_difference(opened.front(), opened[i]);
    }
  }
  if (reason.empty()) return remux(opened, output, ofmt, options);
  opened.clear();
  return reencode(inputs, output, options, reason);
}

#else  // !VDM_WITH_FFMPEG

ConcatResult concat_videos(const std::vector<std::string>& inputs, const std::string& output,
                           const ConcatOptions& options) {
  (void)inputs;
  (void)options;
  throw Error(fmt::format("{}: joining clips needs FFmpeg, and this vdm was built without it "
                          "(VDM_WITH_FFMPEG=OFF)",
                          output));
}

#endif

}  // namespace vdm::batch
