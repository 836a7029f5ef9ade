// A fused CPU attention kernel for inference with small heads (the spatial attention of small video
// UNets: 4 to 16 channels per head over a thousand or more tokens). Query rows' scores live in a
// per-thread buffer of four rows (L1-resident): the [L, L] score matrix is never written to
// memory, which is what bounds the matmul-softmax-matmul path at these shapes. Rows are processed
// four at a time so that every key and value load feeds four queries; exp runs vectorised
// (AVX-512 and AVX2/FMA code with a portable fallback, chosen at run time). bfloat16 on CPUs with
// AVX512-BF16 takes bfloat16 pair products instead (fused_attention_cpu_bf16_pairs).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

namespace vdm::models {

// Largest head size the fused kernel takes. Wider heads do enough work per score for the BLAS
// matmuls of the chunked path to be faster (d = 40 at 1024 tokens: 2.2 s fused, 1.6 s chunked).
constexpr int64_t kFusedAttentionMaxHeadDim = 16;
// Key sequences up to this long (temporal attention over the frames, cross-attention over the text)
// run with the queries in the vector lanes, which has no per-row horizontal reductions and reads the
// keys and values in place; there heads up to kFusedAttentionShortMaxHeadDim channels take the fused
// kernel, where the BLAS path would multiply thousands of tiny matrices.
constexpr int64_t kFusedAttentionShortKeys = 128;
constexpr int64_t kFusedAttentionShortMaxHeadDim = 128;

// True when fused_attention_cpu applies: float32 or bfloat16 CPU tensors (all three the same dtype),
// head size <= the maximum (kFusedAttentionShortMaxHeadDim for short key sequences), no gradient
// needed (inference), no mask.
bool fused_attention_cpu_applies(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool has_mask);

// softmax(q k^T / sqrt(d)) v for float32 or bfloat16 CPU tensors; scores and sums are float32. For
// bfloat16 over short key sequences the kernel widens the queries, keys and values as it reads them
// and rounds its output to nearest even as it writes it; over long ones the AVX512-BF16 kernel
// (below) takes bfloat16 pairs, and otherwise the inputs are widened to float32 first and the result
// rounded back.
// q: [B, heads, Lq, d], k: [B, heads, Lk, d], v: [B, heads, Lk, dv] -> [B, heads, Lq, dv], any
// strides: q is read in place, and the result is the [B, heads, Lq, dv] view of a contiguous
// [B, Lq, heads, dv] tensor, so merging the heads back (transpose(1, 2).reshape) copies nothing.
at::Tensor fused_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// True when bfloat16 attention over more than kFusedAttentionShortKeys keys, with heads of 4, 8 or
// 16 channels, runs on the AVX512-BF16 kernel: the two products take bfloat16 pairs and the softmax
// weights are rounded to bfloat16 for the product with the values (the float32 kernel otherwise,
// on inputs widened to float32). Needs the AVX-512 kernels (not capped by VDM_CPU_ISA) and a CPU
// with AVX512-BF16.
bool fused_attention_cpu_bf16_pairs();

// The instruction set of the kernel build in use: "avx512", "avx2" or "baseline". The widest the
// CPU supports, unless the environment variable VDM_CPU_ISA caps it at "avx2" or "baseline".
const char* fused_attention_cpu_isa();

}  // namespace vdm::models
