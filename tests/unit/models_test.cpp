// Model building blocks without the reference fixtures: the attention function against the naive
// formula, strict loading errors, older VAE attention names, save/load round trips, UNet3D
// shape handling, and the parameter count of the ModelScope text-to-video 1.7B configs.
#include <ATen/ATen.h>
#include <c10/core/DefaultDtype.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <string>

#include "core/error.h"
#include "core/runtime.h"
#include "train/precision.h"
#include "io/atomic_file.h"
#include "io/tensor_io.h"
#include "models/activations_cpu.h"
#include "models/attention.h"
#include "models/attention_cpu.h"
#include "models/cuda_ops.h"
#include "models/layout_cpu.h"
#include "models/autoencoder_kl.h"
#include "models/linear.h"
#include "models/linear_onednn.h"
#include "models/normalization.h"
#include "models/normalization_cpu.h"
#include "models/resnet.h"
#include "models/unet_3d_condition.h"
#include "temporal/temporal_conv.h"
#include "tests/support/test_support.h"

namespace {

namespace fs = std::filesystem;
using namespace vdm::models;
using vdm::test::max_abs_diff;

// ---- attention ------------------------------------------------------------------------------

at::Tensor naive_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask = {}) {
  at::Tensor s = at::matmul(q.to(at::kDouble), k.to(at::kDouble).transpose(-2, -1)) / std::sqrt(double(q.size(-1)));
  if (mask.defined()) {
    if (mask.scalar_type() == at::kBool)
      s = s.masked_fill(mask.logical_not(), -INFINITY);
    else
      s = s + mask.to(at::kDouble);
  }
  return at::matmul(at::softmax(s, -1), v.to(at::kDouble));
}

struct AttnShape {
  int64_t B, H, Lq, Lk, D;
};

TEST(Attention, MatchesNaiveFormula) {
  at::manual_seed(1);
  for (const AttnShape& s : {AttnShape{1, 1, 1, 1, 8}, AttnShape{2, 3, 5, 7, 16}, AttnShape{4, 5, 16, 16, 64},
                             AttnShape{1, 2, 300, 77, 40}, AttnShape{64, 8, 4, 4, 8}}) {
    at::Tensor q = at::randn({s.B, s.H, s.Lq, s.D}), k = at::randn({s.B, s.H, s.Lk, s.D}),
               v = at::randn({s.B, s.H, s.Lk, s.D});
    const at::Tensor ref = naive_attention(q, k, v);
    EXPECT_LT(max_abs_diff(vdm::models::scaled_dot_product_attention(q, k, v), ref), 1e-5) << s.B << "x" << s.H << "x" << s.Lq;
    // Budgets that force chunking over batch, over heads, and over queries.
    for (int64_t budget : {s.H * s.Lq * s.Lk * 2, s.Lq * s.Lk * 2, s.Lk * 3, int64_t(1)}) {
      at::Tensor out = scaled_dot_product_attention_chunked(q, k, v, {}, budget);
      EXPECT_LT(max_abs_diff(out, ref), 1e-5) << "budget " << budget;
    }
  }
}

// The fused CPU kernel: partial row blocks, value widths other than the key width, one key, widths
// up to its maximum, large score ranges (the exp2 clamp) and when it applies.
// vdm's own kernels split their work with at::parallel_for, which runs in parallel only in code
// compiled with OpenMP: with it every LibTorch thread takes a share.
TEST(Runtime, ParallelForInVdmUsesEveryThread) {
  const int before = at::get_num_threads();
  at::set_num_threads(2);
#if defined(VDM_WITH_OPENMP)
  EXPECT_EQ(vdm::parallel_for_threads(), 2);
#else
  EXPECT_EQ(vdm::parallel_for_threads(), 1);
#endif
  at::set_num_threads(before);
}

TEST(Attention, FusedCpuKernelMatchesNaiveFormula) {
  at::manual_seed(3);
  struct Case {
    int64_t B, H, Lq, Lk, D, Dv;
    double spread;
  };
  for (const Case& c : {Case{1, 1, 1, 1, 4, 4, 1}, Case{2, 8, 1023, 77, 4, 4, 1}, Case{2, 3, 6, 9, 5, 3, 1},
                        Case{1, 2, 130, 257, 16, 16, 1}, Case{1, 1, 9, 300, 64, 64, 1}, Case{3, 1, 17, 16, 8, 40, 1}, Case{1, 2, 33, 50, 8, 8, 40},
                        // short key sequences around the lane layout's limit, wide heads there
                        Case{2, 3, 16, 16, 40, 40, 1}, Case{1, 2, 20, 128, 8, 8, 1}, Case{1, 1, 5, 129, 4, 4, 1},
                        Case{1, 1, 3, 2, 128, 72, 1}}) {
    at::Tensor q = at::randn({c.B, c.H, c.Lq, c.D}) * c.spread, k = at::randn({c.B, c.H, c.Lk, c.D}),
               v = at::randn({c.B, c.H, c.Lk, c.Dv});
    at::Tensor out = fused_attention_cpu(q, k, v);
    ASSERT_EQ(out.sizes(), (std::vector<int64_t>{c.B, c.H, c.Lq, c.Dv}));
    EXPECT_LT(max_abs_diff(out, naive_attention(q, k, v)), 2e-6 * std::max(1.0, c.spread))
        << c.B << "x" << c.H << "x" << c.Lq << "x" << c.Lk << " d " << c.D << "/" << c.Dv;
  }
  // Strided inputs (heads split from a projection) give the same result as contiguous ones.
  at::Tensor qkv = at::randn({2, 64, 3 * 32});
  auto heads = [](const at::Tensor& x) { return x.view({2, 64, 8, 4}).transpose(1, 2); };
  at::Tensor q = heads(qkv.slice(2, 0, 32)), k = heads(qkv.slice(2, 32, 64)), v = heads(qkv.slice(2, 64, 96));
  EXPECT_LT(max_abs_diff(fused_attention_cpu(q, k, v), naive_attention(q, k, v)), 2e-6);

  // bfloat16 inputs: the result is bfloat16 and matches the float32 formula on the same (rounded)
  // inputs to within bfloat16's rounding of the output (8 bits of mantissa: 2^-8 relative).
  {
    at::Tensor qb = at::randn({2, 4, 300, 4}).to(at::kBFloat16), kb = at::randn({2, 4, 77, 4}).to(at::kBFloat16),
               vb = at::randn({2, 4, 77, 4}).to(at::kBFloat16);
    at::Tensor out = fused_attention_cpu(qb, kb, vb);
    EXPECT_EQ(out.scalar_type(), at::kBFloat16);
    at::Tensor ref = naive_attention(qb.to(at::kFloat), kb.to(at::kFloat), vb.to(at::kFloat));
    EXPECT_LT(max_abs_diff(out.to(at::kFloat), ref), 1e-2);
    EXPECT_TRUE(fused_attention_cpu_applies(qb, kb, vb, false));
    EXPECT_FALSE(fused_attention_cpu_applies(qb, kb.to(at::kFloat), vb, false));  // mixed dtypes
  }
  // bfloat16 read in place, heads split from one projection, against float64 on the same bfloat16
  // inputs to within the output's rounding (and, over long key sequences on CPUs with AVX512-BF16,
  // the weights' rounding: there the products take bfloat16 pairs). Long sequences: every head size
  // with its own instance and one without, key counts off the 32-key padding, partial row blocks;
  // large scores (spread) check the maximum's scaling. Short sequences (keys and values widened per
  // sequence inside the kernel): head sizes taking 16-, 8-, 4-lane and single widening steps.
  for (const Case& c : {Case{2, 8, 301, 1000, 4, 4, 1}, Case{1, 2, 70, 129, 8, 8, 4}, Case{1, 3, 33, 200, 16, 16, 1},
                        Case{1, 2, 9, 150, 16, 4, 1}, Case{1, 2, 10, 170, 4, 16, 1}, Case{1, 1, 5, 140, 6, 6, 1},
                        Case{2, 4, 40, 16, 8, 8, 1}, Case{1, 3, 20, 77, 5, 3, 1}, Case{1, 2, 17, 9, 40, 40, 2}}) {
    at::Tensor proj = at::randn({c.B, c.Lk, c.H * (2 * c.D + c.Dv)}).to(at::kBFloat16);
    auto heads = [&](int64_t from, int64_t width) {
      return proj.narrow(2, from, c.H * width).view({c.B, c.Lk, c.H, width}).transpose(1, 2);
    };
    const at::Tensor k = heads(c.H * c.D, c.D), v = heads(2 * c.H * c.D, c.Dv);
    const at::Tensor q = (at::randn({c.B, c.H, c.Lq, c.D}) * c.spread).to(at::kBFloat16);
    const at::Tensor out = fused_attention_cpu(q, k, v);
    ASSERT_EQ(out.scalar_type(), at::kBFloat16);
    ASSERT_EQ(out.sizes(), (std::vector<int64_t>{c.B, c.H, c.Lq, c.Dv}));
    const at::Tensor ref = naive_attention(q, k, v);
    EXPECT_LT(max_abs_diff(out.to(at::kDouble), ref), 1e-2)
        << c.B << "x" << c.H << "x" << c.Lq << "x" << c.Lk << " d " << c.D << "/" << c.Dv;
  }
  std::cout << "bfloat16 pair products: " << (fused_attention_cpu_bf16_pairs() ? "yes" : "no") << "\n";

  // The kernel build in use is no wider than VDM_CPU_ISA allows (ctest runs this test under each
  // cap; a CPU without AVX2 runs the baseline under any).
  const char* isa = std::getenv("VDM_CPU_ISA");
  const std::string used = fused_attention_cpu_isa();
  if (isa && std::string(isa) == "baseline") {
    EXPECT_EQ(used, "baseline");
  } else if (isa && std::string(isa) == "avx2") {
    EXPECT_NE(used, "avx512");
  }
  std::cout << "fused attention kernel: " << fused_attention_cpu_isa() << "\n";

  at::Tensor a = at::randn({1, 1, 4, 8});
  EXPECT_TRUE(fused_attention_cpu_applies(a, a, a, false));
  EXPECT_FALSE(fused_attention_cpu_applies(a.to(at::kHalf), a.to(at::kHalf), a.to(at::kHalf), false));
  EXPECT_FALSE(fused_attention_cpu_applies(a, a, a, true));
  EXPECT_FALSE(fused_attention_cpu_applies(a.to(at::kDouble), a, a, false));
  // Wider heads take the kernel only over short key sequences (queries in the vector lanes).
  at::Tensor wide = at::randn({1, 1, kFusedAttentionShortKeys + 1, kFusedAttentionMaxHeadDim + 1});
  EXPECT_FALSE(fused_attention_cpu_applies(wide, wide, wide, false));
  at::Tensor wide_short = wide.narrow(2, 0, kFusedAttentionShortKeys);
  EXPECT_TRUE(fused_attention_cpu_applies(wide_short, wide_short, wide_short, false));
  at::Tensor wider = at::randn({1, 1, 4, kFusedAttentionShortMaxHeadDim + 1});
  EXPECT_FALSE(fused_attention_cpu_applies(wider, wider, wider, false));
  at::Tensor g = a.clone().requires_grad_(true);
  EXPECT_FALSE(fused_attention_cpu_applies(g, a, a, false));  // training keeps the autograd path
  {
    at::NoGradGuard no_grad;
    EXPECT_TRUE(fused_attention_cpu_applies(g, a, a, false));
  }
}

