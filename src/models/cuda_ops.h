// vdm's CUDA kernels (models/cuda_kernels.h) for LibTorch tensors. In a build without them, every
// *_applies function is false and channels_last_pays is false (unless a test has installed the CPU
// emulation: install_cpu_kernel_table).
#pragma once
#include <ATen/ATen.h>

#include <set>
#include <string>
#include <utility>
#include <vector>

#include "models/cuda_kernels.h"

namespace torch::nn {
class Module;
}

namespace vdm::models {

// The kernels by name: "group_norm" (channels-last GroupNorm; without it channels-last does not pay
// and the UNet stays NCHW), "layer_norm", "geglu", "short_attention", "bias_residual". The
// environment variable VDM_DISABLE_CUDA_KERNELS (a comma-separated list of these names, or "all")
// turns kernels off, to compare them with LibTorch's operators or to work around one; read once.
const std::vector<std::string>& cuda_kernel_names();
// Parses a VDM_DISABLE_CUDA_KERNELS value (null or empty: none); throws InputError naming an unknown
// kernel and the known ones.
std::set<std::string> parse_disabled_cuda_kernels(const char* value);
// The kernels this process uses: built, and not disabled (empty in a build without CUDA kernels).
std::vector<std::string> cuda_kernels_in_use();

// Tests only: the CPU emulation's kernel table (tests/cuda_emulation), or null (the default). While
// one is installed, CPU tensors take the same kernel paths as CUDA tensors do (every *_applies
// function below answers for them as for CUDA), with the kernels run by the emulation.
void install_cpu_kernel_table(const cuda::KernelTable* table);

// True where vdm's device kernels take x's device: CUDA in a build with them, or the CPU while a
// test has installed the emulation. CPU-only fast paths step aside there.
bool device_kernels_take(const at::Tensor& x);

// True where a network on `device` runs faster channels-last: a CUDA device in a build with vdm's CUDA
// kernels (without them, every group norm would convert the layout twice).
bool channels_last_pays(const c10::Device& device);

// Stores every Conv2d weight of `module` channels-last (Conv3d: channels-last-3d) when `on`, plain
// contiguous otherwise, so that cuDNN reads them in the activations' layout.
void set_conv_weights_channels_last(torch::nn::Module& module, bool on);

// True where fusing self-attention's q, k and v projections into one product pays
// (UNet3DConditionModel::fuse_qkv_projections): CUDA, where the three thin products over the same
// tokens are bound by memory traffic. On CPU the separate products measured as fast.
bool fused_qkv_pays(const c10::Device& device);

// True where a GroupNorm after a convolution of `conv_input` adds the convolution's bias itself (the
// NHWC kernel's added term), so the convolution can run without one: channels-last CUDA inference.
bool norm_takes_conv_bias(const at::Tensor& conv_input);

// True where the convolution that ends a residual branch, run on `conv_input`, can leave its bias to
// add_bias_residual's kernel: channels-last CUDA inference.
bool residual_takes_conv_bias(const at::Tensor& conv_input);

// True where add_bias_residual runs vdm's one-pass kernel: x and residual CUDA tensors of one dtype
// (float32, float16, bfloat16) and the same strides, channels innermost; bias [C] of their dtype or
// none; no gradient.
bool bias_residual_cuda_applies(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& residual);

// (x + bias + residual) / divisor, bias [C] broadcast over x [N, C, *] (a residual branch's last
// convolution run without its bias, the branch's input, a ResNet block's output_scale_factor).
// Where bias_residual_cuda_applies, one pass written into x's memory (x must be a temporary);
// otherwise LibTorch's operators, in the order of the unfused block.
at::Tensor add_bias_residual(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& residual, double divisor);

// True for an inference call the NHWC group norm takes: a CUDA tensor of float32, float16 or
// bfloat16 laid out channels-last ([N, C, *] whose memory is [N, *, C]; NCHW-contiguous tensors stay
// with LibTorch's group norm), affine parameters of its dtype or none, no gradient.
bool group_norm_nhwc_applies(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// x: [N, C, *] channels-last -> GroupNorm(x + add) (then SiLU when `silu`), same shape, dtype and
// strides. add: undefined, or [N, C] or [C] of x's dtype, broadcast over the positions (and the
// samples); the sum is never written.
at::Tensor group_norm_nhwc(const at::Tensor& x, int64_t groups, const at::Tensor& weight, const at::Tensor& bias,
                           double eps, bool silu, const at::Tensor& add = {});

// True for an inference layer norm over the last dimension the CUDA kernel takes: a contiguous CUDA
// tensor [..., C] of float32, float16 or bfloat16 (C up to 2048 in 16-bit types, 1024 in float32),
// affine parameters of its dtype or none, no gradient.
bool layer_norm_cuda_applies(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// x: [..., C] -> LayerNorm over C, same shape and dtype.
at::Tensor layer_norm_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps);

// True where layer_norm_cuda_applies to x and `residual` is a tensor like x (shape, dtype, device,
// contiguous) that needs no gradient.
bool add_layer_norm_cuda_applies(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                                 const at::Tensor& bias);

// {x + residual, LayerNorm(x + residual)} in one pass: the sum rounded to x's dtype, written, and
// normalised as written.
std::pair<at::Tensor, at::Tensor> add_layer_norm_cuda(const at::Tensor& x, const at::Tensor& residual,
                                                      const at::Tensor& weight, const at::Tensor& bias, double eps);

// True for an inference GEGLU the CUDA kernel takes: a contiguous CUDA tensor [..., 2 * inner] of
// float32, float16 or bfloat16, no gradient.
bool geglu_cuda_applies(const at::Tensor& h);

// h: [..., 2 * inner] -> h[..., :inner] * GELU(h[..., inner:]) (exact GELU), [..., inner], one pass.
at::Tensor geglu_cuda(const at::Tensor& h);

// True for an unmasked inference attention the short-sequence kernel takes: CUDA tensors q [B, H, Lq,
// D], k and v [B, H, Lk, D] of one dtype (float32, float16, bfloat16), channels contiguous, at most
// 64 keys (temporal attention over frames), D up to 32 (vdm's default model has heads of 4),
// or a multiple of 8 up to 256 with rows 16-byte aligned.
bool short_attention_cuda_applies(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool has_mask);

// softmax(q k^T / sqrt(D)) v -> [B, H, Lq, D], a transposed view of a contiguous [B, Lq, H, D] (so
// merging the heads back into [B, Lq, H * D] copies nothing).
at::Tensor short_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// The same over the frames of token-ordered tensors: q, k, v [B, F, S, H, D] (views of [B, F, S,
// H * D] tokens, S positions per frame), attention over F for each (batch, position, head).
bool short_attention_frames_applies(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// -> [B, F, S, H, D] contiguous (the tokens' order).
at::Tensor short_attention_frames(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

}  // namespace vdm::models
