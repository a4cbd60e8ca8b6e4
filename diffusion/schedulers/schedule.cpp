#include "diffusion/schedulers/schedule.h"

#include <algorithm>
#include <cfenv>
#include <cmath>

#include "core/error.h"

namespace iris {

namespace {

const char* kind_name(SchedulerKind k) {
  switch (k) {
    case SchedulerKind::DDIM: return "DDIMScheduler";
    case SchedulerKind::Euler: return "EulerDiscreteScheduler";
    case SchedulerKind::EulerAncestral: return "EulerAncestralDiscreteScheduler";
    case SchedulerKind::DPMSolverMultistep: return "DPMSolverMultistepScheduler";
    case SchedulerKind::LCM: return "LCMScheduler";
  }
  return "?";
}

[[noreturn]] void bad_value(const std::string& what, const std::string& key, const std::string& value,
                            const std::string& allowed) {
  throw ConfigError(join_context(what, "key \"" + key + "\": unsupported value " + value +
                                           (allowed.empty() ? "" : " (supported: " + allowed + ")")));
}

// A float that configs may also write as a string ("-inf": diffusers' JSON of float('-inf')).
double json_float_or_inf(const Json& j, const std::string& key, double fallback, const std::string& what) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (it->is_string()) {
    const std::string s = it->get<std::string>();
    if (s == "-inf" || s == "-Infinity") return -std::numeric_limits<double>::infinity();
    if (s == "inf" || s == "Infinity") return std::numeric_limits<double>::infinity();
    bad_value(what, key, "\"" + s + "\"", "a number, \"-inf\"");
  }
  return json_number(j, key, fallback, what);
}

}  // namespace

const char* to_string(PredictionType p) {
  switch (p) {
    case PredictionType::Epsilon: return "epsilon";
    case PredictionType::VPrediction: return "v_prediction";
    case PredictionType::Sample: return "sample";
  }
  return "?";
}

const char* to_string(TimestepSpacing s) {
  switch (s) {
    case TimestepSpacing::Leading: return "leading";
    case TimestepSpacing::Trailing: return "trailing";
    case TimestepSpacing::Linspace: return "linspace";
  }
  return "?";
}

at::Tensor prediction_target(PredictionType type, const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& acp) {
  switch (type) {
    case PredictionType::VPrediction: return acp.sqrt() * noise - (1 - acp).sqrt() * x0;
    case PredictionType::Sample: return x0;
    case PredictionType::Epsilon: break;
  }
  return noise;
}

