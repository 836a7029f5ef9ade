#include "models/normalization_cpu.h"

#include <ATen/record_function.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <cmath>
#include <type_traits>
#include <vector>

#include "models/cpu_vector.h"

namespace vdm::models {

namespace {

using cpu::Vec;

// A [N, C, F, S] view of the input and output: S contiguous elements per (n, c, f), the other
// three dimensions at the given strides (in elements).
template <class T>
struct Problem {
  const T* x;
  T* y;
  int64_t N, C, F, S, groups;
  int64_t xsN, xsC, xsF, ysN, ysC, ysF;
  const float* weight;  // [C] or null
  const float* bias;    // [C] or null
  float eps;
  bool silu;
};

// y * sigmoid(y) on N lanes: sigmoid from e = exp(-|y|) (never overflows), 1/(1+e) for y >= 0
// and e/(1+e) below.
template <int N>
__attribute__((always_inline)) inline typename Vec<N>::f silu_lanes(typename Vec<N>::f y) {
  using V = typename Vec<N>::f;
  V ay = y < 0.0f ? -y : y;
  ay = ay > 128.0f ? 128.0f : ay;  // e^-128 is 0 in float; keeps the exponent finite (NaN kept)
  const V e = cpu::exp2_nonpositive<N>(ay * -1.4426950408889634f);
  const V r = 1.0f / (e + 1.0f);
  return y * (y < 0.0f ? e * r : r);
}
inline float silu_scalar(float y) { return y / (1.0f + std::exp(-y)); }

// Sum of (x[j] - shift), or of its square, over one row of n elements: float32 lanes, then a
// scalar tail; the two parts added in double. Shared by the group and layer norm statistics.
template <int N, bool Squared, class T>
__attribute__((always_inline)) inline double row_sum(const T* r, int64_t n, float shift) {
  using V = typename Vec<N>::f;
  V acc{};
  int64_t j = 0;
  for (; j + N <= n; j += N) {
    const V d = cpu::load_lanes<N>(r + j) - shift;
    acc += Squared ? d * d : d;
  }
  float tail = 0.0f;
  for (; j < n; ++j) {
    const float d = cpu::load_one(r + j) - shift;
    tail += Squared ? d * d : d;
  }
  return static_cast<double>(cpu::hsum<N>(acc)) + tail;
}

// Groups [g0, g1) of the flattened (n, group) index.
template <int N, class T>
__attribute__((always_inline)) inline void group_norm_groups(const Problem<T>& p, int64_t g0, int64_t g1) {
  using V = typename Vec<N>::f;
  const int64_t cpg = p.C / p.groups;
  const double count = static_cast<double>(cpg * p.F * p.S);
  for (int64_t task = g0; task < g1; ++task) {
    const int64_t n = task / p.groups, c0 = (task % p.groups) * cpg;
    auto row = [&](int64_t c, int64_t f) { return p.x + n * p.xsN + c * p.xsC + f * p.xsF; };
    // Sum over the group of (x - shift), or of its square, in float32 lanes and double across rows.
    auto accumulate = [&](float shift, auto squared) {
      double total = 0.0;
      for (int64_t c = c0; c < c0 + cpg; ++c)
        for (int64_t f = 0; f < p.F; ++f) total += row_sum<N, decltype(squared)::value>(row(c, f), p.S, shift);
      return total;
    };
    const float mean = static_cast<float>(accumulate(0.0f, std::false_type{}) / count);
    const double sq = accumulate(mean, std::true_type{});
    const float rstd = static_cast<float>(1.0 / std::sqrt(sq / count + p.eps));
    for (int64_t c = c0; c < c0 + cpg; ++c) {
      const float a = rstd * (p.weight ? p.weight[c] : 1.0f);
      const float b = (p.bias ? p.bias[c] : 0.0f) - mean * a;
      for (int64_t f = 0; f < p.F; ++f) {
        const T* r = row(c, f);
        T* o = p.y + n * p.ysN + c * p.ysC + f * p.ysF;
        int64_t j = 0;
        for (; j + N <= p.S; j += N) {
          V v = cpu::load_lanes<N>(r + j) * a + b;
          if (p.silu) v = silu_lanes<N>(v);
          cpu::store_lanes<N>(o + j, v);
        }
        for (; j < p.S; ++j) {
          const float v = cpu::load_one(r + j) * a + b;
          cpu::store_one(o + j, p.silu ? silu_scalar(v) : v);
        }
      }
    }
  }
}

template <class T>
using GroupsFn = void (*)(const Problem<T>&, int64_t, int64_t);
template <class T>
__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma"))) void groups_avx512(const Problem<T>& p,
                                                                                          int64_t g0, int64_t g1) {
  group_norm_groups<16>(p, g0, g1);
}
template <class T>
__attribute__((target("avx2,fma"))) void groups_avx2(const Problem<T>& p, int64_t g0, int64_t g1) {
  group_norm_groups<8>(p, g0, g1);
}
template <class T>
void groups_baseline(const Problem<T>& p, int64_t g0, int64_t g1) {
  group_norm_groups<8>(p, g0, g1);
}
template <class T>
GroupsFn<T> groups_function() {
  return cpu::by_isa<GroupsFn<T>>(groups_avx512<T>, groups_avx2<T>, groups_baseline<T>);
}

// The [N, C, F, S] view of x: a contiguous tensor (F = 1), or a dense 5-D [N, C, F, H, W] whose
// H x W planes are contiguous (the temporal layers' permuted view); anything else is copied first.
struct View {
  at::Tensor x;
  int64_t F, S, sN, sC, sF;
};
View view_of(const at::Tensor& in) {
  if (in.dim() == 5 && in.stride(4) == 1 && in.stride(3) == in.size(4) && in.is_non_overlapping_and_dense())
    return {in, in.size(2), in.size(3) * in.size(4), in.stride(0), in.stride(1), in.stride(2)};
  at::Tensor x = in.contiguous();
  const int64_t S = x.numel() / std::max<int64_t>(1, x.size(0) * x.size(1));
  return {x, 1, S, x.size(1) * S, S, 0};
}

template <class T>
void run_typed(const View& v, at::Tensor& y, int64_t groups, const at::Tensor& w, const at::Tensor& b, double eps,
               bool silu) {
  const int64_t ysF = v.F > 1 ? y.stride(2) : 0;
  Problem<T> p{static_cast<const T*>(v.x.data_ptr()),
               static_cast<T*>(y.data_ptr()),
               v.x.size(0),
               v.x.size(1),
               v.F,
               v.S,
               groups,
               v.sN,
               v.sC,
               v.sF,
               y.stride(0),
               y.stride(1),
               ysF,
               w.defined() ? w.data_ptr<float>() : nullptr,
               b.defined() ? b.data_ptr<float>() : nullptr,
               static_cast<float>(eps),
               silu};
  const GroupsFn<T> fn = groups_function<T>();
  const int64_t per_group = (p.C / groups) * p.F * p.S;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(per_group, 1));
  at::parallel_for(0, p.N * groups, grain, [&](int64_t g0, int64_t g1) { fn(p, g0, g1); });
}

