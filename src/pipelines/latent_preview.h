// Cheap previews of latents during denoising: a fixed linear projection of the latent channels
// to RGB (no VAE), written as a PNG strip of the frames.
#pragma once
#include <ATen/ATen.h>

#include <string>

namespace vdm::pipelines {

// latents: [1, C, F, h, w] -> uint8 [h, F*w, 3] (frames side by side)
at::Tensor latent_preview_strip(const at::Tensor& latents);

// Writes dir/step_NNNN.png (creating dir). Needs codecs; without FFmpeg it throws Error saying so.
void write_latent_preview(const std::string& dir, int64_t step, const at::Tensor& latents);

}  // namespace vdm::pipelines
