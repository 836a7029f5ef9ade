#include "codecs/video_writer.h"

#include <ATen/ATen.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fmt/format.h>
#include <thread>
#include <vector>

#include "codecs/ffmpeg_handles.h"
#include "codecs/image_codec.h"
#include "codecs/image_reader.h"
#include "codecs/pixel_convert.h"
#include "core/error.h"
#include "io/atomic_file.h"

extern "C" {
#include <libavfilter/buffersink.h>
#include <libavfilter/buffersrc.h>
#include <libavutil/mem.h>
}

namespace vdm::codecs {

namespace fs = std::filesystem;

namespace {

constexpr int kMaxSide = 16384;
constexpr const char* kX264Presets[] = {"ultrafast", "superfast", "veryfast", "faster", "fast",
                                        "medium",    "slow",      "slower",   "veryslow"};
// libvpx-vp9 cpu-used (deadline "good") for each x264 preset name above.
constexpr int kVp9CpuUsed[] = {5, 5, 5, 4, 4, 3, 2, 1, 0};

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

int preset_index(const std::string& preset) {
  for (size_t i = 0; i < std::size(kX264Presets); ++i)
    if (preset == kX264Presets[i]) return static_cast<int>(i);
  return -1;
}

// Where an image sequence goes: <folder>/<prefix><index, zero-padded to digits><suffix>.
struct SequenceTarget {
  fs::path folder;
  std::string prefix = "frame_";
  int digits = 5;
  std::string suffix = ".png";

