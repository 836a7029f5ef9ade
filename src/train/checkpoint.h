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

// True when `dir` holds a checkpoint load_checkpoint() would read.
bool has_checkpoint(const std::string& dir);

}  // namespace vdm::train
