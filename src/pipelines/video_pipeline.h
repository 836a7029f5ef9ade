// Text-to-video, image-to-video and video-to-video on a diffusers-format model folder.
//
//   prompt --tokenizer--> ids [B,77] --text_encoder--> embeddings [B,77,D]  (uncond + cond for CFG)
//   noise [1,C,F,h,w] --(for each timestep: UNet3D, guidance, scheduler.step)--> latents
//   latents --AutoencoderKL.decode (frame chunks)--> frames uint8 [F,H,W,3]
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "models/freeu.h"
#include "models/lora.h"
#include "pipelines/memory_guard.h"
#include "pipelines/progress.h"
#include "pipelines/t2v_mode.h"
#include "temporal/frame_windows.h"
#include "temporal/free_init.h"

namespace vdm::schedulers {
class Scheduler;
}

namespace vdm::pipelines {

// Per-step observer: step index (0-based) and the latents after that step [1, C, F, h, w].
using StepObserver = std::function<void(int64_t step, const at::Tensor& latents)>;

struct GenerateOptions {
  std::string prompt;
  std::string negative_prompt;        // "" = unconditional (empty prompt)
  // Prompt travel: the prompt at a frame, frame -> prompt with frames 1 .. frames - 1 (frame 0
  // has `prompt`). Each frame between two keyframes gets the linear interpolation of their text
  // embeddings, and the last keyframe's prompt holds to the end (diffusers' FreeNoise prompt
  // dictionary). The same for the negative prompt. Empty = one text for the whole clip.
  std::map<int64_t, std::string> prompt_at;
  std::map<int64_t, std::string> negative_prompt_at;
  int64_t frames = 16;
  int64_t width = 0;                  // 0 = the model's native size (unet sample_size * vae factor)
  int64_t height = 0;
  int64_t steps = 25;
  double guidance = 9.0;              // <= 1 turns classifier-free guidance off
  // Guidance rescale (Lin et al. 2023, diffusers' guidance_rescale): the guided prediction is pulled
  // toward the standard deviation of the prompt's prediction by this fraction, in [0, 1]; 0 = off.
  double guidance_rescale = 0.0;
  uint64_t seed = 0;
  std::string sampler;                // "" = the model folder's scheduler; else ddim, euler, ...
  double eta = 0.0;                   // DDIM eta
  int64_t decode_chunk = 0;           // frames per VAE decode call; 0 = chosen to bound memory
  std::optional<at::Tensor> latents;  // explicit initial latents [1, C, F, h, w] (tests, resume)
  // Text-to-video: "joint" denoises every frame at once; "factorized" (a UNet with first-frame
  // conditioning only) samples a clip, keeps its frame 0 and animates that frame in a second pass
  // (twice the UNet steps); "" = factorized where the UNet takes a first frame, else joint.
  std::string t2v_mode;
  // Long clips: the temporal transformers attend within windows of context.length frames and the
  // initial noise repeats with that period (temporal/frame_windows.h); length 0 = off.
  temporal::FrameWindows context;
  // DeepCache (models::FeatureCache): the whole UNet runs on the first step and every
  // deep_cache_interval steps after it, only its part above skip connection deep_cache_branch on
  // the steps between, with the deeper features of the last full step. interval 0 or 1 = off.
  int64_t deep_cache_interval = 0;
  int64_t deep_cache_branch = 0;
  // FreeU (models/freeu.h): the backbone and skip-connection factors of the two deepest up blocks;
  // unset = off (the model as trained).
  std::optional<models::FreeU> freeu;
  // FreeInit (temporal/free_init.h): sample the clip free_init.iterations times, each pass after the
  // first starting from the low frequencies of the last result diffused back; off below 2 passes.
  // Only for passes that start from pure noise (not restyle's --strength).
  temporal::FreeInit free_init;
  // Image-to-video / video-to-video
  double strength = 0.8;              // SDEdit strength (plain text-to-video models, restyle)
  std::string fit = "crop";           // crop | pad | stretch: how an image/video is fitted to the size
  ProgressCallback progress;          // called after each denoising step (may be empty)
  StepObserver on_step;               // called with the latents after each step (may be empty)
  std::string preview_dir;            // write latent previews here every preview_every steps
  int64_t preview_every = 5;
};

struct PipelineConfig {
  std::string model_dir;
  std::string device = "cpu";
  std::string dtype = "float32";
  // Memory a render may use on top of the loaded model, in bytes: unset = what the machine has
  // free (MemAvailable or the cgroup limit on CPU, free device memory on CUDA); 0 = no check.
  std::optional<uint64_t> max_memory;
  // Replay the UNet step as a CUDA graph (pipelines/unet_graph.h); CUDA devices only.
  bool cuda_graph = false;
  // LoRA files merged into the UNet and text encoder weights, in order, before the dtype conversion
  // (models/lora.h).
  std::vector<models::LoraSpec> loras;
  // Prompts in the bracket syntax of text/prompt_weights.h ("a (red:1.3) circle"): each token's text
  // embedding is weighted. Off: brackets are plain text, as diffusers reads them.
  bool prompt_weights = false;
};

class VideoPipeline {
 public:
  // Loads every component listed in model_dir/model_index.json; a missing or mismatched
  // component is an InputError before any work starts.
  static std::unique_ptr<VideoPipeline> load(const PipelineConfig& config);
  ~VideoPipeline();

