#include "models/cuda_ops.h"

#include <torch/nn/modules/conv.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>

#include <string>
#include <vector>

#include "core/error.h"
#include "models/cuda_kernels.h"
#ifdef VDM_WITH_CUDA_KERNELS
#include <c10/cuda/CUDAStream.h>
#endif

namespace vdm::models {

const std::vector<std::string>& cuda_kernel_names() {
  static const std::vector<std::string> names{"group_norm", "layer_norm", "geglu", "short_attention",
                                                     "bias_residual"};
  return names;
}

std::set<std::string> parse_disabled_cuda_kernels(const char* value) {
  const std::string text = value ? value : "";
  const auto& names = cuda_kernel_names();
  if (text == "all") return {names.begin(), names.end()};
  std::set<std::string> out;
  size_t begin = 0;
  while (begin <= text.size()) {
    const size_t end = std::min(text.find(',', begin), text.size());
    const std::string name = text.substr(begin, end - begin);
    if (!name.empty()) {
      if (std::find(names.begin(), names.end(), name) == names.end())
        throw InputError(fmt::format("VDM_DISABLE_CUDA_KERNELS: unknown kernel '{}'; expected a comma-separated list "
                                     "of {}, or all",
                                     name, fmt::join(names, ", ")));
      out.insert(name);
    }
    begin = end + 1;
  }
  return out;
}

namespace {
const cuda::KernelTable* g_cpu_table = nullptr;  // the CPU emulation's, installed by a test

bool enabled(const char* kernel) {
  static const std::set<std::string> disabled = parse_disabled_cuda_kernels(std::getenv("VDM_DISABLE_CUDA_KERNELS"));
  return disabled.count(kernel) == 0;
}
// The kernels for x's device: the CUDA build's for CUDA tensors, the emulation's for CPU tensors
// where a test installed it; null otherwise.
const cuda::KernelTable* device_table(const at::Tensor& x) {
#ifdef VDM_WITH_CUDA_KERNELS
  if (x.is_cuda()) return &cuda::kernel_table();
#endif
  return x.is_cpu() ? g_cpu_table : nullptr;
}
// device_table(x), except for tensors that need a gradient and where `kernel` is disabled.
const cuda::KernelTable* table_for(const at::Tensor& x, const char* kernel) {
  if (x.requires_grad() || !enabled(kernel)) return nullptr;
  return device_table(x);
}
bool kernel_dtype(const at::Tensor& x) {
  const auto t = x.scalar_type();
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}
cuda::DType dtype_of(const at::Tensor& x) {
  return x.scalar_type() == at::kFloat ? cuda::DType::kFloat
         : x.scalar_type() == at::kHalf ? cuda::DType::kHalf
                                        : cuda::DType::kBFloat16;
}
void* stream_of(const at::Tensor& x) {
#ifdef VDM_WITH_CUDA_KERNELS
  if (x.is_cuda()) return c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
#endif
  return nullptr;  // the emulation runs at once
}
bool channels_last_dense(const at::Tensor& x) { return x.dim() >= 3 && x.movedim(1, -1).is_contiguous(); }
// An affine parameter of a norm over x's `channels`: none, or contiguous [channels] like x.
bool parameter_fits(const at::Tensor& p, const at::Tensor& x, int64_t channels) {
  return !p.defined() || (p.scalar_type() == x.scalar_type() && p.is_contiguous() && p.device() == x.device() &&
                          p.numel() == channels);
}
std::string describe(const at::Tensor& x) {
  std::string strides;
  for (int64_t v : x.strides()) strides += (strides.empty() ? "" : ",") + std::to_string(v);
  return fmt::format("{} {} of strides {}", x.device().str(), c10::toString(x.scalar_type()), strides);
}
const void* ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }
// None, or starting on a 16-byte boundary (read in 16-byte packs).
bool aligned16(const at::Tensor& t) { return !t.defined() || reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }
// The table for x, or an error naming the operation and what it takes.
const cuda::KernelTable& table_or_throw(const at::Tensor& x, const char* kernel, const char* op,
                                        const std::string& expected) {
  const cuda::KernelTable* t = table_for(x, kernel);
  if (!t)
    throw Error(fmt::format("{}: no vdm kernel runs here (a build without CUDA kernels, a disabled kernel, a tensor "
                            "needing a gradient, or a device other than CUDA); expected {}; got {}",
                            op, expected, describe(x)));
  return *t;
}
// A convolution of x (channels-last inference on a kernel device) whose output goes to `kernel`,
// which adds the convolution's bias.
bool conv_bias_deferrable(const at::Tensor& x, const char* kernel) {
  return table_for(x, kernel) && kernel_dtype(x) && channels_last_dense(x) && !x.is_contiguous();
}
}  // namespace