  std::string name(int64_t index) const {
    return fmt::format("{}{:0{}d}{}", prefix, index, digits, suffix);
  }
  bool matches(const std::string& file) const {
    if (file.size() <= prefix.size() + suffix.size()) return false;
    if (file.compare(0, prefix.size(), prefix) != 0) return false;
    if (file.compare(file.size() - suffix.size(), suffix.size(), suffix) != 0) return false;
    for (size_t i = prefix.size(); i < file.size() - suffix.size(); ++i)
      if (!std::isdigit(static_cast<unsigned char>(file[i]))) return false;
    return true;
  }
};

SequenceTarget parse_sequence_target(const std::string& path) {
  SequenceTarget t;
  fs::path p(path);
  std::string file = p.filename().string();
  size_t percent = file.find('%');
  if (percent == std::string::npos) {
    if (lower(p.extension().string()) == ".png")
      throw InputError(fmt::format(
          "{}: a single .png name cannot hold a frame sequence; give a folder (frames are named "
          "frame_00000.png, ...) or a pattern such as frame_%05d.png",
          path));
    t.folder = file.empty() ? p.parent_path() : p;  // "out/" -> "out"
    if (t.folder.empty()) t.folder = ".";
    return t;
  }
  // A pattern: prefix, %d or %0Nd, suffix ending in .png.
  size_t pos = percent + 1;
  int digits = 0;
  if (pos < file.size() && file[pos] == '0') {
    ++pos;
    while (pos < file.size() && std::isdigit(static_cast<unsigned char>(file[pos])))
      digits = digits * 10 + (file[pos++] - '0');
  }
  if (pos >= file.size() || file[pos] != 'd' || digits > 12)
    throw InputError(fmt::format(
        "{}: frame name pattern must contain %d or %0Nd (e.g. frame_%05d.png)", path));
  t.prefix = file.substr(0, percent);
  t.suffix = file.substr(pos + 1);
  t.digits = digits;
  if (t.prefix.find('%') != std::string::npos || t.suffix.find('%') != std::string::npos)
    throw InputError(fmt::format("{}: frame name pattern must contain exactly one %d", path));
  std::string suffix = lower(t.suffix);
  if (suffix.size() < 4 || suffix.compare(suffix.size() - 4, 4, ".png") != 0)
    throw InputError(fmt::format("{}: frame name pattern must end in .png", path));
  t.folder = p.parent_path();
  if (t.folder.empty()) t.folder = ".";
  return t;
}

// The folder that will hold the output (file or sequence folder) must exist and be writable.
void check_output_folder(const fs::path& folder, const std::string& path) {
  fs::path dir = folder.empty() ? fs::path(".") : folder;
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw InputError(fmt::format("{}: output folder '{}' does not exist or is not a folder; "
                                 "create it first",
                                 path, dir.string()));
  if (::access(dir.c_str(), W_OK | X_OK) != 0)
    throw InputError(fmt::format("{}: output folder '{}' is not writable ({}); choose another "
                                 "output folder",
                                 path, dir.string(), std::strerror(errno)));
}

}  // namespace

void check_quality_settings(VideoFormat format, int crf, const std::string& preset, const std::string& where) {
  if (format == VideoFormat::kMp4 && (crf < 0 || crf > 51))
    throw InputError(fmt::format("{}: crf {} is out of range for H.264; use 0..51 (18 is visually lossless)", where,
                                 crf));
  if (format == VideoFormat::kWebm && (crf < 0 || crf > 63))
    throw InputError(fmt::format("{}: crf {} is out of range for VP9; use 0..63", where, crf));
  if ((format == VideoFormat::kMp4 || format == VideoFormat::kWebm) && preset_index(preset) < 0)
    throw InputError(fmt::format("{}: unknown preset '{}'; use one of ultrafast, superfast, veryfast, faster, fast, "
                                 "medium, slow, slower, veryslow",
                                 where, preset));
}

VideoFormat resolve_video_format(const std::string& path, const std::string& format) {
  if (!format.empty()) {
    std::string f = lower(format);
    if (f == "mp4" || f == "mov" || f == "h264") return VideoFormat::kMp4;
    if (f == "webm" || f == "mkv" || f == "vp9") return VideoFormat::kWebm;
    if (f == "gif") return VideoFormat::kGif;
    if (f == "png") return VideoFormat::kPngSequence;
    throw InputError(fmt::format("unknown video format '{}' for {}; use mp4, webm, gif or png",
                                 format, path));
  }
  if (path.empty()) throw InputError("empty output path; give a file name such as out.mp4");
  if (path.back() == '/') return VideoFormat::kPngSequence;
  std::string ext = lower(fs::path(path).extension().string());
  if (ext == ".mp4" || ext == ".m4v" || ext == ".mov") return VideoFormat::kMp4;
  if (ext == ".webm" || ext == ".mkv") return VideoFormat::kWebm;
  if (ext == ".gif") return VideoFormat::kGif;
  if (ext == ".png" || ext.empty()) return VideoFormat::kPngSequence;
  throw InputError(fmt::format("{}: unknown output extension '{}'; use .mp4, .webm, .gif, a folder "
                               "(PNG frames) or a pattern such as frame_%05d.png",
                               path, ext));
}

const char* video_format_name(VideoFormat format) {
  switch (format) {
    case VideoFormat::kMp4: return "mp4";
    case VideoFormat::kWebm: return "webm";
    case VideoFormat::kGif: return "gif";
    case VideoFormat::kPngSequence: return "png";
  }
  return "?";
}

struct VideoWriter::Impl {
  std::string path;
  VideoFormat format;
  int width, height;
  VideoWriterOptions options;
  int64_t frames = 0;
  bool finished = false;
  bool failed = false;
  std::string temp;  // temporary file or folder; empty once committed

  // mp4 / webm / gif
  OutputFormatPtr oc;
  CodecContextPtr enc;
  AVStream* stream = nullptr;
  FramePtr frame;  // YUV (mp4, webm) or RGB24 (gif) input frame, reused
  PacketPtr packet;
  std::unique_ptr<FromRgbConverter> to_yuv;
  // gif: buffer -> split -> palettegen/paletteuse -> buffersink
  FilterGraphPtr graph;
  AVFilterContext* source = nullptr;
  AVFilterContext* sink = nullptr;
  FramePtr filtered;
  // png
  SequenceTarget sequence;

  Impl(std::string p, int w, int h, VideoWriterOptions o)
      : path(std::move(p)), width(w), height(h), options(std::move(o)) {
    format = resolve_video_format(path, options.format);
    validate();
    try {
      if (format == VideoFormat::kPngSequence) {
        open_sequence();
      } else {
        open_container();
      }
    } catch (...) {
      discard();  // the destructor does not run for a throwing constructor
      throw;
    }
  }

  ~Impl() { discard(); }

