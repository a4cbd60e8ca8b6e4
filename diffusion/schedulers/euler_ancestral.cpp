#include "diffusion/schedulers/euler_ancestral.h"

#include <algorithm>
#include <cmath>

namespace iris {

std::pair<double, double> EulerAncestralScheduler::ancestral_sigmas(int64_t i) const {
  check_step(i);
  const double from = sigma_value(i), to = sigma_value(i + 1);
  const double up = std::sqrt(to * to * (from * from - to * to) / (from * from));
  const double down = std::sqrt(std::max(to * to - up * up, 0.0));
  return {up, down};
}

StepResult EulerAncestralScheduler::step(const at::Tensor& model_output, int64_t i, const at::Tensor& x_in,
                                         const NoiseSource& noise) {
  check_step(i);
  const at::Tensor mo = as_f32(model_output);
  const at::Tensor x = as_f32(x_in);
  const double sigma = sigma_value(i);
  const auto [sigma_up, sigma_down] = ancestral_sigmas(i);
  const at::Tensor x0 = predict_x0(mo, x, sigma);
  const at::Tensor d = (x - x0) / sigma;
  at::Tensor prev = x + d * (sigma_down - sigma);
  prev = prev + draw_noise(noise, mo, i) * sigma_up;
  return {prev, x0};
}

}  // namespace iris
