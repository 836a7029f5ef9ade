#include "models/linear_onednn.h"

#include <ATen/record_function.h>
#include <fmt/format.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
#include <unordered_map>

#include "core/error.h"

#ifdef VDM_WITH_DNNL
#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace vdm::models {

#ifdef VDM_WITH_DNNL

namespace {

dnnl::memory::data_type dnnl_type(c10::ScalarType t) {
  switch (t) {
    case at::kFloat: return dnnl::memory::data_type::f32;
    case at::kBFloat16: return dnnl::memory::data_type::bf16;
    default:
      throw Error(fmt::format("onednn_linear: dtype {} is not supported (float32 or bfloat16)", c10::toString(t)));
  }
}

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Primitives by shape: creating one costs tens of microseconds, a UNet step calls a few dozen
// shapes hundreds of times.
struct Key {
  int64_t m, k, n, x_stride;
  bool bias;
  int dtype;
  bool sum;  // dst += the product (post-op)
  bool operator<(const Key& o) const {
    return std::tie(m, k, n, x_stride, bias, dtype, sum) <
           std::tie(o.m, o.k, o.n, o.x_stride, o.bias, o.dtype, o.sum);
  }
};

struct Primitive {
  dnnl::memory::desc x, w, b, y, scratchpad;
  dnnl::matmul matmul;
};

const Primitive& primitive_for(const Key& key) {
  static std::mutex mutex;
  static std::map<Key, Primitive> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  using dims = dnnl::memory::dims;
  const dnnl::memory::data_type dt = dnnl_type(static_cast<c10::ScalarType>(key.dtype));
  Primitive p;
  p.x = dnnl::memory::desc(dims{key.m, key.k}, dt, dims{key.x_stride, 1});
  p.w = dnnl::memory::desc(dims{key.k, key.n}, dt, dims{1, key.k});  // weight [N, K] read as its transpose
  p.y = dnnl::memory::desc(dims{key.m, key.n}, dt, dims{key.n, 1});
  if (key.bias) p.b = dnnl::memory::desc(dims{1, key.n}, dt, dims{key.n, 1});
  dnnl::matmul::desc desc = key.bias ? dnnl::matmul::desc(p.x, p.w, p.b, p.y) : dnnl::matmul::desc(p.x, p.w, p.y);
  // The scratchpad is passed with each call, so that one primitive can run on several threads at
  // once (the library's own scratchpad is shared between calls).
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (key.sum) {
    dnnl::post_ops ops;
    ops.append_sum(1.0f);
    attr.set_post_ops(ops);
  }
  const dnnl::matmul::primitive_desc pd(desc, attr, cpu_engine());
  p.scratchpad = pd.scratchpad_desc();
  p.matmul = dnnl::matmul(pd);
  return cache.emplace(key, std::move(p)).first->second;
}

}  // namespace

bool onednn_linear_available() { return true; }

at::Tensor onednn_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                         const at::Tensor& accumulate) {
  RECORD_FUNCTION("vdm::onednn_linear", std::vector<c10::IValue>());
  // x: [M, K], weight: [N, K], bias: [N] -> [M, N]
  const bool rows_ok = x.dim() == 2 && x.stride(1) == 1 && (x.size(0) <= 1 || x.stride(0) >= x.size(1));
  if (!rows_ok || weight.dim() != 2 || x.size(1) != weight.size(1) || !x.device().is_cpu() ||
      x.scalar_type() != weight.scalar_type() || !weight.is_contiguous() ||
      (bias.defined() && (bias.numel() != weight.size(0) || !bias.is_contiguous() ||
                          bias.scalar_type() != x.scalar_type())))
    throw Error(fmt::format("onednn_linear: expected x [M, K] (unit stride along K), weight [N, K] contiguous and "
                            "bias [N] of one CPU dtype; got x {} {} strides {}, weight {} {}, bias {}",
                            c10::toString(x.scalar_type()), c10::str(x.sizes()), c10::str(x.strides()),
                            c10::toString(weight.scalar_type()), c10::str(weight.sizes()),
                            bias.defined() ? c10::str(bias.sizes()) : std::string("none")));
  dnnl_type(x.scalar_type());  // an unsupported dtype is refused even with no rows
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  if (accumulate.defined() && (accumulate.sizes() != at::IntArrayRef{M, N} || !accumulate.is_contiguous() ||
                               accumulate.scalar_type() != x.scalar_type() || !accumulate.device().is_cpu()))
    throw Error(fmt::format("onednn_linear: the tensor to accumulate into must be [{}, {}] contiguous {} on the CPU; "
                            "got {} {} strides {}",
                            M, N, c10::toString(x.scalar_type()), c10::toString(accumulate.scalar_type()),
                            c10::str(accumulate.sizes()), c10::str(accumulate.strides())));
  at::Tensor y = accumulate.defined() ? accumulate : at::empty({M, N}, x.options());
  if (M == 0) return y;
  const Key key{M, K, N, std::max<int64_t>(x.stride(0), K), bias.defined(), static_cast<int>(x.scalar_type()),
                accumulate.defined()};
  const Primitive& p = primitive_for(key);
  dnnl::engine& engine = cpu_engine();
  dnnl::stream stream(engine);
  std::unordered_map<int, dnnl::memory> args{
      {DNNL_ARG_SRC, dnnl::memory(p.x, engine, x.data_ptr())},
      {DNNL_ARG_WEIGHTS, dnnl::memory(p.w, engine, weight.data_ptr())},
      {DNNL_ARG_DST, dnnl::memory(p.y, engine, y.data_ptr())}};
  if (bias.defined()) args.emplace(DNNL_ARG_BIAS, dnnl::memory(p.b, engine, bias.data_ptr()));
  at::Tensor scratchpad;
  if (const size_t bytes = p.scratchpad.get_size()) {
    scratchpad = at::empty({static_cast<int64_t>(bytes)}, x.options().dtype(at::kByte));
    args.emplace(DNNL_ARG_SCRATCHPAD, dnnl::memory(p.scratchpad, engine, scratchpad.data_ptr()));
  }
  p.matmul.execute(stream, args);
  stream.wait();
  return y;
}

#else

bool onednn_linear_available() { return false; }

at::Tensor onednn_linear(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  throw Error("onednn_linear: this build of vdm has no oneDNN headers (install libdnnl-dev and reconfigure)");
}

#endif

}  // namespace vdm::models
