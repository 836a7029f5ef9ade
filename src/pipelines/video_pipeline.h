// Text-to-video, image-to-video and video-to-video on a diffusers-format model folder.
//
//   prompt --tokenizer--> ids [B,77] --text_encoder--> embeddings [B,77,D]  (uncond + cond for CFG)
//   noise [1,C,F,h,w] --(for each timestep: UNet3D, guidance, scheduler.step)--> latents
//   latents --AutoencoderKL.decode (frame chunks)--> frames uint8 [F,H,W,3]
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "pipelines/progress.h"

namespace vdm::pipelines {

struct GenerateOptions {
  std::string prompt;
  std::string negative_prompt;        // "" = unconditional (empty prompt)
  int64_t frames = 16;
  int64_t width = 0;                  // 0 = the model's native size (unet sample_size * vae factor)
  int64_t height = 0;
  int64_t steps = 25;
  double guidance = 9.0;              // <= 1 turns classifier-free guidance off
  uint64_t seed = 0;
  std::string sampler;                // "" = the model folder's scheduler; else ddim, euler, ...
  double eta = 0.0;                   // DDIM eta
  int64_t decode_chunk = 0;           // frames per VAE decode call; 0 = chosen to bound memory
  std::optional<at::Tensor> latents;  // explicit initial latents [1, C, F, h, w] (tests, resume)
  // Image-to-video / video-to-video
  double strength = 0.8;              // SDEdit strength (plain text-to-video models, restyle)
  std::string fit = "crop";           // crop | pad | stretch: how an image/video is fitted to the size
  ProgressCallback progress;          // called after each denoising step (may be empty)
  std::string preview_dir;            // write latent previews here every preview_every steps
  int64_t preview_every = 5;
};

struct PipelineConfig {
  std::string model_dir;
  std::string device = "cpu";
  std::string dtype = "float32";
};

class VideoPipeline {
 public:
  // Loads every component listed in model_dir/model_index.json; a missing or mismatched
  // component is an InputError before any work starts.
  static std::unique_ptr<VideoPipeline> load(const PipelineConfig& config);
  virtual ~VideoPipeline() = default;

  // Text-to-video. Returns frames uint8 [F, H, W, 3].
  virtual at::Tensor generate(const GenerateOptions& options) = 0;
  // Image-to-video: image uint8 [H, W, 3]. Returns frames uint8 [F, H, W, 3].
  virtual at::Tensor animate(const at::Tensor& image, const GenerateOptions& options) = 0;
  // Video-to-video: video uint8 [F, H, W, 3]. Returns frames uint8 [F', H, W, 3].
  virtual at::Tensor restyle(const at::Tensor& video, const GenerateOptions& options) = 0;

  // The prompt embeddings as the pipeline computes them: [B, 77, D] (B = 2 with guidance: uncond, cond).
  virtual at::Tensor encode_prompt(const std::string& prompt, const std::string& negative_prompt,
                                   bool do_guidance) = 0;
  // Checks frames/width/height against the model (VAE and UNet down-sampling) and fills
  // defaults; throws InputError saying which values would work.
  virtual void validate(GenerateOptions& options) const = 0;
  virtual std::string describe() const = 0;  // one line: model folder, components, dtype, device
};

}  // namespace vdm::pipelines
