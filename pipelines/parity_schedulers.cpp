// Parity runners for the diffusers schedulers (fixtures sched_*.safetensors).
//
// Each fixture stores a chain of model outputs (and, for stochastic samplers, the noise the
// reference drew) and the reference's per-step results. The runner replays the chain through
// Iris's real sampling loop, sample(): a denoiser returns the stored model output of each
// step (and checks the scaled model input and timestep it was given), a noise source hands
// out the recorded noise, and the preview callback compares prev_sample and the x0 estimate.
// Every `output.*` tensor of the fixture must be compared by some line: a line lists those
// left over, so a variant added to a fixture cannot be silently skipped.
#include <set>
#include <string>

#include "core/error.h"
#include "diffusion/schedulers/ddim.h"
#include "diffusion/schedulers/dpmpp_2m.h"
#include "diffusion/schedulers/euler_ancestral.h"
#include "diffusion/schedulers/factory.h"
#include "diffusion/schedulers/sampler.h"
#include "pipelines/parity.h"

namespace iris {

namespace {

// Compares fixture outputs by their name without the "output." prefix and remembers which.
class Checker {
 public:
  Checker(const Fixture& fx, std::vector<ParityLine>& lines) : fx_(fx), lines_(lines) {}

  bool has(const std::string& name) const { return fx_.has("output." + name); }
  void compare_output(const std::string& name, const at::Tensor& got) {
    lines_.push_back(compare(name, got, fx_.tensor("output." + name)));
    seen_.insert("output." + name);
  }
  // Only if the fixture recorded it (variants record subsets).
  void compare_if_present(const std::string& name, const at::Tensor& got) {
    if (has(name)) compare_output(name, got);
  }
  void fail(const std::string& name, const std::string& detail) {
    ParityLine l;
    l.name = name;
    l.detail = detail;
    lines_.push_back(l);
  }
  // One line: every output.* tensor was compared.
  void finish() {
    ParityLine l;
    l.name = "coverage";
    size_t total = 0, missed = 0;
    std::string missing;
    for (const std::string& n : fx_.store->names()) {
      if (n.rfind("output.", 0) != 0) continue;
      ++total;
      if (seen_.count(n)) continue;
      ++missed;
      missing += (missing.empty() ? "" : ", ") + n;
    }
    l.pass = missed == 0;
    l.detail = std::to_string(total - missed) + "/" + std::to_string(total) + " outputs compared" +
               (l.pass ? "" : "; not compared: " + missing);
    lines_.push_back(l);
  }
  const Fixture& fx() const { return fx_; }

