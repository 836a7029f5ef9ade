#include "codecs/image_codec.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fmt/format.h>

#include "codecs/ffmpeg_handles.h"
#include "codecs/pixel_convert.h"
#include "core/error.h"
#include "io/atomic_file.h"

extern "C" {
#include <libavutil/crc.h>
#include <libavutil/mem.h>
}

namespace vdm::codecs {

namespace {

constexpr const char* kImageHint =
    "check that it is an image file FFmpeg can decode (PNG, JPEG, WebP, BMP, ...)";

// ---- reading from memory through a custom AVIOContext ------------------------------------------

struct MemorySource {
  const uint8_t* data;
  size_t size;
  size_t pos;
};

int memory_read(void* opaque, uint8_t* buf, int buf_size) {
  auto* src = static_cast<MemorySource*>(opaque);
  size_t left = src->size - src->pos;
  if (left == 0) return AVERROR_EOF;
  size_t n = std::min(left, static_cast<size_t>(buf_size));
  std::memcpy(buf, src->data + src->pos, n);
  src->pos += n;
  return static_cast<int>(n);
}

int64_t memory_seek(void* opaque, int64_t offset, int whence) {
  auto* src = static_cast<MemorySource*>(opaque);
  if (whence & AVSEEK_SIZE) return static_cast<int64_t>(src->size);
  whence &= ~AVSEEK_FORCE;
  int64_t base;
  switch (whence) {
    case SEEK_SET: base = 0; break;
    case SEEK_CUR: base = static_cast<int64_t>(src->pos); break;
    case SEEK_END: base = static_cast<int64_t>(src->size); break;
    default: return AVERROR(EINVAL);
  }
  int64_t target = base + offset;
  if (target < 0 || target > static_cast<int64_t>(src->size)) return AVERROR(EINVAL);
  src->pos = static_cast<size_t>(target);
  return target;
}

// ---- PNG text chunks -----------------------------------------------------------------------------

void append_be32(std::string& s, uint32_t v) {
  s.push_back(static_cast<char>((v >> 24) & 0xff));
  s.push_back(static_cast<char>((v >> 16) & 0xff));
  s.push_back(static_cast<char>((v >> 8) & 0xff));
  s.push_back(static_cast<char>(v & 0xff));
}

uint32_t read_be32(const std::string& s, size_t at) {
  return (uint32_t(uint8_t(s[at])) << 24) | (uint32_t(uint8_t(s[at + 1])) << 16) |
         (uint32_t(uint8_t(s[at + 2])) << 8) | uint32_t(uint8_t(s[at + 3]));
}

std::string png_chunk(const char* type, const std::string& data) {
  std::string chunk;
  append_be32(chunk, static_cast<uint32_t>(data.size()));
  chunk.append(type, 4);
  chunk += data;
  uint32_t crc = av_crc(av_crc_get_table(AV_CRC_32_IEEE_LE), UINT32_MAX,
                        reinterpret_cast<const uint8_t*>(chunk.data()) + 4, 4 + data.size()) ^
                 UINT32_MAX;
  append_be32(chunk, crc);
  return chunk;
}

// A PNG keyword: 1-79 printable Latin-1 characters without leading/trailing spaces.
std::string png_keyword(const std::string& key) {
  std::string k;
  for (unsigned char c : key) {
    if (k.size() == 79) break;
    k.push_back((c >= 33 && c <= 126) || (c == ' ' && !k.empty() && k.back() != ' ')
                    ? static_cast<char>(c)
                    : '_');
  }
  while (!k.empty() && k.back() == ' ') k.pop_back();
  return k.empty() ? std::string("_") : k;
}

std::string png_text_chunk(const std::string& key, const std::string& value) {
  std::string text;
  bool ascii = true;
  for (unsigned char c : value) {
    if (c == 0) continue;  // NUL separates fields; it cannot appear in the text
    if (c >= 0x80) ascii = false;
    text.push_back(static_cast<char>(c));
  }
  std::string data = png_keyword(key);
  data.push_back('\0');
  if (ascii) return png_chunk("tEXt", data + text);
  // iTXt: keyword, NUL, compression flag 0, method 0, empty language tag, empty translated keyword.
  data.append("\0\0\0\0", 4);
  return png_chunk("iTXt", data + text);
}

void insert_text_chunks(std::string& png, const std::map<std::string, std::string>& text,
                        const std::string& name) {
  if (text.empty()) return;
  // Signature (8 bytes), then IHDR: length, "IHDR", 13 bytes, CRC.
  if (png.size() < 33 || png.compare(12, 4, "IHDR") != 0)
    throw CodecError(fmt::format("{}: the PNG encoder produced no IHDR chunk", name));
  size_t after_ihdr = 8 + 12 + read_be32(png, 8);
  std::string chunks;
  for (const auto& [key, value] : text) chunks += png_text_chunk(key, value);
  png.insert(after_ihdr, chunks);
}

// Reads a whole file; CodecError(input_fault) naming the path on any failure.
std::vector<uint8_t> read_file_bytes(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    throw CodecError(fmt::format("{}: cannot read image: {}; check the path", path,
                                 std::strerror(errno)),
                     true);
  struct stat st {};
  if (::fstat(fd, &st) != 0 || S_ISDIR(st.st_mode)) {
    int err = S_ISDIR(st.st_mode) ? EISDIR : errno;
    ::close(fd);
    throw CodecError(fmt::format("{}: cannot read image: {}; give the path of an image file", path,
                                 std::strerror(err)),
                     true);
  }
  std::vector<uint8_t> bytes;
  bytes.reserve(static_cast<size_t>(std::max<off_t>(st.st_size, 0)));
  uint8_t buf[1 << 16];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      throw CodecError(fmt::format("{}: cannot read image: {}", path, std::strerror(err)), true);
    }
    if (n == 0) break;
    bytes.insert(bytes.end(), buf, buf + n);
  }
  ::close(fd);
  return bytes;
}

}  // namespace

