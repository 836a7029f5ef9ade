#include "pipelines/video_pipeline.h"

#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/interrupt.h"
#include "core/log.h"
#include "core/runtime.h"
#include "io/json_config.h"
#include "models/attention.h"
#include "models/autoencoder_kl.h"
#include "models/cuda_ops.h"
#include "models/resnet.h"
#include "models/unet_3d_condition.h"
#include "pipelines/conditioning.h"
#include "pipelines/latent_preview.h"
#include "pipelines/model_folder.h"
#include "pipelines/unet_graph.h"
#include "temporal/temporal_conv.h"
#include "schedulers/scheduler.h"
#include "text/clip_text_model.h"
#include "text/clip_tokenizer.h"
#include "text/prompt_weights.h"

#ifdef VDM_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#endif

namespace vdm::pipelines {

namespace fs = std::filesystem;
using at::indexing::Slice;

struct VideoPipeline::Components {
  ModelFolder folder;
  io::JsonConfig scheduler_config;
  text::ClipTokenizer tokenizer;
  text::CLIPTextModel text_encoder{nullptr};
  models::UNet3DConditionModel unet{nullptr};
  models::AutoencoderKL vae{nullptr};
  c10::Device device{c10::kCPU};
  c10::ScalarType dtype = at::kFloat;
  std::optional<uint64_t> max_memory;  // PipelineConfig::max_memory
  std::unique_ptr<UNetGraph> unet_graph;  // with PipelineConfig::cuda_graph
  std::vector<models::LoraSpec> loras;    // merged at load
  bool prompt_weights = false;            // PipelineConfig::prompt_weights
  std::vector<models::LoraFile> lora_files;
  // set_extra_loras: the files read so far (by path), the list merged now, and the weights it
  // changed as they were before ("<component>/<module>" -> copy).
  std::map<std::string, models::LoraFile> lora_cache;
  std::vector<models::LoraSpec> extra_loras;
  std::map<std::string, at::Tensor> weights_before_extra;

  models::LoraComponents lora_components() { return {{"unet", unet.get()}, {"text_encoder", text_encoder.get()}}; }
  const models::LoraFile& cached_lora(const std::string& path) {
    auto it = lora_cache.find(path);
    if (it == lora_cache.end()) it = lora_cache.emplace(path, models::read_lora(path, lora_components())).first;
    return it->second;
  }
};

namespace {

// The scheduler for a sampler choice: "" = the folder's scheduler; a diffusers class name
// ("EulerDiscreteScheduler") = that class from the folder's config, as diffusers' from_config;
// otherwise a sampler preset name (ddim, euler, dpmpp_2m, ...).
std::unique_ptr<schedulers::Scheduler> make_pipeline_scheduler(const io::JsonConfig& config,
                                                               const std::string& sampler) {
  if (sampler.empty()) return schedulers::make_scheduler(config);
  if (sampler.size() > 9 && sampler.compare(sampler.size() - 9, 9, "Scheduler") == 0) {
    nlohmann::json j = config.json();
    j["_class_name"] = sampler;
    return schedulers::make_scheduler(io::JsonConfig(j, config.source()));
  }
  return schedulers::make_scheduler(config, sampler);
}

// Free memory on a CUDA device in bytes (0 when unknown or without CUDA).
uint64_t free_device_memory(const c10::Device& device) {
#ifdef VDM_WITH_CUDA
  if (!device.is_cuda()) return 0;
  c10::cuda::CUDAGuard guard(device);
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the error state
    return 0;
  }
  return free_bytes;
#else
  (void)device;
  return 0;
#endif
}

}  // namespace

VideoPipeline::VideoPipeline(std::unique_ptr<Components> c) : c_(std::move(c)) {}
VideoPipeline::~VideoPipeline() = default;

