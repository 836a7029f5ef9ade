#include "pipelines/bench.h"

#include <sys/resource.h>

#include <ATen/Context.h>

#include <algorithm>
#include <c10/core/InferenceMode.h>
#include <chrono>
#include <filesystem>
#include <optional>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/error.h"
#include "core/log.h"
#include "core/runtime.h"
#include "io/tensor_io.h"
#include "models/attention_cpu.h"
#include "models/autoencoder_kl.h"
#include "models/cuda_ops.h"
#include "models/resnet.h"
#include "models/unet_3d_condition.h"
#include "pipelines/model_folder.h"
#include "pipelines/unet_graph.h"
#include "temporal/temporal_conv.h"
#include "text/clip_text_model.h"
#ifdef VDM_WITH_FFMPEG
#include "codecs/video_writer.h"
#include "io/atomic_file.h"
#endif
#ifdef VDM_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace vdm::pipelines {

namespace fs = std::filesystem;

double StageTiming::median() const {
  if (ms.empty()) return 0;
  std::vector<double> v = ms;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}
double StageTiming::min() const { return ms.empty() ? 0 : *std::min_element(ms.begin(), ms.end()); }
double StageTiming::max() const { return ms.empty() ? 0 : *std::max_element(ms.begin(), ms.end()); }

nlohmann::json BenchReport::to_json() const {
  nlohmann::json j = {{"device", device_name},         {"dtype", dtype},
                      {"source", source},              {"unet_parameters", unet_parameters},
                      {"batch", batch},                {"layout", layout},
                      {"fused_qkv_modules", fused_qkv_modules},
                      {"cuda_kernels", cuda_kernels},  {"upsample", upsample},
                      {"temporal_conv", temporal_conv}, {"frame_windows", frame_windows},
                      {"freeu", freeu},
                      {"peak_host_mb", peak_host_mb},
                      {"threads", threads},            {"kernel_threads", kernel_threads},
                      {"cpu_kernels", cpu_kernels},
                      {"peak_device_mb", peak_device_mb}};
  for (const auto& s : stages)
    j["stages"][s.stage] = {{"median_ms", s.median()}, {"min_ms", s.min()}, {"max_ms", s.max()},
                            {"runs", s.ms.size()}};
  if (unet_ops) j["unet_ops"] = unet_ops->to_json();
  return j;
}

std::string BenchReport::to_table() const {
  std::string out =
      fmt::format("device {}  dtype {}  batch {}  layout {}  fused qkv {}  upsample {}  temporal conv {}  threads {} "
                  "(vdm's kernels on {}, {})  frame windows {}  freeu {}  unet {:.1f} M parameters\n{}\n",
                  device_name, dtype, batch, layout, fused_qkv_modules, upsample, temporal_conv, threads, kernel_threads,
                  cpu_kernels, frame_windows, freeu, unet_parameters / 1e6, source);
  out += fmt::format("{:<16} {:>10} {:>10} {:>10} {:>6}\n", "stage", "median ms", "min ms", "max ms", "runs");
  for (const auto& s : stages)
    out += fmt::format("{:<16} {:>10.2f} {:>10.2f} {:>10.2f} {:>6}\n", s.stage, s.median(), s.min(),
                       s.max(), s.ms.size());
  if (!cuda_kernels.empty()) out += fmt::format("vdm's CUDA kernels: {}\n", fmt::join(cuda_kernels, ", "));
  out += fmt::format("peak host memory {:.0f} MB", peak_host_mb);
  if (peak_device_mb > 0) out += fmt::format(", peak device memory {:.0f} MB", peak_device_mb);
  out += "\n";
  if (unet_ops)
    out += fmt::format("\nUNet steps by {} (self time; profiling adds overhead):\n", unet_ops->kind) +
           unet_ops->to_table();
  return out;
}

