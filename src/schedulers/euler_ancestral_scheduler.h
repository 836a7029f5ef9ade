// Euler ancestral sampler (k-diffusion's sample_euler_ancestral), diffusers'
// EulerAncestralDiscreteScheduler: an Euler step down to sigma_down plus fresh noise of sigma_up.
#pragma once
#include "schedulers/euler_discrete_scheduler.h"

namespace vdm::schedulers {

struct EulerAncestralConfig {
  NoiseScheduleConfig schedule;  // timestep_spacing defaults to "linspace"; prediction "sample" unsupported

  static EulerAncestralConfig parse(const io::JsonConfig& cfg);
};

class EulerAncestralDiscreteScheduler : public SigmaScheduler {
 public:
  explicit EulerAncestralDiscreteScheduler(EulerAncestralConfig config);

  std::string name() const override { return "EulerAncestralDiscreteScheduler"; }
  void set_timesteps(int64_t num_inference_steps) override;
  // Needs `noise` or `generator` for the ancestral noise of every step.
  StepOutput step(const at::Tensor& model_output, int64_t step_index, const at::Tensor& sample,
                  c10::optional<at::Generator> generator = c10::nullopt,
                  c10::optional<at::Tensor> noise = c10::nullopt) override;
};

}  // namespace vdm::schedulers