at::Tensor float_params(const at::Tensor& t) { return t.defined() ? t.to(at::kFloat).contiguous() : t; }

// ---- layer norm over the last dimension ------------------------------------------------------

// Rows [r0, r1) of x [rows, C] (rows `stride` elements apart, channels contiguous) into y [rows, C]
// (contiguous): mean, then the mean of squared deviations, both in float32, then
// (x - mean) * rstd * weight + bias. LibTorch's CPU layer norm costs about 25 times an elementwise
// pass at the UNet's 32 channels per token, in its per-row set-up.
template <int N, class T>
__attribute__((always_inline)) inline void layer_norm_rows(const T* x, int64_t stride, T* y, int64_t C,
                                                           const float* w, const float* b, float eps, int64_t r0,
                                                           int64_t r1) {
  using V = typename Vec<N>::f;
  const float inv_c = 1.0f / static_cast<float>(C);
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x + r * stride;
    T* yr = y + r * C;
    const float mean = static_cast<float>(row_sum<N, false>(xr, C, 0.0f)) * inv_c;
    const float rstd = 1.0f / std::sqrt(static_cast<float>(row_sum<N, true>(xr, C, mean)) * inv_c + eps);
    int64_t j = 0;
    for (; j + N <= C; j += N) {
      V v = (cpu::load_lanes<N>(xr + j) - mean) * rstd;
      if (w) v *= cpu::load_lanes<N>(w + j);
      if (b) v += cpu::load_lanes<N>(b + j);
      cpu::store_lanes<N>(yr + j, v);
    }
    for (; j < C; ++j) {
      float v = (cpu::load_one(xr + j) - mean) * rstd;
      if (w) v *= w[j];
      if (b) v += b[j];
      cpu::store_one(yr + j, v);
    }
  }
}

