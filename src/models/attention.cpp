#include "models/attention.h"

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "models/activations_cpu.h"
#include "models/attention_cpu.h"
#include "models/layout_cpu.h"
#include "models/cuda_ops.h"
#include "models/linear_onednn.h"
#include "models/shape.h"

namespace vdm::models {

namespace {

void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4)
    throw Error(fmt::format("attention: q, k, v must be [B, heads, L, d]; got {}-D, {}-D, {}-D", q.dim(),
                            k.dim(), v.dim()));
  if (q.size(0) != k.size(0) || q.size(1) != k.size(1) || k.size(0) != v.size(0) || k.size(1) != v.size(1) ||
      q.size(3) != k.size(3) || k.size(2) != v.size(2))
    throw Error(fmt::format("attention: incompatible shapes q {}, k {}, v {}", shape_str(q.sizes()), shape_str(k.sizes()), shape_str(v.sizes())));
}

}  // namespace

at::Tensor scaled_dot_product_attention_chunked(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                c10::optional<at::Tensor> mask, int64_t max_score_elements) {
  check_qkv(q, k, v);
  const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), D = q.size(3);
  const int64_t Lk = k.size(2), Dv = v.size(3);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  const int64_t budget = std::max<int64_t>(max_score_elements, 1);

  at::Tensor m;
  if (mask && mask->defined()) m = mask->to(q.device()).expand({B, H, Lq, Lk});

  // Chunk sizes over batch, heads and queries so that cb * ch * cq * Lk <= budget (at least one
  // query row at a time).
  const int64_t per_head = Lq * Lk;
  int64_t cb = 1, ch = 1, cq = Lq;
  if (H * per_head <= budget) {
    ch = H;
    cb = std::max<int64_t>(1, std::min<int64_t>(B, budget / (H * per_head)));
  } else if (per_head <= budget) {
    ch = std::max<int64_t>(1, std::min<int64_t>(H, budget / per_head));
  } else {
    cq = std::max<int64_t>(1, std::min<int64_t>(Lq, budget / std::max<int64_t>(Lk, 1)));
  }

  auto attend = [&](const at::Tensor& qc, const at::Tensor& kc, const at::Tensor& vc, const at::Tensor& mc) {
    // Scores in float32: matmul, then scale (baddbmm with beta 0 is unreliable on LibTorch 1.13).
    at::Tensor s = at::matmul(qc, kc.transpose(-2, -1));
    if (s.scalar_type() != at::kFloat && s.scalar_type() != at::kDouble) s = s.to(at::kFloat);
    s.mul_(scale);
    if (mc.defined()) {
      if (mc.scalar_type() == at::kBool)
        s.masked_fill_(mc.logical_not(), -std::numeric_limits<float>::infinity());
      else
        s.add_(mc.to(s.scalar_type()));
    }
    at::Tensor p = at::softmax(s, -1);
    return at::matmul(p.to(vc.scalar_type()), vc);
  };

  if (cb >= B && ch >= H && cq >= Lq) return attend(q, k, v, m);

  at::Tensor out = at::empty({B, H, Lq, Dv}, v.options());
  for (int64_t b0 = 0; b0 < B; b0 += cb) {
    const int64_t b1 = std::min(B, b0 + cb);
    for (int64_t h0 = 0; h0 < H; h0 += ch) {
      const int64_t h1 = std::min(H, h0 + ch);
      at::Tensor kc = k.slice(0, b0, b1).slice(1, h0, h1);
      at::Tensor vc = v.slice(0, b0, b1).slice(1, h0, h1);
      for (int64_t q0 = 0; q0 < Lq; q0 += cq) {
        const int64_t q1 = std::min(Lq, q0 + cq);
        at::Tensor qc = q.slice(0, b0, b1).slice(1, h0, h1).slice(2, q0, q1);
        at::Tensor mc = m.defined() ? m.slice(0, b0, b1).slice(1, h0, h1).slice(2, q0, q1) : at::Tensor();
        out.slice(0, b0, b1).slice(1, h0, h1).slice(2, q0, q1).copy_(attend(qc, kc, vc, mc));
      }
    }
  }
  return out;
}

