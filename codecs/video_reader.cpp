#include "codecs/video_reader.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <vector>

#include "codecs/ffmpeg_handles.h"
#include "codecs/pixel_convert.h"
#include "core/error.h"

namespace vdm::codecs {

namespace fs = std::filesystem;

namespace {
constexpr const char* kVideoHint = "check that it is a video file FFmpeg can read";
}

struct VideoReader::Impl {
  std::string path;
  InputFormatPtr format;
  CodecContextPtr dec;
  AVStream* stream = nullptr;
  int stream_index = -1;
  PacketPtr packet;
  FramePtr frame;
  ToRgbConverter converter;
  bool flushing = false;
  bool done = false;

  explicit Impl(std::string p) : path(std::move(p)) {
    init_ffmpeg();
    std::string url = path;
    const AVInputFormat* forced = nullptr;
    std::error_code ec;
    if (fs::is_directory(path, ec)) {
      // A folder of frames as VideoWriter names them.
      fs::path first = fs::path(path) / "frame_00000.png";
      if (!fs::exists(first, ec))
        throw CodecError(fmt::format("{}: is a folder without frame_00000.png; give a video file, "
                                     "a folder of frame_NNNNN.png or a pattern such as "
                                     "frames/frame_%05d.png",
                                     path),
                         true);
      url = (fs::path(path) / "frame_%05d.png").string();
      forced = av_find_input_format("image2");
    }
    AVFormatContext* raw = nullptr;
    check(avformat_open_input(&raw, url.c_str(), forced, nullptr), "opening the video", path, true,
          kVideoHint);
    format.reset(raw);
    check(avformat_find_stream_info(format.get(), nullptr), "reading the stream information",
          path, true, kVideoHint);
    const AVCodec* decoder = nullptr;
    stream_index = check(av_find_best_stream(format.get(), AVMEDIA_TYPE_VIDEO, -1, -1, &decoder, 0),
                         "finding a video stream", path, true, kVideoHint);
    stream = format->streams[stream_index];
    for (unsigned i = 0; i < format->nb_streams; ++i)
      if (static_cast<int>(i) != stream_index) format->streams[i]->discard = AVDISCARD_ALL;
    if (static_cast<int64_t>(stream->codecpar->width) * stream->codecpar->height > kMaxImagePixels)
      throw CodecError(fmt::format("{}: video is {}x{}, larger than the {} pixels vdm accepts", path,
                                   stream->codecpar->width, stream->codecpar->height,
                                   kMaxImagePixels),
                       true);
    dec = make_codec_context(decoder, path);
    check(avcodec_parameters_to_context(dec.get(), stream->codecpar), "setting up the decoder",
          path, true);
    dec->thread_count = 0;
    dec->thread_type = FF_THREAD_FRAME | FF_THREAD_SLICE;
    check(avcodec_open2(dec.get(), decoder, nullptr),
          fmt::format("opening the {} decoder", decoder->name), path, true, kVideoHint);
    packet = make_packet();
    frame = make_frame();
  }

  // Decodes the next frame into `frame`; false at the end of the stream.
  bool next() {
    if (done) return false;
    while (true) {
      int ret = avcodec_receive_frame(dec.get(), frame.get());
      if (ret == 0) return true;
      if (ret == AVERROR_EOF) {
        done = true;
        return false;
      }
      if (ret != AVERROR(EAGAIN)) check(ret, "decoding a frame", path, true, kVideoHint);
      if (flushing) {
        done = true;
        return false;
      }
      ret = av_read_frame(format.get(), packet.get());
      if (ret == AVERROR_EOF) {
        flushing = true;
        check(avcodec_send_packet(dec.get(), nullptr), "decoding a frame", path, true, kVideoHint);
        continue;
      }
      check(ret, "reading the video data", path, true, kVideoHint);
      if (packet->stream_index != stream_index) {
        av_packet_unref(packet.get());
        continue;
      }
      ret = avcodec_send_packet(dec.get(), packet.get());
      av_packet_unref(packet.get());
      if (ret != AVERROR(EAGAIN)) check(ret, "decoding a frame", path, true, kVideoHint);
    }
  }

  double fps() const {
    AVRational r = av_guess_frame_rate(format.get(), stream, nullptr);
    return r.num > 0 && r.den > 0 ? av_q2d(r) : 0.0;
  }

  int64_t frame_count() const {
    if (stream->nb_frames > 0) return stream->nb_frames;
    double rate = fps();
    if (rate <= 0) return -1;
    if (stream->duration != AV_NOPTS_VALUE && stream->duration > 0)
      return std::llround(stream->duration * av_q2d(stream->time_base) * rate);
    if (format->duration != AV_NOPTS_VALUE && format->duration > 0)
      return std::llround(format->duration / static_cast<double>(AV_TIME_BASE) * rate);
    return -1;
  }
};

VideoReader::VideoReader(const std::string& path) : impl_(std::make_unique<Impl>(path)) {}
VideoReader::~VideoReader() = default;

int VideoReader::width() const { return impl_->stream->codecpar->width; }
int VideoReader::height() const { return impl_->stream->codecpar->height; }
double VideoReader::fps() const { return impl_->fps(); }
int64_t VideoReader::frame_count() const { return impl_->frame_count(); }
const std::string& VideoReader::path() const { return impl_->path; }

bool VideoReader::read(RgbImage& out) {
  if (!impl_->next()) return false;
  const AVFrame& f = *impl_->frame;
  out.width = f.width;
  out.height = f.height;
  out.pixels.resize(static_cast<size_t>(f.width) * f.height * 3);
  impl_->converter.convert(f, out.pixels.data(), f.width * 3, impl_->path);
  return true;
}

bool VideoReader::read(at::Tensor& out) {
  if (!impl_->next()) return false;
  const AVFrame& f = *impl_->frame;
  out = at::empty({f.height, f.width, 3}, at::kByte);
  impl_->converter.convert(f, out.data_ptr<uint8_t>(), f.width * 3, impl_->path);
  return true;
}

at::Tensor VideoReader::read_all(int64_t max_frames) {
  std::vector<at::Tensor> frames;
  int64_t expected = frame_count();
  if (expected > 0) frames.reserve(static_cast<size_t>(max_frames >= 0 ? std::min(expected, max_frames) : expected));
  at::Tensor f;
  while ((max_frames < 0 || static_cast<int64_t>(frames.size()) < max_frames) && read(f)) {
    if (!frames.empty() && f.sizes() != frames.front().sizes())
      throw CodecError(fmt::format("{}: frame {} is {}x{} but the first frame is {}x{}; frames of "
                                   "changing size cannot be stacked (read them one at a time)",
                                   impl_->path, frames.size(), f.size(1), f.size(0),
                                   frames.front().size(1), frames.front().size(0)),
                       true);
    frames.push_back(f);
  }
  if (frames.empty()) {
    if (max_frames == 0) return at::empty({0, height(), width(), 3}, at::kByte);
    throw CodecError(fmt::format("{}: the video contains no decodable frames; {}", impl_->path,
                                 kVideoHint),
                     true);
  }
  return at::stack(frames);
}

}  // namespace vdm::codecs
