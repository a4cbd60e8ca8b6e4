#pragma once
// LocoRE — local coherence reinforcement (METHODS.md "LVLMs-Saliency"; the module is missing
// from the authors' release, so these choices are ours and exposed):
//   when a generated token's query predicts the next token, its post-softmax attention to the
//   previous `window` generated tokens is multiplied by gamma = 1 + beta and the row is
//   renormalised to sum 1, in a chosen set of middle layers.
// "Generated" means keys at or after the prompt length, taken from the most recent prefill
// pass (past = 0; the first LocoRE layer takes the explicit path there to see it) unless set
// explicitly. Prompt queries are never changed.
#include <cstdint>
#include <vector>

#include <ATen/ATen.h>

#include "vlm/attention_hooks.h"
#include "vlm/llama.h"

namespace iris {

struct LocoreOptions {
  double beta = 0.15;        // gamma = 1 + beta (0.15 LLaVA-1.5, 0.20 Qwen2-VL)
  int64_t window = 8;        // w_s: previous generated tokens boosted
  std::vector<int> layers;   // empty: the middle half, [L/4, 3L/4)
  bool include_self = false; // also boost the query's own key (itself a generated token)
  void validate(const LlamaConfig& cfg) const;
  std::vector<int> resolved_layers(int num_layers) const;
};

// The change on one layer's weights (a pure function; LocoreHook calls it).
//   weights [B, H, Lq, Lk]; query q (absolute key index past + i) boosts keys
//   [max(prompt_length, q - window), q) (+ q itself with include_self), for q >= prompt_length.
// Rows without a boosted key stay bit-identical; beta = 0 returns the weights unchanged.
at::Tensor locore_reweight(const at::Tensor& weights, int64_t past, int64_t prompt_length, const LocoreOptions& opt);

class LocoreHook : public AttentionHook {
 public:
  explicit LocoreHook(LocoreOptions options);
  const LocoreOptions& options() const { return opt_; }
  // Keys from `n` on are generated tokens (overrides the prefill length until reset()).
  void set_prompt_length(int64_t n) { explicit_prompt_ = n; }
  int64_t prompt_length() const { return explicit_prompt_ >= 0 ? explicit_prompt_ : prefill_length_; }
  void reset();

  bool wants(int layer, const HookContext& ctx) const override;
  void on_weights(int layer, at::Tensor& weights, const HookContext& ctx) override;

 private:
  LocoreOptions opt_;
  int64_t prefill_length_ = -1;  // key length of the last prefill seen
  int64_t explicit_prompt_ = -1;
};

}  // namespace iris
