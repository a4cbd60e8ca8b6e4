// Schedulers and samplers: diffusers parity on the golden fixtures, determinism, img2img
// truncation, error paths, and a toy exact denoiser every scheduler must follow to x0.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/progress.h"
#include "diffusion/noise.h"
#include "diffusion/schedulers/ddim.h"
#include "diffusion/schedulers/dpmpp_2m.h"
#include "diffusion/schedulers/euler_ancestral.h"
#include "diffusion/schedulers/factory.h"
#include "diffusion/schedulers/lcm.h"
#include "diffusion/schedulers/sampler.h"
#include "pipelines/parity.h"

namespace {

using namespace iris;

// The SD 1.5 scheduler config (as shipped with the PNDM default; DDIM/Euler read it too).
Json sd15_config() {
  return Json::parse(R"({
    "_class_name": "PNDMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1,
    "set_alpha_to_one": false, "clip_sample": false, "skip_prk_steps": true,
    "timestep_spacing": "leading"})");
}

std::string fixture(const std::string& name) { return std::string(IRIS_FIXTURES_DIR) + "/" + name; }

// ---------------------------------------------------------------- parity

class SchedulerParity : public ::testing::TestWithParam<std::string> {};

TEST_P(SchedulerParity, EveryOutputPasses) {
  const ParityOutcome out = run_parity(fixture(GetParam() + ".safetensors"));
  ASSERT_TRUE(out.class_supported) << "no runner for " << out.cls;
  ASSERT_GT(out.lines.size(), 20u);
  for (const ParityLine& l : out.lines)
    EXPECT_TRUE(l.pass) << l.name << ": max_abs " << l.max_abs << " max_rel " << l.max_rel << " " << l.detail;
  // The runner's coverage line proves every output.* tensor was compared.
  EXPECT_EQ(out.lines.back().name, "coverage");
  EXPECT_TRUE(out.passed());
}

INSTANTIATE_TEST_SUITE_P(Fixtures, SchedulerParity,
                         ::testing::Values("sched_ddim", "sched_euler", "sched_euler_ancestral",
                                           "sched_dpmpp_2m_karras"));

// ---------------------------------------------------------------- toy denoisers

// A stand-in model with a fixed "true" x0: from the noisy input it returns the exact
// eps / v / x0 that leads back to x0. (x_in = alpha x0 + sigma eps in VP space.)
struct ExactModel {
  at::Tensor x0;
  const Scheduler* s;

  // VP coefficients of step i.
  std::pair<double, double> alpha_sigma(int64_t i) const {
    if (!s->sigmas().defined()) {
      const int64_t t = s->timesteps()[i].item<int64_t>();
      const double a = s->alphas_cumprod()[t].item<double>();
      return {std::sqrt(a), std::sqrt(1 - a)};
    }
    const double sg = s->sigmas()[i].item<double>();
    const double alpha = 1 / std::sqrt(sg * sg + 1);
    return {alpha, sg * alpha};
  }

  at::Tensor operator()(const at::Tensor& x_in, const at::Tensor& /*t*/, int64_t i) const {
    const auto [alpha, sigma] = alpha_sigma(i);
    const at::Tensor eps = (x_in - x0 * alpha) / sigma;
    switch (s->config().prediction_type) {
      case PredictionType::Epsilon: return eps;
      case PredictionType::VPrediction: return eps * alpha - x0 * sigma;
      case PredictionType::Sample: return x0;
    }
    return eps;
  }
};

struct ToyCase {
  std::string sampler;
  std::string prediction;
  bool karras;
  double eta;
};

// Readable names in CTest instead of a byte dump.
void PrintTo(const ToyCase& c, std::ostream* os) {
  *os << c.sampler << "/" << c.prediction << (c.karras ? "/karras" : "") << (c.eta > 0 ? "/eta" : "");
}

class ExactDenoiser : public ::testing::TestWithParam<ToyCase> {};

