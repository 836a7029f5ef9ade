// vdm batch SHOTLIST --out DIR: render a shot list, resumably, optionally as one shard of many.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <filesystem>
#include <memory>

#ifdef VDM_WITH_BATCH
#include "batch/batch_runner.h"
#include "batch/pipeline_renderer.h"
#include "batch/shard.h"
#include "batch/shot_list.h"
#include "batch/video_concat.h"
#endif
#include "cli/commands.h"
#include "core/error.h"
#include "core/interrupt.h"
#include "core/log.h"
#include "pipelines/memory_guard.h"
#include "pipelines/progress.h"

namespace vdm::cli {

namespace {

namespace fs = std::filesystem;

struct BatchArgs {
  std::string shot_list;
  std::string out;
  std::string model;
  std::string shard;
  std::string concat;
  bool force = false;
  std::string progress = "text";
  std::string device = "cpu";
  bool cuda_graph = false;
  bool prompt_weights = false;
  std::string dtype = "float32";
  int crf = 18;
  std::string preset = "medium";
  std::string max_memory;  // "" = the memory the machine has free
  std::vector<std::string> loras;  // --lora FILE[:STRENGTH], for every shot
};

#ifndef VDM_WITH_BATCH
void run_batch(const BatchArgs&) {
  throw Error("vdm batch is not in this build: yaml-cpp was not found when it was configured; install "
              "libyaml-cpp-dev (./install-deps.sh) and rebuild");
}
#else
void run_batch(const BatchArgs& a) {
  install_interrupt_handlers();
  // Everything that can be checked is checked before the model loads.
  batch::ShotList list = batch::load_shot_list(a.shot_list);
  batch::Shard shard = a.shard.empty() ? batch::shard_from_environment()
                                       : batch::parse_shard(a.shard, "--shard");
  const auto format = pipelines::parse_progress_format(a.progress);
  const std::string model = a.model.empty() ? std::string(default_model_dir()) : a.model;
  if (!a.concat.empty()) {
    std::error_code ec;
    fs::create_directories(a.out, ec);  // BatchRunner reports a folder it cannot create
    batch::check_concat_path(list, a.out, a.concat);
  }
#ifndef VDM_WITH_FFMPEG
  throw Error("vdm batch writes video and needs FFmpeg, but this vdm was built without it "
              "(VDM_WITH_FFMPEG=OFF); rebuild with the FFmpeg development packages installed");
#endif

  batch::PipelineRendererOptions ro;
  ro.pipeline.model_dir = model;
  ro.pipeline.device = a.device;
  ro.pipeline.dtype = a.dtype;
  ro.pipeline.cuda_graph = a.cuda_graph;
  ro.pipeline.prompt_weights = a.prompt_weights;
  for (const std::string& l : a.loras) ro.pipeline.loras.push_back(models::parse_lora_spec(l));
  // Every shot records the batch's LoRAs (by content) in the manifest: a changed --lora renders again.
  std::vector<models::LoraSpec> batch_loras = ro.pipeline.loras;
  for (auto& l : batch_loras) l.path = models::lora_weights_file(l.path);
  for (auto& shot : list.shots) {
    shot.batch_loras = batch_loras;
    shot.prompt_weights = a.prompt_weights;
  }
  if (!a.max_memory.empty()) ro.pipeline.max_memory = pipelines::parse_memory_size(a.max_memory);
  ro.crf = a.crf;
  ro.preset = a.preset;
  ro.step_progress = pipelines::make_progress_printer(format);
  batch::PipelineRenderer renderer(ro);

  batch::BatchOptions bo;
  bo.out_dir = a.out;
  bo.shard = shard;
  bo.force = a.force;
  bo.model = fs::absolute(model).lexically_normal().string();
  bo.progress = pipelines::make_progress_printer(format);
  batch::BatchSummary summary = batch::BatchRunner(list, bo, renderer).run();
  log::info("{}{}", shard.sharded() ? fmt::format("shard {}: ", shard.label()) : "",
            summary.describe());

  if (!a.concat.empty()) {
    batch::ConcatOptions co;
    co.crf = a.crf;
    co.preset = a.preset;
    co.metadata = {{"software", "vdm 0.1.0"},
                   {"comment", fmt::format("{} shots of {}", list.shots.size(),
                                           fs::path(list.source).filename().string())}};
    auto join = [&co](const std::vector<std::string>& inputs, const std::string& output) {
      return batch::concat_videos(inputs, output, co);
    };
    batch::ConcatOutcome outcome = batch::concat_shots(list, a.out, a.concat, join);
    if (outcome.written) {
      log::info("joined {} shots into {} ({} frames, {})", list.shots.size(), a.concat,
                outcome.result.frames,
                outcome.result.remuxed ? std::string("remuxed")
                                       : "re-encoded: " + outcome.result.reencode_reason);
    } else if (summary.ok()) {
      log::info("--concat {}: waiting for {} shot{} not rendered yet ({}{}); run this command "
                "again once every shard has finished",
                a.concat, outcome.waiting_for.size(), outcome.waiting_for.size() == 1 ? "" : "s",
                fmt::join(outcome.waiting_for.begin(),
                          outcome.waiting_for.begin() +
                              std::min<size_t>(outcome.waiting_for.size(), 10),
                          ", "),
                outcome.waiting_for.size() > 10 ? ", ..." : "");
    }
  }

  if (!summary.ok()) {
    std::string ids;
    for (const auto& f : summary.failures) ids += (ids.empty() ? "" : ", ") + f.id;
    throw Error(fmt::format("{} of {} shots failed ({}); the manifest in {} has the errors; run "
                            "the same command again to retry only those",
                            summary.failures.size(), summary.shots_in_shard, ids, a.out));
  }
}

#endif  // VDM_WITH_BATCH

}  // namespace

void register_batch(CLI::App& app) {
  auto args = std::make_shared<BatchArgs>();
  auto* cmd = app.add_subcommand(
      "batch",
      "Render every shot of a shot list (YAML or JSON) into a folder, resumably; rerunning skips "
      "finished shots. See docs/batch.md");
  cmd->add_option("shot_list", args->shot_list, "Shot list (.yaml, .yml or .json)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--out,-o", args->out, "Output folder (created when missing)")->required();
  cmd->add_option("--model", args->model, "Model folder (diffusers layout)")
      ->default_str(default_model_dir());
  cmd->add_option("--shard", args->shard,
                  "Render only share I of N (1-based, e.g. 2/4); default: from "
                  "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT or JOB_COMPLETION_INDEX/"
                  "VDM_SHARD_COUNT, else every shot");
  cmd->add_option("--concat", args->concat,
                  "After the last shard finishes, join all shots in list order into this video");
  cmd->add_flag("--force", args->force, "Render every shot of this share again, even up-to-date ones");
  cmd->add_option("--progress", args->progress, "Progress on stderr: text, json or none")
      ->capture_default_str();
  cmd->add_option("--device", args->device, "cpu or cuda")->capture_default_str();
  cmd->add_flag("--cuda-graph", args->cuda_graph, "CUDA: replay the UNet step as one CUDA graph");
  cmd->add_flag("--prompt-weights", args->prompt_weights,
                "Read (text), [text] and (text:1.3) in every shot's prompts as weights of their tokens");
  cmd->add_option("--lora", args->loras,
                  "LoRA file merged into the model for every shot, as FILE or FILE:STRENGTH; repeat for several");
  cmd->add_option("--dtype", args->dtype, "float32, bfloat16 or float16")->capture_default_str();
  cmd->add_option("--crf", args->crf, "Quality for MP4/WebM (lower is better)")->capture_default_str();
  cmd->add_option("--preset", args->preset, "x264 preset for MP4")->capture_default_str();
  cmd->add_option("--max-memory", args->max_memory,
                  "Memory each shot may use beyond the loaded model, e.g. 8G; shots whose estimate "
                  "is larger are reported before anything renders (default: the free memory; 0 = "
                  "no check)");
  cmd->callback([args] { run_batch(*args); });
}

}  // namespace vdm::cli