namespace {

using Clock = std::chrono::steady_clock;

void sync(const c10::Device& device) {
#ifdef VDM_WITH_CUDA
  if (device.is_cuda()) c10::cuda::device_synchronize();
#else
  (void)device;
#endif
}

template <typename F>
double time_ms(const c10::Device& device, F&& f) {
  sync(device);
  auto t0 = Clock::now();
  f();
  sync(device);
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

}  // namespace

BenchReport run_bench(const BenchOptions& o) {
  if (o.model_dir.empty() == o.config_dir.empty())
    throw InputError("vdm bench: give exactly one of --model DIR (weights) or --config DIR (random weights)");
  if (o.frames < 1 || o.width < 8 || o.height < 8 || o.steps < 1 || o.repeat < 1)
    throw InputError(fmt::format("vdm bench: frames {}, size {}x{}, steps {}, repeat {} must all be positive",
                                 o.frames, o.width, o.height, o.steps, o.repeat));
  c10::Device device = parse_device(o.device);
  c10::ScalarType dtype = parse_dtype(o.dtype);
  for (const auto& [flag, value] : {std::pair{"--channels-last", &o.channels_last}, {"--fuse-qkv", &o.fuse_qkv}})
    if (*value != "auto" && *value != "on" && *value != "off")
      throw InputError(fmt::format("{}: expected auto, on or off, got '{}'", flag, *value));
  std::optional<models::FreeU> freeu;
  if (!o.freeu.empty()) freeu = models::parse_freeu(o.freeu);
  // Option conflicts are refused before anything is loaded or run.
  if (o.cuda_graph) {
#ifdef VDM_WITH_CUDA
    if (!device.is_cuda()) throw InputError("--cuda-graph needs --device cuda");
    if (o.profile) throw InputError("--profile times operators one by one; it cannot look inside --cuda-graph");
#else
    throw InputError("--cuda-graph: this build of vdm has no CUDA support");
#endif
  }
  c10::InferenceMode inference;

  text::CLIPTextModel text_encoder{nullptr};
  models::UNet3DConditionModel unet{nullptr};
  models::AutoencoderKL vae{nullptr};
  BenchReport report;
  if (!o.model_dir.empty()) {
    ModelFolder folder = ModelFolder::open(o.model_dir);
    text_encoder = text::load_clip_text_model(folder.component("text_encoder").dir);
    unet = models::load_unet3d(folder.component("unet").dir);
    vae = models::load_autoencoder_kl(folder.component("vae").dir);
    report.source = "model " + folder.dir();
  } else {
    fs::path dir(o.config_dir);
    for (const char* c : {"unet", "vae", "text_encoder"})
      if (!fs::is_regular_file(dir / c / "config.json"))
        throw InputError(fmt::format("--config {}: {}/config.json not found; expected unet/, vae/ "
                                     "and text_encoder/ folders with config.json",
                                     o.config_dir, c));
    log::info("building models from {} with random weights", o.config_dir);
    text_encoder = text::CLIPTextModel(text::CLIPTextConfig::load((dir / "text_encoder/config.json").string()));
    unet = models::UNet3DConditionModel(models::UNet3DConditionConfig::load((dir / "unet/config.json").string()));
    vae = models::AutoencoderKL(models::AutoencoderKLConfig::load((dir / "vae/config.json").string()));
    report.source = "configs " + o.config_dir + " (random weights)";
  }
  for (torch::nn::Module* m : std::initializer_list<torch::nn::Module*>{text_encoder.get(), unet.get(), vae.get()}) {
    m->eval();
    m->to(device, dtype);
  }
  const bool channels_last = o.channels_last == "auto" ? models::channels_last_pays(device) : o.channels_last == "on";
  unet->set_channels_last(channels_last);
  vae->set_channels_last(channels_last);
  if (device.is_cuda()) at::globalContext().setBenchmarkCuDNN(o.cudnn_benchmark);
  report.layout = channels_last ? "channels-last" : "nchw";
  report.fused_qkv_modules =
      unet->fuse_qkv_projections(o.fuse_qkv == "auto" ? models::fused_qkv_pays(device) : o.fuse_qkv == "on");
  if (device.is_cuda()) report.cuda_kernels = models::cuda_kernels_in_use();
  report.upsample = models::upsample_as_transposed_conv() ? "transposed" : "separate";
  report.temporal_conv = temporal::temporal_conv_as_2d() ? "conv2d" : "conv3d";
  temporal::FrameWindows windows;
  windows.length = o.context_frames;
  windows.stride = o.context_stride;
  unet->set_frame_windows(windows);
  unet->set_freeu(freeu);
  if (freeu) report.freeu = models::describe_freeu(*freeu);
  if (const int64_t skips = unet->num_skip_connections(); o.deep_cache_branch >= skips)
    throw InputError(fmt::format("--deep-cache-branch {}: this UNet has {} skip connections; use 0..{} (or -1: off)",
                                 o.deep_cache_branch, skips, skips - 1));
  report.frame_windows = windows.splits(o.frames) ? windows.describe() : "off";
  report.device_name = device.str();
  report.threads = at::get_num_threads();
  report.kernel_threads = parallel_for_threads();
  report.cpu_kernels =
      std::string(models::fused_attention_cpu_isa()) + (models::fused_attention_cpu_bf16_pairs() ? "+bf16" : "");
  report.dtype = dtype_name(dtype);
  report.unet_parameters = io::parameter_count(*unet);
  const int64_t batch = o.guidance > 1.0 ? 2 : 1;
  report.batch = batch;
  const auto opts = at::TensorOptions().device(device).dtype(dtype);
  const int64_t f = vae->downsample_factor();
  if (o.width % (f * unet->config().downsample_factor()) || o.height % (f * unet->config().downsample_factor()))
    throw InputError(fmt::format("vdm bench: width and height must be multiples of {}",
                                 f * unet->config().downsample_factor()));
  const int64_t h = o.height / f, w = o.width / f;

  // Text encoding: batch prompts of the model's maximum length.
  const auto& tcfg = text_encoder->config();
  at::Tensor ids = at::randint(0, tcfg.vocab_size, {batch, tcfg.max_position_embeddings},
                               at::TensorOptions().dtype(at::kLong).device(device));
  StageTiming text_stage{"text_encoder", {}};
  at::Tensor text;
  text_encoder->forward(ids);  // warm-up
  for (int64_t r = 0; r < o.repeat; ++r)
    text_stage.ms.push_back(time_ms(device, [&] { text = text_encoder->forward(ids).last_hidden_state; }));
  report.stages.push_back(text_stage);

  // UNet steps.
  at::Tensor sample = at::randn({batch, unet->config().in_channels, o.frames, h, w}, opts);
  at::Tensor t = at::full({1}, 500, at::TensorOptions().dtype(at::kLong).device(device));
  text = text.to(opts);
  StageTiming unet_stage{o.cuda_graph ? "unet_step_graph" : "unet_step", {}};
  at::Tensor out;
  log::info("UNet: warm-up step");
  unet->forward(sample, t, text);
  if (o.cuda_graph) {
    // As the denoising loop runs it (--cuda-graph): the inputs copied in, the graph replayed, the
    // output copied out; the first call captures.
    UNetGraph graph(unet);
    graph(sample, t, text);
    for (int64_t i = 0; i < o.steps; ++i)
      unet_stage.ms.push_back(time_ms(device, [&] { out = graph(sample, t, text); }));
  } else {
    auto steps = [&] {
      for (int64_t i = 0; i < o.steps; ++i) {
        unet_stage.ms.push_back(time_ms(device, [&] { out = unet->forward(sample, t, text); }));
        log::info("UNet step {}/{}: {:.1f} ms", i + 1, o.steps, unet_stage.ms.back());
      }
    };
    if (o.profile) {
      report.unet_ops = device.is_cuda() ? profile_cuda_kernels(steps) : profile_ops(steps);
    } else {
      steps();
    }
  }
  report.stages.push_back(unet_stage);
  if (o.deep_cache_branch >= 0) {
    // DeepCache: one refresh pass fills the cache, then the shallow passes the steps between run.
    models::FeatureCache cache{o.deep_cache_branch, {}};
    unet->forward(sample, t, text, cache, /*refresh=*/true);
    StageTiming shallow_stage{"unet_step_shallow", {}};
    for (int64_t i = 0; i < o.steps; ++i)
      shallow_stage.ms.push_back(time_ms(device, [&] { out = unet->forward(sample, t, text, cache, false); }));
    log::info("UNet shallow pass (deep cache branch {}): {:.1f} ms median", o.deep_cache_branch,
              shallow_stage.median());
    report.stages.push_back(shallow_stage);
  }

  // VAE decode in chunks.
  at::Tensor frames;
  if (!o.skip_vae) {
    at::Tensor z = at::randn({o.frames, vae->config().latent_channels, h, w}, opts);
    int64_t chunk = o.decode_chunk > 0 ? o.decode_chunk : o.frames;
    StageTiming vae_stage{"vae_decode", {}};
    for (int64_t r = 0; r < o.repeat; ++r)
      vae_stage.ms.push_back(time_ms(device, [&] {
        std::vector<at::Tensor> parts;
        for (int64_t s = 0; s < o.frames; s += chunk)
          parts.push_back(vae->decode(z.slice(0, s, std::min(o.frames, s + chunk))));
        frames = at::cat(parts, 0);
      }));
    report.stages.push_back(vae_stage);
  }

#ifdef VDM_WITH_FFMPEG
  if (!o.skip_encode && frames.defined()) {
    at::Tensor rgb = ((frames.to(at::kCPU, at::kFloat) / 2 + 0.5).clamp(0, 1) * 255)
                         .to(at::kByte).permute({0, 2, 3, 1}).contiguous();
    StageTiming enc{"video_encode", {}};
    std::string path = (fs::temp_directory_path() / fmt::format("vdm-bench-{}.mp4", ::getpid())).string();
    for (int64_t r = 0; r < o.repeat; ++r)
      enc.ms.push_back(time_ms(c10::Device(c10::kCPU), [&] {
        codecs::VideoWriterOptions wo;
        codecs::VideoWriter writer(path, static_cast<int>(o.width), static_cast<int>(o.height), wo);
        writer.write_frames(rgb);
        writer.finish();
      }));
    fs::remove(path);
    report.stages.push_back(enc);
  }
#endif

  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  report.peak_host_mb = ru.ru_maxrss / 1024.0;
#ifdef VDM_WITH_CUDA
  if (device.is_cuda()) {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index() < 0 ? 0 : device.index());
    report.peak_device_mb = stats.allocated_bytes[0].peak / (1024.0 * 1024.0);
  }
#endif
  return report;
}

}  // namespace vdm::pipelines
