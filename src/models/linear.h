// Linear: torch::nn's module (same options, parameters "weight" and "bias", same results to
// float32 rounding) whose forward for CPU inference runs on oneDNN instead of the BLAS.
// The UNet's linear layers are thin (32 to 512 channels) over tens of thousands of tokens; at those
// shapes OpenBLAS's sgemm is three times slower than oneDNN's ([32768, 32] x [32, 256]: 9.3 ms
// against 3.0 ms with the layout conversions, 2 cores). With oneDNN's headers the matmul runs on
// the tensors' own memory (linear_onednn.h) for float32 and bfloat16; without them float32 goes
// through LibTorch's mkldnn_linear (which converts to and from oneDNN's layout) and bfloat16 through
// torch::nn. Training (a tensor that needs a gradient), other dtypes and CUDA go to torch::nn's
// forward unchanged.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

namespace vdm::models {

// True when `x` qualifies for the oneDNN path: a float32 (or, with oneDNN's headers, bfloat16) CPU
// tensor of 2 or more dimensions that needs no gradient (oneDNN built into LibTorch). Under grad
// mode with weights that need a gradient (training) forward still takes torch::nn's path.
bool linear_uses_onednn(const at::Tensor& x);

// x @ weight^T + bias on the path LinearImpl::forward takes (oneDNN for CPU inference, else
// LibTorch's linear), for a weight that is not a Linear's own (a 1x1 convolution's, viewed
// [out, in]). x: [..., in], weight: [out, in], bias: [out] or undefined -> [..., out].
at::Tensor linear_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// acc += x @ weight^T + bias, in place, and returns acc. x: [..., in], acc: [..., out] (x's leading
// shape). On the oneDNN path with a contiguous acc of x's dtype the sum happens inside the matmul;
// elsewhere it is acc.add_(linear_forward(...)).
at::Tensor linear_forward_add(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, at::Tensor& acc);

// Throws Error (naming `who`) unless acc has x's shape with the last dimension `out_features`: the
// shape a layer's output added in place must have (add_ would broadcast silently).
void check_accumulator(const char* who, const at::Tensor& x, int64_t out_features, const at::Tensor& acc);

class LinearImpl : public torch::nn::LinearImpl {
 public:
  using torch::nn::LinearImpl::LinearImpl;
  // x: [..., in_features] -> [..., out_features]
  at::Tensor forward(const at::Tensor& x);
  // acc += forward(x) in place (linear_forward_add); returns acc.
  at::Tensor forward_add_to(const at::Tensor& x, at::Tensor& acc);
};
TORCH_MODULE(Linear);

}  // namespace vdm::models
