#include "train/recipe.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include "core/error.h"
#include "io/json_config.h"
#include "models/autoencoder_kl.h"
#include "models/unet_3d_condition.h"
#include "pipelines/conditioning.h"
#include "pipelines/model_folder.h"
#include "text/clip_text_model.h"
#include "train/optim.h"

namespace vdm::train {

namespace {

// A JSON object of the recipe: typed reads through JsonConfig, and a check that every key is known.
class Section {
 public:
  Section(const nlohmann::json& parent, const std::string& key, const std::string& source, const std::string& path)
      : path_(path.empty() ? key : path + "." + key) {
    static const nlohmann::json kEmpty = nlohmann::json::object();
    const nlohmann::json* j = &kEmpty;
    if (parent.contains(key) && !parent.at(key).is_null()) {
      j = &parent.at(key);
      if (!j->is_object()) throw ConfigError(fmt::format("{}: '{}' must be an object", source, path_));
    }
    cfg_ = io::JsonConfig(*j, fmt::format("{} [{}]", source, path_));
  }
  Section(const nlohmann::json& root, const std::string& source) : cfg_(root, source) {}

  const io::JsonConfig& cfg() const { return cfg_; }
  const nlohmann::json& json() const { return cfg_.json(); }
  void allow(std::initializer_list<const char*> keys) const {
    std::set<std::string> known(keys.begin(), keys.end());
    for (auto it = cfg_.json().begin(); it != cfg_.json().end(); ++it) {
      if (!known.count(it.key())) {
        throw ConfigError(fmt::format("{}: unknown key '{}'; known keys: {}", cfg_.source(), it.key(),
                                      fmt::join(known, ", ")));
      }
    }
  }

