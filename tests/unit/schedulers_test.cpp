// Scheduler behaviour that the reference fixtures do not cover: call-order errors, sampler
// overrides, config errors, and add_noise / get_velocity / single steps against closed forms.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "core/error.h"
#include "core/runtime.h"
#include "io/json_config.h"
#include "schedulers/ddim_scheduler.h"
#include "schedulers/dpm_solver_multistep_scheduler.h"
#include "schedulers/euler_discrete_scheduler.h"
#include "schedulers/scheduler.h"
#include "tests/support/test_support.h"

namespace {

using nlohmann::json;
using namespace vdm::schedulers;

// A small training schedule with explicit betas, so closed forms are easy to write down.
std::vector<double> small_betas() {
  std::vector<double> b;
  for (int i = 0; i < 20; ++i) b.push_back(0.01 + 0.02 * i);
  return b;
}

vdm::io::JsonConfig config(const std::string& cls, json extra = json::object()) {
  json j = {{"_class_name", cls}, {"num_train_timesteps", 20}, {"trained_betas", small_betas()},
            {"timestep_spacing", "linspace"}, {"clip_sample", false}};
  for (auto it = extra.begin(); it != extra.end(); ++it) j[it.key()] = it.value();
  return vdm::io::JsonConfig(j, "test/" + cls + "/scheduler_config.json");
}

// Reference SD-style config (scaled_linear betas, v-prediction, leading spacing).
vdm::io::JsonConfig sd_config() {
  json j = {{"_class_name", "DDIMScheduler"}, {"num_train_timesteps", 1000}, {"beta_start", 0.00085},
            {"beta_end", 0.012}, {"beta_schedule", "scaled_linear"}, {"prediction_type", "v_prediction"},
            {"timestep_spacing", "leading"}, {"steps_offset", 1}, {"clip_sample", false},
            {"set_alpha_to_one", false}};
  return vdm::io::JsonConfig(j, "model/scheduler/scheduler_config.json");
}

double cumprod_alpha(int64_t t) {
  double a = 1.0;
  auto b = small_betas();
  for (int64_t i = 0; i <= t; ++i) a *= 1.0 - static_cast<float>(b[static_cast<size_t>(i)]);
  return a;
}

std::string what_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Schedulers, DpmSolverStepsMustRunInOrderAfterSetTimesteps) {
  auto sched = make_scheduler(config("DPMSolverMultistepScheduler"));
  at::Tensor x = at::randn({1, 2, 3, 3});
  at::Tensor eps = at::randn({1, 2, 3, 3});
  EXPECT_THROW(sched->step(eps, 0, x), vdm::Error);
  EXPECT_NE(what_of([&] { sched->step(eps, 0, x); }).find("call set_timesteps first"), std::string::npos);

  sched->set_timesteps(8);
  EXPECT_NO_THROW(sched->step(eps, 0, x));
  EXPECT_NO_THROW(sched->step(eps, 1, x));
  const std::string msg = what_of([&] { sched->step(eps, 3, x); });
  EXPECT_NE(msg.find("step 3 called after step 1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("in order 0..7"), std::string::npos) << msg;
  EXPECT_THROW(sched->step(eps, 1, x), vdm::Error);  // repeating a step is out of order too
  EXPECT_NO_THROW(sched->step(eps, 2, x));
  EXPECT_THROW(sched->step(eps, 8, x), vdm::Error);  // past the end
  // A new run starts with set_timesteps.
  sched->set_timesteps(8);
  EXPECT_NO_THROW(sched->step(eps, 0, x));
}

TEST(Schedulers, StatelessSchedulersNeedSetTimestepsAndAValidIndex) {
  for (const char* cls : {"DDIMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler"}) {
    SCOPED_TRACE(cls);
    auto sched = make_scheduler(config(cls));
    at::Tensor x = at::randn({1, 2, 2, 2});
    auto gen = vdm::make_generator(1);
    EXPECT_THROW(sched->step(x, 0, x, gen), vdm::Error);
    EXPECT_THROW(sched->scale_model_input(x, 0), vdm::Error);
    EXPECT_THROW(sched->timesteps(), vdm::Error);
    sched->set_timesteps(5);
    EXPECT_THROW(sched->step(x, 5, x, gen), vdm::Error);
    EXPECT_THROW(sched->step(x, -1, x, gen), vdm::Error);
    EXPECT_NO_THROW(sched->step(x, 3, x, gen));  // any order is fine without history
  }
}

TEST(Schedulers, SamplerOverrideKeepsTheTrainingSchedule) {
  const auto cfg = sd_config();
  auto base = make_scheduler(cfg);
  for (const std::string& sampler : sampler_names()) {
    SCOPED_TRACE(sampler);
    auto sched = make_scheduler(cfg, sampler);
    EXPECT_EQ(sched->name(), sampler_preset(sampler)["_class_name"].get<std::string>());
    EXPECT_TRUE(at::equal(sched->betas(), base->betas()));
    EXPECT_EQ(sched->schedule_config().prediction_type, PredictionType::kVPrediction);
    EXPECT_EQ(sched->schedule_config().timestep_spacing, TimestepSpacing::kLeading);
    EXPECT_EQ(sched->schedule_config().steps_offset, 1);
    sched->set_timesteps(10);
    EXPECT_EQ(sched->num_inference_steps(), 10);
  }
  auto karras = make_scheduler(cfg, "dpmpp_2m_karras");
  auto* dpm = dynamic_cast<DPMSolverMultistepScheduler*>(karras.get());
  ASSERT_NE(dpm, nullptr);
  EXPECT_TRUE(dpm->config().use_karras_sigmas);
  EXPECT_EQ(dpm->config().solver_order, 2);
  auto third = make_scheduler(cfg, "dpmpp_3m");
  EXPECT_EQ(dynamic_cast<DPMSolverMultistepScheduler*>(third.get())->config().solver_order, 3);
  auto sde = make_scheduler(cfg, "dpmpp_2m_sde");
  EXPECT_TRUE(dynamic_cast<DPMSolverMultistepScheduler*>(sde.get())->config().sde);
  // DDIM keeps its own settings from the file.
  auto ddim = make_scheduler(cfg, "ddim");
  EXPECT_FALSE(dynamic_cast<DDIMScheduler*>(ddim.get())->config().set_alpha_to_one);
}

TEST(Schedulers, UnknownSamplerAndClassAreClearErrors) {
  const auto cfg = sd_config();
  EXPECT_THROW(make_scheduler(cfg, "dpmpp_9m"), vdm::InputError);
  const std::string msg = what_of([&] { make_scheduler(cfg, "dpmpp_9m"); });
  EXPECT_NE(msg.find("dpmpp_9m"), std::string::npos);
  for (const auto& name : sampler_names()) EXPECT_NE(msg.find(name), std::string::npos) << name;

  const std::string cls = what_of([] { make_scheduler(config("PNDMScheduler")); });
  EXPECT_NE(cls.find("test/PNDMScheduler/scheduler_config.json"), std::string::npos) << cls;
  EXPECT_NE(cls.find("_class_name"), std::string::npos) << cls;
  EXPECT_THROW(make_scheduler(config("PNDMScheduler")), vdm::ConfigError);

  const std::string bad = what_of([] { make_scheduler(config("DDIMScheduler", {{"prediction_type", "noise"}})); });
  EXPECT_NE(bad.find("test/DDIMScheduler/scheduler_config.json"), std::string::npos) << bad;
  EXPECT_NE(bad.find("prediction_type"), std::string::npos) << bad;
  EXPECT_THROW(make_scheduler(config("DPMSolverMultistepScheduler", {{"algorithm_type", "dpmsolver"}})),
               vdm::ConfigError);
}

TEST(Schedulers, AddNoiseAndVelocityMatchClosedForms) {
  auto ddim = make_scheduler(config("DDIMScheduler"));
  at::Tensor x0 = at::randn({3, 2, 2, 2});
  at::Tensor noise = at::randn({3, 2, 2, 2});
  const std::vector<int64_t> ts = {0, 7, 19};
  at::Tensor t = at::tensor(ts, at::kLong);
  at::Tensor noisy = ddim->add_noise(x0, noise, t);
  at::Tensor velocity = ddim->get_velocity(x0, noise, t);
  for (int64_t b = 0; b < 3; ++b) {
    const double a = cumprod_alpha(ts[static_cast<size_t>(b)]);
    at::Tensor want = std::sqrt(a) * x0[b].to(at::kDouble) + std::sqrt(1 - a) * noise[b].to(at::kDouble);
    EXPECT_LT(vdm::test::max_abs_diff(noisy[b], want), 1e-5) << "batch " << b;
    at::Tensor want_v = std::sqrt(a) * noise[b].to(at::kDouble) - std::sqrt(1 - a) * x0[b].to(at::kDouble);
    EXPECT_LT(vdm::test::max_abs_diff(velocity[b], want_v), 1e-5) << "batch " << b;
  }
  EXPECT_THROW(ddim->add_noise(x0, noise, at::tensor({20}, at::kLong)), vdm::InputError);

  // Euler: x0 + sigma(t) noise; DPM-Solver: alpha_t x0 + sigma_t noise, which is the DDPM form.
  auto euler = make_scheduler(config("EulerDiscreteScheduler"));
  auto dpm = make_scheduler(config("DPMSolverMultistepScheduler"));
  euler->set_timesteps(20);  // linspace over 20 training steps: timesteps 19, 18, .., 0
  dpm->set_timesteps(19);
  ASSERT_EQ(euler->timesteps()[2].item<double>(), 17.0);
  const int64_t dpm_t = dpm->timesteps()[3].item<int64_t>();
  at::Tensor e = euler->add_noise(x0, noise, euler->timesteps().slice(0, 2, 3));
  const double a17 = cumprod_alpha(17);
  at::Tensor want_e = x0.to(at::kDouble) + std::sqrt((1 - a17) / a17) * noise.to(at::kDouble);
  EXPECT_LT(vdm::test::max_abs_diff(e, want_e), 1e-4);
  at::Tensor d = dpm->add_noise(x0, noise, at::tensor({dpm_t}, at::kLong));
  const double ad = cumprod_alpha(dpm_t);
  at::Tensor want_d = std::sqrt(ad) * x0.to(at::kDouble) + std::sqrt(1 - ad) * noise.to(at::kDouble);
  EXPECT_LT(vdm::test::max_abs_diff(d, want_d), 1e-5);
  EXPECT_THROW(euler->add_noise(x0, noise, at::tensor({17.5}, at::kFloat)), vdm::InputError);
}

TEST(Schedulers, SingleStepsMatchClosedForms) {
  at::Tensor x = at::randn({1, 2, 2, 2});
  at::Tensor eps = at::randn({1, 2, 2, 2});
  at::Tensor z = at::randn({1, 2, 2, 2});
  const at::Tensor xd = x.to(at::kDouble), ed = eps.to(at::kDouble), zd = z.to(at::kDouble);

  // DDIM, epsilon, eta 0.5 with supplied noise, leading spacing over 20 steps with 4 steps:
  // timesteps 15, 10, 5, 0; step 1 goes from t=10 to t=5.
  auto ddim = make_scheduler(config("DDIMScheduler", {{"timestep_spacing", "leading"}}));
  ddim->set_eta(0.5);
  ddim->set_timesteps(4);
  ASSERT_EQ(ddim->timesteps()[1].item<int64_t>(), 10);
  auto out = ddim->step(eps, 1, x, c10::nullopt, z);
  const double a = cumprod_alpha(10), ap = cumprod_alpha(5);
  const double std_dev = 0.5 * std::sqrt((1 - ap) / (1 - a) * (1 - a / ap));
  at::Tensor x0 = (xd - std::sqrt(1 - a) * ed) / std::sqrt(a);
  at::Tensor want = std::sqrt(ap) * x0 + std::sqrt(1 - ap - std_dev * std_dev) * ed + std_dev * zd;
  EXPECT_LT(vdm::test::max_abs_diff(out.pred_original_sample, x0), 1e-5);
  EXPECT_LT(vdm::test::max_abs_diff(out.prev_sample, want), 1e-5);
  EXPECT_THROW(ddim->step(eps, 1, x), vdm::Error);  // eta > 0 needs noise or a generator

  // Euler ancestral, epsilon: x0 = x - sigma eps; Euler step to sigma_down plus sigma_up noise.
  auto ancestral = make_scheduler(config("EulerAncestralDiscreteScheduler"));
  ancestral->set_timesteps(20);
  const double s = std::sqrt((1 - cumprod_alpha(15)) / cumprod_alpha(15));
  const double s_to = std::sqrt((1 - cumprod_alpha(14)) / cumprod_alpha(14));
  const double up = std::sqrt(s_to * s_to * (s * s - s_to * s_to) / (s * s));
  const double down = std::sqrt(s_to * s_to - up * up);
  auto anc = ancestral->step(eps, 4, x, c10::nullopt, z);
  at::Tensor want_anc = xd + ed * (down - s) + zd * up;
  EXPECT_LT(vdm::test::max_abs_diff(anc.prev_sample, want_anc), 1e-4);
  EXPECT_LT(vdm::test::max_abs_diff(ancestral->scale_model_input(x, 4), xd / std::sqrt(s * s + 1)), 1e-5);
  EXPECT_THROW(ancestral->step(eps, 4, x), vdm::Error);  // no noise, no generator
  auto g1 = vdm::make_generator(7), g2 = vdm::make_generator(7);
  EXPECT_TRUE(at::equal(ancestral->step(eps, 4, x, g1).prev_sample, ancestral->step(eps, 4, x, g2).prev_sample));

  // SDE DPM-Solver++ first step: (s_t/s_s e^-h) x + a_t (1 - e^-2h) x0 + s_t sqrt(1 - e^-2h) z.
  auto sde = make_scheduler(config("DDIMScheduler"), "dpmpp_2m_sde");
  sde->set_timesteps(6);
  EXPECT_THROW(sde->step(eps, 0, x), vdm::Error);  // needs noise or a generator
  sde->set_timesteps(6);
  auto first = sde->step(eps, 0, x, c10::nullopt, z);
  auto vp = [](double sigma) {
    const double alpha = 1 / std::sqrt(sigma * sigma + 1);
    return std::make_tuple(alpha, sigma * alpha, std::log(alpha) - std::log(sigma * alpha));
  };
  auto [a_s, s_s, l_s] = vp(sde->sigmas()[0].item<double>());
  auto [a_t, s_t, l_t] = vp(sde->sigmas()[1].item<double>());
  const double h = l_t - l_s;
  at::Tensor x0_sde = (xd - s_s * ed) / a_s;
  at::Tensor want_sde = (s_t / s_s * std::exp(-h)) * xd + a_t * (1 - std::exp(-2 * h)) * x0_sde +
                        s_t * std::sqrt(1 - std::exp(-2 * h)) * zd;
  EXPECT_LT(vdm::test::max_abs_diff(first.pred_original_sample, x0_sde), 1e-4);
  EXPECT_LT(vdm::test::max_abs_diff(first.prev_sample, want_sde), 1e-4);

  // Euler to the final sigma 0 lands on x0.
  auto euler = make_scheduler(config("EulerDiscreteScheduler"));
  euler->set_timesteps(5);
  auto last = euler->step(eps, 4, x);
  EXPECT_LT(vdm::test::max_abs_diff(last.prev_sample, last.pred_original_sample), 1e-6);
}

TEST(Schedulers, TimestepsForStrengthTakesTheTail) {
  auto ddim = make_scheduler(config("DDIMScheduler", {{"timestep_spacing", "leading"}}));
  ddim->set_timesteps(10);
  auto s = timesteps_for_strength(*ddim, 0.6);
  EXPECT_EQ(s.begin_index, 4);
  EXPECT_EQ(s.num_steps, 6);
  EXPECT_TRUE(at::equal(s.timesteps, ddim->timesteps().slice(0, 4)));
  EXPECT_EQ(ddim->begin_index(), 4);
  auto full = timesteps_for_strength(*ddim, 1.0);
  EXPECT_EQ(full.begin_index, 0);
  EXPECT_EQ(full.num_steps, 10);
  EXPECT_THROW(timesteps_for_strength(*ddim, 0.05), vdm::InputError);  // no step left
  EXPECT_THROW(timesteps_for_strength(*ddim, 1.5), vdm::InputError);

  // The multistep solver then starts its run at the begin index.
  auto dpm = make_scheduler(config("DPMSolverMultistepScheduler"));
  dpm->set_timesteps(10);
  auto tail = timesteps_for_strength(*dpm, 0.35);
  EXPECT_EQ(tail.begin_index, 7);
  at::Tensor x = at::randn({1, 1, 2, 2});
  EXPECT_THROW(dpm->step(x, 0, x), vdm::Error);
  for (int64_t i = tail.begin_index; i < dpm->num_inference_steps(); ++i) EXPECT_NO_THROW(dpm->step(x, i, x));
}

TEST(Schedulers, ThresholdingAndLambdaClipping) {
  at::Tensor x = at::tensor({0.5f, -3.0f, 2.0f, 1.0f}).reshape({1, 4});
  at::Tensor t = threshold_sample(x, 1.0, 2.0);  // s = clamp(max |x| = 3, 1, 2) = 2
  EXPECT_TRUE(at::allclose(t, at::tensor({0.25f, -1.0f, 1.0f, 0.5f}).reshape({1, 4})));

  // lambda_min_clipped read from a diffusers-written file (-Infinity and a finite value).
  const std::string dir = vdm::test::make_temp_dir("sched");
  {
    std::ofstream f(dir + "/scheduler_config.json");
    f << R"({"_class_name": "DPMSolverMultistepScheduler", "beta_schedule": "squaredcos_cap_v2",
             "lambda_min_clipped": -Infinity, "name": "-Infinity NaN"})";
  }
  auto unclipped = make_scheduler(vdm::io::JsonConfig::load(dir + "/scheduler_config.json"));
  unclipped->set_timesteps(10);
  EXPECT_EQ(unclipped->timesteps()[0].item<int64_t>(), 999);
  auto clipped = make_scheduler(config("DPMSolverMultistepScheduler", {{"num_train_timesteps", 1000},
                                                                        {"trained_betas", nullptr},
                                                                        {"beta_schedule", "squaredcos_cap_v2"},
                                                                        {"lambda_min_clipped", -5.1}}));
  clipped->set_timesteps(10);
  // last_timestep = number of timesteps whose log-SNR is >= -5.1; linspace ends at last - 1.
  const at::Tensor ac = clipped->alphas_cumprod();
  const at::Tensor lambda = at::log(at::sqrt(ac)) - at::log(at::sqrt(1 - ac));
  const int64_t last = (lambda >= -5.1).sum().item<int64_t>();
  EXPECT_LT(last, 1000);
  EXPECT_EQ(clipped->timesteps()[0].item<int64_t>(), last - 1);
}
