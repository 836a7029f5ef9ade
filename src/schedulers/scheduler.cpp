#include "schedulers/scheduler.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>

#include "core/error.h"
#include "schedulers/ddim_scheduler.h"
#include "schedulers/dpm_solver_multistep_scheduler.h"
#include "schedulers/euler_ancestral_scheduler.h"
#include "schedulers/euler_discrete_scheduler.h"

namespace vdm::schedulers {

Scheduler::Scheduler(NoiseScheduleConfig config) : config_(std::move(config)) {
  betas_ = make_betas(config_);
  alphas_cumprod_ = alphas_cumprod_from_betas(betas_);
}

void Scheduler::keep_terminal_sigma_finite() {
  if (config_.rescale_betas_zero_snr) alphas_cumprod_[-1].fill_(std::pow(2.0, -24));
}

const at::Tensor& Scheduler::timesteps() const {
  if (!timesteps_.defined())
    throw Error(name() + ": timesteps() read before set_timesteps; call set_timesteps first");
  return timesteps_;
}

int64_t Scheduler::num_inference_steps() const { return timesteps().size(0); }

at::Tensor Scheduler::scale_model_input(const at::Tensor& sample, int64_t step_index) const {
  check_step_index(step_index, (name() + "::scale_model_input").c_str());
  return sample;
}

void Scheduler::set_begin_index(int64_t begin_index) {
  const int64_t n = num_inference_steps();
  if (begin_index < 0 || begin_index >= n)
    throw InputError(fmt::format("{}::set_begin_index: begin index {} is outside [0, {})", name(), begin_index, n));
  begin_index_ = begin_index;
}

void Scheduler::check_step_index(int64_t step_index, const char* what) const {
  if (!timesteps_.defined())
    throw Error(fmt::format("{}: step {} called before set_timesteps; call set_timesteps first", what, step_index));
  const int64_t n = timesteps_.size(0);
  if (step_index < 0 || step_index >= n)
    throw Error(fmt::format("{}: step index {} is outside [0, {}) for {} inference steps", what, step_index, n, n));
}

at::Tensor Scheduler::variance_noise(const at::Tensor& like, c10::ScalarType dtype,
                                     const c10::optional<at::Generator>& generator,
                                     const c10::optional<at::Tensor>& noise, const char* why) const {
  if (noise.has_value() && noise->defined()) {
    if (noise->sizes() != like.sizes())
      throw InputError(fmt::format("{}: the supplied noise has shape {}, expected the model output's {}", why,
                                   fmt::join(noise->sizes(), "x"), fmt::join(like.sizes(), "x")));
    return noise->to(like.device(), dtype);
  }
  if (!generator.has_value())
    throw Error(fmt::format("{} needs random noise: pass a generator or the noise tensor", why));
  return at::randn(like.sizes(), *generator, at::TensorOptions().dtype(dtype).device(like.device()));
}

int64_t Scheduler::index_for_timestep(double timestep) const {
  at::Tensor ts = timesteps().to(at::kDouble).cpu().contiguous();
  const double* p = ts.data_ptr<double>();
  std::vector<int64_t> hits;
  for (int64_t i = 0; i < ts.numel(); ++i)
    if (p[i] == timestep) hits.push_back(i);
  if (hits.empty()) return -1;
  return hits.size() > 1 ? hits[1] : hits[0];
}

namespace {

// alphas_cumprod at integer training timesteps, shaped to broadcast over `like`.
std::pair<at::Tensor, at::Tensor> sqrt_alpha_terms(const at::Tensor& alphas_cumprod, const at::Tensor& timesteps,
                                                   const at::Tensor& like, const std::string& who) {
  at::Tensor t = timesteps.reshape({-1}).to(at::kLong).cpu();
  const int64_t T = alphas_cumprod.size(0);
  if (t.numel() > 0 && (t.min().item<int64_t>() < 0 || t.max().item<int64_t>() >= T))
    throw InputError(fmt::format("{}: timesteps must be in [0, {}), got [{}, {}]", who, T, t.min().item<int64_t>(),
                                 t.max().item<int64_t>()));
  at::Tensor a = alphas_cumprod.to(like.scalar_type()).index({t});
  at::Tensor sqrt_alpha = at::pow(a, 0.5).flatten();
  at::Tensor sqrt_one_minus = at::pow(1 - a, 0.5).flatten();
  while (sqrt_alpha.dim() < like.dim()) {
    sqrt_alpha = sqrt_alpha.unsqueeze(-1);
    sqrt_one_minus = sqrt_one_minus.unsqueeze(-1);
  }
  return {sqrt_alpha.to(like.device()), sqrt_one_minus.to(like.device())};
}

}  // namespace

at::Tensor Scheduler::add_noise(const at::Tensor& original, const at::Tensor& noise,
                                const at::Tensor& timesteps) const {
  auto [sqrt_alpha, sqrt_one_minus] = sqrt_alpha_terms(alphas_cumprod_, timesteps, original, name() + "::add_noise");
  return sqrt_alpha * original + sqrt_one_minus * noise;
}

at::Tensor Scheduler::get_velocity(const at::Tensor& sample, const at::Tensor& noise,
                                   const at::Tensor& timesteps) const {
  auto [sqrt_alpha, sqrt_one_minus] = sqrt_alpha_terms(alphas_cumprod_, timesteps, sample, name() + "::get_velocity");
  return sqrt_alpha * noise - sqrt_one_minus * sample;
}

// ---- factory -----------------------------------------------------------------------------------

namespace {

const std::vector<std::string>& class_names() {
  static const std::vector<std::string> names = {"DDIMScheduler", "EulerDiscreteScheduler",
                                                 "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler"};
  return names;
}

}  // namespace

std::unique_ptr<Scheduler> make_scheduler(const io::JsonConfig& cfg) {
  const std::string cls = cfg.get_string("_class_name");
  if (cls == "DDIMScheduler") return std::make_unique<DDIMScheduler>(DDIMConfig::parse(cfg));
  if (cls == "EulerDiscreteScheduler") return std::make_unique<EulerDiscreteScheduler>(EulerDiscreteConfig::parse(cfg));
  if (cls == "EulerAncestralDiscreteScheduler")
    return std::make_unique<EulerAncestralDiscreteScheduler>(EulerAncestralConfig::parse(cfg));
  if (cls == "DPMSolverMultistepScheduler")
    return std::make_unique<DPMSolverMultistepScheduler>(DPMSolverMultistepConfig::parse(cfg));
  throw ConfigError(fmt::format("{}: key '_class_name' is \"{}\", a scheduler vdm does not implement; supported: "
                                "{} (or pick a sampler with --sampler: {})",
                                cfg.source(), cls, fmt::join(class_names(), ", "), fmt::join(sampler_names(), ", ")));
}

std::vector<std::string> sampler_names() {
  return {"ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "dpmpp_3m", "dpmpp_2m_sde"};
}

nlohmann::json sampler_preset(const std::string& sampler_name) {
  using nlohmann::json;
  if (sampler_name == "ddim") return json{{"_class_name", "DDIMScheduler"}};
  if (sampler_name == "euler") return json{{"_class_name", "EulerDiscreteScheduler"}, {"use_karras_sigmas", false}};
  if (sampler_name == "euler_a") return json{{"_class_name", "EulerAncestralDiscreteScheduler"}};
  auto dpm = [](const char* algorithm, int order, bool karras) {
    return json{{"_class_name", "DPMSolverMultistepScheduler"},
                {"algorithm_type", algorithm},
                {"solver_order", order},
                {"use_karras_sigmas", karras}};
  };
  if (sampler_name == "dpmpp_2m") return dpm("dpmsolver++", 2, false);
  if (sampler_name == "dpmpp_2m_karras") return dpm("dpmsolver++", 2, true);
  if (sampler_name == "dpmpp_3m") return dpm("dpmsolver++", 3, false);
  if (sampler_name == "dpmpp_2m_sde") return dpm("sde-dpmsolver++", 2, false);
  throw InputError(fmt::format("unknown sampler '{}'; valid samplers: {}", sampler_name,
                               fmt::join(sampler_names(), ", ")));
}

std::unique_ptr<Scheduler> make_scheduler(const io::JsonConfig& cfg, const std::string& sampler_name) {
  nlohmann::json preset = sampler_preset(sampler_name);
  nlohmann::json merged = cfg.json();
  for (auto it = preset.begin(); it != preset.end(); ++it) merged[it.key()] = it.value();
  return make_scheduler(io::JsonConfig(std::move(merged), cfg.source() + " (with sampler " + sampler_name + ")"));
}

StrengthSchedule timesteps_for_strength(Scheduler& scheduler, double strength) {
  if (!(strength >= 0.0 && strength <= 1.0))
    throw InputError(fmt::format("strength must be in [0, 1], got {}", strength));
  const int64_t n = scheduler.num_inference_steps();
  const int64_t init_timestep = std::min(static_cast<int64_t>(static_cast<double>(n) * strength), n);
  const int64_t t_start = std::max<int64_t>(n - init_timestep, 0);
  StrengthSchedule out;
  out.num_steps = n - t_start;
  if (out.num_steps < 1)
    throw InputError(fmt::format("strength {} with {} inference steps leaves no denoising step; raise the "
                                 "strength or the number of steps",
                                 strength, n));
  out.begin_index = t_start * scheduler.order();
  out.timesteps = scheduler.timesteps().slice(0, out.begin_index);
  scheduler.set_begin_index(out.begin_index);
  return out;
}

}  // namespace vdm::schedulers
