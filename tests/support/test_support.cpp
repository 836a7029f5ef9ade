#include "tests/support/test_support.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>

extern char** environ;

namespace vdm::test {
namespace fs = std::filesystem;

std::string shared_fixtures_root() {
  const char* env = std::getenv("VDM_FIXTURES_ROOT");
  std::string root = env && *env ? env : VDM_DEFAULT_FIXTURES;
  return fs::is_directory(root) ? root : std::string();
}

std::string diffusers_tiny_root() {
  const char* env = std::getenv("VDM_FIXTURES");
  std::string root;
  if (env && *env) {
    root = env;
  } else {
    std::string shared = shared_fixtures_root();
    if (shared.empty()) return {};
    root = shared + "/diffusers-tiny";
  }
  return fs::is_directory(root + "/golden") ? root : std::string();
}

std::string make_temp_dir(const std::string& tag) {
  fs::path base = fs::temp_directory_path() / ("vdm-test-" + tag + "-XXXXXX");
  std::string templ = base.string();
  char* made = ::mkdtemp(templ.data());
  if (!made) throw std::runtime_error("mkdtemp failed for " + templ);
  return made;
}

std::string vdm_binary() {
  const char* env = std::getenv("VDM_BIN");
  if (env && *env) return env;
  return std::string(VDM_BINARY_DIR) + "/vdm";
}

int run_command(const std::string& cmd, std::string* output) {
  std::string full = cmd + " 2>&1";
  FILE* p = ::popen(full.c_str(), "r");
  if (!p) return -1;
  std::array<char, 4096> buf{};
  std::string out;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  int status = ::pclose(p);
  if (output) *output = out;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

void perturb(torch::nn::Module& m) {
  at::NoGradGuard no_grad;
  for (at::Tensor& p : m.parameters()) p.add_(at::randn_like(p) * 0.05);
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) {
    ADD_FAILURE() << "shape mismatch: " << a.sizes() << " vs " << b.sizes();
    return INFINITY;
  }
  if (a.numel() == 0) return 0.0;
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "cannot read " << path;
  return nlohmann::json::parse(in);
}

const at::Tensor& golden_tensor(const std::map<std::string, at::Tensor>& golden, const std::string& key) {
  auto it = golden.find(key);
  if (it == golden.end()) throw std::runtime_error("golden file has no tensor '" + key + "'");
  return it->second;
}

TapComparison compare_taps(const std::map<std::string, at::Tensor>& golden, const std::string& prefix,
                           const std::map<std::string, at::Tensor>& taps, double tolerance) {
  TapComparison r;
  for (const auto& [key, ref] : golden) {
    if (key.rfind(prefix, 0) != 0) continue;
    const std::string path = key.substr(prefix.size());
    auto it = taps.find(path);
    if (it == taps.end()) {
      ADD_FAILURE() << "tap '" << path << "' was not recorded";
      continue;
    }
    const double d = max_abs_diff(it->second, ref);
    r.worst = std::max(r.worst, d);
    EXPECT_LT(d, tolerance) << "tap " << path;
    ++r.compared;
  }
  return r;
}

pid_t spawn_vdm(const std::vector<std::string>& args, const std::string& log,
                const std::vector<std::string>& env) {
  std::vector<std::string> env_s = env;
  for (char** e = environ; *e; ++e) env_s.push_back(*e);
  std::vector<char*> envp;
  for (auto& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv_s = {vdm_binary()};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  EXPECT_EQ(rc, 0) << "cannot start " << argv_s[0];
  return rc == 0 ? pid : -1;
}

int wait_exit(pid_t pid) {
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return -1;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

models::UNet3DConditionConfig tiny_unet3d_config(int64_t width, int64_t groups, int64_t cross_attention_dim,
                                                 int64_t head_dim) {
  models::UNet3DConditionConfig c;
  c.in_channels = 4;
  c.out_channels = 4;
  c.down_block_types = {"CrossAttnDownBlock3D", "DownBlock3D"};
  c.up_block_types = {"UpBlock3D", "CrossAttnUpBlock3D"};
  c.block_out_channels = {width, 2 * width};
  c.layers_per_block = 1;
  c.norm_num_groups = groups;
  c.cross_attention_dim = cross_attention_dim;
  c.attention_head_dim = {head_dim, head_dim};
  return c;
}

models::AutoencoderKLConfig tiny_vae_config(int64_t width, int64_t groups) {
  models::AutoencoderKLConfig c;
  c.down_block_types = {"DownEncoderBlock2D", "DownEncoderBlock2D"};
  c.up_block_types = {"UpDecoderBlock2D", "UpDecoderBlock2D"};
  c.block_out_channels = {width, 2 * width};
  c.layers_per_block = 1;
  c.norm_num_groups = groups;
  return c;
}


text::CLIPTextConfig tiny_clip_text_config() {
  text::CLIPTextConfig c;
  c.vocab_size = 40;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.projection_dim = 16;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.max_position_embeddings = 12;
  c.hidden_act = "quick_gelu";
  c.pad_token_id = 0;
  c.bos_token_id = 38;
  c.eos_token_id = 39;
  return c;
}

std::unique_ptr<pipelines::VideoPipeline> load_shapes_pipeline(pipelines::PipelineConfig config) {
  config.model_dir = std::string(VDM_SOURCE_DIR) + "/samples/models/shapes";
  return pipelines::VideoPipeline::load(config);
}

pipelines::GenerateOptions tiny_clip_options() {
  pipelines::GenerateOptions g;
  g.prompt = "a red circle moving left on a black background";
  g.frames = 4;
  g.steps = 2;
  g.seed = 5;
  g.t2v_mode = "joint";
  return g;
}

nlohmann::json tiny_recipe_json() {
  return nlohmann::json::parse(R"({
    "name": "tiny", "seed": 7,
    "data": {"dataset": "shapes", "size": 16, "frames": 4, "fps": 8},
    "tokenizer": {"num_merges": 200},
    "vae": {"config": {"block_out_channels": [8, 8], "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
                       "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"], "layers_per_block": 1,
                       "latent_channels": 4, "norm_num_groups": 4, "sample_size": 16},
            "train": {"steps": 40, "batch": 4, "lr": 3e-3, "warmup": 0, "weight_decay": 0, "ema_decay": 0.9,
                      "checkpoint_every": 100, "log_every": 1, "precision": "float32"},
            "object_weight": 10, "kl_weight": 1e-6},
    "unet": {"config": {"in_channels": 9, "out_channels": 4, "block_out_channels": [8, 16],
                        "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"],
                        "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"], "layers_per_block": 1,
                        "norm_num_groups": 4, "cross_attention_dim": 16, "attention_head_dim": 2},
             "text_encoder": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                              "num_attention_heads": 2, "hidden_act": "gelu"},
             "train": {"steps": 30, "batch": 2, "lr": 3e-3, "warmup": 0, "ema_decay": 0.9, "checkpoint_every": 2,
                       "log_every": 1, "precision": "float32"},
             "caption_dropout": 0.1, "image_condition_prob": 0.5, "object_weight": 4},
    "scheduler": {"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                  "beta_end": 0.012, "prediction_type": "v_prediction", "rescale_betas_zero_snr": true,
                  "timestep_spacing": "trailing", "clip_sample": false},
    "export": {"dtype": "float16"}
  })");
}

}  // namespace vdm::test
