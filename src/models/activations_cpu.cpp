#include "models/activations_cpu.h"

#include <ATen/record_function.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "models/cpu_vector.h"

namespace vdm::models {

namespace {

using cpu::Vec;

// GELU of N lanes: x/2 (1 + erf(x / sqrt(2))), erf by Abramowitz and Stegun 7.1.26 on |z|,
// e^(-z^2) as 2^(-z^2 log2(e)).
template <int N>
__attribute__((always_inline)) inline typename Vec<N>::f gelu_lanes(typename Vec<N>::f x) {
  using V = typename Vec<N>::f;
  const V z = x * 0.70710678118654752f;
  V az = z < 0.0f ? -z : z;
  az = az > 16.0f ? 16.0f : az;  // erf(16) is 1 in float; keeps az * az finite (NaN kept)
  const V t = 1.0f / (az * 0.3275911f + 1.0f);
  V p = t * 1.061405429f - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  p = p * t;
  const V e = cpu::exp2_nonpositive<N>(az * az * -1.4426950408889634f);
  const V erf_abs = 1.0f - p * e;
  const V erf = z < 0.0f ? -erf_abs : erf_abs;
  return x * 0.5f * (erf + 1.0f);
}

inline float gelu_scalar(float x) { return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f)); }

// out[r, j] = (a ? a[r, j] : 1) * GELU(g[r, j]) for rows r in [r0, r1), columns j < W; row strides
// in elements. T: float or uint16_t (bfloat16 bits); arithmetic in float32.
template <int N, class T>
__attribute__((always_inline)) inline void gelu_rows(const T* a, const T* g, int64_t in_stride, T* out, int64_t W,
                                                     int64_t r0, int64_t r1) {
  using V = typename Vec<N>::f;
  for (int64_t r = r0; r < r1; ++r) {
    const T* gr = g + r * in_stride;
    const T* ar = a ? a + r * in_stride : nullptr;
    T* o = out + r * W;
    int64_t j = 0;
    for (; j + N <= W; j += N) {
      V y = gelu_lanes<N>(cpu::load_lanes<N>(gr + j));
      if (ar) y *= cpu::load_lanes<N>(ar + j);
      cpu::store_lanes<N>(o + j, y);
    }
    for (; j < W; ++j) cpu::store_one(o + j, (ar ? cpu::load_one(ar + j) : 1.0f) * gelu_scalar(cpu::load_one(gr + j)));
  }
}

template <class T>
using RowsFn = void (*)(const T*, const T*, int64_t, T*, int64_t, int64_t, int64_t);
template <class T>
__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma"))) void gelu_rows_avx512(
    const T* a, const T* g, int64_t s, T* o, int64_t W, int64_t r0, int64_t r1) {
  gelu_rows<16>(a, g, s, o, W, r0, r1);
}
template <class T>
__attribute__((target("avx2,fma"))) void gelu_rows_avx2(const T* a, const T* g, int64_t s, T* o, int64_t W,
                                                       int64_t r0, int64_t r1) {
  gelu_rows<8>(a, g, s, o, W, r0, r1);
}
template <class T>
void gelu_rows_baseline(const T* a, const T* g, int64_t s, T* o, int64_t W, int64_t r0, int64_t r1) {
  gelu_rows<8>(a, g, s, o, W, r0, r1);
}
template <class T>
RowsFn<T> rows_function() {
  return cpu::by_isa<RowsFn<T>>(gelu_rows_avx512<T>, gelu_rows_avx2<T>, gelu_rows_baseline<T>);
}

// Runs the row kernel over a contiguous [rows, in_width] tensor of element type T; `gated` takes
// the first half of each row as the multiplier and the second as the GELU input.
template <class T>
at::Tensor run_typed(const at::Tensor& x2d, bool gated) {
  const int64_t rows = x2d.size(0), in_width = x2d.size(1);
  const int64_t W = gated ? in_width / 2 : in_width;
  at::Tensor out = at::empty({rows, W}, x2d.options());
  const T* base = static_cast<const T*>(x2d.data_ptr());
  const T* a = gated ? base : nullptr;
  const T* g = gated ? base + W : base;
  T* o = static_cast<T*>(out.data_ptr());
  const RowsFn<T> fn = rows_function<T>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(W, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) { fn(a, g, in_width, o, W, r0, r1); });
  return out;
}

at::Tensor run(const at::Tensor& x, bool gated) {
  RECORD_FUNCTION("vdm::fused_gelu_cpu", std::vector<c10::IValue>());
  const int64_t width = x.size(-1);
  const at::Tensor x2d = x.contiguous().view({-1, width});
  at::Tensor out = x.scalar_type() == at::kBFloat16 ? run_typed<uint16_t>(x2d, gated) : run_typed<float>(x2d, gated);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = gated ? width / 2 : width;
  return out.view(shape);
}

}  // namespace

bool fused_gelu_cpu_applies(const at::Tensor& x) {
  if (!x.device().is_cpu()) return false;
  if (x.scalar_type() != at::kFloat && x.scalar_type() != at::kBFloat16) return false;
  return !(at::GradMode::is_enabled() && x.requires_grad()) && x.dim() >= 1 && x.numel() > 0;
}

at::Tensor fused_gelu_cpu(const at::Tensor& x) { return run(x, false); }

at::Tensor fused_geglu_cpu(const at::Tensor& h) {
  TORCH_CHECK(h.size(-1) % 2 == 0, "fused_geglu_cpu: last dimension ", h.size(-1), " is odd");
  return run(h, true);
}

}  // namespace vdm::models