  // Text-to-video (options.t2v_mode). Returns frames uint8 [F, H, W, 3].
  at::Tensor generate(const GenerateOptions& options);
  // Text-to-video before quantisation: frames float [F, 3, H, W] in [0, 1].
  at::Tensor generate_float(const GenerateOptions& options);
  // Image-to-video: image uint8 [H, W, 3]. A UNet with first-frame conditioning
  // (in_channels 2 * latent + 1, + 2 or + 4; pipelines/conditioning.h) keeps the image as frame 0; a plain text-to-video model starts
  // every frame from the image, noised to options.strength (SDEdit). Returns uint8 [F, H, W, 3].
  at::Tensor animate(const at::Tensor& image, const GenerateOptions& options);
  // Video-to-video: video uint8 [F, H, W, 3], each frame encoded, noised to options.strength and
  // denoised toward the prompt. options.frames is taken from the video. Returns uint8 [F, H, W, 3].
  at::Tensor restyle(const at::Tensor& video, const GenerateOptions& options);
  // Video extension: video uint8 [F, H, W, 3]; options.frames new frames (1..1023) continue it from
  // its last frame, animated as animate() does (the last frame is their frame 0, not repeated).
  // Returns uint8 [F + options.frames, H', W', 3]: the source frames fitted to the output size, then
  // the new ones. Prompt travel keyframes count from the source's last frame.
  at::Tensor extend(const at::Tensor& video, const GenerateOptions& options);
  // The options extend() renders its new part with: options.frames (the frames to add, checked to be
  // 1..1023, else InputError) + 1, the source's last frame being frame 0.
  static GenerateOptions extension_options(const GenerateOptions& options);

  // Prompt embeddings as diffusers' encode_prompt computes them: [2, L, D] = (negative, prompt)
  // with guidance, [1, L, D] without.
  at::Tensor encode_prompt(const std::string& prompt, const std::string& negative_prompt,
                           bool do_guidance);
  // The text for the UNet: encode_prompt's [2 or 1, L, D] without prompt travel; with it, one text
  // per frame, [2F, L, D] = (negative frames, prompt frames) with guidance, [F, L, D] without.
  at::Tensor encode_prompts(const GenerateOptions& options, bool do_guidance);
  // The denoising loop from step `start_step` on: text_embeddings from encode_prompts (guidance
  // when options.guidance > 1), latents [1, C, F, h, w] (already scaled by the scheduler's init
  // sigma or noised to the start step), condition [1, C+1, F, h, w] or undefined. Returns the final latents [1, C, F, h, w] (float32).
  at::Tensor denoise(const GenerateOptions& options, const at::Tensor& text_embeddings,
                     at::Tensor latents, const at::Tensor& condition, int64_t start_step,
                     const StepObserver& observer = {});
  // latents [1, C, F, h, w] -> frames float [F, 3, H, W] in [0, 1], decoded in chunks.
  at::Tensor decode_latents(const at::Tensor& latents, int64_t decode_chunk = 0);

  // Checks frames/width/height/steps/guidance/strength against the model and fills defaults
  // (size from the model); throws InputError saying which values would work.
  void validate(GenerateOptions& options) const;
  // The memory guard (see memory_guard.h). `options` must be validated (sizes filled in).
  // check_memory throws InputError naming the setting to lower when the estimate exceeds the
  // memory available (PipelineConfig::max_memory); generate, animate and restyle call it before
  // any work.
  MemoryModel memory_model() const;
  MemoryEstimate estimate_memory(const GenerateOptions& options) const;
  void check_memory(const GenerateOptions& options) const;
  std::string describe() const;  // model folder, components, dtype, device, LoRAs
  // The LoRA files merged, with their strengths (PipelineConfig::loras, then set_extra_loras'), for
  // output metadata: "style.safetensors:0.8, motion.safetensors:1" ("" without any).
  std::string lora_description() const;
  // LoRAs for the renders that follow, on top of the load-time ones (a batch shot's own). The weights
  // the previous call changed are restored first (exact copies), then `specs` are merged in place into
  // the run-dtype weights; each file is read once per pipeline. The same list as the current one is
  // free; an empty list returns to the load-time model. WeightsError (nothing changed) when a file
  // does not fit.
  void set_extra_loras(const std::vector<models::LoraSpec>& specs);
  // Reads `specs` against this model (as set_extra_loras would) without merging; throws as it would.
  void check_loras(const std::vector<models::LoraSpec>& specs);

