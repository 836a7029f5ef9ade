// Training machinery on tiny models: the loss falls on a fixed batch, a checkpoint resumes to the
// same state as an uninterrupted run, and the exported folder loads back.
#include <gtest/gtest.h>
#include <cmath>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/runtime.h"
#include "io/json_config.h"
#include "io/tensor_io.h"
#include "models/autoencoder_kl.h"
#include "models/pretrained_io.h"
#include "models/unet_3d_condition.h"
#include "pipelines/conditioning.h"
#include "pipelines/video_pipeline.h"
#include "schedulers/scheduler.h"
#include "tests/support/test_support.h"
#include "text/clip_text_model.h"
#include "text/clip_tokenizer.h"
#include "train/checkpoint.h"
#include "train/loss_log.h"
#include "train/optim.h"
#include "train/recipe.h"
#include "train/shapes_benchmark.h"
#include "train/trainer.h"

namespace vdm::train {
namespace {

namespace fs = std::filesystem;

using test::tiny_recipe_json;

// A quick run of the shapes benchmark on the embedded model: n clips of 4 frames, 2 steps.
ShapesBenchmarkOptions quick_shapes_options(int64_t n, uint64_t seed) {
  ShapesBenchmarkOptions o;
  o.model_dir = std::string(VDM_SOURCE_DIR) + "/samples/models/shapes";
  o.n = n;
  o.seed = seed;
  o.steps = 2;
  o.frames = 4;
  return o;
}

// Always the same batch: training on it must overfit.
class FixedDataset : public ShapesClipDataset {
 public:
  ClipBatch sample_clips(at::Generator&, int64_t batch, int64_t frames, int64_t size, c10::Device device) override {
    at::Generator g = make_generator(99);
    return ShapesClipDataset::sample_clips(g, batch, frames, size, device);
  }
  ClipBatch sample_frames(at::Generator&, int64_t batch, int64_t size, c10::Device device) override {
    at::Generator g = make_generator(98);
    return ShapesClipDataset::sample_frames(g, batch, size, device);
  }
};

double mean_of(const std::vector<double>& v, size_t from, size_t to) {
  double s = 0;
  for (size_t i = from; i < to; ++i) s += v[i];
  return s / static_cast<double>(to - from);
}

void copy_tree(const fs::path& from, const fs::path& to) {
  fs::create_directories(to);
  fs::copy(from, to, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
}

TEST(Train, RecipeValidation) {
  TrainRecipe r = TrainRecipe::from_json(tiny_recipe_json(), "tiny");
  EXPECT_EQ(r.prediction_type(), "v_prediction");
  EXPECT_EQ(r.phase_at(0).frames, 4);
  nlohmann::json bad = tiny_recipe_json();
  bad["unet"]["config"]["in_channels"] = 4;  // no room for the first-frame condition
  EXPECT_THROW(TrainRecipe::from_json(bad, "bad"), ConfigError);
  bad = tiny_recipe_json();
  bad["vae"]["train"]["stepz"] = 3;
  EXPECT_THROW(TrainRecipe::from_json(bad, "bad"), ConfigError);
  bad = tiny_recipe_json();
  bad["unet"]["text_encoder"]["hidden_size"] = 32;  // cross_attention_dim mismatch
  EXPECT_THROW(TrainRecipe::from_json(bad, "bad"), ConfigError);
  // Curriculum phases: frames, batch and the image-conditioning share change at their boundaries;
  // after the last phase the stage's own settings apply.
  nlohmann::json phased = tiny_recipe_json();
  phased["unet"]["image_condition_prob"] = 0.8;
  phased["unet"]["curriculum"] = nlohmann::json::parse(
      R"([{"until_step": 10, "frames": 2, "batch": 6, "image_condition_prob": 0.25}, {"until_step": 20, "frames": 3}])");
  TrainRecipe p = TrainRecipe::from_json(phased, "phased");
  EXPECT_EQ(p.phase_at(9).frames, 2);
  EXPECT_EQ(p.phase_at(9).batch, 6);
  EXPECT_EQ(p.phase_at(9).image_condition_prob, 0.25);
  EXPECT_EQ(p.phase_at(10).frames, 3);
  EXPECT_EQ(p.phase_at(10).image_condition_prob, 0.8);
  EXPECT_EQ(p.phase_at(20).frames, 4);
  EXPECT_EQ(p.phase_at(20).image_condition_prob, 0.8);
  EXPECT_EQ(TrainRecipe::from_json(p.to_json(), "again").phase_at(9).image_condition_prob, 0.25);
  // A phase with a cosine schedule anneals from the stage's rate at its first step to 10% at its
  // end; the phases around it keep the stage's constant rate.
  phased["unet"]["train"]["lr"] = 1e-3;
  phased["unet"]["train"]["warmup"] = 5;
  phased["unet"]["train"]["lr_schedule"] = "constant";
  phased["unet"]["curriculum"][1]["lr_schedule"] = "cosine";
  TrainRecipe a = TrainRecipe::from_json(phased, "annealed");
  EXPECT_NEAR(a.unet_lr_at(1, 30), 4e-4, 1e-12);   // warm-up
  EXPECT_NEAR(a.unet_lr_at(9, 30), 1e-3, 1e-12);   // constant phase
  EXPECT_NEAR(a.unet_lr_at(10, 30), 1e-3, 1e-12);  // first step of the cosine phase
  EXPECT_NEAR(a.unet_lr_at(15, 30), 5.5e-4, 1e-12);
  EXPECT_NEAR(a.unet_lr_at(19, 30), 1e-4 + 9e-4 * 0.5 * (1 + std::cos(M_PI * 0.9)), 1e-12);
  EXPECT_NEAR(a.unet_lr_at(20, 30), 1e-3, 1e-12);  // after the curriculum: the stage's schedule
  EXPECT_EQ(TrainRecipe::from_json(a.to_json(), "again").phase_at(12).lr_schedule, "cosine");
  EXPECT_NEAR(TrainRecipe::from_json(a.to_json(), "again").unet_lr_at(15, 30), 5.5e-4, 1e-12);
  // Two consecutive cosine phases share one decay over steps [10, 30).
  nlohmann::json split = phased;
  split["unet"]["curriculum"].push_back({{"until_step", 30}, {"frames", 3}, {"lr_schedule", "cosine"}});
  TrainRecipe b = TrainRecipe::from_json(split, "split");
  EXPECT_NEAR(b.unet_lr_at(10, 40), 1e-3, 1e-12);
  EXPECT_NEAR(b.unet_lr_at(20, 40), 5.5e-4, 1e-12);  // half-way through the shared decay
  EXPECT_NEAR(b.unet_lr_at(25, 40), 1e-4 + 9e-4 * 0.5 * (1 + std::cos(M_PI * 0.75)), 1e-12);
  EXPECT_NEAR(b.unet_lr_at(30, 40), 1e-3, 1e-12);  // after the curriculum
  // A phase's own rate: the cosine group decays from its first phase's rate; a constant phase
  // holds its own.
  nlohmann::json restart = split;
  restart["unet"]["curriculum"][1]["lr"] = 4e-4;
  restart["unet"]["curriculum"][0]["lr"] = 2e-4;
  TrainRecipe c = TrainRecipe::from_json(restart, "restart");
  EXPECT_NEAR(c.unet_lr_at(9, 40), 2e-4, 1e-12);
  EXPECT_NEAR(c.unet_lr_at(10, 40), 4e-4, 1e-12);
  EXPECT_NEAR(c.unet_lr_at(20, 40), 2.2e-4, 1e-12);  // half-way from 4e-4 to 4e-5
  EXPECT_NEAR(TrainRecipe::from_json(c.to_json(), "again").unet_lr_at(20, 40), 2.2e-4, 1e-12);
  restart["unet"]["curriculum"][0]["lr"] = -1e-3;
  EXPECT_THROW(TrainRecipe::from_json(restart, "bad"), ConfigError);
  // in_channels 2 x latent + 2: first frame plus the frame-position channel.
  nlohmann::json positioned = tiny_recipe_json();
  positioned["unet"]["config"]["in_channels"] = 10;
  EXPECT_NO_THROW(TrainRecipe::from_json(positioned, "positioned"));
  positioned["unet"]["config"]["in_channels"] = 11;
  EXPECT_THROW(TrainRecipe::from_json(positioned, "bad"), ConfigError);
  positioned["unet"]["config"]["in_channels"] = 12;  // 2C + 4: frame position and pixel coordinates
  EXPECT_NO_THROW(TrainRecipe::from_json(positioned, "positioned"));
  positioned["unet"]["config"]["in_channels"] = 13;
  EXPECT_THROW(TrainRecipe::from_json(positioned, "bad"), ConfigError);
  phased["unet"]["curriculum"][1]["lr_schedule"] = "linear";
  EXPECT_THROW(TrainRecipe::from_json(phased, "bad"), ConfigError);
  phased["unet"]["curriculum"][1].erase("lr_schedule");
  phased["unet"]["curriculum"][0]["image_condition_prob"] = 1.5;
  EXPECT_THROW(TrainRecipe::from_json(phased, "bad"), ConfigError);
  // The shapes world: start positions, and a phase's own world (its keys override the data's; after
  // the curriculum the data's applies again). Unknown start names and keys are refused, and a
  // phase world on the folder dataset too.
  nlohmann::json worlds = tiny_recipe_json();
  worlds["data"]["world"] = {{"start", "neutral"}, {"max_travel", 0.3}};
  worlds["unet"]["curriculum"] = nlohmann::json::parse(
      R"([{"until_step": 10}, {"until_step": 20, "world": {"start": "feasible", "margin": 0.05}}])");
  const TrainRecipe w = TrainRecipe::from_json(worlds, "worlds");
  EXPECT_EQ(w.world.start, StartPosition::kNeutral);
  EXPECT_EQ(w.world_at(5).start, StartPosition::kNeutral);
  EXPECT_EQ(w.world_at(15).start, StartPosition::kFeasible);
  EXPECT_EQ(w.world_at(15).max_travel, 0.3);
  EXPECT_EQ(w.world_at(15).margin, 0.05);
  EXPECT_EQ(w.world_at(25).start, StartPosition::kNeutral);
  const TrainRecipe w2 = TrainRecipe::from_json(w.to_json(), "again");
  EXPECT_EQ(w2.world.start, StartPosition::kNeutral);
  EXPECT_FALSE(w2.phase_at(5).world.has_value());
  EXPECT_EQ(w2.world_at(15).margin, 0.05);
  EXPECT_EQ(w2.world_at(15).start, StartPosition::kFeasible);
  auto config_error = [](const nlohmann::json& j) {
    try {
      TrainRecipe::from_json(j, "bad");
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  nlohmann::json bad_world = worlds;
  bad_world["data"]["world"]["start"] = "centre";
  EXPECT_NE(config_error(bad_world).find("start"), std::string::npos);
  bad_world = worlds;
  bad_world["unet"]["curriculum"][1]["world"]["speed"] = 1;
  EXPECT_NE(config_error(bad_world).find("unknown key 'speed'"), std::string::npos);
  bad_world = worlds;
  bad_world["data"]["dataset"] = "folder";
  EXPECT_NE(config_error(bad_world).find("applies to the shapes dataset"), std::string::npos);
  // The shipped recipe parses.
  EXPECT_NO_THROW(TrainRecipe::load(std::string(VDM_SOURCE_DIR) + "/configs/shapes/recipe.json"));
  const TrainRecipe next = TrainRecipe::load(std::string(VDM_SOURCE_DIR) + "/configs/shapes/recipe-direction.json");
  EXPECT_EQ(next.unet.config.at("in_channels"), 18);
  EXPECT_GT(next.unet.text_word_loss, 0.0);
  const TrainRecipe coords = TrainRecipe::load(std::string(VDM_SOURCE_DIR) + "/configs/shapes/recipe.json");
  EXPECT_EQ(coords.unet.config.at("in_channels"), 20);
}

TEST(Train, AdamWAndEmaStateRoundTrip) {
  at::Tensor w = at::ones({3, 2}).set_requires_grad(true);
  NamedParams p{{"w", w}};
  AdamW opt(p, {});
  Ema ema(p, 0.5);
  for (int i = 0; i < 3; ++i) {
    w.mutable_grad() = at::full({3, 2}, 0.5);
    opt.step(0.1);
    ema.update(i);
  }
  EXPECT_LT(w.max().item<double>(), 1.0);  // moved against the gradient
  at::Tensor w2 = at::ones({3, 2}).set_requires_grad(true);
  AdamW opt2({{"w", w2}}, {});
  opt2.load_state(opt.state(), "test");
  EXPECT_EQ(opt2.steps(), 3);
  EXPECT_THROW(opt2.load_state({}, "empty"), WeightsError);
}

TEST(Train, LossLogAndCurve) {
  const std::string dir = test::make_temp_dir("losslog");
  const std::string path = dir + "/x_loss.csv";
  {
    LossLog log(path, {"loss", "lr"});
    for (int s = 1; s <= 20; ++s) log.append(s, {1.0 / s, 1e-3});
  }
  LossLog log(path, {"loss", "lr"});
  ASSERT_EQ(log.steps().size(), 20u);
  log.truncate_after(12);
  EXPECT_EQ(LossLog(path, {"loss", "lr"}).steps().size(), 12u);
  EXPECT_THROW(LossLog(path, {"other"}), InputError);
  EXPECT_THROW(LossLog(path, {"lr", "loss"}), InputError);  // reordered
  EXPECT_THROW(LossLog(path, {"loss"}), InputError);        // a column dropped
  {
    // A column added part-way: earlier rows read with NaN there; new rows carry it.
    LossLog grown(path, {"loss", "word", "lr"});
    ASSERT_EQ(grown.steps().size(), 12u);
    EXPECT_TRUE(std::isnan(grown.column("word")[0]));
    EXPECT_DOUBLE_EQ(grown.column("loss")[3], 0.25);
    EXPECT_DOUBLE_EQ(grown.column("lr")[11], 1e-3);
    grown.truncate_after(12);
    grown.append(13, {0.5, 7.0, 2e-3});
  }
  LossLog reread(path, {"loss", "word", "lr"});
  ASSERT_EQ(reread.steps().size(), 13u);
  EXPECT_DOUBLE_EQ(reread.column("word")[12], 7.0);
  EXPECT_TRUE(std::isnan(reread.column("word")[11]));
  at::Tensor img = draw_loss_curve(log.steps(), log.column("loss"), 200, 120);
  ASSERT_EQ(img.sizes(), (std::vector<int64_t>{120, 200, 3}));
  EXPECT_GT((img.select(2, 1) < 100).sum().item<int64_t>(), 20);  // the red line is drawn
}

TEST(Train, StagesOverfitResumeAndExport) {
  const TrainRecipe recipe = TrainRecipe::from_json(tiny_recipe_json(), "tiny");
  const std::string base = test::make_temp_dir("train_base");
  TrainOptions o;
  o.out_dir = base;
  FixedDataset fixed;

  // Tokenizer: every grammar word becomes one token.
  train_tokenizer(recipe, fixed, o);
  text::ClipTokenizer tok = text::ClipTokenizer::load(base + "/model/tokenizer");
  EXPECT_EQ(tok.encode("a magenta triangle moving down on a gray background", false).size(), 9u);

  // VAE: the reconstruction loss of a fixed batch falls.
  StageReport vae = train_vae(recipe, fixed, o);
  EXPECT_EQ(vae.end_step, 40);
  std::vector<double> vloss = LossLog(loss_log_path(base, "vae"), {"loss", "rec", "kl", "psnr", "lr", "grad_norm", "step_s"})
                                  .column("loss");
  ASSERT_EQ(vloss.size(), 40u);
  EXPECT_LT(mean_of(vloss, 35, 40), 0.5 * mean_of(vloss, 0, 5));
  models::AutoencoderKL vae_model = models::load_autoencoder_kl(base + "/model/vae");
  EXPECT_NE(vae_model->config().scaling_factor, 0.18215);  // measured on the data

  // UNet + text encoder: the loss of a fixed batch falls.
  const std::string a = test::make_temp_dir("train_a");
  copy_tree(base + "/model", a + "/model");
  o.out_dir = a;
  StageReport unet = train_unet(recipe, fixed, o);
  EXPECT_EQ(unet.end_step, 30);
  std::vector<double> uloss =
      LossLog(loss_log_path(a, "unet"), {"loss", "frames", "batch", "lr", "grad_norm", "step_s"}).column("loss");
  ASSERT_EQ(uloss.size(), 30u);
  EXPECT_LT(mean_of(uloss, 22, 30), 0.7 * mean_of(uloss, 0, 8));

  // Resume: 6 steps in one go == 4 steps, stop, resume to 6 (fresh datasets: the batches come
  // from the checkpointed generator).
  ShapesClipDataset shapes;
  const std::string one = test::make_temp_dir("train_one"), two = test::make_temp_dir("train_two");
  copy_tree(base + "/model", one + "/model");
  copy_tree(base + "/model", two + "/model");
  o.out_dir = one;
  o.steps_unet = 6;
  train_unet(recipe, shapes, o);
  o.out_dir = two;
  o.steps_unet = 4;
  train_unet(recipe, shapes, o);
  EXPECT_THROW(train_unet(recipe, shapes, o), InputError);  // a checkpoint exists: needs --resume
  o.resume = true;
  o.steps_unet = 6;
  StageReport resumed = train_unet(recipe, shapes, o);
  EXPECT_EQ(resumed.start_step, 4);
  EXPECT_EQ(resumed.end_step, 6);
  auto ck1 = load_checkpoint(checkpoint_dir(one, "unet"));
  auto ck2 = load_checkpoint(checkpoint_dir(two, "unet"));
  ASSERT_TRUE(ck1 && ck2);
  EXPECT_EQ(ck1->state["step"], 6);
  EXPECT_EQ(ck2->state["step"], 6);
  ASSERT_EQ(ck1->model.size(), ck2->model.size());
  double diff = 0;
  for (const auto& [k, v] : ck1->model) diff = std::max(diff, test::max_abs_diff(v, ck2->model.at(k)));
  for (const auto& [k, v] : ck1->ema) diff = std::max(diff, test::max_abs_diff(v, ck2->ema.at(k)));
  EXPECT_LT(diff, 1e-6);
  ASSERT_EQ(ck1->rng.size(), 2u);  // data + default CPU generator
  for (const auto& [k, v] : ck1->rng) EXPECT_TRUE(at::equal(v, ck2->rng.at(k))) << k;

  // The exported folder loads with the component loaders and runs in the pipeline.
  const std::string m = a + "/model";
  for (const char* f : {"model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                        "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                        "text_encoder/config.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
                        "scheduler/scheduler_config.json"}) {
    EXPECT_TRUE(fs::exists(m + "/" + f)) << f;
  }
  EXPECT_EQ(io::JsonConfig::load(m + "/model_index.json").get_string("_class_name"), "TextToVideoSDPipeline");
  models::UNet3DConditionModel u = models::load_unet3d(m + "/unet");
  EXPECT_EQ(u->config().in_channels, 9);
  text::CLIPTextModel te = text::load_clip_text_model(m + "/text_encoder");
  EXPECT_EQ(te->config().vocab_size, tok.vocab_size());
  auto sched = schedulers::make_scheduler(io::JsonConfig::load(m + "/scheduler/scheduler_config.json"));
  EXPECT_EQ(sched->name(), "DDIMScheduler");
  // Exported weights are the EMA weights stored as float16.
  io::TensorMap unet_w = io::load_safetensors(m + "/unet/diffusion_pytorch_model.safetensors");
  EXPECT_EQ(unet_w.begin()->second.scalar_type(), at::kHalf);

  pipelines::PipelineConfig pc;
  pc.model_dir = m;
  auto pipe = pipelines::VideoPipeline::load(pc);
  pipelines::GenerateOptions g;
  g.prompt = "a red circle moving right on a black background";
  g.frames = 4;
  g.steps = 2;
  g.guidance = 3.0;
  at::Tensor clip = pipe->generate(g);
  EXPECT_EQ(clip.sizes(), (std::vector<int64_t>{4, 16, 16, 3}));
  at::Tensor still = at::zeros({16, 16, 3}, at::kByte);
  EXPECT_EQ(pipe->animate(still, g).sizes(), (std::vector<int64_t>{4, 16, 16, 3}));

  // Text-to-video on a UNet that takes a first frame is factorized by default: a first pass, whose
  // progress is named apart, then the pass that animates its frame 0 (the one the step observer
  // sees). Same seed, same clip; "joint" is the one-pass clip; an unknown mode is refused.
  EXPECT_EQ(pipe->t2v_mode(""), "factorized");
  EXPECT_EQ(pipe->t2v_mode("joint"), "joint");
  EXPECT_THROW(pipe->t2v_mode("both"), InputError);
  {
    pipelines::GenerateOptions f = g;
    std::vector<std::string> stages;
    int64_t observed = 0;
    f.progress = [&](const pipelines::ProgressEvent& e) {
      if (stages.empty() || stages.back() != e.stage) stages.push_back(e.stage);
    };
    f.on_step = [&](int64_t, const at::Tensor&) { ++observed; };
    at::Tensor factorized = pipe->generate(f);
    EXPECT_EQ(stages, (std::vector<std::string>{"first-frame", "denoise"}));
    EXPECT_EQ(observed, f.steps);
    EXPECT_TRUE(at::equal(pipe->generate(g), factorized));
    f.t2v_mode = "joint";
    observed = 0;
    at::Tensor joint = pipe->generate(f);
    EXPECT_EQ(observed, f.steps);
    EXPECT_FALSE(at::equal(joint, factorized));
    f.t2v_mode = "bad";
    EXPECT_THROW(pipe->generate(f), InputError);
  }

  // Growing the UNet's input by the frame-position channel: refused without --grow-unet-input;
  // with it the run resumes from the same weights (new conv_in column zero) and trains on.
  nlohmann::json grown_json = tiny_recipe_json();
  grown_json["unet"]["config"]["in_channels"] = 10;
  TrainRecipe grown = TrainRecipe::from_json(grown_json, "grown");
  o.out_dir = two;
  o.steps_unet = 8;
  EXPECT_THROW(train_unet(grown, shapes, o), WeightsError);
  o.grow_unet_input = true;
  StageReport regrown = train_unet(grown, shapes, o);
  EXPECT_EQ(regrown.start_step, 6);
  EXPECT_EQ(regrown.end_step, 8);
  auto ck3 = load_checkpoint(checkpoint_dir(two, "unet"));
  ASSERT_TRUE(ck3);
  const at::Tensor w = ck3->model.at("unet.conv_in.weight");
  ASSERT_EQ(w.size(1), 10);
  EXPECT_GT(w.select(1, 9).abs().max().item<double>(), 0.0);  // the new channel was trained
  EXPECT_LT(test::max_abs_diff(w.narrow(1, 0, 9), ck2->model.at("unet.conv_in.weight")), 0.1);
  pc.model_dir = two + "/model";
  auto positioned_pipe = pipelines::VideoPipeline::load(pc);
  EXPECT_TRUE(positioned_pipe->has_first_frame_conditioning());
  EXPECT_NE(positioned_pipe->describe().find("with frame position"), std::string::npos);
  EXPECT_EQ(positioned_pipe->generate(g).sizes(), (std::vector<int64_t>{4, 16, 16, 3}));
  EXPECT_EQ(positioned_pipe->animate(still, g).sizes(), (std::vector<int64_t>{4, 16, 16, 3}));

  // high_noise_from beyond the scheduler's timesteps is refused before any step.
  nlohmann::json late_json = tiny_recipe_json();
  late_json["unet"]["high_noise_share"] = 0.5;
  late_json["unet"]["high_noise_from"] = 1000;
  const std::string late = test::make_temp_dir("train_late");
  copy_tree(base + "/model", late + "/model");
  o.out_dir = late;
  o.resume = false;
  EXPECT_THROW(train_unet(TrainRecipe::from_json(late_json, "late"), shapes, o), ConfigError);
  EXPECT_FALSE(has_checkpoint(checkpoint_dir(late, "unet")));
  late_json["unet"]["high_noise_from"] = 700;  // the stage's is fine, one phase's is not
  late_json["unet"]["curriculum"] = {{{"until_step", 2}}, {{"until_step", 4}, {"high_noise_from", 1000}}};
  EXPECT_THROW(train_unet(TrainRecipe::from_json(late_json, "late phase"), shapes, o), ConfigError);
  EXPECT_FALSE(has_checkpoint(checkpoint_dir(late, "unet")));

  // text_word_loss: the probe's loss falls on a fixed batch; the probe is checkpointed but not
  // exported; a run that turns it on part-way starts the probe fresh and keeps its loss log.
  nlohmann::json worded_json = tiny_recipe_json();
  worded_json["unet"]["text_word_loss"] = 0.01;
  const TrainRecipe worded = TrainRecipe::from_json(worded_json, "worded");
  const std::string wdir = test::make_temp_dir("train_words");
  copy_tree(base + "/model", wdir + "/model");
  o.out_dir = wdir;
  o.steps_unet = 20;
  train_unet(worded, fixed, o);
  const std::vector<std::string> worded_columns{"loss", "frames", "batch", "word_loss", "lr", "grad_norm", "step_s"};
  std::vector<double> wl = LossLog(loss_log_path(wdir, "unet"), worded_columns).column("word_loss");
  ASSERT_EQ(wl.size(), 20u);
  EXPECT_LT(mean_of(wl, 15, 20), 0.8 * mean_of(wl, 0, 5));
  EXPECT_EQ(load_checkpoint(checkpoint_dir(wdir, "unet"))->model.count("text_probe.weight"), 1u);
  for (const auto& [k, v] : io::load_safetensors(wdir + "/model/text_encoder/model.safetensors"))
    EXPECT_EQ(k.find("probe"), std::string::npos) << k;
  o.out_dir = two;
  o.steps_unet = 10;
  o.resume = true;
  nlohmann::json grown_worded = grown_json;
  grown_worded["unet"]["text_word_loss"] = 0.01;
  EXPECT_EQ(train_unet(TrainRecipe::from_json(grown_worded, "grown+words"), shapes, o).end_step, 10);
  EXPECT_EQ(load_checkpoint(checkpoint_dir(two, "unet"))->model.count("text_probe.bias"), 1u);
  std::vector<double> two_wl = LossLog(loss_log_path(two, "unet"), worded_columns).column("word_loss");
  ASSERT_EQ(two_wl.size(), 10u);
  EXPECT_TRUE(std::isnan(two_wl[7]));
  EXPECT_TRUE(std::isfinite(two_wl[9]));
}

// Timestep sampling: uniform by default; with high_noise_share a share of the batch comes from the
// top of the range, and the rest stays uniform over all of it.
TEST(Train, HighNoiseShareBiasesTimesteps) {
  UNetRecipe unet;
  at::Generator gen = make_generator(5);
  const int64_t n = 20000;
  auto share_above = [&](const at::Tensor& t, int64_t from) { return (t >= from).to(at::kDouble).mean().item<double>(); };
  at::Tensor plain = sample_timesteps(unet.high_noise_share, unet.high_noise_from, 1000, n, gen);
  EXPECT_GE(plain.min().item<int64_t>(), 0);
  EXPECT_LT(plain.max().item<int64_t>(), 1000);
  EXPECT_NEAR(share_above(plain, 700), 0.3, 0.02);
  unet.high_noise_share = 0.4;
  unet.high_noise_from = 700;
  at::Tensor biased = sample_timesteps(unet.high_noise_share, unet.high_noise_from, 1000, n, gen);
  EXPECT_NEAR(share_above(biased, 700), 0.4 + 0.6 * 0.3, 0.02);
  EXPECT_NEAR(share_above(biased, 0) - share_above(biased, 350), 0.6 * 0.35, 0.02);  // the rest uniform
  EXPECT_LT(biased.max().item<int64_t>(), 1000);
  unet.high_noise_share = 1.0;
  unet.high_noise_from = 990;
  EXPECT_GE(sample_timesteps(unet.high_noise_share, unet.high_noise_from, 1000, 100, gen).min().item<int64_t>(), 990);
  // The recipe keys round-trip and are checked.
  nlohmann::json j = tiny_recipe_json();
  j["unet"]["high_noise_share"] = 0.25;
  j["unet"]["high_noise_from"] = 600;
  TrainRecipe r = TrainRecipe::from_json(TrainRecipe::from_json(j, "biased").to_json(), "again");
  EXPECT_EQ(r.unet.high_noise_share, 0.25);
  EXPECT_EQ(r.unet.high_noise_from, 600);
  j["unet"]["high_noise_share"] = 1.5;
  EXPECT_THROW(TrainRecipe::from_json(j, "bad"), ConfigError);
  j["unet"]["high_noise_share"] = 0.25;
  j["unet"]["high_noise_from"] = -1;
  EXPECT_THROW(TrainRecipe::from_json(j, "bad"), ConfigError);
  // A curriculum phase may set its own; the others, and the steps after the last, take the stage's.
  j["unet"]["high_noise_from"] = 600;
  j["unet"]["curriculum"] = {{{"until_step", 10}}, {{"until_step", 20}, {"high_noise_share", 0.6}, {"high_noise_from", 900}}};
  r = TrainRecipe::from_json(TrainRecipe::from_json(j, "phases").to_json(), "again");
  auto noise_at = [&](int64_t step) {
    const CurriculumPhase p = r.phase_at(step);
    return std::make_pair(p.high_noise_share, p.high_noise_from);
  };
  EXPECT_EQ(noise_at(5), std::make_pair(0.25, int64_t{600}));
  EXPECT_EQ(noise_at(15), std::make_pair(0.6, int64_t{900}));
  EXPECT_EQ(noise_at(25), std::make_pair(0.25, int64_t{600}));
  j["unet"]["curriculum"][1]["high_noise_share"] = -0.1;
  EXPECT_THROW(TrainRecipe::from_json(j, "bad phase"), ConfigError);
}

// Net surgery on a checkpoint: the added input channels compute nothing until trained, and the
// optimizer's second moments of the new weights start at the old channels' mean.
TEST(Train, GrowInputChannelsPadsWeightsAndOptimizerState) {
  Checkpoint ck;
  const std::string key = "unet.conv_in.weight";
  at::Tensor w = at::randn({4, 3, 3, 3});
  ck.model[key] = w;
  ck.ema[key] = w * 0.5;
  ck.optimizer["exp_avg." + key] = at::randn({4, 3, 3, 3});
  ck.optimizer["exp_avg_sq." + key] = at::rand({4, 3, 3, 3});
  const at::Tensor sq = ck.optimizer["exp_avg_sq." + key].clone();
  EXPECT_EQ(grow_input_channels(ck, key, 5), 2);
  for (const at::Tensor& t : {ck.model[key], ck.ema[key], ck.optimizer["exp_avg." + key]}) {
    ASSERT_EQ(t.sizes(), (std::vector<int64_t>{4, 5, 3, 3}));
    EXPECT_EQ(t.narrow(1, 3, 2).abs().max().item<double>(), 0.0);
  }
  EXPECT_TRUE(at::equal(ck.model[key].narrow(1, 0, 3), w));
  EXPECT_TRUE(at::equal(ck.optimizer["exp_avg_sq." + key].narrow(1, 0, 3), sq));
  EXPECT_LT(test::max_abs_diff(ck.optimizer["exp_avg_sq." + key].select(1, 4), sq.mean(1)), 1e-6);
  EXPECT_EQ(grow_input_channels(ck, key, 5), 0);                   // already that wide
  EXPECT_THROW(grow_input_channels(ck, key, 4), WeightsError);     // narrowing
  EXPECT_THROW(grow_input_channels(ck, "unet.missing", 5), WeightsError);
  ck.optimizer.erase("exp_avg." + key);
  EXPECT_THROW(grow_input_channels(ck, key, 6), WeightsError);
}

// The frame-position channel: a ramp from -1 (first frame) to +1 (last), at every pixel and for
// every sample, after the first-frame condition; a plain text-to-video UNet takes no condition.
TEST(Train, FramePositionConditionIsARampOverFrames) {
  const int64_t C = 4, F = 5;
  at::Tensor image = at::randn({1, C, 2, 3});
  at::Tensor cond = pipelines::unet_condition(image, 2 * C + 2, 2, C, F, 2, 3, at::TensorOptions());
  ASSERT_EQ(cond.sizes(), (std::vector<int64_t>{2, C + 2, F, 2, 3}));
  EXPECT_TRUE(at::equal(cond.select(2, 0).narrow(1, 0, C)[1], image[0]));
  EXPECT_EQ(cond.select(1, C).select(1, 0).min().item<double>(), 1.0);  // mask at frame 0
  EXPECT_EQ(cond.select(1, C).narrow(1, 1, F - 1).abs().max().item<double>(), 0.0);
  for (int64_t f = 0; f < F; ++f) {
    const double want = -1.0 + 2.0 * static_cast<double>(f) / (F - 1);
    at::Tensor pos = cond.select(1, C + 1).select(1, f);
    EXPECT_NEAR(pos.min().item<double>(), want, 1e-6) << f;
    EXPECT_NEAR(pos.max().item<double>(), want, 1e-6) << f;
  }
  // Training's first-frame dropout: sample 0 keeps its image and mask, sample 1 loses both; both
  // keep the frame position.
  at::Tensor kept = pipelines::unet_condition(at::randn({2, C, 2, 3}), 2 * C + 2, 2, C, F, 2, 3,
                                              at::TensorOptions(), at::tensor({1.0f, 0.0f}));
  EXPECT_GT(kept[0].narrow(0, 0, C + 1).abs().max().item<double>(), 0.0);
  EXPECT_EQ(kept[1].narrow(0, 0, C + 1).abs().max().item<double>(), 0.0);
  EXPECT_TRUE(at::equal(kept[1][C + 1], cond[0][C + 1]));
  at::Tensor t2v = pipelines::unet_condition({}, 2 * C + 2, 1, C, F, 2, 3, at::TensorOptions());
  EXPECT_EQ(t2v.narrow(1, 0, C + 1).abs().max().item<double>(), 0.0);  // no image
  EXPECT_NEAR(t2v.select(1, C + 1).select(1, F - 1).min().item<double>(), 1.0, 1e-6);
  EXPECT_EQ(pipelines::unet_condition({}, 2 * C + 1, 1, C, F, 2, 3, at::TensorOptions()).size(1), C + 1);
  EXPECT_FALSE(pipelines::unet_condition({}, C, 1, C, F, 2, 3, at::TensorOptions()).defined());
  EXPECT_THROW(pipelines::unet_condition(image, C, 1, C, F, 2, 3, at::TensorOptions()), Error);
  EXPECT_THROW(pipelines::unet_condition(image, 2 * C + 3, 1, C, F, 2, 3, at::TensorOptions()), Error);
}

// in_channels 2C + 4: the frame position, then x (-1 left .. +1 right) and y (-1 top .. +1 bottom),
// the same in every frame and for every sample, never dropped.
TEST(Train, PixelCoordinateChannelsFollowTheFramePosition) {
  const int64_t C = 4, F = 3, h = 3, w = 5;
  EXPECT_TRUE(pipelines::takes_first_frame_condition(2 * C + 4, C));
  EXPECT_TRUE(pipelines::takes_frame_position(2 * C + 4, C));
  EXPECT_TRUE(pipelines::takes_pixel_coordinates(2 * C + 4, C));
  EXPECT_FALSE(pipelines::takes_pixel_coordinates(2 * C + 2, C));
  at::Tensor cond = pipelines::unet_condition(at::randn({2, C, h, w}), 2 * C + 4, 2, C, F, h, w, at::TensorOptions(),
                                              at::tensor({0.0f, 1.0f}));
  ASSERT_EQ(cond.sizes(), (std::vector<int64_t>{2, C + 4, F, h, w}));
  at::Tensor x = cond.select(1, C + 2), y = cond.select(1, C + 3);  // [B, F, h, w]
  for (int64_t b = 0; b < 2; ++b) {
    for (int64_t f = 0; f < F; ++f) {
      EXPECT_NEAR(x[b][f][1][0].item<double>(), -1.0, 1e-6);
      EXPECT_NEAR(x[b][f][1][2].item<double>(), 0.0, 1e-6);
      EXPECT_NEAR(x[b][f][2][w - 1].item<double>(), 1.0, 1e-6);
      EXPECT_NEAR(y[b][f][0][3].item<double>(), -1.0, 1e-6);
      EXPECT_NEAR(y[b][f][h - 1][3].item<double>(), 1.0, 1e-6);
      EXPECT_NEAR(y[b][f][1][4].item<double>(), 0.0, 1e-6);
    }
  }
  // The frame position stays where it was.
  EXPECT_NEAR(cond[0][C + 1][F - 1].min().item<double>(), 1.0, 1e-6);
  EXPECT_NEAR(cond[1][C + 1][0].max().item<double>(), -1.0, 1e-6);
}

// The ceiling mode of `vdm eval shapes`: the measure is perfect on the dataset's own clips, the
// shipped VAE keeps colour, motion and the object's persistence, and a VAE that was never trained
// keeps nothing.
TEST(Train, ShapesCeilingSeparatesATrainedVaeFromAnUntrainedOne) {
  const std::string shipped = std::string(VDM_SOURCE_DIR) + "/samples/models/shapes";
  ShapesBenchmarkOptions o;
  o.n = 6;
  o.seed = 3;
  o.ceiling = true;
  o.model_dir = shipped;
  ShapesBenchmarkReport good = run_shapes_ceiling(o);
  EXPECT_EQ(good.data.all, 1.0);
  EXPECT_EQ(good.vae.colour, 1.0);
  EXPECT_EQ(good.vae.direction, 1.0);
  EXPECT_EQ(good.vae.persistence, 1.0);
  EXPECT_EQ(good.t2v.n, 0);
  ASSERT_EQ(good.clips.size(), 6u);

  const std::string dir = test::make_temp_dir("ceiling");
  models::AutoencoderKL shipped_vae = models::load_autoencoder_kl(shipped + "/vae");
  at::manual_seed(0);  // the untrained weights are drawn from a fixed seed, not the generator's state
  models::AutoencoderKL untrained(shipped_vae->config());
  models::save_pretrained(*untrained, untrained->config().to_json(), dir + "/vae", models::kDiffusersWeightsName,
                          at::kFloat);
  o.model_dir = dir;
  ShapesBenchmarkReport bad = run_shapes_ceiling(o);
  EXPECT_EQ(bad.data.all, 1.0);
  EXPECT_EQ(bad.vae.all, 0.0);
  EXPECT_LT(bad.vae.persistence, 0.5);
}

// A curriculum phase with its own world draws its clips from a latent pool of that world, cached
// apart from the data's; the model's training.json records the world of its last clips, which the
// shapes benchmark draws its first frames from. A pool made from other data settings is encoded
// again.
TEST(Train, PhaseWorldHasItsOwnLatentPool) {
  nlohmann::json j = tiny_recipe_json();
  j["vae"]["train"]["steps"] = 2;
  j["unet"]["train"]["steps"] = 4;
  j["unet"]["latent_pool"] = 4;
  j["unet"]["curriculum"] = nlohmann::json::parse(
      R"([{"until_step": 2}, {"until_step": 4, "world": {"start": "neutral", "min_travel": 0.1, "max_travel": 0.2}}])");
  const std::string dir = test::make_temp_dir("train_worlds");
  TrainOptions o;
  o.out_dir = dir;
  run_training(TrainRecipe::from_json(j, "worlds"), "all", o);
  auto settings_of = [](const fs::path& pool) {
    const at::Tensor b = io::load_safetensors(pool.string()).at("data_settings").contiguous();
    return std::string(reinterpret_cast<const char*>(b.data_ptr<uint8_t>()), static_cast<size_t>(b.numel()));
  };
  const fs::path checkpoints = fs::path(dir) / "checkpoints";
  std::vector<fs::path> phase_pools;
  for (const auto& e : fs::directory_iterator(checkpoints)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("unet-latent-pool-", 0) == 0) phase_pools.push_back(e.path());
  }
  ASSERT_EQ(phase_pools.size(), 1u);
  EXPECT_NE(settings_of(phase_pools[0]).find("\"neutral\""), std::string::npos);
  const fs::path data_pool = checkpoints / "unet-latent-pool.safetensors";
  EXPECT_NE(settings_of(data_pool).find("\"feasible\""), std::string::npos);
  const nlohmann::json record = io::JsonConfig::load(dir + "/model/training.json").json();
  EXPECT_EQ(record.at("world").at("start"), "neutral");
  EXPECT_EQ(record.at("world").at("max_travel"), 0.2);

  ShapesBenchmarkOptions b;
  b.model_dir = dir + "/model";
  EXPECT_EQ(benchmark_world(b).start, StartPosition::kNeutral);
  EXPECT_EQ(benchmark_world(b).max_travel, 0.2);
  b.start = "feasible";
  EXPECT_EQ(benchmark_world(b).start, StartPosition::kFeasible);
  b.start = "centre";
  EXPECT_THROW(benchmark_world(b), InputError);

  // Resumed with another data world: steps 4 and 5 follow the curriculum, so they draw from the
  // data's world, whose cached pool no longer matches and is encoded again.
  j["data"]["world"] = {{"margin", 0.05}};
  j["unet"]["train"]["steps"] = 6;
  o.resume = true;
  run_training(TrainRecipe::from_json(j, "worlds, resumed"), "unet", o);
  EXPECT_NE(settings_of(data_pool).find("\"margin\":0.05"), std::string::npos);
  const nlohmann::json resumed = io::JsonConfig::load(dir + "/model/training.json").json();
  EXPECT_EQ(resumed.at("world").at("start"), "feasible");
  EXPECT_EQ(resumed.at("world").at("margin"), 0.05);
}

// The words mode of `vdm eval shapes`: every first frame is animated with a prompt whose direction
// lies at right angles to the one the clip was rendered with, and the report scores the motion
// against the prompt.
TEST(Train, ShapesWordsModePromptsAPerpendicularDirection) {
  EXPECT_EQ(perpendicular_direction(Direction::kLeft, true), Direction::kUp);
  EXPECT_EQ(perpendicular_direction(Direction::kRight, false), Direction::kDown);
  EXPECT_EQ(perpendicular_direction(Direction::kUp, true), Direction::kLeft);
  EXPECT_EQ(perpendicular_direction(Direction::kDown, false), Direction::kRight);
  ShapesBenchmarkOptions o = quick_shapes_options(3, 5);
  o.conflicting_direction = true;
  ShapesBenchmarkReport r = run_shapes_words(o);
  EXPECT_EQ(r.words.n, 3);
  EXPECT_EQ(r.t2v.n + r.i2v.n, 0);
  ASSERT_EQ(r.clips.size(), 3u);
  auto horizontal = [](const std::string& d) { return d == "left" || d == "right"; };
  for (const auto& c : r.clips) {
    EXPECT_EQ(c.mode, "words");
    const std::string word = c.caption.substr(c.caption.find("moving ") + 7, c.caption.find(" on a") - c.caption.find("moving ") - 7);
    EXPECT_NE(horizontal(word), horizontal(c.rendered_direction)) << c.caption << " / " << c.rendered_direction;
    EXPECT_FALSE(c.score.direction_ok && c.follows_rendered);  // one motion cannot go both ways
  }
  EXPECT_NE(r.to_table().find("the rendered one in"), std::string::npos);
  // A UNet without the first-frame condition cannot run this mode.
  const std::string tiny = test::diffusers_tiny_root();
  if (!tiny.empty()) {
    o.model_dir = tiny + "/t2v_pipeline";
    EXPECT_THROW(run_shapes_words(o), InputError);
  }
}

// The travel mode of `vdm eval shapes`: each clip is generated twice from one seed, with the caption
// travelling to another colour and without; both are scored, side by side on one contact sheet.
TEST(Train, ShapesTravelModeScoresTheTravelAndItsControl) {
  ShapesBenchmarkOptions o = quick_shapes_options(2, 7);
  o.out_dir = test::make_temp_dir("eval_travel");
  ShapesBenchmarkReport r = run_shapes_travel(o);
  EXPECT_EQ(r.travel.n, 2);
  EXPECT_EQ(r.travel_control.n, 2);
  for (const auto* t : {&r.travel, &r.travel_control})
    for (double rate : {t->start, t->end, t->switched, t->continuous}) {
      EXPECT_GE(rate, 0.0);
      EXPECT_LE(rate, 1.0);
    }
  ASSERT_EQ(r.clips.size(), 2u);
  for (const auto& c : r.clips) {
    EXPECT_EQ(c.mode, "travel");
    EXPECT_NE(c.caption.find(" -> "), std::string::npos) << c.caption;
  }
  EXPECT_NE(r.to_table().find("without travel: 2 clips"), std::string::npos) << r.to_table();
  EXPECT_TRUE(fs::exists(fs::path(o.out_dir) / "results.json"));
#ifdef VDM_WITH_FFMPEG
  EXPECT_TRUE(fs::exists(fs::path(o.out_dir) / "contact_travel.png"));
#endif
  o.frames = 3;  // no quarter at each end
  EXPECT_THROW(run_shapes_travel(o), InputError);
  o.frames = 4;
  o.n = 0;
  EXPECT_THROW(run_shapes_travel(o), InputError);
}

// The extend mode of `vdm eval shapes`: each generated clip is extended by as many frames again;
// the new frames are scored against the caption and the seam between the two is checked.
TEST(Train, ShapesExtendModeScoresTheNewFramesAndTheSeam) {
  ShapesBenchmarkOptions o = quick_shapes_options(2, 9);
  ShapesBenchmarkReport r = run_shapes_extend(o);
  EXPECT_EQ(r.extension.n, 2);
  EXPECT_GE(r.seam_ok, 0.0);
  EXPECT_LE(r.seam_ok, 1.0);
  ASSERT_EQ(r.clips.size(), 2u);
  EXPECT_EQ(r.clips[0].mode, "extend");
  EXPECT_NE(r.clips[0].seed, r.clips[1].seed);
  EXPECT_NE(r.to_table().find("extend: the seam keeps the object"), std::string::npos) << r.to_table();
  EXPECT_GT(r.seconds, 0.0);
}

}  // namespace
}  // namespace vdm::train
