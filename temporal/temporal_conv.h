// TemporalConvLayer (diffusers v0.31): four (3,1,1) Conv3d stages over the frame axis with a
// residual connection. Keys: conv1.0 (GroupNorm), conv1.2 (Conv3d); conv2..conv4: .0 (GroupNorm),
// .3 (Conv3d) with .2 a Dropout.
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>

#include <cstdint>

namespace vdm::temporal {

struct TemporalConvOptions {
  int64_t in_dim = 0;                     // required
  c10::optional<int64_t> out_dim;         // default: in_dim (the output always has in_dim channels)
  double dropout = 0.0;
  int64_t norm_num_groups = 32;
};

// True unless VDM_TEMPORAL_CONV=conv3d: a (3,1,1) convolution over [B, C, F, H, W] runs as the
// same convolution with kernel (3,1) over [B, C, F, H*W], a view of the same memory. On channels-last
// frames (the CUDA layout) that takes the 2-D channels-last convolutions; on the CPU it takes oneDNN
// where LibTorch 1.13 sends a small float32 Conv3d of one video to its slower im2col path. Read once;
// InputError for an unknown value.
bool temporal_conv_as_2d();

// One of the layer's convolutions, in the form temporal_conv_as_2d() selects.
//   h: [B, C, F, H, W] in any layout (a view where H and W merge, as in NCDHW, channels-last and
//      the frame-major [B, F, C, H, W] memory the layer receives),
//   weight: [Cout, C, 3, 1, 1], bias: [Cout] or undefined -> [B, Cout, F, H, W]
at::Tensor conv_frames(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias);

class TemporalConvLayerImpl : public torch::nn::Module {
 public:
  explicit TemporalConvLayerImpl(const TemporalConvOptions& options);
  // x: [B*F, C, H, W] (frames of one video consecutive) -> [B*F, C, H, W]
  at::Tensor forward(const at::Tensor& x, int64_t num_frames);

 private:
  TemporalConvOptions options_;
  torch::nn::Sequential conv1_{nullptr}, conv2_{nullptr}, conv3_{nullptr}, conv4_{nullptr};
};
TORCH_MODULE(TemporalConvLayer);

}  // namespace vdm::temporal
