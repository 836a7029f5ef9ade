// Process-wide runtime settings: thread count, device and dtype parsing, seeded generators.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <string>

namespace vdm {

// Sets LibTorch's intra-op threads to `threads` (0 = number of cores). LibTorch starts with one
// thread on these machines, so every entry point calls this once.
void init_runtime(int threads = 0);

// How many threads at::parallel_for actually uses in vdm's own code: at::get_num_threads() when vdm
// is compiled with OpenMP (LibTorch's parallel_for is a header template that only runs in parallel
// in code compiled with it), 1 otherwise.
int parallel_for_threads();

// "cpu", "cuda", "cuda:1" -> device; throws InputError naming the flag otherwise, or when CUDA
// is requested but this build/machine has none.
c10::Device parse_device(const std::string& name);

// "float32"/"fp32", "bfloat16"/"bf16", "float16"/"fp16" -> dtype; throws InputError otherwise.
c10::ScalarType parse_dtype(const std::string& name);
std::string dtype_name(c10::ScalarType dtype);

// A two-way switch read from the environment variable `name`: true when it is unset, empty or
// `on_value` (the default), false for `off_value`; InputError naming both values otherwise.
// Used for A/B comparisons of one computation's two forms (VDM_UPSAMPLE, VDM_TEMPORAL_CONV).
bool env_switch(const char* name, const std::string& on_value, const std::string& off_value);

// A CPU generator seeded with `seed`: same seed, same numbers on the same machine.
at::Generator make_generator(uint64_t seed);

// Random seed from the OS, for runs without --seed (the value used is recorded in outputs).
uint64_t random_seed();

}  // namespace vdm