 private:
  std::string path_;
  io::JsonConfig cfg_;
};

StageTraining parse_training(const Section& s, StageTraining d) {
  s.allow({"steps", "batch", "lr", "warmup", "lr_schedule", "weight_decay", "ema_decay", "grad_clip",
           "checkpoint_every", "export_every", "log_every", "precision"});
  const auto& c = s.cfg();
  d.steps = c.get_int("steps", d.steps);
  d.batch = c.get_int("batch", d.batch);
  d.lr = c.get_double("lr", d.lr);
  d.warmup = c.get_int("warmup", d.warmup);
  d.lr_schedule = c.get_string("lr_schedule", d.lr_schedule);
  d.weight_decay = c.get_double("weight_decay", d.weight_decay);
  d.ema_decay = c.get_double("ema_decay", d.ema_decay);
  d.grad_clip = c.get_double("grad_clip", d.grad_clip);
  d.checkpoint_every = c.get_int("checkpoint_every", d.checkpoint_every);
  d.export_every = c.get_int("export_every", d.export_every);
  d.log_every = c.get_int("log_every", d.log_every);
  d.precision = c.get_string("precision", d.precision);
  if (d.steps < 0 || d.batch <= 0 || !(d.lr > 0) || d.warmup < 0 || d.checkpoint_every <= 0 || d.log_every <= 0 ||
      d.export_every < 0 || d.ema_decay < 0 || d.ema_decay >= 1) {
    throw ConfigError(fmt::format("{}: need steps >= 0, batch > 0, lr > 0, warmup >= 0, checkpoint_every > 0, "
                                  "log_every > 0, export_every >= 0 and 0 <= ema_decay < 1",
                                  c.source()));
  }
  if (d.lr_schedule != "constant" && d.lr_schedule != "cosine")
    c.fail("lr_schedule", "\"constant\" or \"cosine\"");
  if (d.precision != "auto" && d.precision != "float32" && d.precision != "bf16")
    c.fail("precision", "\"auto\", \"float32\" or \"bf16\"");
  return d;
}

}  // namespace

ShapeWorldConfig parse_world(const nlohmann::json& parent, const std::string& source, const std::string& parent_name,
                             const ShapeWorldConfig& base) {
  ShapeWorldConfig w = base;
  Section world(parent, "world", source, parent_name);
  world.allow({"min_radius", "max_radius", "min_travel", "max_travel", "margin", "start"});
  w.min_radius = world.cfg().get_double("min_radius", w.min_radius);
  w.max_radius = world.cfg().get_double("max_radius", w.max_radius);
  w.min_travel = world.cfg().get_double("min_travel", w.min_travel);
  w.max_travel = world.cfg().get_double("max_travel", w.max_travel);
  w.margin = world.cfg().get_double("margin", w.margin);
  const auto start = parse_start_position(world.cfg().get_string("start", to_string(w.start)));
  if (!start) world.cfg().fail("start", "\"feasible\" or \"neutral\"");
  w.start = *start;
  return w;
}

nlohmann::json world_json(const ShapeWorldConfig& world) {
  return {{"min_radius", world.min_radius}, {"max_radius", world.max_radius}, {"min_travel", world.min_travel},
          {"max_travel", world.max_travel},  {"margin", world.margin},         {"start", to_string(world.start)}};
}

namespace {

nlohmann::json training_json(const StageTraining& t) {
  return {{"steps", t.steps},          {"batch", t.batch},
          {"lr", t.lr},                {"warmup", t.warmup},
          {"lr_schedule", t.lr_schedule}, {"weight_decay", t.weight_decay},
          {"ema_decay", t.ema_decay},  {"grad_clip", t.grad_clip},
          {"checkpoint_every", t.checkpoint_every}, {"export_every", t.export_every},
          {"log_every", t.log_every},  {"precision", t.precision}};
}

}  // namespace

TrainRecipe TrainRecipe::from_json(const nlohmann::json& json, const std::string& source) {
  if (!json.is_object()) throw ConfigError(fmt::format("{}: a recipe must be a JSON object", source));
  TrainRecipe r;
  r.source = source;
  Section root(json, source);
  root.allow({"name", "seed", "data", "tokenizer", "vae", "unet", "scheduler", "export", "notes", "lora"});
  r.name = root.cfg().get_string("name", r.name);
  r.seed = static_cast<uint64_t>(root.cfg().get_int("seed", static_cast<int64_t>(r.seed)));

  Section data(json, "data", source, "");
  data.allow({"dataset", "size", "frames", "fps", "clips_dir", "captions", "world"});
  r.dataset = data.cfg().get_string("dataset", r.dataset);
  r.size = data.cfg().get_int("size", r.size);
  r.frames = data.cfg().get_int("frames", r.frames);
  r.fps = data.cfg().get_double("fps", r.fps);
  r.clips_dir = data.cfg().get_string("clips_dir", r.clips_dir);
  r.captions = data.cfg().get_string("captions", r.captions);
  if (r.dataset != "shapes" && r.dataset != "folder") data.cfg().fail("dataset", "\"shapes\" or \"folder\"");
  if (r.size < 8 || r.frames < 1 || !(r.fps > 0))
    throw ConfigError(fmt::format("{} [data]: need size >= 8, frames >= 1 and fps > 0", source));
  r.world = parse_world(data.json(), source, "data");

  Section tok(json, "tokenizer", source, "");
  tok.allow({"num_merges"});
  r.tokenizer.num_merges = tok.cfg().get_int("num_merges", r.tokenizer.num_merges);

  // A LoRA recipe takes the model's configs and scheduler from its base folder.
  nlohmann::json from_base = nlohmann::json::object();
  if (json.contains("lora")) {
    Section lora(json, "lora", source, "");
    lora.allow({"base", "rank", "alpha", "target_modules", "text_encoder_target_modules"});
    r.lora.base = lora.cfg().get_string("base", "");
    if (r.lora.base.empty()) lora.cfg().fail("base", "the model folder the LoRA is trained for");
    namespace fs = std::filesystem;
    if (fs::path(r.lora.base).is_relative() && fs::is_regular_file(source))
      r.lora.base = (fs::path(source).parent_path() / r.lora.base).lexically_normal().string();
    r.lora.rank = lora.cfg().get_int("rank", r.lora.rank);
    r.lora.alpha = lora.cfg().get_double("alpha", r.lora.alpha);
    if (r.lora.rank < 1 || !(r.lora.alpha > 0)) lora.cfg().fail("rank", "rank >= 1 and alpha > 0");
    auto module_list = [&](const char* key, const char* example) {
      const auto& t = lora.json().at(key);
      if (!t.is_array() || t.empty() || !std::all_of(t.begin(), t.end(), [](const auto& e) { return e.is_string(); }))
        lora.cfg().fail(key, fmt::format("a non-empty list of module names such as \"{}\"", example));
      return t.get<std::vector<std::string>>();
    };
    if (lora.json().contains("target_modules")) r.lora.target_modules = module_list("target_modules", "to_q");
    if (lora.json().contains("text_encoder_target_modules"))
      r.lora.text_encoder_target_modules = module_list("text_encoder_target_modules", "q_proj");
    pipelines::ModelFolder base = pipelines::ModelFolder::open(r.lora.base);
    from_base["vae"] = io::JsonConfig::load(base.component("vae").config_path).json();
    from_base["unet"] = io::JsonConfig::load(base.component("unet").config_path).json();
    from_base["text_encoder"] = io::JsonConfig::load(base.component("text_encoder").config_path).json();
    from_base["scheduler"] = io::JsonConfig::load(base.component("scheduler").config_path).json();
    const char* own[][2] = {{"vae", "config"}, {"unet", "config"}, {"unet", "text_encoder"}, {"scheduler", nullptr}};
    for (const auto& o : own) {
      const bool given = json.contains(o[0]) && (o[1] == nullptr || json.at(o[0]).contains(o[1]));
      if (given)
        throw ConfigError(fmt::format("{}: '{}{}{}' comes from lora.base ({}) in a LoRA recipe; remove it", source, o[0],
                                      o[1] ? "." : "", o[1] ? o[1] : "", r.lora.base));
    }
  }

  Section vae(json, "vae", source, "");
  vae.allow({"config", "train", "object_weight", "kl_weight"});
  if (r.is_lora()) {
    r.vae.config = from_base["vae"];
  } else {
    if (!vae.json().contains("config")) throw ConfigError(fmt::format("{}: 'vae.config' is required", source));
    r.vae.config = vae.json().at("config");
  }
  StageTraining vae_defaults;
  vae_defaults.batch = 32;
  r.vae.train = parse_training(Section(vae.json(), "train", source, "vae"), vae_defaults);
  r.vae.object_weight = vae.cfg().get_double("object_weight", r.vae.object_weight);
  r.vae.kl_weight = vae.cfg().get_double("kl_weight", r.vae.kl_weight);

  Section unet(json, "unet", source, "");
  unet.allow({"config", "text_encoder", "train", "caption_dropout", "image_condition_prob", "object_weight",
              "min_snr_gamma", "frame_noise_correlation", "high_noise_share", "high_noise_from", "text_word_loss", "curriculum",
              "latent_pool"});
  if (r.is_lora()) {
    r.unet.config = from_base["unet"];
    r.unet.text_encoder = from_base["text_encoder"];
  } else {
    if (!unet.json().contains("config")) throw ConfigError(fmt::format("{}: 'unet.config' is required", source));
    if (!unet.json().contains("text_encoder"))
      throw ConfigError(fmt::format("{}: 'unet.text_encoder' is required", source));
    r.unet.config = unet.json().at("config");
    r.unet.text_encoder = unet.json().at("text_encoder");
  }
  r.unet.train = parse_training(Section(unet.json(), "train", source, "unet"), StageTraining{});
  r.unet.caption_dropout = unet.cfg().get_double("caption_dropout", r.unet.caption_dropout);
  r.unet.image_condition_prob = unet.cfg().get_double("image_condition_prob", r.unet.image_condition_prob);
  r.unet.object_weight = unet.cfg().get_double("object_weight", r.unet.object_weight);
  r.unet.min_snr_gamma = unet.cfg().get_double("min_snr_gamma", r.unet.min_snr_gamma);
  r.unet.frame_noise_correlation = unet.cfg().get_double("frame_noise_correlation", r.unet.frame_noise_correlation);
  r.unet.high_noise_share = unet.cfg().get_double("high_noise_share", r.unet.high_noise_share);
  r.unet.high_noise_from = unet.cfg().get_int("high_noise_from", r.unet.high_noise_from);
  if (r.unet.high_noise_from < 0) unet.cfg().fail("high_noise_from", "a training timestep >= 0");
  r.unet.text_word_loss = unet.cfg().get_double("text_word_loss", r.unet.text_word_loss);
  if (!(r.unet.text_word_loss >= 0)) unet.cfg().fail("text_word_loss", "a loss weight >= 0");
  r.unet.latent_pool = unet.cfg().get_int("latent_pool", r.unet.latent_pool);
  if (r.unet.latent_pool < 0) unet.cfg().fail("latent_pool", "a clip count >= 0");
  auto prob = [&](double v, const char* key) {
    if (v < 0 || v > 1) unet.cfg().fail(key, "a probability in [0, 1]");
  };
  prob(r.unet.caption_dropout, "caption_dropout");
  prob(r.unet.image_condition_prob, "image_condition_prob");
  prob(r.unet.frame_noise_correlation, "frame_noise_correlation");
  prob(r.unet.high_noise_share, "high_noise_share");
  if (unet.json().contains("curriculum")) {
    const auto& list = unet.json().at("curriculum");
    if (!list.is_array())
      unet.cfg().fail("curriculum", "a list of {until_step, frames, batch, image_condition_prob, lr, lr_schedule}");
    int64_t last = -1;
    for (size_t i = 0; i < list.size(); ++i) {
      Section p(nlohmann::json{{"p", list[i]}}, "p", source, fmt::format("unet.curriculum[{}]", i));
      p.allow({"until_step", "frames", "batch", "image_condition_prob", "lr", "lr_schedule", "high_noise_share",
               "high_noise_from", "world"});
      CurriculumPhase ph;
      ph.start_step = std::max<int64_t>(0, last);
      ph.lr_schedule = p.cfg().get_string("lr_schedule", "");
      if (!ph.lr_schedule.empty() && ph.lr_schedule != "constant" && ph.lr_schedule != "cosine")
        p.cfg().fail("lr_schedule", "\"constant\" or \"cosine\"");
      ph.until_step = p.cfg().get_int("until_step");
      ph.frames = p.cfg().get_int("frames", r.frames);
      ph.batch = p.cfg().get_int("batch", r.unet.train.batch);
      ph.image_condition_prob = p.cfg().get_double("image_condition_prob", r.unet.image_condition_prob);
      ph.lr = p.cfg().get_double("lr", 0.0);
      ph.high_noise_share = p.cfg().get_double("high_noise_share", r.unet.high_noise_share);
      ph.high_noise_from = p.cfg().get_int("high_noise_from", r.unet.high_noise_from);
      if (p.json().contains("world")) {
        if (r.dataset != "shapes")
          throw ConfigError(fmt::format("{} [unet.curriculum[{}]]: 'world' applies to the shapes dataset, not to "
                                        "dataset \"{}\"; remove it", source, i, r.dataset));
        ph.world = parse_world(p.json(), source, fmt::format("unet.curriculum[{}]", i), r.world);
      }
      if (ph.until_step <= last || ph.frames < 1 || ph.batch < 1 || ph.image_condition_prob < 0 ||
          ph.image_condition_prob > 1 || ph.lr < 0 || ph.high_noise_share < 0 || ph.high_noise_share > 1 ||
          ph.high_noise_from < 0) {
        throw ConfigError(fmt::format("{} [unet.curriculum[{}]]: until_step must increase, frames and batch be "
                                      "positive, image_condition_prob and high_noise_share lie in [0, 1], "
                                      "high_noise_from be >= 0, lr be positive when given",
                                      source, i));
      }
      last = ph.until_step;
      r.unet.curriculum.push_back(ph);
    }
  }

  if (r.is_lora()) {
    r.scheduler = from_base["scheduler"];
    if (r.unet.text_word_loss > 0)
      throw ConfigError(fmt::format("{}: unet.text_word_loss trains the text encoder, which a LoRA recipe keeps "
                                    "frozen; remove it",
                                    source));
  } else {
    if (!json.contains("scheduler") || !json.at("scheduler").is_object())
      throw ConfigError(fmt::format("{}: 'scheduler' (a scheduler_config.json object) is required", source));
    r.scheduler = json.at("scheduler");
  }
  Section exp(json, "export", source, "");
  exp.allow({"dtype"});
  r.export_dtype = exp.cfg().get_string("dtype", r.export_dtype);
  if (r.export_dtype != "float16" && r.export_dtype != "float32") exp.cfg().fail("dtype", "\"float16\" or \"float32\"");

  // Validate the model configs now, so a bad recipe fails before any training.
  auto vae_cfg = models::AutoencoderKLConfig::from_json(io::JsonConfig(r.vae.config, source + " [vae.config]"));
  auto unet_cfg = models::UNet3DConditionConfig::from_json(io::JsonConfig(r.unet.config, source + " [unet.config]"));
  nlohmann::json text = r.unet.text_encoder;
  if (!text.contains("vocab_size")) text["vocab_size"] = 1000;  // filled from the tokenizer later
  text::CLIPTextConfig::from_json(io::JsonConfig(text, source + " [unet.text_encoder]"));
  const int64_t factor = int64_t(1) << (vae_cfg.block_out_channels.size() - 1);
  const int64_t latent = vae_cfg.latent_channels;
  if (r.size % (factor * unet_cfg.downsample_factor()) != 0) {
    throw ConfigError(fmt::format("{}: data.size {} must be a multiple of the VAE factor {} times the UNet factor {}",
                                  source, r.size, factor, unet_cfg.downsample_factor()));
  }
  const bool image_cond = r.unet.image_condition_prob > 0;
  const bool in_ok = image_cond ? pipelines::takes_first_frame_condition(unet_cfg.in_channels, latent)
                                : unet_cfg.in_channels == latent;
  if (!in_ok || unet_cfg.out_channels != latent) {
    throw ConfigError(fmt::format("{} [unet.config]: with {} latent channels{} the UNet needs in_channels {} and "
                                  "out_channels {}, got {} and {}",
                                  source, latent, image_cond ? " and first-frame conditioning" : "",
                                  image_cond ? pipelines::first_frame_condition_layouts(latent)
                                             : std::to_string(latent),
                                  latent, unet_cfg.in_channels, unet_cfg.out_channels));
  }
  const int64_t text_width = r.unet.text_encoder.value("hidden_size", int64_t(512));
  if (unet_cfg.cross_attention_dim != text_width) {
    throw ConfigError(fmt::format("{}: unet.config.cross_attention_dim {} must equal unet.text_encoder.hidden_size {}",
                                  source, unet_cfg.cross_attention_dim, text_width));
  }
  const std::string pred = r.prediction_type();
  if (pred != "epsilon" && pred != "v_prediction")
    throw ConfigError(fmt::format("{} [scheduler]: prediction_type must be \"epsilon\" or \"v_prediction\", got \"{}\"",
                                  source, pred));
  return r;
}

TrainRecipe TrainRecipe::load(const std::string& path) {
  io::JsonConfig cfg = io::JsonConfig::load(path);
  TrainRecipe r = from_json(cfg.json(), path);
  // Relative data paths are relative to the recipe file.
  const std::filesystem::path base = std::filesystem::path(path).parent_path();
  auto resolve = [&](std::string& p) {
    if (!p.empty() && std::filesystem::path(p).is_relative()) p = (base / p).lexically_normal().string();
  };
  resolve(r.clips_dir);
  resolve(r.captions);
  return r;
}

nlohmann::json TrainRecipe::to_json() const {
  nlohmann::json j;
  j["name"] = name;
  j["seed"] = seed;
  j["data"] = {{"dataset", dataset},
               {"size", size},
               {"frames", frames},
               {"fps", fps},
               {"clips_dir", clips_dir},
               {"captions", captions},
               {"world", world_json(world)}};
  j["tokenizer"] = {{"num_merges", tokenizer.num_merges}};
  j["vae"] = {{"config", vae.config},
              {"train", training_json(vae.train)},
              {"object_weight", vae.object_weight},
              {"kl_weight", vae.kl_weight}};
  nlohmann::json curriculum = nlohmann::json::array();
  for (const auto& p : unet.curriculum) {
    nlohmann::json phase = {{"until_step", p.until_step},
                            {"frames", p.frames},
                            {"batch", p.batch},
                            {"image_condition_prob", p.image_condition_prob}};
    if (p.lr > 0) phase["lr"] = p.lr;
    if (!p.lr_schedule.empty()) phase["lr_schedule"] = p.lr_schedule;
    if (p.high_noise_share != unet.high_noise_share) phase["high_noise_share"] = p.high_noise_share;
    if (p.high_noise_from != unet.high_noise_from) phase["high_noise_from"] = p.high_noise_from;
    if (p.world) phase["world"] = world_json(*p.world);
    curriculum.push_back(phase);
  }
  j["unet"] = {{"config", unet.config},
               {"text_encoder", unet.text_encoder},
               {"train", training_json(unet.train)},
               {"caption_dropout", unet.caption_dropout},
               {"image_condition_prob", unet.image_condition_prob},
               {"object_weight", unet.object_weight},
               {"min_snr_gamma", unet.min_snr_gamma},
               {"frame_noise_correlation", unet.frame_noise_correlation},
               {"high_noise_share", unet.high_noise_share},
               {"high_noise_from", unet.high_noise_from},
               {"text_word_loss", unet.text_word_loss},
               {"latent_pool", unet.latent_pool},
               {"curriculum", curriculum}};
  j["scheduler"] = scheduler;
  j["export"] = {{"dtype", export_dtype}};
  if (is_lora()) {
    // The configs are the base model's: the recipe names the folder, not its contents.
    j["vae"].erase("config");
    j["unet"].erase("config");
    j["unet"].erase("text_encoder");
    j.erase("scheduler");
    j["lora"] = {{"base", lora.base}, {"rank", lora.rank}, {"alpha", lora.alpha}, {"target_modules", lora.target_modules}};
    if (!lora.text_encoder_target_modules.empty()) j["lora"]["text_encoder_target_modules"] = lora.text_encoder_target_modules;
  }
  return j;
}

std::string TrainRecipe::prediction_type() const { return scheduler.value("prediction_type", std::string("epsilon")); }

ShapeWorldConfig TrainRecipe::world_at(int64_t step) const {
  const CurriculumPhase p = phase_at(step);
  return p.world ? *p.world : world;
}

CurriculumPhase TrainRecipe::phase_at(int64_t step) const {
  for (const auto& p : unet.curriculum) {
    if (step < p.until_step) return p;
  }
  CurriculumPhase last;
  last.start_step = unet.curriculum.empty() ? 0 : unet.curriculum.back().until_step;
  last.until_step = -1;
  last.frames = frames;
  last.batch = unet.train.batch;
  last.image_condition_prob = unet.image_condition_prob;
  last.high_noise_share = unet.high_noise_share;
  last.high_noise_from = unet.high_noise_from;
  return last;
}

double TrainRecipe::unet_lr_at(int64_t step, int64_t total) const {
  const StageTraining& tr = unet.train;
  const CurriculumPhase p = phase_at(step);
  if (p.lr_schedule != "cosine") {
    return learning_rate(step, total, p.lr > 0 ? p.lr : tr.lr, tr.warmup,
                         p.lr_schedule.empty() ? tr.lr_schedule : p.lr_schedule);
  }
  // Consecutive cosine phases make one decay, from the first one's start (and rate) to the last
  // one's end.
  int64_t start = p.start_step, end = p.until_step >= 0 ? p.until_step : total;
  double peak = p.lr;
  const auto& phases = unet.curriculum;
  for (size_t i = 0; i < phases.size(); ++i) {
    if (phases[i].until_step != p.until_step) continue;
    for (size_t j = i; j > 0 && phases[j - 1].lr_schedule == "cosine"; --j) {
      start = phases[j - 1].start_step;
      peak = phases[j - 1].lr;
    }
    for (size_t j = i + 1; j < phases.size() && phases[j].lr_schedule == "cosine"; ++j) end = phases[j].until_step;
  }
  return learning_rate(step - start, end - start, peak > 0 ? peak : tr.lr, 0, "cosine");
}

}  // namespace vdm::train