at::Tensor scaled_dot_product_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        c10::optional<at::Tensor> mask) {
  // Temporal attention on CUDA: a few frames per sequence, where a flash-attention tile is mostly padding.
  if (short_attention_cuda_applies(q, k, v, mask && mask->defined())) return short_attention_cuda(q, k, v);
#if TORCH_VERSION_MAJOR >= 2
  check_qkv(q, k, v);
  c10::optional<at::Tensor> m;
  if (mask && mask->defined()) {
    at::Tensor mm = mask->to(q.device());
    m = mm.scalar_type() == at::kBool ? mm : mm.to(q.scalar_type());
  }
  return at::scaled_dot_product_attention(q, k, v, m);
#else
  const bool has_mask = mask && mask->defined();
  if (fused_attention_cpu_applies(q, k, v, has_mask)) {
    check_qkv(q, k, v);
    return fused_attention_cpu(q, k, v);
  }
  return scaled_dot_product_attention_chunked(q, k, v, std::move(mask));
#endif
}

// ---- Attention ------------------------------------------------------------------------------

AttentionImpl::AttentionImpl(const AttentionOptions& o) : options_(o) {
  if (o.query_dim <= 0 || o.heads <= 0 || o.dim_head <= 0)
    throw Error(fmt::format("Attention: query_dim, heads and dim_head must be positive (got {}, {}, {})",
                            o.query_dim, o.heads, o.dim_head));
  const int64_t inner = o.heads * o.dim_head;
  const int64_t cross = o.cross_attention_dim.value_or(o.query_dim);
  const int64_t out_dim = o.out_dim.value_or(o.query_dim);
  if (o.norm_num_groups)
    group_norm_ = register_module(
        "group_norm", GroupNorm(torch::nn::GroupNormOptions(*o.norm_num_groups, o.query_dim).eps(o.eps)));
  to_q_ = register_module("to_q", Linear(torch::nn::LinearOptions(o.query_dim, inner).bias(o.bias)));
  to_k_ = register_module("to_k", Linear(torch::nn::LinearOptions(cross, inner).bias(o.bias)));
  to_v_ = register_module("to_v", Linear(torch::nn::LinearOptions(cross, inner).bias(o.bias)));
  to_out_proj_ = Linear(torch::nn::LinearOptions(inner, out_dim).bias(o.out_bias));
  to_out_dropout_ = torch::nn::Dropout(torch::nn::DropoutOptions(o.dropout));
  to_out_ = register_module("to_out", torch::nn::ModuleList(to_out_proj_, to_out_dropout_));
}

bool AttentionImpl::fuse_projections(bool on) {
  at::NoGradGuard no_grad;
  Linear* projections[] = {&to_q_, &to_k_, &to_v_};
  if (!on) {
    if (!qkv_weight_.defined()) return false;  // never fused: nothing to separate
    for (Linear* l : projections) {
      (*l)->weight.set_data((*l)->weight.clone());
      if ((*l)->bias.defined()) (*l)->bias.set_data((*l)->bias.clone());
    }
    qkv_weight_ = qkv_bias_ = at::Tensor();
    return false;
  }
  if (to_k_->weight.size(1) != options_.query_dim) return false;  // a cross-attention module
  qkv_weight_ = at::cat({to_q_->weight, to_k_->weight, to_v_->weight}, 0);
  qkv_bias_ = options_.bias ? at::cat({to_q_->bias, to_k_->bias, to_v_->bias}, 0) : at::Tensor();
  const int64_t inner = to_q_->weight.size(0);
  for (int64_t i = 0; i < 3; ++i) {
    Linear& l = *projections[i];
    l->weight.set_data(qkv_weight_.narrow(0, i * inner, inner));
    if (qkv_bias_.defined()) l->bias.set_data(qkv_bias_.narrow(0, i * inner, inner));
  }
  return true;
}

