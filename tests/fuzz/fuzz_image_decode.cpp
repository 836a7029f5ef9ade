// libFuzzer target: still-image decoding through FFmpeg (codecs::decode_image): PNG, JPEG, WebP,
// BMP, GIF, ... recognised from the content. Every input must decode to a consistent RGB24 image
// or fail with CodecError marked as an input fault (the CLI's exit code 2).
#include <cstdint>
#include <cstdlib>

#include "codecs/image_codec.h"
#include "core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const vdm::codecs::RgbImage img = vdm::codecs::decode_image(data, size, "fuzz-image");
    if (img.width < 1 || img.height < 1 ||
        static_cast<int64_t>(img.width) * img.height > vdm::codecs::kMaxImagePixels ||
        img.pixels.size() != static_cast<size_t>(img.width) * img.height * 3)
      std::abort();
    volatile uint8_t last = img.pixels.back();
    (void)last;
  } catch (const vdm::CodecError& e) {
    if (!e.input_fault()) std::abort();  // corrupt input must be reported as bad input
  }
  return 0;
}
