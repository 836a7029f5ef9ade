#include "io/tensor_io.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <cstring>
#include <set>

#include "core/error.h"
#include "io/safetensors.h"

namespace vdm::io {

namespace {

c10::ScalarType to_scalar_type(DType d) {
  switch (d) {
    case DType::F64: return at::kDouble;
    case DType::F32: return at::kFloat;
    case DType::F16: return at::kHalf;
    case DType::BF16: return at::kBFloat16;
    case DType::I64: return at::kLong;
    case DType::I32: return at::kInt;
    case DType::I16: return at::kShort;
    case DType::I8: return at::kChar;
    case DType::U8: return at::kByte;
    case DType::BOOL: return at::kBool;
  }
  return at::kFloat;
}

DType from_scalar_type(c10::ScalarType t, const std::string& path, const std::string& key) {
  switch (t) {
    case at::kDouble: return DType::F64;
    case at::kFloat: return DType::F32;
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    case at::kLong: return DType::I64;
    case at::kInt: return DType::I32;
    case at::kShort: return DType::I16;
    case at::kChar: return DType::I8;
    case at::kByte: return DType::U8;
    case at::kBool: return DType::BOOL;
    default:
      throw Error(fmt::format("save {}: tensor '{}' has dtype {} which safetensors cannot hold",
                              path, key, c10::toString(t)));
  }
}

std::string shape_str(at::IntArrayRef s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

}  // namespace

TensorMap load_safetensors(const std::string& path) {
  SafetensorsFile file(path);
  TensorMap out;
  for (const auto& kv : file.tensors()) {
    const TensorView& v = kv.second;
    at::Tensor t = at::empty(v.shape, at::TensorOptions().dtype(to_scalar_type(v.dtype)));
    if (v.nbytes) std::memcpy(t.data_ptr(), v.data, v.nbytes);
    out.emplace(kv.first, std::move(t));
  }
  return out;
}

void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::map<std::string, at::Tensor> keep;
  std::map<std::string, TensorToWrite> views;
  for (const auto& kv : tensors) {
    at::Tensor t = kv.second.detach().to(at::kCPU).contiguous();
    keep[kv.first] = t;
    views[kv.first] = TensorToWrite{from_scalar_type(t.scalar_type(), path, kv.first),
                                    t.sizes().vec(), t.data_ptr(),
                                    static_cast<size_t>(t.numel()) * t.element_size()};
  }
  write_safetensors(path, views, metadata);
}

void load_state_dict(torch::nn::Module& module, const TensorMap& tensors, const std::string& source,
                     const StateDictOptions& options) {
  std::map<std::string, at::Tensor> targets;
  for (auto& p : module.named_parameters(true)) targets[p.key()] = p.value();
  for (auto& b : module.named_buffers(true)) targets[b.key()] = b.value();

  std::vector<std::string> problems;
  size_t non_finite = 0;  // problems that are NaN/Inf values (the rest are layout problems)
  std::set<std::string> seen;
  std::vector<std::pair<at::Tensor, at::Tensor>> copies;
  for (const auto& kv : tensors) {
    std::string key = options.rename ? options.rename(kv.first) : kv.first;
    auto it = targets.find(key);
    if (it == targets.end()) {
      problems.push_back(fmt::format("unexpected key '{}' {}", kv.first, shape_str(kv.second.sizes())));
      continue;
    }
    if (!seen.insert(key).second) {
      problems.push_back(fmt::format("key '{}' given twice (as '{}')", key, kv.first));
      continue;
    }
    if (it->second.sizes() != kv.second.sizes()) {
      problems.push_back(fmt::format("shape mismatch for '{}': expected {}, got {}", key,
                                     shape_str(it->second.sizes()), shape_str(kv.second.sizes())));
      continue;
    }
    if (it->second.is_floating_point() != kv.second.is_floating_point()) {
      // Floating-point weights convert between float32, float16 and bfloat16; an integer or
      // boolean tensor where the model has floats (or the reverse) is a different tensor.
      problems.push_back(fmt::format("dtype mismatch for '{}': expected {} values, got {}", key,
                                     it->second.is_floating_point() ? "floating-point" : "integer",
                                     c10::toString(kv.second.scalar_type())));
      continue;
    }
    if (options.check_finite && kv.second.is_floating_point() &&
        !at::isfinite(kv.second).all().item<bool>()) {
      problems.push_back(fmt::format("'{}' contains NaN or Inf values", key));
      ++non_finite;
      continue;
    }
    copies.emplace_back(it->second, kv.second);
  }
  for (const auto& kv : targets)
    if (!seen.count(kv.first))
      problems.push_back(fmt::format("missing key '{}' (expected shape {})", kv.first,
                                     shape_str(kv.second.sizes())));
  if (!problems.empty()) {
    const size_t shown = std::min<size_t>(problems.size(), 12);
    std::vector<std::string> head(problems.begin(), problems.begin() + shown);
    const bool only_values = non_finite == problems.size();
    throw WeightsError(fmt::format(
        "{}: {} ({} problem{}): {}{}; {}", source,
        only_values ? "weights hold values a model cannot use" : "weights do not match the model config",
        problems.size(), problems.size() == 1 ? "" : "s", fmt::join(head, "; "),
        problems.size() > shown ? fmt::format("; and {} more", problems.size() - shown) : "",
        only_values ? "the file is damaged or comes from a training run that diverged; download or "
                      "export it again"
                    : "check that the weights and config.json come from the same model"));
  }
  torch::NoGradGuard no_grad;
  for (auto& c : copies) c.first.copy_(c.second);
}

void load_module_weights(torch::nn::Module& module, const std::string& path,
                         const StateDictOptions& options) {
  load_state_dict(module, load_safetensors(path), path, options);
}

TensorMap state_dict(const torch::nn::Module& module, c10::optional<c10::ScalarType> dtype) {
  TensorMap out;
  for (const auto& p : module.named_parameters(true))
    out[p.key()] = dtype && p.value().is_floating_point() ? p.value().detach().to(*dtype)
                                                          : p.value().detach();
  for (const auto& b : module.named_buffers(true)) out[b.key()] = b.value().detach();
  return out;
}

int64_t parameter_count(const torch::nn::Module& module) {
  int64_t n = 0;
  for (const auto& p : module.parameters(true)) n += p.numel();
  return n;
}

}  // namespace vdm::io
