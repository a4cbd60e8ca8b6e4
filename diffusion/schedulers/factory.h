#pragma once
// Builds a scheduler by sampler name from a diffusers scheduler_config.json.
#include <memory>
#include <string>
#include <vector>

#include "core/json_util.h"
#include "diffusion/schedulers/euler.h"
#include "diffusion/schedulers/scheduler.h"

namespace iris {

struct SchedulerOptions {
  bool karras = false;  // Karras sigmas (euler, euler_a, dpmpp_2m); ORed with use_karras_sigmas
  double eta = 0.0;     // DDIM stochasticity (ddim only; 0 = deterministic)
  EulerChurn churn;     // Euler churn (euler only; default none)
};

// name: "ddim", "euler", "euler_a", "dpmpp_2m", "lcm". `config` is the scheduler config (any
// diffusers scheduler's: keys this sampler does not use are ignored; absent keys take the
// sampler's diffusers class defaults). Unknown names, invalid config values and options
// the sampler does not have (karras with ddim, eta with others) throw ConfigError.
std::unique_ptr<Scheduler> make_scheduler(const std::string& name, const Json& config,
                                          const SchedulerOptions& options = {});

// The sampler names make_scheduler knows.
const std::vector<std::string>& scheduler_names();

// The sampler name for a diffusers class name ("DDIMScheduler" or "diffusers.DDIMScheduler"
// → "ddim"); empty if there is none.
std::string scheduler_name_for_class(const std::string& cls);

}  // namespace iris
