// DDIM (Song et al. 2020, arXiv 2010.02502), diffusers' DDIMScheduler: deterministic for eta = 0,
// adds variance noise weighted by eta otherwise.
#pragma once
#include "schedulers/scheduler.h"

namespace vdm::schedulers {

struct DDIMConfig {
  NoiseScheduleConfig schedule;     // timestep_spacing defaults to "leading" for DDIM
  bool clip_sample = true;          // clamp predicted x0 to [-clip_sample_range, clip_sample_range]
  double clip_sample_range = 1.0;
  bool set_alpha_to_one = true;     // the step past t=0 uses alpha_cumprod 1 (else alphas_cumprod[0])
  ThresholdingConfig thresholding;  // dynamic thresholding of x0 (replaces clip_sample)

  static DDIMConfig parse(const io::JsonConfig& cfg);
};

class DDIMScheduler : public Scheduler {
 public:
  explicit DDIMScheduler(DDIMConfig config);

  std::string name() const override { return "DDIMScheduler"; }
  void set_timesteps(int64_t num_inference_steps) override;
  StepOutput step(const at::Tensor& model_output, int64_t step_index, const at::Tensor& sample,
                  c10::optional<at::Generator> generator = c10::nullopt,
                  c10::optional<at::Tensor> noise = c10::nullopt) override;

  // eta in [0, 1]: 0 is DDIM, 1 is DDPM-like ancestral sampling.
  void set_eta(double eta) override;
  bool uses_eta() const override { return true; }
  double eta() const { return eta_; }
  // Re-derive the noise prediction from the clipped x0 (diffusers' use_clipped_model_output).
  void set_use_clipped_model_output(bool on) { use_clipped_model_output_ = on; }

  const DDIMConfig& config() const { return ddim_; }

 private:
  DDIMConfig ddim_;
  at::Tensor final_alpha_cumprod_;  // 0-dim float32
  double eta_ = 0.0;
  bool use_clipped_model_output_ = false;
};

}  // namespace vdm::schedulers
