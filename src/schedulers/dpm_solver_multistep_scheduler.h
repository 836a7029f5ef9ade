// DPM-Solver++ multistep (Lu et al. 2022, arXiv 2211.01095), diffusers'
// DPMSolverMultistepScheduler with algorithm_type dpmsolver++ or sde-dpmsolver++: orders 1-3,
// midpoint or heun second-order updates, Karras sigmas, lower-order final steps.
//
// It keeps the data predictions of previous steps, so steps must run in order
// begin_index, begin_index+1, ..., N-1 after set_timesteps.
#pragma once
#include <limits>

#include "schedulers/scheduler.h"

namespace vdm::schedulers {

struct DPMSolverMultistepConfig {
  NoiseScheduleConfig schedule;  // timestep_spacing defaults to "linspace"
  int solver_order = 2;          // 1, 2 or 3 (3 only for the ODE variant)
  bool sde = false;              // algorithm_type: "dpmsolver++" (false) or "sde-dpmsolver++" (true)
  bool heun = false;             // solver_type: "midpoint" (false) or "heun" (true)
  bool lower_order_final = true; // lower orders in the last steps when fewer than 15 steps
  bool euler_at_final = false;   // first-order final step
  bool use_karras_sigmas = false;
  bool final_sigma_zero = true;  // final_sigmas_type: "zero" (true) or "sigma_min"
  double lambda_min_clipped = -std::numeric_limits<double>::infinity();
  ThresholdingConfig thresholding;

  static DPMSolverMultistepConfig parse(const io::JsonConfig& cfg);
};

class DPMSolverMultistepScheduler : public Scheduler {
 public:
  explicit DPMSolverMultistepScheduler(DPMSolverMultistepConfig config);

  std::string name() const override { return "DPMSolverMultistepScheduler"; }
  void set_timesteps(int64_t num_inference_steps) override;
  // Error when called before set_timesteps or out of order. SDE variant: `noise` or `generator`.
  StepOutput step(const at::Tensor& model_output, int64_t step_index, const at::Tensor& sample,
                  c10::optional<at::Generator> generator = c10::nullopt,
                  c10::optional<at::Tensor> noise = c10::nullopt) override;
  // alpha_t x0 + sigma_t noise with sigma(t) looked up in timesteps().
  at::Tensor add_noise(const at::Tensor& original, const at::Tensor& noise,
                       const at::Tensor& timesteps) const override;
  // Only before the first step of a run.
  void set_begin_index(int64_t begin_index) override;

  const DPMSolverMultistepConfig& config() const { return dpm_; }

 private:
  // Data prediction x0 from the model output at step i. sample, model_output: [B, C, ...].
  at::Tensor convert_model_output(const at::Tensor& model_output, const at::Tensor& sample, int64_t i) const;
  at::Tensor first_order_update(const at::Tensor& x0, const at::Tensor& sample, int64_t i,
                                const at::Tensor& noise) const;
  at::Tensor second_order_update(const at::Tensor& sample, int64_t i, const at::Tensor& noise) const;
  at::Tensor third_order_update(const at::Tensor& sample, int64_t i) const;

  DPMSolverMultistepConfig dpm_;
  std::vector<at::Tensor> model_outputs_;  // last solver_order data predictions, newest last
  int lower_order_nums_ = 0;
  int64_t next_step_ = -1;                 // index the next step must have; -1 before set_timesteps
};

}  // namespace vdm::schedulers