  // Closes everything and removes the temporary output, if any.
  void discard() noexcept {
    graph.reset();
    enc.reset();
    oc.reset();  // closes the file
    if (!temp.empty()) {
      std::error_code ec;
      if (format == VideoFormat::kPngSequence)
        fs::remove_all(temp, ec);
      else
        fs::remove(temp, ec);
      temp.clear();
    }
  }

  void validate() {
    if (width <= 0 || height <= 0 || width > kMaxSide || height > kMaxSide)
      throw InputError(fmt::format("{}: cannot write a {}x{} video; width and height must be in "
                                   "1..{}",
                                   path, width, height, kMaxSide));
    if (options.fps < 1 || options.fps > 1000)
      throw InputError(fmt::format("{}: fps {} is out of range; use 1..1000", path, options.fps));
    if (format == VideoFormat::kMp4) {
      if (width % 2 != 0 || height % 2 != 0) {
        bool odd_w = width % 2 != 0;
        int side = odd_w ? width : height;
        throw InputError(fmt::format(
            "{}: {} {} is odd; H.264 with yuv420p needs even sizes; use {} or {}, or write "
            ".webm/.gif/png",
            path, odd_w ? "width" : "height", side, side - 1, side + 1));
      }
    }
    check_quality_settings(format, options.crf, options.preset, path);
  }

  // ---- image sequence ------------------------------------------------------------------------

  void open_sequence() {
    sequence = parse_sequence_target(path);
    fs::path parent = sequence.folder.parent_path();
    check_output_folder(parent, path);
    std::error_code ec;
    if (fs::exists(sequence.folder, ec) && !fs::is_directory(sequence.folder, ec))
      throw InputError(fmt::format("{}: '{}' exists and is not a folder; choose another output "
                                   "path",
                                   path, sequence.folder.string()));
    std::string candidate = io::temp_path_for(sequence.folder.string());
    if (!fs::create_directory(candidate, ec) || ec)
      throw InputError(fmt::format("{}: cannot create temporary folder {}: {}; check that the "
                                   "folder is writable",
                                   path, candidate, ec ? ec.message() : "it already exists"));
    temp = candidate;
  }

  void write_sequence_frame(const uint8_t* rgb, int64_t stride) {
    std::string png = encode_png(rgb, width, height, stride, options.metadata, path);
    fs::path file = fs::path(temp) / sequence.name(frames);
    std::FILE* f = std::fopen(file.c_str(), "wb");
    if (!f)
      throw Error(fmt::format("{}: cannot create {}: {}", path, file.string(),
                              std::strerror(errno)));
    bool ok = std::fwrite(png.data(), 1, png.size(), f) == png.size();
    int err = errno;
    ok = (std::fclose(f) == 0) && ok;
    if (!ok)
      throw Error(fmt::format("{}: writing {} failed: {}; free disk space or choose another "
                              "output folder",
                              path, file.string(), std::strerror(err ? err : errno)));
  }

  void commit_sequence() {
    const fs::path& final_folder = sequence.folder;
    std::error_code ec;
    if (!fs::exists(final_folder, ec)) {
      fs::rename(temp, final_folder, ec);
      if (ec)
        throw Error(fmt::format("{}: cannot move the finished frames from {} to {}: {}", path,
                                temp, final_folder.string(), ec.message()));
      temp.clear();
      return;
    }
    if (!fs::is_directory(final_folder, ec))
      throw InputError(fmt::format("{}: '{}' exists and is not a folder; choose another output "
                                   "path",
                                   path, final_folder.string()));
    // The folder exists: replace frames of the same pattern, leave everything else alone.
    std::vector<fs::path> stale;
    for (const auto& entry : fs::directory_iterator(final_folder, ec))
      if (entry.is_regular_file() && sequence.matches(entry.path().filename().string()))
        stale.push_back(entry.path());
    for (const auto& file : stale) fs::remove(file, ec);
    for (int64_t i = 0; i < frames; ++i) {
      std::string name = sequence.name(i);
      fs::rename(fs::path(temp) / name, final_folder / name, ec);
      if (ec)
        throw Error(fmt::format("{}: cannot move frame {} into {}: {}", path, name,
                                final_folder.string(), ec.message()));
    }
    fs::remove_all(temp, ec);
    temp.clear();
  }