std::unique_ptr<VideoPipeline> VideoPipeline::load(const PipelineConfig& config) {
  // Validate everything cheap before loading weights.
  c10::Device device = parse_device(config.device);
  c10::ScalarType dtype = parse_dtype(config.dtype);
  if (config.cuda_graph && !device.is_cuda())
    throw InputError(fmt::format("--cuda-graph needs --device cuda (got --device {})", config.device));
  ModelFolder folder = ModelFolder::open(config.model_dir);
  io::JsonConfig scheduler_config =
      io::JsonConfig::load(folder.component("scheduler").config_path);
  schedulers::make_scheduler(scheduler_config);  // fails early on an unknown scheduler

  auto c = std::make_unique<Components>(Components{
      folder, scheduler_config, text::ClipTokenizer::load(folder.component("tokenizer").dir),
      nullptr, nullptr, nullptr, device, dtype, config.max_memory, nullptr, {}, {}, {}, {}, {}});
  c->text_encoder = text::load_clip_text_model(folder.component("text_encoder").dir);
  c->unet = models::load_unet3d(folder.component("unet").dir);
  c->vae = models::load_autoencoder_kl(folder.component("vae").dir);

  const auto& ucfg = c->unet->config();
  const auto& vcfg = c->vae->config();
  const int64_t text_dim = c->text_encoder->config().hidden_size;
  if (ucfg.cross_attention_dim != text_dim)
    throw InputError(fmt::format(
        "{}: unet cross_attention_dim {} does not match text_encoder hidden_size {}; the "
        "components come from different models",
        folder.dir(), ucfg.cross_attention_dim, text_dim));
  const int64_t lc = vcfg.latent_channels;
  if (ucfg.in_channels != lc && !takes_first_frame_condition(ucfg.in_channels, lc))
    throw InputError(fmt::format(
        "{}: unet in_channels {} fits neither the VAE's {} latent channels nor first-frame "
        "conditioning ({}); the components come from different models",
        folder.dir(), ucfg.in_channels, lc, first_frame_condition_layouts(lc)));
  if (ucfg.out_channels != lc)
    throw InputError(fmt::format("{}: unet out_channels {} differs from the VAE's latent_channels {}",
                                 folder.dir(), ucfg.out_channels, lc));

  // Merged in float32, before the conversion to the run dtype; every file is checked before any merge.
  c->loras = config.loras;
  c->prompt_weights = config.prompt_weights;
  c->lora_files = models::apply_loras(config.loras, c->lora_components());
  for (size_t i = 0; i < c->lora_files.size(); ++i)
    log::info("LoRA {} (strength {}): {}", c->lora_files[i].path, config.loras[i].strength, c->lora_files[i].summary());

  for (torch::nn::Module* m : std::initializer_list<torch::nn::Module*>{
           c->text_encoder.get(), c->unet.get(), c->vae.get()}) {
    m->eval();
    m->to(device, dtype);
  }
  c->unet->set_channels_last(models::channels_last_pays(device));
  c->vae->set_channels_last(models::channels_last_pays(device));
  // A bad VDM_UPSAMPLE or VDM_TEMPORAL_CONV fails here, before any work.
  models::upsample_as_transposed_conv();
  temporal::temporal_conv_as_2d();
  c->unet->fuse_qkv_projections(models::fused_qkv_pays(device));
  // Every denoising step has the same shapes: cuDNN's timed choice of algorithms pays from step 2.
  if (device.is_cuda()) at::globalContext().setBenchmarkCuDNN(true);
  if (config.cuda_graph) c->unet_graph = std::make_unique<UNetGraph>(c->unet);
  return std::unique_ptr<VideoPipeline>(new VideoPipeline(std::move(c)));
}

int64_t VideoPipeline::latent_channels() const { return c_->vae->config().latent_channels; }
int64_t VideoPipeline::spatial_factor() const {
  return c_->vae->downsample_factor() * c_->unet->config().downsample_factor();
}
bool VideoPipeline::has_first_frame_conditioning() const {
  return takes_first_frame_condition(c_->unet->config().in_channels, latent_channels());
}
bool VideoPipeline::has_frame_position() const {
  return takes_frame_position(c_->unet->config().in_channels, latent_channels());
}
const std::string& VideoPipeline::model_dir() const { return c_->folder.dir(); }

std::string VideoPipeline::scheduler_name(const std::string& sampler) const {
  return make_pipeline_scheduler(c_->scheduler_config, sampler)->name();
}

std::string VideoPipeline::lora_description() const {
  std::vector<std::string> parts;
  for (size_t i = 0; i < c_->lora_files.size(); ++i)
    parts.push_back(fmt::format("{}:{}", c_->lora_files[i].path, c_->loras[i].strength));
  for (const auto& spec : c_->extra_loras)
    parts.push_back(fmt::format("{}:{}", c_->lora_cache.at(spec.path).path, spec.strength));
  return fmt::format("{}", fmt::join(parts, ", "));
}

void VideoPipeline::check_loras(const std::vector<models::LoraSpec>& specs) {
  for (const auto& spec : specs) c_->cached_lora(spec.path);
}

void VideoPipeline::set_extra_loras(const std::vector<models::LoraSpec>& specs) {
  if (specs == c_->extra_loras) return;
  check_loras(specs);  // every file fits before any weight changes
  const models::LoraComponents components = c_->lora_components();
  torch::NoGradGuard no_grad;
  auto weight_of = [&](const std::string& component, const std::string& module) {
    return *components.at(component)->named_parameters().find(module + ".weight");
  };
  // In place: fused q/k/v views, channels-last weights and a captured CUDA graph all read these.
  for (auto& [key, before] : c_->weights_before_extra) {
    const auto slash = key.find('/');
    weight_of(key.substr(0, slash), key.substr(slash + 1)).copy_(before);
  }
  c_->weights_before_extra.clear();
  c_->extra_loras.clear();
  for (const auto& spec : specs) {
    const models::LoraFile& file = c_->cached_lora(spec.path);
    for (const auto& layer : file.layers) {
      const std::string key = layer.component + "/" + layer.module;
      if (!c_->weights_before_extra.count(key))
        c_->weights_before_extra.emplace(key, weight_of(layer.component, layer.module).clone());
    }
    models::merge_lora(file, spec.strength, components);
    log::info("LoRA {} (strength {}) for the next renders: {}", file.path, spec.strength, file.summary());
  }
  c_->extra_loras = specs;
}

std::string VideoPipeline::describe() const {
  const int64_t in = c_->unet->config().in_channels;
  const std::string loras = lora_description();
  return fmt::format("{} (unet in_channels {}, {}{}; {} on {}{})", c_->folder.dir(), in,
                     has_first_frame_conditioning() ? "text- and image-to-video" : "text-to-video",
                     takes_pixel_coordinates(in, latent_channels()) ? " with frame position and pixel coordinates"
                     : takes_frame_position(in, latent_channels())  ? " with frame position"
                                                                    : "",
                     dtype_name(c_->dtype), c_->device.str(), loras.empty() ? "" : "; LoRA " + loras);
}

