// The ShotRenderer that renders with a model: one VideoPipeline, loaded once for the whole batch
// (in prepare(), and only when some shot needs rendering), and a VideoWriter per shot. Needs a
// build with FFmpeg (VDM_WITH_FFMPEG) to read inputs and write video; without it prepare() throws.
#pragma once
#include <memory>
#include <string>

#include "batch/batch_runner.h"
#include "pipelines/progress.h"
#include "pipelines/video_pipeline.h"

namespace vdm::batch {

struct PipelineRendererOptions {
  pipelines::PipelineConfig pipeline;  // model folder, device, dtype
  int crf = 18;                        // H.264/VP9 quality (lower is better)
  std::string preset = "medium";       // x264 preset
  // Per denoising step (stage "denoise", detail = shot id); may be empty.
  pipelines::ProgressCallback step_progress;
};

class PipelineRenderer : public ShotRenderer {
 public:
  explicit PipelineRenderer(PipelineRendererOptions options);
  ~PipelineRenderer() override;

  // Loads the model and checks every shot against it (size multiples, frame and step limits,
  // sampler names, output size for the format, the memory guard). Problems read
  // "<list>:<line>: shot '<id>': ...".
  std::vector<std::string> prepare(const ShotList& list,
                                   const std::vector<const Shot*>& shots) override;
  ShotResult render(const Shot& shot, const std::string& output_path) override;

  // The generation options for a shot (before the model fills defaults).
  static pipelines::GenerateOptions options_for(const Shot& shot);

 private:
  PipelineRendererOptions options_;
  std::unique_ptr<pipelines::VideoPipeline> pipeline_;
  double load_s_ = 0;
  bool load_reported_ = false;
};

}  // namespace vdm::batch
