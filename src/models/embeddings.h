// Timestep embeddings (diffusers Timesteps / TimestepEmbedding).
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <cstdint>

#include "models/activations.h"
#include "models/linear.h"

namespace vdm::models {

// Sinusoidal embedding of (possibly fractional) timesteps, as diffusers get_timestep_embedding:
// timesteps: [N] (any numeric dtype) -> [N, dim] float32.
at::Tensor timestep_embedding(const at::Tensor& timesteps, int64_t dim, bool flip_sin_to_cos,
                              double downscale_freq_shift, double scale = 1.0, double max_period = 10000.0);

// TimestepEmbedding: linear_1 -> act -> linear_2.
class TimestepEmbeddingImpl : public torch::nn::Module {
 public:
  TimestepEmbeddingImpl(int64_t in_channels, int64_t time_embed_dim, Activation act = Activation::kSilu);
  at::Tensor forward(const at::Tensor& x);  // x: [N, in_channels] -> [N, time_embed_dim]

 private:
  Linear linear_1_{nullptr}, linear_2_{nullptr};
  Activation act_;
};
TORCH_MODULE(TimestepEmbedding);

}  // namespace vdm::models