TEST_P(ExactDenoiser, LandsOnX0) {
  const ToyCase& tc = GetParam();
  Json cfg = sd15_config();
  cfg["prediction_type"] = tc.prediction;
  cfg["set_alpha_to_one"] = true;  // DDIM's last step then goes all the way to t = -1 (alpha 1)
  SchedulerOptions opt;
  opt.karras = tc.karras;
  opt.eta = tc.eta;
  auto s = make_scheduler(tc.sampler, cfg, opt);
  s->set_timesteps(12);

  at::Generator gen = make_cpu_generator(5);
  const at::Tensor x0 = at::rand({2, 4, 6, 6}, gen) * 1.6 - 0.8;
  ExactModel model{x0, s.get()};
  at::Tensor x = initial_latents(*s, seeded_randn({2, 4, 6, 6}, gen, at::kCPU));
  int previews = 0;
  double worst_x0 = 0;
  PreviewFn preview = [&](const StepPreview& p) {
    ++previews;
    worst_x0 = std::max(worst_x0, (p.x0 - x0).abs().max().item<double>());
  };
  const at::Tensor out = sample(*s, std::ref(model), x, gen, Progress{}, preview);
  EXPECT_EQ(previews, 12);
  EXPECT_LT(worst_x0, 1e-4) << "every step's x0 estimate is the true x0";
  EXPECT_LT((out - x0).abs().max().item<double>(), 1e-4) << tc.sampler << " " << tc.prediction;
}

INSTANTIATE_TEST_SUITE_P(
    AllSamplers, ExactDenoiser,
    ::testing::Values(ToyCase{"ddim", "epsilon", false, 0.0}, ToyCase{"ddim", "v_prediction", false, 0.0},
                      ToyCase{"ddim", "sample", false, 0.0}, ToyCase{"ddim", "epsilon", false, 1.0},
                      ToyCase{"euler", "epsilon", false, 0.0}, ToyCase{"euler", "v_prediction", false, 0.0},
                      ToyCase{"euler", "sample", false, 0.0}, ToyCase{"euler", "epsilon", true, 0.0},
                      ToyCase{"euler_a", "epsilon", false, 0.0}, ToyCase{"euler_a", "v_prediction", false, 0.0},
                      ToyCase{"euler_a", "epsilon", true, 0.0}, ToyCase{"dpmpp_2m", "epsilon", false, 0.0},
                      ToyCase{"dpmpp_2m", "v_prediction", false, 0.0}, ToyCase{"dpmpp_2m", "sample", false, 0.0},
                      ToyCase{"dpmpp_2m", "epsilon", true, 0.0}, ToyCase{"lcm", "epsilon", false, 0.0},
                      ToyCase{"lcm", "v_prediction", false, 0.0}),
    [](const ::testing::TestParamInfo<ToyCase>& info) {
      return info.param.sampler + "_" + info.param.prediction + (info.param.karras ? "_karras" : "") +
             (info.param.eta > 0 ? "_eta" : "");
    });

// A denoiser that is not exact, so stochastic samplers really depend on their noise.
at::Tensor damped(const at::Tensor& x_in, const at::Tensor& /*t*/, int64_t /*i*/) { return x_in * 0.3; }

// ---------------------------------------------------------------- determinism

at::Tensor run_euler_a(uint64_t seed) {
  auto s = make_scheduler("euler_a", sd15_config());
  s->set_timesteps(8);
  at::Generator gen = make_cpu_generator(seed);
  at::Tensor x = initial_latents(*s, seeded_randn({1, 4, 8, 8}, gen, at::kCPU));
  return sample(*s, damped, x, gen, Progress{});
}

TEST(Determinism, SameSeedSameEulerAncestralSample) {
  const at::Tensor a = run_euler_a(1234), b = run_euler_a(1234), c = run_euler_a(1235);
  EXPECT_TRUE(at::equal(a, b)) << "same seed must be bit-identical";
  EXPECT_FALSE(at::allclose(a, c)) << "another seed must give another sample";
}

TEST(Determinism, GeneratorNoiseIsTheSeededCpuStream) {
  at::Generator g1 = make_cpu_generator(77), g2 = make_cpu_generator(77);
  NoiseSource src = generator_noise(g1);
  const at::Tensor like = at::zeros({2, 3, 5});
  const at::Tensor n1 = src(like), n2 = src(like);
  EXPECT_TRUE(at::equal(n1, at::randn({2, 3, 5}, g2)));
  EXPECT_TRUE(at::equal(n2, at::randn({2, 3, 5}, g2))) << "draws advance the shared generator";
}

