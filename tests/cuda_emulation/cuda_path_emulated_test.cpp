// The UNet on the CPU through the code paths it takes on CUDA: with the CPU emulation's kernel table
// installed (models::install_cpu_kernel_table), CPU tensors take vdm's kernel paths as CUDA tensors
// do, so the channels-last network, the convolution biases left to the next group norm or residual
// add, the fused q/k/v projections and the short-sequence attention on their strided views all run
// here, on vdm's kernels compiled for the CPU, against the plain CPU network.
#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "models/cuda_kernels.h"
#include "models/cuda_ops.h"
#include "models/autoencoder_kl.h"
#include "models/unet_3d_condition.h"
#include "temporal/temporal_conv.h"
#include "tests/support/test_support.h"

namespace vdm::models::cuda_emulated {
const cuda::KernelTable& kernel_table();  // tests/cuda_emulation, built with VDM_CUDA_EMULATION
}

namespace {

using namespace vdm::models;

std::map<std::string, int>& calls() {
  static std::map<std::string, int> counts;
  return counts;
}

const cuda::KernelTable& emulated() { return cuda_emulated::kernel_table(); }

// The emulation's kernels, each counting its calls.
void group_norm_nhwc(const cuda::GroupNormNhwcShape& s, cuda::DType d, const void* x, const void* add, const void* g,
                     const void* b, double eps, bool silu, void* y, float* ws, void* st) {
  ++calls()["group_norm"];
  emulated().group_norm_nhwc(s, d, x, add, g, b, eps, silu, y, ws, st);
}
void layer_norm_rows(cuda::DType d, const void* x, const void* r, const void* g, const void* b, int64_t rows,
                     int64_t c, double eps, void* sum, void* y, void* st) {
  ++calls()[r ? "add_layer_norm" : "layer_norm"];
  emulated().layer_norm_rows(d, x, r, g, b, rows, c, eps, sum, y, st);
}
void geglu(cuda::DType d, const void* h, void* out, int64_t rows, int64_t inner, void* st) {
  ++calls()["geglu"];
  emulated().geglu(d, h, out, rows, inner, st);
}
void bias_residual(cuda::DType d, const void* x, const void* b, const void* r, int64_t rows, int64_t c, double scale,
                   void* y, void* st) {
  ++calls()["bias_residual"];
  emulated().bias_residual(d, x, b, r, rows, c, scale, y, st);
}
void short_attention(const cuda::ShortAttentionShape& s, cuda::DType d, const void* q, const void* k, const void* v,
                     double scale, void* out, void* st) {
  ++calls()["short_attention"];
  emulated().short_attention(s, d, q, k, v, scale, out, st);
}

cuda::KernelTable counting_table() {
  cuda::KernelTable t = emulated();
  t.group_norm_nhwc = group_norm_nhwc;
  t.layer_norm_rows = layer_norm_rows;
  t.geglu = geglu;
  t.bias_residual = bias_residual;
  t.short_attention = short_attention;
  return t;
}

// Counts LibTorch's 2-D and 3-D convolution calls on this thread as "conv2d" and "conv3d".
std::unique_ptr<at::ObserverContext> count_convolutions(const at::RecordFunction& fn) {
  const std::string name = fn.name();
  if (name == "aten::conv2d" || name == "aten::conv3d") ++calls()[name.substr(6)];
  return nullptr;
}

// Installs the counting table for the scope, and counts the convolutions.
class EmulatedKernelScope {
 public:
  EmulatedKernelScope()
      : table_(counting_table()), convolutions_(at::addThreadLocalCallback(at::RecordFunctionCallback(count_convolutions))) {
    calls().clear();
    install_cpu_kernel_table(&table_);
  }
  ~EmulatedKernelScope() {
    install_cpu_kernel_table(nullptr);
    at::removeCallback(convolutions_);
  }