void install_cpu_kernel_table(const cuda::KernelTable* table) { g_cpu_table = table; }

std::vector<std::string> cuda_kernels_in_use() {
  std::vector<std::string> out;
#ifdef VDM_WITH_CUDA_KERNELS
  for (const auto& name : cuda_kernel_names())
    if (enabled(name.c_str())) out.push_back(name);
#endif
  return out;
}

bool channels_last_pays(const c10::Device& device) {
#ifdef VDM_WITH_CUDA_KERNELS
  return device.is_cuda() && enabled("group_norm");
#else
  return false;
#endif
}

void set_conv_weights_channels_last(torch::nn::Module& module, bool on) {
  const auto fmt2 = on ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const auto fmt3 = on ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::Contiguous;
  at::NoGradGuard no_grad;
  for (const auto& m : module.modules()) {
    if (auto* c = m->as<torch::nn::Conv2dImpl>()) c->weight.set_data(c->weight.contiguous(fmt2));
    if (auto* c = m->as<torch::nn::Conv3dImpl>()) c->weight.set_data(c->weight.contiguous(fmt3));
  }
}

bool fused_qkv_pays(const c10::Device& device) { return device.is_cuda(); }

bool device_kernels_take(const at::Tensor& x) { return device_table(x) != nullptr; }

bool norm_takes_conv_bias(const at::Tensor& conv_input) { return conv_bias_deferrable(conv_input, "group_norm"); }

bool residual_takes_conv_bias(const at::Tensor& conv_input) {
  return conv_bias_deferrable(conv_input, "bias_residual");
}

// ---- group norm -----------------------------------------------------------------------------

bool group_norm_nhwc_applies(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  if (!table_for(x, "group_norm") || !kernel_dtype(x) || !channels_last_dense(x) || x.is_contiguous()) return false;
  return x.size(1) <= 4096 && parameter_fits(weight, x, x.size(1)) && parameter_fits(bias, x, x.size(1));
}

at::Tensor group_norm_nhwc(const at::Tensor& x, int64_t groups, const at::Tensor& weight, const at::Tensor& bias,
                           double eps, bool silu, const at::Tensor& add) {
  const std::string expected =
      "a channels-last tensor of float32, float16 or bfloat16 with parameters of its dtype";
  const cuda::KernelTable& k = table_or_throw(x, "group_norm", "group_norm_nhwc", expected);
  if (!group_norm_nhwc_applies(x, weight, bias))
    throw Error(fmt::format("group_norm_nhwc: expected {}; got {}", expected, describe(x)));
  const bool per_sample = add.defined() && add.dim() == 2;
  if (add.defined() && (!(add.sizes() == at::IntArrayRef{x.size(0), x.size(1)} ||
                          add.sizes() == at::IntArrayRef{x.size(1)}) ||
                        !add.is_contiguous() || add.scalar_type() != x.scalar_type() || add.device() != x.device()))
    throw Error(fmt::format("group_norm_nhwc: the added term must be a contiguous [{}, {}] or [{}] tensor like x; "
                            "got {}",
                            x.size(0), x.size(1), x.size(1), describe(add)));
  cuda::GroupNormNhwcShape s;
  s.samples = x.size(0);
  s.channels = x.size(1);
  s.rows = x.numel() / std::max<int64_t>(1, s.samples * s.channels);
  s.groups = groups;
  s.add_sample_stride = per_sample ? s.channels : 0;
  if (groups <= 0 || s.channels % groups != 0)
    throw Error(fmt::format("group_norm_nhwc: {} channels cannot be split into {} groups", s.channels, groups));
  at::Tensor y = at::empty_like(x);  // preserves x's strides: dense, channels innermost
  at::Tensor workspace = at::empty({k.group_norm_nhwc_workspace(s)}, x.options().dtype(at::kFloat));
  k.group_norm_nhwc(s, dtype_of(x), x.data_ptr(), ptr(add), ptr(weight), ptr(bias), eps, silu, y.data_ptr(),
                    workspace.data_ptr<float>(), stream_of(x));
  return y;
}

