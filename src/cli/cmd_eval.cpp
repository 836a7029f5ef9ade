// vdm eval shapes: the prompt-adherence benchmark of a model trained on the moving-shapes world.
#include <CLI/CLI.hpp>

#include <cstdio>

#include "cli/commands.h"
#include "core/error.h"
#include "train/shapes_benchmark.h"

namespace vdm::cli {

void register_eval(CLI::App& app) {
  auto* eval = app.add_subcommand("eval", "Benchmarks of trained models");
  eval->require_subcommand(1);
  auto* cmd = eval->add_subcommand(
      "shapes", "Render N grammar captions (text-to-video) and N animations (image-to-video) and measure colour, "
                "direction, shape and persistence on the decoded frames");
  auto o = std::make_shared<train::ShapesBenchmarkOptions>();
  o->model_dir = default_model_dir();
  o->out_dir = "eval_shapes";
  auto mode = std::make_shared<std::string>("both");
  auto loras = std::make_shared<std::vector<std::string>>();
  auto freeu = std::make_shared<std::string>();
  cmd->add_option("--model", o->model_dir, "Model folder")->capture_default_str();
  cmd->add_option("--n", o->n, "Clips per mode")->capture_default_str();
  cmd->add_option("--seed", o->seed, "Seed of the captions and the generations")->capture_default_str();
  cmd->add_option("--steps", o->steps, "Denoising steps")->capture_default_str();
  cmd->add_option("--guidance", o->guidance, "Classifier-free guidance (0: the pipeline default)");
  cmd->add_option("--guidance-rescale", o->guidance_rescale, "Guidance rescale, 0..1 (as vdm generate)");
  cmd->add_option("--sampler", o->sampler, "Sampler (default: the model's scheduler)");
  cmd->add_option("--t2v-mode", o->t2v_mode, "Text-to-video: joint or factorized (default: the pipeline's; see vdm generate --help)");
  cmd->add_option("--start", o->start,
                  "Where the first frames' objects start: feasible (anywhere their travel stays in the frame, so "
                  "the start hints at the direction) or neutral (where every direction fits); default: the world "
                  "the model was trained on (its training.json), else feasible");
  cmd->add_option("--frames", o->frames, "Frames per clip")->capture_default_str();
  cmd->add_option("--device", o->device, "cpu | cuda")->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "float32 | bfloat16 | float16")->capture_default_str();
  add_context_options(cmd, o->context);
  add_deep_cache_options(cmd, o->deep_cache_interval, o->deep_cache_branch);
  add_freeu_option(cmd, *freeu);
  add_free_init_options(cmd, o->free_init);
  cmd->add_option("--emphasis", o->emphasis,
                  "Weight one word of every caption, e.g. shape:1.3 writes '(circle:1.3)' and reads the prompts with "
                  "--prompt-weights (t2v and i2v modes)");
  cmd->add_option("--lora", *loras, "LoRA file merged into the model, as FILE or FILE:STRENGTH; repeat for several");
  cmd->add_option("--mode", *mode, "both | t2v | i2v | ceiling (dataset clips as rendered and through the model's VAE: what the measure and the VAE allow) | words (first frames animated with a direction at right angles to the rendered one: motion read from the prompt or from the image) | travel (prompt travel from a caption to the same caption in another colour, each beside its control without travel) | extend (text-to-video clips extended by as many frames again: the new frames against the caption, and the seam)")->capture_default_str();
  cmd->add_option("--out", o->out_dir, "Folder for contact_t2v.png, contact_i2v.png, results.json")
      ->capture_default_str();
  cmd->callback([o, mode, loras, freeu] {
    for (const std::string& l : *loras) o->loras.push_back(models::parse_lora_spec(l));
    if (!freeu->empty()) o->freeu = models::parse_freeu(*freeu);
    if (*mode != "both" && *mode != "t2v" && *mode != "i2v" && *mode != "ceiling" && *mode != "words" &&
        *mode != "travel" && *mode != "extend")
      throw InputError("--mode '" + *mode + "' is not known; use both, t2v, i2v, ceiling, words, travel or extend");
    o->text_to_video = *mode != "i2v";
    o->image_to_video = *mode != "t2v";
    o->ceiling = *mode == "ceiling";
    o->conflicting_direction = *mode == "words";
    o->prompt_travel = *mode == "travel";
    o->extend = *mode == "extend";
    auto report = o->ceiling                 ? train::run_shapes_ceiling(*o)
                  : o->conflicting_direction ? train::run_shapes_words(*o)
                  : o->prompt_travel         ? train::run_shapes_travel(*o)
                  : o->extend                ? train::run_shapes_extend(*o)
                                             : train::run_shapes_benchmark(*o);
    std::fputs(report.to_table().c_str(), stdout);
    for (const auto& f : report.files) std::printf("wrote %s\n", f.c_str());
  });
}

}  // namespace vdm::cli