ScheduleConfig parse_schedule_config(const Json& j, SchedulerKind kind) {
  const std::string what = std::string("scheduler config (") + kind_name(kind) + ")";
  if (!j.is_object()) throw ConfigError(what + ": expected a JSON object");
  ScheduleConfig c;
  // Class defaults that differ from the struct's.
  if (kind != SchedulerKind::DDIM && kind != SchedulerKind::LCM) c.timestep_spacing = TimestepSpacing::Linspace;
  const bool lcm = kind == SchedulerKind::LCM;  // LCMScheduler defaults to the SD betas
  if (lcm) {
    c.beta_start = 0.00085;
    c.beta_end = 0.012;
    c.beta_schedule = BetaSchedule::ScaledLinear;
  }

  c.num_train_timesteps = json_int(j, "num_train_timesteps", c.num_train_timesteps, what);
  if (c.num_train_timesteps < 2 || c.num_train_timesteps > 100000)
    bad_value(what, "num_train_timesteps", std::to_string(c.num_train_timesteps), "2..100000");
  c.beta_start = json_number(j, "beta_start", c.beta_start, what);
  c.beta_end = json_number(j, "beta_end", c.beta_end, what);
  if (!(c.beta_start > 0 && c.beta_start < 1)) bad_value(what, "beta_start", std::to_string(c.beta_start), "(0, 1)");
  if (!(c.beta_end > 0 && c.beta_end < 1)) bad_value(what, "beta_end", std::to_string(c.beta_end), "(0, 1)");

  const std::string schedule = json_string(j, "beta_schedule", lcm ? "scaled_linear" : "linear", what);
  if (schedule == "linear") c.beta_schedule = BetaSchedule::Linear;
  else if (schedule == "scaled_linear") c.beta_schedule = BetaSchedule::ScaledLinear;
  else if (schedule == "squaredcos_cap_v2") c.beta_schedule = BetaSchedule::SquaredCosCapV2;
  else bad_value(what, "beta_schedule", "\"" + schedule + "\"", "linear, scaled_linear, squaredcos_cap_v2");

  if (auto it = j.find("trained_betas"); it != j.end() && !it->is_null()) {
    if (!it->is_array()) bad_value(what, "trained_betas", it->dump(), "a list of numbers");
    for (const Json& b : *it) {
      if (!b.is_number() || !(b.get<double>() > 0 && b.get<double>() < 1))
        bad_value(what, "trained_betas", b.dump(), "numbers in (0, 1)");
      c.trained_betas.push_back(b.get<double>());
    }
    if (!c.trained_betas.empty()) c.num_train_timesteps = static_cast<int64_t>(c.trained_betas.size());
  }
  c.rescale_betas_zero_snr = json_bool(j, "rescale_betas_zero_snr", false, what);

  const std::string pred = json_string(j, "prediction_type", "epsilon", what);
  if (pred == "epsilon") c.prediction_type = PredictionType::Epsilon;
  else if (pred == "v_prediction") c.prediction_type = PredictionType::VPrediction;
  else if (pred == "sample" || pred == "original_sample") c.prediction_type = PredictionType::Sample;
  else bad_value(what, "prediction_type", "\"" + pred + "\"", "epsilon, v_prediction, sample");

  const std::string spacing = json_string(j, "timestep_spacing", to_string(c.timestep_spacing), what);
  if (spacing == "leading") c.timestep_spacing = TimestepSpacing::Leading;
  else if (spacing == "trailing") c.timestep_spacing = TimestepSpacing::Trailing;
  else if (spacing == "linspace") c.timestep_spacing = TimestepSpacing::Linspace;
  else bad_value(what, "timestep_spacing", "\"" + spacing + "\"", "leading, trailing, linspace");
  c.steps_offset = json_int(j, "steps_offset", 0, what);
  if (c.steps_offset < 0 || c.steps_offset >= c.num_train_timesteps)
    bad_value(what, "steps_offset", std::to_string(c.steps_offset), "0..num_train_timesteps-1");

  c.set_alpha_to_one = json_bool(j, "set_alpha_to_one", true, what);
  c.clip_sample = json_bool(j, "clip_sample", kind == SchedulerKind::DDIM, what);  // LCM: false
  c.clip_sample_range = json_number(j, "clip_sample_range", 1.0, what);
  c.thresholding = json_bool(j, "thresholding", false, what);
  c.dynamic_thresholding_ratio = json_number(j, "dynamic_thresholding_ratio", 0.995, what);
  c.sample_max_value = json_number(j, "sample_max_value", 1.0, what);
  if (c.thresholding && kind != SchedulerKind::DDIM && kind != SchedulerKind::DPMSolverMultistep && !lcm)
    bad_value(what, "thresholding", "true", "only DDIM, DPM-Solver and LCM threshold");

  c.use_karras_sigmas = json_bool(j, "use_karras_sigmas", false, what);
  if (j.contains("sigma_min") && !j["sigma_min"].is_null()) c.sigma_min = json_number(j, "sigma_min", 0, what);
  if (j.contains("sigma_max") && !j["sigma_max"].is_null()) c.sigma_max = json_number(j, "sigma_max", 0, what);
  const std::string final_sigmas = json_string(j, "final_sigmas_type", "zero", what);
  if (final_sigmas == "zero") c.final_sigma_zero = true;
  else if (final_sigmas == "sigma_min") c.final_sigma_zero = false;
  else bad_value(what, "final_sigmas_type", "\"" + final_sigmas + "\"", "zero, sigma_min");

  // Options of diffusers' classes that Iris does not implement: refuse rather than ignore.
  if (kind == SchedulerKind::Euler) {
    const std::string interp = json_string(j, "interpolation_type", "linear", what);
    if (interp != "linear") bad_value(what, "interpolation_type", "\"" + interp + "\"", "linear");
    const std::string ttype = json_string(j, "timestep_type", "discrete", what);
    if (ttype != "discrete") bad_value(what, "timestep_type", "\"" + ttype + "\"", "discrete");
  }
  if (kind == SchedulerKind::DPMSolverMultistep) {
    const std::string algo = json_string(j, "algorithm_type", "dpmsolver++", what);
    if (algo != "dpmsolver++") bad_value(what, "algorithm_type", "\"" + algo + "\"", "dpmsolver++");
    c.solver_order = json_int(j, "solver_order", 2, what);
    if (c.solver_order != 1 && c.solver_order != 2) bad_value(what, "solver_order", std::to_string(c.solver_order), "1, 2");
    const std::string st = json_string(j, "solver_type", "midpoint", what);
    if (st == "midpoint") c.solver_type_heun = false;
    else if (st == "heun") c.solver_type_heun = true;
    else bad_value(what, "solver_type", "\"" + st + "\"", "midpoint, heun");
    c.lower_order_final = json_bool(j, "lower_order_final", true, what);
    c.euler_at_final = json_bool(j, "euler_at_final", false, what);
    c.lambda_min_clipped = json_float_or_inf(j, "lambda_min_clipped", c.lambda_min_clipped, what);
    if (json_bool(j, "use_lu_lambdas", false, what)) bad_value(what, "use_lu_lambdas", "true", "false");
    if (auto it = j.find("variance_type"); it != j.end() && !it->is_null())
      bad_value(what, "variance_type", it->dump(), "null");
  }
  if (lcm) {
    c.original_inference_steps = json_int(j, "original_inference_steps", 50, what);
    if (c.original_inference_steps < 1 || c.original_inference_steps > c.num_train_timesteps)
      bad_value(what, "original_inference_steps", std::to_string(c.original_inference_steps),
                "1..num_train_timesteps");
    c.timestep_scaling = json_number(j, "timestep_scaling", 10.0, what);
    if (!(c.timestep_scaling > 0)) bad_value(what, "timestep_scaling", std::to_string(c.timestep_scaling), "> 0");
  }
  return c;
}

