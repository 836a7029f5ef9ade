// AutoencoderKL against the reference implementation: encode (mean, clamped logvar), decode, and
// every intermediate tap listed in golden/vae.safetensors.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <map>
#include <string>

#include "core/runtime.h"
#include "io/tensor_io.h"
#include "models/autoencoder_kl.h"
#include "tests/support/test_support.h"

namespace {

using vdm::test::max_abs_diff;
const auto& get = vdm::test::golden_tensor;

constexpr double kTolerance = 1e-4;

void check_vae(const c10::Device& device, bool channels_last = false) {
  VDM_REQUIRE_FIXTURES(root);
  vdm::init_runtime(2);
  at::NoGradGuard no_grad;
  const auto manifest = vdm::test::read_json(root + "/golden/manifest.json");
  const auto& spec = manifest.at("cases").at("vae");
  auto vae = vdm::models::load_autoencoder_kl(root + "/" + spec.at("model").get<std::string>());
  vae->to(device);
  vae->set_channels_last(channels_last);  // as vdm generate runs it on CUDA
  const std::string dev = device.str() + (channels_last ? " channels-last" : "");
  EXPECT_DOUBLE_EQ(vae->config().scaling_factor, spec.at("scaling_factor").get<double>());
  const auto golden = vdm::io::load_safetensors(root + "/golden/vae.safetensors");

  std::map<std::string, at::Tensor> taps;
  vae->set_tap([&](const std::string& path, const at::Tensor& t) {
    if (!taps.count(path)) taps.emplace(path, t.detach().to(at::kCPU).clone());
  });

  const at::Tensor& x = get(golden, "encode.x");
  auto posterior = vae->encode(x.to(device));
  posterior.mean = posterior.mean.to(at::kCPU);
  posterior.logvar = posterior.logvar.to(at::kCPU);
  const double dm = max_abs_diff(posterior.mean, get(golden, "encode.mean"));
  const double dl = max_abs_diff(posterior.logvar, get(golden, "encode.logvar"));
  EXPECT_LT(dm, kTolerance);
  EXPECT_LT(dl, kTolerance);
  EXPECT_LE(posterior.logvar.max().item<double>(), 20.0);
  EXPECT_GE(posterior.logvar.min().item<double>(), -30.0);
  EXPECT_EQ(x.size(2) / vae->downsample_factor(), posterior.mean.size(2));

  const at::Tensor& z = get(golden, "decode.z");
  at::Tensor out = vae->decode(z.to(device)).to(at::kCPU);
  const double dd = max_abs_diff(out, get(golden, "decode.out"));
  EXPECT_LT(dd, kTolerance);
  vae->clear_tap();
  std::printf("[vae %s] encode mean %.3g logvar %.3g, decode %.3g\n", dev.c_str(), dm, dl, dd);

  const auto [compared, worst] = vdm::test::compare_taps(golden, "tap.", taps, kTolerance);
  EXPECT_GT(compared, 0);
  std::printf("[vae %s] %d taps, worst max|diff| %.3g\n", dev.c_str(), compared, worst);

  // Sampling from the posterior is reproducible with a seeded generator.
  auto s1 = posterior.sample(vdm::make_generator(7));
  auto s2 = posterior.sample(vdm::make_generator(7));
  EXPECT_TRUE(at::equal(s1, s2));
  EXPECT_FALSE(at::equal(s1, posterior.mean));
}

TEST(VaeParity, EncodeDecodeAndTaps) { check_vae(c10::Device(at::kCPU)); }
// Channels-last activations (LibTorch's CPU operators; the CUDA layout's own kernels are checked by
// cuda_path_emulated_test): the same values, outputs in the ordinary layout.
TEST(VaeParity, EncodeDecodeAndTapsChannelsLast) { check_vae(c10::Device(at::kCPU), /*channels_last=*/true); }

// The same on a GPU when there is one (TF32 off), in both layouts.
TEST(VaeParity, CudaEncodeDecodeAndTaps) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  at::globalContext().setAllowTF32CuBLAS(false);
  at::globalContext().setAllowTF32CuDNN(false);
  check_vae(c10::Device(at::kCUDA, 0));
  check_vae(c10::Device(at::kCUDA, 0), /*channels_last=*/true);
}

}  // namespace