// The fused GELU and GEGLU kernels against LibTorch's exact GELU: widths with and without a
// vector tail, large and small inputs (erf saturates at both ends), bfloat16, and when they apply.
TEST(Activations, FusedGeluMatchesExactGelu) {
  at::manual_seed(7);
  for (int64_t W : {1, 7, 16, 40, 128, 257}) {
    at::Tensor x = at::randn({3, 5, W}) * 4;
    x.view(-1)[0] = 0.0f;
    if (x.numel() > 2) x.view(-1)[1] = -30.0f, x.view(-1)[2] = 30.0f;
    if (x.numel() > 4) x.view(-1)[3] = -1e20f, x.view(-1)[4] = 1e20f;  // z * z overflows float
    EXPECT_LT(max_abs_diff(fused_gelu_cpu(x), at::gelu(x)), 2e-6) << "width " << W;
    at::Tensor h = at::randn({3, 5, 2 * W}) * 4;
    auto parts = h.chunk(2, -1);
    EXPECT_LT(max_abs_diff(fused_geglu_cpu(h), parts[0] * at::gelu(parts[1])), 1e-5) << "width " << W;
  }
  // A strided input (a slice) is read as its values.
  at::Tensor wide = at::randn({4, 64});
  at::Tensor slice = wide.slice(1, 8, 40);
  EXPECT_LT(max_abs_diff(fused_gelu_cpu(slice), at::gelu(slice)), 2e-6);

  at::Tensor xb = (at::randn({2, 300}) * 3).to(at::kBFloat16);
  at::Tensor yb = fused_gelu_cpu(xb);
  EXPECT_EQ(yb.scalar_type(), at::kBFloat16);
  // Within bfloat16's rounding (8 bits of mantissa) of the float32 GELU of the same inputs.
  at::Tensor ref = at::gelu(xb.to(at::kFloat));
  EXPECT_TRUE(((yb.to(at::kFloat) - ref).abs() <= ref.abs() * (1.0 / 256) + 1e-6).all().item<bool>());
  at::Tensor hb = (at::randn({2, 7, 2 * 40}) * 3).to(at::kBFloat16);  // 40: two vectors of 16 and a tail
  at::Tensor gb = fused_geglu_cpu(hb);
  EXPECT_EQ(gb.scalar_type(), at::kBFloat16);
  auto hp = hb.to(at::kFloat).chunk(2, -1);
  at::Tensor gref = hp[0] * at::gelu(hp[1]);
  EXPECT_TRUE(((gb.to(at::kFloat) - gref).abs() <= gref.abs() * (1.0 / 256) + 1e-6).all().item<bool>());

  EXPECT_TRUE(fused_gelu_cpu_applies(xb));
  EXPECT_FALSE(fused_gelu_cpu_applies(xb.to(at::kDouble)));
  at::Tensor g = at::randn({4}).requires_grad_(true);
  EXPECT_FALSE(fused_gelu_cpu_applies(g));  // training keeps the autograd path
  EXPECT_THROW(fused_geglu_cpu(at::randn({2, 5})), c10::Error);
}

// FeedForward with GEGLU in inference runs in tiles of tokens (on parallel threads when the
// tokens make several tiles); the result is the layer-by-layer formula's, for a token count that
// leaves a partial last tile, in float32 and bfloat16, and training keeps the autograd path.
TEST(FeedForward, TiledInferenceMatchesLayerByLayer) {
  at::manual_seed(11);
  FeedForwardOptions o;
  o.dim = 32;
  FeedForward ff(o);
  ff->eval();
  auto reference = [&](const at::Tensor& x) {
    const auto& p = ff->named_parameters();
    auto parts = at::linear(x, p["net.0.proj.weight"], p["net.0.proj.bias"]).chunk(2, -1);
    return at::linear(parts[0] * at::gelu(parts[1]), p["net.2.weight"], p["net.2.bias"]);
  };
  const at::Tensor x = at::randn({2, 3001, 32});
  at::Tensor want = reference(x).detach();
  ff->train();
  at::Tensor trained = ff->forward(x);
  EXPECT_TRUE(trained.requires_grad());
  EXPECT_LT(max_abs_diff(trained.detach(), want), 1e-5);
  ff->eval();
  c10::InferenceMode guard;
  at::Tensor got = ff->forward(x);
  ASSERT_EQ(got.sizes(), x.sizes());
  EXPECT_LT(max_abs_diff(got, want), 1e-5);
  ff->to(at::kBFloat16);
  at::Tensor got_bf16 = ff->forward(x.to(at::kBFloat16));
  EXPECT_EQ(got_bf16.scalar_type(), at::kBFloat16);
  EXPECT_LT(max_abs_diff(got_bf16.to(at::kFloat), want), 0.05 * want.abs().max().item<double>());
}

// The residual stream's in-place adds (CPU inference): Linear, Attention and FeedForward
// forward_add_to give acc + forward(x) in acc's own memory, float32 and bfloat16, through oneDNN's
// sum post-op where it applies (a contiguous acc; the tiled feed-forward with several tiles) and
// through add_ elsewhere (a strided acc, few rows); a wrong shape is an error, not a broadcast.
TEST(Linear, ForwardAddToAddsInPlace) {
  at::manual_seed(13);
  c10::InferenceMode guard;
  Linear lin(torch::nn::LinearOptions(32, 48));
  AttentionOptions ao;
  ao.query_dim = 32;
  ao.heads = 4;
  ao.dim_head = 8;
  ao.cross_attention_dim = 16;
  Attention cross(ao);
  ao.cross_attention_dim = c10::nullopt;
  Attention self(ao);
  FeedForwardOptions fo;
  fo.dim = 32;
  FeedForward ff(fo);
  ff->eval();
  for (const auto dtype : {at::kFloat, at::kBFloat16}) {
    for (torch::nn::Module* m : std::initializer_list<torch::nn::Module*>{lin.get(), cross.get(), self.get(), ff.get()})
      m->to(dtype);
    const double tol = dtype == at::kFloat ? 1e-5 : 0.05;
    auto check = [&](const at::Tensor& want, at::Tensor acc, const std::function<at::Tensor(at::Tensor&)>& add) {
      const void* memory = acc.data_ptr();
      const at::Tensor got = add(acc);
      EXPECT_EQ(got.data_ptr(), memory);
      EXPECT_EQ(acc.data_ptr(), memory);
      EXPECT_LT(max_abs_diff(acc, want), tol * std::max(1.0, want.abs().max().item<double>())) << dtype;
    };
    const at::Tensor x = at::randn({2, 700, 32}).to(dtype), ctx = at::randn({2, 5, 16}).to(dtype);
    const at::Tensor acc48 = at::randn({2, 700, 48}).to(dtype), acc32 = at::randn({2, 700, 32}).to(dtype);
    check(acc48 + lin->forward(x), acc48.clone(), [&](at::Tensor& a) { return lin->forward_add_to(x, a); });
    const at::Tensor strided = at::randn({2, 700, 96}).to(dtype).narrow(2, 0, 48);
    check(strided + lin->forward(x), strided.clone(), [&](at::Tensor& a) { return lin->forward_add_to(x, a); });
    check(acc32 + self->forward(x), acc32.clone(), [&](at::Tensor& a) { return self->forward_add_to(a, x); });
    check(acc32 + cross->forward(x, ctx), acc32.clone(),
          [&](at::Tensor& a) { return cross->forward_add_to(a, x, ctx); });
    const at::Tensor many = at::randn({3, 1500, 32}).to(dtype), acc_many = at::randn({3, 1500, 32}).to(dtype);
    check(acc_many + ff->forward(many), acc_many.clone(), [&](at::Tensor& a) { return ff->forward_add_to(many, a); });
    check(acc32 + ff->forward(x), acc32.clone(), [&](at::Tensor& a) { return ff->forward_add_to(x, a); });
    at::Tensor wrong = at::zeros({2, 1, 48}, dtype);
    EXPECT_THROW(lin->forward_add_to(x, wrong), vdm::Error);
    EXPECT_THROW(ff->forward_add_to(x, wrong), vdm::Error);
  }
}