bool AttentionImpl::projections_fused() const {
  if (!qkv_weight_.defined()) return false;
  const int64_t inner = to_q_->weight.size(0);
  const Linear* projections[] = {&to_q_, &to_k_, &to_v_};
  for (int64_t i = 0; i < 3; ++i) {
    const Linear& l = *projections[i];
    if (l->weight.data_ptr() != qkv_weight_.narrow(0, i * inner, inner).data_ptr() ||
        l->weight.scalar_type() != qkv_weight_.scalar_type() || l->weight.device() != qkv_weight_.device())
      return false;
    if (qkv_bias_.defined() && l->bias.data_ptr() != qkv_bias_.narrow(0, i * inner, inner).data_ptr()) return false;
  }
  return true;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> AttentionImpl::project(const at::Tensor& x,
                                                                      const at::Tensor& encoder_hidden_states) {
  const bool training = at::GradMode::is_enabled() && qkv_weight_.defined() && to_q_->weight.requires_grad();
  if (!encoder_hidden_states.defined() && !training && projections_fused()) {
    const int64_t inner = options_.heads * options_.dim_head;
    const at::Tensor qkv = linear_forward(x, qkv_weight_, qkv_bias_);  // [..., 3 * inner]
    return {qkv.narrow(-1, 0, inner), qkv.narrow(-1, inner, inner), qkv.narrow(-1, 2 * inner, inner)};
  }
  const at::Tensor& ctx = encoder_hidden_states.defined() ? encoder_hidden_states : x;
  return {to_q_->forward(x), to_k_->forward(ctx), to_v_->forward(ctx)};
}

namespace {
// A dropout module that would zero values in this call (training mode, p > 0); null ones do not.
bool drops(const torch::nn::Dropout& d) { return d && d->is_training() && d->options.p() > 0; }
}  // namespace

at::Tensor AttentionImpl::residual_and_rescale(at::Tensor out, const at::Tensor& input) const {
  if (options_.residual_connection) out = out + input;
  if (options_.rescale_output_factor != 1.0) out = out / options_.rescale_output_factor;
  return out;
}

at::Tensor AttentionImpl::forward_frames(const at::Tensor& x) {
  const auto& o = options_;
  if (x.dim() != 4 || group_norm_)
    throw Error(fmt::format("Attention::forward_frames: expected tokens [B, F, S, {}] and a module without a group "
                            "norm; got {}",
                            o.query_dim, shape_str(x.sizes())));
  const int64_t B = x.size(0), F = x.size(1), S = x.size(2), inner = o.heads * o.dim_head;
  const auto [q_proj, k_proj, v_proj] = project(x, {});
  // [B, F, S, inner] -> [B, F, S, heads, d]
  auto split = [&](const at::Tensor& t) { return t.view({B, F, S, o.heads, o.dim_head}); };
  const at::Tensor q = split(q_proj), k = split(k_proj), v = split(v_proj);
  at::Tensor a;
  if (short_attention_frames_applies(q, k, v)) {
    a = short_attention_frames(q, k, v).view({B, F, S, inner});
  } else {
    // One sequence per (batch, position): [B * S, heads, F, d], and back.
    auto sequences = [&](const at::Tensor& t) {
      return t.permute({0, 2, 3, 1, 4}).reshape({B * S, o.heads, F, o.dim_head});
    };
    a = models::scaled_dot_product_attention(sequences(q), sequences(k), sequences(v))
            .view({B, S, o.heads, F, o.dim_head})
            .permute({0, 3, 1, 2, 4})
            .reshape({B, F, S, inner});
  }
  return residual_and_rescale(to_out_dropout_->forward(to_out_proj_->forward(a)), x);
}

at::Tensor AttentionImpl::forward(const at::Tensor& hidden_states, const at::Tensor& encoder_hidden_states,
                                  c10::optional<at::Tensor> mask) {
  const bool spatial = hidden_states.dim() == 4;
  int64_t N = 0, C = 0, H = 0, W = 0;
  at::Tensor x = hidden_states;
  if (spatial) {
    N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
    x = x.reshape({N, C, H * W}).transpose(1, 2);  // [N, HW, C]
  }
  if (group_norm_) x = group_norm_->forward(x.transpose(1, 2)).transpose(1, 2);
  at::Tensor a = to_out_dropout_->forward(to_out_proj_->forward(attend(x, encoder_hidden_states, std::move(mask))));
  if (spatial) a = a.transpose(1, 2).reshape({N, a.size(2), H, W});
  return residual_and_rescale(a, hidden_states);
}

at::Tensor AttentionImpl::forward_add_to(at::Tensor& acc, const at::Tensor& hidden_states,
                                         const at::Tensor& encoder_hidden_states, c10::optional<at::Tensor> mask) {
  const auto& o = options_;
  if (hidden_states.dim() != 3 || group_norm_ || o.residual_connection || o.rescale_output_factor != 1.0 ||
      drops(to_out_dropout_))
    return acc.add_(forward(hidden_states, encoder_hidden_states, std::move(mask)));
  return to_out_proj_->forward_add_to(attend(hidden_states, encoder_hidden_states, std::move(mask)), acc);
}

at::Tensor AttentionImpl::attend(const at::Tensor& x, const at::Tensor& encoder_hidden_states,
                                 c10::optional<at::Tensor> mask) {
  const auto& o = options_;
  const int64_t N_tokens = x.size(0);
  // A context of M < N rows serves N / M consecutive rows of x each (a video's frames share its
  // text). Its keys and values are projected once per context row, and the queries of the rows it
  // serves attend as one sequence: softmax is per query, so this is the attention over the repeated
  // context without repeating it.
  at::Tensor ctx = encoder_hidden_states;
  const int64_t M = ctx.defined() ? ctx.size(0) : N_tokens;
  if (M != N_tokens) {
    if (M <= 0 || N_tokens % M != 0)
      throw Error(fmt::format("Attention: encoder_hidden_states has {} rows for {} rows of hidden states; expected "
                              "the same number or a divisor of it (one context per group of frames)",
                              M, N_tokens));
    if (mask && mask->defined()) ctx = ctx.repeat_interleave(N_tokens / M, 0);  // a mask per row of x
  }
  const int64_t B = ctx.defined() ? ctx.size(0) : N_tokens;
  // [B, L, heads*d] -> [B, heads, L, d]
  auto heads = [&](const at::Tensor& t) { return t.view({B, -1, o.heads, o.dim_head}).transpose(1, 2); };
  const auto [q_proj, k_proj, v_proj] = project(x, ctx);
  at::Tensor q = heads(q_proj), k = heads(k_proj), v = heads(v_proj);
  const at::Tensor a = models::scaled_dot_product_attention(q, k, v, std::move(mask));
  return a.transpose(1, 2).reshape({N_tokens, -1, o.heads * o.dim_head});
}

// ---- FeedForward ----------------------------------------------------------------------------

GeluProjImpl::GeluProjImpl(int64_t dim_in, int64_t dim_out, const std::string& activation_fn, bool bias) {
  int64_t width = dim_out;
  if (activation_fn == "gelu") {
  } else if (activation_fn == "gelu-approximate") {
    tanh_ = true;
  } else if (activation_fn == "geglu") {
    gated_ = true;
    width = 2 * dim_out;
  } else if (activation_fn == "geglu-approximate") {
    sigmoid_approx_ = true;
  } else {
    throw ConfigError(fmt::format("FeedForward: unsupported activation_fn '{}' (expected gelu, gelu-approximate, "
                                  "geglu or geglu-approximate)",
                                  activation_fn));
  }
  proj_ = register_module("proj", Linear(torch::nn::LinearOptions(dim_in, width).bias(bias)));
}

at::Tensor GeluProjImpl::forward(const at::Tensor& x) {
  at::Tensor h = proj_->forward(x);
  if (gated_) {
    if (geglu_cuda_applies(h)) return geglu_cuda(h);
    if (fused_gelu_cpu_applies(h)) return fused_geglu_cpu(h);
    auto parts = h.chunk(2, -1);
    return parts[0] * at::gelu(parts[1]);
  }
  if (sigmoid_approx_) return h * at::sigmoid(1.702 * h);
  if (!tanh_ && fused_gelu_cpu_applies(h)) return fused_gelu_cpu(h);
  return at::gelu(h, tanh_ ? "tanh" : "none");
}

FeedForwardImpl::FeedForwardImpl(const FeedForwardOptions& o) {
  const int64_t inner = o.inner_dim.value_or(o.dim * o.mult);
  const int64_t dim_out = o.dim_out.value_or(o.dim);
  act_ = GeluProj(o.dim, inner, o.activation_fn, o.bias);
  drop_ = torch::nn::Dropout(torch::nn::DropoutOptions(o.dropout));
  out_ = Linear(torch::nn::LinearOptions(inner, dim_out).bias(o.bias));
  net_ = torch::nn::ModuleList(act_, drop_, out_);
  if (o.final_dropout) {
    final_drop_ = torch::nn::Dropout(torch::nn::DropoutOptions(o.dropout));
    net_->push_back(final_drop_);
  }
  register_module("net", net_);
}

namespace {
// Rows per tile of the tiled feed-forward: the tile's hidden state [rows, 2 * inner] within about
// 512 KB (L2), at least 128 rows so that each matrix product stays efficient.
int64_t feed_forward_tile_rows(int64_t hidden_width, int64_t element_size) {
  return std::clamp<int64_t>((int64_t{1} << 19) / (hidden_width * element_size), 128, 2048);
}
}  // namespace

bool FeedForwardImpl::dropout_active() const {
  return drops(drop_) || drops(final_drop_);
}

bool FeedForwardImpl::tiled_applies(const at::Tensor& x) const {
  if (!act_->gated() || !onednn_linear_available() || at::GradMode::is_enabled()) return false;
  if (!linear_uses_onednn(x) || !fused_gelu_cpu_applies(x) || device_kernels_take(x) || dropout_active()) return false;
  const at::Tensor& w = act_->proj()->weight;
  const int64_t rows = x.numel() / std::max<int64_t>(1, x.size(-1));
  return w.scalar_type() == x.scalar_type() && rows >= 2 * feed_forward_tile_rows(w.size(0), x.element_size());
}

// x: [..., dim] -> [..., dim_out]; per tile of rows: proj (dim -> 2 * inner), GEGLU, out (inner -> dim_out).
at::Tensor FeedForwardImpl::forward_tiled(const at::Tensor& x, at::Tensor* acc) {
  const Linear& proj = act_->proj();
  const int64_t dim = x.size(-1), dim_out = out_->weight.size(0);
  const at::Tensor x2 = x.reshape({-1, dim}).contiguous();
  const int64_t M = x2.size(0);
  const int64_t tile = feed_forward_tile_rows(proj->weight.size(0), x.element_size());
  at::Tensor out = acc ? acc->view({M, dim_out}) : at::empty({M, dim_out}, x.options());
  // LibTorch's worker threads do not inherit the caller's inference mode; tiled_applies requires
  // gradients off, so the workers run with gradients off too.
  const bool inference = c10::InferenceMode::is_enabled();
  at::parallel_for(0, (M + tile - 1) / tile, 1, [&](int64_t begin, int64_t end) {
    c10::InferenceMode inference_guard(inference);
    at::NoGradGuard no_grad;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r0 = i * tile, rows = std::min(tile, M - r0);
      const at::Tensor h = linear_forward(x2.narrow(0, r0, rows), proj->weight, proj->bias);
      at::Tensor dst = out.narrow(0, r0, rows);
      if (acc)
        linear_forward_add(fused_geglu_cpu(h), out_->weight, out_->bias, dst);
      else
        dst.copy_(linear_forward(fused_geglu_cpu(h), out_->weight, out_->bias));
    }
  });
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = dim_out;
  return acc ? *acc : out.view(shape);
}

