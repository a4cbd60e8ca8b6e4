#include "diffusion/schedulers/ddim.h"

#include <cmath>

#include "core/error.h"

namespace iris {

DDIMScheduler::DDIMScheduler(ScheduleConfig cfg, double eta) : Scheduler(std::move(cfg)) {
  at::Tensor a = sched_.alphas_cumprod.contiguous();
  acp_.assign(a.data_ptr<float>(), a.data_ptr<float>() + a.numel());
  final_alpha_cumprod_ = cfg_.set_alpha_to_one ? 1.0 : static_cast<double>(acp_.front());
  set_eta(eta);
}

void DDIMScheduler::set_eta(double eta) {
  if (!(eta >= 0.0 && std::isfinite(eta))) throw ConfigError("ddim: eta must be >= 0, got " + std::to_string(eta));
  eta_ = eta;
}

double DDIMScheduler::acp(int64_t t) const {
  return t >= 0 ? static_cast<double>(acp_[static_cast<size_t>(t)]) : final_alpha_cumprod_;
}

void DDIMScheduler::plan(int64_t n) {
  std::vector<double> ts = spaced_timesteps(cfg_.timestep_spacing, cfg_.num_train_timesteps, n, cfg_.steps_offset,
                                            /*round_linspace=*/true);
  std::vector<int64_t> ti(ts.begin(), ts.end());
  for (int64_t t : ti)
    if (t < 0 || t >= cfg_.num_train_timesteps)
      throw ConfigError("ddim: " + std::to_string(n) + " steps with " + to_string(cfg_.timestep_spacing) +
                        " spacing and steps_offset " + std::to_string(cfg_.steps_offset) + " reach timestep " +
                        std::to_string(t) + ", outside [0, " + std::to_string(cfg_.num_train_timesteps) +
                        "): use fewer steps");
  timesteps_ = at::tensor(ti, at::TensorOptions().dtype(at::kLong));
  sigmas_ = at::Tensor();
}

at::Tensor DDIMScheduler::add_noise(const at::Tensor& x0, const at::Tensor& noise, int64_t i) const {
  check_step(i);
  const double a = acp(timesteps_[i].item<int64_t>());
  return as_f32(x0) * std::sqrt(a) + as_f32(noise) * std::sqrt(1.0 - a);
}

StepResult DDIMScheduler::step(const at::Tensor& model_output_in, int64_t i, const at::Tensor& x_in,
                               const NoiseSource& noise) {
  check_step(i);
  const at::Tensor mo = as_f32(model_output_in);
  const at::Tensor x = as_f32(x_in);
  const int64_t t = timesteps_[i].item<int64_t>();
  const int64_t t_prev = t - cfg_.num_train_timesteps / num_steps();
  const double a_t = acp(t), a_prev = acp(t_prev);
  const double b_t = 1.0 - a_t;

  // Model output -> (x0, eps).
  at::Tensor x0, eps;
  switch (cfg_.prediction_type) {
    case PredictionType::Epsilon:
      x0 = (x - mo * std::sqrt(b_t)) / std::sqrt(a_t);
      eps = mo;
      break;
    case PredictionType::Sample:
      x0 = mo;
      eps = (x - x0 * std::sqrt(a_t)) / std::sqrt(b_t);
      break;
    case PredictionType::VPrediction:
      x0 = x * std::sqrt(a_t) - mo * std::sqrt(b_t);
      eps = mo * std::sqrt(a_t) + x * std::sqrt(b_t);
      break;
  }
  // Clipping changes x0 only; eps stays the model's (diffusers' use_clipped_model_output=False).
  if (cfg_.thresholding) x0 = dynamic_threshold(x0, cfg_.dynamic_thresholding_ratio, cfg_.sample_max_value);
  else if (cfg_.clip_sample) x0 = x0.clamp(-cfg_.clip_sample_range, cfg_.clip_sample_range);

  const double variance = (1.0 - a_prev) / b_t * (1.0 - a_t / a_prev);
  const double std_dev = eta_ * std::sqrt(variance);
  // max(): 1 - a_prev - std^2 is >= 0 in exact arithmetic but can round below it at eta = 1.
  const double dir_coef = std::sqrt(std::max(1.0 - a_prev - std_dev * std_dev, 0.0));
  at::Tensor prev = x0 * std::sqrt(a_prev) + eps * dir_coef;
  if (eta_ > 0) prev = prev + draw_noise(noise, mo, i) * std_dev;
  return {prev, x0};
}

}  // namespace iris
