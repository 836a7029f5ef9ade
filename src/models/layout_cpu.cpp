#include "models/layout_cpu.h"

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <vector>

#include "models/cpu_vector.h"

namespace vdm::models {

namespace {

using V8 = cpu::Vec<8>::f;

// Planes p = (p1, p2) of [P1, P2]: the source plane is [R rows, K columns] (columns contiguous,
// rows src_rs apart), the destination plane its transpose [K rows, R columns] (columns contiguous,
// rows dst_rs apart); a residual, when given, is laid out as the destination.
struct Planes {
  int64_t P1, P2, R, K;
  int64_t src_p1, src_p2, src_rs;
  int64_t dst_p1, dst_p2, dst_rs;
};

template <class T>
struct Transpose {
  const T* src;
  T* dst;
  const T* residual;
  Planes g;
};

// An 8x8 block in registers: in[i] holds row i, out[j] column j (unpack pairs of rows, then pairs of
// pairs, then the 128-bit halves).
__attribute__((always_inline)) inline void transpose8(const V8 (&in)[8], V8 (&out)[8]) {
  V8 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shufflevector(in[i], in[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = __builtin_shufflevector(in[i], in[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = __builtin_shufflevector(t[i], t[i + 2], 0, 1, 8, 9, 4, 5, 12, 13);
    u[i + 1] = __builtin_shufflevector(t[i], t[i + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    u[i + 2] = __builtin_shufflevector(t[i + 1], t[i + 3], 0, 1, 8, 9, 4, 5, 12, 13);
    u[i + 3] = __builtin_shufflevector(t[i + 1], t[i + 3], 2, 3, 10, 11, 6, 7, 14, 15);
  }
  for (int j = 0; j < 4; ++j) {
    out[j] = __builtin_shufflevector(u[j], u[j + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    out[j + 4] = __builtin_shufflevector(u[j], u[j + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

// Destination rows [k0, k1) of plane `p`.
template <class T>
__attribute__((always_inline)) inline void transpose_rows(const Transpose<T>& t, int64_t p, int64_t k0, int64_t k1) {
  const T* src = t.src + (p / t.g.P2) * t.g.src_p1 + (p % t.g.P2) * t.g.src_p2;
  const int64_t dst_offset = (p / t.g.P2) * t.g.dst_p1 + (p % t.g.P2) * t.g.dst_p2;
  T* dst = t.dst + dst_offset;
  const T* res = t.residual ? t.residual + dst_offset : nullptr;
  auto element = [&](int64_t k, int64_t r) {
    float v = cpu::load_one(src + r * t.g.src_rs + k);
    if (res) v += cpu::load_one(res + k * t.g.dst_rs + r);
    cpu::store_one(dst + k * t.g.dst_rs + r, v);
  };
  int64_t k = k0;
  for (; k + 8 <= k1; k += 8) {
    int64_t r = 0;
    for (; r + 8 <= t.g.R; r += 8) {
      V8 in[8], out[8];
      for (int i = 0; i < 8; ++i) in[i] = cpu::load_lanes<8>(src + (r + i) * t.g.src_rs + k);
      transpose8(in, out);
      for (int j = 0; j < 8; ++j) {
        const int64_t at = (k + j) * t.g.dst_rs + r;
        cpu::store_lanes<8>(dst + at, res ? out[j] + cpu::load_lanes<8>(res + at) : out[j]);
      }
    }
    for (; r < t.g.R; ++r)
      for (int j = 0; j < 8; ++j) element(k + j, r);
  }
  for (; k < k1; ++k)
    for (int64_t r = 0; r < t.g.R; ++r) element(k, r);
}

template <class T>
using RowsFn = void (*)(const Transpose<T>&, int64_t, int64_t, int64_t);
template <class T>
__attribute__((target("avx2,fma"))) void rows_avx2(const Transpose<T>& t, int64_t p, int64_t k0, int64_t k1) {
  transpose_rows(t, p, k0, k1);
}
template <class T>
void rows_baseline(const Transpose<T>& t, int64_t p, int64_t k0, int64_t k1) {
  transpose_rows(t, p, k0, k1);
}

// Every plane, in tasks of up to 64 destination rows.
template <class T>
void run(const Transpose<T>& t) {
  const RowsFn<T> fn = cpu::by_isa<RowsFn<T>>(rows_avx2<T>, rows_avx2<T>, rows_baseline<T>);
  constexpr int64_t kRows = 64;
  const int64_t chunks = (t.g.K + kRows - 1) / kRows;
  at::parallel_for(0, t.g.P1 * t.g.P2 * chunks, 1, [&](int64_t a, int64_t b) {
    for (int64_t task = a; task < b; ++task) {
      const int64_t k0 = (task % chunks) * kRows;
      fn(t, task / chunks, k0, std::min(t.g.K, k0 + kRows));
    }
  });
}

// src into dst (plus residual, when defined), all of one dtype.
void transpose(const at::Tensor& src, at::Tensor& dst, const at::Tensor& residual, const Planes& g) {
  auto typed = [&](auto type) {
    using T = decltype(type);
    run(Transpose<T>{static_cast<const T*>(src.data_ptr()), static_cast<T*>(dst.data_ptr()),
                     residual.defined() ? static_cast<const T*>(residual.data_ptr()) : nullptr, g});
  };
  if (src.scalar_type() == at::kBFloat16)
    typed(uint16_t{});
  else
    typed(float{});
}

}  // namespace

bool token_layout_cpu_applies(const at::Tensor& x) {
  if (!x.device().is_cpu() || (x.scalar_type() != at::kFloat && x.scalar_type() != at::kBFloat16)) return false;
  // Gradients off altogether: the kernels have no backward, and what they move is computed from x
  // by layers whose parameters may need a gradient even where x does not.
  return !at::GradMode::is_enabled();
}

at::Tensor tokens_from_channels_cpu(const at::Tensor& input) {
  RECORD_FUNCTION("vdm::tokens_from_channels_cpu", std::vector<c10::IValue>());
  TORCH_CHECK(input.dim() == 4 || input.dim() == 5, "tokens_from_channels_cpu: expected [N, C, H, W] or [B, C, F, H, W], got ",
              input.sizes());
  // [B, C, F, H, W] with contiguous H x W planes (a 4-D input is F = 1).
  at::Tensor x = input.dim() == 4 ? input.unsqueeze(2) : input;
  const int64_t W = x.size(4);
  if (x.stride(4) != 1 || (x.size(3) > 1 && x.stride(3) != W)) x = x.contiguous();
  const int64_t B = x.size(0), C = x.size(1), F = x.size(2), S = x.size(3) * W;
  at::Tensor tokens = at::empty({B, S, F, C}, x.options());
  // Plane (b, f): [C rows, S columns] -> [S rows, C columns], rows F*C apart.
  transpose(x, tokens, at::Tensor(), {B, F, C, S, x.stride(0), x.stride(2), x.stride(1), S * F * C, C, F * C});
  return input.dim() == 4 ? tokens.view({B, S, C}) : tokens;
}

at::Tensor channels_from_tokens_add_cpu(const at::Tensor& tokens, const at::Tensor& residual) {
  RECORD_FUNCTION("vdm::channels_from_tokens_add_cpu", std::vector<c10::IValue>());
  TORCH_CHECK(tokens.dim() == 4 && tokens.is_contiguous() && residual.dim() == 4 && residual.is_contiguous(),
              "channels_from_tokens_add_cpu: expected contiguous tokens [B, S, F, C] and residual [B*F, C, H, W], got ",
              tokens.sizes(), " and ", residual.sizes());
  const int64_t B = tokens.size(0), S = tokens.size(1), F = tokens.size(2), C = tokens.size(3);
  TORCH_CHECK(residual.size(0) == B * F && residual.size(1) == C && residual.size(2) * residual.size(3) == S &&
                  residual.scalar_type() == tokens.scalar_type(),
              "channels_from_tokens_add_cpu: residual ", residual.sizes(), " does not match tokens ", tokens.sizes());
  at::Tensor out = at::empty_like(residual);
  // Plane (b, f): [S rows, C columns], rows F*C apart -> [C rows, S columns].
  transpose(tokens, out, residual, {B, F, S, C, S * F * C, C, F * C, F * C * S, C * S, S});
  return out;
}

}  // namespace vdm::models
