// Frame windows for clips longer than a model was trained on (FreeNoise, Qiu et al. 2023, as
// diffusers' enable_free_noise runs it for AnimateDiff):
//   - the temporal transformers attend within windows of `length` frames that start every `stride`
//     frames (the last one ends at the clip's last frame); each frame's attention output is the
//     weighted mean of the windows that hold it, then the feed-forward runs over every frame. The
//     spatial layers work frame by frame anyway, and the temporal convolutions see 3 frames;
//   - the initial noise repeats every `length` frames, shuffled within blocks of `stride` frames
//     ("shuffle_context"), so the windows start from related noise.
// A clip of at most `length` frames is computed exactly as without windows.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

#include "temporal/frame_window_ranges.h"

namespace vdm::temporal {

// The windows as a gather plan over the frame axis: `index` [windows * length] (int64) lists the
// frames of each window in order; `weight` [windows * length] (float32) is each position's weight,
// 0 for the positions of the last window that earlier windows already cover (as diffusers: the end
// window only adds the frames it alone reaches); `inverse_total` [frames] (float32) is 1 / the
// summed weight of each frame.
struct FrameWindowPlan {
  int64_t windows = 0, length = 0;
  at::Tensor index, weight, inverse_total;
};
FrameWindowPlan plan_frame_windows(int64_t frames, const FrameWindows& w);

// FreeNoise's initial noise: noise [B, C, F, h, w] -> the same shape. shuffle_context: from frame
// `length` on, each block of `stride` frames is a shuffled copy of the block `length` frames earlier
// (permutations drawn from `generator`); repeat_context: frame f is frame f mod length; random:
// unchanged. Unchanged too when the clip does not split.
at::Tensor frame_window_noise(const at::Tensor& noise, const FrameWindows& w, at::Generator& generator);

}  // namespace vdm::temporal
