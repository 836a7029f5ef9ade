#include "schedulers/noise_schedule.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace vdm::schedulers {

const char* prediction_type_name(PredictionType type) {
  switch (type) {
    case PredictionType::kEpsilon: return "epsilon";
    case PredictionType::kVPrediction: return "v_prediction";
    case PredictionType::kSample: return "sample";
  }
  return "?";
}

const char* timestep_spacing_name(TimestepSpacing spacing) {
  switch (spacing) {
    case TimestepSpacing::kLinspace: return "linspace";
    case TimestepSpacing::kLeading: return "leading";
    case TimestepSpacing::kTrailing: return "trailing";
  }
  return "?";
}

NoiseScheduleConfig parse_noise_schedule_config(const io::JsonConfig& cfg,
                                                TimestepSpacing default_spacing) {
  NoiseScheduleConfig c;
  c.num_train_timesteps = cfg.get_int("num_train_timesteps", c.num_train_timesteps);
  if (c.num_train_timesteps < 2) cfg.fail("num_train_timesteps", "an integer >= 2");
  c.beta_start = cfg.get_double("beta_start", c.beta_start);
  c.beta_end = cfg.get_double("beta_end", c.beta_end);
  c.beta_schedule = cfg.get_string("beta_schedule", c.beta_schedule);
  if (cfg.has("trained_betas")) {
    const auto& v = cfg.json().at("trained_betas");
    if (!v.is_array()) cfg.fail("trained_betas", "a list of numbers or null");
    for (const auto& e : v) {
      if (!e.is_number()) cfg.fail("trained_betas", "a list of numbers or null");
      c.trained_betas.push_back(e.get<double>());
    }
    if (static_cast<int64_t>(c.trained_betas.size()) != c.num_train_timesteps)
      throw ConfigError(fmt::format(
          "{}: key 'trained_betas' has {} values, expected num_train_timesteps = {}", cfg.source(),
          c.trained_betas.size(), c.num_train_timesteps));
  } else if (c.beta_schedule != "linear" && c.beta_schedule != "scaled_linear" &&
             c.beta_schedule != "squaredcos_cap_v2") {
    cfg.fail("beta_schedule", "one of \"linear\", \"scaled_linear\", \"squaredcos_cap_v2\"");
  }
  c.rescale_betas_zero_snr = cfg.get_bool("rescale_betas_zero_snr", c.rescale_betas_zero_snr);

  const std::string prediction = cfg.get_string("prediction_type", "epsilon");
  if (prediction == "epsilon") c.prediction_type = PredictionType::kEpsilon;
  else if (prediction == "v_prediction") c.prediction_type = PredictionType::kVPrediction;
  else if (prediction == "sample") c.prediction_type = PredictionType::kSample;
  else cfg.fail("prediction_type", "one of \"epsilon\", \"v_prediction\", \"sample\"");

  const std::string spacing =
      cfg.get_string("timestep_spacing", timestep_spacing_name(default_spacing));
  if (spacing == "linspace") c.timestep_spacing = TimestepSpacing::kLinspace;
  else if (spacing == "leading") c.timestep_spacing = TimestepSpacing::kLeading;
  else if (spacing == "trailing") c.timestep_spacing = TimestepSpacing::kTrailing;
  else cfg.fail("timestep_spacing", "one of \"linspace\", \"leading\", \"trailing\"");

  c.steps_offset = cfg.get_int("steps_offset", c.steps_offset);
  if (c.steps_offset < 0) cfg.fail("steps_offset", "an integer >= 0");
  return c;
}

namespace {

// Cosine schedule of improved DDPM (GLIDE): betas from alpha_bar(t) = cos((t+0.008)/1.008*pi/2)^2.
at::Tensor cosine_betas(int64_t n, double max_beta = 0.999) {
  auto alpha_bar = [](double t) { return std::pow(std::cos((t + 0.008) / 1.008 * M_PI / 2), 2.0); };
  std::vector<float> betas(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    double t1 = static_cast<double>(i) / static_cast<double>(n);
    double t2 = static_cast<double>(i + 1) / static_cast<double>(n);
    betas[static_cast<size_t>(i)] = static_cast<float>(std::min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta));
  }
  return at::tensor(betas, at::kFloat);
}

}  // namespace

