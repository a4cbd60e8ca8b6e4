#pragma once
// Euler ancestral, as diffusers' EulerAncestralDiscreteScheduler (k-diffusion's
// sample_euler_ancestral with eta 1): step to sigma_down deterministically, then add fresh
// noise of std sigma_up, where sigma_down^2 + sigma_up^2 = sigma_next^2.
// Every step draws noise (the last one with sigma_up = 0 too, as diffusers, so a seeded
// generator advances the same way).
//
// diffusers 0.29.2 has no Karras option for this class; with use_karras_sigmas Iris plans
// sigmas exactly as EulerDiscreteScheduler does.
#include <utility>

#include "diffusion/schedulers/euler.h"

namespace iris {

class EulerAncestralScheduler : public EulerFamilyScheduler {
 public:
  using EulerFamilyScheduler::EulerFamilyScheduler;
  std::string name() const override { return "euler_a"; }

  // {sigma_up, sigma_down} of step i.
  std::pair<double, double> ancestral_sigmas(int64_t i) const;

  bool step_needs_noise(int64_t /*i*/) const override { return true; }
  StepResult step(const at::Tensor& model_output, int64_t i, const at::Tensor& x,
                  const NoiseSource& noise = {}) override;
};

}  // namespace iris