TEST(Determinism, StochasticStepWithoutNoiseSourceThrows) {
  auto s = make_scheduler("euler_a", sd15_config());
  s->set_timesteps(4);
  const at::Tensor x = at::zeros({1, 4, 2, 2});
  EXPECT_THROW(s->step(x, 0, x), Error);
}

// ---------------------------------------------------------------- img2img

TEST(Img2Img, StartStepFollowsDiffusersGetTimesteps) {
  EXPECT_EQ(img2img_start_step(10, 1.0), 0);
  EXPECT_EQ(img2img_start_step(10, 0.7), 3);
  EXPECT_EQ(img2img_start_step(10, 0.3), 7);   // int(3.0000000000000004) = 3
  EXPECT_EQ(img2img_start_step(50, 0.75), 13);  // int(37.5) = 37
  EXPECT_EQ(img2img_start_step(100, 0.29), 72); // int(28.999999999999996) = 28
  EXPECT_EQ(img2img_start_step(10, 0.05), 10);  // nothing to do
  EXPECT_EQ(img2img_start_step(10, 0.0), 10);
}

TEST(Img2Img, TruncatedRunStartsAtTheBeginStep) {
  auto s = make_scheduler("ddim", sd15_config());
  const int64_t start = set_img2img_timesteps(*s, 10, 0.5);
  EXPECT_EQ(start, 5);
  EXPECT_EQ(s->begin_index(), 5);
  EXPECT_EQ(s->timesteps()[5].item<int64_t>(), 401);

  at::Generator gen = make_cpu_generator(3);
  const at::Tensor x0 = at::randn({1, 4, 4, 4}, gen), noise = at::randn({1, 4, 4, 4}, gen);
  const at::Tensor latents = img2img_latents(*s, x0, noise);
  const double a = s->alphas_cumprod()[401].item<double>();
  EXPECT_TRUE(at::allclose(latents, x0 * std::sqrt(a) + noise * std::sqrt(1 - a), 1e-6, 1e-6));

  std::vector<int64_t> seen;
  std::vector<std::pair<int, int>> reports;
  Progress progress;
  progress.on_step = [&](int step, int total, const std::string& stage) {
    EXPECT_EQ(stage, "denoise");
    reports.emplace_back(step, total);
  };
  Denoiser d = [&](const at::Tensor& x_in, const at::Tensor& t, int64_t i) {
    seen.push_back(i);
    EXPECT_EQ(t.item<int64_t>(), s->timesteps()[i].item<int64_t>());
    return x_in * 0.1;
  };
  sample(*s, d, latents, gen, progress);
  EXPECT_EQ(seen, (std::vector<int64_t>{5, 6, 7, 8, 9}));
  ASSERT_EQ(reports.size(), 5u);
  EXPECT_EQ(reports.front(), std::make_pair(1, 5));
  EXPECT_EQ(reports.back(), std::make_pair(5, 5));
}

TEST(Img2Img, SigmaSchedulersNoiseBySigma) {
  for (const char* name : {"euler", "euler_a"}) {
    auto s = make_scheduler(name, sd15_config());
    set_img2img_timesteps(*s, 20, 0.6);
    EXPECT_EQ(s->begin_index(), 8);
    const at::Tensor x0 = at::ones({1, 1, 2, 2}), noise = at::full({1, 1, 2, 2}, 2.0);
    const double sigma = s->sigmas()[8].item<double>();
    EXPECT_TRUE(at::allclose(img2img_latents(*s, x0, noise), x0 + noise * sigma)) << name;
  }
  auto dpm = make_scheduler("dpmpp_2m", sd15_config());
  set_img2img_timesteps(*dpm, 20, 0.6);
  const double sg = dpm->sigmas()[8].item<double>(), alpha = 1 / std::sqrt(sg * sg + 1);
  const at::Tensor x0 = at::ones({1, 1, 2, 2}), noise = at::full({1, 1, 2, 2}, 2.0);
  EXPECT_TRUE(at::allclose(img2img_latents(*dpm, x0, noise), x0 * alpha + noise * (sg * alpha)));
}

