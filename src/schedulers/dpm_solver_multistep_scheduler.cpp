#include "schedulers/dpm_solver_multistep_scheduler.h"

#include <fmt/format.h>

#include "core/error.h"

namespace vdm::schedulers {

DPMSolverMultistepConfig DPMSolverMultistepConfig::parse(const io::JsonConfig& cfg) {
  DPMSolverMultistepConfig c;
  c.schedule = parse_noise_schedule_config(cfg, TimestepSpacing::kLinspace);
  c.solver_order = static_cast<int>(cfg.get_int("solver_order", c.solver_order));
  if (c.solver_order < 1 || c.solver_order > 3) cfg.fail("solver_order", "1, 2 or 3");

  std::string algorithm = cfg.get_string("algorithm_type", "dpmsolver++");
  if (algorithm == "deis") algorithm = "dpmsolver++";  // diffusers maps a DEIS config this way
  if (algorithm == "dpmsolver++") c.sde = false;
  else if (algorithm == "sde-dpmsolver++") c.sde = true;
  else cfg.fail("algorithm_type", "\"dpmsolver++\" or \"sde-dpmsolver++\" (the supported variants)");
  if (c.sde && c.solver_order == 3)
    cfg.fail("solver_order", "1 or 2 with algorithm_type \"sde-dpmsolver++\"");

  std::string solver = cfg.get_string("solver_type", "midpoint");
  if (solver == "logrho" || solver == "bh1" || solver == "bh2") solver = "midpoint";  // as diffusers
  if (solver == "midpoint") c.heun = false;
  else if (solver == "heun") c.heun = true;
  else cfg.fail("solver_type", "\"midpoint\" or \"heun\"");

  c.lower_order_final = cfg.get_bool("lower_order_final", c.lower_order_final);
  c.euler_at_final = cfg.get_bool("euler_at_final", c.euler_at_final);
  c.use_karras_sigmas = cfg.get_bool("use_karras_sigmas", c.use_karras_sigmas);
  for (const char* key : {"use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas"})
    if (cfg.get_bool(key, false)) cfg.fail(key, "false (not supported; use use_karras_sigmas)");
  if (cfg.has("variance_type")) cfg.fail("variance_type", "null (learned variance is not supported)");

  const std::string final_type = cfg.get_string("final_sigmas_type", "zero");
  if (final_type == "zero") c.final_sigma_zero = true;
  else if (final_type == "sigma_min") c.final_sigma_zero = false;
  else cfg.fail("final_sigmas_type", "\"zero\" or \"sigma_min\"");

  c.lambda_min_clipped = cfg.get_double("lambda_min_clipped", c.lambda_min_clipped);
  c.thresholding = parse_thresholding_config(cfg);
  return c;
}

DPMSolverMultistepScheduler::DPMSolverMultistepScheduler(DPMSolverMultistepConfig config)
    : Scheduler(config.schedule), dpm_(std::move(config)) {
  keep_terminal_sigma_finite();
}

void DPMSolverMultistepScheduler::set_timesteps(int64_t n) {
  const int64_t T = config_.num_train_timesteps;
  if (n < 1 || n > T)
    throw InputError(fmt::format(
        "DPMSolverMultistepScheduler: num_inference_steps must be in [1, {}], got {}", T, n));

  // Clip the smallest lambda(t) (critical for the cosine schedule): drop the timesteps whose
  // log-SNR is below lambda_min_clipped.
  const at::Tensor alpha_t = at::sqrt(alphas_cumprod_);
  const at::Tensor sigma_t = at::sqrt(1 - alphas_cumprod_);
  const at::Tensor lambda_t = (at::log(alpha_t) - at::log(sigma_t)).flip(0).contiguous();
  int64_t clipped_idx = 0;
  {
    const float* l = lambda_t.data_ptr<float>();
    while (clipped_idx < T && static_cast<double>(l[clipped_idx]) < dpm_.lambda_min_clipped) ++clipped_idx;
  }
  const int64_t last_timestep = T - clipped_idx;
  if (last_timestep < 1)
    throw ConfigError(fmt::format("DPMSolverMultistepScheduler: lambda_min_clipped {} leaves no timestep",
                                  dpm_.lambda_min_clipped));

  std::vector<int64_t> ts;
  switch (config_.timestep_spacing) {
    case TimestepSpacing::kLinspace: {
      auto v = numeric::linspace(0, static_cast<double>(last_timestep - 1), n + 1);
      for (int64_t i = n; i >= 1; --i)
        ts.push_back(static_cast<int64_t>(numeric::round_half_even(v[static_cast<size_t>(i)])));
      break;
    }
    case TimestepSpacing::kLeading: {
      const int64_t ratio = last_timestep / (n + 1);
      for (int64_t i = n; i >= 1; --i) ts.push_back(i * ratio + config_.steps_offset);
      break;
    }
    case TimestepSpacing::kTrailing: {
      const double ratio = static_cast<double>(T) / static_cast<double>(n);
      for (double v : numeric::arange(static_cast<double>(last_timestep), 0, -ratio))
        ts.push_back(static_cast<int64_t>(numeric::round_half_even(v)) - 1);
      break;
    }
  }

  const std::vector<float> train = training_sigmas(alphas_cumprod_);
  std::vector<double> sig;
  if (dpm_.use_karras_sigmas) {
    const std::vector<float> log_sigmas = log_of(train);
    sig = numeric::karras_sigmas(train.front(), train.back(), n);
    ts.clear();
    for (double s : sig) ts.push_back(static_cast<int64_t>(numeric::round_half_even(numeric::sigma_to_t(s, log_sigmas))));
  } else {
    const std::vector<double> train_d(train.begin(), train.end());
    for (int64_t t : ts) sig.push_back(numeric::interp_index(static_cast<double>(t), train_d));
  }
  for (int64_t t : ts)
    if (t < 0 || t >= T)
      throw ConfigError(fmt::format(
          "DPMSolverMultistepScheduler: timestep {} from timestep_spacing '{}' and steps_offset {} is "
          "outside the training range [0, {}); lower steps_offset",
          t, timestep_spacing_name(config_.timestep_spacing), config_.steps_offset, T));

  std::vector<float> sig_f(sig.begin(), sig.end());
  if (dpm_.final_sigma_zero) sig_f.push_back(0.0f);
  else sig_f.push_back(at::pow((1 - alphas_cumprod_[0]) / alphas_cumprod_[0], 0.5).item<float>());

  sigmas_ = at::tensor(sig_f, at::kFloat);
  timesteps_ = at::tensor(ts, at::kLong);
  model_outputs_.assign(static_cast<size_t>(dpm_.solver_order), at::Tensor());
  lower_order_nums_ = 0;
  begin_index_ = 0;
  next_step_ = 0;
}

void DPMSolverMultistepScheduler::set_begin_index(int64_t begin_index) {
  if (next_step_ < 0)
    throw Error("DPMSolverMultistepScheduler::set_begin_index called before set_timesteps; call set_timesteps first");
  if (lower_order_nums_ > 0)
    throw Error(fmt::format(
        "DPMSolverMultistepScheduler::set_begin_index({}) called after step {} ran; set the begin index "
        "before the first step (call set_timesteps to start a new run)",
        begin_index, next_step_ - 1));
  Scheduler::set_begin_index(begin_index);
  next_step_ = begin_index;
}

at::Tensor DPMSolverMultistepScheduler::convert_model_output(const at::Tensor& model_output,
                                                             const at::Tensor& sample, int64_t i) const {
  at::Tensor x0;
  switch (config_.prediction_type) {
    case PredictionType::kEpsilon: {
      auto [alpha_t, sigma_t] = sigma_to_alpha_sigma_t(sigmas_[i]);
      x0 = (sample - sigma_t * model_output) / alpha_t;
      break;
    }
    case PredictionType::kSample:
      x0 = model_output;
      break;
    case PredictionType::kVPrediction: {
      auto [alpha_t, sigma_t] = sigma_to_alpha_sigma_t(sigmas_[i]);
      x0 = alpha_t * sample - sigma_t * model_output;
      break;
    }
  }
  if (dpm_.thresholding.enabled)
    x0 = threshold_sample(x0, dpm_.thresholding.ratio, dpm_.thresholding.max_value);
  return x0;
}

namespace {
struct AlphaSigmaLambda {
  at::Tensor alpha, sigma, lambda;
};
AlphaSigmaLambda at_sigma(const at::Tensor& sigma) {
  auto [alpha_t, sigma_t] = sigma_to_alpha_sigma_t(sigma);
  at::Tensor lambda = at::log(alpha_t) - at::log(sigma_t);
  return {alpha_t, sigma_t, lambda};
}
}  // namespace

at::Tensor DPMSolverMultistepScheduler::first_order_update(const at::Tensor& x0, const at::Tensor& sample,
                                                           int64_t i, const at::Tensor& noise) const {
  const AlphaSigmaLambda t = at_sigma(sigmas_[i + 1]);
  const AlphaSigmaLambda s = at_sigma(sigmas_[i]);
  const at::Tensor h = t.lambda - s.lambda;
  if (!dpm_.sde) return (t.sigma / s.sigma) * sample - (t.alpha * (at::exp(-h) - 1.0)) * x0;
  return (t.sigma / s.sigma * at::exp(-h)) * sample + (t.alpha * (1 - at::exp(-2.0 * h))) * x0 +
         t.sigma * at::sqrt(1.0 - at::exp(-2 * h)) * noise;
}

at::Tensor DPMSolverMultistepScheduler::second_order_update(const at::Tensor& sample, int64_t i,
                                                            const at::Tensor& noise) const {
  const AlphaSigmaLambda t = at_sigma(sigmas_[i + 1]);
  const AlphaSigmaLambda s0 = at_sigma(sigmas_[i]);
  const AlphaSigmaLambda s1 = at_sigma(sigmas_[i - 1]);
  const at::Tensor& m0 = model_outputs_[model_outputs_.size() - 1];
  const at::Tensor& m1 = model_outputs_[model_outputs_.size() - 2];
  const at::Tensor h = t.lambda - s0.lambda;
  const at::Tensor h_0 = s0.lambda - s1.lambda;
  const at::Tensor r0 = h_0 / h;
  const at::Tensor& D0 = m0;
  const at::Tensor D1 = (1.0 / r0) * (m0 - m1);
  if (!dpm_.sde) {
    if (!dpm_.heun)
      return (t.sigma / s0.sigma) * sample - (t.alpha * (at::exp(-h) - 1.0)) * D0 -
             0.5 * (t.alpha * (at::exp(-h) - 1.0)) * D1;
    return (t.sigma / s0.sigma) * sample - (t.alpha * (at::exp(-h) - 1.0)) * D0 +
           (t.alpha * ((at::exp(-h) - 1.0) / h + 1.0)) * D1;
  }
  if (!dpm_.heun)
    return (t.sigma / s0.sigma * at::exp(-h)) * sample + (t.alpha * (1 - at::exp(-2.0 * h))) * D0 +
           0.5 * (t.alpha * (1 - at::exp(-2.0 * h))) * D1 + t.sigma * at::sqrt(1.0 - at::exp(-2 * h)) * noise;
  return (t.sigma / s0.sigma * at::exp(-h)) * sample + (t.alpha * (1 - at::exp(-2.0 * h))) * D0 +
         (t.alpha * ((1.0 - at::exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * D1 +
         t.sigma * at::sqrt(1.0 - at::exp(-2 * h)) * noise;
}

at::Tensor DPMSolverMultistepScheduler::third_order_update(const at::Tensor& sample, int64_t i) const {
  const AlphaSigmaLambda t = at_sigma(sigmas_[i + 1]);
  const AlphaSigmaLambda s0 = at_sigma(sigmas_[i]);
  const AlphaSigmaLambda s1 = at_sigma(sigmas_[i - 1]);
  const AlphaSigmaLambda s2 = at_sigma(sigmas_[i - 2]);
  const size_t k = model_outputs_.size();
  const at::Tensor& m0 = model_outputs_[k - 1];
  const at::Tensor& m1 = model_outputs_[k - 2];
  const at::Tensor& m2 = model_outputs_[k - 3];
  const at::Tensor h = t.lambda - s0.lambda;
  const at::Tensor h_0 = s0.lambda - s1.lambda;
  const at::Tensor h_1 = s1.lambda - s2.lambda;
  const at::Tensor r0 = h_0 / h;
  const at::Tensor r1 = h_1 / h;
  const at::Tensor& D0 = m0;
  const at::Tensor D1_0 = (1.0 / r0) * (m0 - m1);
  const at::Tensor D1_1 = (1.0 / r1) * (m1 - m2);
  const at::Tensor D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1);
  const at::Tensor D2 = (1.0 / (r0 + r1)) * (D1_0 - D1_1);
  return (t.sigma / s0.sigma) * sample - (t.alpha * (at::exp(-h) - 1.0)) * D0 +
         (t.alpha * ((at::exp(-h) - 1.0) / h + 1.0)) * D1 -
         (t.alpha * ((at::exp(-h) - 1.0 + h) / at::pow(h, 2) - 0.5)) * D2;
}

StepOutput DPMSolverMultistepScheduler::step(const at::Tensor& model_output, int64_t step_index,
                                             const at::Tensor& sample, c10::optional<at::Generator> generator,
                                             c10::optional<at::Tensor> noise) {
  if (next_step_ < 0)
    throw Error(fmt::format(
        "DPMSolverMultistepScheduler: step {} called before set_timesteps; call set_timesteps first",
        step_index));
  check_step_index(step_index, "DPMSolverMultistepScheduler::step");
  const int64_t n = num_inference_steps();
  if (step_index != next_step_) {
    if (next_step_ == begin_index_)
      throw Error(fmt::format(
          "DPMSolverMultistepScheduler: step {} called first, but the run starts at step {}; steps must "
          "run in order {}..{}; call set_timesteps first (and set_begin_index for a partial run)",
          step_index, begin_index_, begin_index_, n - 1));
    throw Error(fmt::format(
        "DPMSolverMultistepScheduler: step {} called after step {}; steps must run in order {}..{}; "
        "call set_timesteps first to start a new run",
        step_index, next_step_ - 1, begin_index_, n - 1));
  }

  // Lower orders at the end stabilise runs of few steps.
  const bool lower_order_final =
      step_index == n - 1 &&
      (dpm_.euler_at_final || (dpm_.lower_order_final && n < 15) || dpm_.final_sigma_zero);
  const bool lower_order_second = step_index == n - 2 && dpm_.lower_order_final && n < 15;

  at::Tensor x0 = convert_model_output(model_output, sample, step_index);
  for (size_t k = 0; k + 1 < model_outputs_.size(); ++k) model_outputs_[k] = model_outputs_[k + 1];
  model_outputs_.back() = x0;

  const at::Tensor x = sample.to(at::kFloat);  // upcast as the reference does
  at::Tensor z;
  if (dpm_.sde)
    z = variance_noise(model_output, at::kFloat, generator, noise, "DPMSolverMultistepScheduler::step (SDE)")
            .to(at::kFloat);

  at::Tensor prev_sample;
  if (dpm_.solver_order == 1 || lower_order_nums_ < 1 || lower_order_final)
    prev_sample = first_order_update(x0, x, step_index, z);
  else if (dpm_.solver_order == 2 || lower_order_nums_ < 2 || lower_order_second)
    prev_sample = second_order_update(x, step_index, z);
  else
    prev_sample = third_order_update(x, step_index);

  if (lower_order_nums_ < dpm_.solver_order) ++lower_order_nums_;
  next_step_ = step_index + 1;
  return {prev_sample.to(x0.scalar_type()), x0};
}

at::Tensor DPMSolverMultistepScheduler::add_noise(const at::Tensor& original, const at::Tensor& noise,
                                                  const at::Tensor& timesteps) const {
  if (!has_timesteps())
    throw Error("DPMSolverMultistepScheduler::add_noise called before set_timesteps; call set_timesteps first");
  at::Tensor ts = timesteps.reshape({-1}).to(at::kDouble).cpu();
  std::vector<int64_t> idx;
  for (int64_t k = 0; k < ts.numel(); ++k) {
    int64_t i = index_for_timestep(ts[k].item<double>());
    idx.push_back(i < 0 ? num_inference_steps() - 1 : i);  // absent: the last one, as diffusers
  }
  at::Tensor sigma = sigmas_.to(original.scalar_type()).index({at::tensor(idx, at::kLong)}).flatten();
  while (sigma.dim() < original.dim()) sigma = sigma.unsqueeze(-1);
  sigma = sigma.to(original.device());
  auto [alpha_t, sigma_t] = sigma_to_alpha_sigma_t(sigma);
  return alpha_t * original + sigma_t * noise;
}

}  // namespace vdm::schedulers
