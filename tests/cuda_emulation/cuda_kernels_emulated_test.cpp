// vdm's CUDA kernels (src/models/cuda_kernels.h), their own source compiled as C++ and run on the
// CPU by the CUDA emulation (cuda_emulation.h), against LibTorch's operators in float64. Every case
// runs with the threads of a block in ascending and in descending order, and reads and writes
// through buffers fenced with NaN, so indexing past a tensor, a missing barrier and a broken
// reduction fail here on machines without a GPU.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "cuda_emulation.h"
#include "models/cuda_kernels.h"

namespace {

namespace emu = vdm::cuda_emulation;
namespace kernels = vdm::models::cuda_emulated;

// A tensor's elements in the middle of a larger allocation whose 64 bytes (plus `misalign` elements)
// either side are NaN: a kernel that reads past its input turns its output NaN, and one that writes
// past its output changes a fence.
class Fenced {
 public:
  explicit Fenced(const at::Tensor& values, int64_t misalign = 0)
      : shape_(values.sizes().vec()), fence_(64 / values.element_size() + misalign) {
    storage_ = at::full({values.numel() + 2 * fence_}, std::numeric_limits<double>::quiet_NaN(), values.options());
    inner().copy_(values.flatten());
  }
  void* data() { return inner().data_ptr(); }
  at::Tensor tensor() const { return inner().view(shape_).clone(); }
  bool fences_intact() const {
    const int64_t n = storage_.numel();
    return storage_.narrow(0, 0, fence_).isnan().all().item<bool>() &&
           storage_.narrow(0, n - fence_, fence_).isnan().all().item<bool>();
  }

