#include "pipelines/trainer.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>

#include <torch/nn/module.h>

#include "core/error.h"
#include "core/safetensors.h"
#include "core/state_dict.h"
#include "core/tensor_io.h"
#include "diffusion/noise.h"

namespace fs = std::filesystem;

namespace iris {

namespace {

constexpr const char* kStateFile = "trainer_state.safetensors";
constexpr const char* kFormat = "iris.trainer";

// Tensor-name prefixes inside the state file.
constexpr const char* kParam = "param/";
constexpr const char* kExpAvg = "exp_avg/";
constexpr const char* kExpAvgSq = "exp_avg_sq/";
constexpr const char* kEma = "ema/";

NamedTensors zeros_like_all(const NamedTensors& ps) {
  NamedTensors out;
  for (const auto& [n, p] : ps) out.emplace_back(n, at::zeros_like(p, at::MemoryFormat::Contiguous));
  return out;
}

}  // namespace

NamedTensors named_trainable_parameters(torch::nn::Module& m, const std::string& prefix) {
  NamedTensors out;
  for (const auto& kv : m.named_parameters(true))
    if (kv.value().requires_grad()) out.emplace_back(prefix + kv.key(), kv.value());
  return out;
}

void check_same_settings(const Json& saved, const Json& now, const std::string& where,
                         const std::vector<std::string>& not_yet_known) {
  for (const auto& [key, value] : now.items())
    if (saved.value(key, Json()) != value)
      throw ConfigError(where + ": \"" + key + "\" was " + saved.value(key, Json()).dump() + ", now " + value.dump() +
                        "; resume with the same settings");
  for (const auto& [key, value] : saved.items())
    if (!now.contains(key) && std::find(not_yet_known.begin(), not_yet_known.end(), key) == not_yet_known.end())
      throw ConfigError(where + ": \"" + key + "\" was " + value.dump() + ", now off; resume with the same settings");
}

uint64_t trainer_step_seed(uint64_t seed, int64_t step) {
  uint64_t x = seed ^ (0x9e3779b97f4a7c15ull * (static_cast<uint64_t>(step) + 1));
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<int64_t>(std::llround(seconds));
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(s / 3600), static_cast<long long>(s / 60 % 60));
  else if (s >= 60)
    std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  else
    std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(s));
  return buf;
}

Trainer::Trainer(NamedTensors params, TrainerOptions options) : params_(std::move(params)), options_(std::move(options)) {
  const std::string what = "trainer '" + options_.name + "'";
  if (params_.empty()) throw ConfigError(what + ": no trainable parameters");
  std::set<std::string> names;
  for (const auto& [n, p] : params_) {
    if (!names.insert(n).second) throw ConfigError(what + ": duplicate parameter name '" + n + "'");
    if (!p.defined() || !p.is_floating_point()) throw ConfigError(what + ": parameter '" + n + "' is not a float tensor");
  }
  if (options_.steps < 0) throw ConfigError(what + ": steps must be >= 0, got " + std::to_string(options_.steps));
  if (!(options_.lr > 0)) throw ConfigError(what + ": lr must be > 0, got " + std::to_string(options_.lr));
  if (options_.warmup_steps < 0) throw ConfigError(what + ": warmup_steps must be >= 0");
  if (options_.ema_decay < 0 || options_.ema_decay >= 1)
    throw ConfigError(what + ": ema_decay must be in [0, 1), got " + std::to_string(options_.ema_decay));
  if (!(options_.beta1 >= 0 && options_.beta1 < 1 && options_.beta2 >= 0 && options_.beta2 < 1))
    throw ConfigError(what + ": Adam betas must be in [0, 1)");
  exp_avg_ = zeros_like_all(params_);
  exp_avg_sq_ = zeros_like_all(params_);
  if (options_.ema_decay > 0) {
    torch::NoGradGuard no_grad;
    for (const auto& [n, p] : params_) ema_.emplace_back(n, p.detach().clone(at::MemoryFormat::Contiguous));
  }
  if (!options_.log) options_.log = [](const std::string& line) {
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  };
  session_start_ = std::chrono::steady_clock::now();
}

uint64_t Trainer::step_seed() const { return trainer_step_seed(options_.seed, step_); }

double Trainer::lr_at(int64_t step) const {
  const double lr = options_.lr;
  if (options_.warmup_steps > 0 && step < options_.warmup_steps)
    return lr * static_cast<double>(step + 1) / static_cast<double>(options_.warmup_steps);
  if (!options_.cosine) return lr;
  const int64_t span = options_.steps - options_.warmup_steps;
  if (span <= 0) return lr;
  const double t = std::min(1.0, static_cast<double>(step - options_.warmup_steps) / static_cast<double>(span));
  const double lo = lr * options_.min_lr_ratio;
  return lo + 0.5 * (lr - lo) * (1.0 + std::cos(M_PI * t));
}

