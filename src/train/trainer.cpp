#include "train/trainer.h"

#include <ATen/core/grad_mode.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>

#include <fmt/format.h>

#include "core/error.h"
#include "core/interrupt.h"
#include "core/log.h"
#include "core/runtime.h"
#include "io/atomic_file.h"
#include "io/json_config.h"
#include "io/tensor_io.h"
#include "models/autoencoder_kl.h"
#include "models/pretrained_io.h"
#include "models/unet_3d_condition.h"
#include "pipelines/conditioning.h"
#include "schedulers/scheduler.h"
#include "text/bpe_trainer.h"
#include "text/clip_text_model.h"
#include "text/clip_tokenizer.h"
#include "train/checkpoint.h"
#include "train/lora_adapters.h"
#include "train/loss_log.h"
#include "train/model_export.h"
#include "train/optim.h"
#include "train/precision.h"

namespace vdm::train {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

at::Tensor sample_timesteps(double high_noise_share, int64_t high_noise_from, int64_t num_train_timesteps,
                            int64_t batch, at::Generator& gen) {
  const auto long_opts = at::TensorOptions().dtype(at::kLong);
  at::Tensor t = at::randint(num_train_timesteps, {batch}, gen, long_opts);
  if (high_noise_share <= 0) return t;
  at::Tensor high = at::randint(high_noise_from, num_train_timesteps, {batch}, gen, long_opts);
  at::Tensor pick = at::rand({batch}, gen, at::TensorOptions().dtype(at::kDouble)) < high_noise_share;
  return at::where(pick, high, t);
}

std::string model_dir(const std::string& out_dir) { return (fs::path(out_dir) / "model").string(); }
std::string lora_dir(const std::string& out_dir) { return (fs::path(out_dir) / "lora").string(); }
std::string checkpoint_dir(const std::string& out_dir, const std::string& stage) {
  return (fs::path(out_dir) / "checkpoints" / stage).string();
}
std::string loss_log_path(const std::string& out_dir, const std::string& stage) {
  return (fs::path(out_dir) / "logs" / (stage + "_loss.csv")).string();
}

namespace {

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Model initialisation draws from the default generator: seed it so a recipe trains the same way.
void seed_default_generator(uint64_t seed) {
  at::Generator g = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(g.mutex());
  g.set_current_seed(seed);
}

int64_t scaled_batch(int64_t batch, double scale) {
  return std::max<int64_t>(1, static_cast<int64_t>(std::llround(static_cast<double>(batch) * scale)));
}

// The default generators feed dropout (the temporal convolutions train with dropout 0.1): their
// states are checkpointed with the data generator so a resumed run continues exactly.
std::vector<std::pair<std::string, at::Generator>> generators(at::Generator& data, c10::Device device) {
  std::vector<std::pair<std::string, at::Generator>> out{{"data", data},
                                                         {"default_cpu", at::detail::getDefaultCPUGenerator()}};
  if (device.is_cuda()) out.emplace_back("default_cuda", at::globalContext().defaultGenerator(device));
  return out;
}

io::TensorMap capture_generators(at::Generator& data, c10::Device device) {
  io::TensorMap out;
  for (auto& [name, g] : generators(data, device)) {
    std::lock_guard<std::mutex> lock(g.mutex());
    out[name] = g.get_state();
  }
  return out;
}

void restore_generators(const io::TensorMap& states, at::Generator& data, c10::Device device) {
  for (auto& [name, g] : generators(data, device)) {
    auto it = states.find(name);
    if (it == states.end()) continue;  // e.g. a CPU checkpoint resumed on CUDA
    std::lock_guard<std::mutex> lock(g.mutex());
    g.set_state(it->second);
  }
}

// What one training step produced: the loss to minimise and extra scalar metrics for the log.
struct StepResult {
  at::Tensor loss;
  std::vector<at::Tensor> metrics;
};

struct StageSpec {
  std::string stage;            // "vae" | "unet"
  StageTraining training;
  int64_t total = 0;
  double budget_s = 0;
  std::vector<std::string> metric_names;
  std::string device, precision;
  std::function<double(int64_t step)> lr_at;  // empty: the training's own schedule
  std::function<void(Checkpoint&)> adapt_checkpoint;  // may be empty: applied to a checkpoint before resuming
};

c10::Device device_of(const StageSpec& spec) { return c10::Device(spec.device); }

// The loop shared by the VAE and UNet stages: resume, optimiser, EMA, logging, progress, time
// budget, periodic checkpoints and exports, SIGINT handling.
StageReport run_stage(const StageSpec& spec, const TrainOptions& options, const NamedParams& params,
                      at::Generator& generator, const std::function<StepResult(int64_t step)>& step_fn,
                      const std::function<void()>& export_fn, const std::function<std::string(int64_t)>& describe) {
  const StageTraining& tr = spec.training;
  AdamWOptions aopts;
  aopts.weight_decay = tr.weight_decay;
  AdamW optimizer(params, aopts);
  Ema ema(params, tr.ema_decay);
  const std::string ck_dir = checkpoint_dir(options.out_dir, spec.stage);

  StageReport report;
  report.stage = spec.stage;
  report.total_steps = spec.total;
  report.device = spec.device;
  report.precision = spec.precision;
  int64_t step = 0;
  double elapsed_before = 0;
  if (has_checkpoint(ck_dir)) {
    if (!options.resume) {
      throw InputError(fmt::format("{}: a {} checkpoint already exists; pass --resume to continue it, or choose "
                                   "another --out",
                                   ck_dir, spec.stage));
    }
    Checkpoint ck = *load_checkpoint(ck_dir);
    if (spec.adapt_checkpoint) spec.adapt_checkpoint(ck);
    {
      at::NoGradGuard no_grad;
      for (const auto& p : params) {
        auto it = ck.model.find(p.first);
        if (it == ck.model.end() || it->second.sizes() != p.second.sizes()) {
          throw WeightsError(fmt::format("{}: weight '{}' is {} in the checkpoint; it does not match the recipe's "
                                         "model (start without --resume in another --out{})",
                                         ck_dir, p.first, it == ck.model.end() ? "missing" : "shaped differently",
                                         spec.stage == "unet" ? ", or pass --grow-unet-input when only the UNet's input "
                                                                "channels grew"
                                                              : ""));
        }
        p.second.copy_(it->second);
      }
    }
    optimizer.load_state(ck.optimizer, ck_dir + "/optimizer.safetensors");
    ema.load_state(ck.ema, ck_dir + "/ema.safetensors");
    restore_generators(ck.rng, generator, device_of(spec));
    step = ck.state.at("step").get<int64_t>();
    elapsed_before = ck.state.value("elapsed_s", 0.0);
    log::info("{}: resuming from step {} ({})", spec.stage, step, ck_dir);
  } else if (options.resume) {
    log::info("{}: no checkpoint in {}; starting from step 0", spec.stage, ck_dir);
  }
  report.start_step = step;

  std::vector<std::string> columns{"loss"};
  columns.insert(columns.end(), spec.metric_names.begin(), spec.metric_names.end());
  for (const char* c : {"lr", "grad_norm", "step_s"}) columns.push_back(c);
  fs::create_directories(fs::path(loss_log_path(options.out_dir, spec.stage)).parent_path());
  LossLog log(loss_log_path(options.out_dir, spec.stage), columns);
  log.truncate_after(step);

  const auto run_start = Clock::now();
  auto save = [&]() {
    Checkpoint ck;
    for (const auto& p : params) ck.model[p.first] = p.second.detach();
    ck.ema = ema.state();
    ck.optimizer = optimizer.state();
    ck.rng = capture_generators(generator, device_of(spec));
    ck.state = {{"stage", spec.stage},
                {"step", step},
                {"total_steps", spec.total},
                {"elapsed_s", elapsed_before + seconds_since(run_start)},
                {"device", spec.device},
                {"precision", spec.precision}};
    save_checkpoint(ck_dir, ck);
  };
  auto export_ema = [&]() {
    NamedParams live = ema.backup();
    ema.copy_to_params();
    try {
      export_fn();
    } catch (...) {
      Ema::restore(params, live);
      throw;
    }
    Ema::restore(params, live);
  };

  install_interrupt_handlers();
  pipelines::ProgressMeter meter("train-" + spec.stage, spec.total, options.progress, step);
  double loss_avg = std::nan("");
  int64_t bad_steps = 0;
  double step_time_sum = 0;
  int64_t steps_run = 0;
  while (step < spec.total) {
    if (interrupt_signal() != 0) {
      const int sig = interrupt_signal();
      log::warn("{}: interrupted at step {}; saving a checkpoint and the model", spec.stage, step);
      export_ema();
      save();
      write_loss_curve(log, "loss");
      throw Interrupted(sig);
    }
    if (spec.budget_s > 0 && seconds_since(run_start) >= spec.budget_s) {
      report.budget_stop = true;
      log::info("{}: time budget of {:.0f} s reached at step {}", spec.stage, spec.budget_s, step);
      break;
    }
    const auto t0 = Clock::now();
    const double lr = spec.lr_at ? spec.lr_at(step) : learning_rate(step, spec.total, tr.lr, tr.warmup, tr.lr_schedule);
    StepResult r = step_fn(step);
    optimizer.zero_grad();
    r.loss.backward();
    const double grad_norm = clip_grad_norm(params, tr.grad_clip);
    if (!std::isfinite(grad_norm)) {
      // A non-finite gradient (overflow) is skipped; many in a row mean training diverged.
      optimizer.zero_grad();
      if (++bad_steps >= 10) {
        save();
        throw Error(fmt::format("{}: gradients were not finite for {} steps in a row at step {}; training diverged. "
                                "Lower the learning rate (now {}) or use --precision float32, then --resume",
                                spec.stage, bad_steps, step, tr.lr));
      }
      log::warn("{}: non-finite gradient at step {}; step skipped", spec.stage, step);
      continue;
    }
    bad_steps = 0;
    optimizer.step(lr);
    ema.update(step);
    ++step;
    const double dt = seconds_since(t0);
    step_time_sum += dt;
    ++steps_run;

    const bool log_now = step % tr.log_every == 0 || step == spec.total;
    if (log_now) {
      const double loss = r.loss.detach().to(at::kFloat).item<double>();
      if (!std::isfinite(loss)) {
        throw Error(fmt::format("{}: the loss is {} at step {}; lower the learning rate (now {}) and --resume from the "
                                "last checkpoint",
                                spec.stage, loss, step, tr.lr));
      }
      loss_avg = std::isnan(loss_avg) ? loss : 0.9 * loss_avg + 0.1 * loss;
      std::vector<double> row{loss};
      for (const auto& m : r.metrics) row.push_back(m.detach().to(at::kDouble).item<double>());
      row.push_back(lr);
      row.push_back(grad_norm);
      row.push_back(dt);
      log.append(step, row);
    }
    meter.update(step, (std::isnan(loss_avg) ? std::string("loss -") : fmt::format("loss {:.4f}", loss_avg)) +
                           (describe ? describe(step) : std::string()));
    if (step % tr.checkpoint_every == 0 && step < spec.total) {
      save();
      write_loss_curve(log, "loss");
    }
    if (tr.export_every > 0 && step % tr.export_every == 0 && step < spec.total) export_ema();
  }
  // The model first: it is what a time-budgeted run exists for.
  export_ema();
  if (step > report.start_step || !has_checkpoint(ck_dir)) save();
  write_loss_curve(log, "loss");
  report.end_step = step;
  report.seconds = seconds_since(run_start);
  report.step_seconds = steps_run > 0 ? step_time_sum / static_cast<double>(steps_run) : 0.0;
  report.last_loss = loss_avg;
  report.exported = model_dir(options.out_dir);
  return report;
}

void require_tokenizer(const std::string& out_dir) {
  const fs::path dir = fs::path(model_dir(out_dir)) / "tokenizer";
  if (!fs::exists(dir / "vocab.json") || !fs::exists(dir / "merges.txt")) {
    throw InputError(fmt::format("{}: no trained tokenizer; run `vdm train --stage tokenizer` (or --stage all) with "
                                 "this --out first",
                                 dir.string()));
  }
}

c10::ScalarType export_dtype(const TrainRecipe& recipe) {
  return recipe.export_dtype == "float16" ? at::kHalf : at::kFloat;
}

// The VAE's latents are scaled to unit variance for the UNet: measured on a fixed sample of frames.
double measure_scaling_factor(models::AutoencoderKL& vae, ClipDataset& data, int64_t size, c10::Device device) {
  at::NoGradGuard no_grad;
  at::Generator g = make_generator(0x5ca1e);
  at::Tensor x = data.sample_frames(g, 64, size, device).video.squeeze(2);  // [64, 3, S, S]
  const bool was_training = vae->is_training();
  vae->eval();
  at::Tensor mean = vae->encode(x).mean.to(at::kFloat);
  if (was_training) vae->train();
  const double std = mean.std().item<double>();
  return std > 1e-8 ? 1.0 / std : 1.0;
}

}  // namespace

StageReport train_tokenizer(const TrainRecipe& recipe, ClipDataset& data, const TrainOptions& options) {
  StageReport report;
  report.stage = "tokenizer";
  const std::string mdir = model_dir(options.out_dir);
  const fs::path dir = fs::path(mdir) / "tokenizer";
  if (options.resume && fs::exists(dir / "vocab.json") && fs::exists(dir / "merges.txt")) {
    log::info("tokenizer: already trained ({})", dir.string());
    report.exported = dir.string();
    return report;
  }
  const auto t0 = Clock::now();
  text::BpeTrainOptions o;
  o.num_merges = recipe.tokenizer.num_merges;
  text::BpeTrainResult result;
  std::vector<std::string> corpus = data.tokenizer_corpus();
  write_component(mdir, "tokenizer", [&](const std::string& d) { result = text::train_clip_bpe(corpus, o, d); });
  report.end_step = report.total_steps = static_cast<int64_t>(result.merges.size());
  report.seconds = seconds_since(t0);
  report.exported = dir.string();
  log::info("tokenizer: {} merges from {} captions ({} distinct words), vocabulary {}", result.merges.size(),
            corpus.size(), result.num_words, result.vocab_size);
  return report;
}

StageReport train_vae(const TrainRecipe& recipe, ClipDataset& data, const TrainOptions& options) {
  const c10::Device device = parse_device(options.device);
  const Precision precision =
      choose_precision(options.precision.empty() ? recipe.vae.train.precision : options.precision, device);
  configure_device_for_training(device);
  models::AutoencoderKLConfig cfg =
      models::AutoencoderKLConfig::from_json(io::JsonConfig(recipe.vae.config, recipe.source + " [vae.config]"));
  cfg.sample_size = recipe.size;
  seed_default_generator(recipe.seed + 1);
  models::AutoencoderKL vae(cfg);
  vae->to(device);
  vae->train();
  NamedParams params = named_trainable(*vae, "vae.");
  at::Generator gen = make_generator(recipe.seed + 101);

  StageSpec spec;
  spec.stage = "vae";
  spec.training = recipe.vae.train;
  spec.total = options.steps_vae >= 0 ? options.steps_vae : recipe.vae.train.steps;
  spec.budget_s = options.time_budget_vae;
  spec.metric_names = {"rec", "kl", "psnr"};
  spec.device = device.str();
  spec.precision = precision_name(precision);
  const int64_t batch = scaled_batch(recipe.vae.train.batch, options.batch_scale);
  const int64_t factor = vae->downsample_factor();
  const int64_t h = recipe.size / factor;
  log::info("vae: {} parameters, batch {} frames of {}x{}, {} steps, {} on {}", io::parameter_count(*vae), batch,
            recipe.size, recipe.size, spec.total, spec.precision, spec.device);

  auto step_fn = [&](int64_t) {
    ClipBatch b = data.sample_frames(gen, batch, recipe.size, device);
    at::Tensor x = b.video.squeeze(2);  // [B, 3, S, S]
    at::Tensor m = b.mask.squeeze(2);   // [B, 1, S, S]
    at::Tensor eps = at::randn({batch, cfg.latent_channels, h, h}, gen).to(device);
    at::Tensor rec, mean, logvar;
    {
      AutocastScope autocast(device, precision);
      models::DiagonalGaussian post = vae->encode(x);
      mean = post.mean.to(at::kFloat);
      logvar = post.logvar.to(at::kFloat);
      at::Tensor z = mean + at::exp(0.5 * logvar) * eps;
      rec = vae->decode(z);
    }
    rec = rec.to(at::kFloat);
    at::Tensor w = 1.0 + (recipe.vae.object_weight - 1.0) * m;
    at::Tensor err = (rec - x).pow(2);
    at::Tensor rec_loss = (w * err).mean() / w.mean();
    at::Tensor kl = 0.5 * (mean.pow(2) + at::exp(logvar) - 1.0 - logvar).mean();
    StepResult r;
    r.loss = rec_loss + recipe.vae.kl_weight * kl;
    at::Tensor mse = err.detach().mean();
    r.metrics = {rec_loss.detach(), kl.detach(), 10.0 * at::log10(4.0 / mse.clamp_min(1e-10))};
    return r;
  };
  auto export_fn = [&]() {
    const double sf = measure_scaling_factor(vae, data, recipe.size, device);
    nlohmann::json config = vae->config().to_json();
    config["scaling_factor"] = sf;
    write_component(model_dir(options.out_dir), "vae", [&](const std::string& d) {
      models::save_pretrained(*vae, config, d, models::kDiffusersWeightsName, export_dtype(recipe));
    });
    log::debug("vae: exported with scaling_factor {:.5f}", sf);
  };
  return run_stage(spec, options, params, gen, step_fn, export_fn, nullptr);
}

StageReport train_unet(const TrainRecipe& recipe, ClipDataset& data, const TrainOptions& options) {
  const c10::Device device = parse_device(options.device);
  const Precision precision =
      choose_precision(options.precision.empty() ? recipe.unet.train.precision : options.precision, device);
  configure_device_for_training(device);
  const std::string mdir = model_dir(options.out_dir);
  // A LoRA recipe trains adapters on its base model's UNet; everything else comes from that folder.
  const bool lora_run = recipe.is_lora();
  const std::string src_dir = lora_run ? recipe.lora.base : mdir;
  if (!lora_run) require_tokenizer(options.out_dir);
  const std::string vae_dir = (fs::path(src_dir) / "vae").string();
  if (!fs::exists(fs::path(vae_dir) / "config.json")) {
    throw InputError(fmt::format("{}: no trained VAE; run `vdm train --stage vae` (or --stage all) with this --out "
                                 "first",
                                 vae_dir));
  }
  text::ClipTokenizer tokenizer = text::ClipTokenizer::load((fs::path(src_dir) / "tokenizer").string());
  models::AutoencoderKL vae = models::load_autoencoder_kl(vae_dir);
  vae->to(device);
  vae->eval();
  for (auto& p : vae->parameters()) p.set_requires_grad(false);
  const models::AutoencoderKLConfig& vcfg = vae->config();
  const int64_t C = vcfg.latent_channels;
  const int64_t h = recipe.size / vae->downsample_factor();

  nlohmann::json tjson = recipe.unet.text_encoder;
  tjson["vocab_size"] = tokenizer.vocab_size();
  tjson["bos_token_id"] = tokenizer.bos_id();
  tjson["eos_token_id"] = tokenizer.eos_id();
  tjson["pad_token_id"] = tokenizer.pad_id();
  tjson["max_position_embeddings"] = std::max<int64_t>(tjson.value("max_position_embeddings", int64_t(77)),
                                                       tokenizer.max_length());
  text::CLIPTextConfig tcfg =
      text::CLIPTextConfig::from_json(io::JsonConfig(tjson, recipe.source + " [unet.text_encoder]"));
  models::UNet3DConditionConfig ucfg =
      models::UNet3DConditionConfig::from_json(io::JsonConfig(recipe.unet.config, recipe.source + " [unet.config]"));
  ucfg.sample_size = h;
  seed_default_generator(recipe.seed + 2);
  models::UNet3DConditionModel unet{nullptr};
  text::CLIPTextModel text_encoder{nullptr};
  std::unique_ptr<LoraAdapters> lora, text_lora;  // the UNet's adapters; the text encoder's (optional)
  NamedParams params;
  if (lora_run) {
    unet = models::load_unet3d((fs::path(src_dir) / "unet").string());
    text_encoder = text::load_clip_text_model((fs::path(src_dir) / "text_encoder").string());
    tcfg = text_encoder->config();
    for (auto& p : unet->parameters()) p.set_requires_grad(false);
    for (auto& p : text_encoder->parameters()) p.set_requires_grad(false);
  } else {
    unet = models::UNet3DConditionModel(ucfg);
    text_encoder = text::CLIPTextModel(tcfg);
  }
  unet->to(device);
  text_encoder->to(device);
  unet->train();
  text_encoder->train(!lora_run);
  if (lora_run) {
    at::Generator lora_gen = make_generator(recipe.seed + 5);
    lora = std::make_unique<LoraAdapters>(
        *unet, "unet", LoraAdapterOptions{recipe.lora.rank, recipe.lora.alpha, recipe.lora.target_modules}, lora_gen);
    params = lora->parameters();
    if (!recipe.lora.text_encoder_target_modules.empty()) {
      text_lora = std::make_unique<LoraAdapters>(
          *text_encoder, "text_encoder",
          LoraAdapterOptions{recipe.lora.rank, recipe.lora.alpha, recipe.lora.text_encoder_target_modules}, lora_gen);
      for (const auto& p : text_lora->parameters()) params.push_back(p);
    }
    int64_t lora_numel = 0;
    for (const auto& p : params) lora_numel += p.second.numel();
    log::info("lora: rank {} alpha {} on {} modules of the unet and {} of the text encoder of {} ({} trained parameters)",
              recipe.lora.rank, recipe.lora.alpha, lora->size(), text_lora ? text_lora->size() : 0, src_dir, lora_numel);
  } else {
    params = named_trainable(*unet, "unet.");
    for (auto& p : named_trainable(*text_encoder, "text_encoder.")) params.push_back(p);
  }
  // The word probe of text_word_loss: pooled text embedding [B, D] -> one logit per vocabulary
  // entry. Trained and checkpointed with the model, never exported.
  const bool word_loss = recipe.unet.text_word_loss > 0;
  at::Tensor probe_weight, probe_bias;
  if (word_loss) {
    at::Generator probe_gen = make_generator(recipe.seed + 4);
    probe_weight = (at::randn({tcfg.vocab_size, tcfg.hidden_size}, probe_gen) * 0.02).to(device).requires_grad_();
    // Biases start at the log-odds of a caption of about 8 words holding a given entry.
    const double prior = std::min(0.5, 8.0 / static_cast<double>(tcfg.vocab_size));
    probe_bias = at::full({tcfg.vocab_size}, std::log(prior / (1.0 - prior)), at::TensorOptions().device(device))
                     .requires_grad_();
    params.push_back({"text_probe.weight", probe_weight});
    params.push_back({"text_probe.bias", probe_bias});
  }

  auto scheduler = schedulers::make_scheduler(io::JsonConfig(recipe.scheduler, recipe.source + " [scheduler]"));
  const bool v_pred = recipe.prediction_type() == "v_prediction";
  const at::Tensor alphas = scheduler->alphas_cumprod().to(at::kFloat);
  const int64_t T = alphas.size(0);
  const bool image_cond = pipelines::takes_first_frame_condition(ucfg.in_channels, C);
  auto check_high_noise = [&](double share, int64_t from, const std::string& where) {
    if (share > 0 && from >= T)
      throw ConfigError(fmt::format("{} [{}]: high_noise_from {} must be below the scheduler's {} training timesteps",
                                    recipe.source, where, from, T));
  };
  check_high_noise(recipe.unet.high_noise_share, recipe.unet.high_noise_from, "unet");
  for (size_t i = 0; i < recipe.unet.curriculum.size(); ++i)
    check_high_noise(recipe.unet.curriculum[i].high_noise_share, recipe.unet.curriculum[i].high_noise_from,
                     fmt::format("unet.curriculum[{}]", i));
  at::Generator gen = make_generator(recipe.seed + 202);

  StageSpec spec;
  spec.stage = lora_run ? "lora" : "unet";
  spec.training = recipe.unet.train;
  spec.total = options.steps_unet >= 0 ? options.steps_unet : recipe.unet.train.steps;
  spec.budget_s = options.time_budget_unet;
  spec.metric_names = {"frames", "batch"};
  if (word_loss) spec.metric_names.push_back("word_loss");
  spec.lr_at = [&recipe, total = spec.total](int64_t step) { return recipe.unet_lr_at(step, total); };
  spec.adapt_checkpoint = [&, in = ucfg.in_channels](Checkpoint& ck) {
    if (options.grow_unet_input) {
      if (const int64_t added = grow_input_channels(ck, "unet.conv_in.weight", in))
        log::info("unet: conv_in grown by {} zero-weighted input channel{} to {}", added, added == 1 ? "" : "s", in);
    }
    // A run that turns text_word_loss on part-way starts its probe fresh.
    if (word_loss && !ck.model.count("text_probe.weight")) {
      for (const auto& [name, value] : {std::pair<std::string, at::Tensor>{"text_probe.weight", probe_weight},
                                        std::pair<std::string, at::Tensor>{"text_probe.bias", probe_bias}}) {
        ck.model[name] = value.detach().clone();
        ck.ema[name] = value.detach().clone();
        ck.optimizer["exp_avg." + name] = at::zeros_like(value);
        ck.optimizer["exp_avg_sq." + name] = at::zeros_like(value);
      }
      log::info("unet: text_word_loss {}: the word probe starts fresh at this checkpoint", recipe.unet.text_word_loss);
    }
  };
  spec.device = device.str();
  spec.precision = precision_name(precision);
  log::info("unet: {} + {} (text) parameters, {} latents {}x{}x{}, {} prediction, {} steps, {} on {}",
            io::parameter_count(*unet), io::parameter_count(*text_encoder), C, recipe.frames, h, h,
            v_pred ? "v" : "noise", spec.total, spec.precision, spec.device);

  // Latents of a batch of clips, their subject masks pooled to the latent grid, and captions.
  struct LatentBatch {
    at::Tensor latents;  // [B, C, F, h, w] float
    at::Tensor mask;     // [B, 1, F, h, w] float in [0, 1]
    std::vector<std::string> captions;
  };
  auto encode_clips = [&](const ClipBatch& b) {
    at::NoGradGuard no_grad;
    AutocastScope autocast(device, precision);
    const int64_t B = b.video.size(0), F = b.video.size(2);
    at::Tensor frames = b.video.permute({0, 2, 1, 3, 4}).reshape({B * F, 3, recipe.size, recipe.size});
    at::Tensor mean = vae->encode(frames).mean.to(at::kFloat);
    if (vcfg.shift_factor) mean = mean - *vcfg.shift_factor;
    LatentBatch out;
    out.latents = (mean * vcfg.scaling_factor).reshape({B, F, C, h, h}).permute({0, 2, 1, 3, 4}).contiguous();
    const int64_t f = recipe.size / h;
    out.mask = at::avg_pool3d(b.mask.to(at::kFloat), {1, f, f}, {1, f, f});
    out.captions = b.captions;
    return out;
  };
  // The clips of a step come from the world of its curriculum phase (the data's, or the phase's
  // own "world"). With latent_pool > 0 they are drawn from `latent_pool` clips of that world encoded
  // once and cached next to the checkpoints (the data's world in unet-latent-pool.safetensors, a
  // phase's own world in unet-latent-pool-<hash of its settings>.safetensors), so a resumed run does
  // not encode them again; a cache is used only when it was made by this VAE (weight fingerprint)
  // from the same data settings (the recipe's "data" section with the phase's world).
  at::Tensor vae_fingerprint;
  {
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> sums;
    for (const auto& p : vae->parameters()) sums.push_back(p.detach().to(at::kDouble).abs().sum().view({1}));
    vae_fingerprint = at::cat(sums).cpu();
  }
  auto as_bytes = [](const std::string& text) {
    at::Tensor bytes = at::empty({static_cast<int64_t>(text.size())}, at::kByte);
    std::memcpy(bytes.data_ptr<uint8_t>(), text.data(), text.size());
    return bytes;
  };
  auto as_text = [](const at::Tensor& bytes) {
    const at::Tensor b = bytes.contiguous();
    return std::string(reinterpret_cast<const char*>(b.data_ptr<uint8_t>()), static_cast<size_t>(b.numel()));
  };
  auto load_or_encode_pool = [&](ClipDataset& clips, const std::string& settings, const fs::path& pool_path) {
    LatentBatch pool;
    if (fs::exists(pool_path)) {
      io::TensorMap cached = io::load_safetensors(pool_path.string());
      const bool usable = cached.count("latents") && cached.count("mask") && cached.count("captions") &&
                          cached.count("vae_fingerprint") && cached.count("data_settings") &&
                          as_text(cached["data_settings"]) == settings &&
                          cached["vae_fingerprint"].sizes() == vae_fingerprint.sizes() &&
                          at::allclose(cached["vae_fingerprint"], vae_fingerprint, 1e-6, 1e-9) &&
                          cached["latents"].sizes() == at::IntArrayRef({recipe.unet.latent_pool, C, recipe.frames, h, h});
      if (usable) {
        pool.latents = cached["latents"].to(device);
        pool.mask = cached["mask"].to(device);
        const std::string text = as_text(cached["captions"]);
        for (size_t a = 0, b; a <= text.size(); a = b + 1) {
          b = text.find('\n', a);
          if (b == std::string::npos) b = text.size();
          pool.captions.push_back(text.substr(a, b - a));
        }
        log::info("unet: latent pool of {} clips loaded from {}", pool.captions.size(), pool_path.string());
        return pool;
      }
      log::info("unet: {} was made with another VAE or other data settings; encoding the pool again",
                pool_path.string());
    }
    // Encoded once, from its own seeded generator, so a resumed run trains on the same pool.
    const int64_t P = recipe.unet.latent_pool, chunk = 8;
    at::Generator pool_gen = make_generator(recipe.seed + 303);
    std::vector<at::Tensor> lat, msk;
    pipelines::ProgressMeter meter("encode-pool", (P + chunk - 1) / chunk, options.progress);
    for (int64_t i = 0; i < P; i += chunk) {
      LatentBatch part = encode_clips(clips.sample_clips(pool_gen, std::min(chunk, P - i), recipe.frames, recipe.size,
                                                         device));
      lat.push_back(part.latents);
      msk.push_back(part.mask);
      pool.captions.insert(pool.captions.end(), part.captions.begin(), part.captions.end());
      meter.update(i / chunk + 1, fmt::format("{} clips", pool.captions.size()));
    }
    pool.latents = at::cat(lat, 0);
    pool.mask = at::cat(msk, 0);
    log::info("unet: latent pool of {} clips x {} frames encoded ({:.0f} MB)", P, recipe.frames,
              pool.latents.numel() * 4 / 1e6);
    std::string text;
    for (const auto& c : pool.captions) text += (text.empty() ? "" : "\n") + c;
    fs::create_directories(pool_path.parent_path());
    io::save_safetensors(pool_path.string(), {{"latents", pool.latents},
                                              {"mask", pool.mask},
                                              {"captions", as_bytes(text)},
                                              {"vae_fingerprint", vae_fingerprint},
                                              {"data_settings", as_bytes(settings)}});
    return pool;
  };
  LatentBatch pool;
  std::unique_ptr<ClipDataset> phase_data;  // the clips of a phase with its own world
  ClipDataset* clips = &data;
  int64_t clips_phase_start = -1;            // start_step of the phase `clips` and `pool` belong to
  std::string clips_settings;
  auto use_phase_clips = [&](const CurriculumPhase& phase) {
    if (phase.start_step == clips_phase_start) return;
    clips_phase_start = phase.start_step;
    nlohmann::json data_json = recipe.to_json()["data"];
    if (phase.world) data_json["world"] = world_json(*phase.world);
    const std::string settings = data_json.dump();
    if (settings == clips_settings) return;
    clips_settings = settings;
    if (phase.world) {
      phase_data = std::make_unique<ShapesClipDataset>(*phase.world);
      clips = phase_data.get();
      log::info("unet: from step {} the clips come from the phase's world ({})", phase.start_step,
                world_json(*phase.world).dump());
    } else {
      phase_data.reset();
      clips = &data;
    }
    pool = LatentBatch{};
    if (recipe.unet.latent_pool <= 0) return;
    const fs::path dir = fs::path(options.out_dir) / "checkpoints";
    pool = load_or_encode_pool(*clips, settings,
                               phase.world ? dir / fmt::format("unet-latent-pool-{:016x}.safetensors",
                                                               std::hash<std::string>{}(settings))
                                           : dir / "unet-latent-pool.safetensors");
  };
  auto sample_latents = [&](int64_t B, int64_t F) {
    if (!pool.latents.defined()) return encode_clips(clips->sample_clips(gen, B, F, recipe.size, device));
    at::Tensor idx = at::randint(pool.latents.size(0), {B}, gen, at::TensorOptions().dtype(at::kLong));
    const int64_t span = pool.latents.size(2) - F;
    const int64_t start = span > 0 ? at::randint(span + 1, {1}, gen, at::TensorOptions().dtype(at::kLong)).item<int64_t>()
                                   : 0;
    LatentBatch out;
    out.latents = pool.latents.index_select(0, idx.to(device)).narrow(2, start, F).contiguous();
    out.mask = pool.mask.index_select(0, idx.to(device)).narrow(2, start, F).contiguous();
    for (int64_t i = 0; i < B; ++i) out.captions.push_back(pool.captions[idx[i].item<int64_t>()]);
    return out;
  };

  auto step_fn = [&](int64_t step) {
    const CurriculumPhase phase = recipe.phase_at(step);
    const int64_t F = phase.frames;
    const int64_t B = scaled_batch(phase.batch, options.batch_scale);
    use_phase_clips(phase);
    LatentBatch b = sample_latents(B, F);
    const at::Tensor& latents = b.latents;  // [B, C, F, h, w]
    // Caption dropout (guidance) and first-frame conditioning dropout.
    at::Tensor u = at::rand({B, 2}, gen, at::TensorOptions().dtype(at::kDouble));
    std::vector<std::string> captions = b.captions;
    std::vector<float> keep_image(B, 0.0f);
    for (int64_t i = 0; i < B; ++i) {
      if (u[i][0].item<double>() < recipe.unet.caption_dropout) captions[i] = "";
      if (image_cond && u[i][1].item<double>() < phase.image_condition_prob) keep_image[i] = 1.0f;
    }
    at::Tensor ids = tokenizer.batch(captions).to(device);
    at::Tensor noise = at::randn({B, C, F, h, h}, gen);
    if (recipe.unet.frame_noise_correlation > 0) {
      const double c = recipe.unet.frame_noise_correlation;
      noise = std::sqrt(1.0 - c) * noise + std::sqrt(c) * at::randn({B, C, 1, h, h}, gen);
    }
    noise = noise.to(device);
    at::Tensor t = sample_timesteps(phase.high_noise_share, phase.high_noise_from, T, B, gen);
    at::Tensor t_dev = t.to(device);
    at::Tensor noisy = scheduler->add_noise(latents, noise, t_dev);
    at::Tensor target = v_pred ? scheduler->get_velocity(latents, noise, t_dev) : noise;
    at::Tensor model_in = noisy;
    if (image_cond) {
      at::Tensor first = latents.select(2, 0);  // [B, C, h, w]
      at::Tensor cond = pipelines::unet_condition(first, ucfg.in_channels, B, C, F, h, h, latents.options(),
                                                  at::tensor(keep_image));
      model_in = at::cat({noisy, cond}, 1);
    }
    at::Tensor pred, pooled;
    {
      AutocastScope autocast(device, precision);
      // The weights with the adapters, for this forward.
      std::optional<LoraAdapters::Applied> adapted, text_adapted;
      if (lora) adapted.emplace(*lora);
      if (text_lora) text_adapted.emplace(*text_lora);
      text::CLIPTextModelOutput text_out = text_encoder->forward(ids);
      pred = unet->forward(model_in, t_dev, text_out.last_hidden_state);
      pooled = text_out.pooler_output;
    }
    pred = pred.to(at::kFloat);
    at::Tensor err = (pred - target).pow(2);  // [B, C, F, h, w]
    at::Tensor per_sample;
    if (recipe.unet.object_weight != 1.0) {
      at::Tensor w = 1.0 + (recipe.unet.object_weight - 1.0) * b.mask;  // [B, 1, F, h, w]
      per_sample = (w * err).mean({1, 2, 3, 4}) / w.mean({1, 2, 3, 4});
    } else {
      per_sample = err.mean({1, 2, 3, 4});
    }
    if (recipe.unet.min_snr_gamma > 0) {
      at::Tensor a = alphas.index_select(0, t).to(device);
      at::Tensor snr = a / (1.0 - a).clamp_min(1e-8);
      at::Tensor clipped = snr.clamp_max(recipe.unet.min_snr_gamma);
      per_sample = per_sample * (v_pred ? clipped / (snr + 1.0) : clipped / snr.clamp_min(1e-8));
    }
    StepResult r;
    r.loss = per_sample.mean();
    r.metrics = {at::scalar_tensor(static_cast<double>(F)), at::scalar_tensor(static_cast<double>(B))};
    if (word_loss) {
      // The caption's bag of tokens (without bos, eos and padding) from the pooled embedding.
      at::Tensor words = at::zeros({B, tcfg.vocab_size}, at::TensorOptions().device(device));
      words.scatter_(1, ids, 1.0);
      for (int64_t special : {tokenizer.bos_id(), tokenizer.eos_id(), tokenizer.pad_id()}) words.select(1, special).zero_();
      at::Tensor logits = at::addmm(probe_bias, pooled.to(at::kFloat), probe_weight.t());
      at::Tensor wl = at::binary_cross_entropy_with_logits(logits, words, {}, {}, at::Reduction::Sum) / B;
      r.loss = r.loss + recipe.unet.text_word_loss * wl;
      r.metrics.push_back(wl.detach());
    }
    return r;
  };
  auto export_fn = [&]() {
    if (lora) {
      std::vector<const LoraAdapters*> adapters{lora.get()};
      if (text_lora) adapters.push_back(text_lora.get());
      save_lora_weights(adapters, lora_dir(options.out_dir));
      return;
    }
    const c10::ScalarType dt = export_dtype(recipe);
    write_component(mdir, "unet", [&](const std::string& d) { models::save_unet3d(unet, d, dt); });
    write_component(mdir, "text_encoder", [&](const std::string& d) { text::save_clip_text_model(text_encoder, d, dt); });
    write_scheduler_config(mdir, recipe.scheduler);
    write_model_index(mdir);
  };
  auto describe = [&](int64_t step) {
    const CurriculumPhase p = recipe.phase_at(step);
    return fmt::format(" ({} frames x {})", p.frames, scaled_batch(p.batch, options.batch_scale));
  };
  StageReport report = run_stage(spec, options, params, gen, step_fn, export_fn, describe);
  if (lora) report.exported = lora_dir(options.out_dir);
  return report;
}

std::vector<StageReport> run_training(const TrainRecipe& recipe, const std::string& stage, const TrainOptions& options) {
  if (stage != "all" && stage != "tokenizer" && stage != "vae" && stage != "unet" && stage != "lora") {
    throw InputError(fmt::format("--stage '{}' is not known; use all, tokenizer, vae, unet or lora", stage));
  }
  if (recipe.is_lora() && stage != "all" && stage != "lora")
    throw InputError(fmt::format("--stage {}: {} is a LoRA recipe (it has a \"lora\" section), which trains only "
                                 "the adapters; use --stage lora or all",
                                 stage, recipe.source));
  if (!recipe.is_lora() && stage == "lora")
    throw InputError(fmt::format("--stage lora needs a recipe with a \"lora\" section naming the base model; {} has "
                                 "none (see docs/training.md)",
                                 recipe.source));
  if (options.out_dir.empty()) throw InputError("training needs an output folder (--out DIR)");
  std::error_code ec;
  fs::create_directories(options.out_dir, ec);
  if (ec) throw InputError(fmt::format("cannot create the output folder '{}': {}", options.out_dir, ec.message()));
  io::write_file_atomic((fs::path(options.out_dir) / "recipe.json").string(), recipe.to_json().dump(2) + "\n");

  std::unique_ptr<ClipDataset> data = make_dataset(recipe);
  log::info("training '{}' on {} into {}", recipe.name, data->describe(), options.out_dir);
  std::vector<StageReport> reports;
  const bool lora_run = recipe.is_lora();
  if (!lora_run && (stage == "all" || stage == "tokenizer")) reports.push_back(train_tokenizer(recipe, *data, options));
  if (!lora_run && (stage == "all" || stage == "vae")) reports.push_back(train_vae(recipe, *data, options));
  if (lora_run || stage == "all" || stage == "unet") reports.push_back(train_unet(recipe, *data, options));

  // Record what each stage did next to the model (or the LoRA).
  const std::string record_dir = lora_run ? lora_dir(options.out_dir) : model_dir(options.out_dir);
  const std::string record = (fs::path(record_dir) / "training.json").string();
  nlohmann::json j = nlohmann::json::object();
  if (fs::exists(record)) {
    try {
      j = io::JsonConfig::load(record).json();
    } catch (const Error&) {
      j = nlohmann::json::object();
    }
  }
  j["recipe"] = recipe.name;
  // The world of the model's last training clips, so `vdm eval shapes` draws its first frames from it.
  if (recipe.dataset == "shapes") {
    ShapeWorldConfig world = recipe.world;
    for (const auto& r : reports)
      if ((r.stage == "unet" || r.stage == "lora") && r.end_step > 0) world = recipe.world_at(r.end_step - 1);
    j["world"] = world_json(world);
  }
  for (const auto& r : reports) {
    nlohmann::json& s = j["stages"][r.stage];
    s["steps"] = r.end_step;
    s["planned_steps"] = r.total_steps;
    s["seconds_last_run"] = r.seconds;
    s["step_seconds"] = r.step_seconds;
    s["final_loss"] = std::isfinite(r.last_loss) ? nlohmann::json(r.last_loss) : nlohmann::json();
    s["device"] = r.device;
    s["precision"] = r.precision;
    s["stopped_by_time_budget"] = r.budget_stop;
  }
  fs::create_directories(record_dir, ec);
  io::write_file_atomic(record, j.dump(2) + "\n");
  return reports;
}

}  // namespace vdm::train