 private:
  at::Tensor inner() const { return storage_.narrow(0, fence_, storage_.numel() - 2 * fence_); }
  std::vector<int64_t> shape_;
  int64_t fence_;
  at::Tensor storage_;
};

kernels::DType dtype_of(at::ScalarType t) {
  return t == at::kFloat ? kernels::DType::kFloat : t == at::kHalf ? kernels::DType::kHalf : kernels::DType::kBFloat16;
}

double tolerance(at::ScalarType t) { return t == at::kFloat ? 1e-5 : t == at::kHalf ? 2e-3 : 1e-2; }

double relative_error(const at::Tensor& out, const at::Tensor& ref) {
  const at::Tensor a = out.to(at::kDouble), b = ref.to(at::kDouble);
  if (!a.isfinite().all().item<bool>()) return std::numeric_limits<double>::infinity();
  return (a - b).norm().item<double>() / b.norm().item<double>();
}

const std::vector<at::ScalarType> kDtypes = {at::kFloat, at::kHalf, at::kBFloat16};

class EmulatedKernels : public ::testing::TestWithParam<emu::ThreadOrder> {
 protected:
  void SetUp() override { emu::set_thread_order(GetParam()); }
  void TearDown() override { emu::set_thread_order(emu::ThreadOrder::kAscending); }
};

// y = GroupNorm(x + add) (+ SiLU) over channels-last x [N, rows, C], as LibTorch computes it on the
// NCHW view.
at::Tensor group_norm_reference(const at::Tensor& x, const at::Tensor& add, const at::Tensor& w, const at::Tensor& b,
                                int64_t groups, double eps, bool silu) {
  at::Tensor h = x.to(at::kDouble);
  if (add.defined()) h = h + (add.dim() == 2 ? add.unsqueeze(1) : add.view({1, 1, -1})).to(at::kDouble);
  at::Tensor y = at::group_norm(h.permute({0, 2, 1}).contiguous(), groups, w.to(at::kDouble), b.to(at::kDouble), eps)
                     .permute({0, 2, 1});
  return silu ? at::silu(y) : y;
}

TEST_P(EmulatedKernels, GroupNormNhwcMatchesTorch) {
  at::manual_seed(11);
  struct Case {
    int64_t samples, rows, channels, groups;
    const char* what;
  };
  const std::vector<Case> cases = {
      {2, 12, 64, 8, "16-byte packs, a statistics chunk per row"},
      {3, 7, 12, 4, "12 channels: packs of 4 floats, single elements for 16-bit types"},
      {1, 5, 640, 2, "320 channels per group: more than a block's threads"},
      {1, 600, 32, 32, "one channel per group, 38 rows per statistics chunk"},
      {16, 60, 512, 32, "one statistics chunk of 60 rows per group: the loop of four loads in flight"},
  };
  for (const Case& c : cases) {
    for (const at::ScalarType dtype : kDtypes) {
      for (int variant = 0; variant < 3; ++variant) {
        // variant 0: no added term, SiLU; 1: a per-(sample, channel) term, no SiLU, misaligned
        // buffers; 2: a per-channel term, SiLU.
        const bool silu = variant != 1;
        const int64_t misalign = variant == 1 ? 1 : 0;
        const auto opts = at::TensorOptions().dtype(dtype);
        // An offset mean checks that the float32 statistics do not cancel.
        const at::Tensor x = (at::randn({c.samples, c.rows, c.channels}) * 3 + 20).to(dtype);
        const at::Tensor w = at::randn({c.channels}, opts), b = at::randn({c.channels}, opts);
        const at::Tensor add = variant == 0   ? at::Tensor()
                               : variant == 1 ? at::randn({c.samples, c.channels}, opts) * 4
                                              : at::randn({c.channels}, opts) * 4;
        kernels::GroupNormNhwcShape shape;
        shape.samples = c.samples;
        shape.rows = c.rows;
        shape.channels = c.channels;
        shape.groups = c.groups;
        shape.add_sample_stride = variant == 1 ? c.channels : 0;
        Fenced in(x, misalign), out(at::empty_like(x), misalign), gamma(w), beta(b);
        Fenced added(add.defined() ? add : at::zeros({1}, opts));
        Fenced workspace(at::zeros({kernels::group_norm_nhwc_workspace(shape)}));
        kernels::group_norm_nhwc(shape, dtype_of(dtype), in.data(), add.defined() ? added.data() : nullptr,
                                 gamma.data(), beta.data(), 1e-5, silu, out.data(),
                                 static_cast<float*>(workspace.data()), nullptr);
        const std::string where = std::string(c.what) + ", " + c10::toString(dtype) + ", variant " +
                                  std::to_string(variant);
        EXPECT_LT(relative_error(out.tensor(), group_norm_reference(x, add, w, b, c.groups, 1e-5, silu)),
                  tolerance(dtype))
            << where;
        EXPECT_TRUE(out.fences_intact() && workspace.fences_intact()) << "wrote outside its buffers: " << where;
      }
    }
  }
}

TEST_P(EmulatedKernels, GroupNormNhwcRejectsShapesItCannotTake) {
  kernels::GroupNormNhwcShape shape;
  shape.samples = 2;
  shape.rows = 4;
  shape.channels = 10;
  shape.groups = 4;  // 10 % 4 != 0
  float x[80], y[80], ws[64];
  EXPECT_THROW(kernels::group_norm_nhwc(shape, kernels::DType::kFloat, x, nullptr, nullptr, nullptr, 1e-5, false, y, ws,
                                        nullptr),
               std::invalid_argument);
}

TEST_P(EmulatedKernels, LayerNormRowsMatchesTorch) {
  at::manual_seed(12);
  // Widths of one 16-byte pack per lane, two, up to eight (the UNet's 320 and 1280), an odd width
  // read element by element, and a block whose last warps have no rows.
  const std::vector<std::vector<int64_t>> shapes = {{37, 320}, {5, 1280}, {9, 33}, {3, 200}, {2, 2048}};
  for (const auto& shape : shapes) {
    const int64_t rows = shape[0], C = shape[1];
    for (const at::ScalarType dtype : kDtypes) {
      // At most 256 elements, or 256 16-byte packs (1024 float32, 2048 16-bit).
      const int64_t element = int64_t(c10::elementSize(dtype));
      ASSERT_EQ(kernels::layer_norm_rows_supported(C, element), C <= 256 * 16 / element) << C << " " << dtype;
      if (C > 256 * 16 / element) continue;
      // 0: affine; 1: no parameters; 2: affine, of x + residual (the sum written too).
      for (int variant = 0; variant < 3; ++variant) {
        const bool affine = variant != 1, add = variant == 2;
        const auto opts = at::TensorOptions().dtype(dtype);
        const at::Tensor x = (at::randn({rows, C}) * 2 + 5).to(dtype), r = at::randn({rows, C}).to(dtype);
        const at::Tensor w = at::randn({C}, opts), b = at::randn({C}, opts);
        Fenced in(x), res(r), sum(at::empty_like(x)), out(at::empty_like(x)), gamma(w), beta(b);
        kernels::layer_norm_rows(dtype_of(dtype), in.data(), add ? res.data() : nullptr,
                                 affine ? gamma.data() : nullptr, affine ? beta.data() : nullptr, rows, C, 1e-5,
                                 add ? sum.data() : nullptr, out.data(), nullptr);
        // The sum as an add in `dtype` leaves it, then the norm of that.
        const at::Tensor h = add ? (x.to(at::kDouble) + r.to(at::kDouble)).to(dtype) : x;
        const at::Tensor ref = at::layer_norm(h.to(at::kDouble), {C}, affine ? w.to(at::kDouble) : at::Tensor(),
                                              affine ? b.to(at::kDouble) : at::Tensor(), 1e-5);
        const std::string where = std::to_string(rows) + "x" + std::to_string(C) + " " + c10::toString(dtype) +
                                  " variant " + std::to_string(variant);
        EXPECT_LT(relative_error(out.tensor(), ref), tolerance(dtype)) << where;
        if (add) {
          EXPECT_LT(relative_error(sum.tensor(), h), 1e-7) << "sum, " << where;
        }
        EXPECT_TRUE(out.fences_intact() && sum.fences_intact()) << "wrote outside its output: " << where;
      }
    }
  }
  EXPECT_FALSE(kernels::layer_norm_rows_supported(4000, 2));
  EXPECT_FALSE(kernels::layer_norm_rows_supported(257 * 8, 2));
}

TEST_P(EmulatedKernels, GegluMatchesTorch) {
  at::manual_seed(13);
  // 16-byte packs (96 = 12 packs of 8 halves) and an odd width read element by element.
  for (const std::vector<int64_t>& shape : {std::vector<int64_t>{20, 192}, std::vector<int64_t>{7, 26}}) {
    for (const at::ScalarType dtype : kDtypes) {
      const int64_t rows = shape[0], inner = shape[1] / 2;
      const at::Tensor h = (at::randn(shape) * 2).to(dtype);
      Fenced in(h), out(at::empty({rows, inner}, h.options()));
      kernels::geglu(dtype_of(dtype), in.data(), out.data(), rows, inner, nullptr);
      const auto parts = h.to(at::kDouble).chunk(2, -1);
      EXPECT_LT(relative_error(out.tensor(), parts[0] * at::gelu(parts[1])), tolerance(dtype))
          << shape[0] << "x" << shape[1] << " " << dtype;
      EXPECT_TRUE(out.fences_intact()) << "wrote outside its output";
    }
  }
}

TEST_P(EmulatedKernels, BiasResidualMatchesTorch) {
  at::manual_seed(15);
  // Channels in 16-byte packs, and an odd count read element by element; in place and not.
  for (const std::vector<int64_t>& shape : {std::vector<int64_t>{37, 64}, std::vector<int64_t>{9, 13}}) {
    for (const at::ScalarType dtype : kDtypes) {
      for (const bool in_place : {false, true}) {
        const int64_t rows = shape[0], C = shape[1];
        const at::Tensor x = at::randn(shape).to(dtype), r = at::randn(shape).to(dtype), b = at::randn({C}).to(dtype);
        Fenced xs(x), rs(r), bs(b), out(at::empty_like(x));
        void* y = in_place ? xs.data() : out.data();
        kernels::bias_residual(dtype_of(dtype), xs.data(), bs.data(), rs.data(), rows, C, 0.5, y, nullptr);
        const at::Tensor ref = (x.to(at::kDouble) + b.to(at::kDouble) + r.to(at::kDouble)) * 0.5;
        EXPECT_LT(relative_error((in_place ? xs : out).tensor(), ref), tolerance(dtype)) << rows << "x" << C << " " << dtype;
        EXPECT_TRUE(xs.fences_intact() && out.fences_intact()) << "wrote outside its output";
      }
    }
  }
}

// softmax(q k^T / sqrt(D)) v in float64; q: [B, H, Lq, D], k, v: [B, H, Lk, D].
at::Tensor attention_reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const at::Tensor s = at::matmul(q.to(at::kDouble), k.to(at::kDouble).transpose(-2, -1)) / std::sqrt(double(q.size(3)));
  return at::matmul(at::softmax(s, -1), v.to(at::kDouble));
}

