#include "vlm/attention_hooks.h"

#include <algorithm>

#include "core/error.h"

namespace iris {

void AttentionHookList::add(std::shared_ptr<AttentionHook> hook) {
  if (!hook) throw ConfigError("attention hooks: cannot install a null hook");
  hooks_.push_back(std::move(hook));
}

bool AttentionHookList::remove(const AttentionHook* hook) {
  auto it = std::find_if(hooks_.begin(), hooks_.end(), [&](const auto& h) { return h.get() == hook; });
  if (it == hooks_.end()) return false;
  hooks_.erase(it);
  return true;
}

bool AttentionHookList::wants(int layer, const HookContext& ctx) const {
  for (const auto& h : hooks_)
    if (h->wants(layer, ctx)) return true;
  return false;
}

void AttentionHookList::run(int layer, at::Tensor& weights, const HookContext& ctx) const {
  for (const auto& h : hooks_) {
    if (!h->wants(layer, ctx)) continue;
    const auto sizes = weights.sizes().vec();
    h->on_weights(layer, weights, ctx);
    if (!weights.defined() || weights.sizes().vec() != sizes)
      throw ShapeError("attention hook on layer " + std::to_string(layer) +
                       " must keep the weights' shape [B, H, Lq, Lk]");
  }
}

bool AttentionRecorder::wants(int layer, const HookContext& /*ctx*/) const {
  return options_.layers.empty() ||
         std::find(options_.layers.begin(), options_.layers.end(), layer) != options_.layers.end();
}

void AttentionRecorder::on_weights(int layer, at::Tensor& weights, const HookContext& ctx) {
  Record r;
  r.layer = layer;
  r.prefill = ctx.prefill;
  r.past_length = ctx.past_length;
  if (options_.keep_graph) {
    if (weights.requires_grad()) weights.retain_grad();
    r.weights = weights;
  } else {
    r.weights = weights.detach().clone();
  }
  records_.push_back(std::move(r));
}

const AttentionRecorder::Record& AttentionRecorder::last(int layer) const {
  for (auto it = records_.rbegin(); it != records_.rend(); ++it)
    if (it->layer == layer) return *it;
  throw ConfigError("attention recorder: nothing recorded for layer " + std::to_string(layer));
}

}  // namespace iris
