#include "schedulers/euler_ancestral_scheduler.h"

#include <fmt/format.h>

#include "core/error.h"

namespace vdm::schedulers {

EulerAncestralConfig EulerAncestralConfig::parse(const io::JsonConfig& cfg) {
  EulerAncestralConfig c;
  c.schedule = parse_noise_schedule_config(cfg, TimestepSpacing::kLinspace);
  if (c.schedule.prediction_type == PredictionType::kSample)
    cfg.fail("prediction_type", "\"epsilon\" or \"v_prediction\" (EulerAncestralDiscreteScheduler)");
  return c;
}

EulerAncestralDiscreteScheduler::EulerAncestralDiscreteScheduler(EulerAncestralConfig config)
    : SigmaScheduler(std::move(config.schedule)) {}

void EulerAncestralDiscreteScheduler::set_timesteps(int64_t n) {
  if (n < 1)
    throw InputError(fmt::format("EulerAncestralDiscreteScheduler: num_inference_steps must be >= 1, got {}", n));
  const std::vector<float> ts = spaced_timesteps(n);
  const std::vector<float> train = training_sigmas(alphas_cumprod_);
  const std::vector<double> train_d(train.begin(), train.end());
  std::vector<float> sig;
  for (float t : ts) sig.push_back(static_cast<float>(numeric::interp_index(static_cast<double>(t), train_d)));
  sig.push_back(0.0f);
  sigmas_ = at::tensor(sig, at::kFloat);
  timesteps_ = at::tensor(ts, at::kFloat);
  begin_index_ = 0;
}

StepOutput EulerAncestralDiscreteScheduler::step(const at::Tensor& model_output, int64_t step_index,
                                                 const at::Tensor& sample,
                                                 c10::optional<at::Generator> generator,
                                                 c10::optional<at::Tensor> noise) {
  check_step_index(step_index, "EulerAncestralDiscreteScheduler::step");
  const at::Tensor x = sample.to(at::kFloat);
  const at::Tensor sigma = sigmas_[step_index];
  at::Tensor pred_original_sample = predict_original(model_output, x, sigma);

  // Split the move to sigma_to into a deterministic part (sigma_down) and fresh noise (sigma_up).
  const at::Tensor& sigma_from = sigma;
  const at::Tensor sigma_to = sigmas_[step_index + 1];
  const at::Tensor sigma_up = at::pow(
      at::pow(sigma_to, 2) * (at::pow(sigma_from, 2) - at::pow(sigma_to, 2)) / at::pow(sigma_from, 2), 0.5);
  const at::Tensor sigma_down = at::pow(at::pow(sigma_to, 2) - at::pow(sigma_up, 2), 0.5);

  const at::Tensor derivative = (x - pred_original_sample) / sigma;
  const at::Tensor dt = sigma_down - sigma;
  at::Tensor prev_sample = x + derivative * dt;
  at::Tensor z = variance_noise(model_output, model_output.scalar_type(), generator, noise,
                                "EulerAncestralDiscreteScheduler::step");
  prev_sample = prev_sample + z * sigma_up;
  return {prev_sample.to(model_output.scalar_type()), pred_original_sample};
}

}  // namespace vdm::schedulers