at::Tensor make_betas(const NoiseScheduleConfig& c) {
  at::Tensor betas;
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  if (!c.trained_betas.empty()) {
    std::vector<float> values(c.trained_betas.begin(), c.trained_betas.end());
    betas = at::tensor(values, at::kFloat);
  } else if (c.beta_schedule == "linear") {
    betas = at::linspace(c.beta_start, c.beta_end, c.num_train_timesteps, f32);
  } else if (c.beta_schedule == "scaled_linear") {
    betas = at::pow(at::linspace(std::pow(c.beta_start, 0.5), std::pow(c.beta_end, 0.5),
                                 c.num_train_timesteps, f32),
                    2);
  } else if (c.beta_schedule == "squaredcos_cap_v2") {
    betas = cosine_betas(c.num_train_timesteps);
  } else {
    throw ConfigError(fmt::format("beta_schedule '{}' is not supported", c.beta_schedule));
  }
  if (c.rescale_betas_zero_snr) betas = rescale_zero_terminal_snr(betas);
  return betas;
}

at::Tensor rescale_zero_terminal_snr(const at::Tensor& betas) {
  at::Tensor alphas = 1.0 - betas;
  at::Tensor alphas_cumprod = at::cumprod(alphas, 0);
  at::Tensor alphas_bar_sqrt = alphas_cumprod.sqrt();
  at::Tensor sqrt_0 = alphas_bar_sqrt[0].clone();
  at::Tensor sqrt_T = alphas_bar_sqrt[-1].clone();
  alphas_bar_sqrt -= sqrt_T;                             // last timestep -> 0
  alphas_bar_sqrt *= sqrt_0 / (sqrt_0 - sqrt_T);         // first timestep keeps its value
  at::Tensor alphas_bar = at::pow(alphas_bar_sqrt, 2);
  at::Tensor ratios = alphas_bar.slice(0, 1) / alphas_bar.slice(0, 0, -1);  // undo cumprod
  at::Tensor new_alphas = at::cat({alphas_bar.slice(0, 0, 1), ratios});
  return 1 - new_alphas;
}

at::Tensor alphas_cumprod_from_betas(const at::Tensor& betas) {
  return at::cumprod(1.0 - betas, 0);
}

ThresholdingConfig parse_thresholding_config(const io::JsonConfig& cfg) {
  ThresholdingConfig t;
  t.enabled = cfg.get_bool("thresholding", t.enabled);
  t.ratio = cfg.get_double("dynamic_thresholding_ratio", t.ratio);
  if (!(t.ratio > 0 && t.ratio <= 1)) cfg.fail("dynamic_thresholding_ratio", "a number in (0, 1]");
  t.max_value = cfg.get_double("sample_max_value", t.max_value);
  return t;
}

at::Tensor threshold_sample(const at::Tensor& sample, double ratio, double max_value) {
  const auto dtype = sample.scalar_type();
  at::Tensor x = sample;
  if (dtype != at::kFloat && dtype != at::kDouble) x = x.to(at::kFloat);
  const auto sizes = x.sizes().vec();
  x = x.reshape({sizes[0], -1});
  at::Tensor s = at::quantile(x.abs(), ratio, /*dim=*/1);
  s = at::clamp(s, 1.0, max_value).unsqueeze(1);
  x = at::clamp(x, -s, s) / s;
  return x.reshape(sizes).to(dtype);
}

std::pair<at::Tensor, at::Tensor> sigma_to_alpha_sigma_t(const at::Tensor& sigma) {
  at::Tensor alpha_t = at::reciprocal(at::pow(at::pow(sigma, 2) + 1, 0.5));
  at::Tensor sigma_t = sigma * alpha_t;
  return {alpha_t, sigma_t};
}

