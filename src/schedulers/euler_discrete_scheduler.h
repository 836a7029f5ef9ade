// Euler sampler of Karras et al. (2022, Algorithm 2 without churn), diffusers'
// EulerDiscreteScheduler: sigma-space ODE steps, model input scaled by 1/sqrt(sigma^2+1).
#pragma once
#include "schedulers/scheduler.h"

namespace vdm::schedulers {

// Sigma schedule and lookup shared by the Euler samplers.
class SigmaScheduler : public Scheduler {
 public:
  // diffusers: max sigma for linspace/trailing spacing, sqrt(max^2 + 1) for leading.
  double init_noise_sigma() const override;
  // sample / sqrt(sigma_i^2 + 1). sample: [B, C, ...] -> same.
  at::Tensor scale_model_input(const at::Tensor& sample, int64_t step_index) const override;
  // original + noise * sigma(t), with t looked up in timesteps().
  at::Tensor add_noise(const at::Tensor& original, const at::Tensor& noise,
                       const at::Tensor& timesteps) const override;

 protected:
  explicit SigmaScheduler(NoiseScheduleConfig config);
  // Spaced timesteps (float32 values, descending) for `n` steps, as the Euler samplers space them.
  std::vector<float> spaced_timesteps(int64_t n) const;
  // x0 predicted from the model output at sigma. sample: float32; model_output: any float.
  at::Tensor predict_original(const at::Tensor& model_output, const at::Tensor& sample,
                              const at::Tensor& sigma) const;
};

struct EulerDiscreteConfig {
  NoiseScheduleConfig schedule;       // timestep_spacing defaults to "linspace"
  bool use_karras_sigmas = false;     // Karras sigmas (rho = 7) between the schedule's extremes
  c10::optional<double> sigma_min;    // Karras range overrides (null: from the schedule)
  c10::optional<double> sigma_max;
  bool final_sigma_zero = true;       // final_sigmas_type: "zero" (true) or "sigma_min"

  static EulerDiscreteConfig parse(const io::JsonConfig& cfg);
};

class EulerDiscreteScheduler : public SigmaScheduler {
 public:
  explicit EulerDiscreteScheduler(EulerDiscreteConfig config);

  std::string name() const override { return "EulerDiscreteScheduler"; }
  void set_timesteps(int64_t num_inference_steps) override;
  StepOutput step(const at::Tensor& model_output, int64_t step_index, const at::Tensor& sample,
                  c10::optional<at::Generator> generator = c10::nullopt,
                  c10::optional<at::Tensor> noise = c10::nullopt) override;

  const EulerDiscreteConfig& config() const { return euler_; }

 private:
  EulerDiscreteConfig euler_;
};

}  // namespace vdm::schedulers