RgbImage decode_image(const uint8_t* data, size_t size, const std::string& name) {
  init_ffmpeg();
  if (size == 0)
    throw CodecError(fmt::format("{}: cannot read image: the file is empty; {}", name, kImageHint),
                     true);

  MemorySource source{data, size, 0};
  constexpr int kIoBufferSize = 1 << 16;
  auto* buffer = static_cast<uint8_t*>(av_malloc(kIoBufferSize));
  if (!buffer) throw CodecError(fmt::format("{}: out of memory for the read buffer", name));
  AVIOContext* io_raw =
      avio_alloc_context(buffer, kIoBufferSize, 0, &source, memory_read, nullptr, memory_seek);
  if (!io_raw) {
    av_free(buffer);
    throw CodecError(fmt::format("{}: out of memory for the read context", name));
  }
  IoContextPtr io(io_raw);

  AVFormatContext* raw = avformat_alloc_context();
  if (!raw) throw CodecError(fmt::format("{}: out of memory for the format context", name));
  raw->pb = io.get();
  raw->flags |= AVFMT_FLAG_CUSTOM_IO;
  // The format is recognised from the bytes alone (frees `raw` on failure).
  check(avformat_open_input(&raw, nullptr, nullptr, nullptr), "opening the image", name, true,
        kImageHint);
  InputFormatPtr format(raw);
  check(avformat_find_stream_info(format.get(), nullptr), "reading the image header", name, true,
        kImageHint);

  const AVCodec* decoder = nullptr;
  int stream_index = check(av_find_best_stream(format.get(), AVMEDIA_TYPE_VIDEO, -1, -1, &decoder, 0),
                           "finding an image in the file", name, true, kImageHint);
  AVStream* stream = format->streams[stream_index];
  const AVCodecParameters* par = stream->codecpar;
  if (static_cast<int64_t>(par->width) * par->height > kMaxImagePixels)
    throw CodecError(fmt::format("{}: image is {}x{}, larger than the {} pixels vdm accepts", name,
                                 par->width, par->height, kMaxImagePixels),
                     true);

  CodecContextPtr dec = make_codec_context(decoder, name);
  check(avcodec_parameters_to_context(dec.get(), par), "setting up the decoder", name, true);
  dec->thread_count = 1;
  check(avcodec_open2(dec.get(), decoder, nullptr),
        fmt::format("opening the {} decoder", decoder->name), name, true, kImageHint);

  PacketPtr packet = make_packet();
  FramePtr frame = make_frame();
  bool flushing = false;
  while (true) {
    int ret = avcodec_receive_frame(dec.get(), frame.get());
    if (ret == 0) break;
    if (ret == AVERROR_EOF)
      throw CodecError(fmt::format("{}: the file contains no decodable image; {}", name,
                                   kImageHint),
                       true);
    if (ret != AVERROR(EAGAIN)) check(ret, "decoding the image", name, true, kImageHint);
    if (flushing)  // EAGAIN after the flush packet should not happen; treat it as no image
      throw CodecError(fmt::format("{}: the decoder returned no image; {}", name, kImageHint),
                       true);
    ret = av_read_frame(format.get(), packet.get());
    if (ret == AVERROR_EOF) {
      flushing = true;
      check(avcodec_send_packet(dec.get(), nullptr), "decoding the image", name, true, kImageHint);
      continue;
    }
    check(ret, "reading the image data", name, true, kImageHint);
    if (packet->stream_index == stream_index) {
      ret = avcodec_send_packet(dec.get(), packet.get());
      av_packet_unref(packet.get());
      if (ret != AVERROR(EAGAIN)) check(ret, "decoding the image", name, true, kImageHint);
    } else {
      av_packet_unref(packet.get());
    }
  }

  if (static_cast<int64_t>(frame->width) * frame->height > kMaxImagePixels)
    throw CodecError(fmt::format("{}: image is {}x{}, larger than the {} pixels vdm accepts", name,
                                 frame->width, frame->height, kMaxImagePixels),
                     true);
  RgbImage image;
  image.width = frame->width;
  image.height = frame->height;
  image.pixels.resize(static_cast<size_t>(image.width) * image.height * 3);
  ToRgbConverter converter;
  converter.convert(*frame, image.pixels.data(), image.width * 3, name);
  return image;
}