double Trainer::step(const at::Tensor& loss) {
  if (loss.numel() != 1) throw ShapeError("trainer '" + options_.name + "': the loss must be a scalar");
  const double value = loss.item<double>();
  if (!std::isfinite(value))
    throw ConfigError("trainer '" + options_.name + "': loss is " + std::to_string(value) + " at step " +
                      std::to_string(step_ + 1) + " (lower the learning rate?)");
  for (auto& [n, p] : params_) p.mutable_grad() = at::Tensor();
  loss.backward();

  torch::NoGradGuard no_grad;
  // Global gradient norm (parameters without a gradient did not take part in the loss).
  double sq = 0;
  for (const auto& [n, p] : params_)
    if (p.grad().defined()) sq += p.grad().pow(2).sum().item<double>();
  last_grad_norm_ = std::sqrt(sq);
  const double clip = (options_.grad_clip > 0 && last_grad_norm_ > options_.grad_clip)
                          ? options_.grad_clip / (last_grad_norm_ + 1e-6)
                          : 1.0;

  const double lr = lr_at(step_);
  const int64_t t = step_ + 1;
  const double bc1 = 1.0 - std::pow(options_.beta1, static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(options_.beta2, static_cast<double>(t));
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor& p = params_[i].second;
    if (!p.grad().defined()) continue;
    at::Tensor g = clip != 1.0 ? p.grad() * clip : p.grad();
    if (options_.weight_decay > 0 && p.dim() >= 2) p.mul_(1.0 - lr * options_.weight_decay);
    at::Tensor& m = exp_avg_[i].second;
    at::Tensor& v = exp_avg_sq_[i].second;
    m.mul_(options_.beta1).add_(g, 1.0 - options_.beta1);
    v.mul_(options_.beta2).addcmul_(g, g, 1.0 - options_.beta2);
    // p -= lr * (m / bc1) / (sqrt(v / bc2) + eps)
    const at::Tensor denom = (v / bc2).sqrt_().add_(options_.eps);
    p.addcdiv_(m, denom, -lr / bc1);
    p.mutable_grad() = at::Tensor();
  }
  if (!ema_.empty()) {
    // Warm-started decay: early steps follow the parameters closely.
    const double d = std::min(options_.ema_decay, (1.0 + t) / (10.0 + t));
    for (size_t i = 0; i < params_.size(); ++i) ema_[i].second.mul_(d).add_(params_[i].second, 1.0 - d);
  }
  step_ = t;
  loss_sum_ += value;
  ++loss_count_;
  if (options_.log_every > 0 && (step_ % options_.log_every == 0 || step_ == options_.steps)) log_progress(value);
  options_.progress.report(static_cast<int>(step_), static_cast<int>(options_.steps), options_.name);
  if (options_.checkpoint_every > 0 && step_ % options_.checkpoint_every == 0 && !done()) save();
  return value;
}

void Trainer::log_progress(double) {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - session_start_).count();
  const int64_t done_here = step_ - session_start_step_;
  const double its = elapsed > 0 ? static_cast<double>(done_here) / elapsed : 0.0;
  const double eta = its > 0 ? static_cast<double>(options_.steps - step_) / its : -1;
  char buf[256];
  std::snprintf(buf, sizeof buf, "[%s] step %lld/%lld  loss %.5f  lr %.2e  |g| %.3f  %.2f it/s  elapsed %s  ETA %s",
                options_.name.c_str(), static_cast<long long>(step_), static_cast<long long>(options_.steps),
                loss_count_ ? loss_sum_ / static_cast<double>(loss_count_) : 0.0, lr_at(step_ - 1), last_grad_norm_,
                its, format_duration(elapsed).c_str(), format_duration(eta).c_str());
  options_.log(buf);
  loss_sum_ = 0;
  loss_count_ = 0;
}

void Trainer::run(const std::function<at::Tensor(int64_t step, at::Generator& gen)>& loss_fn) {
  while (!done() && !(options_.stop_at > 0 && step_ >= options_.stop_at)) {
    options_.progress.check_cancel();
    at::Generator gen = make_cpu_generator(step_seed());
    step(loss_fn(step_, gen));
  }
  save();
}

void Trainer::swap_ema() {
  if (ema_.empty()) return;
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor tmp = params_[i].second.detach().clone();
    params_[i].second.copy_(ema_[i].second);
    ema_[i].second.copy_(tmp);
  }
}

std::string Trainer::state_path(const std::string& checkpoint_dir) {
  return (fs::path(checkpoint_dir) / kStateFile).string();
}

