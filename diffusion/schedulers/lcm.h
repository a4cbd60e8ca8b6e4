#pragma once
// Latent Consistency Model sampling (Luo et al. 2023, arXiv:2310.04378), as diffusers'
// LCMScheduler: a consistency model maps any noisy latent straight to x0, so each step
// predicts x0 (with the boundary-condition mix c_skip * x + c_out * x0) and re-noises it to
// the next timestep with fresh noise. The last step returns the denoised latent itself.
//
// Timesteps come from the distillation schedule: original_inference_steps (50) evenly spaced
// training timesteps k-1, 2k-1, ..., T-1 (k = T / 50), of which `steps` are picked evenly
// from the top; img2img with strength keeps only the first int(50 * strength) of them and
// runs every planned step (no begin index), as diffusers' LCM img2img pipeline.
// No parity fixture covers LCM: tested against diffusers' known 4-step timesteps
// [999, 759, 499, 259] and an exact-x0 toy model.
#include "diffusion/schedulers/scheduler.h"

namespace iris {

class LCMScheduler : public Scheduler {
 public:
  explicit LCMScheduler(ScheduleConfig cfg);
  std::string name() const override { return "lcm"; }

  // c_skip and c_out of timestep t (sigma_data 0.5, t scaled by timestep_scaling).
  std::pair<double, double> boundary_scalings(double t) const;

  int64_t plan_img2img(int64_t steps, double strength) override;
  // sqrt(acp) x0 + sqrt(1 - acp) noise at timestep i (as DDIM).
  at::Tensor add_noise(const at::Tensor& x0, const at::Tensor& noise, int64_t i) const override;
  bool step_needs_noise(int64_t i) const override { return i != num_steps() - 1; }
  StepResult step(const at::Tensor& model_output, int64_t i, const at::Tensor& x,
                  const NoiseSource& noise = {}) override;

 protected:
  void plan(int64_t n) override { plan_with_strength(n, 1.0); }

 private:
  void plan_with_strength(int64_t n, double strength);
  std::vector<float> acp_;
};

}  // namespace iris