void VideoPipeline::validate(GenerateOptions& o) const {
  const int64_t vf = c_->vae->downsample_factor();
  const int64_t f = spatial_factor();
  const int64_t native = c_->unet->config().sample_size.value_or(c_->vae->config().sample_size / vf) * vf;
  if (o.width == 0) o.width = native;
  if (o.height == 0) o.height = native;
  auto near = [f](int64_t v) {
    const int64_t top = std::max<int64_t>(f, 4096 / f * f);  // the largest size accepted
    if (v >= top) return fmt::format("{}", top);
    int64_t lo = std::max<int64_t>(f, v / f * f);
    return lo == v ? fmt::format("{}", v) : fmt::format("{} or {}", lo, lo + f);
  };
  if (o.width <= 0 || o.width % f != 0 || o.width > 4096)
    throw InputError(fmt::format(
        "--width {}: must be a positive multiple of {} (VAE factor {} x UNet factor {}) up to 4096; "
        "use {}",
        o.width, f, vf, c_->unet->config().downsample_factor(), near(std::max<int64_t>(o.width, 1))));
  if (o.height <= 0 || o.height % f != 0 || o.height > 4096)
    throw InputError(fmt::format(
        "--height {}: must be a positive multiple of {} (VAE factor {} x UNet factor {}) up to 4096; "
        "use {}",
        o.height, f, vf, c_->unet->config().downsample_factor(), near(std::max<int64_t>(o.height, 1))));
  if (o.frames < 1 || o.frames > 1024)
    throw InputError(fmt::format("--frames {}: must be between 1 and 1024", o.frames));
  if (o.steps < 1 || o.steps > 1000)
    throw InputError(fmt::format("--steps {}: must be between 1 and 1000", o.steps));
  if (!std::isfinite(o.guidance) || o.guidance < 0)
    throw InputError(fmt::format(
        "--guidance {}: must be a finite number >= 0 (<= 1 turns guidance off; 7-12 is usual)",
        o.guidance));
  if (!std::isfinite(o.strength) || o.strength <= 0 || o.strength > 1)
    throw InputError(fmt::format("--strength {}: must be in (0, 1]", o.strength));
  if (o.fit != "crop" && o.fit != "pad" && o.fit != "stretch")
    throw InputError(fmt::format("--fit {}: expected crop, pad or stretch", o.fit));
  if (!(o.guidance_rescale >= 0 && o.guidance_rescale <= 1))
    throw InputError(fmt::format("--guidance-rescale {}: must be in [0, 1] (0 = off; 0.7 is usual with v-prediction)",
                                 o.guidance_rescale));
  if (o.decode_chunk < 0)
    throw InputError(fmt::format("--decode-chunk {}: must be >= 0 (0 = automatic)", o.decode_chunk));
  temporal::validate_frame_windows(o.context);
  temporal::validate_free_init(o.free_init);
  validate_deep_cache(o);
  if (c_->prompt_weights) {
    // A weight that is not a number stops here, before any work.
    for (const std::string* p : {&o.prompt, &o.negative_prompt}) text::parse_prompt_weights(*p);
    for (const auto* keys : {&o.prompt_at, &o.negative_prompt_at})
      for (const auto& [frame, p] : *keys) text::parse_prompt_weights(p);
  }
  for (const auto* keys : {&o.prompt_at, &o.negative_prompt_at})
    for (const auto& [frame, text] : *keys)
      if (frame < 1 || frame >= o.frames)
        throw InputError(fmt::format("{} {}:{}: frame {} is not in the clip's frames 1..{} (frame 0 takes {})",
                                     keys == &o.prompt_at ? "--prompt-at" : "--negative-prompt-at", frame, text,
                                     frame, o.frames - 1,
                                     keys == &o.prompt_at ? "--prompt" : "--negative-prompt"));
  make_pipeline_scheduler(c_->scheduler_config, o.sampler);
}

void VideoPipeline::validate_deep_cache(const GenerateOptions& o) const {
  if (o.deep_cache_interval < 0 || o.deep_cache_interval > 1000)
    throw InputError(fmt::format("--deep-cache {}: must be between 0 and 1000 (0 = off; 2-5 is usual)",
                                 o.deep_cache_interval));
  const int64_t skips = c_->unet->num_skip_connections();
  if (o.deep_cache_branch < 0 || o.deep_cache_branch >= skips)
    throw InputError(fmt::format("--deep-cache-branch {}: this UNet has {} skip connections; use 0..{} (0 = the "
                                 "shallowest branch, the fastest)",
                                 o.deep_cache_branch, skips, skips - 1));
  if (o.deep_cache_interval > 1 && c_->unet_graph)
    throw InputError(fmt::format("--deep-cache {} with --cuda-graph: the graph replays the whole UNet every step; "
                                 "drop one of the two",
                                 o.deep_cache_interval));
}

MemoryModel VideoPipeline::memory_model() const {
  const auto& ucfg = c_->unet->config();
  const auto& vcfg = c_->vae->config();
  MemoryModel m;
  m.latent_channels = vcfg.latent_channels;
  m.unet_in_channels = ucfg.in_channels;
  m.unet_block_out_channels = ucfg.block_out_channels;
  m.unet_layers_per_block = ucfg.layers_per_block;
  m.unet_heads = ucfg.attention_head_dim;  // UNet3D: the number of heads of each level
  m.vae_factor = c_->vae->downsample_factor();
  m.vae_block_out_channels = vcfg.block_out_channels;
  m.text_length = c_->tokenizer.max_length();
  m.text_dim = c_->text_encoder->config().hidden_size;
  m.activation_bytes = static_cast<int64_t>(c10::elementSize(c_->dtype));
  m.attention_score_budget = models::kAttentionScoreBudget;
  return m;
}

