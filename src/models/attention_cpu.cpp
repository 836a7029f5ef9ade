#include "models/attention_cpu.h"

#include <ATen/record_function.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "models/cpu_vector.h"

#include <immintrin.h>

namespace vdm::models {

namespace {

using cpu::Vec;
using cpu::load;
using cpu::store;
using cpu::hsum;
using cpu::hmax;
using cpu::exp2_nonpositive;
using cpu::load_one;
using cpu::store_one;

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

// A row's maximum score, completed: the padding keys [Lk, Lp) get the score -1e30 (so the weight
// 0, or 2^-126 on 8 lanes, against values of 0), and the vectors from `from` on, which the scores
// pass left out of m, join it.
template <int N>
__attribute__((always_inline)) inline float row_max(float* s, typename Vec<N>::f m, int64_t Lk, int64_t Lp,
                                                    int64_t from) {
  using V = typename Vec<N>::f;
  for (int64_t j = Lk; j < Lp; ++j) s[j] = -1e30f;
  for (int64_t j = from; j < Lp; j += N) {
    const V x = load<V>(s + j);
    m = x > m ? x : m;
  }
  return hmax<N>(m);
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
  float mx[kRows];
  for (int64_t r = 0; r < kRows; ++r) mx[r] = row_max<N>(s[r], m[r], Lk, Lp, from);
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

// Short key sequences (temporal attention over the frames, cross-attention over the text): the
// queries go in the vector lanes instead of the keys. One group of N queries of one (batch, head)
// sequence is scored against each key in turn with the key's channels broadcast, so the row maximum,
// the softmax sum and the value products are all lane-wise: no horizontal reduction per row, and the
// keys and values are read where they are ([Lk, d] rows with channels contiguous), without the
// transposed copies of the long-sequence path. T: float, or uint16_t for bfloat16, whose queries are
// widened as they are read and outputs rounded to nearest even as written, and whose keys and values
// are widened into the scratch once per (batch, head) sequence (`fresh`: the sequence's first group
// in this task).
template <class T>
struct ShortIo {
  const T* q;  // the group's first query row; rows q_row apart, channels contiguous
  int64_t q_row;
  const T* k;  // [Lk, d] rows k_row apart
  int64_t k_row;
  const T* v;  // [Lk, dv] rows v_row apart
  int64_t v_row;
  float scale;  // log2(e) / sqrt(d)
  T* out;       // the group's first output row; rows out_row apart
  int64_t out_row;
  bool fresh;
};

// The float32 keys and values a group reads.
struct ShortKeys {
  const float* k;  // [Lk, d] rows k_row apart
  int64_t k_row;
  const float* v;  // [Lk, dv] rows v_row apart
  int64_t v_row;
};

// Scores of the N lanes' queries (qT: [d, N], scaled) against keys [0, Lk) into S ([Lk, N]);
// returns their lane-wise maximum. Four keys at a time for independent accumulation chains.
template <int N, int D>
__attribute__((always_inline)) inline typename Vec<N>::f short_scores(const float* qT, const ShortKeys& io,
                                                                       int64_t Lk, int64_t d, float* S) {
  using V = typename Vec<N>::f;
  const int64_t dd = D > 0 ? D : d;
  V m = V{} - 1e30f;
  int64_t j = 0;
  for (; j + 4 <= Lk; j += 4) {
    const float* k0 = io.k + j * io.k_row;
    const float* k1 = k0 + io.k_row;
    const float* k2 = k1 + io.k_row;
    const float* k3 = k2 + io.k_row;
    V a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (int64_t c = 0; c < dd; ++c) {
      const V qc = load<V>(qT + c * N);
      a0 += qc * k0[c];
      a1 += qc * k1[c];
      a2 += qc * k2[c];
      a3 += qc * k3[c];
    }
    store(S + j * N, a0), store(S + (j + 1) * N, a1), store(S + (j + 2) * N, a2), store(S + (j + 3) * N, a3);
    m = a0 > m ? a0 : m;
    m = a1 > m ? a1 : m;
    m = a2 > m ? a2 : m;
    m = a3 > m ? a3 : m;
  }
  for (; j < Lk; ++j) {
    const float* kj = io.k + j * io.k_row;
    V a = {};
    for (int64_t c = 0; c < dd; ++c) a += load<V>(qT + c * N) * kj[c];
    store(S + j * N, a);
    m = a > m ? a : m;
  }
  return m;
}

// The weights 2^(S - m), their sum and their products with the values, lane-wise. DV > 0: that many
// value channels, accumulated in registers as the weights are made; DV = 0: the weights are written
// over S, then the channels are accumulated eight at a time. acc receives [dv, N], l the sums.
template <int N, int DV>
__attribute__((always_inline)) inline typename Vec<N>::f short_softmax_values(float* S, typename Vec<N>::f m,
                                                                               const ShortKeys& io, int64_t Lk,
                                                                               int64_t dv, float* acc_out) {
  using V = typename Vec<N>::f;
  V l = {};
  if constexpr (DV > 0) {
    V acc[DV] = {};
    for (int64_t j = 0; j < Lk; ++j) {
      const V p = exp2_nonpositive<N>(load<V>(S + j * N) - m);
      l += p;
      const float* vj = io.v + j * io.v_row;
#pragma GCC unroll 16
      for (int c = 0; c < DV; ++c) acc[c] += p * vj[c];
    }
    for (int c = 0; c < DV; ++c) store(acc_out + c * N, acc[c]);
  } else {
    for (int64_t j = 0; j < Lk; ++j) {
      const V p = exp2_nonpositive<N>(load<V>(S + j * N) - m);
      l += p;
      store(S + j * N, p);
    }
    int64_t c0 = 0;
    for (; c0 + 8 <= dv; c0 += 8) {
      V acc[8] = {};
      for (int64_t j = 0; j < Lk; ++j) {
        const V p = load<V>(S + j * N);
        const float* vj = io.v + j * io.v_row + c0;
#pragma GCC unroll 8
        for (int c = 0; c < 8; ++c) acc[c] += p * vj[c];
      }
      for (int c = 0; c < 8; ++c) store(acc_out + (c0 + c) * N, acc[c]);
    }
    for (; c0 < dv; ++c0) {
      V a = {};
      for (int64_t j = 0; j < Lk; ++j) a += load<V>(S + j * N) * io.v[j * io.v_row + c0];
      store(acc_out + c0 * N, a);
    }
  }
  return l;
}

// One group of up to N queries (`rows`; lanes past it repeat the last row and are not written).
//   scratch: [d, N] (the scaled queries, transposed), [Lk, N] (scores, then weights), [dv, N], then
//   for bfloat16 the sequence's widened keys [Lk, d] and values [Lk, dv]
template <int N, class T>
__attribute__((always_inline)) inline void attend_short(const ShortIo<T>& io, int64_t rows, int64_t Lk, int64_t d,
                                                        int64_t dv, float* scratch) {
  using V = typename Vec<N>::f;
  float* qT = scratch;
  float* S = qT + d * N;
  float* acc = S + Lk * N;
  ShortKeys kv{nullptr, 0, nullptr, 0};
  if constexpr (std::is_same_v<T, float>) {
    kv = {io.k, io.k_row, io.v, io.v_row};
  } else {
    float* k = acc + dv * N;
    float* v = k + Lk * d;
    if (io.fresh) {
      for (int64_t j = 0; j < Lk; ++j) {
        cpu::widen_bf16<N>(io.k + j * io.k_row, k + j * d, d);
        cpu::widen_bf16<N>(io.v + j * io.v_row, v + j * dv, dv);
      }
    }
    kv = {k, d, v, dv};
  }
  for (int64_t r = 0; r < N; ++r) {
    const T* src = io.q + std::min<int64_t>(r, rows - 1) * io.q_row;
    for (int64_t c = 0; c < d; ++c) qT[c * N + r] = load_one(src + c) * io.scale;
  }
  V m;
  switch (d) {
    case 4: m = short_scores<N, 4>(qT, kv, Lk, d, S); break;
    case 8: m = short_scores<N, 8>(qT, kv, Lk, d, S); break;
    case 16: m = short_scores<N, 16>(qT, kv, Lk, d, S); break;
    default: m = short_scores<N, 0>(qT, kv, Lk, d, S); break;
  }
  V l;
  switch (dv) {
    case 4: l = short_softmax_values<N, 4>(S, m, kv, Lk, dv, acc); break;
    case 8: l = short_softmax_values<N, 8>(S, m, kv, Lk, dv, acc); break;
    case 16: l = short_softmax_values<N, 16>(S, m, kv, Lk, dv, acc); break;
    default: l = short_softmax_values<N, 0>(S, m, kv, Lk, dv, acc); break;
  }
  const V inv = 1.0f / l;
  for (int64_t c = 0; c < dv; ++c) store(acc + c * N, load<V>(acc + c * N) * inv);
  for (int64_t r = 0; r < rows; ++r) {
    T* o = io.out + r * io.out_row;
    for (int64_t c = 0; c < dv; ++c) store_one(o + c, acc[c * N + r]);
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

BlockFn block_function() { return cpu::by_isa<BlockFn>(attend_block_avx512, attend_block_avx2, attend_block_baseline); }

// The short-sequence group likewise: 16 queries per group on AVX-512, 8 otherwise; each for float32
// and bfloat16.
template <class T>
using ShortFn = void (*)(const ShortIo<T>&, int64_t, int64_t, int64_t, int64_t, float*);
template <class T>
__attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma"))) void attend_short_avx512(
    const ShortIo<T>& io, int64_t rows, int64_t Lk, int64_t d, int64_t dv, float* s) {
  attend_short<16>(io, rows, Lk, d, dv, s);
}
template <class T>
__attribute__((target("avx2,fma"))) void attend_short_avx2(const ShortIo<T>& io, int64_t rows, int64_t Lk, int64_t d,
                                                          int64_t dv, float* s) {
  attend_short<8>(io, rows, Lk, d, dv, s);
}
template <class T>
void attend_short_baseline(const ShortIo<T>& io, int64_t rows, int64_t Lk, int64_t d, int64_t dv, float* s) {
  attend_short<8>(io, rows, Lk, d, dv, s);
}

template <class T>
struct ShortKernel {
  ShortFn<T> fn;
  int64_t lanes;
};
template <class T>
ShortKernel<T> short_function() {
  return cpu::by_isa<ShortKernel<T>>({attend_short_avx512<T>, 16}, {attend_short_avx2<T>, 8},
                                     {attend_short_baseline<T>, 8});
}

// The factor the kernels apply to q . k: 1/sqrt(d) for the softmax, times log2(e) for 2^x.
float score_scale(int64_t d) { return static_cast<float>(1.4426950408889634 / std::sqrt(static_cast<double>(d))); }

// bfloat16 long sequences on CPUs with AVX512-BF16: the two products take bfloat16 pairs
// (vdpbf16ps: each float32 lane adds two bfloat16 products), the softmax stays float32.
//   kP: [D/2, Lp] channel pairs of the keys (one 32-bit pair per key), zero-padded to Lp (a multiple
//       of 32) keys
//   vT: [DV, Lp] values, keys contiguous, zero-padded likewise
//   q rows: bfloat16 read in place; out rows: bfloat16, rounded to nearest even
//   s: [kRows, Lp] scores
// The scores are q . k exactly as the float32 kernel forms them from the same bfloat16 values (pair
// sums in float32); the weights 2^(s * scale - max * scale), from the degree-3 polynomial, are rounded
// to bfloat16 for the product with the values, as bfloat16 flash attention does, and summed in float32
// for the normalisation.
constexpr int64_t kBf16KeyPadding = 32;

struct Bf16Block {
  const uint16_t* q;
  int64_t q_row;
  const uint32_t* kP;
  const uint16_t* vT;
  int64_t Lk, Lp;
  float scale;  // log2(e) / sqrt(d)
  uint16_t* out;
  int64_t out_row;
};

// 32 bfloat16 values from their bits (__m512bh's element type differs between compilers, so no cast).
__attribute__((target("avx512f,avx512bf16"), always_inline)) inline __m512bh bf16_vector(__m512i bits) {
  __m512bh v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

template <int D, int DV>
__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx512bf16,avx2,fma"))) void attend_block_bf16(
    const Bf16Block& io, int64_t rows, float* scratch) {
  using V = typename Vec<16>::f;
  float* s[kRows];
  __m512bh qp[kRows][D / 2];
  for (int64_t r = 0; r < kRows; ++r) {
    s[r] = scratch + r * io.Lp;
    const uint16_t* src = io.q + std::min<int64_t>(r, rows - 1) * io.q_row;
    for (int c = 0; c < D / 2; ++c) {
      uint32_t pair;
      std::memcpy(&pair, src + 2 * c, sizeof(pair));
      qp[r][c] = bf16_vector(_mm512_set1_epi32(static_cast<int>(pair)));
    }
  }
  // Scores, 16 keys per vector, and the rows' maxima over the vectors wholly within the real keys.
  V m[kRows];
  for (int r = 0; r < kRows; ++r) m[r] = V{} - 1e30f;
  const int64_t whole = io.Lk / 16 * 16;
  for (int64_t j = 0; j < io.Lp; j += 16) {
    V a[kRows] = {};
#pragma GCC unroll 8
    for (int c = 0; c < D / 2; ++c) {
      const __m512bh kv = bf16_vector(_mm512_loadu_si512(io.kP + c * io.Lp + j));
#pragma GCC unroll 4
      for (int r = 0; r < kRows; ++r) a[r] = _mm512_dpbf16_ps(a[r], kv, qp[r][c]);
    }
    for (int r = 0; r < kRows; ++r) {
      store(s[r] + j, a[r]);
      if (j < whole) m[r] = a[r] > m[r] ? a[r] : m[r];
    }
  }
  float ms[kRows];  // each row's maximum, scaled
  for (int64_t r = 0; r < kRows; ++r) ms[r] = row_max<16>(s[r], m[r], io.Lk, io.Lp, whole) * io.scale;
  // Weights and their product with the values, 32 keys (one bfloat16 vector) at a time; RP rows
  // keep RP x DV accumulators in registers.
  constexpr int RP = DV >= 16 ? 1 : 16 / DV;
  for (int r0 = 0; r0 < kRows && r0 < rows; r0 += RP) {
    V acc[RP][DV] = {};
    V l[RP] = {};
    for (int64_t j = 0; j < io.Lp; j += 32) {
      __m512bh p[RP];
#pragma GCC unroll 4
      for (int r = 0; r < RP; ++r) {
        const V p0 = exp2_nonpositive<16, 3>(load<V>(s[r0 + r] + j) * io.scale - ms[r0 + r]);
        const V p1 = exp2_nonpositive<16, 3>(load<V>(s[r0 + r] + j + 16) * io.scale - ms[r0 + r]);
        l[r] += p0 + p1;
        p[r] = _mm512_cvtne2ps_pbh(p1, p0);  // keys j..j+15 in the low half: pairs of neighbouring keys
      }
#pragma GCC unroll 16
      for (int c = 0; c < DV; ++c) {
        const __m512bh vv = bf16_vector(_mm512_loadu_si512(io.vT + c * io.Lp + j));
#pragma GCC unroll 4
        for (int r = 0; r < RP; ++r) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], p[r], vv);
      }
    }
    for (int r = 0; r < RP && r0 + r < rows; ++r) {
      const float inv = 1.0f / hsum<16>(l[r]);
      for (int c = 0; c < DV; ++c) store_one(io.out + (r0 + r) * io.out_row + c, hsum<16>(acc[r][c]) * inv);
    }
  }
}

using Bf16BlockFn = void (*)(const Bf16Block&, int64_t, float*);

// The instance for head sizes d (keys) and dv (values), or null where there is none (4, 8 or 16
// channels each).
Bf16BlockFn bf16_block_function(int64_t d, int64_t dv) {
  auto for_d = [&](auto D) -> Bf16BlockFn {
    switch (dv) {
      case 4: return attend_block_bf16<decltype(D)::value, 4>;
      case 8: return attend_block_bf16<decltype(D)::value, 8>;
      case 16: return attend_block_bf16<decltype(D)::value, 16>;
      default: return nullptr;
    }
  };
  switch (d) {
    case 4: return for_d(std::integral_constant<int, 4>{});
    case 8: return for_d(std::integral_constant<int, 8>{});
    case 16: return for_d(std::integral_constant<int, 16>{});
    default: return nullptr;
  }
}

// softmax(q k^T / sqrt(d)) v on the bfloat16 kernel; q, k, v bfloat16 with channels contiguous
// -> [B, heads, Lq, dv], the view of a contiguous bfloat16 [B, Lq, heads, dv].
at::Tensor fused_attention_bf16(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, Bf16BlockFn block) {
  const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), d = q.size(3);
  const int64_t Lk = k.size(2), dv = v.size(3);
  const int64_t Lp = (Lk + kBf16KeyPadding - 1) / kBf16KeyPadding * kBf16KeyPadding;
  // Keys as [B, heads, d/2, Lp] channel pairs and values as [B, heads, dv, Lp], zero-padded, in one
  // strided copy each.
  at::Tensor kP = at::empty({B, H, d / 2, Lp, 2}, q.options());
  at::Tensor vT = at::empty({B, H, dv, Lp}, q.options());
  if (Lp > Lk) kP.narrow(3, Lk, Lp - Lk).zero_(), vT.narrow(3, Lk, Lp - Lk).zero_();
  kP.narrow(3, 0, Lk).copy_(k.unflatten(3, {d / 2, 2}).permute({0, 1, 3, 2, 4}));
  vT.narrow(3, 0, Lk).copy_(v.transpose(2, 3));
  at::Tensor out = at::empty({B, Lq, H, dv}, q.options());
  const auto* qp = static_cast<const uint16_t*>(q.data_ptr());
  const auto* kp = static_cast<const uint32_t*>(kP.data_ptr());
  const auto* vp = static_cast<const uint16_t*>(vT.data_ptr());
  uint16_t* op = static_cast<uint16_t*>(out.data_ptr());
  const float scale = score_scale(d);
  const int64_t blocks_per_seq = (Lq + kRows - 1) / kRows;
  const int64_t grain = std::max<int64_t>(1, 65536 / (kRows * Lp));
  at::parallel_for(0, B * H * blocks_per_seq, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(static_cast<size_t>(kRows * Lp));
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / blocks_per_seq, r0 = (i % blocks_per_seq) * kRows;
      const int64_t b = n / H, h = n % H;
      const Bf16Block io{qp + b * q.stride(0) + h * q.stride(1) + r0 * q.stride(2), q.stride(2),
                         kp + n * (d / 2) * Lp, vp + n * dv * Lp, Lk, Lp, scale,
                         op + ((b * Lq + r0) * H + h) * dv, H * dv};
      block(io, std::min(kRows, Lq - r0), scratch.data());
    }
  });
  return out.transpose(1, 2);
}

