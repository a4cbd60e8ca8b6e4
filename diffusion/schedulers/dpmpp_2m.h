#pragma once
// DPM-Solver++ (Lu et al. 2022, arXiv:2211.01095) multistep, order 1 or 2, as diffusers'
// DPMSolverMultistepScheduler with algorithm_type "dpmsolver++" ("DPM++ 2M", with Karras
// sigmas "DPM++ 2M Karras").
//
// The sample lives in VP space (no input scaling, init_noise_sigma 1). For a sigma s:
// alpha = 1/sqrt(s^2+1), sigma_t = s*alpha, lambda = log(alpha) - log(sigma_t) (half log-SNR).
// Each step converts the model output into a data prediction x0 (kept as history), then
//   first order:  x_t = (sigma_t/sigma_s) x - alpha_t (e^-h - 1) D0,   h = lambda_t - lambda_s
//   second order: adds the midpoint (or Heun) correction with D1 = (D0 - D0_prev) / r,
//                 r = h_prev / h.
// The first step of a run is first order (no history), and so is the last one when
// lower_order_final applies (< 15 steps) or the final sigma is 0.
#include <vector>

#include "diffusion/schedulers/scheduler.h"

namespace iris {

class DPMSolverMultistepScheduler : public Scheduler {
 public:
  explicit DPMSolverMultistepScheduler(ScheduleConfig cfg);
  std::string name() const override { return "dpmpp_2m"; }

  // alpha_t x0 + sigma_t noise at the sigma of step i.
  at::Tensor add_noise(const at::Tensor& x0, const at::Tensor& noise, int64_t i) const override;
  StepResult step(const at::Tensor& model_output, int64_t i, const at::Tensor& x,
                  const NoiseSource& noise = {}) override;
  // The order step i used (1 or 2); valid after that step ran.
  int last_order() const { return last_order_; }

 protected:
  void plan(int64_t n) override;
  void reset_state() override;

 private:
  at::Tensor data_prediction(const at::Tensor& model_output, const at::Tensor& x, double sigma) const;

  std::vector<at::Tensor> history_;  // x0 predictions of the previous steps, oldest first
  int64_t last_step_ = -1;           // index of the step that produced history_.back()
  int last_order_ = 0;
};

}  // namespace iris
