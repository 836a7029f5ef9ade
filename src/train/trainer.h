// `vdm train`: trains a text-and-image-to-video model in three stages, each resumable from its
// checkpoint, and exports a diffusers-format folder.
//
//   tokenizer  byte-level BPE merges learned from the dataset's captions   -> <out>/model/tokenizer
//   vae        AutoencoderKL: object-weighted reconstruction + small KL    -> <out>/model/vae
//   unet       UNet3D + CLIP text encoder jointly (noise or v prediction, caption dropout for
//              guidance, first-frame conditioning dropout for image-to-video)
//                                           -> <out>/model/{unet,text_encoder,scheduler,model_index.json}
//
// Working files: <out>/checkpoints/<stage>/ (see checkpoint.h), <out>/logs/<stage>_loss.csv and
// .png, <out>/recipe.json (the effective recipe), <out>/model/training.json (what each stage did).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "pipelines/progress.h"
#include "train/clip_dataset.h"
#include "train/recipe.h"

namespace vdm::train {

struct TrainOptions {
  std::string out_dir;
  std::string device = "cpu";   // cpu | cuda | cuda:N
  std::string precision;        // "" = the recipe's stage setting; auto | float32 | bf16
  bool resume = false;          // continue from existing checkpoints (else they are an error)
  bool grow_unet_input = false; // on resume, zero-pad the checkpoint's unet.conv_in to the recipe's in_channels
  int64_t steps_vae = -1;       // override the recipe's step counts (-1: keep)
  int64_t steps_unet = -1;
  double batch_scale = 1.0;     // multiplies every batch size (stage and curriculum), e.g. on a GPU
  double time_budget_vae = 0;   // seconds of training in this run before stopping and exporting (0: none)
  double time_budget_unet = 0;
  pipelines::ProgressCallback progress;  // may be empty
};

struct StageReport {
  std::string stage;
  int64_t start_step = 0;   // step the run started from (resume)
  int64_t end_step = 0;     // step reached
  int64_t total_steps = 0;  // planned
  double seconds = 0;       // wall time of this run
  double step_seconds = 0;  // mean wall time per step in this run
  double last_loss = 0;     // moving average of the loss at the end
  bool budget_stop = false; // stopped by the time budget
  std::string device, precision;
  std::string exported;     // folder written ("" when nothing)
};

// Training timesteps of a UNet batch: [batch] int64, uniform over [0, num_train_timesteps), except
// that a `high_noise_share` of them are uniform over [high_noise_from, num_train_timesteps).
at::Tensor sample_timesteps(double high_noise_share, int64_t high_noise_from, int64_t num_train_timesteps,
                            int64_t batch, at::Generator& gen);

std::string model_dir(const std::string& out_dir);                             // <out>/model
std::string lora_dir(const std::string& out_dir);                              // <out>/lora (LoRA recipes)
std::string checkpoint_dir(const std::string& out_dir, const std::string& stage);  // <out>/checkpoints/<stage>
std::string loss_log_path(const std::string& out_dir, const std::string& stage);   // <out>/logs/<stage>_loss.csv

StageReport train_tokenizer(const TrainRecipe& recipe, ClipDataset& data, const TrainOptions& options);
StageReport train_vae(const TrainRecipe& recipe, ClipDataset& data, const TrainOptions& options);
StageReport train_unet(const TrainRecipe& recipe, ClipDataset& data, const TrainOptions& options);

// Runs `stage` (all | tokenizer | vae | unet; a LoRA recipe: all | lora, which trains its adapters) on the recipe's dataset, records the reports in
// <out>/model/training.json and returns them.
std::vector<StageReport> run_training(const TrainRecipe& recipe, const std::string& stage,
                                      const TrainOptions& options);

}  // namespace vdm::train