  // ---- containers ----------------------------------------------------------------------------

  void open_container() {
    check_output_folder(fs::path(path).parent_path(), path);
    std::string ext = lower(fs::path(path).extension().string());
    const char* muxer = nullptr;
    const char* encoder = nullptr;
    switch (format) {
      case VideoFormat::kMp4:
        muxer = ext == ".mov" ? "mov" : "mp4";
        encoder = "libx264";
        break;
      case VideoFormat::kWebm:
        muxer = ext == ".mkv" ? "matroska" : "webm";
        encoder = "libvpx-vp9";
        break;
      case VideoFormat::kGif:
        muxer = "gif";
        encoder = "gif";
        break;
      case VideoFormat::kPngSequence:
        break;
    }
    std::string temp_name = io::temp_path_for(path);
    AVFormatContext* raw = nullptr;
    check(avformat_alloc_output_context2(&raw, nullptr, muxer, temp_name.c_str()),
          fmt::format("setting up the {} muxer", muxer), path);
    oc.reset(raw);

    const AVCodec* codec = avcodec_find_encoder_by_name(encoder);
    if (!codec)
      throw CodecError(fmt::format("{}: this FFmpeg build has no {} encoder; install an FFmpeg "
                                   "with {} or choose another format (.mp4, .webm, .gif, png)",
                                   path, encoder, encoder));
    stream = avformat_new_stream(oc.get(), nullptr);
    if (!stream) throw CodecError(fmt::format("{}: cannot add a video stream", path));
    enc = make_codec_context(codec, path);
    enc->width = width;
    enc->height = height;
    enc->sample_aspect_ratio = AVRational{1, 1};
    enc->framerate = AVRational{options.fps, 1};
    enc->time_base = AVRational{1, options.fps};
    if (oc->oformat->flags & AVFMT_GLOBALHEADER) enc->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;

    Dictionary codec_options;
    if (format == VideoFormat::kGif) {
      open_palette_graph();
      enc->pix_fmt = AV_PIX_FMT_PAL8;
      enc->time_base = av_buffersink_get_time_base(sink);
    } else {
      enc->pix_fmt = AV_PIX_FMT_YUV420P;
      enc->color_range = AVCOL_RANGE_MPEG;
      enc->colorspace = AVCOL_SPC_BT709;
      enc->color_primaries = AVCOL_PRI_BT709;
      enc->color_trc = AVCOL_TRC_BT709;
      int preset = preset_index(options.preset);
      if (format == VideoFormat::kMp4) {
        enc->thread_count = 0;  // libx264 picks
        codec_options.set("preset", options.preset);
        codec_options.set("crf", std::to_string(options.crf));
      } else {
        enc->bit_rate = 0;  // with crf: constant quality
        enc->thread_count = static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 16u));
        codec_options.set("crf", std::to_string(options.crf));
        codec_options.set("deadline", "good");
        codec_options.set("cpu-used", std::to_string(kVp9CpuUsed[preset]));
        codec_options.set("row-mt", "1");
      }
    }
    check(avcodec_open2(enc.get(), codec, codec_options.out()),
          fmt::format("opening the {} encoder ({}x{}, {} fps)", encoder, width, height,
                      options.fps),
          path);
    check(avcodec_parameters_from_context(stream->codecpar, enc.get()),
          "copying encoder parameters", path);
    stream->time_base = enc->time_base;
    stream->avg_frame_rate = AVRational{options.fps, 1};
    for (const auto& [key, value] : options.metadata)
      check(av_dict_set(&oc->metadata, key.c_str(), value.c_str(), 0),
            fmt::format("setting metadata '{}'", key), path);

    frame = make_frame();
    frame->format = format == VideoFormat::kGif ? AV_PIX_FMT_RGB24 : enc->pix_fmt;
    frame->width = width;
    frame->height = height;
    if (format != VideoFormat::kGif) {
      frame->color_range = enc->color_range;
      frame->colorspace = enc->colorspace;
      frame->color_primaries = enc->color_primaries;
      frame->color_trc = enc->color_trc;
      to_yuv = std::make_unique<FromRgbConverter>(width, height, enc->pix_fmt, path);
    }
    check(av_frame_get_buffer(frame.get(), 0), "allocating a frame", path);
    packet = make_packet();