TEST_P(EmulatedKernels, ShortAttentionMatchesTorch) {
  at::manual_seed(14);
  struct Case {
    int64_t batch, heads, queries, keys, head_dim;
    const char* what;
    int64_t misalign = 0;  // elements by which every buffer misses 16-byte alignment
  };
  const std::vector<Case> cases = {
      {6, 5, 16, 16, 64, "temporal attention: 16 frames, heads of 64 (8 threads per row)"},
      {3, 2, 7, 7, 40, "heads of 40: 5 of a row's 8 threads hold channels"},
      {2, 3, 5, 9, 8, "one thread per row, more keys than queries"},
      {1, 2, 64, 64, 256, "64 keys, heads of 256 (a warp per row)"},
      // Narrow heads, one thread per (row, head), as the default model's heads of 4 take.
      {2, 12, 16, 16, 5, "narrow heads of 5, 16 frames"},
      {3, 6, 9, 9, 10, "narrow heads of 10"},
      {2, 5, 8, 13, 20, "narrow heads of 20, more keys than queries"},
      {2, 3, 6, 6, 32, "narrow heads of 32, misaligned", 1},
      {2, 4, 5, 7, 8, "heads of 8 off the 16-byte grid: narrow", 3},
  };
  for (const Case& c : cases) {
    for (const at::ScalarType dtype : kDtypes) {
      // q, k and v as one projection [B, L, 3, H, D] (strided views), the way a fused projection
      // leaves them; for unequal lengths, three contiguous [B, L, H, D] tensors.
      const int64_t B = c.batch, H = c.heads, D = c.head_dim;
      const bool fused = c.queries == c.keys;
      at::Tensor q, k, v;
      std::vector<Fenced> buffers;
      kernels::ShortAttentionShape s;
      s.batch = B;
      s.heads = H;
      s.queries = c.queries;
      s.keys = c.keys;
      s.head_dim = D;
      const void *qp, *kp, *vp;
      if (fused) {
        const at::Tensor qkv = (at::randn({B, c.queries, 3, H, D}) * 2).to(dtype);
        buffers.emplace_back(qkv, c.misalign);
        auto* base = static_cast<char*>(buffers[0].data());
        const int64_t e = qkv.element_size();
        qp = base, kp = base + H * D * e, vp = base + 2 * H * D * e;
        for (int64_t* st : {s.q_strides, s.k_strides, s.v_strides}) {
          st[0] = c.queries * 3 * H * D;
          st[2] = D;
          st[3] = 3 * H * D;
        }
        q = qkv.select(2, 0).transpose(1, 2), k = qkv.select(2, 1).transpose(1, 2), v = qkv.select(2, 2).transpose(1, 2);
      } else {
        const at::Tensor qt = at::randn({B, c.queries, H, D}).to(dtype), kt = at::randn({B, c.keys, H, D}).to(dtype),
                         vt = at::randn({B, c.keys, H, D}).to(dtype);
        buffers.emplace_back(qt, c.misalign);
        buffers.emplace_back(kt, c.misalign);
        buffers.emplace_back(vt, c.misalign);
        qp = buffers[0].data(), kp = buffers[1].data(), vp = buffers[2].data();
        s.q_strides[0] = c.queries * H * D, s.q_strides[2] = D, s.q_strides[3] = H * D;
        for (int64_t* st : {s.k_strides, s.v_strides}) st[0] = c.keys * H * D, st[2] = D, st[3] = H * D;
        q = qt.transpose(1, 2), k = kt.transpose(1, 2), v = vt.transpose(1, 2);
      }
      Fenced out(at::empty({B, c.queries, H, D}, at::TensorOptions().dtype(dtype)), c.misalign);
      s.out_strides[0] = c.queries * H * D, s.out_strides[2] = D, s.out_strides[3] = H * D;
      ASSERT_TRUE(kernels::short_attention_supported(s, int64_t(c10::elementSize(dtype)), {qp, kp, vp, out.data()}))
          << c.what;
      kernels::short_attention(s, dtype_of(dtype), qp, kp, vp, 1.0 / std::sqrt(double(D)), out.data(), nullptr);
      const std::string where = std::string(c.what) + ", " + c10::toString(dtype);
      EXPECT_LT(relative_error(out.tensor().transpose(1, 2), attention_reference(q, k, v)), tolerance(dtype)) << where;
      EXPECT_TRUE(out.fences_intact()) << "wrote outside its output: " << where;
    }
  }
}

