#include "pipelines/latent_preview.h"

#include <fmt/format.h>

#include <filesystem>

#include "core/error.h"
#ifdef VDM_WITH_FFMPEG
#include "codecs/image_reader.h"
#endif

namespace vdm::pipelines {

at::Tensor latent_preview_strip(const at::Tensor& latents) {
  // latents: [1, C, F, h, w]. The projection uses the first four channels with the factors that
  // approximate Stable Diffusion's VAE; other latent spaces get a plausible false-colour view.
  at::Tensor z = latents.squeeze(0).to(at::kCPU, at::kFloat);  // [C, F, h, w]
  const int64_t c = std::min<int64_t>(4, z.size(0));
  at::Tensor factors = at::tensor({0.298f, 0.207f, 0.208f, 0.187f, 0.286f, 0.173f, -0.158f, 0.189f,
                                   0.264f, -0.184f, -0.271f, -0.473f})
                           .reshape({4, 3})
                           .index({at::indexing::Slice(0, c)});
  at::Tensor rgb = at::einsum("cfhw,cd->fhwd", {z.index({at::indexing::Slice(0, c)}), factors});
  rgb = ((rgb + 1.0) * 127.5).clamp(0, 255).to(at::kByte);  // [F, h, w, 3]
  return rgb.permute({1, 0, 2, 3}).reshape({rgb.size(1), rgb.size(0) * rgb.size(2), 3}).contiguous();
}

void write_latent_preview(const std::string& dir, int64_t step, const at::Tensor& latents) {
#ifdef VDM_WITH_FFMPEG
  std::filesystem::create_directories(dir);
  codecs::write_png(fmt::format("{}/step_{:04d}.png", dir, step), latent_preview_strip(latents));
#else
  (void)step;
  (void)latents;
  throw Error(fmt::format("--preview {}: writing previews needs a build with FFmpeg (VDM_WITH_FFMPEG=ON)", dir));
#endif
}

}  // namespace vdm::pipelines