 private:
  cuda::KernelTable table_;
  at::CallbackHandle convolutions_;
};

double relative_error(const at::Tensor& out, const at::Tensor& ref) {
  return (out.to(at::kDouble) - ref.to(at::kDouble)).norm().item<double>() / ref.to(at::kDouble).norm().item<double>();
}

TEST(CudaPathOnTheCpu, UNetMatchesThePlainCpuNetwork) {
  at::manual_seed(21);
  // The default model's widths: heads of 4 channels (8 and 16 of them), transformer_in's 8 heads of 4.
  UNet3DConditionModel unet(vdm::test::tiny_unet3d_config(32, 8, 32, 4));
  unet->eval();
  vdm::test::perturb(*unet);
  c10::InferenceMode inference;
  const at::Tensor x = at::randn({2, 4, 4, 16, 16}), t = at::full({1}, 400L), ehs = at::randn({2, 7, 32});
  const at::Tensor ref = unet->forward(x, t, ehs);
  EXPECT_FALSE(device_kernels_take(x));

  EmulatedKernelScope scope;
  ASSERT_TRUE(device_kernels_take(x));
  // NCHW: the layer norms, GEGLU and the temporal attention take vdm's kernels; the group norms
  // (channels-last only) and the biases stay with LibTorch.
  const at::Tensor nchw = unet->forward(x, t, ehs);
  EXPECT_LT(relative_error(nchw, ref), 1e-5);
  EXPECT_GT(calls()["layer_norm"], 0);
  EXPECT_GT(calls()["geglu"], 0);
  EXPECT_GT(calls()["short_attention"], 0);
  EXPECT_EQ(calls()["group_norm"], 0);
  EXPECT_EQ(calls()["bias_residual"], 0);

  // As vdm generate runs on CUDA: channels-last, every group norm on vdm's kernel with the
  // convolution biases and time embeddings it adds, the ResNet and temporal convolution ends in one
  // pass, q/k/v from one product.
  calls().clear();
  unet->set_channels_last(true);
  ASSERT_GT(unet->fuse_qkv_projections(true), 0);
  const at::Tensor cuda_path = unet->forward(x, t, ehs);
  EXPECT_LT(relative_error(cuda_path, ref), 1e-5);
  for (const char* kernel : {"group_norm", "layer_norm", "add_layer_norm", "geglu", "short_attention", "bias_residual"})
    EXPECT_GT(calls()[kernel], 0) << kernel << " did not run";
  // Every attention over at most 64 keys, on heads of 4 channels (the narrow-head path): the 5
  // temporal transformers' 10 (two self-attentions each: transformer_in, down, mid, 2 up), the 4
  // cross-attentions (7 text tokens) and the middle block's self-attention (8x8 positions).
  EXPECT_EQ(calls()["short_attention"], 15);

  // The same in bfloat16 (16-bit types are what the GPU runs): every kernel still takes its part (an
  // added term or a parameter of another dtype would send it back to LibTorch without a word).
  calls().clear();
  unet->to(at::kBFloat16);
  unet->set_channels_last(true);  // again after the conversion, as the pipeline does
  ASSERT_GT(unet->fuse_qkv_projections(true), 0);
  const at::Tensor bf16 = unet->forward(x.to(at::kBFloat16), t, ehs.to(at::kBFloat16));
  EXPECT_EQ(bf16.scalar_type(), at::kBFloat16);
  EXPECT_LT(relative_error(bf16, ref), 3e-2);
  for (const char* kernel : {"group_norm", "layer_norm", "add_layer_norm", "geglu", "short_attention", "bias_residual"})
    EXPECT_GT(calls()[kernel], 0) << kernel << " did not run in bfloat16";
}

// Frame windows (--context-frames) on the path the GPU runs: channels-last activations leave the
// in-place frame attention for the windowed blocks, whose attentions still take the short-sequence
// kernel, and the result is the plain CPU network's with the same windows.
TEST(CudaPathOnTheCpu, FrameWindowsMatchThePlainCpuNetwork) {
  at::manual_seed(22);
  UNet3DConditionModel unet(vdm::test::tiny_unet3d_config(32, 8, 32, 4));
  unet->eval();
  vdm::test::perturb(*unet);
  c10::InferenceMode inference;
  vdm::temporal::FrameWindows windows;
  windows.length = 4;
  windows.stride = 2;
  ASSERT_GT(unet->set_frame_windows(windows), 0);
  const at::Tensor x = at::randn({1, 4, 7, 8, 8}), t = at::full({1}, 400L), ehs = at::randn({1, 7, 32});
  const at::Tensor ref = unet->forward(x, t, ehs);
  EmulatedKernelScope scope;
  unet->set_channels_last(true);
  ASSERT_GT(unet->fuse_qkv_projections(true), 0);
  const at::Tensor cuda_path = unet->forward(x, t, ehs);
  EXPECT_LT(relative_error(cuda_path, ref), 1e-5);
  EXPECT_GT(calls()["short_attention"], 0);
  unet->set_frame_windows({});
  EXPECT_GT(relative_error(unet->forward(x, t, ehs), ref), 1e-4);  // the windows made a difference
}

// The ModelScope 1.7B UNet's topology with fewer channels: four levels of two layers (three up),
// heads of 64 channels as there (diffusers reads attention_head_dim as the head width of the blocks:
// here 1, 2 and 4 heads), transformer_in's 8 heads, 77 text tokens. The tiny UNet above has heads of
// 4 and 8 channels and two levels; what the GPU step runs is decided by the real widths and depth.
TEST(CudaPathOnTheCpu, ModelScopeShapedUNetTakesEveryKernelPath) {
  at::manual_seed(23);
  UNet3DConditionConfig c;
  c.down_block_types = {"CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"};
  c.up_block_types = {"UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"};
  c.block_out_channels = {64, 128, 256, 256};
  c.layers_per_block = 2;
  c.norm_num_groups = 8;
  c.cross_attention_dim = 32;
  c.attention_head_dim = {64, 64, 64, 64};
  UNet3DConditionModel unet(c);
  unet->eval();
  vdm::test::perturb(*unet);
  c10::InferenceMode inference;
  // 16x16 latents: levels of 16x16, 8x8, 4x4 and 2x2 positions; 77 text tokens.
  const at::Tensor x = at::randn({2, 4, 4, 16, 16}), t = at::full({1}, 400L), ehs = at::randn({2, 77, 32});
  const at::Tensor ref = unet->forward(x, t, ehs);

  EmulatedKernelScope scope;
  unet->set_channels_last(true);
  ASSERT_GT(unet->fuse_qkv_projections(true), 0);
  const at::Tensor out = unet->forward(x, t, ehs);
  EXPECT_LT(relative_error(out, ref), 1e-5);
  // 22 ResNet blocks (8 down, 2 middle, 12 up), each followed by a temporal convolution layer of 4
  // convolutions; 16 spatial transformers (6 down, 1 middle, 9 up) and 17 temporal ones (the same
  // and transformer_in), one block each.
  // Group norms: two per ResNet, one per temporal convolution, a transformer's input norm, and
  // conv_norm_out.
  EXPECT_EQ(calls()["group_norm"], 22 * 2 + 22 * 4 + 16 + 17 + 1);
  EXPECT_EQ(calls()["bias_residual"], 22 * 2);                    // ResNet and temporal convolution ends
  EXPECT_EQ(calls()["add_layer_norm"], 33 * 2);                   // norm2, norm3 of every block
  EXPECT_EQ(calls()["layer_norm"], 33);                           // norm1
  EXPECT_EQ(calls()["geglu"], 33);
  // Every attention over at most 64 keys: the temporal transformers' 34 (two self-attentions each,
  // over 4 frames) and the spatial self-attentions over 64, 16 and 4 positions (5 at 8x8, 5 at 4x4,
  // the middle block's at 2x2). Left to SDPA: the 5 over 256 positions and the 16 cross-attentions
  // over 77 tokens.
  EXPECT_EQ(calls()["short_attention"], 34 + 11);
  // The temporal convolutions on channels-last frames as (3, 1) 2-D convolutions, unless
  // VDM_TEMPORAL_CONV=conv3d.
  // The other 2-D ones: conv_in, the ResNets' 44 and 14 shortcuts (2 down, 12 up), 3 downsamplers,
  // the 128-channel upsampler (the CPU takes the transposed form from 256 channels) and conv_out.
  const bool as_2d = vdm::temporal::temporal_conv_as_2d();
  EXPECT_EQ(calls()["conv3d"], as_2d ? 0 : 22 * 4);
  EXPECT_EQ(calls()["conv2d"], 1 + 44 + 14 + 3 + 1 + 1 + (as_2d ? 22 * 4 : 0));
}

// The VAE as vdm generate runs it on CUDA: channels-last, its group norms on vdm's kernel taking the
// convolution biases, its ResNet ends in one pass; encode and decode against the plain CPU network,
// their outputs in the ordinary layout.
TEST(CudaPathOnTheCpu, VaeChannelsLastMatchesThePlainCpuNetwork) {
  at::manual_seed(31);
  AutoencoderKL vae(vdm::test::tiny_vae_config(32, 8));
  vae->eval();
  vdm::test::perturb(*vae);
  c10::InferenceMode inference;
  const at::Tensor z = at::randn({3, 4, 8, 8}), img = at::rand({2, 3, 16, 16}) * 2 - 1;
  const at::Tensor ref_decoded = vae->decode(z), ref_mean = vae->encode(img).mean;

  EmulatedKernelScope scope;
  vae->set_channels_last(true);
  const at::Tensor decoded = vae->decode(z);
  EXPECT_TRUE(decoded.is_contiguous());
  EXPECT_LT(relative_error(decoded, ref_decoded), 1e-5);
  // Decoder: the middle block's 2 ResNets and attention, 2 up blocks of 2 ResNets, conv_norm_out.
  EXPECT_EQ(calls()["group_norm"], 2 * 2 + 1 + 2 * 2 * 2 + 1);
  EXPECT_EQ(calls()["bias_residual"], 2 + 2 * 2);
  calls().clear();
  const at::Tensor mean = vae->encode(img).mean;
  EXPECT_EQ(mean.strides(), ref_mean.strides());  // the NCHW layout callers get without it
  EXPECT_LT(relative_error(mean, ref_mean), 1e-5);
  EXPECT_GT(calls()["group_norm"], 0);
  // Back to NCHW: every convolution weight contiguous again.
  vae->set_channels_last(false);
  for (const auto& p : vae->named_parameters()) {
    if (p.value().dim() == 4) {
      EXPECT_TRUE(p.value().is_contiguous()) << p.key();
    }
  }
}

// A kernel turned off by name leaves its operation to LibTorch (VDM_DISABLE_CUDA_KERNELS is read
// once per process, so this checks the table's absence instead): with no table installed the CPU
// takes none of the kernel paths.
TEST(CudaPathOnTheCpu, NothingTakesTheKernelPathsWithoutATable) {
  const at::Tensor x = at::randn({2, 8, 4, 4}).contiguous(at::MemoryFormat::ChannelsLast);
  EXPECT_FALSE(device_kernels_take(x));
  EXPECT_FALSE(norm_takes_conv_bias(x));
  EXPECT_FALSE(residual_takes_conv_bias(x));
  EXPECT_FALSE(group_norm_nhwc_applies(x, {}, {}));
  EmulatedKernelScope scope;
  EXPECT_TRUE(norm_takes_conv_bias(x));
  EXPECT_TRUE(residual_takes_conv_bias(x));
  EXPECT_TRUE(group_norm_nhwc_applies(x, {}, {}));
  // Tensors that need a gradient (training) never take them.
  EXPECT_FALSE(group_norm_nhwc_applies(x.clone().requires_grad_(), {}, {}));
}

}  // namespace
