#pragma once
// The scheduler interface: one diffusion "solver" with diffusers' step() semantics.
//
// A scheduler owns the training noise schedule (betas, alphas_cumprod), plans the inference
// steps (set_timesteps), and advances a latent one step given the model's output at that
// step. Steps are addressed by index i in [0, num_steps()), not by timestep value: img2img
// starts at begin_index(), and index-based addressing avoids diffusers' "which of two equal
// timesteps" ambiguity.
//
// Latents stay float32 (any device); step() upcasts a half-precision model output.
// Shapes: x, model_output, noise are all the latent shape [B, C, H, W] (any shape works).
#include <functional>
#include <memory>
#include <string>

#include <ATen/ATen.h>

#include "diffusion/schedulers/schedule.h"

namespace iris {

// What one step produces.
struct StepResult {
  at::Tensor prev_sample;            // x at the next (lower) noise level
  at::Tensor pred_original_sample;   // the x0 estimate of this step (previews)
};

// Supplies the noise a stochastic step adds (Euler ancestral, DDIM with eta > 0, churn):
// returns standard normal noise shaped, typed and placed like `like`. Tests and the parity
// runner inject recorded noise; sampling draws it from a CPU generator.
using NoiseSource = std::function<at::Tensor(const at::Tensor& like)>;

// Noise drawn from `gen` (a CPU generator) as float32 on the CPU, then moved to `like`'s
// device: one seed gives the same stream on CPU and CUDA. Matches diffusers' randn_tensor
// with a CPU generator. `gen` is a shared handle: draws advance the caller's generator.
NoiseSource generator_noise(const at::Generator& gen);

class Scheduler {
 public:
  explicit Scheduler(ScheduleConfig cfg);
  virtual ~Scheduler() = default;
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Short name: "ddim", "euler", "euler_a", "dpmpp_2m", "lcm".
  virtual std::string name() const = 0;
  const ScheduleConfig& config() const { return cfg_; }

  const at::Tensor& betas() const { return sched_.betas; }                    // [T] float32
  const at::Tensor& alphas_cumprod() const { return sched_.alphas_cumprod; }  // [T] float32

  // diffusers set_timesteps(steps): plans `steps` steps, resets the begin index and any
  // multistep history. ConfigError unless 1 <= steps <= num_train_timesteps.
  void set_timesteps(int64_t steps);
  bool planned() const { return timesteps_.defined(); }
  int64_t num_steps() const { return planned() ? timesteps_.size(0) : 0; }
  // [n], descending: int64 (DDIM, DPM-Solver) or float32 (Euler family), as diffusers.
  const at::Tensor& timesteps() const { return timesteps_; }
  // [n+1] float32 noise levels for sigma-based schedulers (last = final sigma); undefined for DDIM.
  const at::Tensor& sigmas() const { return sigmas_; }
  // The timestep of step i as a 0-dim tensor (the UNet's `timestep` input).
  at::Tensor timestep(int64_t i) const;
  double timestep_value(int64_t i) const;

  // Scale of the initial noise for txt2img: latents = randn * init_noise_sigma().
  virtual double init_noise_sigma() const { return 1.0; }

  // img2img: the first step that runs (diffusers set_begin_index). 0 after set_timesteps.
  void set_begin_index(int64_t i);
  int64_t begin_index() const { return begin_index_; }
  // Plans an img2img run at `strength` (ConfigError outside [0, 1]) and returns the begin
  // index. Default: diffusers' get_timesteps, i.e. set_timesteps(steps) and begin at
  // img2img_start_step(steps, strength). LCM instead plans its steps inside the strength range.
  virtual int64_t plan_img2img(int64_t steps, double strength);

  // The model input for step i (Euler family: x / sqrt(sigma^2 + 1); others: x).
  virtual at::Tensor scale_model_input(const at::Tensor& x, int64_t i) const { check_step(i); return x; }

  // Noises a clean x0 to the level of step i: what the sample looks like when step i starts.
  virtual at::Tensor add_noise(const at::Tensor& x0, const at::Tensor& noise, int64_t i) const = 0;

  // True when step i draws noise (then step() needs a NoiseSource).
  virtual bool step_needs_noise(int64_t /*i*/) const { return false; }

  // One diffusers step(): `model_output` is the model's prediction (eps / v / x0 by
  // config().prediction_type) for input scale_model_input(x, i) at timestep(i).
  // Multistep schedulers keep history: call steps in order; a step that does not follow
  // the previous one starts a fresh history (first order).
  virtual StepResult step(const at::Tensor& model_output, int64_t i, const at::Tensor& x,
                          const NoiseSource& noise = {}) = 0;

 protected:
  // Fills timesteps_ (and sigmas_) for n steps; n is already validated.
  virtual void plan(int64_t n) = 0;
  // Called when a run (re)starts: set_timesteps and set_begin_index.
  virtual void reset_state() {}
  // ConfigError unless planned and 0 <= i < num_steps().
  void check_step(int64_t i) const;
  // Noise for step i from `noise`, checked (Error if the source is missing or misshaped).
  at::Tensor draw_noise(const NoiseSource& noise, const at::Tensor& like, int64_t i) const;
  double sigma_value(int64_t i) const;  // sigmas_[i] as double

  ScheduleConfig cfg_;
  NoiseSchedule sched_;
  at::Tensor timesteps_;
  at::Tensor sigmas_;
  int64_t begin_index_ = 0;
};

// diffusers' get_timesteps for img2img: with init = min(int(steps * strength), steps), the
// first step that runs is max(steps - init, 0). ConfigError unless strength is in [0, 1]
// and steps >= 1. strength 1 runs every step; a strength below 1/steps runs none.
int64_t img2img_start_step(int64_t steps, double strength);

// ---- shared pieces of the step formulas ----

// Imagen dynamic thresholding of an x0 estimate [B, ...]: per sample, s = quantile(|x0|,
// ratio) clamped to [1, sample_max_value]; x0 = clamp(x0, -s, s) / s.
at::Tensor dynamic_threshold(const at::Tensor& x0, double ratio, double sample_max_value);

// Float32 view of a tensor for the step arithmetic.
at::Tensor as_f32(const at::Tensor& t);

}  // namespace iris
