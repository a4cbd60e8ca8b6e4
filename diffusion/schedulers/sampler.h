#pragma once
// Sampling loops over a denoiser callback, k-diffusion style: the loop knows the scheduler,
// the caller's denoiser knows the model (UNet, classifier-free guidance, ControlNet...).
//
//   auto sched = make_scheduler("euler_a", config);
//   sched->set_timesteps(30);
//   at::Generator gen = make_cpu_generator(seed);
//   at::Tensor x = initial_latents(*sched, seeded_randn({1, 4, 64, 64}, gen, device));
//   x = sample(*sched, denoise, x, gen, progress, preview);
//
// img2img: set_img2img_timesteps(*sched, steps, strength), x = img2img_latents(*sched, x0,
// noise); sample() then runs from the scheduler's begin_index().
#include <functional>

#include <ATen/ATen.h>

#include "core/progress.h"
#include "diffusion/schedulers/scheduler.h"

namespace iris {

// The model at step `step`: `x_in` is the scaled model input [B, C, H, W], `t` the
// timestep as a 0-dim CPU tensor (int64 or float32). Returns the model output of the
// scheduler's prediction type (eps / v / x0), shaped like x_in (any float dtype/device).
using Denoiser = std::function<at::Tensor(const at::Tensor& x_in, const at::Tensor& t, int64_t step)>;

// After each step: `step` is the scheduler's step index, `done` in [1, total] counts the
// steps this run made; `x` is the new sample, `x0` the step's estimate of the clean result.
struct StepPreview {
  int64_t step;
  int64_t done;
  int64_t total;
  const at::Tensor& x;
  const at::Tensor& x0;
};
using PreviewFn = std::function<void(const StepPreview&)>;

// Runs steps begin_index() .. num_steps()-1 from `x` (already at the noise level of the
// begin step). Before each step: progress.check_cancel() (throws iris::Cancelled); after:
// progress.report(done, total, "denoise") and the preview. Stochastic steps draw their noise
// from `gen` (CPU generator, see generator_noise) or `noise`. Returns the final sample, float32.
at::Tensor sample(Scheduler& scheduler, const Denoiser& denoise, at::Tensor x, at::Generator& gen,
                  const Progress& progress, const PreviewFn& preview = {});
at::Tensor sample(Scheduler& scheduler, const Denoiser& denoise, at::Tensor x, const NoiseSource& noise,
                  const Progress& progress, const PreviewFn& preview = {});

// txt2img starting latents: unit `noise` scaled by init_noise_sigma().
at::Tensor initial_latents(const Scheduler& scheduler, const at::Tensor& noise);

// img2img planning: validates `strength` (ConfigError outside [0, 1]) and calls
// scheduler.plan_img2img(steps, strength) (diffusers' get_timesteps for most schedulers, see
// img2img_start_step in scheduler.h). Returns the begin index.
int64_t set_img2img_timesteps(Scheduler& scheduler, int64_t steps, double strength);
// The img2img starting latents: x0 noised to the level of begin_index() (x0 itself when no
// step runs).
at::Tensor img2img_latents(const Scheduler& scheduler, const at::Tensor& x0, const at::Tensor& noise);

}  // namespace iris