// Temporal attention over tokens kept in their order, [B, F, S, 3, H, D] from one projection: for
// each (batch, position, head) a sequence over the F frames, S positions apart; the output in the
// same order, [B, F, S, H, D].
TEST_P(EmulatedKernels, ShortAttentionOverFramesOfTokens) {
  at::manual_seed(16);
  for (const int64_t D : {16, 5})  // wide heads (2 threads per row) and narrow ones
  for (const at::ScalarType dtype : kDtypes) {
    const int64_t B = 2, F = 6, S = 5, H = 3;
    const at::Tensor qkv = (at::randn({B, F, S, 3, H, D}) * 2).to(dtype);
    Fenced in(qkv), out(at::empty({B, F, S, H, D}, qkv.options()));
    kernels::ShortAttentionShape s;
    s.batch = B, s.inner_batch = S, s.heads = H, s.queries = F, s.keys = F, s.head_dim = D;
    for (int64_t* st : {s.q_strides, s.k_strides, s.v_strides})
      st[0] = F * S * 3 * H * D, st[1] = 3 * H * D, st[2] = D, st[3] = S * 3 * H * D;
    s.out_strides[0] = F * S * H * D, s.out_strides[1] = H * D, s.out_strides[2] = D, s.out_strides[3] = S * H * D;
    auto* base = static_cast<char*>(in.data());
    const int64_t e = qkv.element_size();
    kernels::short_attention(s, dtype_of(dtype), base, base + H * D * e, base + 2 * H * D * e,
                             1.0 / std::sqrt(double(D)), out.data(), nullptr);
    // [B, F, S, H, D] -> [B * S, H, F, D]
    auto sequences = [&](const at::Tensor& t) { return t.permute({0, 2, 3, 1, 4}).reshape({B * S, H, F, D}); };
    const at::Tensor ref =
        attention_reference(sequences(qkv.select(3, 0)), sequences(qkv.select(3, 1)), sequences(qkv.select(3, 2)));
    EXPECT_LT(relative_error(sequences(out.tensor()), ref), tolerance(dtype)) << dtype << ", heads of " << D;
    EXPECT_TRUE(out.fences_intact()) << "wrote outside its output, heads of " << D;
  }
}

