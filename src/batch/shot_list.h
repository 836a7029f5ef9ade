// Shot lists: the input of `vdm batch`. A YAML file (or the same structure written as JSON):
//
//   defaults:                 # optional; any shot key except id and output
//     frames: 16
//     negative_prompt: blurry
//   shots:
//     - id: intro             # unique; letters, digits, '.', '_', '-'
//       prompt: a red circle moving right
//       seed: 7               # optional; derived from the id when absent
//     - id: still
//       prompt: the circle drifts up
//       image: stills/circle.png        # animated from this image
//     - id: restyled
//       prompt: watercolor
//       video: clips/take3.mp4          # restyled from this video
//       strength: 0.6
//       output: restyled-take3.webm     # file name in the output folder; default <id>.mp4
//     - id: styled
//       prompt: a red circle moving right
//       lora: loras/large-shapes:0.8     # LoRAs for this shot: FILE[:STRENGTH], comma-separated
//
// Every problem (YAML syntax, unknown or duplicate keys, duplicate ids, wrong types, values out of
// range, missing files) is collected and reported in one ConfigError, each with its line number,
// before anything renders. Paths are relative to the shot list's folder.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "models/freeu_spec.h"
#include "models/lora_spec.h"

namespace vdm::batch {

// Values used when neither the shot nor `defaults:` sets a key.
struct ShotDefaults {
  static constexpr int64_t kFrames = 16;
  static constexpr int64_t kFps = 8;
  static constexpr int64_t kSteps = 25;
  static constexpr double kGuidance = 9.0;
  static constexpr double kStrength = 0.8;
  static constexpr int64_t kContextStride = 4;
};

// Accepted ranges (inclusive); the model may narrow sizes further (checked before rendering).
struct ShotLimits {
  static constexpr int64_t kMaxFrames = 1024;
  static constexpr int64_t kMaxFps = 240;
  static constexpr int64_t kMinSize = 8;      // width/height: multiples of 8
  static constexpr int64_t kMaxSize = 8192;
  static constexpr int64_t kMaxSteps = 1000;
  static constexpr double kMaxGuidance = 100.0;
  static constexpr size_t kMaxIdLength = 128;
};

struct Shot {
  std::string id;
  std::string prompt;
  std::string negative_prompt;
  uint64_t seed = 0;
  bool seed_derived = false;  // true: not given, derived from the id (see derive_seed)
  int64_t frames = ShotDefaults::kFrames;
  int64_t fps = ShotDefaults::kFps;  // frames per second of the output
  int64_t width = 0;   // 0 = the model's native size
  int64_t height = 0;
  int64_t steps = ShotDefaults::kSteps;
  double guidance = ShotDefaults::kGuidance;
  double guidance_rescale = 0.0;  // GenerateOptions::guidance_rescale, 0..1
  std::string sampler;  // "" = the model folder's scheduler
  std::string t2v_mode; // "" | joint | factorized (text-to-video shots; GenerateOptions::t2v_mode)
  std::string image;    // absolute path of the still to animate, or ""
  std::string video;    // absolute path of the video to restyle, or ""
  double strength = ShotDefaults::kStrength;  // meaningful with image or video
  std::string output;   // file name inside the output folder (default "<id>.mp4")
  // LoRAs merged for this shot on top of the batch's --lora ("lora: a.safetensors:0.8, b.safetensors";
  // paths resolved to the safetensors file, relative ones against the list's folder).
  std::vector<models::LoraSpec> loras;
  // The batch's --lora, which the renderer merges at load for every shot (not from the list: vdm
  // batch sets it). Recorded in the manifest with the shot's own, so changing it renders again.
  std::vector<models::LoraSpec> batch_loras;
  // The batch's --prompt-weights (vdm batch sets it); recorded so that turning it on or off renders again.
  bool prompt_weights = false;
  // Frame windows for long clips (GenerateOptions::context, temporal/frame_windows.h): windows of
  // context_frames frames (0 = off) starting every context_stride frames.
  int64_t context_frames = 0;
  int64_t context_stride = ShotDefaults::kContextStride;
  // With `video`: continue it by this many frames (VideoPipeline::extend) instead of restyling it; 0 = restyle.
  int64_t extend = 0;
  // Prompt travel (GenerateOptions::prompt_at and negative_prompt_at): frame -> prompt, frames >= 1.
  std::map<int64_t, std::string> prompt_at, negative_prompt_at;
  // DeepCache (GenerateOptions::deep_cache_interval and deep_cache_branch); 0 = off.
  int64_t deep_cache = 0;
  int64_t deep_cache_branch = 0;
  // FreeU (GenerateOptions::freeu), "freeu: b1=1.2,b2=1.4,s1=0.9,s2=0.2"; unset = off.
  std::optional<models::FreeU> freeu;
  // FreeInit's sampling passes (GenerateOptions::free_init.iterations, the filter at its defaults); 0 or 1 = off.
  int64_t free_init = 0;
  // Where the shot came from, for messages.
  size_t index = 0;     // 0-based position in the list
  int line = 0;         // 1-based line of the shot's entry

  enum class Mode { kGenerate, kAnimate, kRestyle, kExtend };
  Mode mode() const {
    return !image.empty()                  ? Mode::kAnimate
           : !video.empty() && extend > 0  ? Mode::kExtend
           : !video.empty()                ? Mode::kRestyle
                                           : Mode::kGenerate;
  }
};

struct ShotList {
  std::string source;  // the path as given (used in messages)
  std::string dir;     // absolute folder that relative paths are resolved against
  std::vector<Shot> shots;
};

// Reads and checks a shot list file (.yaml, .yml or .json). Throws InputError when unreadable,
// ConfigError listing every problem otherwise.
ShotList load_shot_list(const std::string& path);

// Same, from text; `source` names it in messages and `base_dir` resolves relative paths.
ShotList parse_shot_list(const std::string& text, const std::string& source,
                         const std::string& base_dir);

// The seed of a shot without one: the first 4 bytes of SHA-256("vdm-shot-seed:" + id), so it is
// the same on every machine and every rerun, and small enough to type back into a shot list.
uint64_t derive_seed(const std::string& id);

// The shot keys (for messages and documentation).
const std::vector<std::string>& shot_keys();

// The closest of `candidates` to `word` by edit distance when close enough to be a likely typo,
// else "".
std::string closest_match(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace vdm::batch