namespace {
MemoryJob memory_job(const GenerateOptions& o) {
  MemoryJob job;
  job.frames = o.frames;
  job.width = o.width;
  job.height = o.height;
  job.guidance = o.guidance > 1.0;
  job.decode_chunk = o.decode_chunk;
  if (o.context.length > 0) {
    job.window_length = o.context.length;
    job.window_stride = o.context.stride;
  }
  job.feature_cache = o.deep_cache_interval > 1;
  job.text_per_frame = !o.prompt_at.empty() || !o.negative_prompt_at.empty();
  return job;
}
}  // namespace

MemoryEstimate VideoPipeline::estimate_memory(const GenerateOptions& o) const {
  return pipelines::estimate_memory(memory_model(), memory_job(o));
}

void VideoPipeline::check_memory(const GenerateOptions& o) const {
  uint64_t available = 0;
  std::string source;
  if (c_->max_memory) {
    available = *c_->max_memory;
    source = "--max-memory";
  } else if (c_->device.is_cuda()) {
    available = free_device_memory(c_->device);
    source = fmt::format("free memory on {}", c_->device.str());
  } else {
    available = available_host_memory();
    source = "free memory on this machine (MemAvailable, or the cgroup limit when lower)";
  }
  pipelines::check_memory(memory_model(), memory_job(o), available, source);
}

at::Tensor VideoPipeline::encode_text(const std::string& text) {
  c10::InferenceMode guard;
  if (c_->prompt_weights) return encode_weighted_text(text);
  std::vector<int64_t> dropped;
  at::Tensor ids = c_->tokenizer.batch({text}, &dropped).to(c_->device);
  if (!dropped.empty() && dropped[0] > 0)
    log::warn("prompt is longer than the text encoder's {} tokens: the last {} token(s) were "
              "dropped; shorten the prompt to keep them",
              c_->tokenizer.max_length(), dropped[0]);
  return c_->text_encoder->forward(ids).last_hidden_state;  // [1, L, D]
}

at::Tensor VideoPipeline::encode_weighted_text(const std::string& text) {
  const auto& tok = c_->tokenizer;
  const int64_t L = tok.max_length();
  std::vector<int64_t> ids{tok.bos_id()};
  std::vector<float> weights{1.0f};
  int64_t dropped = 0;
  for (const text::WeightedText& segment : text::parse_prompt_weights(text))
    for (int64_t id : tok.encode(segment.text, /*add_special=*/false, /*truncate=*/false)) {
      if (static_cast<int64_t>(ids.size()) >= L - 1) {
        ++dropped;
        continue;
      }
      ids.push_back(id);
      weights.push_back(static_cast<float>(segment.weight));
    }
  if (dropped > 0)
    log::warn("prompt is longer than the text encoder's {} tokens: the last {} token(s) were dropped; shorten the "
              "prompt to keep them",
              L, dropped);
  ids.push_back(tok.eos_id());
  weights.push_back(1.0f);
  while (static_cast<int64_t>(ids.size()) < L) {
    ids.push_back(tok.pad_id());
    weights.push_back(1.0f);
  }
  const at::Tensor id_tensor = at::tensor(ids, at::kLong).unsqueeze(0).to(c_->device);
  const at::Tensor z = c_->text_encoder->forward(id_tensor).last_hidden_state;  // [1, L, D]
  // Each token's embedding scaled by its weight, then the whole rescaled to its unweighted mean.
  const at::Tensor w = at::tensor(weights, at::kFloat).to(z.device(), z.scalar_type()).view({1, L, 1});
  const at::Tensor weighted = z * w;
  return weighted * (z.mean() / weighted.mean());
}

at::Tensor VideoPipeline::encode_prompt(const std::string& prompt, const std::string& negative_prompt,
                                        bool do_guidance) {
  at::Tensor cond = encode_text(prompt);
  if (!do_guidance) return cond;
  at::Tensor uncond = encode_text(negative_prompt);
  return at::cat({uncond, cond}, 0);  // [2, L, D]
}

at::Tensor VideoPipeline::encode_prompt_frames(const std::string& first, const std::map<int64_t, std::string>& later,
                                               int64_t frames) {
  std::map<int64_t, std::string> keys = later;
  keys[0] = first;
  // The last keyframe's prompt holds to the last frame.
  if (keys.rbegin()->first < frames - 1) keys[frames - 1] = keys.rbegin()->second;
  std::map<std::string, at::Tensor> encoded;  // each distinct prompt once
  for (const auto& [frame, text] : keys)
    if (!encoded.count(text)) encoded[text] = encode_text(text)[0];  // [L, D]
  std::vector<at::Tensor> rows(static_cast<size_t>(frames));
  for (auto it = keys.begin(); it != keys.end(); ++it) {
    const auto next = std::next(it);
    if (next == keys.end()) {
      rows[static_cast<size_t>(it->first)] = encoded.at(it->second);
      break;
    }
    const at::Tensor& a = encoded.at(it->second);
    const at::Tensor& b = encoded.at(next->second);
    const double span = static_cast<double>(next->first - it->first);
    for (int64_t f = it->first; f < next->first; ++f) {
      const double alpha = static_cast<double>(f - it->first) / span;
      rows[static_cast<size_t>(f)] = a * (1.0 - alpha) + b * alpha;
    }
  }
  return at::stack(rows, 0);  // [F, L, D]
}

