#include "pipelines/unet_graph.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/error.h"
#include "core/log.h"
#ifdef VDM_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace vdm::pipelines {

#ifdef VDM_WITH_CUDA
struct UNetGraph::State {
  at::Tensor x, t, text, out;  // static buffers the graph reads and writes
  at::cuda::CUDAGraph graph;
};

namespace {
bool same_kind(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() && a.device() == b.device();
}
}  // namespace

UNetGraph::UNetGraph(models::UNet3DConditionModel unet) : unet_(std::move(unet)) {
  if (!unet_->device().is_cuda())
    throw InputError(fmt::format("--cuda-graph needs the model on a CUDA device; it is on {}", unet_->device().str()));
}

UNetGraph::~UNetGraph() = default;

at::Tensor UNetGraph::operator()(const at::Tensor& x, const at::Tensor& t, const at::Tensor& text) {
  if (!s_ || !same_kind(s_->x, x) || !same_kind(s_->t, t) || !same_kind(s_->text, text)) {
    s_.reset();  // frees the previous graph and its memory pool first
    auto s = std::make_unique<State>();
    s->x = x.clone();
    s->t = t.clone();
    s->text = text.clone();
    c10::cuda::getCurrentCUDAStream().synchronize();  // the copies above are done before the side stream reads them
    {
      // Capture on a side stream after one step there, as CUDA graphs require; the warm-up step
      // also lets cuDNN choose its algorithms outside the capture.
      c10::cuda::CUDAStreamGuard guard(c10::cuda::getStreamFromPool());
      unet_->forward(s->x, s->t, s->text);
      c10::cuda::getCurrentCUDAStream().synchronize();
      s->graph.capture_begin();
      s->out = unet_->forward(s->x, s->t, s->text);
      s->graph.capture_end();
    }
    log::debug("UNet step captured as a CUDA graph for input {}", fmt::join(x.sizes(), "x"));
    s_ = std::move(s);
  }
  s_->x.copy_(x);
  s_->t.copy_(t);
  s_->text.copy_(text);
  s_->graph.replay();
  return s_->out.clone();
}
#else
struct UNetGraph::State {};

UNetGraph::UNetGraph(models::UNet3DConditionModel unet) : unet_(std::move(unet)) {
  throw InputError("--cuda-graph: this build of vdm has no CUDA support");
}

UNetGraph::~UNetGraph() = default;

at::Tensor UNetGraph::operator()(const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  throw InputError("--cuda-graph: this build of vdm has no CUDA support");
}
#endif

}  // namespace vdm::pipelines
