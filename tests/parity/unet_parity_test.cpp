// UNet3DConditionModel against the reference implementation: every case of golden/manifest.json
// ("cases" -> "unet"), its output and every intermediate tap recorded for it.
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <map>
#include <string>

#include "core/runtime.h"
#include "io/tensor_io.h"
#include "models/shape.h"
#include "models/unet_3d_condition.h"
#include "tests/support/test_support.h"

namespace {

using vdm::test::max_abs_diff;
using vdm::test::read_json;
const auto& get = vdm::test::golden_tensor;

constexpr double kTolerance = 1e-4;

// Runs every manifest case on `device` and compares the output and every golden tap.
void check_all_cases(const c10::Device& device) {
  VDM_REQUIRE_FIXTURES(root);
  vdm::init_runtime(2);
  at::NoGradGuard no_grad;
  const auto manifest = read_json(root + "/golden/manifest.json");
  const auto& spec = manifest.at("cases").at("unet");
  auto unet = vdm::models::load_unet3d(root + "/" + spec.at("model").get<std::string>());
  unet->to(device);
  const auto golden = vdm::io::load_safetensors(root + "/golden/unet.safetensors");
  const std::string dev = device.str();

  ASSERT_FALSE(spec.at("cases").empty());
  for (const auto& [name, c] : spec.at("cases").items()) {
    SCOPED_TRACE("case " + name + " on " + dev);
    const at::Tensor& sample = get(golden, name + ".sample");
    const at::Tensor& timestep = get(golden, name + ".timestep");
    const at::Tensor& ehs = get(golden, name + ".encoder_hidden_states");
    const at::Tensor& expected = get(golden, name + ".out");
    const int64_t B = c.at("B"), F = c.at("F"), H = c.at("H"), W = c.at("W"), L = c.at("L");
    ASSERT_EQ(sample.sizes(), (std::vector<int64_t>{B, unet->config().in_channels, F, H, W}));
    ASSERT_EQ(ehs.sizes(), (std::vector<int64_t>{B, L, unet->config().cross_attention_dim}));
    ASSERT_EQ(timestep.scalar_type() == at::kFloat, c.at("t_dtype").get<std::string>() == "torch.float32");

    std::map<std::string, at::Tensor> taps;
    unet->set_tap([&](const std::string& path, const at::Tensor& t) {
      if (!taps.count(path)) taps.emplace(path, t.detach().to(at::kCPU).clone());
    });
    at::Tensor out = unet->forward(sample.to(device), timestep.to(device), ehs.to(device)).to(at::kCPU);
    unet->clear_tap();

    const double d = max_abs_diff(out, expected);
    std::printf("[unet %s %s] out %s max|diff| %.3g\n", dev.c_str(), name.c_str(),
                vdm::models::shape_str(out.sizes()).c_str(), d);
    EXPECT_LT(d, kTolerance) << "output of " << name;

    const auto [compared, worst] = vdm::test::compare_taps(golden, name + ".tap.", taps, kTolerance);
    if (compared) std::printf("[unet %s %s] %d taps, worst max|diff| %.3g\n", dev.c_str(), name.c_str(), compared, worst);
  }
}

TEST(UNetParity, AllManifestCasesAndTaps) { check_all_cases(c10::Device(at::kCPU)); }

// The same on a GPU when there is one (TF32 off, so float32 means float32).
TEST(UNetParity, CudaAllManifestCasesAndTaps) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  at::globalContext().setAllowTF32CuBLAS(false);
  at::globalContext().setAllowTF32CuDNN(false);
  check_all_cases(c10::Device(at::kCUDA, 0));
}

}  // namespace