// A transformer block's output is the same with the residual stream added in place (inference)
// as on the plain path (grad mode on, as in training), with and without attn2.
TEST(Attention, BlockWithInPlaceResidualsMatchesThePlainPath) {
  at::manual_seed(14);
  for (bool cross : {true, false}) {
    TransformerBlockOptions o;
    o.dim = 32;
    o.num_attention_heads = 4;
    o.attention_head_dim = 8;
    if (cross) o.cross_attention_dim = 16;
    BasicTransformerBlock block(o);
    block->eval();
    vdm::test::perturb(*block);
    const at::Tensor x = at::randn({2, 1100, 32}), ctx = at::randn({2, 5, 16});
    const at::Tensor context = cross ? ctx : at::Tensor();
    const at::Tensor plain = block->forward(x, context).detach();
    c10::InferenceMode guard;
    const at::Tensor x_before = x.clone();
    EXPECT_LT(max_abs_diff(block->forward(x, context), plain), 1e-5) << cross;
    EXPECT_TRUE(at::equal(x, x_before));  // the block's input is never written
  }
}

// vdm's Linear: torch::nn's parameters; float32 CPU inference through oneDNN gives torch::nn's
// result to float32 rounding for 2-D and 4-D inputs, with and without bias; training keeps autograd.
TEST(Linear, OneDnnInferenceMatchesTorchLinear) {
  at::manual_seed(8);
  for (bool bias : {true, false}) {
    Linear lin(torch::nn::LinearOptions(32, 48).bias(bias));
    torch::nn::Linear ref(torch::nn::LinearOptions(32, 48).bias(bias));
    {
      at::NoGradGuard no_grad;
      ref->weight.copy_(lin->weight);
      if (bias) ref->bias.copy_(lin->bias);
    }
    std::vector<std::string> names;
    for (const auto& p : lin->named_parameters()) names.push_back(p.key());
    EXPECT_EQ(names, bias ? (std::vector<std::string>{"weight", "bias"}) : (std::vector<std::string>{"weight"}));
    for (const auto& shape : {std::vector<int64_t>{300, 32}, std::vector<int64_t>{2, 3, 50, 32}}) {
      at::Tensor x = at::randn(shape);
      at::Tensor want = ref->forward(x).detach();
      {
        c10::InferenceMode inference;
        EXPECT_TRUE(linear_uses_onednn(x) || !at::hasMKLDNN());
        at::Tensor got = lin->forward(x);
        ASSERT_EQ(got.sizes(), want.sizes());
        EXPECT_LT(max_abs_diff(got, want), 1e-5);
      }
      // A strided input (a transposed view) is read as its values.
      at::Tensor xt = at::randn({32, 40}).t();
      c10::InferenceMode inference;
      EXPECT_LT(max_abs_diff(lin->forward(xt), ref->forward(xt)), 1e-5);
    }
  }
  // Training: the gradient reaches the weight.
  Linear lin(torch::nn::LinearOptions(8, 4));
  at::Tensor x = at::randn({5, 8});
  lin->forward(x).sum().backward();
  ASSERT_TRUE(lin->weight.grad().defined());
  EXPECT_GT(lin->weight.grad().abs().sum().item<double>(), 0.0);
  EXPECT_EQ(linear_uses_onednn(x.to(at::kBFloat16)), onednn_linear_available() && at::hasMKLDNN());
  EXPECT_FALSE(linear_uses_onednn(x.to(at::kDouble)));
  // bfloat16 inference: torch::nn's bfloat16 result within a bfloat16 step of the largest value.
  c10::InferenceMode inference;
  Linear lb(torch::nn::LinearOptions(32, 48));
  lb->to(at::kBFloat16);
  at::Tensor xb = at::randn({2, 70, 32}).to(at::kBFloat16);
  at::Tensor want = at::linear(xb, lb->weight, lb->bias).to(at::kFloat);
  at::Tensor got = lb->forward(xb);
  EXPECT_EQ(got.scalar_type(), at::kBFloat16);
  EXPECT_LT(max_abs_diff(got.to(at::kFloat), want), want.abs().max().item<double>() / 64);
  // Mixed dtypes (a bfloat16 input to float32 weights, as under autocast) and CPU autocast itself
  // take LibTorch's linear, which casts: the result is what at::linear gives there (bfloat16,
  // within a bfloat16 step).
  Linear lf(torch::nn::LinearOptions(32, 48));
  EXPECT_THROW(at::linear(xb, lf->weight, lf->bias), c10::Error);
  {
    vdm::train::AutocastScope autocast(c10::Device(c10::kCPU), vdm::train::Precision::kBF16);
    at::Tensor cast_want = at::linear(xb, lf->weight, lf->bias);
    at::Tensor cast_got = lf->forward(xb);
    EXPECT_EQ(cast_got.scalar_type(), cast_want.scalar_type());
    EXPECT_LT(max_abs_diff(cast_got.to(at::kFloat), cast_want.to(at::kFloat)),
              cast_want.abs().max().item<double>() / 64);
    at::Tensor f32_got = lf->forward(xb.to(at::kFloat));
    EXPECT_EQ(f32_got.scalar_type(), at::kBFloat16);  // autocast's bf16 linear, as at::linear
  }
}

// oneDNN's matmul on the tensors' own memory: rows further apart than K (a column slice), no bias,
// a cached primitive run again on other data, bfloat16, no rows; inputs it cannot read are errors.
TEST(Linear, OneDnnMatmulReadsTheTensorsOwnMemory) {
  if (!onednn_linear_available()) GTEST_SKIP() << "built without oneDNN's headers (libdnnl-dev)";
  at::manual_seed(9);
  at::Tensor w = at::randn({24, 40}), b = at::randn({24});
  at::Tensor x = at::randn({50, 64}).narrow(1, 3, 40);  // [50, 40], rows 64 apart
  EXPECT_LT(max_abs_diff(onednn_linear(x, w, b), at::linear(x, w, b)), 1e-5);
  EXPECT_LT(max_abs_diff(onednn_linear(x, w, {}), at::linear(x, w)), 1e-5);
  at::Tensor x2 = at::randn({50, 64}).narrow(1, 0, 40);
  EXPECT_LT(max_abs_diff(onednn_linear(x2, w, b), at::linear(x2, w, b)), 1e-5);
  at::Tensor xb = x.contiguous().to(at::kBFloat16), wb = w.to(at::kBFloat16), bb = b.to(at::kBFloat16);
  at::Tensor got = onednn_linear(xb, wb, bb);
  EXPECT_EQ(got.scalar_type(), at::kBFloat16);
  at::Tensor want = at::linear(xb.to(at::kFloat), wb.to(at::kFloat), bb.to(at::kFloat));
  EXPECT_LT(max_abs_diff(got.to(at::kFloat), want), 0.02 * want.abs().max().item<double>());
  EXPECT_EQ(onednn_linear(at::randn({0, 40}), w, b).sizes(), (std::vector<int64_t>{0, 24}));
  EXPECT_THROW(onednn_linear(at::randn({5, 39}), w, b), vdm::Error);            // K differs
  EXPECT_THROW(onednn_linear(at::randn({40, 5}).t(), w, b), vdm::Error);        // K not unit-stride
  EXPECT_THROW(onednn_linear(at::randn({5, 40}), w, at::randn({23})), vdm::Error);  // bias size
  EXPECT_THROW(onednn_linear(at::randn({5, 40}).to(at::kDouble), w.to(at::kDouble), {}), vdm::Error);
}

