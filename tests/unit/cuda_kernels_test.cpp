// vdm's CUDA kernels against LibTorch's operators, and the UNet step as a CUDA graph. They run only on a machine with a CUDA device and
// a build with the kernels (CMake VDM_CUDA_KERNELS, LibTorch with CUDA, nvcc); elsewhere they skip.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <cmath>
#include <vector>

#include "models/cuda_ops.h"
#include "models/unet_3d_condition.h"
#include "pipelines/unet_graph.h"
#include "tests/support/test_support.h"

namespace {

using namespace vdm::models;

const c10::Device kCuda(c10::kCUDA, 0);

bool skip_without_kernels() {
  if (!torch::cuda::is_available()) return true;
  return !channels_last_pays(kCuda);
}

double relative_error(const at::Tensor& out, const at::Tensor& ref) {
  const at::Tensor a = out.to(at::kCPU, at::kDouble), b = ref.to(at::kCPU, at::kDouble);
  return (a - b).norm().item<double>() / b.norm().item<double>();
}

at::MemoryFormat channels_last_of(int64_t dim) {
  return dim == 5 ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::ChannelsLast;
}

// Shapes of the UNet's norms (C = 320 in 32 groups over 32x32, a temporal norm over 16 frames) and an
// odd one whose channels are no multiple of the 16-byte vector (the scalar path).
TEST(CudaGroupNorm, ChannelsLastMatchesTorchAndKeepsTheLayout) {
  if (skip_without_kernels()) GTEST_SKIP() << "no CUDA device, or a build without vdm's CUDA kernels";
  c10::InferenceMode inference;
  at::manual_seed(5);
  struct Case {
    std::vector<int64_t> shape;
    int64_t groups;
  };
  const std::vector<Case> cases = {{{8, 320, 32, 32}, 32}, {{2, 320, 16, 16, 16}, 32}, {{3, 12, 5, 7}, 4}};
  for (const Case& c : cases) {
    for (const auto dtype : {at::kFloat, at::kHalf, at::kBFloat16}) {
      for (const bool silu : {false, true}) {
        const int64_t C = c.shape[1];
        // An offset mean checks that the statistics do not cancel.
        const at::Tensor x = (at::randn(c.shape, at::TensorOptions().device(kCuda)) * 3 + 20)
                                 .to(dtype)
                                 .contiguous(channels_last_of(int64_t(c.shape.size())));
        const at::Tensor w = at::randn({C}, x.options()), b = at::randn({C}, x.options());
        ASSERT_TRUE(group_norm_nhwc_applies(x, w, b));
        const at::Tensor out = group_norm_nhwc(x, c.groups, w, b, 1e-5, silu);
        at::Tensor ref = at::group_norm(x.to(at::kDouble).contiguous(), c.groups, w.to(at::kDouble),
                                        b.to(at::kDouble), 1e-5);
        if (silu) ref = at::silu(ref);
        EXPECT_EQ(out.strides(), x.strides());
        EXPECT_EQ(out.scalar_type(), dtype);
        const double tol = dtype == at::kFloat ? 1e-5 : dtype == at::kHalf ? 2e-3 : 1e-2;
        EXPECT_LT(relative_error(out, ref), tol)
            << "shape " << x.sizes() << " dtype " << dtype << " silu " << silu;
      }
    }
  }
  // With an added [N, C] term (a ResNet block's time embedding), SiLU(GroupNorm(x + add)).
  const at::Tensor x = at::randn({6, 64, 8, 8}, at::TensorOptions().device(kCuda)).contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor add = at::randn({6, 64}, x.options()) * 4, w = at::randn({64}, x.options());
  const at::Tensor ref = at::silu(at::group_norm((x + add.view({6, 64, 1, 1})).to(at::kDouble).contiguous(), 8,
                                                 w.to(at::kDouble), {}, 1e-6));
  EXPECT_LT(relative_error(group_norm_nhwc(x, 8, w, {}, 1e-6, true, add), ref), 1e-5);
  // A per-channel term (a convolution's bias), the same for every sample.
  const at::Tensor bias = at::randn({64}, x.options()) * 4;
  const at::Tensor ref_bias = at::silu(at::group_norm((x + bias.view({1, 64, 1, 1})).to(at::kDouble).contiguous(), 8,
                                                      w.to(at::kDouble), {}, 1e-6));
  EXPECT_LT(relative_error(group_norm_nhwc(x, 8, w, {}, 1e-6, true, bias), ref_bias), 1e-5);
  // NCHW-contiguous tensors and tensors needing gradients stay with LibTorch's group norm.
  const at::Tensor nchw = at::randn({2, 8, 4, 4}, at::TensorOptions().device(kCuda));
  EXPECT_FALSE(group_norm_nhwc_applies(nchw, at::Tensor(), at::Tensor()));
}

TEST(CudaLayerNorm, MatchesTorch) {
  if (skip_without_kernels()) GTEST_SKIP() << "no CUDA device, or a build without vdm's CUDA kernels";
  c10::InferenceMode inference;
  at::manual_seed(8);
  // Token widths of the ModelScope UNet (320, 1280), a width in 16-byte packs, and an odd one.
  const std::vector<std::vector<int64_t>> shapes = {{4, 1024, 320}, {2, 37, 1280}, {5, 200}, {3, 7, 33}};
  for (const auto& shape : shapes) {
    for (const auto dtype : {at::kFloat, at::kHalf, at::kBFloat16}) {
      for (const bool affine : {true, false}) {
        const int64_t C = shape.back();
        const at::Tensor x = (at::randn(shape, at::TensorOptions().device(kCuda)) * 2 + 5).to(dtype);
        const at::Tensor w = affine ? at::randn({C}, x.options()) : at::Tensor();
        const at::Tensor b = affine ? at::randn({C}, x.options()) : at::Tensor();
        ASSERT_TRUE(layer_norm_cuda_applies(x, w, b));
        const at::Tensor out = layer_norm_cuda(x, w, b, 1e-5);
        const at::Tensor ref = at::layer_norm(x.to(at::kDouble), {C}, affine ? w.to(at::kDouble) : at::Tensor(),
                                              affine ? b.to(at::kDouble) : at::Tensor(), 1e-5);
        EXPECT_EQ(out.sizes(), x.sizes());
        const double tol = dtype == at::kFloat ? 1e-5 : dtype == at::kHalf ? 2e-3 : 1e-2;
        EXPECT_LT(relative_error(out, ref), tol) << "shape " << x.sizes() << " dtype " << dtype << " affine " << affine;
      }
    }
  }
  EXPECT_FALSE(layer_norm_cuda_applies(at::randn({2, 4000}, at::TensorOptions().device(kCuda)), {}, {}));
  // A contiguous view that starts one element into its storage cannot be read in 16-byte packs.
  const at::Tensor shifted = at::randn({4 * 320 + 1}, at::TensorOptions().device(kCuda)).narrow(0, 1, 4 * 320);
  EXPECT_FALSE(layer_norm_cuda_applies(shifted.view({4, 320}), {}, {}));
}

TEST(CudaGeglu, MatchesTorch) {
  if (skip_without_kernels()) GTEST_SKIP() << "no CUDA device, or a build without vdm's CUDA kernels";
  c10::InferenceMode inference;
  at::manual_seed(7);
  // The feed-forward of the ModelScope UNet's first level ([B*F, H*W, 2 * 1280]) and an odd width.
  for (const std::vector<int64_t>& shape : {std::vector<int64_t>{4, 256, 2560}, std::vector<int64_t>{3, 5, 14}}) {
    for (const auto dtype : {at::kFloat, at::kHalf, at::kBFloat16}) {
      const at::Tensor h = (at::randn(shape, at::TensorOptions().device(kCuda)) * 2).to(dtype);
      ASSERT_TRUE(geglu_cuda_applies(h));
      const at::Tensor out = geglu_cuda(h);
      const auto parts = h.to(at::kDouble).chunk(2, -1);
      const at::Tensor ref = parts[0] * at::gelu(parts[1]);
      EXPECT_EQ(out.sizes(), ref.sizes());
      EXPECT_EQ(out.scalar_type(), dtype);
      const double tol = dtype == at::kFloat ? 1e-6 : dtype == at::kHalf ? 1e-3 : 8e-3;
      EXPECT_LT(relative_error(out, ref), tol) << "shape " << h.sizes() << " dtype " << dtype;
    }
  }
  EXPECT_FALSE(geglu_cuda_applies(at::randn({4, 8}, at::TensorOptions().device(kCuda)).t()));
}

// Temporal attention's shapes: 16 frames, heads of 64 and 40, and narrow heads of 5, 10 and 20
// channels (one thread per row and head), q, k and v strided views of one projection [B, L, 3, H, D];
// against LibTorch's attention in float64.
TEST(CudaShortAttention, MatchesTorch) {
  if (skip_without_kernels()) GTEST_SKIP() << "no CUDA device, or a build without vdm's CUDA kernels";
  c10::InferenceMode inference;
  at::manual_seed(9);
  for (const auto dtype : {at::kFloat, at::kHalf, at::kBFloat16}) {
    for (const std::vector<int64_t>& s : {std::vector<int64_t>{512, 5, 16, 64}, std::vector<int64_t>{7, 3, 24, 40},
                                          std::vector<int64_t>{512, 64, 16, 5}, std::vector<int64_t>{128, 64, 16, 10},
                                          std::vector<int64_t>{32, 64, 16, 20}}) {
      const int64_t B = s[0], H = s[1], L = s[2], D = s[3];
      const at::Tensor qkv = at::randn({B, L, 3, H, D}, at::TensorOptions().device(kCuda)).to(dtype);
      const at::Tensor q = qkv.select(2, 0).transpose(1, 2), k = qkv.select(2, 1).transpose(1, 2),
                       v = qkv.select(2, 2).transpose(1, 2);
      ASSERT_TRUE(short_attention_cuda_applies(q, k, v, false));
      const at::Tensor out = short_attention_cuda(q, k, v);
      const at::Tensor scores =
          at::matmul(q.to(at::kDouble), k.to(at::kDouble).transpose(-2, -1)) / std::sqrt(double(D));
      const at::Tensor ref = at::matmul(at::softmax(scores, -1), v.to(at::kDouble));
      EXPECT_EQ(out.sizes(), ref.sizes());
      EXPECT_LT(relative_error(out, ref), dtype == at::kFloat ? 1e-5 : dtype == at::kHalf ? 2e-3 : 1e-2)
          << "shape " << q.sizes() << " dtype " << dtype;
    }
  }
  const at::Tensor long_keys = at::randn({2, 2, 65, 64}, at::TensorOptions().device(kCuda));
  EXPECT_FALSE(short_attention_cuda_applies(long_keys, long_keys, long_keys, false));
  const at::Tensor q = at::randn({2, 2, 16, 64}, at::TensorOptions().device(kCuda));
  EXPECT_FALSE(short_attention_cuda_applies(q, q, q, true));  // masks stay with LibTorch
}

// The whole UNet on CUDA (cuDNN convolutions; vdm's group norm, layer norm, GEGLU, short-attention
// and bias-residual kernels; in channels-last the convolution biases added by the next group norm or
// residual add), NCHW, channels-last and with fused q/k/v projections, against the same weights on
// the CPU, all float32 (TF32 off).
TEST(CudaUNet, MatchesTheCpuInBothLayouts) {
  if (skip_without_kernels()) GTEST_SKIP() << "no CUDA device, or a build without vdm's CUDA kernels";
  c10::InferenceMode inference;
  at::globalContext().setAllowTF32CuDNN(false);
  at::globalContext().setAllowTF32CuBLAS(false);
  at::manual_seed(6);
  UNet3DConditionModel unet(vdm::test::tiny_unet3d_config(32, 8, 32, 8));
  unet->eval();
  const at::Tensor x = at::randn({2, 4, 4, 16, 16}), t = at::full({1}, 400L), ehs = at::randn({2, 7, 32});
  const at::Tensor ref = unet->forward(x, t, ehs);
  unet->to(kCuda);
  const at::Tensor nchw = unet->forward(x.to(kCuda), t.to(kCuda), ehs.to(kCuda));
  unet->set_channels_last(true);
  const at::Tensor channels_last = unet->forward(x.to(kCuda), t.to(kCuda), ehs.to(kCuda));
  // As vdm generate runs on CUDA: self-attention's q, k and v from one product, strided views of it
  // into the attention kernels.
  EXPECT_GT(unet->fuse_qkv_projections(true), 0);
  const at::Tensor fused = unet->forward(x.to(kCuda), t.to(kCuda), ehs.to(kCuda));
  unet->set_channels_last(false);
  EXPECT_LT(relative_error(nchw, ref), 1e-4);
  EXPECT_LT(relative_error(channels_last, ref), 1e-4);
  EXPECT_LT(relative_error(channels_last, nchw), 1e-5);
  EXPECT_LT(relative_error(fused, channels_last), 1e-5);

  // The same step replayed as a CUDA graph: new inputs each call, as in the denoising loop, and a
  // new graph when the shapes change.
  unet->set_channels_last(true);
  vdm::pipelines::UNetGraph graph(unet);
  const auto cuda = at::TensorOptions().device(kCuda);
  for (const int64_t frames : {4, 4, 2}) {
    const at::Tensor xi = at::randn({2, 4, frames, 16, 16}, cuda), ti = at::full({}, 100L * frames, cuda.dtype(at::kLong));
    const at::Tensor ei = at::randn({2, 7, 32}, cuda);
    const at::Tensor replayed = graph(xi, ti, ei);
    EXPECT_LT(relative_error(replayed, unet->forward(xi, ti, ei)), 1e-6) << frames << " frames";
  }
  unet->set_channels_last(false);
  at::globalContext().setAllowTF32CuDNN(true);
}

}  // namespace