// ---- layer norm -----------------------------------------------------------------------------

bool layer_norm_cuda_applies(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  const cuda::KernelTable* k = table_for(x, "layer_norm");
  if (!k || !kernel_dtype(x) || x.dim() < 1 || !x.is_contiguous()) return false;
  // Rows wider than 256 elements are read in 16-byte packs: every pointer 16-byte aligned.
  const bool packs_ok = x.size(-1) <= 256 || (aligned16(x) && aligned16(weight) && aligned16(bias));
  return k->layer_norm_rows_supported(x.size(-1), x.element_size()) && packs_ok &&
         parameter_fits(weight, x, x.size(-1)) && parameter_fits(bias, x, x.size(-1));
}

at::Tensor layer_norm_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps) {
  const std::string expected =
      "a contiguous tensor [..., C] of float32, float16 or bfloat16 (C up to 2048) with parameters of its dtype";
  const cuda::KernelTable& k = table_or_throw(x, "layer_norm", "layer_norm_cuda", expected);
  if (!layer_norm_cuda_applies(x, weight, bias))
    throw Error(fmt::format("layer_norm_cuda: expected {}; got {} with C = {}", expected, describe(x),
                            x.dim() ? x.size(-1) : 0));
  at::Tensor y = at::empty_like(x);
  const int64_t C = x.size(-1);
  k.layer_norm_rows(dtype_of(x), x.data_ptr(), nullptr, ptr(weight), ptr(bias), x.numel() / std::max<int64_t>(1, C),
                    C, eps, nullptr, y.data_ptr(), stream_of(x));
  return y;
}

bool add_layer_norm_cuda_applies(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                                 const at::Tensor& bias) {
  if (!layer_norm_cuda_applies(x, weight, bias)) return false;
  return residual.sizes() == x.sizes() && residual.scalar_type() == x.scalar_type() &&
         residual.device() == x.device() && residual.is_contiguous() && !residual.requires_grad() &&
         (x.size(-1) <= 256 || aligned16(residual));
}

std::pair<at::Tensor, at::Tensor> add_layer_norm_cuda(const at::Tensor& x, const at::Tensor& residual,
                                                      const at::Tensor& weight, const at::Tensor& bias, double eps) {
  const std::string expected =
      "contiguous tensors x, residual [..., C] alike, of float32, float16 or bfloat16 (C up to 2048), with parameters "
      "of their dtype";
  const cuda::KernelTable& k = table_or_throw(x, "layer_norm", "add_layer_norm_cuda", expected);
  if (!add_layer_norm_cuda_applies(x, residual, weight, bias))
    throw Error(fmt::format("add_layer_norm_cuda: expected {}; got x {}, residual {}", expected, describe(x),
                            residual.defined() ? describe(residual) : std::string("undefined")));
  at::Tensor sum = at::empty_like(x), y = at::empty_like(x);
  const int64_t C = x.size(-1);
  k.layer_norm_rows(dtype_of(x), x.data_ptr(), residual.data_ptr(), ptr(weight), ptr(bias),
                    x.numel() / std::max<int64_t>(1, C), C, eps, sum.data_ptr(), y.data_ptr(), stream_of(x));
  return {sum, y};
}

// ---- GEGLU ----------------------------------------------------------------------------------