  int64_t latent_channels() const;
  int64_t spatial_factor() const;  // pixel size multiple: VAE factor * UNet factor
  bool has_first_frame_conditioning() const;
  // True when the UNet also takes the frame-position channel (pipelines/conditioning.h): it knows where
  // each frame lies in the clip, at any length.
  bool has_frame_position() const;
  // The text-to-video mode `requested` ("" = the model's default) resolves to: "joint" or
  // "factorized"; InputError for an unknown mode or factorized on a UNet without a first frame.
  std::string t2v_mode(const std::string& requested) const;
  const std::string& model_dir() const;
  // Scheduler name actually used for `sampler` ("" = the folder's).
  std::string scheduler_name(const std::string& sampler) const;

  struct Components;

 private:
  explicit VideoPipeline(std::unique_ptr<Components> c);
  at::Tensor encode_image_latents(const at::Tensor& frames_uint8, const GenerateOptions& options);
  // One prompt through the tokenizer and the text encoder: [1, L, D] (warns when it is truncated).
  at::Tensor encode_text(const std::string& text);
  // The same with PipelineConfig::prompt_weights: the bracket syntax parsed, the tokens' embeddings
  // weighted (text/prompt_weights.h).
  at::Tensor encode_weighted_text(const std::string& text);
  // Prompt travel's per-frame text: [frames, L, D] from `first` at frame 0 and the keyframes after.
  at::Tensor encode_prompt_frames(const std::string& first, const std::map<int64_t, std::string>& later,
                                  int64_t frames);
  // --deep-cache and --deep-cache-branch against the UNet; InputError naming the valid range.
  void validate_deep_cache(const GenerateOptions& options) const;
  // validate, check_memory, encode the prompt, draw the noise (or noise init_latents to the
  // strength's step), denoise. Returns the final latents [1, C, F, h, w].
  at::Tensor sample(const GenerateOptions& options, const at::Tensor& init_latents,
                    const at::Tensor& image_condition_latent);
  // FreeInit's passes (GenerateOptions::free_init) from the first pass's latents [1, C, F, h, w]
  // (noise times init_noise_sigma); returns the last pass's latents.
  at::Tensor sample_free_init(const GenerateOptions& options, const at::Tensor& text, at::Tensor latents,
                              const at::Tensor& condition, const schedulers::Scheduler& scheduler,
                              at::Generator& generator);
  // sample, then decode. Returns frames float [F, 3, H, W] in [0, 1].
  at::Tensor run(const GenerateOptions& options, const at::Tensor& init_latents,
                 const at::Tensor& image_condition_latent);
  std::unique_ptr<Components> c_;
};

// Guidance rescale: guided and text [B, ...] -> phi * guided * std(text) / std(guided) + (1 - phi) * guided,
// the standard deviations over every dimension but the batch (unbiased, as torch.std), per sample.
at::Tensor rescale_guidance(const at::Tensor& guided, const at::Tensor& text, double phi);

// Prompt travel keyframes for logs and metadata, as a JSON object: {"8":"a blue circle"}.
std::string describe_prompt_keyframes(const std::map<int64_t, std::string>& keyframes);
// "FRAME:PROMPT" (--prompt-at, --negative-prompt-at) into `keyframes`; InputError naming `flag` for
// a malformed entry or a frame given twice.
void add_prompt_keyframe(std::map<int64_t, std::string>& keyframes, const std::string& entry,
                         const std::string& flag);

// GenerateOptions' DeepCache settings for logs and metadata: "every 3 steps, branch 0".
std::string describe_deep_cache(int64_t interval, int64_t branch);

// frames float [F, 3, H, W] in [0, 1] -> uint8 [F, H, W, 3]
at::Tensor frames_to_uint8(const at::Tensor& frames);
// Fits an RGB image uint8 [H, W, 3] to width x height: "crop" (scale to cover, centre crop),
// "pad" (scale to fit, pad with black), "stretch". Returns uint8 [height, width, 3].
at::Tensor fit_image(const at::Tensor& image, int64_t width, int64_t height, const std::string& mode);

}  // namespace vdm::pipelines