    // Only now touch the disk: nothing is created when the encoder cannot be set up.
    int ret = avio_open(&oc->pb, temp_name.c_str(), AVIO_FLAG_WRITE);
    if (ret < 0)
      throw InputError(fmt::format("{}: cannot create output file: {}; check that the folder "
                                   "exists and is writable",
                                   path, av_error_string(ret)));
    temp = temp_name;
    Dictionary muxer_options;
    if (format == VideoFormat::kMp4) muxer_options.set("movflags", "+use_metadata_tags+faststart");
    check(avformat_write_header(oc.get(), muxer_options.out()), "writing the container header",
          path);
  }

  void open_palette_graph() {
    graph.reset(avfilter_graph_alloc());
    if (!graph) throw CodecError(fmt::format("{}: out of memory for the GIF filter graph", path));
    graph->nb_threads = 1;
    std::string args = fmt::format("video_size={}x{}:pix_fmt={}:time_base=1/{}:pixel_aspect=1/1",
                                   width, height, static_cast<int>(AV_PIX_FMT_RGB24), options.fps);
    check(avfilter_graph_create_filter(&source, avfilter_get_by_name("buffer"), "in", args.c_str(),
                                       nullptr, graph.get()),
          "creating the GIF filter source", path);
    check(avfilter_graph_create_filter(&sink, avfilter_get_by_name("buffersink"), "out", nullptr,
                                       nullptr, graph.get()),
          "creating the GIF filter sink", path);
    // The parser's open ends: "in" feeds the chain, the chain's end feeds "out".
    FilterInOutPtr chain_in(avfilter_inout_alloc());
    FilterInOutPtr chain_out(avfilter_inout_alloc());
    if (!chain_in || !chain_out)
      throw CodecError(fmt::format("{}: out of memory for the GIF filter graph", path));
    chain_in->name = av_strdup("in");
    chain_in->filter_ctx = source;
    chain_in->pad_idx = 0;
    chain_out->name = av_strdup("out");
    chain_out->filter_ctx = sink;
    chain_out->pad_idx = 0;
    const char* spec =
        "split[a][b];"
        "[a]palettegen=max_colors=256:stats_mode=full[p];"
        "[b][p]paletteuse=dither=bayer:bayer_scale=3:diff_mode=rectangle";
    AVFilterInOut* outputs = chain_in.release();
    AVFilterInOut* inputs = chain_out.release();
    int ret = avfilter_graph_parse_ptr(graph.get(), spec, &inputs, &outputs, nullptr);
    avfilter_inout_free(&inputs);
    avfilter_inout_free(&outputs);
    check(ret, "building the GIF palette filters (palettegen/paletteuse)", path);
    check(avfilter_graph_config(graph.get(), nullptr), "configuring the GIF filter graph", path);
    filtered = make_frame();
  }

  // Sends `f` (nullptr = flush) to the encoder and muxes every packet that comes out.
  void encode(AVFrame* f) {
    check(avcodec_send_frame(enc.get(), f), "encoding a frame", path);
    while (true) {
      int ret = avcodec_receive_packet(enc.get(), packet.get());
      if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF) return;
      check(ret, "encoding a frame", path);
      // FFmpeg 5.1 encoders leave duration 0; the MP4 muxer would then cut the last frame.
      if (packet->duration <= 0)
        packet->duration = av_rescale_q(1, AVRational{1, options.fps}, enc->time_base);
      packet->stream_index = stream->index;
      av_packet_rescale_ts(packet.get(), enc->time_base, stream->time_base);
      check(av_interleaved_write_frame(oc.get(), packet.get()), "writing a frame", path, false,
            "free disk space or choose another output folder");
    }
  }

  // Encodes every frame the GIF filter graph has ready.
  void drain_filter() {
    while (true) {
      int ret = av_buffersink_get_frame(sink, filtered.get());
      if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF) return;
      check(ret, "making the GIF palette", path);
      filtered->pict_type = AV_PICTURE_TYPE_NONE;
      encode(filtered.get());
      av_frame_unref(filtered.get());
    }
  }

  void write(const uint8_t* rgb, int64_t stride) {
    if (finished)
      throw Error(fmt::format("{}: a frame was written after finish(); open a new writer", path));
    if (failed)
      throw Error(fmt::format("{}: the writer failed earlier; the output is abandoned", path));
    if (!rgb) throw InputError(fmt::format("{}: frame data is null", path));
    if (stride == 0) stride = int64_t{3} * width;
    if (stride < int64_t{3} * width || stride > INT32_MAX)
      throw InputError(fmt::format("{}: row stride {} does not fit RGB rows of width {}", path,
                                   stride, width));
    try {
      switch (format) {
        case VideoFormat::kPngSequence:
          write_sequence_frame(rgb, stride);
          break;
        case VideoFormat::kGif: {
          check(av_frame_make_writable(frame.get()), "allocating a frame", path);
          for (int y = 0; y < height; ++y)
            std::memcpy(frame->data[0] + static_cast<int64_t>(y) * frame->linesize[0],
                        rgb + y * stride, static_cast<size_t>(width) * 3);
          frame->pts = frames;
          check(av_buffersrc_add_frame_flags(source, frame.get(), AV_BUFFERSRC_FLAG_KEEP_REF),
                "queueing a frame for the GIF palette", path);
          drain_filter();
          break;
        }
        default:
          check(av_frame_make_writable(frame.get()), "allocating a frame", path);
          to_yuv->convert(rgb, stride, *frame);
          frame->pts = frames;
          encode(frame.get());
          break;
      }
    } catch (...) {
      failed = true;
      throw;
    }
    ++frames;
  }

  void finish() {
    if (finished) throw Error(fmt::format("{}: finish() called twice", path));
    if (failed)
      throw Error(fmt::format("{}: the writer failed earlier; the output is abandoned", path));
    if (frames == 0)
      throw Error(fmt::format("{}: no frames were written; a video needs at least one frame",
                              path));
    try {
      if (format == VideoFormat::kPngSequence) {
        commit_sequence();
      } else {
        if (format == VideoFormat::kGif) {
          check(av_buffersrc_add_frame_flags(source, nullptr, 0), "ending the GIF palette input",
                path);
          drain_filter();
        }
        encode(nullptr);
        check(av_write_trailer(oc.get()), "finishing the container", path, false,
              "free disk space or choose another output folder");
        check(avio_closep(&oc->pb), "closing the output file", path, false,
              "free disk space or choose another output folder");
        oc.reset();
        std::string committed = temp;
        temp.clear();  // commit_rename removes the temporary itself on failure
        io::commit_rename(committed, path);
      }
    } catch (...) {
      failed = true;
      throw;
    }
    finished = true;
  }
};

