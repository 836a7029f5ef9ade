#include "core/runtime.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/Context.h>
#include <fmt/format.h>

#include <dlfcn.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>

#include "core/error.h"

namespace vdm {

namespace {

// Tensors of many megabytes are allocated and freed on every step. glibc serves them with fresh
// mmap()s by default, and the kernel then zeroes every page on first touch: measured at a fifth of a
// CPU training step here. Keeping freed memory in the heap removes that cost.
void keep_freed_memory_in_heap() {
#if defined(__GLIBC__)
  static bool done = false;
  if (done) return;
  done = true;
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
}

// LibTorch parallelises over the batch and calls BLAS from inside its own OpenMP threads; a
// multi-threaded OpenBLAS underneath then oversubscribes the cores (measured 3x slower training
// steps on 2 cores). VDM_BLAS_THREADS overrides.
void set_blas_threads() {
  using SetThreads = void (*)(int);
  auto* set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (set == nullptr) return;  // another BLAS: leave it alone
  int n = 1;
  if (const char* env = std::getenv("VDM_BLAS_THREADS")) n = std::max(1, std::atoi(env));
  set(n);
}

}  // namespace

void init_runtime(int threads) {
  keep_freed_memory_in_heap();
  set_blas_threads();
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(threads);
}

int parallel_for_threads() {
  const int n = at::get_num_threads();
  std::vector<int> seen(static_cast<size_t>(n), 0);
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) {
    const int t = at::get_thread_num();
    if (t >= 0 && t < n) seen[static_cast<size_t>(t)] = 1;
  });
  return static_cast<int>(std::count(seen.begin(), seen.end(), 1));
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

bool env_switch(const char* name, const std::string& on_value, const std::string& off_value) {
  const char* v = std::getenv(name);
  const std::string mode = v ? v : "";
  if (mode.empty() || mode == on_value) return true;
  if (mode == off_value) return false;
  throw InputError(fmt::format("{}={}: unknown mode; expected '{}' (the default) or '{}'", name, mode, on_value,
                               off_value));
}

at::Generator make_generator(uint64_t seed) { return at::detail::createCPUGenerator(seed); }

uint64_t random_seed() {
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 20) ^ rd();  // keep it readable: < 2^52
}

}  // namespace vdm
