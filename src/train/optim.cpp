#include "train/optim.h"

#include <ATen/core/grad_mode.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>
#include <limits>

#include "core/error.h"

namespace vdm::train {

namespace {


void copy_checked(at::Tensor& dst, const io::TensorMap& state, const std::string& key, const std::string& source) {
  auto it = state.find(key);
  if (it == state.end()) {
    throw WeightsError(fmt::format("{}: key '{}' is missing; the checkpoint does not match this model "
                                   "(start without --resume or use the recipe it was written with)",
                                   source, key));
  }
  if (it->second.sizes() != dst.sizes()) {
    throw WeightsError(fmt::format("{}: key '{}' has shape [{}], expected [{}]; the checkpoint does not match "
                                   "this model",
                                   source, key, fmt::join(it->second.sizes(), ", "), fmt::join(dst.sizes(), ", ")));
  }
  dst.copy_(it->second);
}

}  // namespace

NamedParams named_trainable(const torch::nn::Module& module, const std::string& prefix) {
  NamedParams out;
  for (const auto& item : module.named_parameters(true)) {
    if (item.value().requires_grad()) out.emplace_back(prefix + item.key(), item.value());
  }
  return out;
}

AdamW::AdamW(NamedParams params, AdamWOptions options) : params_(std::move(params)), options_(options) {
  at::NoGradGuard no_grad;
  for (const auto& p : params_) {
    exp_avg_.push_back(at::zeros_like(p.second, at::MemoryFormat::Contiguous));
    exp_avg_sq_.push_back(at::zeros_like(p.second, at::MemoryFormat::Contiguous));
    decay_.push_back(p.second.dim() >= 2);
  }
}

void AdamW::step(double lr) {
  at::NoGradGuard no_grad;
  ++steps_;
  const double bc1 = 1.0 - std::pow(options_.beta1, static_cast<double>(steps_));
  const double bc2 = 1.0 - std::pow(options_.beta2, static_cast<double>(steps_));
  std::vector<at::Tensor> p, g, m, v, decayed;
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& param = params_[i].second;
    if (!param.grad().defined()) continue;
    p.push_back(param);
    g.push_back(param.grad());
    m.push_back(exp_avg_[i]);
    v.push_back(exp_avg_sq_[i]);
    if (decay_[i]) decayed.push_back(param);
  }
  if (p.empty()) return;
  if (options_.weight_decay > 0 && !decayed.empty()) at::_foreach_mul_(decayed, 1.0 - lr * options_.weight_decay);
  at::_foreach_mul_(m, options_.beta1);
  at::_foreach_add_(m, g, 1.0 - options_.beta1);
  at::_foreach_mul_(v, options_.beta2);
  at::_foreach_addcmul_(v, g, g, 1.0 - options_.beta2);
  std::vector<at::Tensor> denom = at::_foreach_sqrt(v);
  at::_foreach_div_(denom, std::sqrt(bc2));
  at::_foreach_add_(denom, options_.eps);
  at::_foreach_addcdiv_(p, m, denom, -lr / bc1);
}

void AdamW::zero_grad() {
  for (auto& p : params_) p.second.mutable_grad().reset();
}

io::TensorMap AdamW::state() const {
  io::TensorMap out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out["exp_avg." + params_[i].first] = exp_avg_[i];
    out["exp_avg_sq." + params_[i].first] = exp_avg_sq_[i];
  }
  out["step"] = at::tensor({steps_}, at::TensorOptions().dtype(at::kLong));
  return out;
}

void AdamW::load_state(const io::TensorMap& state, const std::string& source) {
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    copy_checked(exp_avg_[i], state, "exp_avg." + params_[i].first, source);
    copy_checked(exp_avg_sq_[i], state, "exp_avg_sq." + params_[i].first, source);
  }
  auto it = state.find("step");
  if (it == state.end()) throw WeightsError(fmt::format("{}: key 'step' is missing", source));
  steps_ = it->second.to(at::kLong).flatten()[0].item<int64_t>();
}

double clip_grad_norm(const NamedParams& params, double max_norm) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> grads;
  for (const auto& p : params) {
    if (p.second.grad().defined()) grads.push_back(p.second.grad());
  }
  if (grads.empty()) return 0.0;
  std::vector<at::Tensor> norms = at::_foreach_norm(grads, 2);
  const double total = at::stack(norms).to(at::kFloat).norm().item<double>();
  if (max_norm > 0 && std::isfinite(total) && total > max_norm) {
    at::_foreach_mul_(grads, max_norm / (total + 1e-6));
  }
  return total;
}

Ema::Ema(const NamedParams& params, double decay) : params_(params), decay_(decay) {
  at::NoGradGuard no_grad;
  for (const auto& p : params_) shadow_.push_back(p.second.detach().to(at::kFloat).clone());
}

void Ema::update(int64_t step) {
  at::NoGradGuard no_grad;
  const double d = std::min(decay_, (1.0 + static_cast<double>(step)) / (10.0 + static_cast<double>(step)));
  std::vector<at::Tensor> current;
  current.reserve(params_.size());
  for (const auto& p : params_) current.push_back(p.second.scalar_type() == at::kFloat ? p.second : p.second.to(at::kFloat));
  at::_foreach_mul_(shadow_, d);
  at::_foreach_add_(shadow_, current, 1.0 - d);
}

io::TensorMap Ema::state() const {
  io::TensorMap out;
  for (size_t i = 0; i < params_.size(); ++i) out[params_[i].first] = shadow_[i];
  return out;
}

void Ema::load_state(const io::TensorMap& state, const std::string& source) {
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) copy_checked(shadow_[i], state, params_[i].first, source);
}

void Ema::copy_to_params() const {
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) params_[i].second.copy_(shadow_[i]);
}

NamedParams Ema::backup() const {
  at::NoGradGuard no_grad;
  NamedParams out;
  for (const auto& p : params_) out.emplace_back(p.first, p.second.detach().clone());
  return out;
}

void Ema::restore(const NamedParams& params, const NamedParams& saved) {
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params.size() && i < saved.size(); ++i) params[i].second.copy_(saved[i].second);
}

double learning_rate(int64_t step, int64_t total, double lr, int64_t warmup, const std::string& schedule,
                     double final_fraction) {
  if (warmup > 0 && step < warmup) return lr * static_cast<double>(step + 1) / static_cast<double>(warmup);
  if (schedule == "cosine" && total > warmup) {
    const double progress = std::min(1.0, static_cast<double>(step - warmup) / static_cast<double>(total - warmup));
    return lr * (final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + std::cos(M_PI * progress)));
  }
  return lr;
}

}  // namespace vdm::train
