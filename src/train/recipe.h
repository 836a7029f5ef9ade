// A training recipe (configs/shapes/recipe.json): the data, the three model configs, and the
// schedule of each stage. Every key has a documented default; unknown keys are rejected so a
// typo does not silently fall back to a default.
//
// {
//   "name": "shapes", "seed": 1234,
//   "data": {"dataset": "shapes", "size": 64, "frames": 16, "fps": 8,
//            "clips_dir": "", "captions": "",                 // dataset "folder": real clips
//            "world": {"min_radius": 0.10, ..., "start": "feasible"}},  // ShapeWorldConfig
//   "tokenizer": {"num_merges": 400},
//   "vae": {"config": {<AutoencoderKL config.json>}, "train": {<StageTraining>},
//           "object_weight": 10, "kl_weight": 1e-6},
//   "unet": {"config": {<UNet3DConditionModel config.json>}, "text_encoder": {<CLIPTextConfig>},
//            "train": {<StageTraining>}, "caption_dropout": 0.1, "image_condition_prob": 0.5,
//            "object_weight": 1, "min_snr_gamma": 0, "frame_noise_correlation": 0,
//            "high_noise_share": 0, "high_noise_from": 700, "text_word_loss": 0,
//            "curriculum": [{"until_step": 2000, "frames": 8, "batch": 16}]},  // + lr, lr_schedule,
//                                                    // image_condition_prob, high_noise_share/_from, world
//   "scheduler": {<DDIMScheduler scheduler_config.json>},
//   "export": {"dtype": "float16"}
// }
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "train/shapes_dataset.h"