TEST(Img2Img, MultistepHistoryRestartsAtTheBeginStep) {
  // A DPM++ 2M img2img run from step 4 must equal a fresh scheduler stepped from step 4:
  // the first step of the run is first order.
  auto a = std::make_unique<DPMSolverMultistepScheduler>(parse_schedule_config(sd15_config(), SchedulerKind::DPMSolverMultistep));
  a->set_timesteps(10);
  a->set_begin_index(4);
  at::Tensor x = at::randn({1, 2, 3, 3}, make_cpu_generator(9));
  at::Generator gen = make_cpu_generator(0);
  sample(*a, damped, x, gen, Progress{});
  EXPECT_EQ(a->last_order(), 1);  // the final step (lower_order_final)
  a->set_begin_index(4);
  const at::Tensor mo = x * 0.3;
  a->step(mo, 4, x);
  EXPECT_EQ(a->last_order(), 1);
  a->step(mo, 5, x);
  EXPECT_EQ(a->last_order(), 2);
  a->step(mo, 7, x);  // not consecutive: history restarts
  EXPECT_EQ(a->last_order(), 1);
}

// ---------------------------------------------------------------- errors

template <typename F>
std::string config_error(F&& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("WRONG TYPE: ") + e.what();
  }
  return "NO ERROR";
}

TEST(Errors, UnknownSampler) {
  const std::string msg = config_error([] { make_scheduler("heun_pp", sd15_config()); });
  EXPECT_NE(msg.find("heun_pp"), std::string::npos) << msg;
  EXPECT_NE(msg.find("euler_a"), std::string::npos) << "lists the known names: " << msg;
}

TEST(Errors, BadStepCounts) {
  auto s = make_scheduler("euler", sd15_config());
  std::string msg = config_error([&] { s->set_timesteps(0); });
  EXPECT_NE(msg.find("0"), std::string::npos) << msg;
  EXPECT_EQ(msg.rfind("WRONG", 0), std::string::npos) << msg;
  msg = config_error([&] { s->set_timesteps(1001); });
  EXPECT_NE(msg.find("1001"), std::string::npos) << msg;
  EXPECT_NE(msg.find("num_train_timesteps"), std::string::npos) << msg;
  EXPECT_NE(config_error([&] { s->step(at::zeros({1}), 0, at::zeros({1})); }).find("before set_timesteps"),
            std::string::npos);
}

TEST(Errors, StrengthOutOfRange) {
  auto s = make_scheduler("ddim", sd15_config());
  std::string msg = config_error([&] { set_img2img_timesteps(*s, 10, 1.5); });
  EXPECT_NE(msg.find("1.5"), std::string::npos) << msg;
  EXPECT_NE(msg.find("strength"), std::string::npos) << msg;
  EXPECT_NE(config_error([] { img2img_start_step(10, -0.1); }).find("strength"), std::string::npos);
  EXPECT_NE(config_error([] { img2img_start_step(10, NAN); }).find("strength"), std::string::npos);
}

TEST(Errors, BadConfigValuesAreNamed) {
  Json cfg = sd15_config();
  cfg["beta_schedule"] = "sigmoid";
  std::string msg = config_error([&] { make_scheduler("euler", cfg); });
  EXPECT_NE(msg.find("beta_schedule"), std::string::npos) << msg;
  EXPECT_NE(msg.find("sigmoid"), std::string::npos) << msg;

  cfg = sd15_config();
  cfg["prediction_type"] = "flow";
  msg = config_error([&] { make_scheduler("ddim", cfg); });
  EXPECT_NE(msg.find("flow"), std::string::npos) << msg;

  cfg = sd15_config();
  cfg["timestep_spacing"] = 3;
  msg = config_error([&] { make_scheduler("ddim", cfg); });
  EXPECT_NE(msg.find("timestep_spacing"), std::string::npos) << msg;

  SchedulerOptions karras;
  karras.karras = true;
  msg = config_error([&] { make_scheduler("ddim", sd15_config(), karras); });
  EXPECT_NE(msg.find("Karras"), std::string::npos) << msg;

  SchedulerOptions eta;
  eta.eta = 0.5;
  EXPECT_NE(config_error([&] { make_scheduler("euler", sd15_config(), eta); }).find("eta"), std::string::npos);
  eta.eta = -1;
  EXPECT_NE(config_error([&] { make_scheduler("ddim", sd15_config(), eta); }).find("eta"), std::string::npos);

  cfg = sd15_config();
  cfg["algorithm_type"] = "sde-dpmsolver++";
  msg = config_error([&] { make_scheduler("dpmpp_2m", cfg); });
  EXPECT_NE(msg.find("sde-dpmsolver++"), std::string::npos) << msg;
}