// ---- training schedule ----

namespace {

// diffusers' rescale_zero_terminal_snr (arXiv:2305.08891, Algorithm 1), in float32 as there.
at::Tensor rescale_zero_terminal_snr(const at::Tensor& betas) {
  at::Tensor alphas = 1.0 - betas;
  at::Tensor abar_sqrt = at::cumprod(alphas, 0).sqrt();
  at::Tensor a0 = abar_sqrt[0].clone();
  at::Tensor aT = abar_sqrt[-1].clone();
  abar_sqrt = (abar_sqrt - aT) * (a0 / (a0 - aT));
  at::Tensor abar = abar_sqrt.pow(2);
  at::Tensor ratios = abar.slice(0, 1) / abar.slice(0, 0, -1);
  return 1.0 - at::cat({abar.slice(0, 0, 1), ratios});
}

}  // namespace

NoiseSchedule make_noise_schedule(const ScheduleConfig& cfg) {
  const int64_t T = cfg.num_train_timesteps;
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  at::Tensor betas;
  if (!cfg.trained_betas.empty()) {
    betas = at::tensor(cfg.trained_betas, at::TensorOptions().dtype(at::kDouble)).to(at::kFloat);
  } else if (cfg.beta_schedule == BetaSchedule::Linear) {
    betas = at::linspace(cfg.beta_start, cfg.beta_end, T, f32);
  } else if (cfg.beta_schedule == BetaSchedule::ScaledLinear) {
    // Linear in sqrt(beta) ("the latent diffusion schedule").
    betas = at::linspace(std::sqrt(cfg.beta_start), std::sqrt(cfg.beta_end), T, f32).pow(2);
  } else {
    // Glide cosine schedule: beta_i = 1 - abar(t_{i+1}) / abar(t_i), capped at 0.999, in float64.
    auto abar = [](double t) {
      const double c = std::cos((t + 0.008) / 1.008 * M_PI / 2);
      return c * c;
    };
    std::vector<double> b(static_cast<size_t>(T));
    for (int64_t i = 0; i < T; ++i) {
      const double t1 = static_cast<double>(i) / T, t2 = static_cast<double>(i + 1) / T;
      b[static_cast<size_t>(i)] = std::min(1 - abar(t2) / abar(t1), 0.999);
    }
    betas = at::tensor(b, at::TensorOptions().dtype(at::kDouble)).to(at::kFloat);
  }
  if (cfg.rescale_betas_zero_snr) betas = rescale_zero_terminal_snr(betas);
  NoiseSchedule s;
  s.betas = betas.contiguous();
  s.alphas_cumprod = at::cumprod(1.0 - betas, 0).contiguous();
  return s;
}

// ---- numpy helpers ----

std::vector<double> np_linspace(double start, double stop, int64_t num) {
  std::vector<double> out;
  if (num <= 0) return out;
  out.resize(static_cast<size_t>(num));
  if (num == 1) {
    out[0] = start;
    return out;
  }
  const double step = (stop - start) / static_cast<double>(num - 1);
  for (int64_t i = 0; i < num; ++i) out[static_cast<size_t>(i)] = static_cast<double>(i) * step + start;
  out.back() = stop;
  return out;
}

