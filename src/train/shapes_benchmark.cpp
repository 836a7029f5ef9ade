#include "train/shapes_benchmark.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <map>
#include <cmath>
#include <filesystem>

#include <fmt/format.h>

#include "core/error.h"
#include "core/log.h"
#include "core/runtime.h"
#include "io/atomic_file.h"
#include "models/autoencoder_kl.h"
#include "io/json_config.h"
#include "pipelines/video_pipeline.h"
#include "train/recipe.h"
#include "train/shapes_dataset.h"
#ifdef VDM_WITH_FFMPEG
#include "codecs/image_codec.h"
#endif

namespace vdm::train {

namespace fs = std::filesystem;

namespace {

nlohmann::json rates_json(const ShapeRates& r) {
  return {{"n", r.n},           {"colour", r.colour},       {"direction", r.direction}, {"shape", r.shape},
          {"persistence", r.persistence}, {"background", r.background}, {"all", r.all}, {"size", r.size},
          {"direction_misses",
           {{"reversed", r.reversed}, {"axis", r.wrong_axis}, {"unsteady", r.unsteady}, {"unmeasured", r.unmeasured}}}};
}

bool write_sheet(const std::string& path, const at::Tensor& sheet) {
#ifdef VDM_WITH_FFMPEG
  codecs::write_png_file(path, sheet.data_ptr<uint8_t>(), static_cast<int>(sheet.size(1)),
                         static_cast<int>(sheet.size(0)));
  return true;
#else
  (void)path, (void)sheet;
  return false;
#endif
}

struct Sheet {
  std::string name;
  std::vector<at::Tensor> clips;
  std::vector<bool> ok;
};

}  // namespace

at::Tensor contact_sheet(const std::vector<at::Tensor>& clips, const std::vector<bool>& ok, int64_t columns) {
  if (clips.empty()) return at::zeros({1, 1, 3}, at::TensorOptions().dtype(at::kByte));
  const int64_t H = clips[0].size(1), W = clips[0].size(2);
  const int64_t gap = 2, bar = 6, lead = bar + gap;
  const int64_t rows = static_cast<int64_t>(clips.size());
  at::Tensor sheet = at::full({rows * (H + gap), lead + columns * (W + gap), 3}, 255, at::TensorOptions().dtype(at::kByte));
  for (int64_t r = 0; r < rows; ++r) {
    const at::Tensor& c = clips[r];
    const int64_t F = c.size(0);
    const int64_t y = r * (H + gap);
    at::Tensor colour = ok[r] ? at::tensor({40, 170, 60}, at::kByte) : at::tensor({210, 40, 40}, at::kByte);
    sheet.slice(0, y, y + H).slice(1, 0, bar).copy_(colour.view({1, 1, 3}).expand({H, bar, 3}));
    for (int64_t k = 0; k < columns; ++k) {
      const int64_t f = columns > 1 ? std::llround(double(k) * double(F - 1) / double(columns - 1)) : 0;
      const int64_t x = lead + k * (W + gap);
      sheet.slice(0, y, y + H).slice(1, x, x + W).copy_(c[std::min(f, F - 1)]);
    }
  }
  return sheet;
}

namespace {

// Contact sheets (when the codecs are built) and results.json into options.out_dir.
void write_outputs(const ShapesBenchmarkOptions& o, ShapesBenchmarkReport& report, const std::vector<Sheet>& sheets) {
  if (o.out_dir.empty()) return;
  std::error_code ec;
  fs::create_directories(o.out_dir, ec);
  if (ec) throw InputError(fmt::format("cannot create '{}': {}", o.out_dir, ec.message()));
  for (const Sheet& sheet : sheets) {
    if (sheet.clips.empty()) continue;
    const std::string path = (fs::path(o.out_dir) / sheet.name).string();
    if (!write_sheet(path, contact_sheet(sheet.clips, sheet.ok, o.sheet_columns))) {
      log::warn("contact sheets need the codecs (FFmpeg), which this build lacks; only results.json is written");
      break;
    }
    report.files.push_back(path);
  }
  const std::string json_path = (fs::path(o.out_dir) / "results.json").string();
  report.files.push_back(json_path);
  io::write_file_atomic(json_path, report.to_json(o).dump(2) + "\n");
}

// ShapesBenchmarkOptions::emphasis split into the attribute and its weight; InputError when malformed.
std::pair<std::string, double> parse_emphasis(const std::string& emphasis) {
  const size_t colon = emphasis.find(':');
  const std::string attribute = emphasis.substr(0, colon);
  char* end = nullptr;
  const double weight = colon == std::string::npos ? 0.0 : std::strtod(emphasis.c_str() + colon + 1, &end);
  if (colon == std::string::npos || end != emphasis.c_str() + emphasis.size() || !(weight >= 0) ||
      (attribute != "shape" && attribute != "colour" && attribute != "direction"))
    throw InputError(fmt::format("--emphasis '{}': expected shape, colour or direction, a colon and a weight, e.g. "
                                 "shape:1.3",
                                 emphasis));
  return {attribute, weight};
}

// The caption of `a`, its `emphasis` attribute's word weighted in the bracket syntax.
std::string emphasized_caption(const ShapeAttributes& a, const std::string& emphasis) {
  std::string text = caption(a);
  if (emphasis.empty()) return text;
  const auto [attribute, weight] = parse_emphasis(emphasis);
  const std::string word = attribute == "shape"    ? to_string(a.shape)
                           : attribute == "colour" ? to_string(a.colour)
                                                   : to_string(a.direction);
  const size_t at = text.find(" " + word + " ");
  if (at == std::string::npos) return text;
  return text.substr(0, at + 1) + fmt::format("({}:{})", word, weight) + text.substr(at + 1 + word.size());
}

std::unique_ptr<pipelines::VideoPipeline> load_pipeline(const ShapesBenchmarkOptions& o) {
  if (!o.emphasis.empty()) parse_emphasis(o.emphasis);  // before the model loads
  pipelines::PipelineConfig pc;
  pc.prompt_weights = !o.emphasis.empty();
  pc.model_dir = o.model_dir;
  pc.device = o.device;
  pc.dtype = o.dtype;
  pc.loras = o.loras;
  auto pipe = pipelines::VideoPipeline::load(pc);
  log::info("eval shapes: {}", pipe->describe());
  return pipe;
}

// Generation settings of clip `index` of a mode (the seeds of the modes do not overlap).
pipelines::GenerateOptions clip_options(const ShapesBenchmarkOptions& o, const std::string& prompt, int mode,
                                        int64_t index) {
  pipelines::GenerateOptions g;
  g.prompt = prompt;
  g.frames = o.frames;
  g.steps = o.steps;
  if (o.guidance > 0) g.guidance = o.guidance;
  g.guidance_rescale = o.guidance_rescale;
  g.sampler = o.sampler;
  g.t2v_mode = o.t2v_mode;
  g.context = o.context;
  g.deep_cache_interval = o.deep_cache_interval;
  g.deep_cache_branch = o.deep_cache_branch;
  g.freeu = o.freeu;
  g.free_init = o.free_init;
  g.seed = o.seed * 1000003ULL + static_cast<uint64_t>(mode * 100000 + index);
  return g;
}

// The first frame of `spec`'s clip at the size `pipe` renders `g` at: uint8 [S, S, 3].
// What every mode shares: --n checked, the clock, the world (checked before anything loads), the
// report, the generator of clip specs and the contact sheets; finish() times the run and writes them.
class ModeRun {
 public:
  ModeRun(const ShapesBenchmarkOptions& o, std::initializer_list<const char*> sheet_names)
      : o_(o), t0_(std::chrono::steady_clock::now()), gen_(make_generator(o.seed)) {
    if (o.n < 1) throw InputError(fmt::format("--n {}: need at least one clip", o.n));
    world_ = benchmark_world(o);
    report.world = world_;
    for (const char* name : sheet_names) sheets_.push_back({name, {}, {}});
  }
  ShapeClipSpec next_spec() { return sample_spec(gen_, world_); }
  // frames: [F, S, W, 3] uint8, one tile row of sheet `sheet`; ok picks its frame colour.
  void add(ShapesBenchmarkClip clip, const at::Tensor& frames, bool ok, size_t sheet = 0) {
    report.clips.push_back(std::move(clip));
    sheets_.at(sheet).clips.push_back(frames);
    sheets_.at(sheet).ok.push_back(ok);
  }
  ShapesBenchmarkReport finish() {
    report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    write_outputs(o_, report, sheets_);
    return std::move(report);
  }
  ShapesBenchmarkReport report;