TEST_P(EmulatedKernels, ShortAttentionRejectsShapesItCannotTake) {
  kernels::ShortAttentionShape s;
  s.batch = 2, s.heads = 2, s.queries = 16, s.keys = 16, s.head_dim = 64;
  for (int64_t* st : {s.q_strides, s.k_strides, s.v_strides, s.out_strides}) st[0] = 16 * 128, st[2] = 64, st[3] = 128;
  alignas(16) static float buffer[8];
  const void* p = buffer;
  EXPECT_TRUE(kernels::short_attention_supported(s, 2, {p}));
  kernels::ShortAttentionShape t = s;
  t.keys = kernels::kShortAttentionMaxKeys + 1;
  EXPECT_FALSE(kernels::short_attention_supported(t, 2, {p}));
  t = s;
  t.head_dim = 36;  // not whole slices of 8 channels, and too wide for one thread
  EXPECT_FALSE(kernels::short_attention_supported(t, 2, {p}));
  t = s;
  t.k_strides[3] = 100;  // rows not 16-byte aligned in float16
  EXPECT_FALSE(kernels::short_attention_supported(t, 2, {p}));
  EXPECT_FALSE(kernels::short_attention_supported(s, 2, {static_cast<const char*>(p) + 2}));
  // Up to 32 channels a head takes any alignment (one thread per row and head).
  kernels::ShortAttentionShape n = t;
  n.head_dim = 32;
  EXPECT_TRUE(kernels::short_attention_supported(n, 2, {static_cast<const char*>(p) + 2}));
  n.head_dim = 33;
  EXPECT_FALSE(kernels::short_attention_supported(n, 2, {p}));
  EXPECT_THROW(kernels::short_attention(t, kernels::DType::kHalf, p, p, p, 0.125, buffer, nullptr),
               std::invalid_argument);
}