double np_interp_index(double x, const std::vector<double>& fp) {
  const int64_t n = static_cast<int64_t>(fp.size());
  if (x <= 0) return fp.front();
  if (x >= static_cast<double>(n - 1)) return fp.back();
  const int64_t j = static_cast<int64_t>(std::floor(x));
  if (static_cast<double>(j) == x) return fp[static_cast<size_t>(j)];
  const double slope = fp[static_cast<size_t>(j + 1)] - fp[static_cast<size_t>(j)];  // dx = 1
  return slope * (x - static_cast<double>(j)) + fp[static_cast<size_t>(j)];
}

double round_half_even(double v) {
  // nearbyint rounds in the current mode, which is round-to-nearest-even unless changed.
  const int old = std::fegetround();
  if (old != FE_TONEAREST) std::fesetround(FE_TONEAREST);
  const double r = std::nearbyint(v);
  if (old != FE_TONEAREST) std::fesetround(old);
  return r;
}

std::vector<double> train_sigmas(const at::Tensor& alphas_cumprod) {
  // float32 like diffusers' ((1 - acp) / acp) ** 0.5, then widened.
  at::Tensor s = ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt().to(at::kDouble).contiguous();
  const double* p = s.data_ptr<double>();
  return std::vector<double>(p, p + s.numel());
}

std::vector<float> log_sigmas_f32(const std::vector<double>& sigmas) {
  std::vector<float> out(sigmas.size());
  for (size_t i = 0; i < sigmas.size(); ++i) out[i] = std::log(static_cast<float>(sigmas[i]));
  return out;
}

std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int64_t n) {
  const double rho = 7.0;
  const double min_inv_rho = std::pow(sigma_min, 1.0 / rho);
  const double max_inv_rho = std::pow(sigma_max, 1.0 / rho);
  std::vector<double> ramp = np_linspace(0.0, 1.0, n);
  for (double& r : ramp) r = std::pow(max_inv_rho + r * (min_inv_rho - max_inv_rho), rho);
  return ramp;
}

double sigma_to_t(double sigma, const std::vector<float>& log_sigmas) {
  const int64_t n = static_cast<int64_t>(log_sigmas.size());
  const double log_sigma = std::log(std::max(sigma, 1e-10));
  // numpy compares `log_sigma - log_sigmas >= 0` in float32 (a float64 scalar against a
  // float32 array): the index of the last train sigma at or below `sigma`.
  const float ls32 = static_cast<float>(log_sigma);
  int64_t count = 0;
  for (float l : log_sigmas) count += (ls32 - l >= 0.0f) ? 1 : 0;
  int64_t low = std::min(std::max<int64_t>(count - 1, 0), n - 2);
  const double lo = log_sigmas[static_cast<size_t>(low)], hi = log_sigmas[static_cast<size_t>(low + 1)];
  double w = (lo - log_sigma) / (lo - hi);
  w = std::min(std::max(w, 0.0), 1.0);
  return (1.0 - w) * static_cast<double>(low) + w * static_cast<double>(low + 1);
}

std::vector<double> spaced_timesteps(TimestepSpacing spacing, int64_t T, int64_t n, int64_t steps_offset,
                                     bool round_linspace) {
  std::vector<double> ts(static_cast<size_t>(n));
  switch (spacing) {
    case TimestepSpacing::Linspace: {
      std::vector<double> v = np_linspace(0.0, static_cast<double>(T - 1), n);
      for (int64_t i = 0; i < n; ++i) {
        const double x = v[static_cast<size_t>(n - 1 - i)];
        ts[static_cast<size_t>(i)] = round_linspace ? round_half_even(x) : x;
      }
      break;
    }
    case TimestepSpacing::Leading: {
      // Integer multiples of T // n from 0, shifted by steps_offset (1 in SD configs).
      const int64_t ratio = T / n;
      for (int64_t i = 0; i < n; ++i) ts[static_cast<size_t>(i)] = static_cast<double>((n - 1 - i) * ratio + steps_offset);
      break;
    }
    case TimestepSpacing::Trailing: {
      // round(T - i*T/n) - 1. diffusers builds this with np.arange(T, 0, -T/n), whose float
      // length is n+1 for some n (e.g. 61); we always plan exactly n steps.
      const double ratio = static_cast<double>(T) / static_cast<double>(n);
      for (int64_t i = 0; i < n; ++i)
        ts[static_cast<size_t>(i)] = round_half_even(static_cast<double>(T) + static_cast<double>(i) * -ratio) - 1;
      break;
    }
  }
  return ts;
}

}  // namespace iris
