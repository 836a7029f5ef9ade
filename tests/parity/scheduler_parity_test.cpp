// Every scheduler case of the reference fixtures (golden/manifest.json -> cases.schedulers), every
// step: timesteps, sigmas, alphas_cumprod, scaled model input, prev_sample and
// pred_original_sample within 1e-5 relative of the reference. The cases, their configs and step
// arguments all come from the manifest.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>

#include "core/error.h"
#include "io/json_config.h"
#include "io/tensor_io.h"
#include "schedulers/scheduler.h"
#include "tests/support/test_support.h"

namespace {

using vdm::schedulers::Scheduler;

constexpr double kRelTol = 1e-5;

// max |a - b| / max |b| (float64); the reference scale keeps near-zero entries meaningful.
double rel_error(const at::Tensor& got, const at::Tensor& want) {
  if (got.sizes() != want.sizes()) {
    ADD_FAILURE() << "shape mismatch: got " << got.sizes() << ", want " << want.sizes();
    return INFINITY;
  }
  at::Tensor g = got.to(at::kDouble), w = want.to(at::kDouble);
  const double scale = std::max(w.abs().max().item<double>(), 1e-12);
  return (g - w).abs().max().item<double>() / scale;
}

const at::Tensor& require_key(const vdm::io::TensorMap& tensors, const std::string& key) {
  auto it = tensors.find(key);
  if (it == tensors.end()) throw std::runtime_error("schedulers.safetensors has no key " + key);
  return it->second;
}

}  // namespace

TEST(SchedulerParity, EveryManifestCaseEveryStep) {
  VDM_REQUIRE_FIXTURES(root);
  const auto manifest = vdm::io::JsonConfig::load(root + "/golden/manifest.json").json();
  ASSERT_TRUE(manifest.contains("cases") && manifest["cases"].contains("schedulers"));
  const auto& sched_cases = manifest["cases"]["schedulers"];
  ASSERT_TRUE(sched_cases.contains("cases"));
  ASSERT_FALSE(sched_cases["cases"].empty());
  if (sched_cases.contains("protocol")) std::cout << "protocol: " << sched_cases["protocol"].get<std::string>() << "\n";

  const auto tensors = vdm::io::load_safetensors(root + "/golden/schedulers.safetensors");
  const auto& file_keys = manifest["files"]["schedulers.safetensors"];

  for (auto it = sched_cases["cases"].begin(); it != sched_cases["cases"].end(); ++it) {
    const std::string name = it.key();
    const auto& c = it.value();
    SCOPED_TRACE("case " + name);
    const std::string prefix = name + ".";
    const int64_t n = c.at("num_inference_steps").get<int64_t>();

    std::unique_ptr<Scheduler> sched;
    try {
      sched = vdm::schedulers::make_scheduler(
          vdm::io::JsonConfig::load(root + "/" + c.at("config_dir").get<std::string>() + "/scheduler_config.json"));
    } catch (const vdm::Error& e) {
      ADD_FAILURE() << "cannot build scheduler class " << c.at("class") << ": " << e.what();
      continue;
    }
    EXPECT_EQ(sched->name(), c.at("class").get<std::string>());
    for (auto kw = c.at("step_kwargs").begin(); kw != c.at("step_kwargs").end(); ++kw) {
      if (kw.key() == "eta") {
        ASSERT_TRUE(sched->uses_eta()) << name << ": eta given to a scheduler without eta";
        sched->set_eta(kw.value().get<double>());
      } else {
        ADD_FAILURE() << "step argument '" << kw.key() << "' is not understood by the test";
      }
    }

    sched->set_timesteps(n);
    EXPECT_EQ(sched->order(), c.at("order").get<int>());
    EXPECT_NEAR(sched->init_noise_sigma(), c.at("init_noise_sigma").get<double>(),
                1e-6 * std::abs(c.at("init_noise_sigma").get<double>()));

    // Schedule tensors.
    double worst = 0.0;
    const at::Tensor& want_ts = require_key(tensors, prefix + "timesteps");
    EXPECT_EQ(sched->timesteps().scalar_type(), want_ts.scalar_type()) << "timestep dtype";
    worst = std::max(worst, rel_error(sched->timesteps(), want_ts));
    std::vector<double> manifest_ts = c.at("timesteps").get<std::vector<double>>();
    ASSERT_EQ(static_cast<int64_t>(manifest_ts.size()), sched->num_inference_steps());
    for (size_t i = 0; i < manifest_ts.size(); ++i)
      EXPECT_NEAR(sched->timesteps()[static_cast<int64_t>(i)].item<double>(), manifest_ts[i],
                  kRelTol * std::max(1.0, std::abs(manifest_ts[i])))
          << "timestep " << i;
    worst = std::max(worst, rel_error(sched->alphas_cumprod(), require_key(tensors, prefix + "alphas_cumprod")));
    if (tensors.count(prefix + "sigmas")) {
      ASSERT_TRUE(sched->sigmas().defined()) << "the reference has sigmas, the scheduler none";
      worst = std::max(worst, rel_error(sched->sigmas(), tensors.at(prefix + "sigmas")));
    }
    EXPECT_LT(worst, kRelTol) << "schedule";

    // The denoising chain, fed with the reference model outputs, run on our own samples.
    at::Tensor x = require_key(tensors, prefix + "x0");
    double worst_scaled = 0, worst_prev = 0, worst_x0 = 0;
    int64_t steps = 0;
    for (int64_t i = 0; file_keys.contains(fmt::format("{}step{}.model_output", prefix, i)); ++i, ++steps) {
      const std::string sp = fmt::format("{}step{}.", prefix, i);
      const at::Tensor scaled = sched->scale_model_input(x, i);
      worst_scaled = std::max(worst_scaled, rel_error(scaled, require_key(tensors, sp + "scaled_input")));
      c10::optional<at::Tensor> noise;
      if (tensors.count(sp + "variance_noise")) noise = tensors.at(sp + "variance_noise");
      if (tensors.count(sp + "noise")) noise = tensors.at(sp + "noise");
      auto out = sched->step(require_key(tensors, sp + "model_output"), i, x, c10::nullopt, noise);
      worst_prev = std::max(worst_prev, rel_error(out.prev_sample, require_key(tensors, sp + "prev_sample")));
      if (tensors.count(sp + "pred_original_sample"))
        worst_x0 = std::max(worst_x0, rel_error(out.pred_original_sample, tensors.at(sp + "pred_original_sample")));
      x = out.prev_sample;
    }
    EXPECT_EQ(steps, n) << "the fixture holds a different number of steps than num_inference_steps";
    EXPECT_LT(worst_scaled, kRelTol) << "scaled input";
    EXPECT_LT(worst_prev, kRelTol) << "prev_sample";
    EXPECT_LT(worst_x0, kRelTol) << "pred_original_sample";
    std::cout << fmt::format("{:<34} {:<32} steps {:>2}  schedule {:.2e}  scaled {:.2e}  prev {:.2e}  x0 {:.2e}\n",
                             name, sched->name(), steps, worst, worst_scaled, worst_prev, worst_x0);
  }
}
