#pragma once
// Euler (Karras et al. 2022, Algorithm 2) over the "sigma" parametrisation, as diffusers'
// EulerDiscreteScheduler; and the shared base of the Euler family.
//
// Sigma space: x = x0 + sigma * eps with sigma = sqrt((1 - acp) / acp), so the model gets
// x / sqrt(sigma^2 + 1) (the VP-space latent) and the initial noise is scaled by the
// largest sigma. Step i: x0 from the model, d = (x - x0) / sigma, x_next = x + d * (sigma_next - sigma).
#include <limits>
#include <utility>

#include "diffusion/schedulers/scheduler.h"

namespace iris {

// Planning and scaling shared by Euler and Euler ancestral (diffusers'
// EulerDiscreteScheduler.set_timesteps: spaced timesteps, train sigmas interpolated at
// them, optionally re-spread as Karras sigmas over the same range, then the final sigma).
class EulerFamilyScheduler : public Scheduler {
 public:
  using Scheduler::Scheduler;

  // With linspace/trailing spacing the largest sigma; with leading sqrt(sigma_max^2 + 1).
  double init_noise_sigma() const override;
  at::Tensor scale_model_input(const at::Tensor& x, int64_t i) const override;
  // x0 + sigma_i * noise.
  at::Tensor add_noise(const at::Tensor& x0, const at::Tensor& noise, int64_t i) const override;

 protected:
  void plan(int64_t n) override;
  // The x0 estimate from a model output at noise level `sigma` (x is the unscaled sample).
  at::Tensor predict_x0(const at::Tensor& model_output, const at::Tensor& x, double sigma) const;
};

// Churn options of diffusers' EulerDiscreteScheduler.step (defaults: plain Euler, no noise).
struct EulerChurn {
  double s_churn = 0.0;
  double s_tmin = 0.0;
  double s_tmax = std::numeric_limits<double>::infinity();
  double s_noise = 1.0;
};

class EulerScheduler : public EulerFamilyScheduler {
 public:
  explicit EulerScheduler(ScheduleConfig cfg, EulerChurn churn = {});
  std::string name() const override { return "euler"; }

  bool step_needs_noise(int64_t i) const override { return gamma(i) > 0; }
  StepResult step(const at::Tensor& model_output, int64_t i, const at::Tensor& x,
                  const NoiseSource& noise = {}) override;

 private:
  double gamma(int64_t i) const;  // churn factor of step i (0 without churn)
  EulerChurn churn_;
};

}  // namespace iris
