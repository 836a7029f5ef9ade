// vdm train: train a text- and image-to-video model from a recipe (tokenizer, VAE, UNet3D + text
// encoder), resumable, exporting a diffusers-format folder.
#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdio>

#include <fmt/format.h>

#include "cli/commands.h"
#include "core/error.h"
#include "pipelines/progress.h"
#include "train/recipe.h"
#include "train/trainer.h"

namespace vdm::cli {

void register_train(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "train",
      "Train a model from a recipe: --stage tokenizer, vae, unet or all; resumable; exports <out>/model. A LoRA recipe trains adapters on its base model and writes <out>/lora");
  struct Args {
    std::string recipe, stage = "all", progress = "text";
    double time_budget = 0, time_budget_vae = -1, time_budget_unet = -1;
    train::TrainOptions options;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--recipe", a->recipe, "Training recipe (JSON), e.g. configs/shapes/recipe.json")->required();
  cmd->add_option("--out", a->options.out_dir, "Output folder (checkpoints/, logs/, model/)")->required();
  cmd->add_option("--stage", a->stage, "all | tokenizer | vae | unet | lora (a LoRA recipe)")->capture_default_str();
  cmd->add_option("--device", a->options.device, "cpu | cuda | cuda:N")->capture_default_str();
  cmd->add_option("--precision", a->options.precision,
                  "auto | float32 | bf16 (autocast, norms in float32); default: the recipe's");
  cmd->add_option("--steps-vae", a->options.steps_vae, "VAE steps (default: the recipe's)");
  cmd->add_option("--steps-unet", a->options.steps_unet, "UNet steps (default: the recipe's)");
  cmd->add_option("--batch-scale", a->options.batch_scale, "Multiply every batch size (e.g. 8 on a GPU)")
      ->capture_default_str();
  cmd->add_option("--time-budget", a->time_budget,
                  "Seconds each training stage may run in this invocation; it then checkpoints and exports (0: none)");
  cmd->add_option("--time-budget-vae", a->time_budget_vae, "Time budget of the VAE stage (overrides --time-budget)");
  cmd->add_option("--time-budget-unet", a->time_budget_unet, "Time budget of the UNet stage (overrides --time-budget)");
  cmd->add_flag("--resume", a->options.resume, "Continue from the checkpoints in --out");
  cmd->add_flag("--grow-unet-input", a->options.grow_unet_input,
                "With --resume: when the recipe's UNet takes more input channels than the checkpoint (e.g. the "
                "frame-position channel), add them to conv_in with zero weights and continue");
  cmd->add_option("--progress", a->progress, "text | json | none")->capture_default_str();
  cmd->callback([a] {
    if (!(a->options.batch_scale > 0)) throw InputError("--batch-scale must be positive");
    train::TrainOptions o = a->options;
    o.time_budget_vae = a->time_budget_vae >= 0 ? a->time_budget_vae : a->time_budget;
    o.time_budget_unet = a->time_budget_unet >= 0 ? a->time_budget_unet : a->time_budget;
    o.progress = pipelines::make_progress_printer(pipelines::parse_progress_format(a->progress));
    train::TrainRecipe recipe = train::TrainRecipe::load(a->recipe);
    auto reports = train::run_training(recipe, a->stage, o);
    for (const auto& r : reports) {
      if (r.stage == "tokenizer") {
        std::printf("tokenizer  %lld merges -> %s\n", static_cast<long long>(r.end_step), r.exported.c_str());
        continue;
      }
      std::printf("%-9s  steps %lld..%lld of %lld  %.1f s  %.3f s/step  loss %.4f  %s %s%s\n", r.stage.c_str(),
                  static_cast<long long>(r.start_step), static_cast<long long>(r.end_step),
                  static_cast<long long>(r.total_steps), r.seconds, r.step_seconds, r.last_loss, r.device.c_str(),
                  r.precision.c_str(), r.budget_stop ? "  (time budget reached)" : "");
    }
    if (recipe.is_lora())
      std::printf("lora: %s/pytorch_lora_weights.safetensors (use: vdm generate --model %s --lora %s)\n",
                  train::lora_dir(o.out_dir).c_str(), recipe.lora.base.c_str(), train::lora_dir(o.out_dir).c_str());
    else
      std::printf("model: %s\n", train::model_dir(o.out_dir).c_str());
  });
}

}  // namespace vdm::cli
