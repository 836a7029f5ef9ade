#include "temporal/transformer_temporal.h"

#include <fmt/format.h>

#include "core/error.h"
#include "models/attention.h"
#include "models/cuda_ops.h"
#include "models/layout_cpu.h"

namespace vdm::temporal {

TransformerTemporalModelImpl::TransformerTemporalModelImpl(const TransformerTemporalOptions& o)
    : options_(o), inner_dim_(o.num_attention_heads * o.attention_head_dim) {
  if (o.in_channels <= 0 || o.norm_num_groups <= 0 || o.in_channels % o.norm_num_groups != 0)
    throw ConfigError(fmt::format("TransformerTemporalModel: in_channels {} must be a positive multiple of norm_num_groups {}",
                                  o.in_channels, o.norm_num_groups));
  norm_ = register_module("norm", models::GroupNorm(torch::nn::GroupNormOptions(o.norm_num_groups, o.in_channels).eps(1e-6)));
  proj_in_ = register_module("proj_in", models::Linear(o.in_channels, inner_dim_));
  transformer_blocks_ = register_module("transformer_blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.num_layers; ++i) {
    models::TransformerBlockOptions b;
    b.dim = inner_dim_;
    b.num_attention_heads = o.num_attention_heads;
    b.attention_head_dim = o.attention_head_dim;
    b.dropout = o.dropout;
    b.cross_attention_dim = o.cross_attention_dim;
    b.activation_fn = o.activation_fn;
    b.attention_bias = o.attention_bias;
    b.double_self_attention = o.double_self_attention;
    b.norm_elementwise_affine = o.norm_elementwise_affine;
    transformer_blocks_->push_back(models::BasicTransformerBlock(b));
  }
  proj_out_ = register_module("proj_out", models::Linear(inner_dim_, o.in_channels));
}

void TransformerTemporalModelImpl::set_frame_windows(const FrameWindows& windows) {
  validate_frame_windows(windows);
  windows_ = windows;
  plan_frames_ = 0;
}

const FrameWindowPlan& TransformerTemporalModelImpl::plan_for(int64_t frames, c10::Device device) {
  if (plan_frames_ != frames || plan_device_ != device) {
    plan_ = plan_frame_windows(frames, windows_);
    plan_.index = plan_.index.to(device);
    plan_.weight = plan_.weight.to(device);
    plan_.inverse_total = plan_.inverse_total.to(device);
    plan_frames_ = frames;
    plan_device_ = device;
  }
  return plan_;
}

at::Tensor transformer_block_in_windows(models::BasicTransformerBlockImpl& block, const at::Tensor& x,
                                        const FrameWindowPlan& plan) {
  const int64_t N = x.size(0), F = x.size(1), C = x.size(2);
  // [N, windows * length, C] -> one sequence per window: [N * windows, length, C]
  at::Tensor windows = x.index_select(1, plan.index).view({N * plan.windows, plan.length, C});
  at::Tensor out = block.attentions(windows).view({N, plan.windows * plan.length, C});
  at::Tensor mixed = at::zeros_like(x).index_add_(1, plan.index, out * plan.weight.to(x.scalar_type()).view({1, -1, 1}));
  mixed.mul_(plan.inverse_total.to(x.scalar_type()).view({1, F, 1}));
  return block.feed_forward(mixed);
}

bool TransformerTemporalModelImpl::tokens_stay_in_place(const at::Tensor& x,
                                                        const at::Tensor& encoder_hidden_states) const {
  if (encoder_hidden_states.defined() || !models::device_kernels_take(x) || x.is_contiguous() ||
      !x.is_contiguous(at::MemoryFormat::ChannelsLast))
    return false;
  for (const auto& m : *transformer_blocks_)
    if (!m->as<models::BasicTransformerBlockImpl>()->attends_over_frames()) return false;
  return true;
}

at::Tensor TransformerTemporalModelImpl::forward(const at::Tensor& x, int64_t num_frames,
                                                 const at::Tensor& encoder_hidden_states) {
  const int64_t BF = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  if (num_frames <= 0 || BF % num_frames != 0)
    throw Error(fmt::format("TransformerTemporalModel: {} frames in the batch is not a multiple of num_frames {}", BF,
                            num_frames));
  const int64_t B = BF / num_frames;
  const bool windowed = windows_.splits(num_frames);
  if (windowed && encoder_hidden_states.defined())
    throw Error("TransformerTemporalModel: frame windows need self-attention blocks; this call passes encoder_hidden_states");
  // Normalise over all frames of a video: [B, C, F, H, W].
  at::Tensor h = norm_->forward(x.reshape({B, num_frames, C, H, W}).permute({0, 2, 1, 3, 4}));
  if (!windowed && tokens_stay_in_place(x, encoder_hidden_states)) {
    // Channels-last with vdm's kernels: the normalised memory is already the tokens [B, F, H*W, C];
    // each attention runs over the frames of a position in place (forward_frames), and the output
    // lands in x's layout, so the residual is a plain add.
    at::Tensor t = h.permute({0, 2, 3, 4, 1}).reshape({B, num_frames, H * W, C});
    t = proj_in_->forward(t);
    for (const auto& m : *transformer_blocks_) t = m->as<models::BasicTransformerBlockImpl>()->forward_frames(t);
    t = proj_out_->forward(t);  // [B, F, H*W, C]
    return t.view({BF, H, W, C}).permute({0, 3, 1, 2}) + x;
  }
  // One sequence of frames per spatial position: [B*H*W, F, C]. On the CPU (inference, NCHW) vdm's
  // layout kernels move the tokens in and out, the residual added on the way out.
  const bool cpu_layout = x.is_contiguous() && models::token_layout_cpu_applies(x) && !encoder_hidden_states.defined();
  h = cpu_layout ? models::tokens_from_channels_cpu(h).view({B * H * W, num_frames, C})
                 : h.permute({0, 3, 4, 2, 1}).reshape({B * H * W, num_frames, C});
  h = proj_in_->forward(h);
  for (const auto& m : *transformer_blocks_) {
    auto* block = m->as<models::BasicTransformerBlockImpl>();
    h = windowed ? transformer_block_in_windows(*block, h, plan_for(num_frames, h.device()))
                 : block->forward(h, encoder_hidden_states);
  }
  h = proj_out_->forward(h);
  if (cpu_layout && h.is_contiguous())
    return models::channels_from_tokens_add_cpu(h.view({B, H * W, num_frames, C}), x);
  // [B*H*W, F, C] -> [B, F, C, H, W] -> [B*F, C, H, W]
  h = h.reshape({B, H, W, num_frames, C}).permute({0, 3, 4, 1, 2});
  if (x.is_contiguous()) return h.reshape({BF, C, H, W}) + x;
  // Channels-last x: the residual first, so that the sum is laid out as x and folds back into
  // [B*F, C, H, W] without a copy (a reshape of the permuted h would copy it to NCHW).
  return (x.reshape({B, num_frames, C, H, W}) + h).reshape({BF, C, H, W});
}

}  // namespace vdm::temporal
