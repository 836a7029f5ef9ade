// The pieces every scheduler shares: the training noise schedule (betas, alphas_cumprod) parsed
// from scheduler_config.json, and the float64 helpers that reproduce numpy's linspace, arange,
// interp and round, so timesteps and sigmas come out exactly as the reference computes them.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "io/json_config.h"

namespace vdm::schedulers {

// What the denoising model predicts (config key `prediction_type`).
enum class PredictionType { kEpsilon, kVPrediction, kSample };
// How inference timesteps are spread over the training range (config key `timestep_spacing`;
// Table 2 of "Common Diffusion Noise Schedules and Sample Steps are Flawed").
enum class TimestepSpacing { kLinspace, kLeading, kTrailing };

const char* prediction_type_name(PredictionType type);
const char* timestep_spacing_name(TimestepSpacing spacing);

// Settings shared by every scheduler, with the diffusers defaults.
struct NoiseScheduleConfig {
  int64_t num_train_timesteps = 1000;
  double beta_start = 0.0001;
  double beta_end = 0.02;
  std::string beta_schedule = "linear";  // linear | scaled_linear | squaredcos_cap_v2
  std::vector<double> trained_betas;     // non-empty: used instead of beta_schedule
  bool rescale_betas_zero_snr = false;   // zero terminal SNR (arXiv 2305.08891, Algorithm 1)
  PredictionType prediction_type = PredictionType::kEpsilon;
  TimestepSpacing timestep_spacing = TimestepSpacing::kLinspace;  // class-specific default
  int64_t steps_offset = 0;
};

// Reads the shared keys; `default_spacing` is the class's default for `timestep_spacing`.
// ConfigError naming the file and key for a wrong type or an unknown value.
NoiseScheduleConfig parse_noise_schedule_config(const io::JsonConfig& cfg,
                                                TimestepSpacing default_spacing);

// Dynamic thresholding of x0 (config keys `thresholding`, `dynamic_thresholding_ratio`,
// `sample_max_value`), shared by the schedulers that offer it.
struct ThresholdingConfig {
  bool enabled = false;
  double ratio = 0.995;
  double max_value = 1.0;
};
// ConfigError naming the file and key for a wrong type or a ratio outside (0, 1].
ThresholdingConfig parse_thresholding_config(const io::JsonConfig& cfg);

// betas: [num_train_timesteps] float32, from trained_betas or the named schedule, rescaled to
// zero terminal SNR when asked.
at::Tensor make_betas(const NoiseScheduleConfig& config);
// Rescales betas so the last timestep has zero SNR. betas: [T] float32 -> [T] float32.
at::Tensor rescale_zero_terminal_snr(const at::Tensor& betas);
// cumprod(1 - betas): [T] float32.
at::Tensor alphas_cumprod_from_betas(const at::Tensor& betas);

// Imagen's dynamic thresholding of a predicted x0: per sample, s = clamp(quantile(|x|, ratio),
// 1, max_value); x -> clamp(x, -s, s) / s. sample: [B, ...] -> same shape and dtype.
at::Tensor threshold_sample(const at::Tensor& sample, double ratio, double max_value);

// Karras sigma to alpha/sigma of the VP process: alpha = 1/sqrt(sigma^2+1), sigma_t = sigma*alpha.
// sigma: any shape, float -> (alpha_t, sigma_t) of the same shape.
std::pair<at::Tensor, at::Tensor> sigma_to_alpha_sigma_t(const at::Tensor& sigma);

namespace numeric {

// numpy.linspace(start, stop, num) in float64 (endpoint included).
std::vector<double> linspace(double start, double stop, int64_t num);
// numpy.arange(start, stop, step) in float64 (length ceil((stop-start)/step)).
std::vector<double> arange(double start, double stop, double step);
// numpy.round: half to even.
double round_half_even(double x);
// numpy.interp(x, [0, 1, .., n-1], fp) for one x.
double interp_index(double x, const std::vector<double>& fp);
// Fractional training timestep whose log-sigma matches `sigma`, interpolated in the float32
// table `log_sigmas` (ascending with t), as the reference's _sigma_to_t.
double sigma_to_t(double sigma, const std::vector<float>& log_sigmas);
// Karras et al. (2022) schedule: n sigmas from sigma_max down to sigma_min, rho = 7.
std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int64_t n);

}  // namespace numeric

// Training-schedule sigmas sqrt((1 - a) / a) in float32 ([T], ascending with t) and their logs,
// as float vectors for the numpy-style helpers.
std::vector<float> training_sigmas(const at::Tensor& alphas_cumprod);
std::vector<float> log_of(const std::vector<float>& values);

}  // namespace vdm::schedulers
