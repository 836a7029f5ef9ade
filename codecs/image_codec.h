// Still images through FFmpeg, without LibTorch: decode any FFmpeg-decodable image (PNG, JPEG,
// WebP, BMP, TIFF, GIF, ...) to packed RGB24, and encode RGB24 to PNG. The at::Tensor adapters
// live in codecs/image_reader.h; this core links with FFmpeg, fmt and src/core + src/io alone
// (a fuzzer can feed decode_image() arbitrary bytes).
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace vdm::codecs {

// A packed RGB24 image: pixels[(y * width + x) * 3 + c], c = R, G, B.
struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> pixels;
};

// Largest image decode_image() accepts, in pixels (a guard against absurd headers).
inline constexpr int64_t kMaxImagePixels = int64_t{1} << 28;

// Decodes the first image (or the first frame of an animation or video) in `data`. The format is
// recognised from the content. `name` is used in error messages. Throws CodecError with
// input_fault=true for empty, truncated, corrupt or unsupported data.
RgbImage decode_image(const uint8_t* data, size_t size, const std::string& name);

// Reads `path` and decodes it as decode_image() does. A missing, unreadable, empty or corrupt file
// gives CodecError(input_fault=true) naming the path and the cause.
RgbImage decode_image_file(const std::string& path);

// Encodes packed RGB24 (height rows of `stride` bytes; 0 = 3 * width) as a PNG file image through
// FFmpeg's png encoder. `text` entries are stored as PNG text chunks (tEXt for ASCII values,
// iTXt for UTF-8 ones); keywords are cut to 79 characters, characters PNG forbids become '_'.
std::string encode_png(const uint8_t* rgb, int width, int height, int64_t stride = 0,
                       const std::map<std::string, std::string>& text = {},
                       const std::string& name = "<png>");

// encode_png() written to `path` atomically (temporary name in the same folder, then renamed).
void write_png_file(const std::string& path, const uint8_t* rgb, int width, int height,
                    int64_t stride = 0, const std::map<std::string, std::string>& text = {});

}  // namespace vdm::codecs