bool geglu_cuda_applies(const at::Tensor& h) {
  return table_for(h, "geglu") && kernel_dtype(h) && h.dim() >= 1 && h.size(-1) % 2 == 0 && h.is_contiguous();
}

at::Tensor geglu_cuda(const at::Tensor& h) {
  const std::string expected = "a contiguous tensor [..., 2 * inner] of float32, float16 or bfloat16";
  const cuda::KernelTable& k = table_or_throw(h, "geglu", "geglu_cuda", expected);
  if (!geglu_cuda_applies(h)) throw Error(fmt::format("geglu_cuda: expected {}; got {}", expected, describe(h)));
  std::vector<int64_t> shape(h.sizes().begin(), h.sizes().end());
  const int64_t inner = shape.back() / 2;
  shape.back() = inner;
  at::Tensor out = at::empty(shape, h.options());
  k.geglu(dtype_of(h), h.data_ptr(), out.data_ptr(), h.numel() / std::max<int64_t>(1, 2 * inner), inner,
          stream_of(h));
  return out;
}

// ---- short attention ------------------------------------------------------------------------

namespace {
// q, k, v: [B, S, H, L, d] views (S: the inner batch); out_strides over (B, S, H, L) of the output.
cuda::ShortAttentionShape short_attention_shape(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                const std::array<int64_t, 4>& out_strides) {
  cuda::ShortAttentionShape s;
  s.batch = q.size(0), s.inner_batch = q.size(1), s.heads = q.size(2), s.queries = q.size(3), s.keys = k.size(3);
  s.head_dim = q.size(4);
  const std::pair<const at::Tensor*, int64_t*> views[] = {{&q, s.q_strides}, {&k, s.k_strides}, {&v, s.v_strides}};
  for (const auto& [t, strides] : views)
    for (int d = 0; d < 4; ++d) strides[d] = t->size(d) == 1 ? 0 : t->stride(d);  // any stride fits one index
  const int64_t out_sizes[4] = {s.batch, s.inner_batch, s.heads, s.queries};
  for (int d = 0; d < 4; ++d) s.out_strides[d] = out_sizes[d] == 1 ? 0 : out_strides[d];
  return s;
}

// The kernel table when the kernel takes q, k, v ([B, S, H, L, d] views) unmasked; null otherwise.
const cuda::KernelTable* short_attention_table(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                               const std::array<int64_t, 4>& out_strides) {
  const cuda::KernelTable* table = table_for(q, "short_attention");
  if (!table || !kernel_dtype(q)) return nullptr;
  for (const at::Tensor* t : {&q, &k, &v})
    if (t->dim() != 5 || t->requires_grad() || t->scalar_type() != q.scalar_type() || t->device() != q.device() ||
        t->stride(4) != 1)
      return nullptr;
  for (int d : {0, 1, 2})
    if (k.size(d) != q.size(d) || v.size(d) != q.size(d)) return nullptr;
  if (k.size(3) != v.size(3) || k.size(4) != q.size(4) || v.size(4) != q.size(4)) return nullptr;
  const bool ok = table->short_attention_supported(short_attention_shape(q, k, v, out_strides), q.element_size(),
                                                   {q.data_ptr(), k.data_ptr(), v.data_ptr()});
  return ok ? table : nullptr;
}

// Output [B, Lq, H, d] contiguous, seen over (B, 1, H, Lq).
std::array<int64_t, 4> heads_last_strides(const at::Tensor& q) {
  const int64_t H = q.size(1), L = q.size(2), D = q.size(3);
  return {L * H * D, 0, D, H * D};
}
// Output [B, F, S, H, d] contiguous, seen over (B, S, H, F) (q: [B, F, S, H, d]).
std::array<int64_t, 4> frames_strides(const at::Tensor& q) {
  const int64_t F = q.size(1), S = q.size(2), H = q.size(3), D = q.size(4);
  return {F * S * H * D, H * D, D, S * H * D};
}
// [B, F, S, H, d] -> [B, S, H, F, d] (a view).
at::Tensor frames_to_sequences(const at::Tensor& t) { return t.permute({0, 2, 3, 1, 4}); }
}  // namespace