at::Tensor VideoPipeline::encode_prompts(const GenerateOptions& o, bool do_guidance) {
  if (o.prompt_at.empty() && o.negative_prompt_at.empty())
    return encode_prompt(o.prompt, o.negative_prompt, do_guidance);
  c10::InferenceMode guard;
  at::Tensor cond = encode_prompt_frames(o.prompt, o.prompt_at, o.frames);
  if (!do_guidance) return cond;
  at::Tensor uncond = encode_prompt_frames(o.negative_prompt, o.negative_prompt_at, o.frames);
  return at::cat({uncond, cond}, 0);  // [2F, L, D]
}

at::Tensor VideoPipeline::denoise(const GenerateOptions& o, const at::Tensor& text_embeddings,
                                  at::Tensor latents, const at::Tensor& condition,
                                  int64_t start_step, const StepObserver& observer) {
  c10::InferenceMode guard;
  if (c_->unet->frame_windows() != o.context || c_->unet->freeu() != o.freeu) {
    c_->unet->set_frame_windows(o.context);
    c_->unet->set_freeu(o.freeu);
    // A captured graph holds the previous windows' or FreeU's kernels: capture again.
    if (c_->unet_graph) c_->unet_graph = std::make_unique<UNetGraph>(c_->unet);
  }
  auto scheduler = make_pipeline_scheduler(c_->scheduler_config, o.sampler);
  scheduler->set_timesteps(o.steps);
  if (start_step > 0) scheduler->set_begin_index(start_step);
  scheduler->set_eta(o.eta);
  const bool guidance = o.guidance > 1.0;
  const int64_t batch = guidance ? 2 : 1;
  if (text_embeddings.dim() != 3 ||
      (text_embeddings.size(0) != batch && text_embeddings.size(0) != batch * latents.size(2)))
    throw Error(fmt::format("denoise: text embeddings {} for guidance {} and {} frames; expected [{}, L, D] or "
                            "[{}, L, D] (encode_prompts)",
                            c10::str(text_embeddings.sizes()), o.guidance, latents.size(2), batch,
                            batch * latents.size(2)));
  at::Generator gen = make_generator(o.seed ^ 0x5eedULL);
  const at::Tensor timesteps = scheduler->timesteps().to(at::kCPU);
  // The UNet reads each step's timestep from the device: one upload here, none in the loop.
  const at::Tensor timesteps_on_device = timesteps.to(c_->device);
  const int64_t n = timesteps.size(0);
  ProgressMeter meter("denoise", n - start_step, o.progress);
  const auto opts = at::TensorOptions().device(c_->device).dtype(c_->dtype);
  const at::Tensor text = text_embeddings.to(opts);
  // latents: [1, C, F, h, w], float32 on the pipeline device
  latents = latents.to(c_->device, at::kFloat);
  // The UNet's input, allocated once: [batch, C + conditioning channels, F, h, w] in the model's
  // dtype, batch 2 with guidance. The conditioning channels do not change across steps and are
  // written here; each step writes its scaled latents into every copy of the batch.
  const int64_t C = latents.size(1), condition_channels = condition.defined() ? condition.size(1) : 0;
  at::Tensor model_input = at::empty(
      {guidance ? 2 : 1, C + condition_channels, latents.size(2), latents.size(3), latents.size(4)}, opts);
  if (condition.defined()) model_input.narrow(1, C, condition_channels).copy_(condition);
  // DeepCache: the deep features of the last full UNet pass, reused by the shallow passes between.
  const bool deep_cache = o.deep_cache_interval > 1;
  models::FeatureCache feature_cache{o.deep_cache_branch, {}};
  for (int64_t i = start_step; i < n; ++i) {
    throw_if_interrupted();
    model_input.narrow(1, 0, C).copy_(scheduler->scale_model_input(latents, i));
    const at::Tensor& x = model_input;
    const at::Tensor t_device = timesteps_on_device[i];
    at::Tensor noise_pred;
    if (deep_cache) {
      const bool full_pass = (i - start_step) % o.deep_cache_interval == 0;
      noise_pred = c_->unet->forward(x, t_device, text, feature_cache, full_pass);
    } else {
      noise_pred = c_->unet_graph ? (*c_->unet_graph)(x, t_device, text) : c_->unet->forward(x, t_device, text);
    }
    noise_pred = noise_pred.to(at::kFloat);
    if (guidance) {
      auto parts = noise_pred.chunk(2, 0);
      noise_pred = parts[0] + o.guidance * (parts[1] - parts[0]);
      if (o.guidance_rescale > 0) noise_pred = rescale_guidance(noise_pred, parts[1], o.guidance_rescale);
    }
    latents = scheduler->step(noise_pred, i, latents, gen).prev_sample;
    if (observer) observer(i, latents);
    if (o.on_step) o.on_step(i, latents);
    if (!o.preview_dir.empty() && o.preview_every > 0 &&
        ((i - start_step + 1) % o.preview_every == 0 || i + 1 == n))
      write_latent_preview(o.preview_dir, i, latents);
    meter.update(i - start_step + 1);
  }
  return latents;
}

std::string describe_prompt_keyframes(const std::map<int64_t, std::string>& keyframes) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [frame, text] : keyframes) j[std::to_string(frame)] = text;
  return j.dump();
}

