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

}  // namespace vdm::pipelines