TEST(Errors, DenoiserShapeMismatch) {
  auto s = make_scheduler("euler", sd15_config());
  s->set_timesteps(3);
  Denoiser bad = [](const at::Tensor& x, const at::Tensor&, int64_t) { return x.sum(0); };
  at::Generator gen = make_cpu_generator(1);
  EXPECT_THROW(sample(*s, bad, at::zeros({2, 4, 2, 2}), gen, Progress{}), ShapeError);
}

// ---------------------------------------------------------------- loop behaviour

TEST(Sampler, CancelStopsBetweenSteps) {
  auto s = make_scheduler("dpmpp_2m", sd15_config());
  s->set_timesteps(10);
  CancelToken token;
  Progress progress;
  progress.should_cancel = token.as_callback();
  int calls = 0;
  Denoiser d = [&](const at::Tensor& x, const at::Tensor&, int64_t) {
    if (++calls == 3) token.cancel();
    return x * 0.2;
  };
  at::Generator gen = make_cpu_generator(1);
  EXPECT_THROW(sample(*s, d, at::ones({1, 4, 2, 2}), gen, progress), Cancelled);
  EXPECT_EQ(calls, 3);
}

// ---------------------------------------------------------------- schedules

TEST(Schedule, KarrasSpansThePlannedRange) {
  SchedulerOptions k;
  k.karras = true;
  auto plain = make_scheduler("euler", sd15_config());
  auto karras = make_scheduler("euler", sd15_config(), k);
  plain->set_timesteps(15);
  karras->set_timesteps(15);
  EXPECT_FLOAT_EQ(karras->sigmas()[0].item<float>(), plain->sigmas()[0].item<float>());
  EXPECT_FLOAT_EQ(karras->sigmas()[14].item<float>(), plain->sigmas()[14].item<float>());
  EXPECT_EQ(karras->sigmas()[15].item<float>(), 0.0f);
  // Karras spends more steps at low noise: its middle sigma is below the plain one.
  EXPECT_LT(karras->sigmas()[7].item<float>(), plain->sigmas()[7].item<float>());
  const at::Tensor d = karras->sigmas().slice(0, 1) - karras->sigmas().slice(0, 0, -1);
  EXPECT_TRUE(d.lt(0).all().item<bool>()) << "strictly descending";
}

TEST(Schedule, SpacingsPlanExactlyTheAskedSteps) {
  for (const char* spacing : {"leading", "trailing", "linspace"}) {
    for (const char* name : {"ddim", "euler", "euler_a", "dpmpp_2m"}) {
      Json cfg = sd15_config();
      cfg["timestep_spacing"] = spacing;
      auto s = make_scheduler(name, cfg);
      for (int64_t n : {1, 7, 61, 250, 1000}) {
        if (n == 1000 && std::string(spacing) == "leading") continue;  // below
        s->set_timesteps(n);
        ASSERT_EQ(s->num_steps(), n) << name << " " << spacing;
        const at::Tensor t = s->timesteps().to(at::kDouble);
        EXPECT_GE(t.min().item<double>(), 0) << name << " " << spacing << " " << n;
        EXPECT_LE(t.max().item<double>(), 999) << name << " " << spacing << " " << n;
      }
    }
  }
  // Leading spacing with steps_offset 1 would put step 0 of 1000 steps at t = 1000: DDIM
  // refuses (diffusers indexes past alphas_cumprod), Euler clamps the sigma as np.interp.
  auto leading = make_scheduler("ddim", sd15_config());
  EXPECT_NE(config_error([&] { leading->set_timesteps(1000); }).find("fewer steps"), std::string::npos);
  leading->set_timesteps(999);
  EXPECT_EQ(leading->timesteps()[0].item<int64_t>(), 999);

  Json cfg = sd15_config();
  cfg["timestep_spacing"] = "trailing";
  auto ddim = make_scheduler("ddim", cfg);
  ddim->set_timesteps(4);
  EXPECT_TRUE(at::equal(ddim->timesteps(), at::tensor(std::vector<int64_t>{999, 749, 499, 249})));
}

