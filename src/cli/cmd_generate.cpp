// vdm generate | animate | restyle: text-to-video, image-to-video, video-to-video.
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <filesystem>
#include <memory>

#include "cli/commands.h"
#include "pipelines/clip_output.h"
#include "core/error.h"
#include "core/interrupt.h"
#include "core/log.h"
#include "core/runtime.h"
#include "pipelines/progress.h"
#include "pipelines/video_pipeline.h"
#ifdef VDM_WITH_FFMPEG
#include "codecs/image_reader.h"
#include "codecs/video_reader.h"
#endif

namespace vdm::cli {

namespace {

enum class Mode { kGenerate, kAnimate, kRestyle, kExtend };

struct GenerateArgs {
  pipelines::PipelineConfig pipeline;
  pipelines::GenerateOptions options;
  std::string output;
  std::string input;  // image (animate) or video (restyle)
  int64_t fps = 8;
  int64_t crf = 18;
  std::string preset = "medium";
  std::string format;
  std::string progress = "text";
  int64_t seed = -1;
  std::string max_memory;  // "" = the memory the machine has free
  std::vector<std::string> loras;  // --lora FILE[:STRENGTH]
  std::vector<std::string> prompt_at, negative_prompt_at;  // FRAME:PROMPT (prompt travel)
  std::string freeu;  // --freeu b1=..,b2=..,s1=..,s2=.. ("" = off)
};

}  // namespace

void add_context_options(CLI::App* cmd, temporal::FrameWindows& w) {
  cmd->add_option("--context-frames", w.length,
                  "Long clips: temporal attention within windows of this many frames, usually the frame count "
                  "the model was trained on (0 = off: every frame attends to every frame)")
      ->capture_default_str();
  cmd->add_option("--context-stride", w.stride, "Frames between the starts of neighbouring windows")
      ->capture_default_str();
  cmd->add_option("--context-weights", w.weighting,
                  "How overlapping windows are averaged: pyramid, flat or delayed_reverse_sawtooth")
      ->capture_default_str();
  cmd->add_option("--context-noise", w.noise,
                  "Initial noise with windows: shuffle_context (repeats every window, shuffled), repeat_context "
                  "or random")
      ->capture_default_str();
}

void add_deep_cache_options(CLI::App* cmd, int64_t& interval, int64_t& branch) {
  cmd->add_option("--deep-cache", interval,
                  "Faster sampling (DeepCache): the whole UNet runs every N steps, only its shallow part in between, "
                  "reusing the deep features (0 = off; 2-5 is usual)")
      ->capture_default_str();
  cmd->add_option("--deep-cache-branch", branch,
                  "With --deep-cache: the skip connection below which features are reused (0 = shallowest, fastest; "
                  "`vdm info` lists them)")
      ->capture_default_str();
}

void add_freeu_option(CLI::App* cmd, std::string& text) {
  cmd->add_option("--freeu", text,
                  "FreeU: scale the backbone (b1, b2) and the skip connections' low frequencies (s1, s2) of the two "
                  "deepest up blocks, e.g. b1=1.2,b2=1.4,s1=0.9,s2=0.2 (default: off)");
}

void add_free_init_options(CLI::App* cmd, temporal::FreeInit& f) {
  cmd->add_option("--free-init", f.iterations,
                  "FreeInit: sample the clip N times, each pass after the first starting from the low frequencies of "
                  "the last result (0 or 1 = off; 3 is usual; N times the work)")
      ->capture_default_str();
  cmd->add_option("--free-init-filter", f.filter, "FreeInit's low-pass filter: butterworth, gaussian or ideal")
      ->capture_default_str();
  cmd->add_option("--free-init-order", f.order, "Order of the butterworth filter")->capture_default_str();
  cmd->add_option("--free-init-spatial", f.spatial_stop, "FreeInit's normalised spatial stop frequency, (0, 1]")
      ->capture_default_str();
  cmd->add_option("--free-init-temporal", f.temporal_stop, "FreeInit's normalised temporal stop frequency, (0, 1]")
      ->capture_default_str();
  cmd->add_flag("--free-init-fast", f.fast,
                "FreeInit coarse to fine: pass i of N runs steps * i / N steps, only the last all of them");
}

namespace {

void add_common_options(CLI::App* cmd, GenerateArgs& a, Mode mode) {
  auto& o = a.options;
  cmd->add_option("--model", a.pipeline.model_dir, "Model folder (diffusers layout)")
      ->default_str(default_model_dir());
  cmd->add_option("--prompt", o.prompt, "What the clip shows")->required();
  cmd->add_option("--negative-prompt", o.negative_prompt, "What to steer away from");
  cmd->add_option("--prompt-at", a.prompt_at,
                  "Prompt travel: FRAME:PROMPT, the prompt at that frame (frame 0 has --prompt); the frames "
                  "between keyframes blend their texts. Repeat for several");
  cmd->add_option("--negative-prompt-at", a.negative_prompt_at,
                  "Prompt travel of the negative prompt: FRAME:PROMPT (frame 0 has --negative-prompt)");
  cmd->add_flag("--prompt-weights", a.pipeline.prompt_weights,
                "Read (text), [text] and (text:1.3) in the prompts as weights of their tokens (off: plain text)");
  if (mode == Mode::kExtend)
    cmd->add_option("--frames", o.frames, "Frames to add after the source's last frame")->capture_default_str();
  else if (mode != Mode::kRestyle)
    cmd->add_option("--frames", o.frames, "Number of frames")->capture_default_str();
  cmd->add_option("--width", o.width, "Width in pixels (default: the model's native size)");
  cmd->add_option("--height", o.height, "Height in pixels (default: the model's native size)");
  cmd->add_option("--steps", o.steps, "Denoising steps")->capture_default_str();
  cmd->add_option("--guidance", o.guidance, "Classifier-free guidance scale (<= 1: off)")
      ->capture_default_str();
  cmd->add_option("--guidance-rescale", o.guidance_rescale,
                  "Pull the guided prediction toward the prompt's standard deviation by this fraction, 0..1 "
                  "(0 = off; 0.7 is usual with v-prediction models)")
      ->capture_default_str();
  cmd->add_option("--seed", a.seed, "Random seed (default: random, printed)");
  cmd->add_option("--sampler", o.sampler,
                  "Sampler: ddim, euler, euler_a, dpmpp_2m, dpmpp_2m_karras, dpmpp_3m, dpmpp_2m_sde "
                  "(default: the model's scheduler)");
  cmd->add_option("--eta", o.eta, "DDIM eta (0 = deterministic)")->capture_default_str();
  cmd->add_option("--fps", a.fps, "Frames per second of the output")->capture_default_str();
  cmd->add_option("--crf", a.crf, "Quality for MP4/WebM (lower is better)")->capture_default_str();
  cmd->add_option("--preset", a.preset, "x264 preset for MP4")->capture_default_str();
  cmd->add_option("--format", a.format, "Output format: mp4, webm, gif, png (default: by extension)");
  cmd->add_option("--lora", a.loras,
                  "LoRA file (diffusers/PEFT or kohya safetensors) merged into the model, as FILE or "
                  "FILE:STRENGTH (default 1); repeat for several");
  add_context_options(cmd, o.context);
  add_deep_cache_options(cmd, o.deep_cache_interval, o.deep_cache_branch);
  add_freeu_option(cmd, a.freeu);
  add_free_init_options(cmd, o.free_init);
  cmd->add_option("--dtype", a.pipeline.dtype, "float32, bfloat16 or float16")->capture_default_str();
  cmd->add_option("--device", a.pipeline.device, "cpu or cuda")->capture_default_str();
  cmd->add_flag("--cuda-graph", a.pipeline.cuda_graph, "CUDA: replay the UNet step as one CUDA graph");
  cmd->add_option("--decode-chunk", o.decode_chunk, "Frames per VAE decode call (0 = automatic)");
  cmd->add_option("--max-memory", a.max_memory,
                  "Memory the render may use beyond the loaded model, e.g. 8G or 512M; a job whose "
                  "estimate is larger is refused before it starts (default: the free memory; 0 = "
                  "no check)");
  cmd->add_option("--progress", a.progress, "Progress on stderr: text, json or none")
      ->capture_default_str();
  cmd->add_option("--preview", o.preview_dir, "Write latent previews (PNG) into this folder");
  cmd->add_option("--preview-every", o.preview_every, "Steps between previews")->capture_default_str();
  cmd->add_option("--output,-o", a.output,
                  "Output file (.mp4, .webm, .gif) or folder of PNG frames")
      ->required();
  if (mode == Mode::kGenerate)
    cmd->add_option("--t2v-mode", o.t2v_mode,
                    "joint (every frame at once) or factorized (sample a clip, keep its first frame, animate "
                    "it: twice the steps); default: factorized where the UNet takes a first frame");
  if (mode != Mode::kGenerate) {
    cmd->add_option("--strength", o.strength,
                    "How far from the input to go, in (0, 1] (SDEdit)")
        ->capture_default_str();
    cmd->add_option("--fit", o.fit, "Fit the input to the size: crop, pad or stretch")
        ->capture_default_str();
  }
}

void run(Mode mode, GenerateArgs& a) {
  install_interrupt_handlers();
  if (a.pipeline.model_dir.empty()) a.pipeline.model_dir = default_model_dir();
  auto& o = a.options;
  o.seed = a.seed >= 0 ? static_cast<uint64_t>(a.seed) : random_seed();
  o.progress = pipelines::make_progress_printer(pipelines::parse_progress_format(a.progress));

  // Everything that can be checked before the long work is checked now.
  pipelines::OutputSpec out = pipelines::resolve_output(a.output, a.format, a.fps, a.crf, a.preset);
  if (a.fps < 1 || a.fps > 240)
    throw InputError(fmt::format("--fps {}: must be between 1 and 240", a.fps));
  if (!a.max_memory.empty()) a.pipeline.max_memory = pipelines::parse_memory_size(a.max_memory);
  for (const std::string& l : a.loras) a.pipeline.loras.push_back(models::parse_lora_spec(l));
  for (const std::string& k : a.prompt_at) pipelines::add_prompt_keyframe(o.prompt_at, k, "--prompt-at");
  for (const std::string& k : a.negative_prompt_at)
    pipelines::add_prompt_keyframe(o.negative_prompt_at, k, "--negative-prompt-at");
  temporal::validate_frame_windows(o.context);
  if (!a.freeu.empty()) o.freeu = models::parse_freeu(a.freeu);
  temporal::validate_free_init(o.free_init);
  if (mode == Mode::kRestyle && o.free_init.active())
    throw InputError(fmt::format("--free-init {}: restyle starts part-way from the source video (--strength), and "
                                 "FreeInit samples from pure noise; drop --free-init",
                                 o.free_init.iterations));

  at::Tensor input;
#ifdef VDM_WITH_FFMPEG
  if (mode == Mode::kAnimate) input = codecs::read_image(a.input);
  if (mode == Mode::kRestyle || mode == Mode::kExtend) {
    codecs::VideoReader reader(a.input);
    input = reader.read_all();
    if (input.size(0) == 0)
      throw InputError(fmt::format("{}: the video holds no frames", a.input));
  }
#else
  throw Error("this build of vdm has no FFmpeg support (VDM_WITH_FFMPEG=OFF): generate, animate and "
              "restyle need it to write video; rebuild with FFmpeg or use `vdm bench`/`vdm train`");
#endif

  auto pipe = pipelines::VideoPipeline::load(a.pipeline);
  if (mode == Mode::kRestyle) o.frames = input.size(0);
  // extend renders its new frames after the source's last one, which is their frame 0.
  pipelines::GenerateOptions checked = mode == Mode::kExtend ? pipelines::VideoPipeline::extension_options(o) : o;
  pipe->validate(checked);
  o.width = checked.width;
  o.height = checked.height;
  pipelines::check_output_size(out, o.width, o.height);
  pipe->check_memory(checked);
  log::info("model {}", pipe->describe());
  log::info("seed {}  {} frames {}x{}  {} steps  guidance {}  sampler {}", o.seed, o.frames,
            o.width, o.height, o.steps, o.guidance, pipe->scheduler_name(o.sampler));
  if (!o.prompt_at.empty()) log::info("prompt travel: {}", pipelines::describe_prompt_keyframes(o.prompt_at));
  if (o.deep_cache_interval > 1)
    log::info("deep cache: {}", pipelines::describe_deep_cache(o.deep_cache_interval, o.deep_cache_branch));
  if (o.freeu) log::info("FreeU: {}", models::describe_freeu(*o.freeu));
  if (o.free_init.active()) log::info("FreeInit: {}", temporal::describe_free_init(o.free_init));
  if (mode == Mode::kExtend) log::info("extending {} frames of {} by {}", input.size(0), a.input, o.frames);
  if (o.context.splits(o.frames)) {
    log::info("frame windows: {}", o.context.describe());
    if (pipe->has_frame_position())
      log::warn("{} takes a frame-position channel and renders long clips without frame windows; on the embedded "
                "model windows lowered prompt adherence (docs/cli.md, Long clips): drop --context-frames unless "
                "you have compared both",
                pipe->model_dir());
  }

  at::Tensor frames;
  switch (mode) {
    case Mode::kGenerate: frames = pipe->generate(o); break;
    case Mode::kAnimate: frames = pipe->animate(input, o); break;
    case Mode::kRestyle: frames = pipe->restyle(input, o); break;
    case Mode::kExtend: frames = pipe->extend(input, o); break;
  }
  throw_if_interrupted();
  std::map<std::string, std::string> meta = {
      {"prompt", o.prompt},
      {"negative_prompt", o.negative_prompt},
      {"seed", std::to_string(o.seed)},
      {"model", pipe->model_dir()},
      {"steps", std::to_string(o.steps)},
      {"guidance", fmt::format("{}", o.guidance)},
      {"sampler", pipe->scheduler_name(o.sampler)},
      {"mode", mode == Mode::kGenerate  ? "text-to-video"
               : mode == Mode::kAnimate ? "image-to-video"
               : mode == Mode::kExtend  ? "video-extension"
                                        : "video-to-video"},
      {"software", "vdm 0.1.0"}};
  if (mode == Mode::kGenerate) meta["t2v_mode"] = pipe->t2v_mode(o.t2v_mode);
  if (const std::string loras = pipe->lora_description(); !loras.empty()) meta["lora"] = loras;
  if (a.pipeline.prompt_weights) meta["prompt_weights"] = "on";
  if (o.context.splits(o.frames)) meta["context"] = o.context.describe();
  if (o.guidance_rescale > 0) meta["guidance_rescale"] = fmt::format("{}", o.guidance_rescale);
  if (!o.prompt_at.empty()) meta["prompt_at"] = pipelines::describe_prompt_keyframes(o.prompt_at);
  if (!o.negative_prompt_at.empty())
    meta["negative_prompt_at"] = pipelines::describe_prompt_keyframes(o.negative_prompt_at);
  if (o.deep_cache_interval > 1)
    meta["deep_cache"] = pipelines::describe_deep_cache(o.deep_cache_interval, o.deep_cache_branch);
  if (o.freeu) meta["freeu"] = models::describe_freeu(*o.freeu);
  if (o.free_init.active()) meta["free_init"] = temporal::describe_free_init(o.free_init);
  if (mode != Mode::kGenerate) {
    meta["source"] = a.input;
    meta["strength"] = fmt::format("{}", o.strength);
  }
  pipelines::write_clip(out, frames, meta);
  log::info("wrote {} ({} frames, {}x{}, {} fps)", out.path, frames.size(0), frames.size(2),
            frames.size(1), a.fps);
}

CLI::App* add_mode(CLI::App& app, const char* name, const char* help, Mode mode) {
  auto* cmd = app.add_subcommand(name, help);
  auto args = std::make_shared<GenerateArgs>();
  if (mode == Mode::kAnimate)
    cmd->add_option("--image", args->input, "Still image to animate (PNG, JPEG, WebP, ...)")->required();
  if (mode == Mode::kRestyle)
    cmd->add_option("--video", args->input, "Source video to restyle")->required();
  if (mode == Mode::kExtend)
    cmd->add_option("--video", args->input, "Source video to continue from its last frame")->required();
  if (mode == Mode::kRestyle) args->options.strength = 0.6;  // before the options, so --help shows it
  add_common_options(cmd, *args, mode);
  cmd->callback([args, mode] { run(mode, *args); });
  return cmd;
}

}  // namespace

void register_generate(CLI::App& app) {
  add_mode(app, "generate", "Render a clip from a text prompt", Mode::kGenerate);
  add_mode(app, "animate", "Animate a still image guided by a prompt", Mode::kAnimate);
  add_mode(app, "restyle", "Restyle a video toward a prompt (video-to-video)", Mode::kRestyle);
  add_mode(app, "extend", "Continue a video from its last frame, guided by a prompt", Mode::kExtend);
}

}  // namespace vdm::cli