// vdm's LayerNorm and GroupNorm: torch::nn's parameters and float32 results; on bfloat16 CPU input
// the float32 result rounded to bfloat16 (not the bfloat16 kernel's, which accumulates in 16 bits).
// The fused layer norm against LibTorch's: widths with and without a vector tail, with and without
// the affine parameters, rows at a stride (a slice), bfloat16 in and out; under each instruction-set
// cap (ctest runs this suite under each).
TEST(Normalization, FusedLayerNormMatchesTorch) {
  at::manual_seed(12);
  for (int64_t C : {1, 7, 16, 32, 40, 64, 320}) {
    at::Tensor x = at::randn({3, 50, C}) * 2 + 0.5;
    at::Tensor w = at::randn({C}), b = at::randn({C});
    // Against float64 (LibTorch's float32 kernel itself is off by 2e-4 at C = 1 with eps 1e-6).
    const at::Tensor xd = x.to(at::kDouble), wd = w.to(at::kDouble), bd = b.to(at::kDouble);
    EXPECT_LT(max_abs_diff(fused_layer_norm_cpu(x, w, b, 1e-5), at::layer_norm(xd, {C}, wd, bd, 1e-5)), 2e-5)
        << "C " << C;
    EXPECT_LT(max_abs_diff(fused_layer_norm_cpu(x, {}, {}, 1e-6), at::layer_norm(xd, {C}, {}, {}, 1e-6)), 2e-5)
        << "C " << C;
  }
  at::Tensor wide = at::randn({20, 96});
  at::Tensor slice = wide.narrow(1, 16, 48);  // rows 96 apart
  at::Tensor w = at::randn({48}), b = at::randn({48});
  EXPECT_LT(max_abs_diff(fused_layer_norm_cpu(slice, w, b, 1e-5), at::layer_norm(slice, {48}, w, b, 1e-5)), 2e-5);
  at::Tensor xb = (at::randn({4, 33, 40}) * 3).to(at::kBFloat16);
  at::Tensor wb = at::randn({40}).to(at::kBFloat16), bb = at::randn({40}).to(at::kBFloat16);
  at::Tensor got = fused_layer_norm_cpu(xb, wb, bb, 1e-5);
  EXPECT_EQ(got.scalar_type(), at::kBFloat16);
  at::Tensor want = at::layer_norm(xb.to(at::kFloat), {40}, wb.to(at::kFloat), bb.to(at::kFloat), 1e-5);
  EXPECT_TRUE(((got.to(at::kFloat) - want).abs() <= want.abs() / 128 + 1e-2).all().item<bool>());
  EXPECT_FALSE(fused_layer_norm_cpu_applies(at::randn({2, 4}).requires_grad_(true)));  // training keeps autograd
}

TEST(Normalization, Bf16RunsInFloat32WithTorchParameters) {
  at::manual_seed(5);
  LayerNorm ln(torch::nn::LayerNormOptions({32}).eps(1e-5));
  GroupNorm gn(torch::nn::GroupNormOptions(8, 32).eps(1e-6));
  torch::nn::LayerNorm ln_ref(torch::nn::LayerNormOptions({32}).eps(1e-5));
  torch::nn::GroupNorm gn_ref(torch::nn::GroupNormOptions(8, 32).eps(1e-6));
  {
    at::NoGradGuard no_grad;
    for (auto* m : std::vector<torch::nn::Module*>{ln.get(), gn.get(), ln_ref.get(), gn_ref.get()}) {
      at::manual_seed(6);
      for (auto& p : m->named_parameters()) p.value().copy_(at::randn(p.value().sizes()));
    }
  }
  std::vector<std::string> names;
  for (const auto& p : gn->named_parameters()) names.push_back(p.key());
  EXPECT_EQ(names, (std::vector<std::string>{"weight", "bias"}));

  c10::InferenceMode inference;
  at::Tensor x = at::randn({4, 100, 32}) * 3 + 1;
  at::Tensor y = at::randn({2, 32, 5, 6}) * 3 + 1;
  // float32 inference runs the fused kernels: torch::nn's results to float32 rounding.
  EXPECT_LT(max_abs_diff(ln->forward(x), ln_ref->forward(x)), 1e-5);
  EXPECT_LT(max_abs_diff(gn->forward(y), gn_ref->forward(y)), 1e-5);

  at::Tensor xb = x.to(at::kBFloat16), yb = y.to(at::kBFloat16);
  EXPECT_TRUE(norm_runs_in_float32(xb));
  EXPECT_FALSE(norm_runs_in_float32(x));
  ln->to(at::kBFloat16);
  gn->to(at::kBFloat16);
  at::Tensor lo = ln->forward(xb), go = gn->forward(yb);
  EXPECT_EQ(lo.scalar_type(), at::kBFloat16);
  EXPECT_EQ(go.scalar_type(), at::kBFloat16);
  // Reference: the same bfloat16 inputs and parameters, widened, normalised in float32, rounded.
  at::Tensor lw = ln->weight.to(at::kFloat), lb = ln->bias.to(at::kFloat);
  at::Tensor gw = gn->weight.to(at::kFloat), gb = gn->bias.to(at::kFloat);
  EXPECT_TRUE(at::equal(lo, at::layer_norm(xb.to(at::kFloat), {32}, lw, lb, 1e-5).to(at::kBFloat16)));
  // The fused group norm kernel (its own test below) rounds its float32 result once: at most one
  // bfloat16 step (1/128 relative) from LibTorch's float32 result rounded.
  at::Tensor gref = at::group_norm(yb.to(at::kFloat), 8, gw, gb, 1e-6).to(at::kBFloat16).to(at::kFloat);
  EXPECT_TRUE(((go.to(at::kFloat) - gref).abs() <= gref.abs() / 128 + 1e-6).all().item<bool>());
}

// The fused group norm (+ SiLU) kernel against LibTorch's group_norm and silu in float64: float32
// and bfloat16, spatial sizes with and without a vector tail (1, 7, 16, 45, 300 values per
// channel), no affine, a permuted 5-D view read in its own layout (the temporal layers'), a
// strided input, and the autograd path kept when a gradient is needed.
TEST(Normalization, FusedGroupNormSiluMatchesTorch) {
  at::manual_seed(9);
  auto reference = [](const at::Tensor& x, int64_t g, const at::Tensor& w, const at::Tensor& b, double eps, bool silu) {
    const at::Tensor wd = w.defined() ? w.to(at::kDouble) : w, bd = b.defined() ? b.to(at::kDouble) : b;
    at::Tensor y = at::group_norm(x.to(at::kDouble), g, wd, bd, eps);
    return silu ? at::silu(y) : y;
  };
  const at::Tensor w = at::randn({24}), b = at::randn({24});
  for (const auto& spatial : std::vector<std::vector<int64_t>>{{1}, {7}, {4, 4}, {5, 9}, {300}}) {
    std::vector<int64_t> shape{3, 24};
    shape.insert(shape.end(), spatial.begin(), spatial.end());
    at::Tensor x = at::randn(shape) * 3 + 2;
    for (bool silu : {false, true}) {
      EXPECT_LT(max_abs_diff(fused_group_norm_cpu(x, 6, w, b, 1e-5, silu), reference(x, 6, w, b, 1e-5, silu)), 2e-5)
          << "spatial " << x.sizes() << " silu " << silu;
    }
    EXPECT_LT(max_abs_diff(fused_group_norm_cpu(x, 4, {}, {}, 1e-6, false), reference(x, 4, {}, {}, 1e-6, false)),
              2e-5);
  }
  // [B, F, C, H, W] seen as [B, C, F, H, W]: the output keeps that layout and the values.
  at::Tensor bfchw = at::randn({2, 5, 24, 3, 6});
  at::Tensor view = bfchw.permute({0, 2, 1, 3, 4});
  at::Tensor out = fused_group_norm_cpu(view, 8, w, b, 1e-5, true);
  EXPECT_EQ(out.strides(), view.strides());
  EXPECT_LT(max_abs_diff(out, reference(view, 8, w, b, 1e-5, true)), 2e-5);
  at::Tensor sliced = at::randn({2, 48, 10}).slice(1, 0, 24);
  EXPECT_LT(max_abs_diff(fused_group_norm_cpu(sliced, 8, w, b, 1e-5, true), reference(sliced, 8, w, b, 1e-5, true)),
            2e-5);
  // Saturation: SiLU of large positive and negative values.
  at::Tensor wide = at::zeros({1, 2, 4});
  wide[0][0] = at::tensor({-1.0f, 1.0f, -1.0f, 1.0f});
  wide[0][1] = at::tensor({-1.0f, 1.0f, -1.0f, 1.0f});
  at::Tensor big = at::full({2}, 60.0f);
  EXPECT_LT(max_abs_diff(fused_group_norm_cpu(wide, 2, big, {}, 0.0, true), reference(wide, 2, big, {}, 0.0, true)),
            1e-4);
  // Near float's limit: -|y| * log2(e) overflows to -infinity inside the exponential.
  at::Tensor huge = at::full({2}, 3e38f);
  EXPECT_LT(max_abs_diff(fused_group_norm_cpu(wide, 2, huge, {}, 0.0, true), reference(wide, 2, huge, {}, 0.0, true)),
            1e-4);

  // bfloat16 in and out, computed in float32: within one bfloat16 step of the float64 result.
  at::Tensor xb = (at::randn({2, 24, 8, 9}) * 3 + 2).to(at::kBFloat16);
  for (bool silu : {false, true}) {
    at::Tensor got = fused_group_norm_cpu(xb, 6, w.to(at::kBFloat16), b.to(at::kBFloat16), 1e-5, silu);
    EXPECT_EQ(got.scalar_type(), at::kBFloat16);
    at::Tensor want = reference(xb, 6, w.to(at::kBFloat16), b.to(at::kBFloat16), 1e-5, silu);
    EXPECT_TRUE(((got.to(at::kDouble) - want).abs() <= want.abs() / 128 + 1e-3).all().item<bool>()) << "silu " << silu;
  }

  // The module: forward_silu is SiLU(forward) (float32: LibTorch's; bfloat16: the fused kernel's,
  // so the same as the kernel called directly); with a gradient to compute it is LibTorch's path.
  GroupNorm gn(torch::nn::GroupNormOptions(6, 24));
  at::Tensor x = at::randn({2, 24, 5, 5});
  {
    c10::InferenceMode inference;
    EXPECT_TRUE(fused_group_norm_cpu_applies(x));
    EXPECT_LT(max_abs_diff(gn->forward_silu(x), at::silu(gn->forward(x))), 1e-6);
    GroupNorm gnb(torch::nn::GroupNormOptions(6, 24));
    gnb->to(at::kBFloat16);
    const at::Tensor xb16 = x.to(at::kBFloat16);
    EXPECT_TRUE(at::equal(gnb->forward_silu(xb16), fused_group_norm_cpu(xb16, 6, gnb->weight, gnb->bias, 1e-5, true)));
  }
  at::Tensor y = gn->forward_silu(x);
  y.sum().backward();
  ASSERT_TRUE(gn->weight.grad().defined());
  EXPECT_GT(gn->weight.grad().abs().sum().item<double>(), 0.0);
  EXPECT_FALSE(fused_group_norm_cpu_applies(x.to(at::kDouble)));
  EXPECT_FALSE(fused_group_norm_cpu_applies(at::randn({4}, at::requires_grad())));
  EXPECT_THROW(fused_group_norm_cpu(x, 5, {}, {}, 1e-5, false), c10::Error);
}

