#include "schedulers/euler_discrete_scheduler.h"

#include <fmt/format.h>

#include "core/error.h"

namespace vdm::schedulers {

// ---- SigmaScheduler --------------------------------------------------------------------------

SigmaScheduler::SigmaScheduler(NoiseScheduleConfig config) : Scheduler(std::move(config)) {
  keep_terminal_sigma_finite();
  // Before set_timesteps: the whole training range, highest sigma first, then 0.
  at::Tensor train = at::pow((1 - alphas_cumprod_) / alphas_cumprod_, 0.5).flip(0);
  sigmas_ = at::cat({train, at::zeros({1}, at::kFloat)});
}

double SigmaScheduler::init_noise_sigma() const {
  at::Tensor max_sigma = sigmas_.max();
  if (config_.timestep_spacing == TimestepSpacing::kLeading)
    return at::pow(at::pow(max_sigma, 2) + 1, 0.5).item<double>();
  return max_sigma.item<double>();
}

at::Tensor SigmaScheduler::scale_model_input(const at::Tensor& sample, int64_t step_index) const {
  check_step_index(step_index, (name() + "::scale_model_input").c_str());
  const at::Tensor sigma = sigmas_[step_index];
  return sample / at::pow(at::pow(sigma, 2) + 1, 0.5);
}

at::Tensor SigmaScheduler::add_noise(const at::Tensor& original, const at::Tensor& noise,
                                     const at::Tensor& timesteps) const {
  if (!has_timesteps())
    throw Error(name() + "::add_noise called before set_timesteps; call set_timesteps first");
  at::Tensor ts = timesteps.reshape({-1}).to(at::kDouble).cpu();
  std::vector<int64_t> idx;
  for (int64_t k = 0; k < ts.numel(); ++k) {
    const double t = ts[k].item<double>();
    const int64_t i = index_for_timestep(t);
    if (i < 0)
      throw InputError(fmt::format("{}::add_noise: timestep {} is not in the inference schedule; "
                                   "use one of timesteps()",
                                   name(), t));
    idx.push_back(i);
  }
  at::Tensor sigma = sigmas_.to(original.scalar_type()).index({at::tensor(idx, at::kLong)}).flatten();
  while (sigma.dim() < original.dim()) sigma = sigma.unsqueeze(-1);
  return original + noise * sigma.to(original.device());
}

std::vector<float> SigmaScheduler::spaced_timesteps(int64_t n) const {
  const int64_t T = config_.num_train_timesteps;
  std::vector<float> ts;
  switch (config_.timestep_spacing) {
    case TimestepSpacing::kLinspace: {
      auto v = numeric::linspace(0, static_cast<double>(T - 1), n);
      for (auto it = v.rbegin(); it != v.rend(); ++it) ts.push_back(static_cast<float>(*it));
      break;
    }
    case TimestepSpacing::kLeading: {
      const int64_t ratio = T / n;
      for (int64_t i = n - 1; i >= 0; --i)
        ts.push_back(static_cast<float>(i * ratio) + static_cast<float>(config_.steps_offset));
      break;
    }
    case TimestepSpacing::kTrailing: {
      const double ratio = static_cast<double>(T) / static_cast<double>(n);
      for (double v : numeric::arange(static_cast<double>(T), 0, -ratio))
        ts.push_back(static_cast<float>(numeric::round_half_even(v)) - 1.0f);
      break;
    }
  }
  return ts;
}

at::Tensor SigmaScheduler::predict_original(const at::Tensor& model_output, const at::Tensor& sample,
                                            const at::Tensor& sigma) const {
  switch (config_.prediction_type) {
    case PredictionType::kEpsilon:
      return sample - sigma * model_output;
    case PredictionType::kVPrediction:
      // c_out * model_output + c_skip * sample
      return model_output * (-sigma / at::pow(at::pow(sigma, 2) + 1, 0.5)) + (sample / (at::pow(sigma, 2) + 1));
    case PredictionType::kSample:
      return model_output;
  }
  throw Error("unreachable prediction type");
}

// ---- EulerDiscreteScheduler ------------------------------------------------------------------

EulerDiscreteConfig EulerDiscreteConfig::parse(const io::JsonConfig& cfg) {
  EulerDiscreteConfig c;
  c.schedule = parse_noise_schedule_config(cfg, TimestepSpacing::kLinspace);
  c.use_karras_sigmas = cfg.get_bool("use_karras_sigmas", c.use_karras_sigmas);
  if (cfg.get_bool("use_exponential_sigmas", false))
    cfg.fail("use_exponential_sigmas", "false (exponential sigmas are not supported; use use_karras_sigmas)");
  if (cfg.get_bool("use_beta_sigmas", false))
    cfg.fail("use_beta_sigmas", "false (beta sigmas are not supported; use use_karras_sigmas)");
  if (cfg.has("sigma_min")) c.sigma_min = cfg.get_double("sigma_min");
  if (cfg.has("sigma_max")) c.sigma_max = cfg.get_double("sigma_max");
  const std::string interpolation = cfg.get_string("interpolation_type", "linear");
  if (interpolation != "linear") cfg.fail("interpolation_type", "\"linear\" (the only one supported)");
  const std::string timestep_type = cfg.get_string("timestep_type", "discrete");
  if (timestep_type != "discrete") cfg.fail("timestep_type", "\"discrete\" (the only one supported)");
  const std::string final_type = cfg.get_string("final_sigmas_type", "zero");
  if (final_type == "zero") c.final_sigma_zero = true;
  else if (final_type == "sigma_min") c.final_sigma_zero = false;
  else cfg.fail("final_sigmas_type", "\"zero\" or \"sigma_min\"");
  return c;
}

EulerDiscreteScheduler::EulerDiscreteScheduler(EulerDiscreteConfig config)
    : SigmaScheduler(config.schedule), euler_(std::move(config)) {}

void EulerDiscreteScheduler::set_timesteps(int64_t n) {
  if (n < 1) throw InputError(fmt::format("EulerDiscreteScheduler: num_inference_steps must be >= 1, got {}", n));
  std::vector<float> ts = spaced_timesteps(n);
  const std::vector<float> train = training_sigmas(alphas_cumprod_);
  const std::vector<double> train_d(train.begin(), train.end());
  std::vector<double> sig(ts.size());
  for (size_t i = 0; i < ts.size(); ++i) sig[i] = numeric::interp_index(static_cast<double>(ts[i]), train_d);

  if (euler_.use_karras_sigmas) {
    const std::vector<float> log_sigmas = log_of(train);
    const double smin = euler_.sigma_min ? *euler_.sigma_min : sig.back();
    const double smax = euler_.sigma_max ? *euler_.sigma_max : sig.front();
    sig = numeric::karras_sigmas(smin, smax, n);
    ts.resize(sig.size());
    for (size_t i = 0; i < sig.size(); ++i)
      ts[i] = static_cast<float>(numeric::sigma_to_t(sig[i], log_sigmas));
  }

  std::vector<float> sig_f(sig.begin(), sig.end());
  if (euler_.final_sigma_zero) {
    sig_f.push_back(0.0f);
  } else {
    sig_f.push_back(at::pow((1 - alphas_cumprod_[0]) / alphas_cumprod_[0], 0.5).item<float>());
  }
  sigmas_ = at::tensor(sig_f, at::kFloat);
  timesteps_ = at::tensor(ts, at::kFloat);
  begin_index_ = 0;
}

StepOutput EulerDiscreteScheduler::step(const at::Tensor& model_output, int64_t step_index,
                                        const at::Tensor& sample, c10::optional<at::Generator>,
                                        c10::optional<at::Tensor>) {
  check_step_index(step_index, "EulerDiscreteScheduler::step");
  const at::Tensor x = sample.to(at::kFloat);  // upcast as the reference does
  const at::Tensor sigma = sigmas_[step_index];
  const at::Tensor sigma_hat = sigma * 1.0;  // no churn (gamma = 0)
  at::Tensor pred_original_sample = predict_original(model_output, x, sigma_hat);
  // ODE derivative d = (x - x0) / sigma, one Euler step to the next sigma
  const at::Tensor derivative = (x - pred_original_sample) / sigma_hat;
  const at::Tensor dt = sigmas_[step_index + 1] - sigma_hat;
  at::Tensor prev_sample = (x + derivative * dt).to(model_output.scalar_type());
  return {prev_sample, pred_original_sample};
}

}  // namespace vdm::schedulers
