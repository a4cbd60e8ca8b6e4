#include "diffusion/schedulers/lcm.h"

#include <cmath>

#include "core/error.h"

namespace iris {

LCMScheduler::LCMScheduler(ScheduleConfig cfg) : Scheduler(std::move(cfg)) {
  at::Tensor a = sched_.alphas_cumprod.contiguous();
  acp_.assign(a.data_ptr<float>(), a.data_ptr<float>() + a.numel());
}

void LCMScheduler::plan_with_strength(int64_t n, double strength) {
  const int64_t T = cfg_.num_train_timesteps;
  const int64_t orig = cfg_.original_inference_steps;
  const int64_t k = T / orig;
  // The distillation schedule, limited by strength: (1..m) * k - 1, then read from the top.
  const int64_t m = static_cast<int64_t>(static_cast<double>(orig) * strength);
  if (n > orig)
    throw ConfigError("lcm: " + std::to_string(n) + " steps exceed original_inference_steps " + std::to_string(orig));
  if (m / n < 1)
    throw ConfigError("lcm: " + std::to_string(n) + " steps do not fit the " + std::to_string(m) +
                      " timesteps of the LCM schedule at strength " + std::to_string(strength) +
                      " (original_inference_steps * strength)");
  std::vector<int64_t> ts(static_cast<size_t>(n));
  const double stride = static_cast<double>(m) / static_cast<double>(n);  // np.linspace(0, m, n, endpoint=False)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t idx = static_cast<int64_t>(std::floor(static_cast<double>(i) * stride));
    ts[static_cast<size_t>(i)] = (m - idx) * k - 1;  // reversed origin schedule at idx
  }
  timesteps_ = at::tensor(ts, at::TensorOptions().dtype(at::kLong));
  sigmas_ = at::Tensor();
}

int64_t LCMScheduler::plan_img2img(int64_t steps, double strength) {
  img2img_start_step(steps, strength);  // validates
  if (steps > cfg_.num_train_timesteps)
    throw ConfigError("lcm: " + std::to_string(steps) + " steps exceed num_train_timesteps");
  plan_with_strength(steps, strength);
  set_begin_index(0);
  return 0;
}

std::pair<double, double> LCMScheduler::boundary_scalings(double t) const {
  const double sigma_data2 = 0.25;  // sigma_data = 0.5
  const double s = t * cfg_.timestep_scaling;
  return {sigma_data2 / (s * s + sigma_data2), s / std::sqrt(s * s + sigma_data2)};
}

at::Tensor LCMScheduler::add_noise(const at::Tensor& x0, const at::Tensor& noise, int64_t i) const {
  check_step(i);
  const double a = acp_[static_cast<size_t>(timesteps_[i].item<int64_t>())];
  return as_f32(x0) * std::sqrt(a) + as_f32(noise) * std::sqrt(1.0 - a);
}

StepResult LCMScheduler::step(const at::Tensor& model_output, int64_t i, const at::Tensor& x_in,
                              const NoiseSource& noise) {
  check_step(i);
  const at::Tensor mo = as_f32(model_output);
  const at::Tensor x = as_f32(x_in);
  const int64_t t = timesteps_[i].item<int64_t>();
  const bool last = i == num_steps() - 1;
  const double a_t = acp_[static_cast<size_t>(t)], b_t = 1.0 - a_t;

  at::Tensor x0;
  switch (cfg_.prediction_type) {
    case PredictionType::Epsilon: x0 = (x - mo * std::sqrt(b_t)) / std::sqrt(a_t); break;
    case PredictionType::Sample: x0 = mo; break;
    case PredictionType::VPrediction: x0 = x * std::sqrt(a_t) - mo * std::sqrt(b_t); break;
  }
  if (cfg_.thresholding) x0 = dynamic_threshold(x0, cfg_.dynamic_thresholding_ratio, cfg_.sample_max_value);
  else if (cfg_.clip_sample) x0 = x0.clamp(-cfg_.clip_sample_range, cfg_.clip_sample_range);

  const auto [c_skip, c_out] = boundary_scalings(static_cast<double>(t));
  const at::Tensor denoised = x0 * c_out + x * c_skip;
  if (last) return {denoised, denoised};
  // Re-noise the consistency estimate to the next timestep.
  const double a_prev = acp_[static_cast<size_t>(timesteps_[i + 1].item<int64_t>())];
  const at::Tensor prev = denoised * std::sqrt(a_prev) + draw_noise(noise, mo, i) * std::sqrt(1.0 - a_prev);
  return {prev, denoised};
}

}  // namespace iris
