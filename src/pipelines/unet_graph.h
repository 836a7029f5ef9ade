// The UNet step as a CUDA graph (`--cuda-graph`): captured on the first call for a set of input
// shapes, then replayed after the inputs are copied into its static buffers. Every denoising step
// has the same shapes, so the step's 2,000-odd kernel launches become one graph launch. Only in
// builds with LibTorch's CUDA; elsewhere the constructor throws.
#pragma once
#include <ATen/ATen.h>

#include <memory>

#include "models/unet_3d_condition.h"

namespace vdm::pipelines {

class UNetGraph {
 public:
  explicit UNetGraph(models::UNet3DConditionModel unet);
  ~UNetGraph();
  UNetGraph(const UNetGraph&) = delete;
  UNetGraph& operator=(const UNetGraph&) = delete;

  // x: [B, C, F, h, w], t: 0-d or [1], text: [B, L, D], on the UNet's device and dtype.
  // Returns the UNet's output [B, C_out, F, h, w] (a fresh tensor, not the graph's buffer).
  // New shapes, dtypes or devices capture a new graph.
  at::Tensor operator()(const at::Tensor& x, const at::Tensor& t, const at::Tensor& text);

 private:
  struct State;
  models::UNet3DConditionModel unet_;
  std::unique_ptr<State> s_;
};

}  // namespace vdm::pipelines
