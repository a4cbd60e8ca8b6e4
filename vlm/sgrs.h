#pragma once
// SGRS — saliency-guided rejection sampling (METHODS.md "LVLMs-Saliency").
//
// Wraps a sampler: its stages (penalties, temperature, ...) shape the candidates, SGRS keeps
// the top K and replaces the pick:
//   threshold = alpha * mean saliency of the last W accepted tokens (0 before the first);
//   up to R times: draw a candidate from the remaining pool (softmax of their logits,
//   renormalised; seeded), accept it if its saliency >= threshold, else remove it;
//   if all R draws fail, take the most salient of the K.
// The accepted token's saliency joins the history (the fallback's too).
#include <cstdint>
#include <deque>
#include <functional>
#include <vector>

#include <ATen/ATen.h>

#include "vlm/llama.h"
#include "vlm/saliency.h"
#include "vlm/sampling.h"

namespace iris {

struct SgrsOptions {
  int64_t top_k = 5;      // K
  double alpha = 0.6;     // threshold factor
  int64_t window = 5;     // W accepted tokens in the running mean
  int64_t max_tries = 3;  // R draws before the fallback
  uint64_t seed = 0;      // the draws' generator
  void validate() const;  // ConfigError naming the field
};

class SgrsSelector {
 public:
  explicit SgrsSelector(SgrsOptions options);

  struct Decision {
    int64_t token = -1;
    double saliency = 0;
    double threshold = 0;
    int64_t draws = 0;              // candidates drawn (1 = the first draw was accepted)
    bool fallback = false;          // every draw was rejected: the most salient of the K
    std::vector<int64_t> rejected;  // in the order they were drawn
    int64_t saliency_calls = 0;     // distinct candidates scored
  };
  using SaliencyFn = std::function<double(int64_t token)>;

  // pool: the wrapped sampler's candidates (SamplerChain::filter); SGRS keeps its top K.
  Decision select(TokenCandidates pool, const SaliencyFn& saliency);
  double threshold() const;
  const std::deque<double>& history() const { return history_; }
  void reset();

 private:
  SgrsOptions opt_;
  at::Generator gen_;
  std::deque<double> history_;  // saliencies of the last W accepted tokens
};

struct SgrsStats {
  int64_t tokens = 0;
  int64_t first_draw_accepted = 0;
  int64_t redrawn = 0;    // accepted after at least one rejection
  int64_t fallbacks = 0;
  int64_t saliency_calls = 0;
  SgrsStats& operator+=(const SgrsStats& o) {
    tokens += o.tokens;
    first_draw_accepted += o.first_draw_accepted;
    redrawn += o.redrawn;
    fallbacks += o.fallbacks;
    saliency_calls += o.saliency_calls;
    return *this;
  }
};

// Generation with SGRS (batch 1): the prompt is prefilled and its last position re-run with
// gradients (saliency.h), then every step is a saliency probe. gen.sampling gives the
// wrapped stages and, when sgrs.seed is 0, the seed; gen.inference_mode is ignored (SGRS
// needs autograd). Hooks installed on the model (VAR, LocoRE) apply as usual.
GenerateResult generate_sgrs(LlamaForCausalLM& model, const LlamaInput& prompt, const SgrsOptions& sgrs,
                             const SaliencyOptions& saliency, const GenerateOptions& gen = {},
                             const TokenCallback& on_token = nullptr, SgrsStats* stats = nullptr);

}  // namespace iris
