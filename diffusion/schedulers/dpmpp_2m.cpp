#include "diffusion/schedulers/dpmpp_2m.h"

#include <cmath>
#include <limits>

#include "core/error.h"

namespace iris {

namespace {

// VP coefficients of a sigma-space noise level.
struct VP {
  double alpha, sigma, lambda;
};
VP vp(double s) {
  const double alpha = 1.0 / std::sqrt(s * s + 1.0);
  const double sigma = s * alpha;
  return {alpha, sigma, std::log(alpha) - std::log(sigma)};  // lambda = +inf at s = 0
}

}  // namespace

DPMSolverMultistepScheduler::DPMSolverMultistepScheduler(ScheduleConfig cfg) : Scheduler(std::move(cfg)) {}

void DPMSolverMultistepScheduler::reset_state() {
  history_.clear();
  last_step_ = -1;
  last_order_ = 0;
}

void DPMSolverMultistepScheduler::plan(int64_t n) {
  const int64_t T = cfg_.num_train_timesteps;
  // Timesteps whose lambda falls below lambda_min_clipped are never planned (cosine
  // schedules); with the default -inf, last = T.
  int64_t last = T;
  if (cfg_.lambda_min_clipped > -std::numeric_limits<double>::infinity()) {
    const at::Tensor acp = sched_.alphas_cumprod;
    const at::Tensor lambda = acp.sqrt().log() - (1.0 - acp).sqrt().log();  // [T] float32, descending
    const int64_t clipped = lambda.lt(cfg_.lambda_min_clipped).sum().item<int64_t>();
    last = T - clipped;
    if (last < 1) throw ConfigError("dpmpp_2m: lambda_min_clipped leaves no timesteps");
  }

  std::vector<double> ts;
  switch (cfg_.timestep_spacing) {
    case TimestepSpacing::Linspace: {
      // n+1 points over [0, last-1], descending, the 0 dropped.
      const std::vector<double> v = np_linspace(0.0, static_cast<double>(last - 1), n + 1);
      for (int64_t k = n; k >= 1; --k) ts.push_back(round_half_even(v[static_cast<size_t>(k)]));
      break;
    }
    case TimestepSpacing::Leading: {
      const int64_t ratio = last / (n + 1);
      for (int64_t k = n; k >= 1; --k) ts.push_back(static_cast<double>(k * ratio + cfg_.steps_offset));
      break;
    }
    case TimestepSpacing::Trailing: {
      const double ratio = static_cast<double>(T) / static_cast<double>(n);
      // np.arange(last, 0, -ratio): n values when last == T (see spaced_timesteps).
      const int64_t count = last == T ? n : static_cast<int64_t>(std::ceil(static_cast<double>(last) / ratio));
      for (int64_t k = 0; k < count; ++k)
        ts.push_back(round_half_even(static_cast<double>(last) + static_cast<double>(k) * -ratio) - 1);
      break;
    }
  }

  const std::vector<double> train = train_sigmas(sched_.alphas_cumprod);
  std::vector<double> sig;
  if (cfg_.use_karras_sigmas) {
    // Karras over the full train range [sigma(0), sigma(T-1)], timesteps rounded back.
    sig = karras_sigmas(train.front(), train.back(), n);
    const std::vector<float> logs = log_sigmas_f32(train);
    ts.resize(sig.size());
    for (size_t k = 0; k < sig.size(); ++k) ts[k] = round_half_even(sigma_to_t(sig[k], logs));
  } else {
    for (double t : ts) sig.push_back(np_interp_index(t, train));
  }
  std::vector<float> s32(sig.begin(), sig.end());
  s32.push_back(cfg_.final_sigma_zero ? 0.0f : static_cast<float>(train.front()));
  std::vector<int64_t> ti;
  for (double t : ts) {
    if (t < 0 || t >= static_cast<double>(T))
      throw ConfigError("dpmpp_2m: timestep " + std::to_string(t) + " outside the schedule");
    ti.push_back(static_cast<int64_t>(t));
  }
  sigmas_ = at::tensor(s32, at::TensorOptions().dtype(at::kFloat));
  timesteps_ = at::tensor(ti, at::TensorOptions().dtype(at::kLong));
}

at::Tensor DPMSolverMultistepScheduler::add_noise(const at::Tensor& x0, const at::Tensor& noise, int64_t i) const {
  check_step(i);
  const VP c = vp(sigma_value(i));
  return as_f32(x0) * c.alpha + as_f32(noise) * c.sigma;
}

at::Tensor DPMSolverMultistepScheduler::data_prediction(const at::Tensor& mo, const at::Tensor& x, double s) const {
  const VP c = vp(s);
  at::Tensor x0;
  switch (cfg_.prediction_type) {
    case PredictionType::Epsilon: x0 = (x - mo * c.sigma) / c.alpha; break;
    case PredictionType::Sample: x0 = mo; break;
    case PredictionType::VPrediction: x0 = x * c.alpha - mo * c.sigma; break;
  }
  if (cfg_.thresholding) x0 = dynamic_threshold(x0, cfg_.dynamic_thresholding_ratio, cfg_.sample_max_value);
  return x0;
}

StepResult DPMSolverMultistepScheduler::step(const at::Tensor& model_output, int64_t i, const at::Tensor& x_in,
                                             const NoiseSource& /*noise*/) {
  check_step(i);
  const at::Tensor x = as_f32(x_in);
  // History is only valid for consecutive steps (img2img starts, re-runs): else restart.
  if (last_step_ != i - 1) reset_state();

  const at::Tensor x0 = data_prediction(as_f32(model_output), x, sigma_value(i));
  history_.push_back(x0);
  if (static_cast<int64_t>(history_.size()) > cfg_.solver_order) history_.erase(history_.begin());
  last_step_ = i;

  const int64_t n = num_steps();
  const bool final_lower = i == n - 1 && (cfg_.euler_at_final || (cfg_.lower_order_final && n < 15) ||
                                          cfg_.final_sigma_zero);
  const bool first_order = cfg_.solver_order == 1 || history_.size() < 2 || final_lower;
  last_order_ = first_order ? 1 : 2;

  const VP t = vp(sigma_value(i + 1));
  const VP s0 = vp(sigma_value(i));
  const double h = t.lambda - s0.lambda;
  const double em1 = std::expm1(-h);  // e^-h - 1 (= -1 at the final sigma 0, where h = inf)
  // At sigma_t = 0: x coefficient 0, D0 coefficient 1, so prev == x0 exactly.
  at::Tensor prev = x * (t.sigma / s0.sigma) - x0 * (t.alpha * em1);
  if (!first_order) {
    const VP s1 = vp(sigma_value(i - 1));
    const double r0 = (s0.lambda - s1.lambda) / h;
    const at::Tensor d1 = (x0 - history_[history_.size() - 2]) * (1.0 / r0);
    if (cfg_.solver_type_heun) prev = prev + d1 * (t.alpha * (em1 / h + 1.0));
    else prev = prev - d1 * (0.5 * t.alpha * em1);
  }
  return {prev, x0};
}

}  // namespace iris
