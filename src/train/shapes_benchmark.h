// The prompt-adherence benchmark of a model trained on the moving-shapes world (`vdm eval shapes`):
// N captions drawn from the grammar rendered text-to-video, and N animations of a still first frame
// rendered by the dataset (prompted with its caption), each scored by shapes_eval on the decoded
// frames. Writes a contact sheet (one row per clip) and a JSON report.
#pragma once
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "models/freeu.h"
#include "models/lora.h"
#include "temporal/frame_windows.h"
#include "temporal/free_init.h"
#include "train/shapes_eval.h"

namespace vdm::train {

struct ShapesBenchmarkOptions {
  std::string model_dir;
  int64_t n = 20;              // clips per mode
  uint64_t seed = 0;           // draws the captions/specs and the generation seeds
  int64_t steps = 25;          // denoising steps
  double guidance = 0;         // 0 = the pipeline default
  double guidance_rescale = 0; // GenerateOptions::guidance_rescale
  int64_t frames = 16;
  std::string sampler;         // "" = the model's scheduler
  std::string t2v_mode;        // "" | joint | factorized (GenerateOptions::t2v_mode)
  // Where the first frames' objects start (ShapeWorldConfig::start): "" = the world the model was
  // trained on (its training.json), "feasible" or "neutral".
  std::string start;
  std::string device = "cpu";
  std::string dtype = "float32";
  std::vector<models::LoraSpec> loras;  // merged into the model (PipelineConfig::loras)
  temporal::FrameWindows context;       // frame windows for long clips (GenerateOptions::context)
  // Prompt weighting: "shape:1.3" writes the captions' shape word as "(circle:1.3)" (likewise
  // colour, direction) and reads the prompts with PipelineConfig::prompt_weights; "" = plain captions.
  std::string emphasis;
  int64_t deep_cache_interval = 0;      // GenerateOptions::deep_cache_interval (0 = off)
  int64_t deep_cache_branch = 0;        // GenerateOptions::deep_cache_branch
  std::optional<models::FreeU> freeu;   // GenerateOptions::freeu (unset = off)
  temporal::FreeInit free_init;         // GenerateOptions::free_init (off below 2 passes)
  std::string out_dir;         // contact sheets + results.json ("" = nothing written)
  bool text_to_video = true;
  bool image_to_video = true;
  // Instead of generating: score N clips of the dataset as rendered ("data", the measure's own
  // accuracy) and after a round trip through the model's VAE ("vae", the most any generation decoded
  // by that VAE can reach).
  bool ceiling = false;
  // Instead of the two modes: N animations of a dataset first frame prompted with a direction at
  // right angles to the one the clip was rendered with ("words"). The start position favours the
  // rendered direction (an object starts on the side away from where it goes), the words another:
  // this separates motion read from the prompt from motion read from the image.
  bool conflicting_direction = false;
  // Instead of the two modes: N text-to-video clips with prompt travel from a caption to the same
  // caption in another colour (the first caption to frames / 4, the second from 3 * frames / 4 on),
  // each also rendered with the first caption alone from the same seed as the control ("travel").
  bool prompt_travel = false;
  // Instead of the two modes: N text-to-video clips, each extended by `frames` more frames with the
  // same caption (VideoPipeline::extend); the new frames scored against the caption ("extend"), and
  // the seam: the object found in the last frame before it and the first after, moving at most
  // kTravelMaxStep of the side and keeping its colour and shape.
  bool extend = false;
  int64_t sheet_columns = 8;   // frames shown per clip on the contact sheet
};

struct ShapesBenchmarkClip {
  std::string mode;     // "t2v" | "i2v"
  std::string caption;
  uint64_t seed = 0;
  ShapeClipScore score;
  bool first_frame_kept = false;  // i2v: the object starts where the image has it
  std::string rendered_direction;  // words: the direction the first frame was rendered for
  bool follows_rendered = false;   // words: the motion went that way instead of the prompt's
};

struct ShapesBenchmarkReport {
  std::vector<ShapesBenchmarkClip> clips;
  ShapeRates t2v, i2v;
  ShapeRates data, vae;  // the ceiling mode's rates
  ShapeRates words;      // the words mode's rates, against the prompt
  double words_follow_rendered = 0;  // words: share of clips moving the rendered direction
  // travel: share of clips whose first quarter of frames shows the first caption's colour (start),
  // whose last quarter shows the second's (end), both (switched); and of those that keep one object
  // throughout: found in every frame, its centroid moving at most kTravelMaxStep of the side between
  // neighbouring frames, the same shape in the first and last quarters (continuous). The same for
  // the controls.
  struct TravelRates {
    int64_t n = 0;
    double start = 0, end = 0, switched = 0, continuous = 0;
  };
  TravelRates travel, travel_control;
  ShapeRates extension;    // extend: the new frames against the caption
  double seam_ok = 0;      // extend: share of clips whose seam keeps the object
  std::optional<ShapeWorldConfig> world;  // the world the dataset clips were drawn from
  double seconds = 0;
  std::vector<std::string> files;  // written outputs
  nlohmann::json to_json(const ShapesBenchmarkOptions& options) const;
  std::string to_table() const;
};

ShapesBenchmarkReport run_shapes_benchmark(const ShapesBenchmarkOptions& options);
// The world the clips are drawn from: the "world" of `options.model_dir`/training.json (written by
// vdm train) when there is one, else the default world; `options.start` overrides its start positions.
ShapeWorldConfig benchmark_world(const ShapesBenchmarkOptions& options);
// The ceiling mode (options.ceiling): data and VAE round-trip rates, contact_vae.png.
ShapesBenchmarkReport run_shapes_ceiling(const ShapesBenchmarkOptions& options);
// The words mode (options.conflicting_direction): contact_words.png.
ShapesBenchmarkReport run_shapes_words(const ShapesBenchmarkOptions& options);

// The travel mode (options.prompt_travel): contact_travel.png (each clip beside its control).
ShapesBenchmarkReport run_shapes_travel(const ShapesBenchmarkOptions& options);

// The travel mode's largest centroid step between neighbouring frames, fraction of the frame side.
inline constexpr double kTravelMaxStep = 0.15;

// Whether frames (uint8 [F, H, W, 3]) hold one object throughout: found in every frame, moving at most
// kTravelMaxStep of the side between neighbouring frames, of the same shape in the first and last
// quarters.
bool continuous_object(const at::Tensor& frames);

// The extend mode (options.extend): contact_extend.png (each clip with its extension).
ShapesBenchmarkReport run_shapes_extend(const ShapesBenchmarkOptions& options);

// The colour most of `frames`' (uint8 [F, H, W, 3]) found objects have; nullopt when none is found.
std::optional<Colour> majority_colour(const at::Tensor& frames);

// The direction at right angles to `d` used by the words mode: left and right become up (`first`)
// or down, up and down become left (`first`) or right.
Direction perpendicular_direction(Direction d, bool first);

// A contact sheet: one row per clip (uint8 [F, H, W, 3], all the same size), `columns` frames
// evenly spaced, a 2-pixel gap, and a 6-pixel bar on the left: green when `ok`, red otherwise.
// Returns uint8 [rows * (H + 2), 8 + columns * (W + 2), 3].
at::Tensor contact_sheet(const std::vector<at::Tensor>& clips, const std::vector<bool>& ok, int64_t columns);

}  // namespace vdm::train
