#include "models/attention_cpu.h"

#include <ATen/record_function.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "models/cpu_vector.h"

namespace vdm::models {

namespace {

using cpu::Vec;
using cpu::load;
using cpu::store;
using cpu::hsum;
using cpu::hmax;
using cpu::exp2_nonpositive;

constexpr int64_t kRows = 4;  // query rows per block: each key/value load feeds this many rows
// Keys are padded to a multiple of this many, so every vector access (8 or 16 floats) is whole.
constexpr int64_t kKeyPadding = 16;

// Scores of four query rows against all keys, N keys at a time: s_r[j] = q_r . k_j. With the
// head size D known at compile time the head loop unrolls and the sums stay in registers, and each
// row's maximum over the vectors wholly within the Lk real keys is kept on the way (returned as the
// index the maximum still has to be taken from); otherwise (D = 0) the rows accumulate one head
// channel at a time and no maximum is taken (returns 0).
template <int N, int D>
__attribute__((always_inline)) inline int64_t block_scores(const float* const q[kRows], const float* kT, int64_t Lk,
                                                           int64_t Lp, int64_t d, float* const s[kRows],
                                                           typename Vec<N>::f m[kRows]) {
  using V = typename Vec<N>::f;
  for (int r = 0; r < kRows; ++r) m[r] = V{} - 1e30f;
  if constexpr (D > 0) {
    const int64_t whole = Lk / N * N;
    for (int64_t j = 0; j < Lp; j += N) {
      V a0 = {}, a1 = {}, a2 = {}, a3 = {};
      for (int c = 0; c < D; ++c) {
        const V kv = load<V>(kT + c * Lp + j);
        a0 += q[0][c] * kv;
        a1 += q[1][c] * kv;
        a2 += q[2][c] * kv;
        a3 += q[3][c] * kv;
      }
      store(s[0] + j, a0), store(s[1] + j, a1), store(s[2] + j, a2), store(s[3] + j, a3);
      if (j < whole) {
        m[0] = a0 > m[0] ? a0 : m[0];
        m[1] = a1 > m[1] ? a1 : m[1];
        m[2] = a2 > m[2] ? a2 : m[2];
        m[3] = a3 > m[3] ? a3 : m[3];
      }
    }
    return whole;
  } else {
    for (int64_t j = 0; j < Lp; j += N) {
      const V kv = load<V>(kT + j);
      store(s[0] + j, q[0][0] * kv), store(s[1] + j, q[1][0] * kv), store(s[2] + j, q[2][0] * kv);
      store(s[3] + j, q[3][0] * kv);
    }
    for (int64_t c = 1; c < d; ++c) {
      const float* kc = kT + c * Lp;
      for (int64_t j = 0; j < Lp; j += N) {
        const V kv = load<V>(kc + j);
        for (int r = 0; r < kRows; ++r) store(s[r] + j, load<V>(s[r] + j) + q[r][c] * kv);
      }
    }
    return 0;
  }
}

// Where one block's query rows come from and where its output rows go: row r of the block is at
// q + r * q_row and out + r * out_row (channels contiguous), so the kernel reads the heads split
// from a projection and writes the heads merged back without copies.
struct BlockIo {
  const float* q;
  int64_t q_row;
  float scale;  // log2(e) / sqrt(d), applied as the rows are read
  float* out;
  int64_t out_row;
};

// The softmax weights of the rows and their product with DV value channels in one pass over the
// keys: each weight is made (2^(s - max)), summed and multiplied into the values in registers, and
// never written back. RP rows at a time keep RP x DV accumulators (16 vectors) in registers.
template <int N, int DV>
__attribute__((always_inline)) inline void block_softmax_values(const float* const s[kRows], const float mx[kRows],
                                                                const float* vT, int64_t Lp, int64_t rows,
                                                                const BlockIo& io) {
  using V = typename Vec<N>::f;
  constexpr int RP = DV >= 16 ? 1 : 16 / DV;
  for (int r0 = 0; r0 < kRows && r0 < rows; r0 += RP) {
    V acc[RP][DV] = {};
    V l[RP] = {};
    for (int64_t j = 0; j < Lp; j += N) {
      V p[RP];
#pragma GCC unroll 4
      for (int r = 0; r < RP; ++r) {
        p[r] = exp2_nonpositive<N>(load<V>(s[r0 + r] + j) - mx[r0 + r]);
        l[r] += p[r];
      }
#pragma GCC unroll 16
      for (int c = 0; c < DV; ++c) {
        const V vv = load<V>(vT + c * Lp + j);
#pragma GCC unroll 4
        for (int r = 0; r < RP; ++r) acc[r][c] += p[r] * vv;
      }
    }
    for (int r = 0; r < RP && r0 + r < rows; ++r) {
      const float inv = 1.0f / hsum<N>(l[r]);
      for (int c = 0; c < DV; ++c) io.out[(r0 + r) * io.out_row + c] = hsum<N>(acc[r][c]) * inv;
    }
  }
}

// One block of kRows query rows of one (batch, head) sequence, N keys per vector operation.
//   io.q: [kRows, d] queries (strided rows)
//   kT:   [d, Lp]     keys, transposed so that consecutive keys are contiguous, zero-padded to Lp
//   vT:   [dv, Lp]    values, transposed and padded likewise
//   io.out: [kRows, dv] (strided rows)
//   scratch: [kRows, Lp] (the rows' scores; for other value widths than 4, 8, 16 then their
//            weights), then [kRows, d] (the scaled rows)
// Rows past `rows` (a partial last block) repeat the last valid row and are not written.
template <int N>
__attribute__((always_inline)) inline void attend_block(const BlockIo& io, int64_t rows, const float* kT,
                                                        const float* vT, int64_t Lk, int64_t Lp, int64_t d,
                                                        int64_t dv, float* scratch) {
  using V = typename Vec<N>::f;
  const float* qr[kRows];
  float* s[kRows];
  for (int64_t r = 0; r < kRows; ++r) {
    const float* src = io.q + std::min<int64_t>(r, rows - 1) * io.q_row;
    float* scaled = scratch + kRows * Lp + r * d;
    for (int64_t c = 0; c < d; ++c) scaled[c] = src[c] * io.scale;
    qr[r] = scaled;
    s[r] = scratch + r * Lp;
  }
  V m[kRows];
  int64_t from = 0;
  switch (d) {
    case 4: from = block_scores<N, 4>(qr, kT, Lk, Lp, d, s, m); break;
    case 8: from = block_scores<N, 8>(qr, kT, Lk, Lp, d, s, m); break;
    case 16: from = block_scores<N, 16>(qr, kT, Lk, Lp, d, s, m); break;
    default: from = block_scores<N, 0>(qr, kT, Lk, Lp, d, s, m); break;
  }
  // Padding keys get the weight 0 (2^-126 on 8 lanes; their values are 0); the maximum is completed over the
  // vectors block_scores did not cover.
  float mx[kRows];
  for (int64_t r = 0; r < kRows; ++r) {
    float* sr = s[r];
    for (int64_t j = Lk; j < Lp; ++j) sr[j] = -1e30f;
    V mr = m[r];
    for (int64_t j = from; j < Lp; j += N) {
      const V x = load<V>(sr + j);
      mr = x > mr ? x : mr;
    }
    mx[r] = hmax<N>(mr);
  }
  switch (dv) {
    case 4: return block_softmax_values<N, 4>(s, mx, vT, Lp, rows, io);
    case 8: return block_softmax_values<N, 8>(s, mx, vT, Lp, rows, io);
    case 16: return block_softmax_values<N, 16>(s, mx, vT, Lp, rows, io);
    default: break;
  }
  // Other value widths: the weights are written back, then reduced against one channel at a time.
  float inv[kRows];
  for (int64_t r = 0; r < kRows; ++r) {
    float* sr = s[r];
    V l = {};
    for (int64_t j = 0; j < Lp; j += N) {
      const V p = exp2_nonpositive<N>(load<V>(sr + j) - mx[r]);
      store(sr + j, p);
      l += p;
    }
    inv[r] = 1.0f / hsum<N>(l);
  }
  for (int64_t c = 0; c < dv; ++c) {
    const float* vc = vT + c * Lp;
    V o0 = {}, o1 = {}, o2 = {}, o3 = {};
    for (int64_t j = 0; j < Lp; j += N) {
      const V vv = load<V>(vc + j);
      o0 += load<V>(s[0] + j) * vv;
      o1 += load<V>(s[1] + j) * vv;
      o2 += load<V>(s[2] + j) * vv;
      o3 += load<V>(s[3] + j) * vv;
    }
    const float o[kRows] = {hsum<N>(o0), hsum<N>(o1), hsum<N>(o2), hsum<N>(o3)};
    for (int64_t r = 0; r < rows; ++r) io.out[r * io.out_row + c] = o[r] * inv[r];
  }
}

// The block compiled three times: for AVX-512 (16 floats per operation), for AVX2 with FMA (8)
// and for the baseline (SSE2, 8 floats as two registers), chosen once at run time.
using BlockFn = void (*)(const BlockIo&, int64_t, const float*, const float*, int64_t, int64_t, int64_t, int64_t,
                         float*);
__attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma"))) void attend_block_avx512(
    const BlockIo& io, int64_t rows, const float* kT, const float* vT, int64_t Lk, int64_t Lp, int64_t d, int64_t dv,
    float* s) {
  attend_block<16>(io, rows, kT, vT, Lk, Lp, d, dv, s);
}
__attribute__((target("avx2,fma"))) void attend_block_avx2(const BlockIo& io, int64_t rows, const float* kT,
                                                          const float* vT, int64_t Lk, int64_t Lp, int64_t d,
                                                          int64_t dv, float* s) {
  attend_block<8>(io, rows, kT, vT, Lk, Lp, d, dv, s);
}
void attend_block_baseline(const BlockIo& io, int64_t rows, const float* kT, const float* vT, int64_t Lk, int64_t Lp,
                           int64_t d, int64_t dv, float* s) {
  attend_block<8>(io, rows, kT, vT, Lk, Lp, d, dv, s);
}

BlockFn block_function() {
  switch (cpu::kernel_isa()) {
    case cpu::Isa::kAvx512: return attend_block_avx512;
    case cpu::Isa::kAvx2: return attend_block_avx2;
    default: return attend_block_baseline;
  }
}

}  // namespace