// softmax(q k^T / sqrt(d)) v with the queries in the lanes (Lk <= kFusedAttentionShortKeys).
//   q, k, v: [B, H, L, d] of T (float, or uint16_t for bfloat16) with channels contiguous
//   -> [B, H, Lq, dv], the view of a contiguous [B, Lq, H, dv] of T
template <class T>
at::Tensor fused_attention_short(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), d = q.size(3);
  const int64_t Lk = k.size(2), dv = v.size(3);
  const float scale = score_scale(d);
  at::Tensor out = at::empty({B, Lq, H, dv}, q.options());
  const ShortKernel<T> kernel = short_function<T>();
  const int64_t lanes = kernel.lanes;
  const int64_t groups = (Lq + lanes - 1) / lanes;
  const T* qp = static_cast<const T*>(q.data_ptr());
  const T* kp = static_cast<const T*>(k.data_ptr());
  const T* vp = static_cast<const T*>(v.data_ptr());
  T* op = static_cast<T*>(out.data_ptr());
  const int64_t widened = std::is_same_v<T, float> ? 0 : Lk * (d + dv);
  // About 64k score evaluations per task.
  const int64_t grain = std::max<int64_t>(1, 65536 / (lanes * Lk * std::max<int64_t>(1, d / 4)));
  at::parallel_for(0, B * H * groups, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(static_cast<size_t>(lanes * (d + Lk + dv) + widened));
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / groups, r0 = (i % groups) * lanes;
      const int64_t b = n / H, h = n % H;
      const ShortIo<T> io{qp + b * q.stride(0) + h * q.stride(1) + r0 * q.stride(2), q.stride(2),
                          kp + b * k.stride(0) + h * k.stride(1), k.stride(2),
                          vp + b * v.stride(0) + h * v.stride(1), v.stride(2),
                          scale, op + ((b * Lq + r0) * H + h) * dv, H * dv,
                          i == begin || r0 == 0};
      kernel.fn(io, std::min(lanes, Lq - r0), Lk, d, dv, scratch.data());
    }
  });
  return out.transpose(1, 2);
}

