#include "core/runtime.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/Context.h>
#include <fmt/format.h>

#include <algorithm>
#include <random>
#include <thread>

#include "core/error.h"

namespace vdm {

void init_runtime(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(threads);
}

c10::Device parse_device(const std::string& name) {
  if (name == "cpu") return c10::Device(c10::kCPU);
  if (name.rfind("cuda", 0) == 0) {
    if (!at::hasCUDA())
      throw InputError(fmt::format(
          "--device {}: this build of vdm has no CUDA support (LibTorch without CUDA or no GPU "
          "found); use --device cpu",
          name));
    try {
      return c10::Device(name);
    } catch (const std::exception&) {
      throw InputError(fmt::format("--device {}: expected cuda or cuda:N", name));
    }
  }
  throw InputError(fmt::format("--device {}: unknown device; expected cpu, cuda or cuda:N", name));
}

c10::ScalarType parse_dtype(const std::string& name) {
  if (name == "float32" || name == "fp32" || name == "float") return at::kFloat;
  if (name == "bfloat16" || name == "bf16") return at::kBFloat16;
  if (name == "float16" || name == "fp16" || name == "half") return at::kHalf;
  throw InputError(
      fmt::format("--dtype {}: unknown dtype; expected float32, bfloat16 or float16", name));
}

std::string dtype_name(c10::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "float32";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    case at::kDouble: return "float64";
    default: return c10::toString(dtype);
  }
}

at::Generator make_generator(uint64_t seed) { return at::detail::createCPUGenerator(seed); }

uint64_t random_seed() {
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 20) ^ rd();  // keep it readable: < 2^52
}

}  // namespace vdm
