#include "batch/pipeline_renderer.h"

#include <fmt/format.h>

#include <chrono>

#include "core/error.h"
#include "core/interrupt.h"
#include "core/log.h"
#ifdef VDM_WITH_FFMPEG
#include "codecs/image_reader.h"
#include "codecs/video_reader.h"
#include "codecs/video_writer.h"
#endif

namespace vdm::batch {

#ifdef VDM_WITH_FFMPEG
namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Pipeline messages name command-line flags ("--width 72: ..."); in a shot list they are keys.
std::string as_key_message(std::string msg) {
  if (msg.rfind("--", 0) == 0) msg.erase(0, 2);
  return msg;
}

const char* mode_name(Shot::Mode mode) {
  switch (mode) {
    case Shot::Mode::kAnimate: return "image-to-video";
    case Shot::Mode::kRestyle: return "video-to-video";
    case Shot::Mode::kExtend: return "video-extension";
    case Shot::Mode::kGenerate:
    default: return "text-to-video";
  }
}

}  // namespace
#endif

PipelineRenderer::PipelineRenderer(PipelineRendererOptions options)
    : options_(std::move(options)) {}
PipelineRenderer::~PipelineRenderer() = default;

pipelines::GenerateOptions PipelineRenderer::options_for(const Shot& shot) {
  pipelines::GenerateOptions o;
  o.prompt = shot.prompt;
  o.negative_prompt = shot.negative_prompt;
  o.frames = shot.frames;
  o.width = shot.width;
  o.height = shot.height;
  o.steps = shot.steps;
  o.guidance = shot.guidance;
  o.guidance_rescale = shot.guidance_rescale;
  o.seed = shot.seed;
  o.sampler = shot.sampler;
  o.t2v_mode = shot.t2v_mode;
  o.context.length = shot.context_frames;
  o.context.stride = shot.context_stride;
  o.prompt_at = shot.prompt_at;
  o.negative_prompt_at = shot.negative_prompt_at;
  o.deep_cache_interval = shot.deep_cache;
  o.deep_cache_branch = shot.deep_cache_branch;
  o.freeu = shot.freeu;
  o.free_init.iterations = shot.free_init;
  o.strength = shot.strength;
  if (shot.mode() == Shot::Mode::kExtend) o.frames = shot.extend;  // the frames to add
  return o;
}

std::vector<std::string> PipelineRenderer::prepare(const ShotList& list,
                                                   const std::vector<const Shot*>& shots) {
#ifndef VDM_WITH_FFMPEG
  (void)list;
  (void)shots;
  throw Error("vdm batch needs FFmpeg to write video, and this vdm was built without it "
              "(VDM_WITH_FFMPEG=OFF); rebuild with the FFmpeg development packages installed");
#else
  if (!pipeline_) {
    const auto t0 = std::chrono::steady_clock::now();
    pipeline_ = pipelines::VideoPipeline::load(options_.pipeline);
    load_s_ = seconds_since(t0);
    log::info("model {} loaded in {:.1f}s", pipeline_->describe(), load_s_);
  }
  std::vector<std::string> problems;
  for (const Shot* shot : shots) {
    const std::string where = fmt::format("{}:{}: shot '{}'", list.source, shot->line, shot->id);
    try {
      pipelines::GenerateOptions o = options_for(*shot);
      // An extension renders its new frames after the source's last one.
      if (shot->mode() == Shot::Mode::kExtend) o = pipelines::VideoPipeline::extension_options(o);
      pipeline_->validate(o);
      pipeline_->scheduler_name(o.sampler);  // an unknown sampler throws here
      pipeline_->check_loras(shot->loras);    // each file read once; a LoRA that does not fit throws here
      if (shot->mode() == Shot::Mode::kGenerate) pipeline_->t2v_mode(o.t2v_mode);  // factorized on a plain UNet
      pipeline_->check_memory(o);
      codecs::VideoFormat format = codecs::resolve_video_format(shot->output);
      if (format == codecs::VideoFormat::kMp4 && (o.width % 2 != 0 || o.height % 2 != 0))
        throw InputError(fmt::format("{}x{} cannot be written as H.264 MP4 (even sizes only)",
                                     o.width, o.height));
    } catch (const Interrupted&) {
      throw;
    } catch (const std::exception& e) {
      problems.push_back(fmt::format("{}: {}", where, as_key_message(e.what())));
    }
  }
  return problems;
#endif
}