const char* fused_attention_cpu_isa() { return cpu::isa_name(cpu::kernel_isa()); }

bool fused_attention_cpu_applies(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool has_mask) {
  if (has_mask) return false;
  const at::ScalarType dtype = q.scalar_type();
  if (dtype != at::kFloat && dtype != at::kBFloat16) return false;
  for (const at::Tensor* t : {&q, &k, &v}) {
    if (!t->device().is_cpu() || t->scalar_type() != dtype) return false;
    if (at::GradMode::is_enabled() && t->requires_grad()) return false;
  }
  return q.dim() == 4 && q.size(3) <= kFusedAttentionMaxHeadDim && v.size(3) <= kFusedAttentionMaxHeadDim &&
         k.size(2) > 0;
}

at::Tensor fused_attention_cpu(const at::Tensor& q_in, const at::Tensor& k, const at::Tensor& v) {
  RECORD_FUNCTION("vdm::fused_attention_cpu", std::vector<c10::IValue>());
  const int64_t B = q_in.size(0), H = q_in.size(1), Lq = q_in.size(2), d = q_in.size(3);
  const int64_t Lk = k.size(2), dv = v.size(3);
  const int64_t N = B * H;
  const float scale = static_cast<float>(1.4426950408889634 / std::sqrt(static_cast<double>(d)));  // log2(e)/sqrt(d)
  const int64_t Lp = (Lk + kKeyPadding - 1) / kKeyPadding * kKeyPadding;
  const at::TensorOptions f32 = q_in.options().dtype(at::kFloat);
  // Queries are read where they are (typically heads split from a projection: [B, L, heads, d]
  // seen as [B, heads, L, d]); only bfloat16 is widened, and a layout without contiguous channels
  // copied.
  at::Tensor q = q_in.to(at::kFloat);
  if (q.stride(3) != 1) q = q.contiguous();
  // Keys and values transposed ([B, heads, d, Lp], [B, heads, dv, Lp]), widened to float32 and
  // zero-padded to whole vectors, in one strided copy each.
  auto transposed = [&](const at::Tensor& t, int64_t width) {
    at::Tensor tT = at::empty({B, H, width, Lp}, f32);
    if (Lp > Lk) tT.narrow(3, Lk, Lp - Lk).zero_();
    tT.narrow(3, 0, Lk).copy_(t.transpose(2, 3));
    return tT;
  };
  const at::Tensor kT = transposed(k, d), vT = transposed(v, dv);
  // The output is laid out [B, Lq, heads, dv] (heads merged, as the output projection reads it)
  // and returned as its [B, heads, Lq, dv] view.
  at::Tensor out = at::empty({B, Lq, H, dv}, f32);
  const float* qp = q.data_ptr<float>();
  const int64_t qs0 = q.stride(0), qs1 = q.stride(1), qs2 = q.stride(2);
  const float* kp = kT.data_ptr<float>();
  const float* vp = vT.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t blocks_per_seq = (Lq + kRows - 1) / kRows;
  // About 64k score evaluations per task keeps the scheduling overhead small.
  const int64_t grain = std::max<int64_t>(1, 65536 / (kRows * Lp));
  const BlockFn block = block_function();
  at::parallel_for(0, N * blocks_per_seq, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(static_cast<size_t>(kRows * (Lp + d)));
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / blocks_per_seq, r0 = (i % blocks_per_seq) * kRows;
      const int64_t b = n / H, h = n % H;
      const int64_t rows = std::min(kRows, Lq - r0);
      const BlockIo io{qp + b * qs0 + h * qs1 + r0 * qs2, qs2, scale, op + ((b * Lq + r0) * H + h) * dv, H * dv};
      block(io, rows, kp + n * d * Lp, vp + n * dv * Lp, Lk, Lp, d, dv, scratch.data());
    }
  });
  return out.transpose(1, 2).to(q_in.scalar_type());
}

}  // namespace vdm::models