INSTANTIATE_TEST_SUITE_P(ThreadOrders, EmulatedKernels,
                         ::testing::Values(emu::ThreadOrder::kAscending, emu::ThreadOrder::kDescending),
                         [](const auto& info) {
                           return info.param == emu::ThreadOrder::kAscending ? "Ascending" : "Descending";
                         });

// The emulation itself: it must catch what the kernel tests rely on it to catch.
void reverse_in_block(const float* in, float* out, bool barrier) {
  __shared__ float tile[64];
  tile[threadIdx.x] = in[blockIdx.x * 64 + threadIdx.x];
  if (barrier) __syncthreads();
  out[blockIdx.x * 64 + threadIdx.x] = tile[63 - threadIdx.x];
}

TEST(CudaEmulation, ABlockBarrierOrdersSharedMemory) {
  std::vector<float> in(128), out(128);
  for (int i = 0; i < 128; ++i) in[i] = float(i);
  for (const auto order : {emu::ThreadOrder::kAscending, emu::ThreadOrder::kDescending}) {
    emu::set_thread_order(order);
    emu::run_grid("reverse", dim3(2), dim3(64), 0, [&] { reverse_in_block(in.data(), out.data(), true); });
    for (int i = 0; i < 128; ++i) ASSERT_EQ(out[i], float(i / 64 * 64 + 63 - i % 64)) << i;
    // Without the barrier a thread reads a slot before its writer has run.
    emu::run_grid("reverse", dim3(2), dim3(64), 0, [&] { reverse_in_block(in.data(), out.data(), false); });
    int wrong = 0;
    for (int i = 0; i < 128; ++i) wrong += out[i] != float(i / 64 * 64 + 63 - i % 64);
    EXPECT_GT(wrong, 0);
  }
  emu::set_thread_order(emu::ThreadOrder::kAscending);
}

TEST(CudaEmulation, WarpShufflesExchangeLanes) {
  std::vector<int> xor_out(64), down_out(64);
  emu::run_grid("shuffle", dim3(1), dim3(64), 0, [&] {
    const int t = int(threadIdx.x);
    xor_out[t] = __shfl_xor_sync(0xffffffffu, t, 3);
    down_out[t] = __shfl_down_sync(0xffffffffu, t * 10, 4);
  });
  for (int t = 0; t < 64; ++t) {
    EXPECT_EQ(xor_out[t], t ^ 3);
    EXPECT_EQ(down_out[t], (t % 32 + 4 < 32 ? t + 4 : t) * 10) << t;  // past the warp: the lane's own
  }
}

TEST(CudaEmulation, ReportsUndefinedSynchronisation) {
  // A full-warp shuffle after one lane has returned.
  EXPECT_THROW(emu::run_grid("early return", dim3(1), dim3(32), 0,
                             [] {
                               if (threadIdx.x == 5) return;
                               (void)__shfl_xor_sync(0xffffffffu, 1.f, 1);
                             }),
               std::runtime_error);
  // One warp at a block barrier while the other waits in a shuffle, forever.
  EXPECT_THROW(emu::run_grid("mismatched barriers", dim3(1), dim3(64), 0,
                             [] {
                               if (threadIdx.x < 32) {
                                 __syncthreads();
                               } else if (threadIdx.x != 40) {
                                 (void)__shfl_xor_sync(0xffffffffu, 1, 1);
                                 __syncthreads();
                               } else {
                                 __syncthreads();
                               }
                             }),
               std::runtime_error);
  EXPECT_THROW(emu::run_grid("odd block", dim3(1), dim3(48), 0, [] {}), std::runtime_error);
  // A kernel's exception reaches the launch.
  EXPECT_THROW(emu::run_grid("throws", dim3(1), dim3(32), 0, [] { throw std::invalid_argument("inside"); }),
               std::invalid_argument);
}

}  // namespace