void add_prompt_keyframe(std::map<int64_t, std::string>& keyframes, const std::string& entry,
                         const std::string& flag) {
  const size_t colon = entry.find(':');
  int64_t frame = -1;
  const char* end = entry.data() + (colon == std::string::npos ? 0 : colon);
  const auto parsed = std::from_chars(entry.data(), end, frame);
  if (colon == std::string::npos || colon == 0 || parsed.ec != std::errc() || parsed.ptr != end || frame < 0)
    throw InputError(fmt::format("{} '{}': expected FRAME:PROMPT with a frame number, e.g. '8:a blue circle moving "
                                 "right'",
                                 flag, entry));
  if (!keyframes.emplace(frame, entry.substr(colon + 1)).second)
    throw InputError(fmt::format("{} '{}': frame {} already has a prompt ('{}'); give each frame once", flag, entry,
                                 frame, keyframes.at(frame)));
}

std::string describe_deep_cache(int64_t interval, int64_t branch) {
  return fmt::format("every {} steps, branch {}", interval, branch);
}

at::Tensor VideoPipeline::decode_latents(const at::Tensor& latents, int64_t decode_chunk) {
  c10::InferenceMode guard;
  // latents: [1, C, F, h, w] -> per-frame [F, C, h, w]
  const auto& vcfg = c_->vae->config();
  at::Tensor z = latents.squeeze(0).permute({1, 0, 2, 3}) / vcfg.scaling_factor;
  if (vcfg.shift_factor) z = z + *vcfg.shift_factor;
  const int64_t frames = z.size(0);
  if (decode_chunk <= 0) {
    // Bound the decoder's largest activations to roughly 1.5 GB per chunk (memory_guard.h).
    const int64_t f = c_->vae->downsample_factor();
    decode_chunk = auto_decode_chunk(memory_model(), z.size(3) * f, z.size(2) * f);
  }
  std::vector<at::Tensor> out;
  for (int64_t s = 0; s < frames; s += decode_chunk) {
    throw_if_interrupted();
    at::Tensor chunk = z.index({Slice(s, std::min(frames, s + decode_chunk))});
    at::Tensor img = c_->vae->decode(chunk.to(c_->device, c_->dtype)).to(at::kFloat);
    out.push_back((img / 2 + 0.5).clamp(0, 1).to(at::kCPU));
  }
  return at::cat(out, 0);  // [F, 3, H, W]
}

at::Tensor VideoPipeline::encode_image_latents(const at::Tensor& frames_uint8,
                                               const GenerateOptions& o) {
  c10::InferenceMode guard;
  // frames_uint8: [N, H, W, 3] -> scaled latents [N, C, h, w]
  std::vector<at::Tensor> out;
  const auto& vcfg = c_->vae->config();
  for (int64_t s = 0; s < frames_uint8.size(0); s += 8) {
    at::Tensor x = frames_uint8.index({Slice(s, std::min(frames_uint8.size(0), s + 8))})
                       .permute({0, 3, 1, 2})
                       .to(at::kFloat)
                       .div(127.5)
                       .sub(1.0);
    at::Tensor mean = c_->vae->encode(x.to(c_->device, c_->dtype)).mean.to(at::kFloat);
    if (vcfg.shift_factor) mean = mean - *vcfg.shift_factor;
    out.push_back(mean * vcfg.scaling_factor);
  }
  return at::cat(out, 0);
}

at::Tensor VideoPipeline::run(const GenerateOptions& o, const at::Tensor& init_latents,
                              const at::Tensor& image_condition_latent) {
  return decode_latents(sample(o, init_latents, image_condition_latent), o.decode_chunk);
}

at::Tensor VideoPipeline::sample(const GenerateOptions& o_in, const at::Tensor& init_latents,
                                 const at::Tensor& image_condition_latent) {
  GenerateOptions o = o_in;
  validate(o);
  check_memory(o);
  const int64_t f = c_->vae->downsample_factor();
  const int64_t C = latent_channels(), h = o.height / f, w = o.width / f;
  const bool guidance = o.guidance > 1.0;
  at::Tensor text = encode_prompts(o, guidance);

  at::Tensor condition = unet_condition(image_condition_latent, c_->unet->config().in_channels, 1, C, o.frames, h, w,
                                        at::TensorOptions().dtype(at::kFloat).device(c_->device));

  auto scheduler = make_pipeline_scheduler(c_->scheduler_config, o.sampler);
  scheduler->set_timesteps(o.steps);
  at::Generator gen = make_generator(o.seed);
  at::Tensor latents;
  int64_t start = 0;
  if (o.latents) {
    latents = *o.latents;
    const std::vector<int64_t> want{1, C, o.frames, h, w};
    if (latents.sizes().vec() != want)
      throw InputError(fmt::format("initial latents have shape {}, expected {}",
                                   c10::str(latents.sizes()), c10::str(at::IntArrayRef(want))));
    latents = latents.to(at::kFloat) * scheduler->init_noise_sigma();
  } else {
    at::Tensor noise = temporal::frame_window_noise(
        at::randn({1, C, o.frames, h, w}, gen, at::TensorOptions().dtype(at::kFloat)), o.context, gen);
    if (init_latents.defined()) {
      // SDEdit: start part-way, from the given latents noised to the first remaining timestep.
      const auto tail = schedulers::timesteps_for_strength(*scheduler, o.strength);
      if (tail.num_steps < 1)
        throw InputError(fmt::format(
            "--strength {} with --steps {} runs no denoising step; raise --strength or --steps",
            o.strength, o.steps));
      start = tail.begin_index;
      at::Tensor t0 = scheduler->timesteps().index({start}).reshape({1});
      latents = scheduler->add_noise(init_latents.to(at::kFloat), noise, t0);
    } else {
      latents = noise * scheduler->init_noise_sigma();
    }
  }
  if (!o.free_init.active()) return denoise(o, text, latents, condition, start);
  if (start > 0)
    throw InputError(fmt::format("--free-init {}: FreeInit samples from pure noise, and this render starts part-way "
                                 "(restyle, or animate on a model without first-frame conditioning, at --strength "
                                 "{}); drop --free-init",
                                 o.free_init.iterations, o.strength));
  return sample_free_init(o, text, latents, condition, *scheduler, gen);
}

