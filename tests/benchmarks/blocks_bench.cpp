// Microbenchmarks of the building blocks at shapes from the ModelScope text-to-video UNet
// (16 frames, 256x256 pixels -> 32x32 latents, guidance batch 2), scaled by a width argument so
// the CPU can run them: attention, ResnetBlock2D, TemporalConvLayer, TransformerTemporalModel.
//   ./vdm_blocks_bench --benchmark_filter=Attention
#include <benchmark/benchmark.h>
#include <c10/core/InferenceMode.h>

#include "core/runtime.h"
#include "models/activations_cpu.h"
#include "models/attention.h"
#include "models/linear.h"
#include "models/linear_onednn.h"
#include "models/resnet.h"
#include "temporal/temporal_conv.h"
#include "temporal/transformer_temporal.h"

namespace {

constexpr int64_t kFrames = 16;
constexpr int64_t kBatch = 2;

// Spatial self-attention: B*F sequences of HxW tokens; args: tokens per side, channels.
void spatial_attention(benchmark::State& state, at::ScalarType dtype) {
  c10::InferenceMode guard;
  const int64_t side = state.range(0), heads = 8, dim = state.range(1) / heads;
  at::Tensor q = at::randn({kBatch * kFrames, heads, side * side, dim}).to(dtype);
  at::Tensor k = at::randn_like(q), v = at::randn_like(q);
  for (auto _ : state) benchmark::DoNotOptimize(vdm::models::scaled_dot_product_attention(q, k, v));
  state.SetItemsProcessed(state.iterations() * kBatch * kFrames);
}
void BM_SpatialAttention(benchmark::State& state) { spatial_attention(state, at::kFloat); }
BENCHMARK(BM_SpatialAttention)->Args({32, 32})->Args({16, 320})->Args({32, 320})->Unit(benchmark::kMillisecond);
// bfloat16 (on CPUs with AVX512-BF16 heads of 4 to 16 channels take bfloat16 pair products).
void BM_SpatialAttentionBf16(benchmark::State& state) { spatial_attention(state, at::kBFloat16); }
BENCHMARK(BM_SpatialAttentionBf16)->Args({32, 32})->Args({32, 64})->Unit(benchmark::kMillisecond);

// Temporal attention: B*H*W sequences of F tokens.
void temporal_attention(benchmark::State& state, at::ScalarType dtype) {
  c10::InferenceMode guard;
  const int64_t side = state.range(0), heads = 8, dim = state.range(1) / heads;
  at::Tensor q = at::randn({kBatch * side * side, heads, kFrames, dim}).to(dtype);
  at::Tensor k = at::randn_like(q), v = at::randn_like(q);
  for (auto _ : state) benchmark::DoNotOptimize(vdm::models::scaled_dot_product_attention(q, k, v));
}
void BM_TemporalAttention(benchmark::State& state) { temporal_attention(state, at::kFloat); }
BENCHMARK(BM_TemporalAttention)->Args({32, 32})->Args({16, 320})->Args({32, 320})->Unit(benchmark::kMillisecond);
void BM_TemporalAttentionBf16(benchmark::State& state) { temporal_attention(state, at::kBFloat16); }
BENCHMARK(BM_TemporalAttentionBf16)->Args({32, 32})->Args({32, 64})->Unit(benchmark::kMillisecond);

void BM_ResnetBlock2D(benchmark::State& state) {
  c10::InferenceMode guard;
  const int64_t side = state.range(0), ch = state.range(1);
  vdm::models::ResnetBlock2DOptions o;
  o.in_channels = ch;
  o.temb_channels = 4 * ch;
  vdm::models::ResnetBlock2D block(o);
  block->eval();
  at::Tensor x = at::randn({kBatch * kFrames, ch, side, side});
  at::Tensor temb = at::randn({kBatch * kFrames, 4 * ch});
  for (auto _ : state) benchmark::DoNotOptimize(block->forward(x, temb));
}
BENCHMARK(BM_ResnetBlock2D)->Args({32, 32})->Args({16, 320})->Args({32, 160})->Unit(benchmark::kMillisecond);

void BM_TemporalConvLayer(benchmark::State& state) {
  c10::InferenceMode guard;
  const int64_t side = state.range(0), ch = state.range(1);
  vdm::temporal::TemporalConvOptions o;
  o.in_dim = ch;
  vdm::temporal::TemporalConvLayer layer(o);
  layer->eval();
  at::Tensor x = at::randn({kBatch * kFrames, ch, side, side});
  for (auto _ : state) benchmark::DoNotOptimize(layer->forward(x, kFrames));
}
BENCHMARK(BM_TemporalConvLayer)->Args({32, 32})->Args({16, 320})->Args({32, 160})->Unit(benchmark::kMillisecond);

void BM_TransformerTemporal(benchmark::State& state) {
  c10::InferenceMode guard;
  const int64_t side = state.range(0), ch = state.range(1);
  vdm::temporal::TransformerTemporalOptions o;
  o.in_channels = ch;
  o.num_attention_heads = 8;
  o.attention_head_dim = ch / 8;
  vdm::temporal::TransformerTemporalModel model(o);
  model->eval();
  at::Tensor x = at::randn({kBatch * kFrames, ch, side, side});
  for (auto _ : state) benchmark::DoNotOptimize(model->forward(x, kFrames));
}
BENCHMARK(BM_TransformerTemporal)->Args({32, 32})->Args({16, 320})->Args({32, 160})->Unit(benchmark::kMillisecond);

// A linear layer over every pixel of every frame (Transformer2DModel's projections and
// feed-forward): [tokens, in] x [in, out]; args: tokens, in, out.
void BM_TokenLinear(benchmark::State& state) {
  c10::InferenceMode guard;
  at::Tensor x = at::randn({state.range(0), state.range(1)});
  at::Tensor w = at::randn({state.range(2), state.range(1)});
  for (auto _ : state) benchmark::DoNotOptimize(at::linear(x, w));
  state.SetItemsProcessed(state.iterations() * state.range(0) * state.range(1) * state.range(2));
}
BENCHMARK(BM_TokenLinear)->Args({32768, 32, 256})->Args({32768, 32, 32})->Args({32768, 128, 32})->Unit(benchmark::kMillisecond);

// The same products through oneDNN's matmul on the tensors' own memory (vdm's Linear on CPU).
void BM_TokenLinearOneDnn(benchmark::State& state) {
  if (!vdm::models::onednn_linear_available()) {
    state.SkipWithError("built without oneDNN's headers");
    return;
  }
  c10::InferenceMode guard;
  at::Tensor x = at::randn({state.range(0), state.range(1)});
  at::Tensor w = at::randn({state.range(2), state.range(1)});
  at::Tensor b = at::randn({state.range(2)});
  for (auto _ : state) benchmark::DoNotOptimize(vdm::models::onednn_linear(x, w, b));
  state.SetItemsProcessed(state.iterations() * state.range(0) * state.range(1) * state.range(2));
}
BENCHMARK(BM_TokenLinearOneDnn)->Args({32768, 32, 256})->Args({32768, 32, 32})->Args({32768, 128, 32})->Unit(benchmark::kMillisecond);

// The feed-forward's GEGLU, h[:, :W] * gelu(h[:, W:]) over [tokens, 2W]: vdm's fused kernel
// (arg 2 = 1) against LibTorch's chunk, GELU and multiply (arg 2 = 0); args: tokens, W, fused.
void BM_GeGLU(benchmark::State& state) {
  c10::InferenceMode guard;
  at::Tensor h = at::randn({state.range(0), 2 * state.range(1)});
  const bool fused = state.range(2) != 0;
  for (auto _ : state) {
    if (fused) {
      benchmark::DoNotOptimize(vdm::models::fused_geglu_cpu(h));
    } else {
      auto parts = h.chunk(2, -1);
      benchmark::DoNotOptimize(parts[0] * at::gelu(parts[1]));
    }
  }
  state.SetItemsProcessed(state.iterations() * state.range(0) * state.range(1));
}
BENCHMARK(BM_GeGLU)->Args({32768, 128, 1})->Args({32768, 128, 0})->Unit(benchmark::kMillisecond);

// The feed-forward (GEGLU, inner width 4 x dim) over [tokens, dim]: FeedForward's tiled inference
// path (arg 2 = 1) against the same layers one after the other over all tokens (arg 2 = 0);
// args: tokens, dim, tiled.
void BM_FeedForward(benchmark::State& state) {
  vdm::models::FeedForwardOptions o;
  o.dim = state.range(1);
  vdm::models::FeedForward ff(o);
  ff->eval();
  const auto& p = ff->named_parameters();
  c10::InferenceMode guard;
  at::Tensor x = at::randn({state.range(0), state.range(1)});
  const bool tiled = state.range(2) != 0;
  for (auto _ : state) {
    if (tiled) {
      benchmark::DoNotOptimize(ff->forward(x));
    } else {
      at::Tensor h = vdm::models::linear_forward(x, p["net.0.proj.weight"], p["net.0.proj.bias"]);
      benchmark::DoNotOptimize(
          vdm::models::linear_forward(vdm::models::fused_geglu_cpu(h), p["net.2.weight"], p["net.2.bias"]));
    }
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_FeedForward)
    ->Args({32768, 32, 1})->Args({32768, 32, 0})->Args({8192, 64, 1})->Args({8192, 64, 0})
    ->Args({8192, 320, 1})->Args({8192, 320, 0})->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  vdm::init_runtime(0);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
