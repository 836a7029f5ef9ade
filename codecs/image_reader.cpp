#include "codecs/image_reader.h"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstring>

#include "core/error.h"

namespace vdm::codecs {

at::Tensor to_tensor(const RgbImage& image) {
  at::Tensor t = at::empty({image.height, image.width, 3}, at::kByte);
  std::memcpy(t.data_ptr<uint8_t>(), image.pixels.data(), image.pixels.size());
  return t;
}

at::Tensor read_image(const std::string& path) { return to_tensor(decode_image_file(path)); }

at::Tensor rgb_frame_for_writing(const at::Tensor& frame, const std::string& what, int64_t height,
                                 int64_t width) {
  if (!frame.defined())
    throw InputError(fmt::format("{}: got an undefined tensor; expected RGB uint8 [H, W, 3]", what));
  if (frame.dim() != 3 || frame.size(2) != 3 || (height >= 0 && frame.size(0) != height) ||
      (width >= 0 && frame.size(1) != width)) {
    std::string expected = height >= 0 ? fmt::format("[{}, {}, 3]", height, width) : "[H, W, 3]";
    throw InputError(fmt::format("{}: frame has shape [{}]; expected RGB uint8 {}", what,
                                 fmt::join(frame.sizes(), ", "), expected));
  }
  if (frame.scalar_type() != at::kByte)
    throw InputError(fmt::format("{}: frame has dtype {}; expected uint8 (0..255); convert with "
                                 "(x.clamp(0, 1) * 255).round().to(uint8)",
                                 what, c10::toString(frame.scalar_type())));
  return frame.to(at::kCPU).contiguous();
}

void write_png(const std::string& path, const at::Tensor& rgb,
               const std::map<std::string, std::string>& text) {
  at::Tensor img = rgb_frame_for_writing(rgb, path);
  write_png_file(path, img.data_ptr<uint8_t>(), static_cast<int>(img.size(1)),
                 static_cast<int>(img.size(0)), 0, text);
}

}  // namespace vdm::codecs
