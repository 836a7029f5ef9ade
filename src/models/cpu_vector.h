// GCC vector types and the small always-inlined helpers the fused CPU kernels share (attention,
// GELU, group norm): whole-vector loads and stores of float32 and bfloat16, horizontal sums and
// maxima, and 2^x for x <= 0. Each kernel is compiled several times with different target
// attributes (AVX-512, AVX2, baseline); the helpers are inlined into each build. Internal to
// src/models.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include <c10/util/BFloat16.h>

// The helpers are always inlined, so the ABI of passing 32- and 64-byte vectors never matters.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace vdm::models::cpu {

// N floats in GCC vector registers: one AVX-512 register (N = 16) or one AVX register (N = 8) in
// the builds for those instruction sets, SSE registers in the baseline build.
// (Spelled out per width: GCC drops vector_size when it depends on a template parameter.)
template <int N>
struct Vec;
template <>
struct Vec<4> {
  using f = float __attribute__((vector_size(16)));
  using u = uint32_t __attribute__((vector_size(16)));
  using h = uint16_t __attribute__((vector_size(8)));  // bfloat16 bits
};
template <>
struct Vec<8> {
  using f = float __attribute__((vector_size(32)));
  using i = int32_t __attribute__((vector_size(32)));
  using u = uint32_t __attribute__((vector_size(32)));
  using h = uint16_t __attribute__((vector_size(16)));  // bfloat16 bits
};
template <>
struct Vec<16> {
  using f = float __attribute__((vector_size(64)));
  using i = int32_t __attribute__((vector_size(64)));
  using u = uint32_t __attribute__((vector_size(64)));
  using h = uint16_t __attribute__((vector_size(32)));  // bfloat16 bits
};

template <class V>
__attribute__((always_inline)) inline V load(const float* p) {
  V x;
  std::memcpy(&x, p, sizeof(x));
  return x;
}
template <class V>
__attribute__((always_inline)) inline void store(float* p, V x) {
  std::memcpy(p, &x, sizeof(x));
}
// N bfloat16 values (their bits) widened to float32, and float32 rounded to bfloat16 to nearest
// even, NaN kept NaN (as c10::BFloat16 does).
template <int N>
__attribute__((always_inline)) inline typename Vec<N>::f load_bf16(const uint16_t* p) {
  typename Vec<N>::h x;
  std::memcpy(&x, p, sizeof(x));
  return (typename Vec<N>::f)(__builtin_convertvector(x, typename Vec<N>::u) << 16);
}
template <int N>
__attribute__((always_inline)) inline void store_bf16(uint16_t* p, typename Vec<N>::f x) {
  using U = typename Vec<N>::u;
  const U bits = (U)x;
  const U rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  const U out = x != x ? U{} + 0x7FC0u : rounded;
  const typename Vec<N>::h h = __builtin_convertvector(out, typename Vec<N>::h);
  std::memcpy(p, &h, sizeof(h));
}

// Element access for float32 and for bfloat16 (as its 16 bits): N lanes or one value, in float32.
template <int N>
__attribute__((always_inline)) inline typename Vec<N>::f load_lanes(const float* p) {
  return load<typename Vec<N>::f>(p);
}
template <int N>
__attribute__((always_inline)) inline typename Vec<N>::f load_lanes(const uint16_t* p) {
  return load_bf16<N>(p);
}
template <int N>
__attribute__((always_inline)) inline void store_lanes(float* p, typename Vec<N>::f x) {
  store(p, x);
}
template <int N>
__attribute__((always_inline)) inline void store_lanes(uint16_t* p, typename Vec<N>::f x) {
  store_bf16<N>(p, x);
}
inline float load_one(const float* p) { return *p; }
inline float load_one(const uint16_t* p) { return static_cast<float>(c10::BFloat16(*p, c10::BFloat16::from_bits())); }
inline void store_one(float* p, float x) { *p = x; }
inline void store_one(uint16_t* p, float x) { *p = c10::BFloat16(x).x; }

// n bfloat16 values widened to float32: N lanes at a time, then 8 and 4, then one by one (rows of a
// few channels).
template <int N>
__attribute__((always_inline)) inline void widen_bf16(const uint16_t* src, float* dst, int64_t n) {
  int64_t c = 0;
  for (; c + N <= n; c += N) store(dst + c, load_bf16<N>(src + c));
  if constexpr (N > 8)
    for (; c + 8 <= n; c += 8) store(dst + c, load_bf16<8>(src + c));
  for (; c + 4 <= n; c += 4) store(dst + c, load_bf16<4>(src + c));
  for (; c < n; ++c) dst[c] = load_one(src + c);
}

