// Shared helpers for the test suites.
#pragma once
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/module.h>

#include <sys/types.h>

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "models/autoencoder_kl.h"
#include "models/unet_3d_condition.h"
#include "pipelines/video_pipeline.h"
#include "text/clip_text_model.h"

namespace vdm::test {

// A two-level UNet3D (CrossAttnDownBlock3D + DownBlock3D and back, one layer per block, 4 latent
// channels) of `width` and 2 * `width` channels, `groups` norm groups, text of
// `cross_attention_dim`, attention heads of `head_dim` channels.
models::UNet3DConditionConfig tiny_unet3d_config(int64_t width, int64_t groups, int64_t cross_attention_dim,
                                                 int64_t head_dim);

// A two-level AutoencoderKL (DownEncoderBlock2D / UpDecoderBlock2D, one layer per block) of `width`
// and 2 * `width` channels, `groups` norm groups.
models::AutoencoderKLConfig tiny_vae_config(int64_t width, int64_t groups);

// A CLIP text model of 16 channels, 2 layers of 2 heads, vocabulary 40 (bos 38, eos 39, pad 0), 12 positions.
text::CLIPTextConfig tiny_clip_text_config();

// A training recipe (vdm train) for a tiny model: 16x16 frames, 4 frames, a two-level VAE of 8
// channels with 4 latent channels, a UNet (8, 16) with first-frame conditioning, v prediction.
nlohmann::json tiny_recipe_json();

// The embedded model (samples/models/shapes) with `config`'s other settings (model_dir is set here).
std::unique_ptr<pipelines::VideoPipeline> load_shapes_pipeline(pipelines::PipelineConfig config = {});

// A quick joint text-to-video render: "a red circle moving left on a black background", 4 frames,
// 2 denoising steps, seed 5.
pipelines::GenerateOptions tiny_clip_options();

// Root of the shared reference fixtures: $VDM_FIXTURES_ROOT, else ../shared/fixtures next to
// the source tree. Empty string when absent.
std::string shared_fixtures_root();

// The diffusers-tiny fixture folder: $VDM_FIXTURES (default <shared>/diffusers-tiny). Empty when
// absent.
std::string diffusers_tiny_root();

// A fresh, empty temporary folder for one test (removed at process exit is not guaranteed).
std::string make_temp_dir(const std::string& tag);

// Path of the built `vdm` executable.
std::string vdm_binary();

// Runs a shell command, captures stdout+stderr; returns the exit status (WEXITSTATUS or 128+sig).
int run_command(const std::string& cmd, std::string* output = nullptr);

// Starts `vdm` with `args` in the background, stdout+stderr into `log`, with `env` ("NAME=value")
// added to this process's environment. Returns the pid (-1 and a failed expectation when it
// cannot start).
pid_t spawn_vdm(const std::vector<std::string>& args, const std::string& log,
                const std::vector<std::string>& env = {});

// Waits for `pid`; its exit status as run_command reports it: the code, or 128 + signal.
int wait_exit(pid_t pid);

// Adds noise (0.05 standard deviation) to every parameter of `m`. Layers initialised to zero (a
// temporal convolution layer's last convolution, as diffusers does) would otherwise hide a lost
// bias, residual or whole stage.
void perturb(torch::nn::Module& m);

// max |a - b| (after casting to float64); shapes must match (ADD_FAILURE otherwise).
double max_abs_diff(const at::Tensor& a, const at::Tensor& b);

// A JSON file (a golden manifest); a failed expectation names the path when it cannot be read.
nlohmann::json read_json(const std::string& path);

// golden[key], or an exception naming the key when the golden file has no such tensor.
const at::Tensor& golden_tensor(const std::map<std::string, at::Tensor>& golden, const std::string& key);

// Compares every golden tensor named `prefix` + path with the recorded taps[path] (each within
// `tolerance`; a tap never recorded fails). Returns how many were compared and the worst max|diff|.
struct TapComparison {
  int compared = 0;
  double worst = 0;
};
TapComparison compare_taps(const std::map<std::string, at::Tensor>& golden, const std::string& prefix,
                           const std::map<std::string, at::Tensor>& taps, double tolerance);

}  // namespace vdm::test

// Skips the current test with a reason when the diffusers-tiny fixtures are absent.
#define VDM_REQUIRE_FIXTURES(root_var)                                                     \
  std::string root_var = ::vdm::test::diffusers_tiny_root();                               \
  if (root_var.empty()) GTEST_SKIP() << "reference fixtures not found (set VDM_FIXTURES or " \
                                        "place them at ../shared/fixtures/diffusers-tiny)"
