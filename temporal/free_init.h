// FreeInit (Wu et al. 2023, "FreeInit: Bridging Initialization Gap in Video Diffusion Models", as
// diffusers' FreeInitMixin runs it for AnimateDiff): the clip is sampled `iterations` times. After
// each pass but the last, its result is diffused back to the start of the schedule with the first
// pass's noise, and the next pass starts from that latent's low spatio-temporal frequencies joined
// with the high frequencies of fresh noise. The low frequencies carry the layout and motion the
// model settled on; the model was trained on noise whose low frequencies held such structure, which
// pure noise lacks. Each iteration is a whole sampling pass.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <string>

namespace vdm::temporal {

struct FreeInit {
  int64_t iterations = 0;              // sampling passes; 0 or 1 = off
  std::string filter = "butterworth";  // butterworth | gaussian | ideal
  int64_t order = 4;                   // butterworth's order
  double spatial_stop = 0.25;          // normalised stop frequencies of the low-pass filter
  double temporal_stop = 0.25;
  // Coarse to fine (diffusers' use_fast_sampling): pass i of N (0-based) runs max(1, floor(steps (i + 1) / N))
  // steps, so only the last runs them all.
  bool fast = false;
  bool active() const { return iterations > 1; }
  // The steps pass `pass` (0-based) runs out of a render's `steps`.
  int64_t pass_steps(int64_t pass, int64_t steps) const;
  bool operator==(const FreeInit& o) const {
    return iterations == o.iterations && filter == o.filter && order == o.order && spatial_stop == o.spatial_stop &&
           temporal_stop == o.temporal_stop && fast == o.fast;
  }
};

// InputError naming the option for iterations outside 0..10, an unknown filter, an order outside
// 1..16 or a stop frequency that is not a positive finite number.
void validate_free_init(const FreeInit& f);

// The low-pass filter [frames, height, width] (float32, in fftshift order) over a latent's frames,
// rows and columns: with the distance d^2 = ((s / t) (2 f / F - 1))^2 + (2 y / H - 1)^2 + (2 x / W - 1)^2
// (s, t the spatial and temporal stops), butterworth 1 / (1 + (d^2 / s^2)^order), gaussian
// exp(-d^2 / (2 s^2)), ideal 1 where d^2 <= 2 s, else 0 (diffusers' formulas).
at::Tensor free_init_low_pass(const FreeInit& f, int64_t frames, int64_t height, int64_t width);

// z: [B, C, F, h, w], noise: the same shape, low_pass: [F, h, w] -> the inverse 3-D FFT's real part
// of FFT(z) * low_pass + FFT(noise) * (1 - low_pass), in float32.
at::Tensor free_init_mix(const at::Tensor& z, const at::Tensor& noise, const at::Tensor& low_pass);

// "3 passes, butterworth filter of order 4, stops 0.25 spatial / 0.25 temporal[, coarse to fine]"
// (logs, metadata).
std::string describe_free_init(const FreeInit& f);

}  // namespace vdm::temporal
