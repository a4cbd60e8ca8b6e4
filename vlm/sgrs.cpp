#include "vlm/sgrs.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <map>
#include <numeric>
#include <string>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>

#include "core/error.h"

namespace iris {

void SgrsOptions::validate() const {
  if (top_k < 1) throw ConfigError("SGRS: top_k must be >= 1, got " + std::to_string(top_k));
  if (!(alpha >= 0)) throw ConfigError("SGRS: alpha must be >= 0, got " + std::to_string(alpha));
  if (window < 1) throw ConfigError("SGRS: window must be >= 1, got " + std::to_string(window));
  if (max_tries < 1) throw ConfigError("SGRS: max_tries must be >= 1, got " + std::to_string(max_tries));
}

SgrsSelector::SgrsSelector(SgrsOptions options) : opt_(options) {
  opt_.validate();
  gen_ = at::detail::createCPUGenerator(opt_.seed);
}

void SgrsSelector::reset() {
  history_.clear();
  gen_ = at::detail::createCPUGenerator(opt_.seed);
}

double SgrsSelector::threshold() const {
  if (history_.empty()) return 0.0;
  return opt_.alpha * std::accumulate(history_.begin(), history_.end(), 0.0) / static_cast<double>(history_.size());
}

SgrsSelector::Decision SgrsSelector::select(TokenCandidates pool, const SaliencyFn& saliency) {
  if (pool.size() == 0) throw ConfigError("SGRS: no candidates to choose from");
  pool.sort_descending();
  pool.truncate(static_cast<size_t>(opt_.top_k));
  Decision d;
  d.threshold = threshold();
  std::map<int64_t, double> scored;  // candidate -> saliency (each scored once)
  auto score = [&](int64_t token) {
    auto it = scored.find(token);
    if (it != scored.end()) return it->second;
    const double s = saliency(token);
    scored.emplace(token, s);
    return s;
  };

  // Draws from the remaining candidates, by their softmax probabilities.
  std::vector<size_t> remaining(pool.size());
  std::iota(remaining.begin(), remaining.end(), 0);
  for (int64_t t = 0; t < opt_.max_tries && !remaining.empty(); ++t) {
    double top = -INFINITY;
    for (size_t i : remaining) top = std::max(top, static_cast<double>(pool.logits[i]));
    std::vector<double> w;
    double total = 0;
    for (size_t i : remaining) {
      w.push_back(std::exp(static_cast<double>(pool.logits[i]) - top));
      total += w.back();
    }
    const double u = at::rand({1}, gen_, at::TensorOptions().dtype(at::kDouble)).item<double>() * total;
    size_t pick = remaining.size() - 1;
    double acc = 0;
    for (size_t j = 0; j < remaining.size(); ++j) {
      acc += w[j];
      if (u < acc) {
        pick = j;
        break;
      }
    }
    const int64_t token = pool.ids[remaining[pick]];
    const double s = score(token);
    ++d.draws;
    if (s >= d.threshold) {
      d.token = token;
      d.saliency = s;
      break;
    }
    d.rejected.push_back(token);
    remaining.erase(remaining.begin() + static_cast<std::ptrdiff_t>(pick));
  }
  if (d.token < 0) {
    // Every draw rejected: the most salient of the K (ties: the higher logit, first in pool).
    d.fallback = true;
    for (size_t i = 0; i < pool.size(); ++i) {
      const double s = score(pool.ids[i]);
      if (d.token < 0 || s > d.saliency) {
        d.token = pool.ids[i];
        d.saliency = s;
      }
    }
  }
  d.saliency_calls = static_cast<int64_t>(scored.size());
  history_.push_back(d.saliency);
  while (static_cast<int64_t>(history_.size()) > opt_.window) history_.pop_front();
  return d;
}

GenerateResult generate_sgrs(LlamaForCausalLM& model, const LlamaInput& prompt, const SgrsOptions& sgrs,
                             const SaliencyOptions& saliency, const GenerateOptions& gen,
                             const TokenCallback& on_token, SgrsStats* stats) {
  SgrsOptions so = sgrs;
  if (so.seed == 0) so.seed = gen.sampling.seed;
  SgrsSelector selector(so);
  SamplerChain stages = make_sampler(gen.sampling);  // its pick is replaced by SGRS
  if (prompt.input_ids.defined()) {
    const at::Tensor ids = prompt.input_ids.reshape({-1}).to(at::kCPU, at::kLong).contiguous();
    stages.accept(std::vector<int64_t>(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + ids.numel()));
  }
  SaliencyProbe probe(model, saliency);
  SgrsStats local;
  SgrsStats& st = stats ? *stats : local;
  st = SgrsStats();

  c10::InferenceMode normal(false);
  KVCache cache;
  const auto t0 = std::chrono::steady_clock::now();
  const at::Tensor first = probe_prompt(model, probe, prompt, cache, std::max<int64_t>(gen.max_new_tokens, 1));
  const double prefill_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();

  const PickFn pick = [&](const at::Tensor& logits) {
    const SgrsSelector::Decision d =
        selector.select(stages.filter(logits), [&](int64_t token) { return probe.score(token); });
    stages.accept(d.token);
    ++st.tokens;
    st.saliency_calls += d.saliency_calls;
    if (d.fallback) ++st.fallbacks;
    else if (d.draws == 1) ++st.first_draw_accepted;
    else ++st.redrawn;
    return d.token;
  };
  const AdvanceFn advance = [&](int64_t token) {
    LlamaInput one;
    one.input_ids = at::full({1, 1}, token, at::TensorOptions().dtype(at::kLong));
    return probe.forward(one, cache);
  };
  GenerateResult r = generate_custom(model, cache, first, pick, advance, gen, on_token);
  probe.release();
  r.prompt_tokens = prompt_length(prompt);
  r.prefill_ms = prefill_ms;
  return r;
}

}  // namespace iris