TEST(Attention, MasksAndOtherValueWidths) {
  at::manual_seed(2);
  const int64_t B = 2, H = 3, Lq = 9, Lk = 6, D = 8, Dv = 5;
  at::Tensor q = at::randn({B, H, Lq, D}), k = at::randn({B, H, Lk, D}), v = at::randn({B, H, Lk, Dv});
  at::Tensor bool_mask = at::rand({B, 1, Lq, Lk}) > 0.4;
  bool_mask.select(3, 0).fill_(true);  // every query attends to something
  at::Tensor add_mask = at::randn({B, 1, 1, Lk});
  for (int64_t budget : {kAttentionScoreBudget, int64_t(7)}) {
    EXPECT_LT(max_abs_diff(scaled_dot_product_attention_chunked(q, k, v, bool_mask, budget),
                           naive_attention(q, k, v, bool_mask)),
              1e-5);
    EXPECT_LT(max_abs_diff(scaled_dot_product_attention_chunked(q, k, v, add_mask, budget),
                           naive_attention(q, k, v, add_mask)),
              1e-5);
  }
  EXPECT_LT(max_abs_diff(vdm::models::scaled_dot_product_attention(q, k, v, bool_mask), naive_attention(q, k, v, bool_mask)), 1e-5);
  // A masked-out key has no influence.
  at::Tensor only_first = at::zeros({1, 1, 1, Lk}, at::kBool);
  only_first.index_put_({0, 0, 0, 0}, true);
  at::Tensor out = vdm::models::scaled_dot_product_attention(q, k, v, only_first);
  EXPECT_LT(max_abs_diff(out, v.slice(2, 0, 1).expand({B, H, Lq, Dv})), 1e-6);
}

// A context with fewer rows than the hidden states serves each group of consecutive rows (a video's
// frames share its text): the same result as the context repeated for every row, masked or not.
TEST(Attention, OneContextPerGroupOfRowsMatchesTheRepeatedContext) {
  at::manual_seed(12);
  vdm::models::AttentionOptions o;
  o.query_dim = 16;
  o.cross_attention_dim = 12;
  o.heads = 2;
  o.dim_head = 8;
  vdm::models::Attention attn(o);
  attn->eval();
  at::NoGradGuard no_grad;
  const int64_t videos = 2, frames = 3, L = 10, S = 7;
  const at::Tensor x = at::randn({videos * frames, L, 16}), ctx = at::randn({videos, S, 12});
  const at::Tensor repeated = ctx.repeat_interleave(frames, 0);
  const at::Tensor ref = attn->forward(x, repeated);
  EXPECT_LT(max_abs_diff(attn->forward(x, ctx), ref), 1e-5);
  // Frames of one video attend to their own video's text: swapping the contexts changes them.
  EXPECT_GT(max_abs_diff(attn->forward(x, ctx.flip(0)), ref), 1e-2);
  // With a mask per row of x the context is repeated to match it.
  at::Tensor mask = at::rand({videos * frames, 1, 1, S}) > 0.3;
  mask.select(3, 0).fill_(true);
  EXPECT_LT(max_abs_diff(attn->forward(x, ctx, mask), attn->forward(x, repeated, mask)), 1e-5);
  // [N, C, H, W] hidden states too.
  const at::Tensor img = at::randn({videos * frames, 16, 2, 5});
  EXPECT_LT(max_abs_diff(attn->forward(img, ctx), attn->forward(img, repeated)), 1e-5);
  try {
    attn->forward(x, at::randn({4, S, 12}));
    FAIL() << "4 contexts for 6 rows were accepted";
  } catch (const vdm::Error& e) {
    EXPECT_NE(std::string(e.what()).find("4 rows for 6 rows"), std::string::npos) << e.what();
  }
}

// Upsample2D for inference runs nearest 2x upsampling and its 3x3 convolution as one stride-2
// transposed convolution: the same values as the two steps, in both layouts and for odd sizes; a
// forced output size that is not 2x takes the two steps; a changed weight is seen.
// The CPU layout kernels against LibTorch's permute and add, bit for bit (a copy, and the same
// float32 sum rounded once): float32 and bfloat16, sizes with and without a tail of the 8x8 blocks,
// [N, C, H, W], the temporal layers' [B, C, F, H, W] view of [B*F, C, H, W], and NCDHW.
TEST(TokenLayout, MatchesPermuteAndAdd) {
  at::manual_seed(12);
  for (const auto dtype : {at::kFloat, at::kBFloat16}) {
    for (const auto& [C, H, W] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{32, 4, 8}, {20, 5, 9}, {3, 1, 7}}) {
      const int64_t B = 2, F = 3;
      const at::Tensor frames = at::randn({B * F, C, H, W}).to(dtype);
      // Spatial: [N, C, H, W] <-> [N, H*W, C].
      const at::Tensor tokens2d = tokens_from_channels_cpu(frames);
      EXPECT_TRUE(at::equal(tokens2d, frames.permute({0, 2, 3, 1}).reshape({B * F, H * W, C}))) << C;
      const at::Tensor t2 = at::randn({B * F, H * W, C}).to(dtype);
      EXPECT_TRUE(at::equal(channels_from_tokens_add_cpu(t2.view({B * F, H * W, 1, C}), frames),
                            frames + t2.view({B * F, H, W, C}).permute({0, 3, 1, 2})))
          << C;
      // Temporal: [B, C, F, H, W] (either layout) <-> [B, H*W, F, C].
      const at::Tensor view = frames.view({B, F, C, H, W}).permute({0, 2, 1, 3, 4});
      const at::Tensor want = view.permute({0, 3, 4, 2, 1}).reshape({B, H * W, F, C});
      EXPECT_TRUE(at::equal(tokens_from_channels_cpu(view), want)) << C;
      EXPECT_TRUE(at::equal(tokens_from_channels_cpu(view.contiguous()), want)) << C;
      const at::Tensor t3 = at::randn({B, H * W, F, C}).to(dtype);
      const at::Tensor back = t3.view({B, H, W, F, C}).permute({0, 3, 4, 1, 2}).reshape({B * F, C, H, W});
      EXPECT_TRUE(at::equal(channels_from_tokens_add_cpu(t3, frames), frames + back)) << C;
    }
  }
  EXPECT_FALSE(token_layout_cpu_applies(at::randn({2, 3, 4, 4}, at::kDouble)));
  {
    at::NoGradGuard no_grad;
    EXPECT_TRUE(token_layout_cpu_applies(at::randn({2, 3, 4, 4})));
  }
  // Under grad mode (training) LibTorch's permute keeps the autograd graph, even for an input that
  // needs no gradient itself.
  EXPECT_FALSE(token_layout_cpu_applies(at::randn({2, 3, 4, 4})));
  EXPECT_THROW(channels_from_tokens_add_cpu(at::randn({2, 16, 3, 8}), at::randn({6, 8, 4, 5})), c10::Error);
}

