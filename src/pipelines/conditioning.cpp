#include "pipelines/conditioning.h"

#include <fmt/format.h>

#include "core/error.h"

namespace vdm::pipelines {

at::Tensor first_frame_condition(const at::Tensor& image_latent, int64_t batch, int64_t channels,
                                 int64_t frames, int64_t height, int64_t width,
                                 const at::TensorOptions& options) {
  at::Tensor cond = at::zeros({batch, channels + 1, frames, height, width}, options);
  if (!image_latent.defined()) return cond;
  if (image_latent.dim() != 4 || image_latent.size(1) != channels ||
      image_latent.size(2) != height || image_latent.size(3) != width ||
      (image_latent.size(0) != batch && image_latent.size(0) != 1))
    throw Error(fmt::format(
        "first-frame condition: image latent has shape {}, expected [{} or 1, {}, {}, {}]",
        c10::str(image_latent.sizes()), batch, channels, height, width));
  using at::indexing::Slice;
  cond.index_put_({Slice(), Slice(0, channels), 0},
                  image_latent.to(options).expand({batch, channels, height, width}));
  cond.index_put_({Slice(), channels, 0}, 1.0);
  return cond;
}

std::string first_frame_condition_layouts(int64_t latent_channels) {
  const int64_t c = 2 * latent_channels;
  return fmt::format("{} (first frame), {} (with frame position) or {} (with frame position and pixel coordinates)",
                     c + 1, c + 2, c + 4);
}

namespace {

// condition: [B, K, F, h, w] -> [B, K + 1, F, h, w] with the frame-position ramp appended.
at::Tensor append_frame_position(const at::Tensor& condition) {
  const int64_t B = condition.size(0), F = condition.size(2), h = condition.size(3), w = condition.size(4);
  at::Tensor ramp = F > 1 ? at::linspace(-1.0, 1.0, F, condition.options()) : at::full({1}, -1.0, condition.options());
  return at::cat({condition, ramp.view({1, 1, F, 1, 1}).expand({B, 1, F, h, w})}, 1);
}

// condition: [B, K, F, h, w] -> [B, K + 2, F, h, w] with the x and y coordinate ramps appended.
at::Tensor append_pixel_coordinates(const at::Tensor& condition) {
  const int64_t B = condition.size(0), F = condition.size(2), h = condition.size(3), w = condition.size(4);
  auto ramp = [&](int64_t n) {
    return n > 1 ? at::linspace(-1.0, 1.0, n, condition.options()) : at::zeros({1}, condition.options());
  };
  at::Tensor x = ramp(w).view({1, 1, 1, 1, w}).expand({B, 1, F, h, w});
  at::Tensor y = ramp(h).view({1, 1, 1, h, 1}).expand({B, 1, F, h, w});
  return at::cat({condition, x, y}, 1);
}

}  // namespace

at::Tensor unet_condition(const at::Tensor& image_latent, int64_t unet_in_channels, int64_t batch,
                          int64_t channels, int64_t frames, int64_t height, int64_t width,
                          const at::TensorOptions& options, const at::Tensor& keep) {
  if (!takes_first_frame_condition(unet_in_channels, channels)) {
    if (image_latent.defined())
      throw Error(fmt::format("unet condition: a UNet with in_channels {} takes no first-frame condition "
                              "(that needs in_channels {})",
                              unet_in_channels, first_frame_condition_layouts(channels)));
    return {};
  }
  at::Tensor cond = first_frame_condition(image_latent, batch, channels, frames, height, width, options);
  if (keep.defined()) cond = cond * keep.to(options).view({batch, 1, 1, 1, 1});
  if (takes_frame_position(unet_in_channels, channels)) cond = append_frame_position(cond);
  if (takes_pixel_coordinates(unet_in_channels, channels)) cond = append_pixel_coordinates(cond);
  return cond;
}

}  // namespace vdm::pipelines
