#include "diffusion/schedulers/euler.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace iris {

void EulerFamilyScheduler::plan(int64_t n) {
  const std::vector<double> train = train_sigmas(sched_.alphas_cumprod);  // [T], ascending in t
  std::vector<double> ts = spaced_timesteps(cfg_.timestep_spacing, cfg_.num_train_timesteps, n, cfg_.steps_offset,
                                            /*round_linspace=*/false);
  std::vector<double> sig(ts.size());
  for (size_t k = 0; k < ts.size(); ++k) sig[k] = np_interp_index(ts[k], train);
  if (cfg_.use_karras_sigmas) {
    // Karras spacing over the range the planned steps cover (or the configured override),
    // and timesteps mapped back from those sigmas (fractional).
    const double smin = cfg_.sigma_min ? *cfg_.sigma_min : sig.back();
    const double smax = cfg_.sigma_max ? *cfg_.sigma_max : sig.front();
    sig = karras_sigmas(smin, smax, n);
    const std::vector<float> logs = log_sigmas_f32(train);
    for (size_t k = 0; k < sig.size(); ++k) ts[k] = sigma_to_t(sig[k], logs);
  }
  std::vector<float> s32(sig.begin(), sig.end());
  s32.push_back(cfg_.final_sigma_zero ? 0.0f : static_cast<float>(train.front()));
  std::vector<float> t32(ts.begin(), ts.end());
  sigmas_ = at::tensor(s32, at::TensorOptions().dtype(at::kFloat));
  timesteps_ = at::tensor(t32, at::TensorOptions().dtype(at::kFloat));
}

double EulerFamilyScheduler::init_noise_sigma() const {
  if (!planned()) throw ConfigError(name() + ": init_noise_sigma before set_timesteps");
  const float m = sigmas_.max().item<float>();
  if (cfg_.timestep_spacing != TimestepSpacing::Leading) return m;
  return std::sqrt(m * m + 1.0f);  // float32 as diffusers
}

at::Tensor EulerFamilyScheduler::scale_model_input(const at::Tensor& x, int64_t i) const {
  check_step(i);
  const double s = sigma_value(i);
  return as_f32(x) / std::sqrt(s * s + 1.0);
}

at::Tensor EulerFamilyScheduler::add_noise(const at::Tensor& x0, const at::Tensor& noise, int64_t i) const {
  check_step(i);
  return as_f32(x0) + as_f32(noise) * sigma_value(i);
}

at::Tensor EulerFamilyScheduler::predict_x0(const at::Tensor& mo, const at::Tensor& x, double sigma) const {
  switch (cfg_.prediction_type) {
    case PredictionType::Epsilon: return x - mo * sigma;
    case PredictionType::Sample: return mo;
    case PredictionType::VPrediction:
      // v = alpha*eps - s*x0 on the VP latent x/sqrt(sigma^2+1), rewritten in sigma space.
      return mo * (-sigma / std::sqrt(sigma * sigma + 1.0)) + x / (sigma * sigma + 1.0);
  }
  return mo;
}

EulerScheduler::EulerScheduler(ScheduleConfig cfg, EulerChurn churn)
    : EulerFamilyScheduler(std::move(cfg)), churn_(churn) {
  if (!(churn_.s_churn >= 0) || !(churn_.s_noise >= 0))
    throw ConfigError("euler: s_churn and s_noise must be >= 0");
}

double EulerScheduler::gamma(int64_t i) const {
  if (churn_.s_churn <= 0 || !planned()) return 0.0;
  const double s = sigma_value(i);
  if (!(churn_.s_tmin <= s && s <= churn_.s_tmax)) return 0.0;
  return std::min(churn_.s_churn / static_cast<double>(sigmas_.size(0) - 1), std::sqrt(2.0) - 1.0);
}

StepResult EulerScheduler::step(const at::Tensor& model_output, int64_t i, const at::Tensor& x_in,
                                const NoiseSource& noise) {
  check_step(i);
  const at::Tensor mo = as_f32(model_output);
  at::Tensor x = as_f32(x_in);
  const double sigma = sigma_value(i);
  const double g = gamma(i);
  const double sigma_hat = sigma * (g + 1.0);
  // Churn: raise the noise level to sigma_hat before the step.
  if (g > 0) x = x + draw_noise(noise, mo, i) * (churn_.s_noise * std::sqrt(sigma_hat * sigma_hat - sigma * sigma));
  const at::Tensor x0 = cfg_.prediction_type == PredictionType::Epsilon ? x - mo * sigma_hat : predict_x0(mo, x, sigma);
  const at::Tensor d = (x - x0) / sigma_hat;
  const at::Tensor prev = x + d * (sigma_value(i + 1) - sigma_hat);
  return {prev, x0};
}

}  // namespace iris
