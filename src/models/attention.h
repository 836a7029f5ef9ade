// Attention and the transformer building blocks of diffusers v0.31 (Attention, FeedForward,
// BasicTransformerBlock, Transformer2DModel). Child modules carry the diffusers attribute names,
// so named_parameters() are the checkpoint keys ("to_q.weight", "to_out.0.weight",
// "ff.net.0.proj.weight", "transformer_blocks.0.attn2.to_k.weight").
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/conv.h>

#include <cstdint>
#include <string>
#include <tuple>

#include "models/linear.h"
#include "models/normalization.h"

namespace vdm::models {

// softmax(q k^T / sqrt(d) + mask) v, the one attention function of vdm.
// q: [B, heads, Lq, d], k: [B, heads, Lk, d], v: [B, heads, Lk, dv] -> [B, heads, Lq, dv].
// mask: broadcastable to [B, heads, Lq, Lk]; bool (true = attend) or additive float.
// Unmasked CUDA inference over at most 64 keys (temporal attention) runs vdm's short-sequence kernel
// (models/cuda_ops.h); otherwise LibTorch >= 2 uses at::scaled_dot_product_attention (flash / memory-efficient kernels);
// LibTorch 1.x uses fused_attention_cpu (models/attention_cpu.h) for inference on float32 CPU
// tensors with heads up to 64 wide and no mask, else scaled_dot_product_attention_chunked with the
// default budget.
// Call it qualified (models::scaled_dot_product_attention): with at::Tensor arguments an
// unqualified call also finds at::scaled_dot_product_attention on LibTorch 2.x.
at::Tensor scaled_dot_product_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        c10::optional<at::Tensor> mask = {});

// Default budget of the chunked path: attention scores held at once (elements, float32).
constexpr int64_t kAttentionScoreBudget = int64_t(1) << 24;  // 64 MiB

// Memory-bounded attention on any LibTorch: splits batch*heads, then queries, so that at most
// `max_score_elements` scores exist at once. Scores and softmax are computed in float32
// (matmul then scale; no baddbmm), the result has q's dtype. Same shapes as above.
at::Tensor scaled_dot_product_attention_chunked(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                c10::optional<at::Tensor> mask = {},
                                                int64_t max_score_elements = kAttentionScoreBudget);

// ---- Attention ------------------------------------------------------------------------------

struct AttentionOptions {
  int64_t query_dim = 0;                        // channels of the queries (required)
  c10::optional<int64_t> cross_attention_dim;   // channels of encoder_hidden_states; none = self-attention
  int64_t heads = 8;
  int64_t dim_head = 64;
  double dropout = 0.0;                         // on the output (to_out.1)
  bool bias = false;                            // bias of to_q / to_k / to_v
  bool out_bias = true;                         // bias of to_out.0
  c10::optional<int64_t> out_dim;               // default: query_dim
  c10::optional<int64_t> norm_num_groups;       // GroupNorm "group_norm" over the input (VAE attention)
  double eps = 1e-5;                            // of group_norm
  bool residual_connection = false;             // add the input to the output (VAE attention)
  double rescale_output_factor = 1.0;           // divide the output by this
};

