// vdm bench: per-stage timings and peak memory of a text-to-video run.
#include <CLI/CLI.hpp>

#include <cstdio>

#include "cli/commands.h"
#include "pipelines/bench.h"

namespace vdm::cli {

void register_bench(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "Measure text encoding, UNet steps, VAE decode, video encoding");
  auto o = std::make_shared<pipelines::BenchOptions>();
  auto json = std::make_shared<bool>(false);
  auto* model = cmd->add_option("--model", o->model_dir, "Model folder with weights");
  auto* config = cmd->add_option("--config", o->config_dir,
                                 "Folder with unet/, vae/, text_encoder/ config.json (random weights)");
  model->excludes(config);
  cmd->add_option("--frames", o->frames, "Frames")->capture_default_str();
  cmd->add_option("--width", o->width, "Width in pixels")->capture_default_str();
  cmd->add_option("--height", o->height, "Height in pixels")->capture_default_str();
  cmd->add_option("--steps", o->steps, "UNet steps timed (after a warm-up step)")->capture_default_str();
  cmd->add_option("--guidance", o->guidance, "> 1: batch 2 as with classifier-free guidance")->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "float32, bfloat16 or float16")->capture_default_str();
  cmd->add_option("--device", o->device, "cpu or cuda")->capture_default_str();
  cmd->add_option("--repeat", o->repeat, "Repetitions of the other stages")->capture_default_str();
  cmd->add_option("--decode-chunk", o->decode_chunk, "Frames per VAE decode call (0 = all)");
  cmd->add_option("--channels-last", o->channels_last,
                  "UNet and VAE activation layout: auto (channels-last on CUDA with vdm's kernels), on, off")
      ->capture_default_str();
  cmd->add_option("--fuse-qkv", o->fuse_qkv,
                  "Self-attention's q, k, v projections as one product: auto (on CUDA), on, off")
      ->capture_default_str();
  cmd->add_flag("--cudnn-benchmark,!--no-cudnn-benchmark", o->cudnn_benchmark,
                "CUDA: let cuDNN time its convolution algorithms in the warm-up step (default on)");
  cmd->add_option("--context-frames", o->context_frames,
                  "Frame windows of the temporal transformers, as vdm generate (0 = off)")
      ->capture_default_str();
  cmd->add_option("--context-stride", o->context_stride, "Frames between the starts of neighbouring windows")
      ->capture_default_str();
  cmd->add_option("--deep-cache-branch", o->deep_cache_branch,
                  "Also time DeepCache's shallow UNet pass at this branch (as vdm generate; -1 = off)")
      ->capture_default_str();
  add_freeu_option(cmd, o->freeu);
  cmd->add_flag("--cuda-graph", o->cuda_graph, "Replay the UNet step as one CUDA graph");
  cmd->add_flag("--skip-vae", o->skip_vae, "Do not time the VAE decode");
  cmd->add_flag("--profile", o->profile, "Per-operator times of the timed UNet steps (LibTorch's profiler)");
  cmd->add_flag("--json", *json, "Print the report as JSON");
  cmd->callback([o, json] {
    auto report = pipelines::run_bench(*o);
    std::fputs((*json ? report.to_json().dump(2) + "\n" : report.to_table()).c_str(), stdout);
  });
}

}  // namespace vdm::cli
