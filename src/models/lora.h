// LoRA: low-rank weight updates W' = W + strength * scale * (up @ down), read from the files people
// publish and merged into a loaded model's weights before it is converted to its run dtype.
//
// Key formats read (all three name the target module by its diffusers / transformers name):
//   PEFT / diffusers  unet.<module>.lora_A.weight [r, in(, k..)]  unet.<module>.lora_B.weight [out, r(, 1..)]
//                     (text_encoder.<module>...; base_model.model.<module>... and unprefixed keys are the
//                     UNet's). alpha from the safetensors metadata "lora_adapter_metadata" (a PEFT
//                     LoraConfig: r, lora_alpha, alpha_pattern, use_rslora; plain or "unet."-prefixed
//                     keys) or an adapter_config.json beside the file; without either, alpha = rank.
//   diffusers, older  <module>.processor.to_q_lora.down.weight / .up.weight (to_out_lora: to_out.0),
//                     <module>.lora.down.weight / .lora.up.weight
//   kohya / A1111     lora_unet_<module with '_' for '.'>.lora_down.weight / .lora_up.weight / .alpha,
//                     lora_te_... (lora_te1_...) for the text encoder
// scale = alpha / rank (alpha / sqrt(rank) with use_rslora). Targets are Linear, Conv2d and Conv3d
// weights; a convolution's down has its kernel, its up is 1x1(x1).
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <map>
#include <string>
#include <vector>

#include "models/lora_spec.h"

namespace vdm::models {

// One adapted module.
struct LoraLayer {
  std::string component;  // "unet" | "text_encoder"
  std::string module;     // the module's name in its component, e.g. "mid_block.attentions.0.proj_in"
  at::Tensor down;        // A: [rank, in] or [rank, in, k...], float32
  at::Tensor up;          // B: [out, rank] or [out, rank, 1...], float32
  double scale = 1.0;     // alpha / rank
  int64_t rank() const { return down.size(0); }
  // up @ down in the target weight's shape [out, in(, k...)], times scale (float32).
  at::Tensor delta() const;
};

struct LoraFile {
  std::string path;    // the safetensors file read
  std::string format;  // "peft" | "diffusers-legacy" | "kohya"
  std::vector<LoraLayer> layers;
  // "kohya, 24 layers (unet 20, text_encoder 4), rank 4..8"
  std::string summary() const;
};

// The modules a LoRA may adapt: component name -> module.
using LoraComponents = std::map<std::string, torch::nn::Module*>;

// Reads `path` (LoraSpec::path: a file or a folder) and checks every layer against `components`: each
// key understood, each module present with a 2-D or convolution weight, down and up paired, their
// shapes fitting the weight. Every problem is collected into one WeightsError naming the file.
LoraFile read_lora(const std::string& path, const LoraComponents& components);

// W += strength * layer.delta() for every layer (no gradient; the weights keep their dtype).
// `lora` must have been read against the same components.
void merge_lora(const LoraFile& lora, double strength, const LoraComponents& components);

// Reads every spec first (so a bad file fails before any weight changes), then merges them in
// order. Returns the files read, for reporting.
std::vector<LoraFile> apply_loras(const std::vector<LoraSpec>& specs, const LoraComponents& components);

}  // namespace vdm::models
