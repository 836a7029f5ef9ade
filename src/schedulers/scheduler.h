// The sampler interface: the diffusers scheduler contract (set_timesteps, scale_model_input,
// step, add_noise) with the step index passed explicitly instead of a hidden counter.
//
//   auto sched = make_scheduler(io::JsonConfig::load(dir + "/scheduler_config.json"));
//   sched->set_timesteps(25);
//   latents = latents * sched->init_noise_sigma();
//   for (int64_t i = 0; i < sched->num_inference_steps(); ++i) {
//     at::Tensor in = sched->scale_model_input(latents, i);
//     at::Tensor eps = unet(in, sched->timesteps()[i], text);
//     latents = sched->step(eps, i, latents, generator).prev_sample;
//   }
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "io/json_config.h"
#include "schedulers/noise_schedule.h"

namespace vdm::schedulers {

struct StepOutput {
  at::Tensor prev_sample;           // x_{t-1}: same shape as the sample, model_output's dtype
  at::Tensor pred_original_sample;  // the x0 the step used (DPM-Solver++: its data prediction)
};

class Scheduler {
 public:
  virtual ~Scheduler() = default;

  // Class name as in scheduler_config.json's "_class_name" ("DDIMScheduler", ...).
  virtual std::string name() const = 0;
  // Builds the inference schedule; resets the begin index to 0 and any multistep history.
  virtual void set_timesteps(int64_t num_inference_steps) = 0;

  // Inference timesteps [N]: int64 for DDIM and DPM-Solver, float32 for Euler (as diffusers).
  // Error when set_timesteps has not been called.
  const at::Tensor& timesteps() const;
  // Sigma schedule [N+1] float32 (last entry the final sigma) for sigma-based schedulers;
  // undefined tensor for DDIM, which has none.
  const at::Tensor& sigmas() const { return sigmas_; }
  int64_t num_inference_steps() const;
  bool has_timesteps() const { return timesteps_.defined(); }

  // Standard deviation of the initial noise: latents = randn * init_noise_sigma().
  virtual double init_noise_sigma() const { return 1.0; }
  // The model input for step `step_index` (Euler divides by sqrt(sigma^2+1); others pass through).
  // sample: [B, C, ...] -> same.
  virtual at::Tensor scale_model_input(const at::Tensor& sample, int64_t step_index) const;
  // One denoising step from timesteps()[step_index]. `noise` is the variance noise of this step
  // (DDIM with eta > 0, Euler ancestral, SDE DPM-Solver++); when it is needed and absent it is
  // drawn from `generator`, which is then required. A supplied `noise` wins over `generator`.
  // model_output, sample: [B, C, ...] of the same shape.
  virtual StepOutput step(const at::Tensor& model_output, int64_t step_index, const at::Tensor& sample,
                          c10::optional<at::Generator> generator = c10::nullopt,
                          c10::optional<at::Tensor> noise = c10::nullopt) = 0;

  // Forward diffusion q(x_t | x_0) at `timesteps` ([B] or scalar): sqrt(a_t) x0 + sqrt(1-a_t) noise
  // with the training alphas_cumprod (sigma-based schedulers: their schedule, as diffusers).
  // original, noise: [B, ...] -> [B, ...].
  virtual at::Tensor add_noise(const at::Tensor& original, const at::Tensor& noise,
                               const at::Tensor& timesteps) const;
  // v-prediction target sqrt(a_t) noise - sqrt(1-a_t) sample at integer training timesteps.
  // sample, noise: [B, ...] -> [B, ...].
  virtual at::Tensor get_velocity(const at::Tensor& sample, const at::Tensor& noise,
                                  const at::Tensor& timesteps) const;

  // Model evaluations per timestep entry (1 for every scheduler here, as diffusers).
  virtual int order() const { return 1; }

  // img2img: the first step index that will run (timesteps_for_strength sets it). Multistep
  // solvers then expect their first step at this index.
  virtual void set_begin_index(int64_t begin_index);
  int64_t begin_index() const { return begin_index_; }

  // DDIM's eta (weight of the variance noise). Like diffusers pipelines, which pass eta only to
  // schedulers whose step takes it, the other schedulers ignore it.
  virtual void set_eta(double eta) { (void)eta; }
  virtual bool uses_eta() const { return false; }

  const NoiseScheduleConfig& schedule_config() const { return config_; }
  const at::Tensor& betas() const { return betas_; }                     // [T] float32
  const at::Tensor& alphas_cumprod() const { return alphas_cumprod_; }  // [T] float32

 protected:
  explicit Scheduler(NoiseScheduleConfig config);
  // With zero terminal SNR, sigma-based schedulers replace alphas_cumprod[T-1] = 0 by 2^-24 (the
  // smallest positive float16 subnormal) so the first sigma stays finite, as diffusers does;
  // DDIM keeps the exact 0.
  void keep_terminal_sigma_finite();
  // Error unless set_timesteps ran and 0 <= step_index < N. `what` names the caller.
  void check_step_index(int64_t step_index, const char* what) const;
  // Variance noise for a step: `noise` (shape-checked) or a draw from `generator`.
  at::Tensor variance_noise(const at::Tensor& like, c10::ScalarType dtype,
                            const c10::optional<at::Generator>& generator,
                            const c10::optional<at::Tensor>& noise, const char* why) const;
  // Index of `timestep` in timesteps() (the second match when it appears more than once,
  // as diffusers' index_for_timestep); -1 when absent.
  int64_t index_for_timestep(double timestep) const;

  NoiseScheduleConfig config_;
  at::Tensor betas_;
  at::Tensor alphas_cumprod_;
  at::Tensor timesteps_;  // set by set_timesteps
  at::Tensor sigmas_;     // sigma-based schedulers only
  int64_t begin_index_ = 0;
};

// Builds the scheduler named by "_class_name" (DDIMScheduler, EulerDiscreteScheduler,
// EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler). ConfigError naming the file and
// key for an unknown class or value.
std::unique_ptr<Scheduler> make_scheduler(const io::JsonConfig& scheduler_config);
// The same config with the algorithm replaced by a named sampler (see sampler_names()): the
// training schedule (betas, prediction_type, timestep_spacing, steps_offset, ...) is kept and
// keys the new class does not know are ignored, as diffusers' from_config. InputError listing the
// valid names for an unknown name.
std::unique_ptr<Scheduler> make_scheduler(const io::JsonConfig& scheduler_config,
                                          const std::string& sampler_name);
// ddim, euler, euler_a, dpmpp_2m, dpmpp_2m_karras, dpmpp_3m, dpmpp_2m_sde.
std::vector<std::string> sampler_names();
// The scheduler_config.json keys a sampler name sets (including "_class_name").
nlohmann::json sampler_preset(const std::string& sampler_name);

// img2img / video-to-video: the tail of the schedule that a denoising `strength` in [0, 1] runs,
// as diffusers' get_timesteps. Requires set_timesteps; sets the scheduler's begin index.
struct StrengthSchedule {
  at::Tensor timesteps;     // [num_steps] tail of scheduler.timesteps()
  int64_t begin_index = 0;  // index of timesteps[0] in the full schedule
  int64_t num_steps = 0;    // denoising steps that will run
};
StrengthSchedule timesteps_for_strength(Scheduler& scheduler, double strength);

}  // namespace vdm::schedulers
