#pragma once
// Generic training loop state: AdamW, LR warm-up + cosine decay, gradient clipping, optional EMA,
// fixed-seed randomness, progress lines and resumable checkpoints. Every trainer uses it.
//
// API summary:
//   TrainerOptions o;  o.steps = 2000; o.lr = 1e-3; o.checkpoint_dir = "runs/vae"; o.name = "vae";
//   Trainer t(named_parameters(*model), o);   // the tensors are updated in place
//   t.resume();                               // loads checkpoint_dir/trainer_state.safetensors if present
//   t.run([&](int64_t step, at::Generator& gen) { return loss_of(batch(t.step_seed()), gen); });
//     // or by hand: while (!t.done()) t.step(loss);   (step() = backward, clip, AdamW, EMA, log, checkpoint)
//   t.save();                                 // atomic; run() saves every checkpoint_every steps and at the end
//   t.swap_ema();                             // parameters <-> EMA weights (e.g. around export)
// Resuming continues bit-identically: the data seed and the generator of each step derive from
// (seed, step) alone, and parameters, moments, EMA and step are stored exactly (F32).
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "core/json_util.h"
#include "core/progress.h"

namespace torch { namespace nn { class Module; } }

namespace iris {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// The module's trainable parameters (requires_grad), under their state_dict names.
NamedTensors named_trainable_parameters(torch::nn::Module& m, const std::string& prefix = "");

struct TrainerOptions {
  std::string name = "train";     // shown in progress lines
  int64_t steps = 1000;           // total optimizer steps
  double lr = 1e-3;               // peak learning rate
  int64_t warmup_steps = 0;       // linear warm-up from lr / warmup_steps
  double min_lr_ratio = 0.1;      // cosine decay from lr down to lr * min_lr_ratio at `steps`
  bool cosine = true;             // false: constant after warm-up
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double weight_decay = 0.01;     // decoupled (AdamW); only tensors with dim >= 2
  double grad_clip = 1.0;         // max global L2 norm; <= 0: off
  double ema_decay = 0.0;         // > 0: keep an exponential moving average of the parameters
  uint64_t seed = 0;
  int64_t log_every = 10;         // progress line every N steps (0: never)
  int64_t checkpoint_every = 0;   // save every N steps (0: only at the end of run())
  std::string checkpoint_dir;     // "" : no checkpoints
  int64_t stop_at = 0;            // > 0: run() returns at this step (saved) though the schedule spans `steps`
  // Progress lines go here (stdout by default); `progress` reports each step and can cancel.
  std::function<void(const std::string&)> log;
  Progress progress;
};

class Trainer {
 public:
  // Throws ConfigError for invalid options, an empty list or duplicate names.
  Trainer(NamedTensors params, TrainerOptions options);

  // Loads checkpoint_dir/trainer_state.safetensors when it exists; returns whether it did.
  // Throws FormatError (corrupt file) / CheckpointError (other parameters or shapes) naming it.
  // `check_extra` sees the checkpoint's extra record before any tensor is compared, so a changed
  // setting that also changes the parameter set is reported as the setting (check_same_settings).
  bool resume(const std::function<void(const Json&)>& check_extra = {});
  // The checks of resume() that need only the checkpoint's header (format, seed, extra record),
  // without building a Trainer: a run can refuse a mismatched resume before it spends minutes
  // loading data. Returns false when checkpoint_dir holds no checkpoint; throws as resume() does.
  static bool check_resumable(const std::string& checkpoint_dir, uint64_t seed,
                              const std::function<void(const Json&)>& check_extra = {});
  // Writes the state atomically into checkpoint_dir (created). No-op without a checkpoint_dir.
  void save() const;
  static std::string state_path(const std::string& checkpoint_dir);

  // One optimizer step on a scalar loss: backward, clip, AdamW, EMA, step += 1, log line,
  // checkpoint when due. Returns the loss value. Throws ConfigError for a non-finite loss.
  double step(const at::Tensor& loss);
  // Runs until `steps` with loss_fn(step, generator) (the generator is seeded from
  // (seed, step)); saves at the end. Checks options.progress for cancellation between steps.
  void run(const std::function<at::Tensor(int64_t step, at::Generator& gen)>& loss_fn);

  bool done() const { return step_ >= options_.steps; }
  int64_t current_step() const { return step_; }
  // A seed for the data of the current step: same (seed, step), same value, resumed or not.
  uint64_t step_seed() const;
  double lr_at(int64_t step) const;  // the LR used for update number step + 1
  double last_grad_norm() const { return last_grad_norm_; }
  const TrainerOptions& options() const { return options_; }
  const NamedTensors& parameters() const { return params_; }
  // EMA copies (empty without EMA). swap_ema() exchanges them with the parameters' values.
  const NamedTensors& ema() const { return ema_; }
  void swap_ema();
  // Free-form JSON the caller stores with the checkpoint (e.g. data statistics).
  Json& extra() { return extra_; }

 private:
  void log_progress(double loss);

  NamedTensors params_, exp_avg_, exp_avg_sq_, ema_;
  TrainerOptions options_;
  int64_t step_ = 0;
  double last_grad_norm_ = 0;
  Json extra_ = Json::object();
  // Progress: running loss over the log window, throughput since this session started.
  double loss_sum_ = 0;
  int64_t loss_count_ = 0, session_start_step_ = 0;
  std::chrono::steady_clock::time_point session_start_;
};

// Deterministic per-step seed (SplitMix64 of seed and step).
uint64_t trainer_step_seed(uint64_t seed, int64_t step);

// A resumed run must compute its steps as the checkpoint's did. `now`: the settings that change
// a step (keys of settings that are off left out, so checkpoints from before a setting existed
// still resume); `saved`: the checkpoint's. Every key of `now` must equal the saved value and no
// saved key may be missing now (a setting switched off). ConfigError naming `where` (the
// checkpoint), the key and both values otherwise.
// `not_yet_known`: saved keys `now` cannot hold yet (an early check, before the data that sets
// them is loaded); they are left to the full check.
void check_same_settings(const Json& saved, const Json& now, const std::string& where,
                         const std::vector<std::string>& not_yet_known = {});
// "1h02m", "3m05s", "12s".
std::string format_duration(double seconds);

}  // namespace iris