TEST(Upsample2D, TransposedConvolutionMatchesUpsampleThenConv) {
  ASSERT_TRUE(vdm::models::upsample_as_transposed_conv());
  at::manual_seed(5);
  vdm::models::Upsample2DOptions o;
  o.channels = 256;  // the CPU takes the transposed convolution from 256 channels
  o.out_channels = 5;
  vdm::models::Upsample2D up(o);
  up->eval();
  const at::Tensor w = up->named_parameters()["conv.weight"];
  const at::Tensor b = up->named_parameters()["conv.bias"];
  auto reference = [&](const at::Tensor& x) {
    return at::conv2d(at::upsample_nearest2d(x.to(at::kDouble), {2 * x.size(2), 2 * x.size(3)}), w.to(at::kDouble),
                      b.to(at::kDouble), 1, 1);
  };
  at::NoGradGuard no_grad;
  for (const auto& shape : {std::vector<int64_t>{2, 256, 4, 4}, std::vector<int64_t>{1, 256, 3, 5}}) {
    const at::Tensor x = at::randn(shape);
    const at::Tensor out = up->forward(x);
    EXPECT_EQ(out.sizes(), reference(x).sizes());
    EXPECT_LT(max_abs_diff(out, reference(x)), 1e-5) << shape;
    const at::Tensor cl = up->forward(x.contiguous(at::MemoryFormat::ChannelsLast));
    EXPECT_TRUE(cl.is_contiguous(at::MemoryFormat::ChannelsLast)) << shape;
    EXPECT_LT(max_abs_diff(cl, reference(x)), 1e-5) << "channels-last " << shape;
  }
  // bfloat16 (on the CPU the two steps: LibTorch 1.13's transposed convolution gets its size wrong).
  const at::Tensor xb = at::randn({2, 256, 4, 4});
  up->to(at::kBFloat16);
  const at::Tensor bf = up->forward(xb.to(at::kBFloat16));
  up->to(at::kFloat);
  EXPECT_EQ(bf.sizes(), reference(xb).sizes());
  EXPECT_LT(max_abs_diff(bf.to(at::kFloat), reference(xb)), 0.1);
  // Forced to 7x9 from 3x5 (a skip connection's size): the upsampling then the convolution.
  const at::Tensor x = at::randn({1, 256, 3, 5});
  const at::Tensor forced = up->forward(x, {7, 9});
  EXPECT_EQ(forced.sizes(), (std::vector<int64_t>{1, 5, 7, 9}));
  EXPECT_LT(max_abs_diff(forced, at::conv2d(at::upsample_nearest2d(x, {7, 9}), w, b, 1, 1)), 1e-5);
  // A weight changed in place (as training or EMA weights do) or replaced is used from then on.
  const at::Tensor before = up->forward(x);
  w.mul_(-1);
  EXPECT_LT(max_abs_diff(up->forward(x), reference(x)), 1e-5);
  EXPECT_GT(max_abs_diff(up->forward(x), before), 1e-3);
  up->to(at::kDouble);
  EXPECT_EQ(up->forward(x.to(at::kDouble)).scalar_type(), at::kDouble);
  EXPECT_LT(max_abs_diff(up->forward(x.to(at::kDouble)), reference(x)), 1e-12);
}

// The temporal convolution as vdm runs it (by default the (3, 1) 2-D form over [B, C, F, H*W])
// against Conv3d in float64: one and two videos, the three layouts it meets (NCDHW, the frame-major
// memory TemporalConvLayer receives, channels-last), with and without a bias, and its gradients.
TEST(TemporalConv, FramesConvolutionMatchesConv3d) {
  ASSERT_TRUE(vdm::temporal::temporal_conv_as_2d());
  at::manual_seed(9);
  const at::Tensor w = at::randn({6, 5, 3, 1, 1}, at::kDouble), b = at::randn({6}, at::kDouble);
  auto reference = [&](const at::Tensor& h, const at::Tensor& bias) { return at::conv3d(h, w, bias, 1, {1, 0, 0}); };
  for (const int64_t B : {1, 2}) {
    const at::Tensor frame_major = at::randn({B, 4, 5, 3, 7}, at::kDouble);  // [B, F, C, H, W]
    const at::Tensor h = frame_major.permute({0, 2, 1, 3, 4});                // [B, C, F, H, W]
    for (const at::Tensor& x : {h.contiguous(), h, h.contiguous(at::MemoryFormat::ChannelsLast3d)}) {
      for (const at::Tensor& bias : {b, at::Tensor()}) {
        const at::Tensor out = vdm::temporal::conv_frames(x, w, bias);
        EXPECT_EQ(out.sizes(), (std::vector<int64_t>{B, 6, 4, 3, 7}));
        EXPECT_LT(max_abs_diff(out, reference(x, bias)), 1e-12) << "B " << B << " strides " << x.strides();
      }
    }
    // Gradients for the input, the weight and the bias (training takes the same form).
    const at::Tensor x = h.contiguous().requires_grad_(), wg = w.clone().requires_grad_(), bg = b.clone().requires_grad_();
    const at::Tensor up = at::randn({B, 6, 4, 3, 7}, at::kDouble);
    const auto grads = torch::autograd::grad({(vdm::temporal::conv_frames(x, wg, bg) * up).sum()}, {x, wg, bg});
    const auto ref = torch::autograd::grad({(at::conv3d(x, wg, bg, 1, {1, 0, 0}) * up).sum()}, {x, wg, bg});
    for (size_t i = 0; i < 3; ++i) EXPECT_LT(max_abs_diff(grads[i], ref[i]), 1e-12) << "gradient " << i;
  }
  // A channels-last input keeps its layout.
  const at::Tensor cl = at::randn({2, 5, 4, 3, 7}).contiguous(at::MemoryFormat::ChannelsLast3d);
  EXPECT_TRUE(vdm::temporal::conv_frames(cl, w.to(at::kFloat), b.to(at::kFloat))
                  .is_contiguous(at::MemoryFormat::ChannelsLast3d));
}

TEST(Attention, BFloat16StaysCloseAndKeepsDtype) {
  at::manual_seed(3);
  at::Tensor q = at::randn({2, 4, 32, 32}), k = at::randn({2, 4, 32, 32}), v = at::randn({2, 4, 32, 32});
  at::Tensor out = scaled_dot_product_attention_chunked(q.to(at::kBFloat16), k.to(at::kBFloat16), v.to(at::kBFloat16), {}, 100);
  EXPECT_EQ(out.scalar_type(), at::kBFloat16);
  EXPECT_LT(max_abs_diff(out, naive_attention(q, k, v)), 0.1);
}

// ---- tiny models ----------------------------------------------------------------------------

UNet3DConditionConfig tiny_unet_config() {
  UNet3DConditionConfig c = vdm::test::tiny_unet3d_config(8, 4, 12, 4);
  c.sample_size = 8;
  return c;
}

AutoencoderKLConfig tiny_vae_config() {
  AutoencoderKLConfig c = vdm::test::tiny_vae_config(8, 4);
  c.sample_size = 16;
  return c;
}

std::string expect_weights_error(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const vdm::WeightsError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected WeightsError, got: " << e.what();
    return {};
  }
  ADD_FAILURE() << "expected WeightsError, nothing was thrown";
  return {};
}

void expect_same_parameters(const torch::nn::Module& a, const torch::nn::Module& b) {
  auto pa = vdm::io::state_dict(a), pb = vdm::io::state_dict(b);
  ASSERT_EQ(pa.size(), pb.size());
  for (const auto& [key, t] : pa) {
    ASSERT_TRUE(pb.count(key)) << key;
    EXPECT_TRUE(at::equal(t, pb.at(key))) << key;
  }
}

TEST(ModelLoading, UNetRoundTripAndKeyNames) {
  at::manual_seed(4);
  UNet3DConditionModel unet(tiny_unet_config());
  const std::string dir = vdm::test::make_temp_dir("unet");
  save_unet3d(unet, dir);
  EXPECT_TRUE(fs::exists(dir + "/config.json"));
  auto cfg = vdm::io::JsonConfig::load(dir + "/config.json");
  EXPECT_EQ(cfg.get_string("_class_name"), "UNet3DConditionModel");
  EXPECT_EQ(cfg.get_string("_diffusers_version"), "0.31.0");
  auto loaded = load_unet3d(dir);
  expect_same_parameters(*unet, *loaded);
  EXPECT_EQ(loaded->config().to_json(), unet->config().to_json());

  auto sd = vdm::io::state_dict(*unet);
  for (const char* key : {"down_blocks.0.temp_convs.0.conv1.2.weight", "down_blocks.0.temp_convs.0.conv4.3.weight",
                          "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.weight",
                          "down_blocks.0.temp_attentions.0.transformer_blocks.0.attn2.to_k.weight",
                          "transformer_in.proj_in.weight", "time_embedding.linear_2.bias",
                          "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj.weight",
                          "mid_block.temp_convs.1.conv2.0.weight", "up_blocks.0.upsamplers.0.conv.weight"})
    EXPECT_TRUE(sd.count(key)) << key;
  // Temporal attention is self-attention in attn2 too (no cross_attention_dim input).
  EXPECT_EQ(sd.at("down_blocks.0.temp_attentions.0.transformer_blocks.0.attn2.to_k.weight").size(1), 8);
  EXPECT_EQ(sd.at("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight").size(1), 12);

  // fp16 writing casts the parameters.
  const std::string dir16 = vdm::test::make_temp_dir("unet16");
  save_unet3d(unet, dir16, at::kHalf);
  auto half = vdm::io::load_safetensors(dir16 + "/" + kDiffusersWeightsName);
  EXPECT_EQ(half.at("conv_in.weight").scalar_type(), at::kHalf);
  auto from_half = load_unet3d(dir16);
  EXPECT_EQ(from_half->dtype(), at::kFloat);
  EXPECT_LT(max_abs_diff(vdm::io::state_dict(*from_half).at("conv_in.weight"),
                         vdm::io::state_dict(*unet).at("conv_in.weight")),
            1e-3);
}