at::Tensor FeedForwardImpl::forward(const at::Tensor& x) {
  if (tiled_applies(x)) return forward_tiled(x);
  at::Tensor h = out_->forward(drop_->forward(act_->forward(x)));
  if (final_drop_) h = final_drop_->forward(h);
  return h;
}

at::Tensor FeedForwardImpl::forward_add_to(const at::Tensor& x, at::Tensor& acc) {
  check_accumulator("FeedForward", x, out_->weight.size(0), acc);
  if (tiled_applies(x) && acc.is_contiguous() && acc.scalar_type() == x.scalar_type()) return forward_tiled(x, &acc);
  if (dropout_active()) return acc.add_(forward(x));
  return out_->forward_add_to(act_->forward(x), acc);
}

// ---- BasicTransformerBlock ------------------------------------------------------------------

BasicTransformerBlockImpl::BasicTransformerBlockImpl(const TransformerBlockOptions& o) : options_(o) {
  auto ln = [&]() {
    return LayerNorm(torch::nn::LayerNormOptions({o.dim}).eps(o.norm_eps).elementwise_affine(o.norm_elementwise_affine));
  };
  norm1_ = register_module("norm1", ln());
  AttentionOptions a1;
  a1.query_dim = o.dim;
  a1.heads = o.num_attention_heads;
  a1.dim_head = o.attention_head_dim;
  a1.dropout = o.dropout;
  a1.bias = o.attention_bias;
  a1.out_bias = o.attention_out_bias;
  if (o.only_cross_attention) a1.cross_attention_dim = o.cross_attention_dim;
  attn1_ = register_module("attn1", Attention(a1));
  if (o.cross_attention_dim || o.double_self_attention) {
    norm2_ = register_module("norm2", ln());
    AttentionOptions a2 = a1;
    a2.cross_attention_dim = o.double_self_attention ? c10::nullopt : o.cross_attention_dim;
    attn2_ = register_module("attn2", Attention(a2));
  }
  norm3_ = register_module("norm3", ln());
  FeedForwardOptions f;
  f.dim = o.dim;
  f.dropout = o.dropout;
  f.activation_fn = o.activation_fn;
  f.inner_dim = o.ff_inner_dim;
  f.bias = o.ff_bias;
  ff_ = register_module("ff", FeedForward(f));
}