template <class T>
using RowsFn = void (*)(const T*, int64_t, T*, int64_t, const float*, const float*, float, int64_t, int64_t);
template <class T>
__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma"))) void rows_avx512(
    const T* x, int64_t stride, T* y, int64_t C, const float* w, const float* b, float eps, int64_t r0, int64_t r1) {
  layer_norm_rows<16>(x, stride, y, C, w, b, eps, r0, r1);
}
template <class T>
__attribute__((target("avx2,fma"))) void rows_avx2(const T* x, int64_t stride, T* y, int64_t C, const float* w,
                                                  const float* b, float eps, int64_t r0, int64_t r1) {
  layer_norm_rows<8>(x, stride, y, C, w, b, eps, r0, r1);
}
template <class T>
void rows_baseline(const T* x, int64_t stride, T* y, int64_t C, const float* w, const float* b, float eps, int64_t r0,
                   int64_t r1) {
  layer_norm_rows<8>(x, stride, y, C, w, b, eps, r0, r1);
}
template <class T>
RowsFn<T> rows_function() {
  return cpu::by_isa<RowsFn<T>>(rows_avx512<T>, rows_avx2<T>, rows_baseline<T>);
}

template <class T>
void layer_norm_typed(const at::Tensor& x2, at::Tensor& y, const at::Tensor& w, const at::Tensor& b, double eps) {
  const int64_t rows = x2.size(0), C = x2.size(1);
  const RowsFn<T> fn = rows_function<T>();
  const T* xp = static_cast<const T*>(x2.data_ptr());
  T* yp = static_cast<T*>(y.data_ptr());
  const float* wp = w.defined() ? w.data_ptr<float>() : nullptr;
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  const int64_t stride = x2.stride(0);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    fn(xp, stride, yp, C, wp, bp, static_cast<float>(eps), r0, r1);
  });
}

}  // namespace

bool fused_group_norm_cpu_applies(const at::Tensor& x) {
  if (!x.device().is_cpu() || x.dim() < 2 || x.numel() == 0) return false;
  if (x.scalar_type() != at::kFloat && x.scalar_type() != at::kBFloat16) return false;
  return !(at::GradMode::is_enabled() && x.requires_grad());
}

at::Tensor fused_group_norm_cpu(const at::Tensor& x, int64_t groups, const at::Tensor& weight, const at::Tensor& bias,
                                double eps, bool silu) {
  RECORD_FUNCTION("vdm::fused_group_norm_cpu", std::vector<c10::IValue>());
  const int64_t C = x.size(1);
  TORCH_CHECK(groups > 0 && C % groups == 0, "fused_group_norm_cpu: ", C, " channels cannot be split into ", groups,
              " groups");
  TORCH_CHECK(!weight.defined() || weight.numel() == C, "fused_group_norm_cpu: weight has ", weight.numel(),
              " values for ", C, " channels");
  TORCH_CHECK(!bias.defined() || bias.numel() == C, "fused_group_norm_cpu: bias has ", bias.numel(), " values for ",
              C, " channels");
  const View v = view_of(x);
  at::Tensor y = at::empty_like(v.x);  // same strides: x is dense
  const at::Tensor w = float_params(weight), b = float_params(bias);
  if (x.scalar_type() == at::kBFloat16)
    run_typed<uint16_t>(v, y, groups, w, b, eps, silu);
  else
    run_typed<float>(v, y, groups, w, b, eps, silu);
  return y;
}

}  // namespace vdm::models

namespace vdm::models {

bool fused_layer_norm_cpu_applies(const at::Tensor& x) { return fused_group_norm_cpu_applies(x); }

at::Tensor fused_layer_norm_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps) {
  RECORD_FUNCTION("vdm::fused_layer_norm_cpu", std::vector<c10::IValue>());
  const int64_t C = x.size(-1);
  TORCH_CHECK(!weight.defined() || weight.numel() == C, "fused_layer_norm_cpu: weight has ", weight.numel(),
              " values for ", C, " channels");
  TORCH_CHECK(!bias.defined() || bias.numel() == C, "fused_layer_norm_cpu: bias has ", bias.numel(), " values for ",
              C, " channels");
  at::Tensor x2 = x.reshape({-1, C});
  if (x2.stride(1) != 1 || (x2.size(0) > 1 && x2.stride(0) < C)) x2 = x2.contiguous();
  at::Tensor y = at::empty(x2.sizes(), x.options());
  const at::Tensor w = float_params(weight), b = float_params(bias);
  if (x.scalar_type() == at::kBFloat16)
    layer_norm_typed<uint16_t>(x2, y, w, b, eps);
  else
    layer_norm_typed<float>(x2, y, w, b, eps);
  return y.view(x.sizes());
}

}  // namespace vdm::models