TEST(Schedule, CosineAndZeroSnrSchedules) {
  Json cfg = sd15_config();
  cfg["beta_schedule"] = "squaredcos_cap_v2";
  auto s = make_scheduler("ddim", cfg);
  EXPECT_LE(s->betas().max().item<double>(), 0.999 + 1e-6);
  EXPECT_GT(s->alphas_cumprod()[0].item<double>(), 0.9999);

  cfg = sd15_config();
  cfg["rescale_betas_zero_snr"] = true;
  cfg["timestep_spacing"] = "trailing";
  cfg["prediction_type"] = "v_prediction";
  cfg["set_alpha_to_one"] = true;
  auto z = make_scheduler("ddim", cfg);
  EXPECT_NEAR(z->alphas_cumprod()[999].item<double>(), 0.0, 1e-7) << "terminal SNR 0";
  // Still lands on x0 with a v model from pure noise.
  z->set_timesteps(10);
  const at::Tensor x0 = at::full({1, 1, 2, 2}, 0.25);
  ExactModel model{x0, z.get()};
  at::Generator gen = make_cpu_generator(2);
  const at::Tensor out = sample(*z, std::ref(model), at::randn({1, 1, 2, 2}, gen), gen, Progress{});
  EXPECT_LT((out - x0).abs().max().item<double>(), 1e-4);
}

TEST(Factory, NamesAndClasses) {
  EXPECT_EQ(scheduler_names().size(), 5u);
  for (const std::string& n : scheduler_names()) EXPECT_EQ(make_scheduler(n, Json::object())->name(), n);
  EXPECT_EQ(scheduler_name_for_class("diffusers.EulerAncestralDiscreteScheduler"), "euler_a");
  EXPECT_EQ(scheduler_name_for_class("DPMSolverMultistepScheduler"), "dpmpp_2m");
  EXPECT_EQ(scheduler_name_for_class("PNDMScheduler"), "");
  // Class defaults: DDIM spaces "leading", the others "linspace".
  EXPECT_EQ(make_scheduler("ddim", Json::object())->config().timestep_spacing, TimestepSpacing::Leading);
  EXPECT_EQ(make_scheduler("euler", Json::object())->config().timestep_spacing, TimestepSpacing::Linspace);
}

// ---------------------------------------------------------------- LCM

TEST(LCM, TimestepsFollowTheDistillationSchedule) {
  auto s = make_scheduler("lcm", Json::object());  // LCMScheduler defaults: SD betas, 50 origin steps
  s->set_timesteps(4);
  EXPECT_TRUE(at::equal(s->timesteps(), at::tensor(std::vector<int64_t>{999, 759, 499, 259})));
  s->set_timesteps(1);
  EXPECT_TRUE(at::equal(s->timesteps(), at::tensor(std::vector<int64_t>{999})));
  // img2img keeps the first int(50 * strength) origin steps and runs all planned steps.
  EXPECT_EQ(set_img2img_timesteps(*s, 4, 0.5), 0);
  EXPECT_TRUE(at::equal(s->timesteps(), at::tensor(std::vector<int64_t>{499, 379, 259, 139})));
  EXPECT_NE(config_error([&] { s->set_timesteps(51); }).find("original_inference_steps"), std::string::npos);
  EXPECT_NE(config_error([&] { set_img2img_timesteps(*s, 4, 0.05); }).find("strength"), std::string::npos);
}

TEST(LCM, LastStepDrawsNoNoise) {
  auto s = make_scheduler("lcm", sd15_config());
  s->set_timesteps(4);
  EXPECT_TRUE(s->step_needs_noise(0));
  EXPECT_FALSE(s->step_needs_noise(3));
  const at::Tensor x = at::ones({1, 1, 2, 2});
  const StepResult r = s->step(x * 0.1, 3, x);  // no noise source needed
  EXPECT_TRUE(at::equal(r.prev_sample, r.pred_original_sample));
  const auto [c_skip, c_out] = dynamic_cast<const LCMScheduler&>(*s).boundary_scalings(259);
  EXPECT_NEAR(c_skip, 0.25 / (2590.0 * 2590.0 + 0.25), 1e-15);
  EXPECT_NEAR(c_out, 2590.0 / std::sqrt(2590.0 * 2590.0 + 0.25), 1e-15);
}

}  // namespace