namespace vdm::train {

// The "world" object under `parent` (ShapeWorldConfig; absent keys keep `base`'s values, unknown keys
// and an unknown "start" are ConfigErrors naming `source`), and its JSON form.
ShapeWorldConfig parse_world(const nlohmann::json& parent, const std::string& source, const std::string& parent_name,
                             const ShapeWorldConfig& base = {});
nlohmann::json world_json(const ShapeWorldConfig& world);

// The optimisation schedule of one stage.
struct StageTraining {
  int64_t steps = 1000;
  int64_t batch = 8;
  double lr = 1e-3;
  int64_t warmup = 100;                  // linear learning-rate warm-up steps
  std::string lr_schedule = "constant";  // constant | cosine (to 10% at `steps`)
  double weight_decay = 0.01;
  double ema_decay = 0.999;
  double grad_clip = 1.0;                // global gradient norm; <= 0 disables clipping
  int64_t checkpoint_every = 250;        // steps between checkpoints
  int64_t export_every = 0;              // steps between model exports (0: at the end only)
  int64_t log_every = 10;                // steps between loss-log rows
  std::string precision = "auto";        // auto | float32 | bf16 (autocast; norms stay float32)
};

// A phase of the UNet curriculum: from the previous phase's end up to `until_step`, train on
// `frames` frames with batches of `batch`. With `lr_schedule` "cosine" the learning rate decays
// over the phase, from the phase's `lr` (default: the stage's) at its first step to 10% at
// `until_step` (how a run that trained at a constant rate is annealed at its end); consecutive
// cosine phases share one decay from the first one's start and rate to the last one's end; ""
// follows the stage's own schedule.
struct CurriculumPhase {
  int64_t start_step = 0;  // derived: the previous phase's until_step (not written to JSON)
  int64_t until_step = 0;
  int64_t frames = 16;
  int64_t batch = 8;
  double image_condition_prob = 0.5;  // share of samples trained with their first frame given
  double lr = 0;                      // peak learning rate of the phase (0: the stage's train.lr)
  std::string lr_schedule;            // "" | "constant" | "cosine"
  // Timestep sampling of the phase (UNetRecipe::high_noise_share / high_noise_from); a phase
  // that does not set them takes the stage's.
  double high_noise_share = 0.0;
  int64_t high_noise_from = 700;
  // The shapes world of the phase's clips (its keys override the data's "world"); none: the data's.
  std::optional<ShapeWorldConfig> world;
};

struct TokenizerRecipe {
  int64_t num_merges = 400;  // upper bound; merging stops early when no pair repeats
};

struct VaeRecipe {
  nlohmann::json config;     // AutoencoderKL config.json
  StageTraining train;
  double object_weight = 10.0;  // loss weight of object pixels relative to background
  double kl_weight = 1e-6;
};

struct UNetRecipe {
  nlohmann::json config;        // UNet3DConditionModel config.json
  nlohmann::json text_encoder;  // CLIPTextModel config.json (vocab and special ids come from the tokenizer)
  StageTraining train;
  double caption_dropout = 0.1;       // probability of training with the empty prompt (guidance)
  double image_condition_prob = 0.5;  // probability of first-frame conditioning (image-to-video)
  double object_weight = 1.0;         // loss weight of latent pixels covered by the object
  double min_snr_gamma = 0.0;         // Min-SNR loss weighting (0: off)
  double frame_noise_correlation = 0.0;  // share of the noise variance common to all frames
  // Timestep sampling: a share of the samples draws t uniformly from [high_noise_from, T) instead of
  // [0, T). The first, almost pure-noise steps are where a clip's layout and motion are decided from
  // the caption alone; later steps read them from the noisy latents.
  double high_noise_share = 0.0;
  int64_t high_noise_from = 700;
  // > 0: weight of an auxiliary loss that keeps every caption word readable from the text
  // encoder's pooled output (a linear probe over the vocabulary, trained with it and not
  // exported; binary cross-entropy against the caption's bag of tokens, summed over the
  // vocabulary). Without it a word the UNet has not yet learned to use (a direction) can fade from
  // the text embedding, and the UNet then has nothing to learn it from.
  double text_word_loss = 0.0;
  // > 0: encode this many full-length clips through the VAE once, before the first step, and draw
  // every batch (with a random run of frames) from that pool; 0: encode fresh clips every step.
  // On a CPU the VAE encoder costs more than the UNet step itself.
  int64_t latent_pool = 0;
  std::vector<CurriculumPhase> curriculum;
};

// LoRA fine-tuning of an existing model: with a "lora" section the recipe trains adapters on the UNet of
// `base` (its tokenizer, VAE, text encoder, configs and scheduler come from there; the recipe gives
// the data and the "unet" section's training settings) and `vdm train` writes
// <out>/lora/pytorch_lora_weights.safetensors.
//   "lora": {"base": "../../samples/models/shapes", "rank": 4, "alpha": 4,
//            "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
struct LoraRecipe {
  std::string base;  // model folder (relative to the recipe file); "" = not a LoRA recipe
  int64_t rank = 4;
  double alpha = 4.0;
  std::vector<std::string> target_modules = {"to_q", "to_k", "to_v", "to_out.0"};
  // Modules of the text encoder adapted as well (diffusers' --train_text_encoder adapts q_proj, k_proj,
  // v_proj and out_proj); empty = the text encoder stays as it is.
  std::vector<std::string> text_encoder_target_modules;
};

struct TrainRecipe {
  std::string name = "shapes";
  uint64_t seed = 1234;
  // Data
  std::string dataset = "shapes";  // shapes | folder
  int64_t size = 64;               // square frames of size x size pixels
  int64_t frames = 16;
  double fps = 8.0;
  std::string clips_dir;           // folder dataset: the clips
  std::string captions;            // folder dataset: "<file>\t<caption>" lines
  ShapeWorldConfig world;
  TokenizerRecipe tokenizer;
  VaeRecipe vae;
  UNetRecipe unet;
  nlohmann::json scheduler;        // scheduler_config.json written with the model
  std::string export_dtype = "float16";  // float16 | float32 storage of exported weights
  LoraRecipe lora;

  bool is_lora() const { return !lora.base.empty(); }

  std::string source;  // file it came from (for messages)

  // Parses and validates (model configs included); ConfigError naming the file and key.
  static TrainRecipe from_json(const nlohmann::json& json, const std::string& source);
  static TrainRecipe load(const std::string& path);
  nlohmann::json to_json() const;

  // The prediction type the scheduler config names ("epsilon" or "v_prediction").
  std::string prediction_type() const;
  // The curriculum phase for `step` (the recipe's frames and unet batch after the last phase).
  CurriculumPhase phase_at(int64_t step) const;
  // The shapes world of the clips trained at `step`: its phase's world, else the data's.
  ShapeWorldConfig world_at(int64_t step) const;
  // The UNet stage's learning rate at `step` of a run of `total` steps: the stage's schedule, or
  // its curriculum phase's where the phase sets one.
  double unet_lr_at(int64_t step, int64_t total) const;
};

}  // namespace vdm::train