class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const AttentionOptions& options);

  // hidden_states: [B, L, query_dim], or [B, C, H, W] (flattened to H*W tokens and restored);
  // encoder_hidden_states: [B, S, cross_attention_dim], undefined = self-attention, or [B / G, S,
  // cross_attention_dim]: one context for each G consecutive rows (as if repeat_interleave'd G times;
  // the UNet3D's frames share their video's text), projected once;
  // mask: broadcastable to [B, heads, L, S] (see scaled_dot_product_attention).
  // Returns the shape of hidden_states (with out_dim channels).
  at::Tensor forward(const at::Tensor& hidden_states, const at::Tensor& encoder_hidden_states = {},
                     c10::optional<at::Tensor> mask = {});

  // acc += forward(hidden_states, encoder_hidden_states, mask), in place; returns acc. For tokens
  // [B, L, query_dim] with no group norm, residual or rescaling, the sum happens inside to_out's
  // product (Linear::forward_add_to): the transformer blocks' residual stream on the CPU.
  at::Tensor forward_add_to(at::Tensor& acc, const at::Tensor& hidden_states,
                            const at::Tensor& encoder_hidden_states = {}, c10::optional<at::Tensor> mask = {});

  // Self-attention over the frames of token-ordered x [B, F, S, query_dim] (S positions per frame):
  // one sequence of F frames per (batch, position), as forward() over [B * S, F, query_dim], without
  // moving the tokens where vdm's short-sequence kernel runs (models/cuda_ops.h). -> [B, F, S, out].
  at::Tensor forward_frames(const at::Tensor& x);

  const AttentionOptions& options() const { return options_; }

  // Self-attention's three projections as one matrix product (diffusers' fuse_qkv_projections): the
  // weights (and biases) of to_q, to_k and to_v become views of one [3 * inner, query_dim] tensor,
  // so the checkpoint keys, the memory and in-place changes stay as they were. A self-attention call
  // then reads its input once and runs one wider product; q, k and v are strided views of its
  // output. Only where to_k and to_v take query_dim channels (self-attention modules); calls with
  // encoder_hidden_states keep the three products. Moving or converting the module afterwards
  // replaces the parameters: the fused path then stops being taken (call it again to refuse). Off:
  // each projection gets its own copy again. Returns whether the module is fused.
  bool fuse_projections(bool on);
  bool projections_fused() const;

 private:
  AttentionOptions options_;
  GroupNorm group_norm_{nullptr};
  Linear to_q_{nullptr}, to_k_{nullptr}, to_v_{nullptr};
  at::Tensor qkv_weight_, qkv_bias_;  // [3 * inner, query_dim], [3 * inner] (fused projections)

  // out (+ input with residual_connection), / rescale_output_factor.
  at::Tensor residual_and_rescale(at::Tensor out, const at::Tensor& input) const;
  // Tokens x [N, L, query_dim] (after the group norm) -> the heads' outputs merged, [N, L, inner],
  // before to_out.
  at::Tensor attend(const at::Tensor& x, const at::Tensor& encoder_hidden_states, c10::optional<at::Tensor> mask);

  // q, k, v projections of x [..., query_dim] (k and v of encoder_hidden_states when given), each
  // [..., inner]: views of one product where the projections are fused.
  std::tuple<at::Tensor, at::Tensor, at::Tensor> project(const at::Tensor& x, const at::Tensor& encoder_hidden_states);
  torch::nn::ModuleList to_out_{nullptr};  // 0: Linear, 1: Dropout
  Linear to_out_proj_{nullptr};
  torch::nn::Dropout to_out_dropout_{nullptr};
};
TORCH_MODULE(Attention);

// ---- FeedForward ----------------------------------------------------------------------------

// "net.0": the input projection with its activation ("proj"), GELU or gated GELU (GEGLU).
class GeluProjImpl : public torch::nn::Module {
 public:
  // activation_fn: "gelu", "gelu-approximate", "geglu", "geglu-approximate".
  GeluProjImpl(int64_t dim_in, int64_t dim_out, const std::string& activation_fn, bool bias = true);
  at::Tensor forward(const at::Tensor& x);  // x: [..., dim_in] -> [..., dim_out]
  bool gated() const { return gated_; }     // "geglu": proj's first half times GELU of its second
  const Linear& proj() const { return proj_; }

 private:
  Linear proj_{nullptr};  // dim_out (x2 when gated)
  bool gated_ = false;
  bool tanh_ = false;
  bool sigmoid_approx_ = false;  // "geglu-approximate": x * sigmoid(1.702 x), not gated
};
TORCH_MODULE(GeluProj);

struct FeedForwardOptions {
  int64_t dim = 0;                      // input channels (required)
  c10::optional<int64_t> dim_out;       // default: dim
  int64_t mult = 4;                     // inner = dim * mult unless inner_dim is given
  c10::optional<int64_t> inner_dim;
  std::string activation_fn = "geglu";
  double dropout = 0.0;
  bool final_dropout = false;
  bool bias = true;
};

class FeedForwardImpl : public torch::nn::Module {
 public:
  explicit FeedForwardImpl(const FeedForwardOptions& options);
  at::Tensor forward(const at::Tensor& x);  // x: [..., dim] -> [..., dim_out]
  // acc += forward(x), in place (acc: [..., dim_out]); returns acc. On the CPU's oneDNN path the sum
  // happens inside the last product (Linear::forward_add_to).
  at::Tensor forward_add_to(const at::Tensor& x, at::Tensor& acc);

 private:
  // CPU inference with GEGLU on oneDNN: the tokens in tiles whose [rows, 2 * inner] hidden state stays
  // in cache, tiles on parallel threads, instead of each layer over all tokens at once. With `acc`
  // (contiguous, x's dtype) the result is added to it instead of returned in a new tensor.
  bool tiled_applies(const at::Tensor& x) const;
  at::Tensor forward_tiled(const at::Tensor& x, at::Tensor* acc = nullptr);
  bool dropout_active() const;

  torch::nn::ModuleList net_{nullptr};  // 0: GeluProj, 1: Dropout, 2: Linear, (3: Dropout)
  GeluProj act_{nullptr};
  torch::nn::Dropout drop_{nullptr};
  Linear out_{nullptr};
  torch::nn::Dropout final_drop_{nullptr};
};
TORCH_MODULE(FeedForward);