bool BasicTransformerBlockImpl::attends_over_frames() const {
  return !options_.only_cross_attention && (!attn2_ || options_.double_self_attention);
}

template <typename Attend>
at::Tensor BasicTransformerBlockImpl::run(const at::Tensor& x, const Attend& attend) {
  // On CUDA each residual add and the norm after it run as one (LayerNorm::forward_add). In CPU
  // inference the residual stream, once it is a tensor of the block's own (the first sum), takes
  // the later attention and feed-forward outputs in place, inside their last product (oneDNN's sum
  // post-op), which saves a pass over the tokens for each.
  const bool in_place = !device_kernels_take(x) && !at::GradMode::is_enabled() && onednn_linear_available() &&
                        linear_uses_onednn(x);
  at::Tensor a = attend(attn1_, norm1_->forward(x), /*first=*/true, nullptr), h = x;
  if (attn2_) {
    auto [sum, normed] = norm2_->forward_add(a, h);
    h = sum;
    if (in_place) {
      attend(attn2_, normed, /*first=*/false, &h);
      return ff_->forward_add_to(norm3_->forward(h), h);
    }
    a = attend(attn2_, normed, /*first=*/false, nullptr);
  }
  auto [sum, normed] = norm3_->forward_add(a, h);
  if (in_place) return ff_->forward_add_to(normed, sum);
  return ff_->forward(normed) + sum;
}

