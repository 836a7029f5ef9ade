// Still images as tensors: read any FFmpeg-decodable image into an RGB uint8 tensor, and write an
// RGB uint8 tensor as PNG (preview images, contact sheets, loss curves). Thin LibTorch adapters
// over the torch-free core in codecs/image_codec.h.
#pragma once
#include <map>
#include <string>

#include "codecs/image_codec.h"

namespace at {
class Tensor;
}

namespace vdm::codecs {

// Reads the image at `path` (PNG, JPEG, WebP, BMP, ...; the first frame of an animation).
// returns: [H, W, 3] uint8 RGB. Alpha is dropped. A missing, empty or corrupt file gives
// CodecError(input_fault=true) naming the path and FFmpeg's message.
at::Tensor read_image(const std::string& path);

// rgb: [H, W, 3] uint8 (any device; non-contiguous is fine). Written atomically as PNG; `text`
// entries (prompt, seed, ...) become PNG text chunks. Wrong shape or dtype gives InputError.
void write_png(const std::string& path, const at::Tensor& rgb,
               const std::map<std::string, std::string>& text = {});

// Copies an RgbImage into a new tensor [H, W, 3] uint8.
at::Tensor to_tensor(const RgbImage& image);

// Checks that `frame` is [height, width, 3] uint8 (height/width < 0: any) and returns it as a
// contiguous CPU tensor; InputError naming `what` otherwise.
at::Tensor rgb_frame_for_writing(const at::Tensor& frame, const std::string& what, int64_t height = -1,
                                 int64_t width = -1);

}  // namespace vdm::codecs
