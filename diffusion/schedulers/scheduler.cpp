#include "diffusion/schedulers/scheduler.h"

#include <algorithm>
#include <sstream>

#include "core/error.h"
#include "diffusion/noise.h"

namespace iris {

NoiseSource generator_noise(const at::Generator& gen) {
  return [g = at::Generator(gen)](const at::Tensor& like) mutable {
    at::Tensor n = seeded_randn(like.sizes(), g, like.device());
    return n.scalar_type() == like.scalar_type() ? n : n.to(like.scalar_type());
  };
}

Scheduler::Scheduler(ScheduleConfig cfg) : cfg_(std::move(cfg)), sched_(make_noise_schedule(cfg_)) {}

void Scheduler::set_timesteps(int64_t steps) {
  if (steps < 1)
    throw ConfigError(name() + ": number of steps must be at least 1, got " + std::to_string(steps));
  if (steps > cfg_.num_train_timesteps)
    throw ConfigError(name() + ": " + std::to_string(steps) + " steps exceed num_train_timesteps " +
                      std::to_string(cfg_.num_train_timesteps) + " of the schedule");
  plan(steps);
  begin_index_ = 0;
  reset_state();
}

at::Tensor Scheduler::timestep(int64_t i) const {
  check_step(i);
  return timesteps_[i].clone();
}

double Scheduler::timestep_value(int64_t i) const {
  check_step(i);
  return timesteps_[i].item<double>();
}

void Scheduler::set_begin_index(int64_t i) {
  if (!planned()) throw ConfigError(name() + ": set_begin_index before set_timesteps");
  if (i < 0 || i > num_steps())
    throw ConfigError(name() + ": begin index " + std::to_string(i) + " outside [0, " + std::to_string(num_steps()) + "]");
  begin_index_ = i;
  reset_state();
}

int64_t Scheduler::plan_img2img(int64_t steps, double strength) {
  const int64_t start = img2img_start_step(steps, strength);
  set_timesteps(steps);
  // A scheduler may plan fewer steps than asked (DPM-Solver with lambda clipping).
  const int64_t begin = std::min(start, num_steps());
  set_begin_index(begin);
  return begin;
}

int64_t img2img_start_step(int64_t steps, double strength) {
  if (steps < 1) throw ConfigError("img2img: number of steps must be at least 1, got " + std::to_string(steps));
  if (!(strength >= 0.0 && strength <= 1.0)) {
    std::ostringstream msg;
    msg << "img2img: strength must be in [0, 1], got " << strength;
    throw ConfigError(msg.str());
  }
  // int() truncation of the float64 product, as Python.
  const int64_t init = std::min(static_cast<int64_t>(static_cast<double>(steps) * strength), steps);
  return std::max<int64_t>(steps - init, 0);
}

void Scheduler::check_step(int64_t i) const {
  if (!planned()) throw ConfigError(name() + ": step used before set_timesteps");
  if (i < 0 || i >= num_steps())
    throw ConfigError(name() + ": step index " + std::to_string(i) + " outside [0, " + std::to_string(num_steps()) + ")");
}

at::Tensor Scheduler::draw_noise(const NoiseSource& noise, const at::Tensor& like, int64_t i) const {
  if (!noise) throw Error(name() + ": step " + std::to_string(i) + " is stochastic and needs a noise source");
  at::Tensor n = noise(like);
  if (!n.defined() || n.sizes() != like.sizes())
    throw ShapeError(name() + ": step " + std::to_string(i) + ": noise source returned the wrong shape");
  return as_f32(n).to(like.device());
}

double Scheduler::sigma_value(int64_t i) const { return sigmas_[i].item<double>(); }

at::Tensor as_f32(const at::Tensor& t) { return t.scalar_type() == at::kFloat ? t : t.to(at::kFloat); }

at::Tensor dynamic_threshold(const at::Tensor& x0, double ratio, double sample_max_value) {
  const auto shape = x0.sizes().vec();
  at::Tensor flat = as_f32(x0).reshape({shape[0], -1});                      // [B, N]
  at::Tensor s = at::quantile(flat.abs(), ratio, /*dim=*/1);                  // [B]
  s = s.clamp(1.0, sample_max_value).unsqueeze(1);                            // [B, 1]
  return (at::max(at::min(flat, s), -s) / s).reshape(shape);
}

}  // namespace iris