TEST(ModelLoading, StrictErrorsNameKeyFileExpectedAndGot) {
  at::manual_seed(5);
  UNet3DConditionModel unet(tiny_unet_config());
  const std::string dir = vdm::test::make_temp_dir("unet-bad");
  save_unet3d(unet, dir);
  const std::string weights = dir + "/" + kDiffusersWeightsName;
  const auto good = vdm::io::load_safetensors(weights);

  {  // missing key
    auto t = good;
    t.erase("conv_in.bias");
    vdm::io::save_safetensors(weights, t);
    const std::string msg = expect_weights_error([&] { load_unet3d(dir); });
    EXPECT_NE(msg.find("conv_in.bias"), std::string::npos) << msg;
    EXPECT_NE(msg.find(weights), std::string::npos) << msg;
    EXPECT_NE(msg.find("missing"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[8]"), std::string::npos) << msg;  // the expected shape
  }
  {  // unexpected key
    auto t = good;
    t["down_blocks.0.extra.weight"] = at::zeros({3, 2});
    vdm::io::save_safetensors(weights, t);
    const std::string msg = expect_weights_error([&] { load_unet3d(dir); });
    EXPECT_NE(msg.find("down_blocks.0.extra.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find(weights), std::string::npos) << msg;
    EXPECT_NE(msg.find("unexpected"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[3, 2]"), std::string::npos) << msg;  // what was found
  }
  {  // wrong shape
    auto t = good;
    t["conv_out.weight"] = at::zeros({4, 8, 1, 1});
    vdm::io::save_safetensors(weights, t);
    const std::string msg = expect_weights_error([&] { load_unet3d(dir); });
    EXPECT_NE(msg.find("conv_out.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find(weights), std::string::npos) << msg;
    EXPECT_NE(msg.find("expected [4, 8, 3, 3]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("got [4, 8, 1, 1]"), std::string::npos) << msg;
  }
  {  // no weights file at all
    fs::remove(weights);
    EXPECT_THROW(load_unet3d(dir), vdm::InputError);
  }
}

TEST(ModelLoading, ConfigErrorsNameTheKey) {
  const std::string dir = vdm::test::make_temp_dir("unet-cfg");
  auto j = tiny_unet_config().to_json();
  j["attention_head_dim"] = 3;  // 8 channels are not divisible by 3
  vdm::io::write_file_atomic(dir + "/config.json", j.dump());
  try {
    UNet3DConditionConfig::load(dir + "/config.json");
    ADD_FAILURE() << "expected ConfigError";
  } catch (const vdm::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("attention_head_dim"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(dir), std::string::npos) << e.what();
  }
  j = tiny_unet_config().to_json();
  j["down_block_types"] = {"CrossAttnDownBlock3D", "DownBlock2D"};
  vdm::io::write_file_atomic(dir + "/config.json", j.dump());
  EXPECT_THROW(UNet3DConditionConfig::load(dir + "/config.json"), vdm::ConfigError);
}

TEST(ModelLoading, OlderVaeAttentionNamesLoad) {
  at::manual_seed(6);
  AutoencoderKL vae(tiny_vae_config());
  const std::string dir = vdm::test::make_temp_dir("vae-old");
  save_autoencoder_kl(vae, dir);
  auto sd = vdm::io::load_safetensors(dir + "/" + kDiffusersWeightsName);
  vdm::io::TensorMap old;
  int renamed = 0;
  for (const auto& [key, t] : sd) {
    std::string k = key;
    for (auto [from, to] : {std::pair<std::string, std::string>{".to_q.", ".query."}, {".to_k.", ".key."},
                            {".to_v.", ".value."}, {".to_out.0.", ".proj_attn."}}) {
      auto pos = k.find(from);
      if (pos != std::string::npos) {
        k.replace(pos, from.size(), to);
        ++renamed;
      }
    }
    old[k] = t;
  }
  EXPECT_EQ(renamed, 16);  // encoder and decoder mid-block attention: 4 projections x (weight, bias)
  EXPECT_TRUE(old.count("encoder.mid_block.attentions.0.query.weight"));
  vdm::io::save_safetensors(dir + "/" + kDiffusersWeightsName, old);
  auto loaded = load_autoencoder_kl(dir);
  expect_same_parameters(*vae, *loaded);
  EXPECT_EQ(rename_legacy_vae_attention_key("decoder.mid_block.attentions.0.proj_attn.bias"),
            "decoder.mid_block.attentions.0.to_out.0.bias");
  EXPECT_EQ(rename_legacy_vae_attention_key("decoder.conv_in.weight"), "decoder.conv_in.weight");
}

// ---- forward behaviour ----------------------------------------------------------------------

TEST(UNet3D, OddSizesTimestepFormsAndFrameMixing) {
  at::manual_seed(7);
  at::NoGradGuard no_grad;
  UNet3DConditionModel unet(tiny_unet_config());
  unet->eval();
  const int64_t B = 2, F = 3, H = 7, W = 9;
  at::Tensor x = at::randn({B, 4, F, H, W});
  at::Tensor ehs = at::randn({B, 5, 12});
  at::Tensor out = unet->forward(x, at::tensor(int64_t(500)), ehs);
  EXPECT_EQ(out.sizes(), x.sizes());
  EXPECT_TRUE(at::isfinite(out).all().item<bool>());
  // 0-d, [1], [B] and float timesteps are the same thing.
  EXPECT_LT(max_abs_diff(out, unet->forward(x, at::tensor({int64_t(500)}), ehs)), 1e-6);
  EXPECT_LT(max_abs_diff(out, unet->forward(x, at::full({B}, 500.0), ehs)), 1e-6);
  EXPECT_GT(max_abs_diff(out, unet->forward(x, at::tensor(int64_t(10)), ehs)), 1e-4);
  // Per-sample timesteps: sample 1 alone with its own timestep gives the same result.
  at::Tensor ts = at::tensor({int64_t(10), int64_t(700)});
  at::Tensor both = unet->forward(x, ts, ehs);
  at::Tensor second = unet->forward(x.slice(0, 1, 2), at::tensor(int64_t(700)), ehs.slice(0, 1, 2));
  EXPECT_LT(max_abs_diff(both.slice(0, 1, 2), second), 1e-5);
  // Frames are mixed: changing the first frame changes the last one's output.
  at::Tensor x2 = x.clone();
  x2.select(2, 0).add_(1.0);
  at::Tensor out2 = unet->forward(x2, at::tensor(int64_t(500)), ehs);
  EXPECT_GT(max_abs_diff(out.select(2, F - 1), out2.select(2, F - 1)), 1e-5);
  // A single frame works.
  EXPECT_EQ(unet->forward(x.slice(2, 0, 1), at::tensor(int64_t(1)), ehs).sizes(),
            (std::vector<int64_t>{B, 4, 1, H, W}));
  EXPECT_THROW(unet->forward(at::randn({B, 3, F, H, W}), at::tensor(int64_t(1)), ehs), vdm::InputError);
}

TEST(UNet3D, TrainsThroughAutograd) {
  at::manual_seed(8);
  UNet3DConditionModel unet(tiny_unet_config());
  unet->train();
  at::Tensor out = unet->forward(at::randn({1, 4, 2, 8, 8}), at::tensor(int64_t(3)), at::randn({1, 4, 12}));
  out.pow(2).mean().backward();
  for (const auto& p : unet->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
  }
}

TEST(AutoencoderKL, ShapesAndDownsampleFactor) {
  at::manual_seed(9);
  at::NoGradGuard no_grad;
  AutoencoderKL vae(tiny_vae_config());
  vae->eval();
  EXPECT_EQ(vae->downsample_factor(), 2);
  auto post = vae->encode(at::rand({2, 3, 16, 24}) * 2 - 1);
  EXPECT_EQ(post.mean.sizes(), (std::vector<int64_t>{2, 4, 8, 12}));
  EXPECT_EQ(vae->decode(post.mode()).sizes(), (std::vector<int64_t>{2, 3, 16, 24}));
}

// ---- ModelScope text-to-video 1.7B ----------------------------------------------------------

TEST(ModelScopeConfigs, ParameterCounts) {
  const std::string root = std::string(VDM_SOURCE_DIR) + "/configs/modelscope-t2v-1.7b";
  auto ucfg = UNet3DConditionConfig::load(root + "/unet/config.json");
  EXPECT_EQ(ucfg.block_out_channels, (std::vector<int64_t>{320, 640, 1280, 1280}));
  auto vcfg = AutoencoderKLConfig::load(root + "/vae/config.json");
  auto tcfg = vdm::io::JsonConfig::load(root + "/text_encoder/config.json");
  EXPECT_EQ(tcfg.get_int("hidden_size"), ucfg.cross_attention_dim);
  // Construct in bfloat16 (2.8 GB instead of 5.6 GB for the UNet).
  const auto saved = c10::get_default_dtype();
  c10::set_default_dtype(caffe2::TypeMeta::Make<c10::BFloat16>());
  int64_t unet_params = 0, vae_params = 0;
  try {
    unet_params = vdm::io::parameter_count(*UNet3DConditionModel(ucfg));
    vae_params = vdm::io::parameter_count(*AutoencoderKL(vcfg));
  } catch (...) {
    c10::set_default_dtype(saved);
    throw;
  }
  c10::set_default_dtype(saved);
  EXPECT_EQ(unet_params, 1411233860);
  EXPECT_EQ(vae_params, 83653863);
}

// CUDA runs the UNet channels-last (cuDNN's native layout). On CPU the same path checks the layout
// plumbing: the convolution weights re-laid out, every [B*F, C, H, W] intermediate kept
// channels-last (a reshape that copies back to NCHW would show here), and the same output.
// A temporal transformer block over token-ordered [B, F, S, C] (attention over the F frames of each
// position) equals the block over one sequence per position, [B * S, F, C]; here on the CPU's
// generic path (no vdm kernel: the sequences are gathered and scattered back), plain and with fused
// q/k/v projections.
TEST(Attention, BlockOverFramesOfTokensMatchesOneSequencePerPosition) {
  at::manual_seed(13);
  TransformerBlockOptions o;
  o.dim = 16;
  o.num_attention_heads = 2;
  o.attention_head_dim = 8;
  o.double_self_attention = true;
  BasicTransformerBlock block(o);
  block->eval();
  ASSERT_TRUE(block->attends_over_frames());
  c10::InferenceMode inference;
  const int64_t B = 2, F = 5, S = 6;
  const at::Tensor x = at::randn({B, F, S, 16});
  const at::Tensor ref =
      block->forward(x.permute({0, 2, 1, 3}).reshape({B * S, F, 16})).view({B, S, F, 16}).permute({0, 2, 1, 3});
  EXPECT_TRUE(at::allclose(block->forward_frames(x), ref, 1e-5, 1e-5));
  int fused = 0;
  for (const auto& m : block->modules())
    if (auto* a = m->as<AttentionImpl>()) fused += a->fuse_projections(true);
  EXPECT_EQ(fused, 2);
  EXPECT_TRUE(at::allclose(block->forward_frames(x), ref, 1e-5, 1e-5));
  // A block with cross-attention cannot attend over frames alone.
  TransformerBlockOptions cross = o;
  cross.double_self_attention = false;
  cross.cross_attention_dim = 12;
  BasicTransformerBlock spatial(cross);
  EXPECT_FALSE(spatial->attends_over_frames());
  EXPECT_THROW(spatial->forward_frames(x), vdm::Error);
}

// Self-attention's q, k and v as one product: same output, same checkpoint keys and values, the
// parameters views of the fused matrix (an in-place change reaches it), and undone on request or when
// the parameters are replaced.
TEST(UNet3D, FusedQkvProjectionsKeepTheOutputAndTheParameters) {
  at::manual_seed(12);
  UNet3DConditionModel unet(tiny_unet_config());
  unet->eval();
  const at::Tensor x = at::randn({2, 4, 3, 8, 8}), t = at::full({1}, 300L), ehs = at::randn({2, 5, 12});
  auto run = [&] {
    c10::InferenceMode inference;
    return unet->forward(x, t, ehs);
  };
  const at::Tensor ref = run();
  std::map<std::string, at::Tensor> before;
  for (const auto& [key, p] : vdm::io::state_dict(*unet)) before[key] = p.clone();
  const int64_t fused = unet->fuse_qkv_projections(true);
  // Every temporal attention and the spatial self-attentions; the spatial cross-attentions (to_k
  // over the 12-channel text) stay apart.
  int64_t self_attention = 0, attention = 0;
  for (const auto& m : unet->modules())
    if (auto* a = m->as<AttentionImpl>()) {
      ++attention;
      self_attention += a->projections_fused();
    }
  EXPECT_EQ(fused, self_attention);
  EXPECT_GT(fused, 0);
  EXPECT_LT(fused, attention);
  const auto after = vdm::io::state_dict(*unet);
  ASSERT_EQ(after.size(), before.size());
  for (const auto& [key, p] : after) EXPECT_TRUE(at::equal(p, before.at(key))) << key;
  EXPECT_TRUE(at::allclose(run(), ref, 1e-5, 1e-5));
  // A parameter changed in place changes the fused product: the output moves with it.
  AttentionImpl* first = nullptr;
  for (const auto& m : unet->modules())
    if (auto* a = m->as<AttentionImpl>(); a && a->projections_fused() && !first) first = a;
  ASSERT_NE(first, nullptr);
  const auto params = first->named_parameters();  // find() points into it: kept alive
  const at::Tensor* found = params.find("to_q.weight");
  ASSERT_NE(found, nullptr);
  at::Tensor wq = *found;
  {
    at::NoGradGuard no_grad;
    wq.mul_(2.0);
  }
  EXPECT_TRUE(first->projections_fused());
  const at::Tensor changed = run();
  EXPECT_FALSE(at::allclose(changed, ref, 1e-5, 1e-5));
  unet->fuse_qkv_projections(false);
  EXPECT_FALSE(first->projections_fused());
  EXPECT_TRUE(at::allclose(run(), changed, 1e-5, 1e-5));
  // Parameters replaced after fusing (a conversion) leave the fused path unused, the output right.
  {
    at::NoGradGuard no_grad;
    wq.div_(2.0);
  }
  unet->fuse_qkv_projections(true);
  unet->to(at::kDouble);
  EXPECT_FALSE(first->projections_fused());
  c10::InferenceMode inference;
  EXPECT_TRUE(at::allclose(unet->forward(x.to(at::kDouble), t, ehs.to(at::kDouble)).to(at::kFloat), ref, 1e-5, 1e-5));
}

TEST(UNet3D, ChannelsLastKeepsTheLayoutAndTheOutput) {
  at::manual_seed(11);
  UNet3DConditionModel unet(tiny_unet_config());
  unet->eval();
  c10::InferenceMode inference;
  const at::Tensor x = at::randn({2, 4, 3, 8, 8}), t = at::full({1}, 300L), ehs = at::randn({2, 5, 12});
  const at::Tensor ref = unet->forward(x, t, ehs);
  unet->set_channels_last(true);
  ASSERT_TRUE(unet->channels_last());
  for (const auto& [key, p] : vdm::io::state_dict(*unet)) {
    if (p.dim() == 4 && p.size(2) * p.size(3) > 1) {
      EXPECT_TRUE(p.is_contiguous(at::MemoryFormat::ChannelsLast)) << key;
    } else if (p.dim() == 5) {
      EXPECT_TRUE(p.is_contiguous(at::MemoryFormat::ChannelsLast3d)) << key;
    }
  }
  std::vector<std::string> nchw;
  int checked = 0;
  unet->set_tap([&](const std::string& name, const at::Tensor& v) {
    // conv_norm_out: a CPU group norm returns NCHW (the CUDA one keeps the layout; cuda_kernels_test).
    if (v.dim() != 4 || v.size(1) == 1 || v.size(2) * v.size(3) == 1 || name == "conv_norm_out") return;
    ++checked;
    if (!v.is_contiguous(at::MemoryFormat::ChannelsLast)) nchw.push_back(name);
  });
  const at::Tensor out = unet->forward(x, t, ehs);
  unet->clear_tap();
  EXPECT_GT(checked, 20);
  EXPECT_TRUE(nchw.empty()) << "not channels-last: " << nchw.front();
  ASSERT_EQ(out.sizes(), ref.sizes());
  EXPECT_LT(max_abs_diff(out, ref), 1e-4);
  unet->set_channels_last(false);
  EXPECT_TRUE(at::equal(unet->forward(x, t, ehs), ref));
}

// VDM_DISABLE_CUDA_KERNELS names kernels to turn off; a typo must not pass silently.
TEST(CudaKernels, DisableListIsParsedAndChecked) {
  EXPECT_TRUE(parse_disabled_cuda_kernels(nullptr).empty());
  EXPECT_TRUE(parse_disabled_cuda_kernels("").empty());
  EXPECT_EQ(parse_disabled_cuda_kernels("layer_norm,geglu"), (std::set<std::string>{"layer_norm", "geglu"}));
  EXPECT_EQ(parse_disabled_cuda_kernels("all").size(), cuda_kernel_names().size());
  try {
    parse_disabled_cuda_kernels("group_norm,layernorm");
    ADD_FAILURE() << "an unknown kernel name was accepted";
  } catch (const vdm::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("'layernorm'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("layer_norm"), std::string::npos) << e.what();
  }
#ifndef VDM_WITH_CUDA_KERNELS
  EXPECT_TRUE(cuda_kernels_in_use().empty());
  EXPECT_FALSE(channels_last_pays(c10::Device(c10::kCUDA, 0)));
#endif
}

// SiLU(GroupNorm(x + add)) for a per-sample [N, C] and a per-channel [C] term (the CPU computes the
// sum; the CUDA kernel adds it as it reads, cuda_kernels_test).
// The end of a residual branch, (x + bias + residual) / divisor, on LibTorch's operators (the CPU;
// the CUDA kernel is checked in cuda_kernels_emulated_test and cuda_kernels_test).
TEST(CudaKernels, AddBiasResidualOffTheKernel) {
  at::manual_seed(3);
  const at::Tensor x = at::randn({2, 6, 4, 5}), r = at::randn({2, 6, 4, 5}), b = at::randn({6});
  EXPECT_FALSE(residual_takes_conv_bias(x));
  EXPECT_TRUE(at::allclose(add_bias_residual(x, b, r, 2.0), (x + b.view({1, 6, 1, 1}) + r) / 2.0, 1e-6, 1e-6));
  EXPECT_TRUE(at::equal(add_bias_residual(x, {}, r, 1.0), r + x));
}

TEST(Normalization, GroupNormSiluWithAddedTerm) {
  at::manual_seed(12);
  GroupNorm norm(torch::nn::GroupNormOptions(4, 8));
  c10::InferenceMode inference;
  const at::Tensor x = at::randn({3, 8, 5, 6});
  const at::Tensor per_sample = at::randn({3, 8}), per_channel = at::randn({8});
  auto ref = [&](const at::Tensor& sum) {
    return at::silu(at::group_norm(sum, 4, norm->weight, norm->bias, norm->options.eps()));
  };
  EXPECT_LT(max_abs_diff(norm->forward_silu(x, per_sample), ref(x + per_sample.view({3, 8, 1, 1}))), 1e-5);
  EXPECT_LT(max_abs_diff(norm->forward_silu(x, per_channel), ref(x + per_channel.view({1, 8, 1, 1}))), 1e-5);
  EXPECT_GT(max_abs_diff(norm->forward_silu(x, per_channel), norm->forward_silu(x)), 1e-2);
}

}  // namespace
