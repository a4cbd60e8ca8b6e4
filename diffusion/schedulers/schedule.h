#pragma once
// The noise schedule shared by every scheduler: a diffusers `scheduler_config.json` parsed
// into ScheduleConfig (with the scheduler class's own defaults for absent keys), the
// training betas / alphas_cumprod, and the small numeric helpers the schedulers use to
// place their inference timesteps and sigmas.
//
// Precision follows diffusers 0.29.2 exactly where it decides values that are compared
// bit for bit (integer timesteps): betas and alphas_cumprod are float32 ATen ops (the same
// kernels torch ran), train sigmas are float32, and timestep / Karras arithmetic is float64
// as numpy does it.
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "core/json_util.h"

namespace iris {

enum class SchedulerKind { DDIM, Euler, EulerAncestral, DPMSolverMultistep, LCM };

enum class BetaSchedule { Linear, ScaledLinear, SquaredCosCapV2 };
// What the model predicts: noise (eps), velocity (v = alpha*eps - sigma*x0) or x0 itself.
enum class PredictionType { Epsilon, VPrediction, Sample };
// What a model predicting `type` is trained toward for x_t = sqrt(acp) x0 + sqrt(1 - acp) noise:
// noise, v = sqrt(acp) noise - sqrt(1 - acp) x0, or x0. acp broadcasts against x0 ([B, 1, 1, 1]).
at::Tensor prediction_target(PredictionType type, const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& acp);
// How inference timesteps are spread over [0, num_train_timesteps) (arXiv:2305.08891, Table 2).
enum class TimestepSpacing { Leading, Trailing, Linspace };

struct ScheduleConfig {
  // Training noise schedule.
  int64_t num_train_timesteps = 1000;
  double beta_start = 0.0001;
  double beta_end = 0.02;
  BetaSchedule beta_schedule = BetaSchedule::Linear;
  std::vector<double> trained_betas;  // non-empty: used instead of beta_schedule
  bool rescale_betas_zero_snr = false;

  PredictionType prediction_type = PredictionType::Epsilon;
  TimestepSpacing timestep_spacing = TimestepSpacing::Leading;  // class default: see parse
  int64_t steps_offset = 0;

  // DDIM.
  bool set_alpha_to_one = true;  // alpha_cumprod "before" step 0 (the final one) is 1, else acp[0]
  bool clip_sample = true;
  double clip_sample_range = 1.0;

  // Dynamic thresholding of x0 (Imagen), DDIM and DPM-Solver.
  bool thresholding = false;
  double dynamic_thresholding_ratio = 0.995;
  double sample_max_value = 1.0;

  // Sigma-based schedulers (Euler, Euler ancestral, DPM-Solver).
  bool use_karras_sigmas = false;
  std::optional<double> sigma_min, sigma_max;  // Euler: Karras range override
  bool final_sigma_zero = true;                // final_sigmas_type "zero" (else "sigma_min")

  // DPM-Solver multistep.
  int64_t solver_order = 2;
  bool solver_type_heun = false;  // solver_type "heun" (else "midpoint")
  bool lower_order_final = true;
  bool euler_at_final = false;
  double lambda_min_clipped = -std::numeric_limits<double>::infinity();

  // LCM.
  int64_t original_inference_steps = 50;  // the distillation schedule's step count
  double timestep_scaling = 10.0;         // boundary-condition time scale
};

// Parses a diffusers scheduler config. Absent (or null) keys take the defaults of the
// diffusers class `kind` stands for (e.g. timestep_spacing is "leading" for DDIM but
// "linspace" for the Euler family and DPM-Solver). Unknown keys are ignored (configs carry
// `_class_name`, `skip_prk_steps`, ...). Invalid values of known keys, and options this
// build does not implement, throw ConfigError naming the key and the value.
ScheduleConfig parse_schedule_config(const Json& config, SchedulerKind kind);

const char* to_string(PredictionType p);
const char* to_string(TimestepSpacing s);

// The training schedule: betas [T] and alphas_cumprod [T], float32 on CPU.
struct NoiseSchedule {
  at::Tensor betas;
  at::Tensor alphas_cumprod;
};
NoiseSchedule make_noise_schedule(const ScheduleConfig& cfg);

// ---- numpy-equivalent helpers (float64) ----

// np.linspace(start, stop, num) with endpoint: start + i*step, the last element exactly stop.
std::vector<double> np_linspace(double start, double stop, int64_t num);
// np.interp(x, [0, 1, ..., n-1], fp) for x in [0, n-1].
double np_interp_index(double x, const std::vector<double>& fp);
// np.round: half to even.
double round_half_even(double v);

// Train sigmas sqrt((1 - acp) / acp) [T], ascending with t (float32 values, as diffusers).
std::vector<double> train_sigmas(const at::Tensor& alphas_cumprod);
// Karras et al. (2022) sigmas: rho=7 ramp from sigma_max down to sigma_min, `n` values.
std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int64_t n);
// The (fractional) training timestep whose sigma is `sigma`: linear interpolation in
// log-sigma between neighbouring train sigmas, clamped to [0, T-1]. `log_sigmas` are the
// float32 logs of train_sigmas(), ascending.
double sigma_to_t(double sigma, const std::vector<float>& log_sigmas);
std::vector<float> log_sigmas_f32(const std::vector<double>& sigmas);

// Timesteps (descending, float64, not yet offset-checked) for `n` steps as the Euler
// family and DDIM place them. Leading and trailing are integral; linspace is integral only
// when `round_linspace` (DDIM rounds, Euler keeps fractions).
std::vector<double> spaced_timesteps(TimestepSpacing spacing, int64_t num_train_timesteps, int64_t n,
                                     int64_t steps_offset, bool round_linspace);

}  // namespace iris
