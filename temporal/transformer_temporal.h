// TransformerTemporalModel (diffusers v0.31): attention across the frames of each spatial
// position. GroupNorm "norm" (eps 1e-6, statistics over all frames of a video) -> proj_in (Linear)
// -> transformer_blocks (BasicTransformerBlock, double_self_attention: attn2 is self-attention
// too) -> proj_out (Linear) -> + input.
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>

#include <cstdint>
#include <string>

#include "models/attention.h"
#include "models/linear.h"
#include "models/normalization.h"
#include "temporal/frame_windows.h"

namespace vdm::temporal {

struct TransformerTemporalOptions {
  int64_t num_attention_heads = 16;
  int64_t attention_head_dim = 88;
  int64_t in_channels = 0;                    // required
  int64_t num_layers = 1;
  double dropout = 0.0;
  int64_t norm_num_groups = 32;
  c10::optional<int64_t> cross_attention_dim; // only used when double_self_attention is false
  bool attention_bias = false;
  std::string activation_fn = "geglu";
  bool norm_elementwise_affine = true;
  bool double_self_attention = true;
};

class TransformerTemporalModelImpl : public torch::nn::Module {
 public:
  explicit TransformerTemporalModelImpl(const TransformerTemporalOptions& options);
  // x: [B*F, C, H, W] -> [B*F, C, H, W]. encoder_hidden_states: [B*H*W, S, D] or undefined
  // (the UNet3D passes none: every attention is across frames).
  at::Tensor forward(const at::Tensor& x, int64_t num_frames, const at::Tensor& encoder_hidden_states = {});

  // Attention within frame windows (frame_windows.h) for clips longer than windows.length; off
  // (length 0) by default. Self-attention transformers only (the UNet3D's): a transformer with
  // cross-attention refuses windows when it runs.
  void set_frame_windows(const FrameWindows& windows);
  const FrameWindows& frame_windows() const { return windows_; }

 private:
  // True where the tokens stay in x's memory order [B, F, H*W, C] instead of being permuted to one
  // sequence per position and back: channels-last x on a device vdm's kernels take, self-attention
  // blocks only (models::device_kernels_take).
  bool tokens_stay_in_place(const at::Tensor& x, const at::Tensor& encoder_hidden_states) const;

  TransformerTemporalOptions options_;
  int64_t inner_dim_;
  models::GroupNorm norm_{nullptr};
  models::Linear proj_in_{nullptr}, proj_out_{nullptr};
  torch::nn::ModuleList transformer_blocks_{nullptr};
  FrameWindows windows_;
  // The windows' gather plan for the last frame count and device (built once, so that no step
  // copies from the host).
  FrameWindowPlan plan_;
  int64_t plan_frames_ = 0;
  c10::Device plan_device_ = c10::kCPU;
  const FrameWindowPlan& plan_for(int64_t frames, c10::Device device);
};
TORCH_MODULE(TransformerTemporalModel);

// One transformer block over frame windows: each window's frames [N, length, dim] go through the
// block's attentions; each frame's result is the weighted mean over the windows that hold it (plan's
// weights, on x's device); then the feed-forward runs over every frame. x: [N, F, dim] -> [N, F, dim].
at::Tensor transformer_block_in_windows(models::BasicTransformerBlockImpl& block, const at::Tensor& x,
                                        const FrameWindowPlan& plan);

}  // namespace vdm::temporal