namespace {
// Runs the kernel on q, k, v ([B, S, H, L, d] views) into `out` (laid out by out_strides), or throws
// an error naming `op` and what it takes.
void run_short_attention(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const std::array<int64_t, 4>& out_strides, at::Tensor& out) {
  const std::string expected = fmt::format(
      "q [.., Lq, D], k, v [.., Lk, D] of one dtype (float32, float16, bfloat16), Lk up to {}, D up to 32, or a "
      "multiple of 8 up to 256 with 16-byte aligned rows",
      cuda::kShortAttentionMaxKeys);
  table_or_throw(q, "short_attention", op, expected);
  const cuda::KernelTable* table = short_attention_table(q, k, v, out_strides);
  if (!table)
    throw Error(fmt::format("{}: expected {}; got q {} of shape {}, k of shape {}", op, expected, describe(q),
                            fmt::join(q.sizes(), "x"), fmt::join(k.sizes(), "x")));
  table->short_attention(short_attention_shape(q, k, v, out_strides), dtype_of(q), q.data_ptr(), k.data_ptr(),
                         v.data_ptr(), 1.0 / std::sqrt(double(q.size(4))), out.data_ptr(), stream_of(q));
}
}  // namespace

bool short_attention_cuda_applies(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool has_mask) {
  if (has_mask || q.dim() != 4 || k.dim() != 4 || v.dim() != 4) return false;
  return short_attention_table(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), heads_last_strides(q)) != nullptr;
}

at::Tensor short_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4)
    throw Error(fmt::format("short_attention_cuda: expected 4-D q, k, v [B, H, L, D]; got {}-D, {}-D, {}-D", q.dim(),
                            k.dim(), v.dim()));
  at::Tensor out = at::empty({q.size(0), q.size(2), q.size(1), q.size(3)}, q.options());
  run_short_attention("short_attention_cuda", q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), heads_last_strides(q),
                      out);
  return out.transpose(1, 2);  // [B, H, Lq, D], whose memory is [B, Lq, H, D]
}

bool short_attention_frames_applies(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  if (q.dim() != 5 || k.dim() != 5 || v.dim() != 5) return false;
  return short_attention_table(frames_to_sequences(q), frames_to_sequences(k), frames_to_sequences(v),
                               frames_strides(q)) != nullptr;
}

at::Tensor short_attention_frames(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  if (q.dim() != 5 || k.dim() != 5 || v.dim() != 5)
    throw Error(fmt::format("short_attention_frames: expected 5-D q, k, v [B, F, S, H, D]; got {}-D, {}-D, {}-D",
                            q.dim(), k.dim(), v.dim()));
  at::Tensor out = at::empty(q.sizes(), q.options());
  run_short_attention("short_attention_frames", frames_to_sequences(q), frames_to_sequences(k),
                      frames_to_sequences(v), frames_strides(q), out);
  return out;
}

// ---- bias and residual ----------------------------------------------------------------------

bool bias_residual_cuda_applies(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& residual) {
  if (!table_for(x, "bias_residual") || residual.requires_grad() || !kernel_dtype(x) || !channels_last_dense(x))
    return false;
  return residual.scalar_type() == x.scalar_type() && residual.device() == x.device() &&
         residual.sizes() == x.sizes() && residual.strides() == x.strides() && parameter_fits(bias, x, x.size(1));
}

at::Tensor add_bias_residual(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& residual, double divisor) {
  if (bias_residual_cuda_applies(x, bias, residual)) {
    table_for(x, "bias_residual")
        ->bias_residual(dtype_of(x), x.data_ptr(), ptr(bias), residual.data_ptr(), x.numel() / x.size(1), x.size(1),
                        1.0 / divisor, x.data_ptr(), stream_of(x));
    return x;
  }
  std::vector<int64_t> shape(size_t(x.dim()), 1);
  if (x.dim() > 1) shape[1] = x.size(1);
  at::Tensor out = residual + (bias.defined() ? x + bias.view(shape) : x);
  return divisor != 1.0 ? out / divisor : out;
}

}  // namespace vdm::models
