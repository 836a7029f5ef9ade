// A linear layer's matrix product on oneDNN, called on the tensors' own memory.
//
// LibTorch's mkldnn_linear takes and returns oneDNN ("mkldnn") tensors, so each call converts its
// input to that layout and its result back to a plain tensor: on the UNet's thin layers (32 to 512
// channels over tens of thousands of tokens) the two copies cost as much as the product itself.
// Here the matmul primitive reads the row-major input and weight and writes the row-major result
// directly. Built when oneDNN's headers are found (Debian's libdnnl-dev) and LibTorch itself links
// that shared library (Debian's LibTorch; not the LibTorch 2.x builds, which carry a static copy);
// otherwise onednn_linear_available() is false and vdm's Linear keeps LibTorch's path.
#pragma once
#include <ATen/ATen.h>

namespace vdm::models {

// True when this build calls oneDNN directly.
bool onednn_linear_available();

// x: [M, K] with unit stride along K, weight: [N, K] contiguous, bias: [N] or undefined; all the
// same dtype (float32 or bfloat16), on the CPU. Returns x @ weight^T + bias: [M, N], row-major,
// in x's dtype. With `accumulate` ([M, N] contiguous, x's dtype) the product is added to it in
// place, inside the matmul (oneDNN's sum post-op: no separate pass over the sum), and it is returned.
at::Tensor onednn_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                         const at::Tensor& accumulate = {});

}  // namespace vdm::models
