// Optimisation machinery for training: AdamW (decoupled weight decay), gradient clipping by global
// norm, an exponential moving average of the weights, and the learning-rate schedule. State is
// plain named tensors so that checkpoints are safetensors files.
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <string>
#include <utility>
#include <vector>

#include "io/tensor_io.h"

namespace vdm::train {

using NamedParams = std::vector<std::pair<std::string, at::Tensor>>;

// The trainable parameters of a module by name, each name prefixed with `prefix` ("unet." ...).
NamedParams named_trainable(const torch::nn::Module& module, const std::string& prefix = "");

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;  // applied to matrices and kernels; not to biases or norm scales (1-D)
};

class AdamW {
 public:
  AdamW(NamedParams params, AdamWOptions options);

  // One update with learning rate `lr` from the parameters' .grad() (parameters without a
  // gradient are skipped for this step).
  void step(double lr);
  void zero_grad();
  int64_t steps() const { return steps_; }

  // "exp_avg.<name>", "exp_avg_sq.<name>" and "step" (int64 scalar).
  io::TensorMap state() const;
  // Restores state(); WeightsError naming `source` when a parameter's moments are missing or
  // shaped differently.
  void load_state(const io::TensorMap& state, const std::string& source);

 private:
  NamedParams params_;
  AdamWOptions options_;
  std::vector<at::Tensor> exp_avg_, exp_avg_sq_;
  std::vector<bool> decay_;
  int64_t steps_ = 0;
};

// Scales gradients so that their global L2 norm is at most `max_norm` (no-op when max_norm <= 0).
// Returns the norm before clipping (NaN/Inf when a gradient is not finite).
double clip_grad_norm(const NamedParams& params, double max_norm);

// Exponential moving average of parameters: ema = d * ema + (1 - d) * param, with the warm-up
// d_t = min(decay, (1 + t) / (10 + t)) so early averages follow the fast-moving weights.
class Ema {
 public:
  Ema(const NamedParams& params, double decay);
  void update(int64_t step);
  // "<name>" -> averaged tensor (float32, on the parameters' device).
  io::TensorMap state() const;
  void load_state(const io::TensorMap& state, const std::string& source);
  // Copies the averages into the parameters (after saving them with backup()).
  void copy_to_params() const;
  NamedParams backup() const;
  static void restore(const NamedParams& params, const NamedParams& saved);

 private:
  NamedParams params_;
  std::vector<at::Tensor> shadow_;
  double decay_;
};

// Linear warm-up over `warmup` steps to `lr`, then constant ("constant") or a cosine decay to
// `lr * final_fraction` at `total` steps ("cosine").
double learning_rate(int64_t step, int64_t total, double lr, int64_t warmup, const std::string& schedule,
                     double final_fraction = 0.1);

}  // namespace vdm::train
