#include "temporal/free_init.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace vdm::temporal {

void validate_free_init(const FreeInit& f) {
  if (f.iterations < 0 || f.iterations > 10)
    throw InputError(fmt::format("--free-init {}: must be between 0 and 10 sampling passes (0 or 1 = off; 3 is usual, "
                                 "each pass costs a whole render's steps)",
                                 f.iterations));
  if (f.filter != "butterworth" && f.filter != "gaussian" && f.filter != "ideal")
    throw InputError(fmt::format("--free-init-filter {}: expected butterworth, gaussian or ideal", f.filter));
  if (f.order < 1 || f.order > 16)
    throw InputError(fmt::format("--free-init-order {}: must be between 1 and 16 (4 is usual)", f.order));
  for (const auto& [flag, v] : {std::pair{"--free-init-spatial", f.spatial_stop}, {"--free-init-temporal", f.temporal_stop}})
    if (!std::isfinite(v) || v <= 0 || v > 1)
      throw InputError(fmt::format("{} {}: the stop frequency must be in (0, 1] (0.25 is usual)", flag, v));
}

int64_t FreeInit::pass_steps(int64_t pass, int64_t steps) const {
  if (!fast || !active()) return steps;
  // diffusers computes int(steps / N * (pass + 1)) in floating point, which for 31 pairs with N = 7
  // and steps <= 1000 (61, 115, 122, ...) rounds the last pass down to steps - 1; integer arithmetic
  // gives the same values otherwise and the last pass all its steps.
  return std::max<int64_t>(1, steps * (pass + 1) / iterations);
}

at::Tensor free_init_low_pass(const FreeInit& f, int64_t frames, int64_t height, int64_t width) {
  validate_free_init(f);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  // Each axis' normalised coordinate 2 i / n - 1, as diffusers computes it (the centre at n / 2).
  auto axis = [&](int64_t n) { return at::arange(n, opts).mul(2.0 / static_cast<double>(n)).sub(1.0); };
  const double s = f.spatial_stop;
  const at::Tensor t = axis(frames).mul(s / f.temporal_stop).pow(2).view({frames, 1, 1});
  const at::Tensor y = axis(height).pow(2).view({1, height, 1});
  const at::Tensor x = axis(width).pow(2).view({1, 1, width});
  const at::Tensor d2 = t + y + x;  // [F, H, W]
  at::Tensor mask;
  if (f.filter == "butterworth")
    mask = d2.div(s * s).pow(static_cast<double>(f.order)).add(1.0).reciprocal();
  else if (f.filter == "gaussian")
    mask = d2.mul(-1.0 / (2 * s * s)).exp();
  else
    mask = d2.le(2 * s).to(at::kDouble);
  return mask.to(at::kFloat);
}

at::Tensor free_init_mix(const at::Tensor& z, const at::Tensor& noise, const at::Tensor& low_pass) {
  const std::vector<int64_t> dims{-3, -2, -1};
  auto spectrum = [&](const at::Tensor& v) {
    return at::fft_fftshift(at::fft_fftn(v.to(at::kFloat), c10::nullopt, dims), dims);
  };
  const at::Tensor lp = low_pass.to(z.device());
  at::Tensor mixed = spectrum(z) * lp + spectrum(noise) * (1 - lp);
  return at::real(at::fft_ifftn(at::fft_ifftshift(mixed, dims), c10::nullopt, dims)).contiguous();
}

std::string describe_free_init(const FreeInit& f) {
  return fmt::format("{} passes, {} filter{}, stops {} spatial / {} temporal{}", f.iterations, f.filter,
                     f.filter == "butterworth" ? fmt::format(" of order {}", f.order) : "", f.spatial_stop,
                     f.temporal_stop, f.fast ? ", coarse to fine" : "");
}

}  // namespace vdm::temporal