// softmax(q k^T / sqrt(d)) v over long key sequences on the float32 kernel; bfloat16 inputs are
// widened first and the result rounded back.
//   q, k, v: [B, H, L, d] with channels contiguous -> [B, H, Lq, dv], the view of a contiguous
//   [B, Lq, H, dv]
at::Tensor fused_attention_long(const at::Tensor& q_in, const at::Tensor& k, const at::Tensor& v) {
  const int64_t B = q_in.size(0), H = q_in.size(1), Lq = q_in.size(2), d = q_in.size(3);
  const int64_t Lk = k.size(2), dv = v.size(3);
  const int64_t N = B * H;
  const float scale = score_scale(d);
  const int64_t Lp = (Lk + kKeyPadding - 1) / kKeyPadding * kKeyPadding;
  const at::TensorOptions f32 = q_in.options().dtype(at::kFloat);
  const at::Tensor q = q_in.to(at::kFloat);
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


}  // namespace

const char* fused_attention_cpu_isa() { return cpu::isa_name(cpu::kernel_isa()); }

bool fused_attention_cpu_bf16_pairs() { return cpu::avx512_bf16(); }

bool fused_attention_cpu_applies(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool has_mask) {
  if (has_mask) return false;
  const at::ScalarType dtype = q.scalar_type();
  if (dtype != at::kFloat && dtype != at::kBFloat16) return false;
  for (const at::Tensor* t : {&q, &k, &v}) {
    if (!t->device().is_cpu() || t->scalar_type() != dtype) return false;
    if (at::GradMode::is_enabled() && t->requires_grad()) return false;
  }
  if (q.dim() != 4 || k.size(2) == 0) return false;
  const int64_t max_dim = k.size(2) <= kFusedAttentionShortKeys ? kFusedAttentionShortMaxHeadDim
                                                                  : kFusedAttentionMaxHeadDim;
  return q.size(3) <= max_dim && v.size(3) <= max_dim;
}

at::Tensor fused_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  RECORD_FUNCTION("vdm::fused_attention_cpu", std::vector<c10::IValue>());
  // The heads are read where they are (typically split from a projection: [B, L, heads, d] seen as
  // [B, heads, L, d]); only a layout without contiguous channels is copied.
  auto rows = [](const at::Tensor& t) { return t.stride(3) == 1 ? t : t.contiguous(); };
  const bool bf16 = q.scalar_type() == at::kBFloat16;
  if (k.size(2) <= kFusedAttentionShortKeys)
    return bf16 ? fused_attention_short<uint16_t>(rows(q), rows(k), rows(v))
                : fused_attention_short<float>(rows(q), rows(k), rows(v));
  if (bf16 && fused_attention_cpu_bf16_pairs())
    if (const Bf16BlockFn block = bf16_block_function(q.size(3), v.size(3)))
      return fused_attention_bf16(rows(q), rows(k), rows(v), block);
  return fused_attention_long(rows(q), k, v);
}

}  // namespace vdm::models