namespace numeric {

std::vector<double> linspace(double start, double stop, int64_t num) {
  std::vector<double> y(static_cast<size_t>(std::max<int64_t>(num, 0)));
  const int64_t div = num - 1;
  const double delta = stop - start;
  if (div > 0) {
    const double step = delta / static_cast<double>(div);
    for (int64_t i = 0; i < num; ++i) {
      double v = step == 0 ? static_cast<double>(i) / static_cast<double>(div) * delta
                           : static_cast<double>(i) * step;
      y[static_cast<size_t>(i)] = v + start;
    }
    y.back() = stop;
  } else if (num == 1) {
    y[0] = start;
  }
  return y;
}

std::vector<double> arange(double start, double stop, double step) {
  const double len_f = std::ceil((stop - start) / step);
  const int64_t len = len_f > 0 ? static_cast<int64_t>(len_f) : 0;
  std::vector<double> y(static_cast<size_t>(len));
  if (len == 0) return y;
  y[0] = start;
  if (len == 1) return y;
  const double delta = (start + step) - start;  // numpy fills from the first two elements
  y[1] = start + delta;
  for (int64_t i = 2; i < len; ++i) y[static_cast<size_t>(i)] = start + static_cast<double>(i) * delta;
  return y;
}

double round_half_even(double x) { return std::nearbyint(x); }

double interp_index(double x, const std::vector<double>& fp) {
  const int64_t n = static_cast<int64_t>(fp.size());
  if (std::isnan(x)) return x;
  if (x < 0) return fp.front();
  if (x >= static_cast<double>(n - 1)) return fp.back();
  const int64_t j = static_cast<int64_t>(std::floor(x));
  const double xj = static_cast<double>(j);
  if (xj == x) return fp[static_cast<size_t>(j)];
  const double slope = (fp[static_cast<size_t>(j + 1)] - fp[static_cast<size_t>(j)]) / 1.0;
  double r = slope * (x - xj) + fp[static_cast<size_t>(j)];
  if (std::isnan(r)) {
    r = slope * (x - static_cast<double>(j + 1)) + fp[static_cast<size_t>(j + 1)];
    if (std::isnan(r) && fp[static_cast<size_t>(j)] == fp[static_cast<size_t>(j + 1)])
      r = fp[static_cast<size_t>(j)];
  }
  return r;
}

double sigma_to_t(double sigma, const std::vector<float>& log_sigmas) {
  const double log_sigma = std::log(std::max(sigma, 1e-10));
  // The reference subtracts a float64 scalar from a float32 table: numpy 1.x computes that
  // difference in float32, so the comparison is made with the float32 value.
  const float log_sigma_f = static_cast<float>(log_sigma);
  const int64_t n = static_cast<int64_t>(log_sigmas.size());
  int64_t low_idx = 0;
  for (int64_t i = 0; i < n; ++i)
    if (log_sigma_f - log_sigmas[static_cast<size_t>(i)] >= 0.0f) low_idx = i;
  low_idx = std::min(low_idx, n - 2);
  const int64_t high_idx = low_idx + 1;
  const float low = log_sigmas[static_cast<size_t>(low_idx)];
  const float high = log_sigmas[static_cast<size_t>(high_idx)];
  double w = (static_cast<double>(low) - log_sigma) / static_cast<double>(low - high);
  w = std::min(std::max(w, 0.0), 1.0);
  return (1 - w) * static_cast<double>(low_idx) + w * static_cast<double>(high_idx);
}

std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int64_t n) {
  const double rho = 7.0;
  const std::vector<double> ramp = linspace(0, 1, n);
  const double min_inv_rho = std::pow(sigma_min, 1 / rho);
  const double max_inv_rho = std::pow(sigma_max, 1 / rho);
  std::vector<double> sigmas(ramp.size());
  for (size_t i = 0; i < ramp.size(); ++i)
    sigmas[i] = std::pow(max_inv_rho + ramp[i] * (min_inv_rho - max_inv_rho), rho);
  return sigmas;
}

}  // namespace numeric

std::vector<float> training_sigmas(const at::Tensor& alphas_cumprod) {
  at::Tensor sigmas = at::pow((1 - alphas_cumprod) / alphas_cumprod, 0.5).contiguous();
  const float* p = sigmas.data_ptr<float>();
  return std::vector<float>(p, p + sigmas.numel());
}

std::vector<float> log_of(const std::vector<float>& values) {
  std::vector<float> out(values.size());
  for (size_t i = 0; i < values.size(); ++i)
    out[i] = static_cast<float>(std::log(static_cast<double>(values[i])));
  return out;
}

}  // namespace vdm::schedulers
