#include "diffusion/schedulers/sampler.h"

#include <cmath>
#include <sstream>

#include "core/error.h"

namespace iris {

at::Tensor sample(Scheduler& scheduler, const Denoiser& denoise, at::Tensor x, at::Generator& gen,
                  const Progress& progress, const PreviewFn& preview) {
  return sample(scheduler, denoise, std::move(x), generator_noise(gen), progress, preview);
}

at::Tensor sample(Scheduler& scheduler, const Denoiser& denoise, at::Tensor x, const NoiseSource& noise,
                  const Progress& progress, const PreviewFn& preview) {
  if (!scheduler.planned()) throw ConfigError(scheduler.name() + ": sample() before set_timesteps");
  if (!denoise) throw ConfigError(scheduler.name() + ": sample() without a denoiser");
  x = as_f32(x);
  const int64_t begin = scheduler.begin_index(), end = scheduler.num_steps();
  const int64_t total = end - begin;
  for (int64_t i = begin; i < end; ++i) {
    progress.check_cancel();
    const at::Tensor x_in = scheduler.scale_model_input(x, i);
    const at::Tensor out = denoise(x_in, scheduler.timestep(i), i);
    if (!out.defined() || out.sizes() != x.sizes()) {
      std::ostringstream msg;
      msg << scheduler.name() << ": step " << i << ": denoiser returned shape "
          << (out.defined() ? c10::str(out.sizes()) : std::string("(none)")) << ", expected " << x.sizes();
      throw ShapeError(msg.str());
    }
    StepResult r = scheduler.step(out, i, x, noise);
    x = std::move(r.prev_sample);
    progress.report(static_cast<int>(i - begin + 1), static_cast<int>(total), "denoise");
    if (preview) preview(StepPreview{i, i - begin + 1, total, x, r.pred_original_sample});
  }
  return x;
}

at::Tensor initial_latents(const Scheduler& scheduler, const at::Tensor& noise) {
  return as_f32(noise) * scheduler.init_noise_sigma();
}

int64_t set_img2img_timesteps(Scheduler& scheduler, int64_t steps, double strength) {
  img2img_start_step(steps, strength);  // validates steps and strength
  return scheduler.plan_img2img(steps, strength);
}

at::Tensor img2img_latents(const Scheduler& scheduler, const at::Tensor& x0, const at::Tensor& noise) {
  if (scheduler.begin_index() >= scheduler.num_steps()) return as_f32(x0);
  return scheduler.add_noise(x0, noise, scheduler.begin_index());
}

}  // namespace iris