void Trainer::save() const {
  if (options_.checkpoint_dir.empty()) return;
  fs::create_directories(options_.checkpoint_dir);
  SafetensorsWriter w;
  w.set_metadata("format", kFormat);
  w.set_metadata("step", std::to_string(step_));
  w.set_metadata("seed", std::to_string(options_.seed));
  w.set_metadata("steps", std::to_string(options_.steps));
  w.set_metadata("extra", extra_.dump());
  auto add_all = [&](const char* prefix, const NamedTensors& ts) {
    for (const auto& [n, t] : ts) add_tensor(w, prefix + n, t.detach());
  };
  add_all(kParam, params_);
  add_all(kExpAvg, exp_avg_);
  add_all(kExpAvgSq, exp_avg_sq_);
  add_all(kEma, ema_);
  w.write(state_path(options_.checkpoint_dir));  // temp file + rename
}

namespace {

// The header of a trainer checkpoint: step, and the extra record after the seed was checked.
struct CheckpointHeader {
  int64_t step = 0;
  Json extra;
};

CheckpointHeader read_checkpoint_header(const TensorStore& store, const std::string& path, uint64_t seed) {
  const auto& meta = store.metadata();
  auto meta_of = [&](const std::string& key) -> const std::string& {
    const auto it = meta.find(key);
    if (it == meta.end()) throw FormatError(path + ": not a trainer checkpoint (metadata '" + key + "' missing)");
    return it->second;
  };
  if (meta_of("format") != kFormat) throw FormatError(path + ": not a trainer checkpoint (format '" + meta_of("format") + "')");
  CheckpointHeader h;
  uint64_t saved_seed = 0;
  try {
    h.step = std::stoll(meta_of("step"));
    saved_seed = std::stoull(meta_of("seed"));
  } catch (const std::logic_error&) {
    throw FormatError(path + ": bad step/seed metadata");
  }
  if (saved_seed != seed)
    throw ConfigError(path + ": checkpoint was trained with seed " + std::to_string(saved_seed) + ", this run uses " +
                      std::to_string(seed) + " (use another checkpoint folder or the same seed)");
  if (h.step < 0) throw FormatError(path + ": negative step " + std::to_string(h.step));
  h.extra = parse_json(meta_of("extra"), path + " metadata 'extra'");
  return h;
}

}  // namespace

bool Trainer::check_resumable(const std::string& checkpoint_dir, uint64_t seed,
                              const std::function<void(const Json&)>& check_extra) {
  if (checkpoint_dir.empty()) return false;
  const std::string path = state_path(checkpoint_dir);
  if (!fs::exists(path)) return false;
  const CheckpointHeader h = read_checkpoint_header(TensorStore::open(path), path, seed);
  if (check_extra) check_extra(h.extra);
  return true;
}

bool Trainer::resume(const std::function<void(const Json&)>& check_extra) {
  if (options_.checkpoint_dir.empty()) return false;
  const std::string path = state_path(options_.checkpoint_dir);
  if (!fs::exists(path)) return false;
  // Throws FormatError naming the file for truncated or corrupt bytes.
  const TensorStore store = TensorStore::open(path);
  const CheckpointHeader header = read_checkpoint_header(store, path, options_.seed);
  const int64_t step = header.step;
  const Json& extra = header.extra;
  if (check_extra) check_extra(extra);

  // Check everything before touching any tensor, so a mismatch leaves the trainer unchanged.
  const bool want_ema = !ema_.empty();
  std::set<std::string> expected;
  for (const auto& [n, p] : params_) {
    expected.insert(kParam + n);
    expected.insert(kExpAvg + n);
    expected.insert(kExpAvgSq + n);
    if (want_ema) expected.insert(kEma + n);
  }
  for (const std::string& n : store.names())
    if (!expected.count(n))
      throw CheckpointError(path + ": unexpected tensor '" + n + "' (the model or its options changed since it was saved)");
  std::map<std::string, at::Tensor> loaded;
  for (const std::string& n : expected) {
    if (!store.contains(n))
      throw CheckpointError(path + ": missing tensor '" + n + "' (the model or its options changed since it was saved)");
    loaded[n] = read_tensor(store, n);
  }
  std::vector<std::pair<const char*, NamedTensors*>> groups = {{kParam, &params_}, {kExpAvg, &exp_avg_}, {kExpAvgSq, &exp_avg_sq_}};
  if (want_ema) groups.emplace_back(kEma, &ema_);
  for (const auto& [prefix, dst] : groups)
    for (const auto& [n, t] : *dst) {
      const at::Tensor& src = loaded.at(prefix + n);
      if (src.sizes() != t.sizes())
        throw CheckpointError(path + ": '" + prefix + n + "' has shape " + shape_string(src.sizes()) + ", expected " +
                              shape_string(t.sizes()));
    }
  {
    torch::NoGradGuard no_grad;
    for (const auto& [prefix, dst] : groups)
      for (auto& [n, t] : *dst) t.copy_(loaded.at(prefix + n));
  }
  step_ = step;
  extra_ = extra.is_object() ? extra : Json::object();
  session_start_step_ = step_;
  session_start_ = std::chrono::steady_clock::now();
  options_.log("[" + options_.name + "] resumed from " + path + " at step " + std::to_string(step_));
  return true;
}

}  // namespace iris
