#include "schedulers/ddim_scheduler.h"

#include <fmt/format.h>

#include "core/error.h"

namespace vdm::schedulers {

DDIMConfig DDIMConfig::parse(const io::JsonConfig& cfg) {
  DDIMConfig c;
  c.schedule = parse_noise_schedule_config(cfg, TimestepSpacing::kLeading);
  c.clip_sample = cfg.get_bool("clip_sample", c.clip_sample);
  c.clip_sample_range = cfg.get_double("clip_sample_range", c.clip_sample_range);
  if (!(c.clip_sample_range > 0)) cfg.fail("clip_sample_range", "a number > 0");
  c.set_alpha_to_one = cfg.get_bool("set_alpha_to_one", c.set_alpha_to_one);
  c.thresholding = parse_thresholding_config(cfg);
  return c;
}

DDIMScheduler::DDIMScheduler(DDIMConfig config)
    : Scheduler(config.schedule), ddim_(std::move(config)) {
  final_alpha_cumprod_ = ddim_.set_alpha_to_one ? at::scalar_tensor(1.0, at::kFloat)
                                                : alphas_cumprod_[0].clone();
}

void DDIMScheduler::set_eta(double eta) {
  if (!(eta >= 0.0 && eta <= 1.0))
    throw InputError(fmt::format("DDIM eta must be in [0, 1], got {}", eta));
  eta_ = eta;
}

void DDIMScheduler::set_timesteps(int64_t n) {
  const int64_t T = config_.num_train_timesteps;
  if (n < 1 || n > T)
    throw InputError(fmt::format(
        "DDIMScheduler: num_inference_steps must be in [1, {}] (num_train_timesteps), got {}", T, n));
  std::vector<int64_t> ts(static_cast<size_t>(n));
  switch (config_.timestep_spacing) {
    case TimestepSpacing::kLinspace: {
      auto v = numeric::linspace(0, static_cast<double>(T - 1), n);
      for (int64_t i = 0; i < n; ++i)
        ts[static_cast<size_t>(i)] = static_cast<int64_t>(numeric::round_half_even(v[static_cast<size_t>(n - 1 - i)]));
      break;
    }
    case TimestepSpacing::kLeading: {
      const int64_t ratio = T / n;
      for (int64_t i = 0; i < n; ++i) ts[static_cast<size_t>(i)] = (n - 1 - i) * ratio + config_.steps_offset;
      break;
    }
    case TimestepSpacing::kTrailing: {
      const double ratio = static_cast<double>(T) / static_cast<double>(n);
      auto v = numeric::arange(static_cast<double>(T), 0, -ratio);
      ts.resize(v.size());
      for (size_t i = 0; i < v.size(); ++i) ts[i] = static_cast<int64_t>(numeric::round_half_even(v[i])) - 1;
      break;
    }
  }
  for (int64_t t : ts)
    if (t < 0 || t >= T)
      throw ConfigError(fmt::format(
          "DDIMScheduler: timestep {} from timestep_spacing '{}' and steps_offset {} is outside the "
          "training range [0, {}); lower steps_offset",
          t, timestep_spacing_name(config_.timestep_spacing), config_.steps_offset, T));
  timesteps_ = at::tensor(ts, at::kLong);
  begin_index_ = 0;
}

StepOutput DDIMScheduler::step(const at::Tensor& model_output, int64_t step_index, const at::Tensor& sample,
                               c10::optional<at::Generator> generator, c10::optional<at::Tensor> noise) {
  check_step_index(step_index, "DDIMScheduler::step");
  const int64_t n = num_inference_steps();
  const int64_t t = timesteps_[step_index].item<int64_t>();
  const int64_t prev_t = t - config_.num_train_timesteps / n;

  const at::Tensor alpha_prod_t = alphas_cumprod_[t];
  const at::Tensor alpha_prod_t_prev = prev_t >= 0 ? alphas_cumprod_[prev_t] : final_alpha_cumprod_;
  const at::Tensor beta_prod_t = 1 - alpha_prod_t;

  at::Tensor pred_original_sample, pred_epsilon;
  switch (config_.prediction_type) {
    case PredictionType::kEpsilon:
      pred_original_sample = (sample - at::pow(beta_prod_t, 0.5) * model_output) / at::pow(alpha_prod_t, 0.5);
      pred_epsilon = model_output;
      break;
    case PredictionType::kSample:
      pred_original_sample = model_output;
      pred_epsilon = (sample - at::pow(alpha_prod_t, 0.5) * pred_original_sample) / at::pow(beta_prod_t, 0.5);
      break;
    case PredictionType::kVPrediction:
      pred_original_sample = at::pow(alpha_prod_t, 0.5) * sample - at::pow(beta_prod_t, 0.5) * model_output;
      pred_epsilon = at::pow(alpha_prod_t, 0.5) * model_output + at::pow(beta_prod_t, 0.5) * sample;
      break;
  }

  if (ddim_.thresholding.enabled) {
    pred_original_sample =
        threshold_sample(pred_original_sample, ddim_.thresholding.ratio, ddim_.thresholding.max_value);
  } else if (ddim_.clip_sample) {
    pred_original_sample = pred_original_sample.clamp(-ddim_.clip_sample_range, ddim_.clip_sample_range);
  }

  // sigma_t(eta) of formula (16): eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)
  const at::Tensor beta_prod_t_prev = 1 - alpha_prod_t_prev;
  const at::Tensor variance = (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev);
  const at::Tensor std_dev_t = eta_ * at::pow(variance, 0.5);

  if (use_clipped_model_output_)
    pred_epsilon = (sample - at::pow(alpha_prod_t, 0.5) * pred_original_sample) / at::pow(beta_prod_t, 0.5);

  // formula (12): x_{t-1} = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma_t^2) eps [+ sigma_t z]
  const at::Tensor pred_sample_direction =
      at::pow(1 - alpha_prod_t_prev - at::pow(std_dev_t, 2), 0.5) * pred_epsilon;
  at::Tensor prev_sample = at::pow(alpha_prod_t_prev, 0.5) * pred_original_sample + pred_sample_direction;

  if (eta_ > 0) {
    at::Tensor z = variance_noise(model_output, model_output.scalar_type(), generator, noise,
                                  "DDIMScheduler::step with eta > 0");
    prev_sample = prev_sample + std_dev_t * z;
  }
  return {prev_sample, pred_original_sample};
}

}  // namespace vdm::schedulers
