#pragma once
// DDIM (Song et al. 2020, arXiv:2010.02502), as diffusers' DDIMScheduler.
//
// Step i goes from timestep t = timesteps[i] to t_prev = t - T/n (alphas_cumprod of the
// final step: 1 with set_alpha_to_one, else acp[0]):
//   x0   = model output converted to an x0 estimate (clipped / thresholded if configured)
//   eps  = the matching noise estimate
//   std  = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
//   prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - std^2) eps + std * noise
// eta = 0 is deterministic DDIM; eta = 1 is DDPM-like ancestral sampling.
#include "diffusion/schedulers/scheduler.h"

namespace iris {

class DDIMScheduler : public Scheduler {
 public:
  explicit DDIMScheduler(ScheduleConfig cfg, double eta = 0.0);

  std::string name() const override { return "ddim"; }
  double eta() const { return eta_; }
  void set_eta(double eta);  // ConfigError unless eta >= 0
  // alphas_cumprod "after" the last step (1 with set_alpha_to_one, else acp[0]).
  double final_alpha_cumprod() const { return final_alpha_cumprod_; }

  at::Tensor add_noise(const at::Tensor& x0, const at::Tensor& noise, int64_t i) const override;
  bool step_needs_noise(int64_t /*i*/) const override { return eta_ > 0; }
  StepResult step(const at::Tensor& model_output, int64_t i, const at::Tensor& x,
                  const NoiseSource& noise = {}) override;

 protected:
  void plan(int64_t n) override;

 private:
  double acp(int64_t t) const;  // alphas_cumprod[t], or the final value for t < 0
  std::vector<float> acp_;      // alphas_cumprod as host floats
  double final_alpha_cumprod_;
  double eta_;
};

}  // namespace iris
