// GroupNorm over channels-last CUDA tensors (models/group_norm_nhwc.h), for LibTorch tensors. In a
// build without vdm's CUDA kernels, group_norm_nhwc_applies is always false.
#pragma once
#include <ATen/ATen.h>

namespace vdm::models {

// True where a network on `device` runs faster channels-last: a CUDA device in a build with vdm's CUDA
// kernels (without them, every group norm would convert the layout twice).
bool channels_last_pays(const c10::Device& device);

// True for an inference call the NHWC kernels take: a CUDA tensor of float32, float16 or bfloat16
// laid out channels-last ([N, C, *] whose memory is [N, *, C]; NCHW-contiguous tensors stay with
// LibTorch's group norm), affine parameters of its dtype or none.
bool group_norm_nhwc_applies(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// x: [N, C, *] channels-last -> GroupNorm(x) (then SiLU when `silu`), same shape, dtype and strides.
at::Tensor group_norm_nhwc(const at::Tensor& x, int64_t groups, const at::Tensor& weight, const at::Tensor& bias,
                           double eps, bool silu);

}  // namespace vdm::models
