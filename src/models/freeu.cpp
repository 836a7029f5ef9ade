#include "models/freeu.h"

namespace vdm::models {

at::Tensor fourier_filter(const at::Tensor& x, int64_t threshold, double scale) {
  // x: [N, C, H, W]. CPU FFTs take no half types; float32 everywhere keeps one result per input.
  const at::Tensor xf = x.to(at::kFloat);
  const int64_t H = x.size(-2), W = x.size(-1);
  at::Tensor freq = at::fft_fftshift(at::fft_fftn(xf, c10::nullopt, {-2, -1}), {-2, -1});
  at::Tensor mask = at::ones({H, W}, xf.options());
  // The centre square as diffusers slices it; for H = 1, H/2 - threshold is -1 and slice wraps it as
  // Python does.
  mask.slice(0, H / 2 - threshold, H / 2 + threshold).slice(1, W / 2 - threshold, W / 2 + threshold).fill_(scale);
  freq = at::fft_ifftshift(freq * mask, {-2, -1});
  return at::real(at::fft_ifftn(freq, c10::nullopt, {-2, -1})).to(x.scalar_type());
}

std::pair<at::Tensor, at::Tensor> apply_freeu(const FreeUStage& stage, const at::Tensor& h, const at::Tensor& skip) {
  const int64_t half = h.size(1) / 2;
  at::Tensor scaled = at::cat({h.narrow(1, 0, half) * stage.backbone, h.narrow(1, half, h.size(1) - half)}, 1);
  return {scaled, fourier_filter(skip, 1, stage.skip)};
}

}  // namespace vdm::models
