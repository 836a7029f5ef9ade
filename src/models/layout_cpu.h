// CPU kernels that move activations between the convolution layout (channels, then positions) and
// the transformers' token layout (positions, then channels), for inference. LibTorch's copy of a
// permuted tensor walks the destination with the source strided element by element (about 1.7 GB/s
// on a 32-channel level of the fixture UNet); these move 8x8 blocks through registers instead,
// float32 or bfloat16, and the way back adds the transformer's residual as it writes.
#pragma once
#include <ATen/ATen.h>

namespace vdm::models {

// True when the kernels apply to `x`: a float32 or bfloat16 CPU tensor, with gradients off.
bool token_layout_cpu_applies(const at::Tensor& x);

// x: [N, C, H, W], or [B, C, F, H, W] with each H x W plane contiguous (a temporal layer's view of
// [B*F, C, H, W], or NCDHW) -> the tokens [N, H*W, C] or [B, H*W, F, C], contiguous.
at::Tensor tokens_from_channels_cpu(const at::Tensor& x);

// tokens: [B, H*W, F, C] (contiguous), residual: [B*F, C, H, W] (contiguous) -> residual + the
// tokens in the residual's layout, [B*F, C, H, W] contiguous. F = 1 is a spatial transformer's
// [N, H*W, C] with a dimension of 1 added.
at::Tensor channels_from_tokens_add_cpu(const at::Tensor& tokens, const at::Tensor& residual);

}  // namespace vdm::models