// ---- BasicTransformerBlock ------------------------------------------------------------------

struct TransformerBlockOptions {
  int64_t dim = 0;                              // token channels (required)
  int64_t num_attention_heads = 8;
  int64_t attention_head_dim = 64;
  double dropout = 0.0;
  c10::optional<int64_t> cross_attention_dim;   // attn2 attends to encoder_hidden_states of this width
  std::string activation_fn = "geglu";
  bool attention_bias = false;
  bool only_cross_attention = false;            // attn1 attends to encoder_hidden_states too
  bool double_self_attention = false;           // attn2 is self-attention (temporal transformers)
  bool norm_elementwise_affine = true;
  double norm_eps = 1e-5;
  bool attention_out_bias = true;
  c10::optional<int64_t> ff_inner_dim;
  bool ff_bias = true;
};

// norm1 -> attn1 (+), [norm2 -> attn2 (+)], norm3 -> ff (+). attn2 exists when
// cross_attention_dim is set or double_self_attention.
class BasicTransformerBlockImpl : public torch::nn::Module {
 public:
  explicit BasicTransformerBlockImpl(const TransformerBlockOptions& options);
  // x: [B, L, dim]; encoder_hidden_states: [B or B / G, S, cross_attention_dim] (Attention::forward)
  // or undefined -> [B, L, dim].
  at::Tensor forward(const at::Tensor& x, const at::Tensor& encoder_hidden_states = {},
                     c10::optional<at::Tensor> encoder_attention_mask = {});

  // True for a block of self-attention only (a temporal transformer's): forward_frames applies.
  bool attends_over_frames() const;
  // x: token-ordered [B, F, S, dim]; each attention over the F frames of a position
  // (Attention::forward_frames). The same result as forward() over [B * S, F, dim]. -> [B, F, S, dim].
  at::Tensor forward_frames(const at::Tensor& x);

  // The block in two halves, for attention within parts of a sequence (temporal/frame_windows.h):
  // attentions(x) is x after attn1 and attn2 with their residuals, feed_forward(h) is h + ff(norm3(h));
  // feed_forward(attentions(x)) equals forward(x) up to rounding. x, h: [B, L, dim]. Self-attention
  // blocks only (attends_over_frames).
  at::Tensor attentions(const at::Tensor& x);
  at::Tensor feed_forward(const at::Tensor& h);

 private:
  // The block with `attend(attention module, normalised input, first, acc)` running each attention
  // (acc: null, or a tensor the attention's output is added to in place, then returned).
  template <typename Attend>
  at::Tensor run(const at::Tensor& x, const Attend& attend);

  TransformerBlockOptions options_;
  LayerNorm norm1_{nullptr}, norm2_{nullptr}, norm3_{nullptr};
  Attention attn1_{nullptr}, attn2_{nullptr};
  FeedForward ff_{nullptr};
};
TORCH_MODULE(BasicTransformerBlock);

// ---- Transformer2DModel (continuous input) --------------------------------------------------

struct Transformer2DOptions {
  int64_t num_attention_heads = 16;
  int64_t attention_head_dim = 88;
  int64_t in_channels = 0;                      // required
  c10::optional<int64_t> out_channels;          // default: in_channels
  int64_t num_layers = 1;
  double dropout = 0.0;
  int64_t norm_num_groups = 32;
  c10::optional<int64_t> cross_attention_dim;
  bool attention_bias = false;
  std::string activation_fn = "geglu";
  bool use_linear_projection = false;           // proj_in/proj_out Linear (else 1x1 Conv2d)
  bool only_cross_attention = false;
  bool double_self_attention = false;
  bool norm_elementwise_affine = true;
  double norm_eps = 1e-5;
};

// GroupNorm "norm" (eps 1e-6) -> proj_in -> transformer_blocks over H*W tokens -> proj_out -> + input.
class Transformer2DModelImpl : public torch::nn::Module {
 public:
  explicit Transformer2DModelImpl(const Transformer2DOptions& options);
  // x: [N, C, H, W]; encoder_hidden_states: [N or N / G, S, D] (Attention::forward) or undefined
  // -> [N, C, H, W].
  at::Tensor forward(const at::Tensor& x, const at::Tensor& encoder_hidden_states = {},
                     c10::optional<at::Tensor> encoder_attention_mask = {});

 private:
  Transformer2DOptions options_;
  int64_t inner_dim_;
  GroupNorm norm_{nullptr};
  Linear proj_in_linear_{nullptr}, proj_out_linear_{nullptr};
  torch::nn::Conv2d proj_in_conv_{nullptr}, proj_out_conv_{nullptr};
  torch::nn::ModuleList transformer_blocks_{nullptr};
};
TORCH_MODULE(Transformer2DModel);

}  // namespace vdm::models