 private:
  const ShapesBenchmarkOptions& o_;
  std::chrono::steady_clock::time_point t0_;
  at::Generator gen_;
  ShapeWorldConfig world_;
  std::vector<Sheet> sheets_;
};

at::Tensor first_frame(pipelines::VideoPipeline& pipe, const pipelines::GenerateOptions& g, const ShapeClipSpec& spec) {
  pipelines::GenerateOptions probe = g;
  pipe.validate(probe);
  return render_clip(spec, 1, probe.width)[0];
}

}  // namespace

ShapeWorldConfig benchmark_world(const ShapesBenchmarkOptions& o) {
  ShapeWorldConfig world;
  const fs::path record = fs::path(o.model_dir) / "training.json";
  if (fs::exists(record)) {
    const io::JsonConfig j = io::JsonConfig::load(record.string());
    world = parse_world(j.json(), record.string(), "");
  }
  if (!o.start.empty()) {
    const auto start = parse_start_position(o.start);
    if (!start) throw InputError(fmt::format("--start '{}' is not known; use feasible or neutral", o.start));
    world.start = *start;
  }
  return world;
}

Direction perpendicular_direction(Direction d, bool first) {
  if (d == Direction::kLeft || d == Direction::kRight) return first ? Direction::kUp : Direction::kDown;
  return first ? Direction::kLeft : Direction::kRight;
}

ShapesBenchmarkReport run_shapes_benchmark(const ShapesBenchmarkOptions& o) {
  ModeRun run(o, {"contact_t2v.png", "contact_i2v.png"});
  auto pipe = load_pipeline(o);
  if (o.image_to_video && !pipe->has_first_frame_conditioning()) {
    log::warn("{}: the UNet takes no first-frame condition; image-to-video falls back to animating from a noised "
              "image",
              o.model_dir);
  }
  for (int mode = 0; mode < 2; ++mode) {
    const bool i2v = mode == 1;
    if ((i2v && !o.image_to_video) || (!i2v && !o.text_to_video)) continue;
    std::vector<ShapeClipScore> scores;
    for (int64_t i = 0; i < o.n; ++i) {
      ShapeClipSpec spec = run.next_spec();
      pipelines::GenerateOptions g = clip_options(o, emphasized_caption(spec.attributes, o.emphasis), mode, i);
      at::Tensor frames;
      if (i2v) {
        frames = pipe->animate(first_frame(*pipe, g, spec), g);
      } else {
        frames = pipe->generate(g);
      }
      ShapesBenchmarkClip clip;
      clip.mode = i2v ? "i2v" : "t2v";
      clip.caption = g.prompt;
      clip.seed = g.seed;
      clip.score = score_clip(frames, spec.attributes);
      if (i2v) {
        FrameMeasure m = measure_frame(frames[0]);
        const double side = static_cast<double>(frames.size(2));
        const double dx = m.cx / side - spec.x0, dy = m.cy / static_cast<double>(frames.size(1)) - spec.y0;
        clip.first_frame_kept = m.found && std::sqrt(dx * dx + dy * dy) <= spec.radius;
      }
      log::info("{} {:>3}/{}  {}  {}{}", clip.mode, i + 1, o.n, clip.caption, clip.score.all_ok() ? "ok" : "FAIL: ",
                clip.score.failure);
      scores.push_back(clip.score);
      const bool ok = clip.score.all_ok();
      run.add(std::move(clip), frames, ok, static_cast<size_t>(mode));
    }
    (i2v ? run.report.i2v : run.report.t2v) = summarize(scores);
  }
  return run.finish();
}

ShapesBenchmarkReport run_shapes_words(const ShapesBenchmarkOptions& o) {
  ModeRun run(o, {"contact_words.png"});
  auto pipe = load_pipeline(o);
  if (!pipe->has_first_frame_conditioning())
    throw InputError(fmt::format("{}: the words mode animates a first frame, but this UNet takes no first-frame "
                                 "condition (in_channels is neither 2 x latent + 1 nor 2 x latent + 2); use a model "
                                 "trained with first-frame conditioning (vdm train), or --mode t2v for this one",
                                 o.model_dir));
  std::vector<ShapeClipScore> scores;
  int64_t follow_rendered = 0;
  for (int64_t i = 0; i < o.n; ++i) {
    const ShapeClipSpec spec = run.next_spec();
    ShapeAttributes asked = spec.attributes;
    asked.direction = perpendicular_direction(spec.attributes.direction, i % 2 == 0);
    pipelines::GenerateOptions g = clip_options(o, caption(asked), 2, i);
    at::Tensor frames = pipe->animate(first_frame(*pipe, g, spec), g);
    ShapesBenchmarkClip clip;
    clip.mode = "words";
    clip.caption = g.prompt;
    clip.seed = g.seed;
    clip.score = score_clip(frames, asked);
    clip.rendered_direction = to_string(spec.attributes.direction);
    clip.follows_rendered = score_clip(frames, spec.attributes).direction_ok;
    follow_rendered += clip.follows_rendered ? 1 : 0;
    log::info("words {:>3}/{}  {} (rendered moving {})  motion {}", i + 1, o.n, clip.caption, clip.rendered_direction,
              clip.score.direction.empty() ? "not measured" : clip.score.direction);
    scores.push_back(clip.score);
    const bool ok = clip.score.direction_ok;
    run.add(std::move(clip), frames, ok);
  }
  run.report.words = summarize(scores);
  run.report.words_follow_rendered = static_cast<double>(follow_rendered) / static_cast<double>(o.n);
  return run.finish();
}

std::optional<Colour> majority_colour(const at::Tensor& frames) {
  std::array<int, kNumColours> votes{};
  for (int64_t f = 0; f < frames.size(0); ++f) {
    const FrameMeasure m = measure_frame(frames[f]);
    if (m.found) ++votes[static_cast<size_t>(nearest_colour(m.colour))];
  }
  const auto best = std::max_element(votes.begin(), votes.end());
  if (*best == 0) return std::nullopt;
  return static_cast<Colour>(best - votes.begin());
}

bool continuous_object(const at::Tensor& frames) {
  const int64_t n = frames.size(0), side = frames.size(1), quarter = std::max<int64_t>(1, n / 4);
  std::vector<FrameMeasure> m;
  for (int64_t f = 0; f < n; ++f) {
    m.push_back(measure_frame(frames[f]));
    if (!m.back().found) return false;
    if (f > 0 && std::hypot(m[f].cx - m[f - 1].cx, m[f].cy - m[f - 1].cy) > kTravelMaxStep * static_cast<double>(side))
      return false;
  }
  auto majority_shape = [&](int64_t begin, int64_t end) {
    std::map<Shape, int> votes;
    for (int64_t f = begin; f < end; ++f) ++votes[classify_shape(m[f].skew, m[f].corner)];
    return std::max_element(votes.begin(), votes.end(), [](const auto& a, const auto& b) { return a.second < b.second; })
        ->first;
  };
  return majority_shape(0, quarter) == majority_shape(n - quarter, n);
}

ShapesBenchmarkReport run_shapes_travel(const ShapesBenchmarkOptions& o) {
  if (o.frames < 4)
    throw InputError(fmt::format("--frames {}: the travel mode needs at least 4 frames (a quarter at each end)",
                                 o.frames));
  ModeRun run(o, {"contact_travel.png"});
  auto pipe = load_pipeline(o);
  const int64_t quarter = o.frames / 4;
  auto score = [&](const at::Tensor& frames, Colour first, Colour second, ShapesBenchmarkReport::TravelRates& r) {
    const auto start = majority_colour(frames.slice(0, 0, quarter));
    const auto end = majority_colour(frames.slice(0, o.frames - quarter, o.frames));
    const bool s = start == first, e = end == second;
    r.n += 1;
    r.start += s;
    r.end += e;
    r.switched += s && e;
    r.continuous += continuous_object(frames);
    return std::pair{s && e, fmt::format("{} -> {}", start ? to_string(*start) : "none", end ? to_string(*end) : "none")};
  };
  for (int64_t i = 0; i < o.n; ++i) {
    const ShapeClipSpec spec = run.next_spec();
    ShapeAttributes second = spec.attributes;
    // Another colour, cycling through the others.
    second.colour = static_cast<Colour>((static_cast<int>(spec.attributes.colour) + 1 + i % (kNumColours - 1)) %
                                        kNumColours);
    pipelines::GenerateOptions g = clip_options(o, caption(spec), 3, i);
    const at::Tensor control = pipe->generate(g);
    g.prompt_at[quarter] = g.prompt;
    g.prompt_at[o.frames - quarter] = caption(second);
    const at::Tensor travelled = pipe->generate(g);
    ShapesBenchmarkClip clip;
    clip.mode = "travel";
    clip.caption = g.prompt + " -> " + caption(second);
    clip.seed = g.seed;
    const auto [switched, seen] = score(travelled, spec.attributes.colour, second.colour, run.report.travel);
    score(control, spec.attributes.colour, second.colour, run.report.travel_control);
    log::info("travel {:>3}/{}  {} -> {}: {}{}", i + 1, o.n, to_string(spec.attributes.colour),
              to_string(second.colour), seen, switched ? "" : "  (missed)");
    run.add(std::move(clip), at::cat({travelled, control}, 2), switched);  // travel | control, side by side
  }
  for (auto* r : {&run.report.travel, &run.report.travel_control}) {
    r->start /= static_cast<double>(r->n);
    r->end /= static_cast<double>(r->n);
    r->switched /= static_cast<double>(r->n);
    r->continuous /= static_cast<double>(r->n);
  }
  return run.finish();
}

ShapesBenchmarkReport run_shapes_extend(const ShapesBenchmarkOptions& o) {
  ModeRun run(o, {"contact_extend.png"});
  auto pipe = load_pipeline(o);
  std::vector<ShapeClipScore> scores;
  int64_t seams = 0;
  for (int64_t i = 0; i < o.n; ++i) {
    const ShapeClipSpec spec = run.next_spec();
    pipelines::GenerateOptions g = clip_options(o, caption(spec), 4, i);
    const at::Tensor source = pipe->generate(g);
    g.seed += 1;
    const at::Tensor both = pipe->extend(source, g);  // [2 * frames, S, S, 3]
    const at::Tensor added = both.slice(0, o.frames);
    ShapesBenchmarkClip clip;
    clip.mode = "extend";
    clip.caption = g.prompt;
    clip.seed = g.seed;
    clip.score = score_clip(added, spec.attributes);
    const FrameMeasure before = measure_frame(both[o.frames - 1]), after = measure_frame(both[o.frames]);
    const bool seam = before.found && after.found &&
                      std::hypot(after.cx - before.cx, after.cy - before.cy) <=
                          kTravelMaxStep * static_cast<double>(both.size(1)) &&
                      nearest_colour(before.colour) == nearest_colour(after.colour) &&
                      classify_shape(before.skew, before.corner) == classify_shape(after.skew, after.corner);
    seams += seam;
    log::info("extend {:>3}/{}  {}  seam {}  new frames {}{}", i + 1, o.n, clip.caption, seam ? "ok" : "BROKEN",
              clip.score.all_ok() ? "ok" : "FAIL: ", clip.score.failure);
    scores.push_back(clip.score);
    const bool ok = seam && clip.score.all_ok();
    run.add(std::move(clip), both, ok);
  }
  run.report.extension = summarize(scores);
  run.report.seam_ok = static_cast<double>(seams) / static_cast<double>(o.n);
  return run.finish();
}

ShapesBenchmarkReport run_shapes_ceiling(const ShapesBenchmarkOptions& o) {
  ModeRun run(o, {"contact_vae.png"});  // checks --n and --start before loading anything
  const c10::Device device = parse_device(o.device);
  const c10::ScalarType dtype = parse_dtype(o.dtype);
  models::AutoencoderKL vae = models::load_autoencoder_kl((fs::path(o.model_dir) / "vae").string());
  vae->to(device, dtype);
  vae->eval();
  const int64_t size = vae->config().sample_size > 0 ? vae->config().sample_size : 64;
  log::info("eval shapes ceiling: {} dataset clips of {} frames at {}x{}, VAE of {}", o.n, o.frames, size, size,
            o.model_dir);
  std::vector<ShapeClipScore> data_scores, vae_scores;
  at::NoGradGuard no_grad;
  for (int64_t i = 0; i < o.n; ++i) {
    const ShapeClipSpec spec = run.next_spec();
    at::Tensor frames = render_clip(spec, o.frames, size);  // [F, S, S, 3] uint8
    at::Tensor x = frames.permute({0, 3, 1, 2}).to(at::kFloat).div(127.5).sub(1.0);  // [F, 3, S, S]
    at::Tensor z = vae->encode(x.to(device, dtype)).mean;
    at::Tensor rec = vae->decode(z).to(at::kFloat).cpu();  // [F, 3, S, S] in [-1, 1]
    at::Tensor rec_u8 = rec.add(1.0).mul(127.5).round().clamp(0, 255).to(at::kByte).permute({0, 2, 3, 1}).contiguous();
    ShapesBenchmarkClip clip;
    clip.mode = "vae";
    clip.caption = caption(spec);
    clip.score = score_clip(rec_u8, spec.attributes);
    data_scores.push_back(score_clip(frames, spec.attributes));
    vae_scores.push_back(clip.score);
    log::info("vae {:>3}/{}  {}  data {}  vae {}{}", i + 1, o.n, clip.caption, data_scores.back().all_ok() ? "ok" : "FAIL",
              clip.score.all_ok() ? "ok" : "FAIL: ", clip.score.failure);
    const bool ok = clip.score.all_ok();
    run.add(std::move(clip), at::cat({frames, rec_u8}, 2), ok);  // dataset | round trip, side by side
  }
  run.report.data = summarize(data_scores);
  run.report.vae = summarize(vae_scores);
  return run.finish();
}

nlohmann::json ShapesBenchmarkReport::to_json(const ShapesBenchmarkOptions& o) const {
  nlohmann::json clips_json = nlohmann::json::array();
  for (const auto& c : clips) {
    const ShapeClipScore& s = c.score;
    nlohmann::json j = {{"mode", c.mode},
                        {"caption", c.caption},
                        {"seed", c.seed},
                        {"colour_ok", s.colour_ok},
                        {"direction_ok", s.direction_ok},
                        {"direction_miss", s.direction_miss},
                        {"shape_ok", s.shape_ok},
                        {"persistence_ok", s.persistence_ok},
                        {"background_ok", s.background_ok},
                        {"detected", {{"colour", s.colour}, {"shape", s.shape}, {"direction", s.direction},
                                      {"background", s.background}}},
                        {"travel", {s.travel_x, s.travel_y}},
                        {"start", {s.start_x, s.start_y}},
                        {"r2", s.r2},
                        {"fill", s.fill},
                        {"size", s.size},
                        {"skew", s.skew},
                        {"corner", s.corner},
                        {"frames_ok", s.frames_ok},
                        {"failure", s.failure}};
    if (c.mode == "i2v") j["first_frame_kept"] = c.first_frame_kept;
    if (c.mode == "words") {
      j["rendered_direction"] = c.rendered_direction;
      j["follows_rendered"] = c.follows_rendered;
    }
    clips_json.push_back(j);
  }
  nlohmann::json j = {{"model", o.model_dir},
          {"n", o.n},
          {"seed", o.seed},
          {"steps", o.steps},
          {"guidance", o.guidance},
          {"sampler", o.sampler},
          {"t2v_mode", o.t2v_mode.empty() ? "default" : o.t2v_mode},
          {"world", world ? world_json(*world) : nlohmann::json()},
          {"frames", o.frames},
          {"device", o.device},
          {"dtype", o.dtype},
          {"seconds", seconds},
          {"t2v", rates_json(t2v)},
          {"i2v", rates_json(i2v)},
          {"data", rates_json(data)},
          {"vae", rates_json(vae)},
          {"words", rates_json(words)},
          {"words_follow_rendered", words_follow_rendered},
          {"clips", clips_json}};
  if (extension.n > 0) {
    j["extend"] = rates_json(extension);
    j["seam_ok"] = seam_ok;
  }
  if (travel.n > 0) {
    auto rates = [](const TravelRates& r) {
      return nlohmann::json{
          {"n", r.n}, {"start", r.start}, {"end", r.end}, {"switched", r.switched}, {"continuous", r.continuous}};
    };
    j["travel"] = rates(travel);
    j["travel_control"] = rates(travel_control);
  }
  if (!o.emphasis.empty()) j["emphasis"] = o.emphasis;
  if (o.deep_cache_interval > 1)
    j["deep_cache"] = {{"interval", o.deep_cache_interval}, {"branch", o.deep_cache_branch}};
  if (o.free_init.active()) j["free_init"] = temporal::describe_free_init(o.free_init);
  if (o.freeu) j["freeu"] = {{"b1", o.freeu->b1}, {"b2", o.freeu->b2}, {"s1", o.freeu->s1}, {"s2", o.freeu->s2}};
  return j;
}

std::string ShapesBenchmarkReport::to_table() const {
  std::string out;
  if (t2v.n + i2v.n + data.n + vae.n + words.n + extension.n > 0)
    out = fmt::format("{:<6}{:>5}{:>9}{:>11}{:>8}{:>13}{:>7}{:>7}\n", "mode", "n", "colour", "direction", "shape",
                      "persistence", "all", "size");
  auto row = [&](const char* name, const ShapeRates& r) {
    if (r.n == 0) return;
    out += fmt::format("{:<6}{:>5}{:>8.0f}%{:>10.0f}%{:>7.0f}%{:>12.0f}%{:>6.0f}%{:>7.3f}\n", name, r.n, 100 * r.colour,
                       100 * r.direction, 100 * r.shape, 100 * r.persistence, 100 * r.all, r.size);
  };
  row("t2v", t2v);
  row("i2v", i2v);
  row("data", data);
  row("vae", vae);
  row("words", words);
  row("extend", extension);
  auto misses = [&](const char* name, const ShapeRates& r) {
    if (r.reversed + r.wrong_axis + r.unsteady + r.unmeasured == 0) return;
    out += fmt::format("{} direction misses: {} reversed, {} on the other axis, {} too short or unsteady, {} not "
                       "measured\n",
                       name, r.reversed, r.wrong_axis, r.unsteady, r.unmeasured);
  };
  misses("t2v", t2v);
  misses("i2v", i2v);
  if (i2v.n + data.n + words.n > 0 && world)
    out += fmt::format("dataset clips and first frames: {} start positions\n", to_string(world->start));
  if (extension.n > 0)
    out += fmt::format("extend: the seam keeps the object (found on both sides, moving at most {:.0f}% of the side, "
                       "same colour and shape) in {:.0f}%\n",
                       100 * kTravelMaxStep, 100 * seam_ok);
  if (travel.n > 0)
    for (const auto& [name, r] : {std::pair{"travel", travel}, std::pair{"without travel", travel_control}})
      out += fmt::format("{}: {} clips, first quarter in the first colour {:.0f}%, last quarter in the second "
                         "{:.0f}%, both {:.0f}%; one continuous object {:.0f}%\n",
                         name, r.n, 100 * r.start, 100 * r.end, 100 * r.switched, 100 * r.continuous);
  if (words.n > 0)
    out += fmt::format("words: motion follows the prompt's direction in {:.0f}%, the rendered one in {:.0f}%\n",
                       100 * words.direction, 100 * words_follow_rendered);
  return out;
}

}  // namespace vdm::train
