#include "diffusion/schedulers/factory.h"

#include <cmath>

#include "core/error.h"
#include "diffusion/schedulers/ddim.h"
#include "diffusion/schedulers/dpmpp_2m.h"
#include "diffusion/schedulers/euler_ancestral.h"
#include "diffusion/schedulers/lcm.h"

namespace iris {

const std::vector<std::string>& scheduler_names() {
  static const std::vector<std::string> names = {"ddim", "euler", "euler_a", "dpmpp_2m", "lcm"};
  return names;
}

std::string scheduler_name_for_class(const std::string& cls_in) {
  std::string cls = cls_in;
  if (cls.rfind("diffusers.", 0) == 0) cls = cls.substr(10);
  if (cls == "DDIMScheduler") return "ddim";
  if (cls == "EulerDiscreteScheduler") return "euler";
  if (cls == "EulerAncestralDiscreteScheduler") return "euler_a";
  if (cls == "DPMSolverMultistepScheduler") return "dpmpp_2m";
  if (cls == "LCMScheduler") return "lcm";
  return "";
}

std::unique_ptr<Scheduler> make_scheduler(const std::string& name, const Json& config,
                                          const SchedulerOptions& opt) {
  auto reject = [&](const std::string& what) { throw ConfigError("sampler \"" + name + "\": " + what); };
  SchedulerKind kind;
  if (name == "ddim") kind = SchedulerKind::DDIM;
  else if (name == "euler") kind = SchedulerKind::Euler;
  else if (name == "euler_a") kind = SchedulerKind::EulerAncestral;
  else if (name == "dpmpp_2m") kind = SchedulerKind::DPMSolverMultistep;
  else if (name == "lcm") kind = SchedulerKind::LCM;
  else {
    std::string known;
    for (const std::string& n : scheduler_names()) known += (known.empty() ? "" : ", ") + n;
    throw ConfigError("unknown sampler \"" + name + "\" (known: " + known + ")");
  }
  const Json cfg_json = config.is_null() ? Json::object() : config;
  ScheduleConfig cfg = parse_schedule_config(cfg_json, kind);

  const bool sigma_based = kind != SchedulerKind::DDIM && kind != SchedulerKind::LCM;
  if (!sigma_based) {
    // LCM/DDIM configs carry no use_karras_sigmas; only the option can ask for it.
    if (opt.karras) reject("Karras sigmas need a sigma-based sampler (euler, euler_a, dpmpp_2m)");
    cfg.use_karras_sigmas = false;
  } else {
    cfg.use_karras_sigmas = cfg.use_karras_sigmas || opt.karras;
  }
  if (opt.eta != 0.0 && kind != SchedulerKind::DDIM) reject("eta applies to ddim only");
  const bool churn = opt.churn.s_churn != 0.0;
  if (churn && kind != SchedulerKind::Euler) reject("s_churn applies to euler only");

  switch (kind) {
    case SchedulerKind::DDIM: return std::make_unique<DDIMScheduler>(std::move(cfg), opt.eta);
    case SchedulerKind::Euler: return std::make_unique<EulerScheduler>(std::move(cfg), opt.churn);
    case SchedulerKind::EulerAncestral: return std::make_unique<EulerAncestralScheduler>(std::move(cfg));
    case SchedulerKind::DPMSolverMultistep: return std::make_unique<DPMSolverMultistepScheduler>(std::move(cfg));
    case SchedulerKind::LCM: return std::make_unique<LCMScheduler>(std::move(cfg));
  }
  return nullptr;
}

}  // namespace iris