at::Tensor BasicTransformerBlockImpl::forward_frames(const at::Tensor& x) {
  if (!attends_over_frames())
    throw Error("BasicTransformerBlock::forward_frames: only for blocks of self-attention (temporal transformers)");
  return run(x, [](Attention& attn, const at::Tensor& input, bool, at::Tensor* acc) {
    return acc ? acc->add_(attn->forward_frames(input)) : attn->forward_frames(input);
  });
}

at::Tensor BasicTransformerBlockImpl::attentions(const at::Tensor& x) {
  if (!attends_over_frames())
    throw Error("BasicTransformerBlock::attentions: only for blocks of self-attention (temporal transformers)");
  at::Tensor h = attn1_->forward(norm1_->forward(x)) + x;
  if (attn2_) h = attn2_->forward(norm2_->forward(h)) + h;
  return h;
}

at::Tensor BasicTransformerBlockImpl::feed_forward(const at::Tensor& h) { return ff_->forward(norm3_->forward(h)) + h; }

at::Tensor BasicTransformerBlockImpl::forward(const at::Tensor& x, const at::Tensor& encoder_hidden_states,
                                              c10::optional<at::Tensor> encoder_attention_mask) {
  return run(x, [&](Attention& attn, const at::Tensor& input, bool first, at::Tensor* acc) {
    // attn1 attends to the text only with only_cross_attention; attn2 always gets it (none: self).
    const at::Tensor& context = first && !options_.only_cross_attention ? at::Tensor() : encoder_hidden_states;
    const auto mask = first && !options_.only_cross_attention ? c10::nullopt : encoder_attention_mask;
    return acc ? attn->forward_add_to(*acc, input, context, mask) : attn->forward(input, context, mask);
  });
}

