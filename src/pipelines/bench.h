// `vdm bench`: per-stage timings of a text-to-video run (text encoding, each UNet step, VAE
// decode, video encoding) and peak memory, on a real model folder or on random weights built
// from configs (so the ModelScope-size UNet can be measured without its weights).
#pragma once
#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>

#include "pipelines/op_profile.h"

namespace vdm::pipelines {

struct BenchOptions {
  std::string model_dir;   // a diffusers folder with weights, or
  std::string config_dir;  // a folder with unet/, vae/, text_encoder/ config.json (random weights)
  int64_t frames = 16;
  int64_t width = 256;
  int64_t height = 256;
  int64_t steps = 5;        // UNet steps timed (after one warm-up step)
  double guidance = 9.0;    // > 1: batch 2 (classifier-free guidance)
  std::string dtype = "float32";
  std::string device = "cpu";
  int64_t repeat = 1;       // repetitions of the text/VAE/encode stages
  int64_t decode_chunk = 0; // 0 = automatic
  bool cuda_graph = false;  // capture the UNet step as one CUDA graph (CUDA only)
  bool skip_vae = false;
  bool skip_encode = false;
  bool profile = false;     // per-operator times of the timed UNet steps (LibTorch's profiler)
  bool cudnn_benchmark = true;  // CUDA: cuDNN times its algorithms on the first step (as vdm generate)
  std::string channels_last = "auto";  // UNet activation layout: auto (as vdm generate), on, off
  std::string fuse_qkv = "auto";       // self-attention's q/k/v as one product: auto (as vdm generate), on, off
  int64_t context_frames = 0;  // frame windows of the temporal transformers (vdm generate --context-frames)
  int64_t context_stride = 4;
  // >= 0: also time the shallow pass of DeepCache at this branch (vdm generate --deep-cache-branch),
  // as the stage unet_step_shallow.
  int64_t deep_cache_branch = -1;
  std::string freeu;  // FreeU factors as vdm generate --freeu ("" = off)
};

struct StageTiming {
  std::string stage;
  std::vector<double> ms;  // one entry per run
  double median() const;
  double min() const;
  double max() const;
};

struct BenchReport {
  std::string device_name;
  std::string dtype;
  std::string source;  // model folder or config folder
  int64_t unet_parameters = 0;
  int64_t batch = 1;
  std::string layout = "nchw";  // the UNet's and the VAE's activation layout: nchw or channels-last
  int64_t fused_qkv_modules = 0;  // self-attention modules with q, k and v as one product
  std::vector<std::string> cuda_kernels;  // vdm's CUDA kernels in use (CUDA runs)
  std::string upsample = "transposed";    // the upsamplers: transposed or separate (VDM_UPSAMPLE)
  std::string temporal_conv = "conv3d";   // the temporal convolutions: conv2d or conv3d (VDM_TEMPORAL_CONV)
  std::string frame_windows = "off";  // temporal::FrameWindows::describe()
  std::string freeu = "off";          // models::describe_freeu()
  int threads = 1;         // LibTorch's intra-op threads
  int kernel_threads = 1;  // threads vdm's own CPU kernels run on (1 in a build without OpenMP)
  std::string cpu_kernels;  // the build of vdm's CPU kernels in use: avx512 (+bf16), avx2 or baseline
  std::vector<StageTiming> stages;
  double peak_host_mb = 0;    // max resident set size
  double peak_device_mb = 0;  // CUDA caching allocator peak (0 on CPU)
  std::optional<OpProfile> unet_ops;  // with options.profile
  nlohmann::json to_json() const;
  std::string to_table() const;
};

BenchReport run_bench(const BenchOptions& options);

}  // namespace vdm::pipelines
