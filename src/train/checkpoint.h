// Training checkpoints: a folder holding the weights, their moving average, the optimizer moments,
// the data generator's state (safetensors) and the step counters (state.json). A checkpoint is
// written to a temporary folder and swapped in by renames, so an interrupted save leaves the
// previous checkpoint usable.
//
//   <dir>/model.safetensors      trained weights, keys "<component>.<parameter>"
//   <dir>/ema.safetensors        exponential moving average of the same keys
//   <dir>/optimizer.safetensors  "exp_avg.<key>", "exp_avg_sq.<key>", "step"
//   <dir>/rng.safetensors        generator states (uint8): "data" (the stage's data generator),
//                                "default_cpu" / "default_cuda" (dropout draws from these)
//   <dir>/state.json             {"step": N, "elapsed_s": ..., "stage": "...", ...}
#pragma once
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <optional>
#include <string>

#include "io/tensor_io.h"

namespace vdm::train {

struct Checkpoint {
  io::TensorMap model;
  io::TensorMap ema;
  io::TensorMap optimizer;
  io::TensorMap rng;           // generator states (uint8, from at::Generator::get_state())
  nlohmann::json state;        // at least "step" and "stage"
};

// Writes `checkpoint` to `dir` (replacing what is there only once everything is written).
void save_checkpoint(const std::string& dir, const Checkpoint& checkpoint);

// Reads the checkpoint in `dir` (or the previous one left by a save interrupted between its two
// renames); nullopt when there is none. Malformed files throw WeightsError/ConfigError naming them.
std::optional<Checkpoint> load_checkpoint(const std::string& dir);

// Removes `dir` and everything below it, entry by entry; failures are ignored (a left-over
// temporary folder is harmless and removed by the next save).
void remove_tree(const std::string& dir);

// Net surgery for a model that gains input channels (e.g. the frame-position channel): widens the
// 4-D convolution weight `key` ([out, in, kh, kw]) of the weights, their average and the
// optimizer's first moments to `in_channels` with zeros, so the model computes exactly what it did
// before; the new second moments take the mean of the old input channels', so the first updates of
// the new weights are not outsized. Returns the number of channels added (0 when already that
// wide); throws WeightsError when `key` is missing, not 4-D, or wider than `in_channels`.
int64_t grow_input_channels(Checkpoint& checkpoint, const std::string& key, int64_t in_channels);

// True when `dir` holds a checkpoint load_checkpoint() would read.
bool has_checkpoint(const std::string& dir);

}  // namespace vdm::train