// Horizontal sum and maximum: a 16-lane vector is folded to 8 lanes, 8 lanes to 4, in vector
// operations, and the last four lanes are combined in a tree.
template <int N>
__attribute__((always_inline)) inline typename Vec<4>::f fold4(typename Vec<N>::f x, bool max) {
  using V4 = typename Vec<4>::f;
  if constexpr (N == 16) {
    using V8 = typename Vec<8>::f;
    const V8 lo = __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7);
    const V8 hi = __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
    return fold4<8>(max ? (lo > hi ? lo : hi) : lo + hi, max);
  } else {
    const V4 lo = __builtin_shufflevector(x, x, 0, 1, 2, 3);
    const V4 hi = __builtin_shufflevector(x, x, 4, 5, 6, 7);
    return max ? (lo > hi ? lo : hi) : lo + hi;
  }
}
template <int N>
__attribute__((always_inline)) inline float hsum(typename Vec<N>::f x) {
  const typename Vec<4>::f a = fold4<N>(x, false);
  return (a[0] + a[1]) + (a[2] + a[3]);
}
template <int N>
__attribute__((always_inline)) inline float hmax(typename Vec<N>::f x) {
  const typename Vec<4>::f a = fold4<N>(x, true);
  const float m01 = a[0] > a[1] ? a[0] : a[1], m23 = a[2] > a[3] ? a[2] : a[3];
  return m01 > m23 ? m01 : m23;
}

// 2^x for x <= 0 (a score minus its row maximum). Round-to-nearest split x = n + f with f in
// [-0.5, 0.5], a degree-5 minimax polynomial of 2^f (relative error 7.5e-8 in exact arithmetic,
// about 2e-7 in float) and the exponent applied from n.
// - 16 lanes (AVX-512): n by vrndscaleps and p(f) * 2^n by vscalefps, which underflows to
//   subnormals and 0 by itself (-1e30, the padding keys' score, gives exactly 0). Written as
//   inline assembly: the intrinsics cannot be inlined into this target-neutral template; the
//   16-lane instantiation only runs inside the AVX-512 kernels. -inf gives NaN there (callers
//   whose inputs can be infinite clamp them first).
// - 8 lanes: n by the 1.5 * 2^23 shift (x + 1.5 * 2^23 + 127 rounds to the integer n + 127, which
//   then sits in the low mantissa bits: shifted into the exponent field it is 2^n, with no
//   float-to-integer conversion); inputs below -126 give 2^-126, which vanishes next to the row
//   maximum's 1. (The file is compiled without -ffast-math, so the shift is kept.)
//
// Degree 3 (relative error 7.5e-5) serves weights that are rounded to bfloat16 (2^-9) anyway.
template <int N, int Degree = 5>
__attribute__((always_inline)) inline typename Vec<N>::f exp2_poly(typename Vec<N>::f f) {
  static_assert(Degree == 5 || Degree == 3, "exp2_poly: degree 5 or 3");
  if constexpr (Degree == 3) {
    typename Vec<N>::f p = f * 5.51716691e-2f + 2.42611122e-1f;
    p = p * f + 6.93260986e-1f;
    return p * f + 9.99928074e-1f;
  } else {
    typename Vec<N>::f p = f * 1.32764714e-3f + 9.67554133e-3f;
    p = p * f + 5.55071328e-2f;
    p = p * f + 2.40221197e-1f;
    p = p * f + 6.93146967e-1f;
    return p * f + 1.00000007f;
  }
}
template <int N, int Degree = 5>
__attribute__((always_inline)) inline typename Vec<N>::f exp2_nonpositive(typename Vec<N>::f x) {
  using V = typename Vec<N>::f;
  if constexpr (N == 16) {
    V n, r;
    asm("vrndscaleps $0, %1, %0" : "=v"(n) : "v"(x));  // round to nearest even
    const V p = exp2_poly<N, Degree>(x - n);
    asm("vscalefps %2, %1, %0" : "=v"(r) : "v"(p), "v"(n));  // p * 2^n
    return r;
  } else {
    using VU = typename Vec<N>::u;
    const V lo = V{} - 126.0f;
    x = lo > x ? lo : x;  // max(x, -126), NaN kept (one max instruction)
    const V y = x + 12583039.0f;
    const V n = y - 12583039.0f;
    return exp2_poly<N, Degree>(x - n) * (V)(((VU)y) << 23);  // a vector cast reinterprets the bits
  }
}

// The instruction set the kernels run with: the widest the CPU supports, unless the environment
// variable VDM_CPU_ISA caps it at "avx2" or "baseline" (for comparing the builds). Read once.
enum class Isa { kBaseline, kAvx2, kAvx512 };
inline Isa kernel_isa() {
  static const Isa isa = [] {
    const char* env = std::getenv("VDM_CPU_ISA");
    const std::string cap = env ? env : "";
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cap != "baseline";
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                        __builtin_cpu_supports("avx512dq") && cap != "avx2";
    return avx512 ? Isa::kAvx512 : avx2 ? Isa::kAvx2 : Isa::kBaseline;
  }();
  return isa;
}

// The build of a kernel for the instruction set in use (kernel_isa()).
template <class F>
F by_isa(F avx512, F avx2, F baseline) {
  switch (kernel_isa()) {
    case Isa::kAvx512: return avx512;
    case Isa::kAvx2: return avx2;
    default: return baseline;
  }
}

// True when the AVX-512 kernels are in use and the CPU also has AVX512-BF16 (bfloat16 pair dot
// products, vdpbf16ps). Read once.
inline bool avx512_bf16() {
  static const bool on = kernel_isa() == Isa::kAvx512 && __builtin_cpu_supports("avx512bf16");
  return on;
}

inline const char* isa_name(Isa isa) {
  return isa == Isa::kAvx512 ? "avx512" : isa == Isa::kAvx2 ? "avx2" : "baseline";
}

}  // namespace vdm::models::cpu