at::Tensor VideoPipeline::sample_free_init(const GenerateOptions& o, const at::Tensor& text, at::Tensor latents,
                                           const at::Tensor& condition, const schedulers::Scheduler& scheduler,
                                           at::Generator& gen) {
  // latents: [1, C, F, h, w], the first pass's noise times init_noise_sigma.
  const double sigma = scheduler.init_noise_sigma();
  const at::Tensor unit_noise = latents / sigma;
  const at::Tensor low_pass = temporal::free_init_low_pass(o.free_init, latents.size(2), latents.size(3), latents.size(4));
  // Diffused back to the start of the schedule: the last training timestep, as diffusers, for the
  // schedulers that noise with the training alphas; the first timestep of the schedule for the
  // sigma-based ones, whose add_noise works on their own schedule.
  const int64_t T = c_->scheduler_config.get_int("num_train_timesteps", 1000);
  const at::Tensor t_start = scheduler.sigmas().defined() ? scheduler.timesteps().index({0}).reshape({1})
                                                          : at::full({1}, T - 1, at::kLong);
  const int64_t n = o.free_init.iterations;
  for (int64_t pass = 0; pass < n; ++pass) {
    if (pass > 0) {
      const at::Tensor z_t = scheduler.add_noise(latents.to(at::kFloat).cpu(), unit_noise.cpu(), t_start);
      const at::Tensor fresh = at::randn(latents.sizes(), gen, at::TensorOptions().dtype(at::kFloat)) * sigma;
      latents = temporal::free_init_mix(z_t, fresh, low_pass);
    }
    GenerateOptions p = o;
    p.steps = o.free_init.pass_steps(pass, o.steps);
    log::info("FreeInit pass {}/{}: {} steps", pass + 1, n, p.steps);
    if (pass + 1 < n) {  // previews and step observers see the last pass only
      p.on_step = {};
      p.preview_dir.clear();
      if (o.progress)
        p.progress = [sink = o.progress, pass, n](ProgressEvent e) {
          e.stage = fmt::format("free-init {}/{}", pass + 1, n);
          sink(e);
        };
    }
    latents = denoise(p, text, latents, condition, 0);
  }
  return latents;
}

std::string VideoPipeline::t2v_mode(const std::string& requested) const {
  if (requested.empty()) return has_first_frame_conditioning() ? "factorized" : "joint";
  if (!is_t2v_mode(requested))
    throw InputError(fmt::format("--t2v-mode {}: expected joint or factorized", requested));
  if (requested == "factorized" && !has_first_frame_conditioning())
    throw InputError(fmt::format(
        "--t2v-mode factorized: {} has a UNet with in_channels {}, which takes no first frame (that needs {}); "
        "use --t2v-mode joint",
        model_dir(), c_->unet->config().in_channels, first_frame_condition_layouts(latent_channels())));
  return requested;
}

at::Tensor VideoPipeline::generate(const GenerateOptions& o) { return frames_to_uint8(generate_float(o)); }

at::Tensor VideoPipeline::generate_float(const GenerateOptions& o) {
  if (t2v_mode(o.t2v_mode) == "joint") return run(o, {}, {});
  // Factorized: a first pass samples the whole clip and keeps its frame 0 (what the object is and
  // where it starts); a second pass, from fresh noise, animates that frame as image-to-video does.
  GenerateOptions first = o;
  first.on_step = {};
  first.preview_dir.clear();
  if (o.progress)
    first.progress = [sink = o.progress](ProgressEvent e) {
      e.stage = "first-frame";
      sink(e);
    };
  at::Tensor frame0 = sample(first, {}, {}).select(2, 0);  // [1, C, h, w]
  GenerateOptions second = o;
  second.latents.reset();
  second.seed = o.seed + 1;
  return run(second, {}, frame0);
}

at::Tensor VideoPipeline::animate(const at::Tensor& image, const GenerateOptions& o_in) {
  GenerateOptions o = o_in;
  validate(o);
  check_memory(o);
  if (image.dim() != 3 || image.size(2) != 3 || image.scalar_type() != at::kByte)
    throw InputError(fmt::format("animate: image must be uint8 [H, W, 3], got {} {}",
                                 c10::toString(image.scalar_type()), c10::str(image.sizes())));
  at::Tensor fitted = fit_image(image, o.width, o.height, o.fit);
  at::Tensor latent = encode_image_latents(fitted.unsqueeze(0), o);  // [1, C, h, w]
  if (has_first_frame_conditioning()) return frames_to_uint8(run(o, {}, latent));
  // Plain text-to-video model: every frame starts from the image (SDEdit).
  at::Tensor init = latent.unsqueeze(2).expand({1, latent.size(1), o.frames, latent.size(2), latent.size(3)});
  return frames_to_uint8(run(o, init.contiguous(), {}));
}