RgbImage decode_image_file(const std::string& path) {
  std::vector<uint8_t> bytes = read_file_bytes(path);
  return decode_image(bytes.data(), bytes.size(), path);
}

std::string encode_png(const uint8_t* rgb, int width, int height, int64_t stride,
                       const std::map<std::string, std::string>& text, const std::string& name) {
  init_ffmpeg();
  if (width <= 0 || height <= 0)
    throw InputError(fmt::format("{}: cannot write a {}x{} PNG; width and height must be positive",
                                 name, width, height));
  if (stride == 0) stride = int64_t{3} * width;
  if (stride < int64_t{3} * width || stride > INT32_MAX)
    throw InputError(fmt::format("{}: row stride {} does not fit RGB rows of width {}", name,
                                 stride, width));
  const AVCodec* codec = avcodec_find_encoder(AV_CODEC_ID_PNG);
  if (!codec) throw CodecError("this FFmpeg build has no PNG encoder; install a full libavcodec");
  CodecContextPtr enc = make_codec_context(codec, name);
  enc->width = width;
  enc->height = height;
  enc->pix_fmt = AV_PIX_FMT_RGB24;
  enc->time_base = AVRational{1, 25};
  Dictionary options;
  options.set("pred", "paeth");
  check(avcodec_open2(enc.get(), codec, options.out()), "opening the PNG encoder", name);

  FramePtr frame = make_frame();
  frame->format = AV_PIX_FMT_RGB24;
  frame->width = width;
  frame->height = height;
  frame->data[0] = const_cast<uint8_t*>(rgb);  // not reference-counted: the encoder copies it
  frame->linesize[0] = static_cast<int>(stride);
  frame->pts = 0;
  check(avcodec_send_frame(enc.get(), frame.get()), "encoding PNG", name);
  check(avcodec_send_frame(enc.get(), nullptr), "flushing the PNG encoder", name);
  PacketPtr packet = make_packet();
  check(avcodec_receive_packet(enc.get(), packet.get()), "encoding PNG", name);
  std::string png(reinterpret_cast<const char*>(packet->data), static_cast<size_t>(packet->size));
  insert_text_chunks(png, text, name);
  return png;
}

void write_png_file(const std::string& path, const uint8_t* rgb, int width, int height,
                    int64_t stride, const std::map<std::string, std::string>& text) {
  io::write_file_atomic(path, encode_png(rgb, width, height, stride, text, path));
}

}  // namespace vdm::codecs