 private:
  const Fixture& fx_;
  std::vector<ParityLine>& lines_;
  std::set<std::string> seen_;
};

int64_t fixture_steps(const Fixture& fx) {
  if (fx.sidecar.is_object()) {
    const Json& md = fx.sidecar.value("metadata", Json::object());
    if (md.contains("num_inference_steps") && md["num_inference_steps"].is_number_integer())
      return md["num_inference_steps"].get<int64_t>();
  }
  int64_t n = 0;
  while (fx.has("input.model_output." + std::to_string(n))) ++n;
  if (n == 0) throw CheckpointError(fx.path + ": no input.model_output.<i> tensors and no num_inference_steps");
  return n;
}

at::Tensor scalar1(double v) { return at::tensor({static_cast<float>(v)}, at::TensorOptions().dtype(at::kFloat)); }

// Schedule tensors every scheduler fixture may hold (without a prefix).
void compare_schedule(Checker& c, const Scheduler& s, const std::string& prefix = "") {
  c.compare_if_present(prefix + "timesteps", s.timesteps());
  if (s.sigmas().defined()) c.compare_if_present(prefix + "sigmas", s.sigmas());
  if (!prefix.empty()) return;
  c.compare_if_present("betas", s.betas());
  c.compare_if_present("alphas_cumprod", s.alphas_cumprod());
  c.compare_if_present("init_noise_sigma", scalar1(s.init_noise_sigma()));
  if (auto* ddim = dynamic_cast<const DDIMScheduler*>(&s))
    c.compare_if_present("final_alpha_cumprod", scalar1(ddim->final_alpha_cumprod()));
}

// Replays the stored chain from input.sample0 through sample(). `prefix` selects the
// variant's outputs ("", "eta0.5.", "vpred."); `noise_name` the recorded per-step noise
// (input.<noise_name>.<i>), empty for deterministic samplers; `x0_name` the fixture's name
// of the step's x0 estimate.
void replay_chain(Checker& c, Scheduler& s, const std::string& prefix, const std::string& noise_name,
                  const std::string& x0_name) {
  const Fixture& fx = c.fx();
  const std::string tag = prefix.empty() ? "" : prefix;
  int64_t current = -1;
  bool t_ok = true;

  Denoiser denoise = [&](const at::Tensor& x_in, const at::Tensor& t, int64_t i) {
    current = i;
    c.compare_if_present(tag + "scaled_model_input." + std::to_string(i), x_in);
    if (t.item<double>() != s.timesteps()[i].item<double>()) t_ok = false;
    return fx.tensor("input.model_output." + std::to_string(i));
  };
  NoiseSource noise;
  if (!noise_name.empty()) {
    noise = [&](const at::Tensor& like) {
      at::Tensor n = fx.tensor("input." + noise_name + "." + std::to_string(current));
      return n.to(like.device());
    };
  }
  PreviewFn preview = [&](const StepPreview& p) {
    c.compare_if_present(tag + "prev_sample." + std::to_string(p.step), p.x);
    c.compare_if_present(tag + x0_name + "." + std::to_string(p.step), p.x0);
  };
  sample(s, denoise, fx.tensor("input.sample0"), noise, Progress{}, preview);
  if (!t_ok) c.fail(tag + "denoiser_timesteps", "the denoiser was given a timestep other than timesteps[i]");
}

Json with_key(Json cfg, const std::string& key, const Json& value) {
  cfg[key] = value;
  return cfg;
}

void run_ddim(const Fixture& fx, std::vector<ParityLine>& lines) {
  Checker c(fx, lines);
  const int64_t steps = fixture_steps(fx);
  // eta 0 with the fixture's prediction type: the main chain.
  auto s = make_scheduler("ddim", fx.config);
  s->set_timesteps(steps);
  compare_schedule(c, *s);
  replay_chain(c, *s, "", "", "pred_original_sample");
  // eta 0.5 with the recorded variance noise.
  SchedulerOptions eta;
  eta.eta = 0.5;
  auto s_eta = make_scheduler("ddim", fx.config, eta);
  s_eta->set_timesteps(steps);
  replay_chain(c, *s_eta, "eta0.5.", "variance_noise", "pred_original_sample");
  // The same model outputs read as v-predictions.
  auto s_v = make_scheduler("ddim", with_key(fx.config, "prediction_type", "v_prediction"));
  s_v->set_timesteps(steps);
  replay_chain(c, *s_v, "vpred.", "", "pred_original_sample");
  c.finish();
}

void run_euler(const Fixture& fx, std::vector<ParityLine>& lines) {
  Checker c(fx, lines);
  const int64_t steps = fixture_steps(fx);
  auto s = make_scheduler("euler", fx.config);
  s->set_timesteps(steps);
  compare_schedule(c, *s);
  replay_chain(c, *s, "", "", "pred_original_sample");
  auto trailing = make_scheduler("euler", with_key(fx.config, "timestep_spacing", "trailing"));
  trailing->set_timesteps(steps);
  compare_schedule(c, *trailing, "trailing.");
  c.finish();
}

void run_euler_ancestral(const Fixture& fx, std::vector<ParityLine>& lines) {
  Checker c(fx, lines);
  const int64_t steps = fixture_steps(fx);
  auto s = make_scheduler("euler_a", fx.config);
  s->set_timesteps(steps);
  compare_schedule(c, *s);
  replay_chain(c, *s, "", "noise", "pred_original_sample");
  const auto& ea = dynamic_cast<const EulerAncestralScheduler&>(*s);
  for (int64_t i = 0; i < steps; ++i) {
    const auto [up, down] = ea.ancestral_sigmas(i);
    c.compare_if_present("sigma_up." + std::to_string(i), scalar1(up));
    c.compare_if_present("sigma_down." + std::to_string(i), scalar1(down));
  }
  c.finish();
}

void run_dpmpp(const Fixture& fx, std::vector<ParityLine>& lines) {
  Checker c(fx, lines);
  const int64_t steps = fixture_steps(fx);
  auto s = make_scheduler("dpmpp_2m", fx.config);
  s->set_timesteps(steps);
  compare_schedule(c, *s);
  replay_chain(c, *s, "", "", "data_prediction");
  auto plain = make_scheduler("dpmpp_2m", with_key(fx.config, "use_karras_sigmas", false));
  plain->set_timesteps(steps);
  compare_schedule(c, *plain, "nokarras.");
  c.finish();
}

}  // namespace

void register_scheduler_parity(ParityRegistry& r) {
  r.add("diffusers.DDIMScheduler", run_ddim);
  r.add("diffusers.EulerDiscreteScheduler", run_euler);
  r.add("diffusers.EulerAncestralDiscreteScheduler", run_euler_ancestral);
  r.add("diffusers.DPMSolverMultistepScheduler", run_dpmpp);
}

}  // namespace iris