at::Tensor VideoPipeline::restyle(const at::Tensor& video, const GenerateOptions& o_in) {
  GenerateOptions o = o_in;
  if (video.dim() != 4 || video.size(3) != 3 || video.scalar_type() != at::kByte || video.size(0) < 1)
    throw InputError(fmt::format("restyle: video must be uint8 [F, H, W, 3] with F >= 1, got {} {}",
                                 c10::toString(video.scalar_type()), c10::str(video.sizes())));
  o.frames = video.size(0);
  validate(o);
  check_memory(o);
  std::vector<at::Tensor> fitted;
  for (int64_t i = 0; i < video.size(0); ++i) fitted.push_back(fit_image(video[i], o.width, o.height, o.fit));
  at::Tensor latents = encode_image_latents(at::stack(fitted), o);  // [F, C, h, w]
  at::Tensor init = latents.permute({1, 0, 2, 3}).unsqueeze(0).contiguous();  // [1, C, F, h, w]
  at::Tensor first;
  if (has_first_frame_conditioning()) first = latents.index({Slice(0, 1)});
  return frames_to_uint8(run(o, init, first));
}

GenerateOptions VideoPipeline::extension_options(const GenerateOptions& o) {
  if (o.frames < 1 || o.frames > 1023)
    throw InputError(fmt::format("--frames {}: the frames to add must be between 1 and 1023", o.frames));
  GenerateOptions next = o;
  next.frames = o.frames + 1;
  return next;
}

at::Tensor VideoPipeline::extend(const at::Tensor& video, const GenerateOptions& o_in) {
  if (video.dim() != 4 || video.size(3) != 3 || video.scalar_type() != at::kByte || video.size(0) < 1)
    throw InputError(fmt::format("extend: video must be uint8 [F, H, W, 3] with F >= 1, got {} {}",
                                 c10::toString(video.scalar_type()), c10::str(video.sizes())));
  GenerateOptions o = extension_options(o_in);
  validate(o);
  std::vector<at::Tensor> fitted;
  for (int64_t i = 0; i < video.size(0); ++i) fitted.push_back(fit_image(video[i], o.width, o.height, o.fit));
  const at::Tensor added = animate(fitted.back(), o);  // [frames + 1, H, W, 3]
  return at::cat({at::stack(fitted), added.slice(0, 1)}, 0);
}

at::Tensor rescale_guidance(const at::Tensor& guided, const at::Tensor& text, double phi) {
  std::vector<int64_t> dims;
  for (int64_t d = 1; d < guided.dim(); ++d) dims.push_back(d);
  const at::Tensor ratio = text.std(dims, /*unbiased=*/true, /*keepdim=*/true) /
                           guided.std(dims, /*unbiased=*/true, /*keepdim=*/true);
  return guided * (phi * ratio + (1.0 - phi));
}

at::Tensor frames_to_uint8(const at::Tensor& frames) {
  // frames: [F, 3, H, W] float in [0, 1] -> [F, H, W, 3] uint8
  return frames.mul(255.0).round().clamp(0, 255).to(at::kByte).permute({0, 2, 3, 1}).contiguous();
}

at::Tensor fit_image(const at::Tensor& image, int64_t width, int64_t height, const std::string& mode) {
  // image: [H, W, 3] uint8
  if (image.size(0) < 1 || image.size(1) < 1)
    throw InputError(fmt::format("image has zero size {}x{}", image.size(1), image.size(0)));
  at::Tensor x = image.permute({2, 0, 1}).unsqueeze(0).to(at::kFloat);  // [1, 3, H, W]
  const double ih = static_cast<double>(image.size(0)), iw = static_cast<double>(image.size(1));
  auto resize = [](const at::Tensor& t, int64_t h, int64_t w) {
    return at::upsample_bilinear2d(t, {h, w}, false);
  };
  at::Tensor out;
  if (mode == "stretch") {
    out = resize(x, height, width);
  } else if (mode == "crop") {
    const double s = std::max(width / iw, height / ih);
    const int64_t h = std::max<int64_t>(height, std::llround(ih * s));
    const int64_t w = std::max<int64_t>(width, std::llround(iw * s));
    at::Tensor r = resize(x, h, w);
    const int64_t top = (h - height) / 2, left = (w - width) / 2;
    out = r.index({Slice(), Slice(), Slice(top, top + height), Slice(left, left + width)});
  } else if (mode == "pad") {
    const double s = std::min(width / iw, height / ih);
    const int64_t h = std::max<int64_t>(1, std::min<int64_t>(height, std::llround(ih * s)));
    const int64_t w = std::max<int64_t>(1, std::min<int64_t>(width, std::llround(iw * s)));
    at::Tensor r = resize(x, h, w);
    out = at::zeros({1, 3, height, width});
    const int64_t top = (height - h) / 2, left = (width - w) / 2;
    out.index_put_({Slice(), Slice(), Slice(top, top + h), Slice(left, left + w)}, r);
  } else {
    throw InputError(fmt::format("--fit {}: expected crop, pad or stretch", mode));
  }
  return out.squeeze(0).round().clamp(0, 255).to(at::kByte).permute({1, 2, 0}).contiguous();
}

}  // namespace vdm::pipelines