// ---- Transformer2DModel ---------------------------------------------------------------------

Transformer2DModelImpl::Transformer2DModelImpl(const Transformer2DOptions& o)
    : options_(o), inner_dim_(o.num_attention_heads * o.attention_head_dim) {
  const int64_t out_channels = o.out_channels.value_or(o.in_channels);
  if (o.in_channels <= 0 || o.in_channels % o.norm_num_groups != 0)
    throw ConfigError(fmt::format("Transformer2DModel: in_channels {} must be a positive multiple of norm_num_groups {}",
                                  o.in_channels, o.norm_num_groups));
  if (out_channels != o.in_channels)
    throw ConfigError(fmt::format("Transformer2DModel: out_channels {} must equal in_channels {} (residual)",
                                  out_channels, o.in_channels));
  norm_ = register_module("norm", GroupNorm(torch::nn::GroupNormOptions(o.norm_num_groups, o.in_channels).eps(1e-6)));
  if (o.use_linear_projection)
    proj_in_linear_ = register_module("proj_in", Linear(o.in_channels, inner_dim_));
  else
    proj_in_conv_ = register_module("proj_in", torch::nn::Conv2d(torch::nn::Conv2dOptions(o.in_channels, inner_dim_, 1)));
  transformer_blocks_ = register_module("transformer_blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.num_layers; ++i) {
    TransformerBlockOptions b;
    b.dim = inner_dim_;
    b.num_attention_heads = o.num_attention_heads;
    b.attention_head_dim = o.attention_head_dim;
    b.dropout = o.dropout;
    b.cross_attention_dim = o.cross_attention_dim;
    b.activation_fn = o.activation_fn;
    b.attention_bias = o.attention_bias;
    b.only_cross_attention = o.only_cross_attention;
    b.double_self_attention = o.double_self_attention;
    b.norm_elementwise_affine = o.norm_elementwise_affine;
    b.norm_eps = o.norm_eps;
    transformer_blocks_->push_back(BasicTransformerBlock(b));
  }
  if (o.use_linear_projection)
    proj_out_linear_ = register_module("proj_out", Linear(inner_dim_, out_channels));
  else
    proj_out_conv_ = register_module("proj_out", torch::nn::Conv2d(torch::nn::Conv2dOptions(inner_dim_, out_channels, 1)));
}

at::Tensor Transformer2DModelImpl::forward(const at::Tensor& x, const at::Tensor& encoder_hidden_states,
                                           c10::optional<at::Tensor> encoder_attention_mask) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  // [N, C, H, W] -> tokens [N, H*W, C]. A 1x1 convolution projection is the same product as a
  // linear layer over the tokens, so both kinds run as one (its weight [out, in, 1, 1] seen as
  // [out, in]): no convolution layout reorders around the token layout.
  // On the CPU (inference, NCHW) vdm's layout kernels move the tokens in and out, the residual
  // added on the way out.
  const bool cpu_layout = x.is_contiguous() && token_layout_cpu_applies(x);
  at::Tensor h = norm_->forward(x);
  h = cpu_layout ? tokens_from_channels_cpu(h) : h.permute({0, 2, 3, 1}).reshape({N, H * W, C});
  if (proj_in_conv_)
    h = linear_forward(h, proj_in_conv_->weight.view({inner_dim_, C}), proj_in_conv_->bias);
  else
    h = proj_in_linear_->forward(h);
  for (const auto& m : *transformer_blocks_)
    h = m->as<BasicTransformerBlockImpl>()->forward(h, encoder_hidden_states, encoder_attention_mask);
  if (proj_out_conv_)
    h = linear_forward(h, proj_out_conv_->weight.view({C, inner_dim_}), proj_out_conv_->bias);
  else
    h = proj_out_linear_->forward(h);
  // tokens [N, H*W, C] -> [N, C, H, W], laid out as x (the residual first keeps its layout)
  if (cpu_layout && h.is_contiguous()) return channels_from_tokens_add_cpu(h.view({N, H * W, 1, C}), x);
  return x + h.view({N, H, W, C}).permute({0, 3, 1, 2});
}

}  // namespace vdm::models