VideoWriter::VideoWriter(std::string path, int width, int height, VideoWriterOptions options) {
  init_ffmpeg();
  impl_ = std::make_unique<Impl>(std::move(path), width, height, std::move(options));
}

VideoWriter::~VideoWriter() = default;

void VideoWriter::write(const uint8_t* rgb, int64_t row_stride) { impl_->write(rgb, row_stride); }

void VideoWriter::write_frame(const at::Tensor& frame) {
  at::Tensor f = rgb_frame_for_writing(frame, impl_->path, impl_->height, impl_->width);
  impl_->write(f.data_ptr<uint8_t>(), 0);
}

void VideoWriter::write_frames(const at::Tensor& frames) {
  if (!frames.defined() || frames.dim() != 4)
    throw InputError(fmt::format("{}: frames must be RGB uint8 [F, {}, {}, 3]; got a tensor with "
                                 "{} dimensions",
                                 impl_->path, impl_->height, impl_->width,
                                 frames.defined() ? frames.dim() : 0));
  for (int64_t i = 0; i < frames.size(0); ++i) write_frame(frames[i]);
}

void VideoWriter::finish() { impl_->finish(); }
int64_t VideoWriter::frames_written() const { return impl_->frames; }
VideoFormat VideoWriter::format() const { return impl_->format; }
const std::string& VideoWriter::path() const { return impl_->path; }
int VideoWriter::width() const { return impl_->width; }
int VideoWriter::height() const { return impl_->height; }

}  // namespace vdm::codecs