ShotResult PipelineRenderer::render(const Shot& shot, const std::string& output_path) {
#ifndef VDM_WITH_FFMPEG
  (void)shot;
  (void)output_path;
  throw Error("vdm batch needs FFmpeg to write video (VDM_WITH_FFMPEG=OFF)");
#else
  if (!pipeline_)
    throw Error("PipelineRenderer::render called before prepare(); the model is not loaded");
  ShotResult result;
  if (!load_reported_) {
    result.load_s = load_s_;
    load_reported_ = true;
  }
  const auto t0 = std::chrono::steady_clock::now();
  pipelines::GenerateOptions o = options_for(shot);
  if (options_.step_progress) {
    auto sink = options_.step_progress;
    const std::string id = shot.id;
    o.progress = [sink, id](const pipelines::ProgressEvent& e) {
      pipelines::ProgressEvent tagged = e;
      tagged.detail = e.detail.empty() ? "shot " + id : "shot " + id + "  " + e.detail;
      sink(tagged);
    };
  }

  pipeline_->set_extra_loras(shot.loras);
  at::Tensor frames;  // [F, H, W, 3] uint8
  switch (shot.mode()) {
    case Shot::Mode::kGenerate:
      pipeline_->validate(o);
      frames = pipeline_->generate(o);
      break;
    case Shot::Mode::kAnimate: {
      at::Tensor image = codecs::read_image(shot.image);  // [H, W, 3]
      pipeline_->validate(o);
      frames = pipeline_->animate(image, o);
      break;
    }
    case Shot::Mode::kRestyle: {
      // The first `frames` frames of the source video.
      codecs::VideoReader reader(shot.video);
      at::Tensor video = reader.read_all(shot.frames);  // [F, H, W, 3]
      o.frames = video.size(0);
      pipeline_->validate(o);
      frames = pipeline_->restyle(video, o);
      break;
    }
    case Shot::Mode::kExtend: {
      // The whole source (at most kMaxFrames frames), then shot.extend new ones.
      codecs::VideoReader reader(shot.video);
      frames = pipeline_->extend(reader.read_all(ShotLimits::kMaxFrames), o);
      break;
    }
  }
  throw_if_interrupted();
  result.render_s = seconds_since(t0);

  const auto t1 = std::chrono::steady_clock::now();
  codecs::VideoWriterOptions wo;
  wo.fps = static_cast<int>(shot.fps);
  wo.crf = options_.crf;
  wo.preset = options_.preset;
  wo.metadata = {{"prompt", shot.prompt},
                 {"negative_prompt", shot.negative_prompt},
                 {"seed", std::to_string(shot.seed)},
                 {"model", pipeline_->model_dir()},
                 {"steps", std::to_string(o.steps)},
                 {"guidance", fmt::format("{}", o.guidance)},
                 {"sampler", pipeline_->scheduler_name(o.sampler)},
                 {"mode", mode_name(shot.mode())},
                 {"shot", shot.id},
                 {"software", "vdm 0.1.0"}};
  if (shot.mode() == Shot::Mode::kGenerate) wo.metadata["t2v_mode"] = pipeline_->t2v_mode(o.t2v_mode);
  if (const std::string loras = pipeline_->lora_description(); !loras.empty()) wo.metadata["lora"] = loras;
  if (shot.prompt_weights) wo.metadata["prompt_weights"] = "on";
  if (o.context.splits(o.frames)) wo.metadata["context"] = o.context.describe();
  if (o.guidance_rescale > 0) wo.metadata["guidance_rescale"] = fmt::format("{}", o.guidance_rescale);
  if (!o.prompt_at.empty()) wo.metadata["prompt_at"] = pipelines::describe_prompt_keyframes(o.prompt_at);
  if (!o.negative_prompt_at.empty())
    wo.metadata["negative_prompt_at"] = pipelines::describe_prompt_keyframes(o.negative_prompt_at);
  if (o.deep_cache_interval > 1)
    wo.metadata["deep_cache"] = pipelines::describe_deep_cache(o.deep_cache_interval, o.deep_cache_branch);
  if (o.freeu) wo.metadata["freeu"] = models::describe_freeu(*o.freeu);
  if (o.free_init.active()) wo.metadata["free_init"] = temporal::describe_free_init(o.free_init);
  if (shot.mode() != Shot::Mode::kGenerate) {
    wo.metadata["source"] = shot.mode() == Shot::Mode::kAnimate ? shot.image : shot.video;
    wo.metadata["strength"] = fmt::format("{}", shot.strength);
  }
  codecs::VideoWriter writer(output_path, static_cast<int>(frames.size(2)),
                             static_cast<int>(frames.size(1)), wo);
  writer.write_frames(frames);
  throw_if_interrupted();  // the temporary is removed by the writer's destructor
  writer.finish();
  result.write_s = seconds_since(t1);

  result.frames = writer.frames_written();
  result.width = frames.size(2);
  result.height = frames.size(1);
  result.fps = shot.fps;
  result.sampler = wo.metadata["sampler"];
  return result;
#endif
}

}  // namespace vdm::batch
