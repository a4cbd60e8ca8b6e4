#include "vlm/locore.h"

#include <algorithm>
#include <string>

#include "core/error.h"

namespace iris {

void LocoreOptions::validate(const LlamaConfig& cfg) const {
  if (!(beta > -1.0)) throw ConfigError("LocoRE: beta must be > -1 (gamma = 1 + beta > 0), got " + std::to_string(beta));
  if (window < 1) throw ConfigError("LocoRE: window must be >= 1, got " + std::to_string(window));
  for (int l : layers)
    if (l < 0 || l >= cfg.num_hidden_layers)
      throw ConfigError("LocoRE: layer " + std::to_string(l) + " outside the model's " +
                        std::to_string(cfg.num_hidden_layers) + " layers");
}

std::vector<int> LocoreOptions::resolved_layers(int num_layers) const {
  if (!layers.empty()) return layers;
  std::vector<int> mid;
  for (int l = num_layers / 4; l < (3 * num_layers) / 4; ++l) mid.push_back(l);
  if (mid.empty() && num_layers > 0) mid.push_back(num_layers / 2);
  return mid;
}

at::Tensor locore_reweight(const at::Tensor& weights, int64_t past, int64_t prompt_length, const LocoreOptions& opt) {
  if (weights.dim() != 4) throw ShapeError("LocoRE: weights must be [B, H, Lq, Lk]");
  if (opt.beta == 0.0) return weights;
  const int64_t Lq = weights.size(2), Lk = weights.size(3);
  const auto lopt = at::TensorOptions().dtype(at::kLong);
  const at::Tensor q = at::arange(past, past + Lq, lopt).unsqueeze(1);  // [Lq, 1]
  const at::Tensor k = at::arange(Lk, lopt).unsqueeze(0);               // [1, Lk]
  const at::Tensor lo = at::clamp_min(q - opt.window, prompt_length);
  at::Tensor boost = (k >= lo) & (opt.include_self ? (k <= q) : (k < q)) & (q >= prompt_length);  // [Lq, Lk]
  const at::Tensor rows = boost.any(1);                                                            // [Lq]
  if (!rows.any().item<bool>()) return weights;
  boost = boost.to(weights.device());
  const at::Tensor scale = at::where(boost, at::full({}, 1.0 + opt.beta, weights.options().requires_grad(false)),
                                     at::ones({}, weights.options().requires_grad(false)));  // [Lq, Lk]
  const at::Tensor scaled = weights * scale;
  const at::Tensor changed = scaled / scaled.sum(-1, true);
  return at::where(rows.to(weights.device()).view({1, 1, Lq, 1}), changed, weights);
}

LocoreHook::LocoreHook(LocoreOptions options) : opt_(std::move(options)) {
  if (!(opt_.beta > -1.0)) throw ConfigError("LocoRE: beta must be > -1");
  if (opt_.window < 1) throw ConfigError("LocoRE: window must be >= 1");
}

void LocoreHook::reset() {
  prefill_length_ = -1;
  explicit_prompt_ = -1;
}

bool LocoreHook::wants(int layer, const HookContext& ctx) const {
  if (opt_.beta == 0.0) return false;  // beta = 0 changes nothing: stay on the fast path
  const std::vector<int> layers = opt_.resolved_layers(ctx.num_layers);
  // A prefill only teaches the prompt length: one layer looks at it (and changes nothing).
  if (ctx.prefill) return !layers.empty() && layer == layers.front();
  const int64_t prompt = prompt_length();
  if (prompt < 0 || ctx.past_length + ctx.query_length <= prompt) return false;
  return std::find(layers.begin(), layers.end(), layer) != layers.end();
}

void LocoreHook::on_weights(int /*layer*/, at::Tensor& weights, const HookContext& ctx) {
  if (ctx.prefill) {
    prefill_length_ = ctx.key_length;
    return;
  }
  weights = locore_reweight(weights, ctx.past_length, prompt_length(), opt_);
}

}  // namespace iris
