#include "vlm/sampling.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <mutex>
#include <numeric>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>

#include "core/error.h"

namespace iris {

// =============================================================================================
// Candidates

TokenCandidates TokenCandidates::from_logits(const at::Tensor& logits) {
  at::Tensor l = logits.detach().reshape({-1}).to(at::kCPU, at::kFloat).contiguous();
  TokenCandidates c;
  const int64_t n = l.numel();
  const float* p = l.data_ptr<float>();
  c.logits.assign(p, p + n);
  c.ids.resize(static_cast<size_t>(n));
  std::iota(c.ids.begin(), c.ids.end(), 0);
  return c;
}

void TokenCandidates::sort_descending() {
  if (sorted) return;
  std::vector<size_t> order(ids.size());
  std::iota(order.begin(), order.end(), 0);
  // Stable on ties: lower ids first, as argmax picks them.
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return logits[a] > logits[b]; });
  std::vector<int64_t> new_ids(ids.size());
  std::vector<float> new_logits(ids.size());
  for (size_t i = 0; i < order.size(); ++i) {
    new_ids[i] = ids[order[i]];
    new_logits[i] = logits[order[i]];
  }
  ids.swap(new_ids);
  logits.swap(new_logits);
  sorted = true;
}

void TokenCandidates::truncate(size_t n) {
  if (n >= ids.size()) return;
  ids.resize(n);
  logits.resize(n);
}

std::vector<double> TokenCandidates::probabilities() const {
  std::vector<double> p(logits.size());
  if (p.empty()) return p;
  const double mx = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (size_t i = 0; i < p.size(); ++i) sum += (p[i] = std::exp(static_cast<double>(logits[i]) - mx));
  for (double& v : p) v /= sum;
  return p;
}

// =============================================================================================
// Stages

RepetitionPenalty::RepetitionPenalty(float penalty, int64_t last_n) : penalty_(penalty), last_n_(last_n) {
  if (!(penalty > 0)) throw ConfigError("sampling: repetition_penalty must be positive, got " + std::to_string(penalty));
  if (last_n < 0) throw ConfigError("sampling: penalty_last_n must be >= 0");
}

void RepetitionPenalty::apply(TokenCandidates& c) {
  if (penalty_ == 1.0f || history_.empty()) return;
  const size_t begin = last_n_ > 0 && history_.size() > static_cast<size_t>(last_n_) ? history_.size() - last_n_ : 0;
  std::vector<int64_t> seen(history_.begin() + begin, history_.end());
  std::sort(seen.begin(), seen.end());
  seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
  for (size_t i = 0; i < c.ids.size(); ++i) {
    if (!std::binary_search(seen.begin(), seen.end(), c.ids[i])) continue;
    float& l = c.logits[i];
    l = l < 0 ? l * penalty_ : l / penalty_;
  }
  c.sorted = false;
}

Temperature::Temperature(float t) : t_(t) {
  if (!(t > 0)) throw ConfigError("sampling: temperature must be > 0 for the temperature stage");
}

void Temperature::apply(TokenCandidates& c) {
  for (float& l : c.logits) l /= t_;
}

TopK::TopK(int64_t k) : k_(k) {
  if (k < 1) throw ConfigError("sampling: top_k must be >= 1, got " + std::to_string(k));
}

void TopK::apply(TokenCandidates& c) {
  if (static_cast<size_t>(k_) >= c.size()) return;
  c.sort_descending();
  // As transformers: keep every token whose logit reaches the k-th largest (ties included).
  const float kth = c.logits[k_ - 1];
  size_t keep = static_cast<size_t>(k_);
  while (keep < c.size() && c.logits[keep] >= kth) ++keep;
  c.truncate(keep);
}

TopP::TopP(float p, size_t min_keep) : p_(p), min_keep_(std::max<size_t>(min_keep, 1)) {
  if (!(p > 0 && p <= 1)) throw ConfigError("sampling: top_p must be in (0, 1], got " + std::to_string(p));
}

void TopP::apply(TokenCandidates& c) {
  if (p_ >= 1.0f) return;
  c.sort_descending();
  const std::vector<double> probs = c.probabilities();
  // Keep a token while the mass ranked above it is below p (the token that crosses p stays).
  double above = 0;
  size_t keep = 0;
  while (keep < probs.size() && (above < p_ || keep < min_keep_)) above += probs[keep++];
  c.truncate(keep);
}

// =============================================================================================
// Chain

SamplerChain& SamplerChain::add(std::unique_ptr<SamplerStage> stage) {
  if (!stage) throw ConfigError("sampling: null stage");
  stages_.push_back(std::move(stage));
  return *this;
}

SamplerChain& SamplerChain::pick_greedy() {
  pick_ = Pick::Greedy;
  return *this;
}

SamplerChain& SamplerChain::pick_sample(uint64_t seed) {
  pick_ = Pick::Sample;
  seed_ = seed;
  gen_ = at::detail::createCPUGenerator(seed);
  return *this;
}

TokenCandidates SamplerChain::filter(const at::Tensor& logits) {
  TokenCandidates c = TokenCandidates::from_logits(logits);
  for (auto& s : stages_) s->apply(c);
  if (c.ids.empty()) throw Error("sampling: every candidate was filtered out");
  return c;
}

int64_t SamplerChain::sample(const at::Tensor& logits) {
  TokenCandidates c = filter(logits);
  int64_t token = c.ids[0];
  if (pick_ == Pick::Greedy) {
    float best = c.logits[0];
    for (size_t i = 1; i < c.size(); ++i)
      if (c.logits[i] > best || (c.logits[i] == best && c.ids[i] < token)) {
        best = c.logits[i];
        token = c.ids[i];
      }
  } else {
    const std::vector<double> probs = c.probabilities();
    double u;
    {
      auto* g = gen_.get<at::CPUGeneratorImpl>();
      std::lock_guard<std::mutex> lock(gen_.mutex());
      u = static_cast<double>(g->random64() >> 11) * (1.0 / 9007199254740992.0);  // [0, 1)
    }
    double acc = 0;
    token = c.ids.back();
    for (size_t i = 0; i < probs.size(); ++i) {
      acc += probs[i];
      if (u < acc) {
        token = c.ids[i];
        break;
      }
    }
  }
  accept(token);
  return token;
}

void SamplerChain::accept(int64_t token) {
  for (auto& s : stages_) s->accept(token);
}

void SamplerChain::accept(const std::vector<int64_t>& tokens) {
  for (int64_t t : tokens) accept(t);
}

void SamplerChain::reset() {
  for (auto& s : stages_) s->reset();
  if (pick_ == Pick::Sample) gen_ = at::detail::createCPUGenerator(seed_);
}

std::string SamplerChain::describe() const {
  std::string s;
  for (const auto& st : stages_) s += st->name() + " -> ";
  return s + (pick_ == Pick::Greedy ? std::string("greedy") : "sample(seed " + std::to_string(seed_) + ")");
}

SamplerChain make_sampler(const SamplingParams& p) {
  SamplerChain chain;
  if (p.repetition_penalty != 1.0f)
    chain.add(std::make_unique<RepetitionPenalty>(p.repetition_penalty, p.penalty_last_n));
  if (p.top_k < 0) throw ConfigError("sampling: top_k must be >= 0 (0 = off), got " + std::to_string(p.top_k));
  if (!(p.top_p > 0 && p.top_p <= 1)) throw ConfigError("sampling: top_p must be in (0, 1], got " + std::to_string(p.top_p));
  if (!(p.temperature <= 0) && !(p.temperature > 0)) throw ConfigError("sampling: temperature is not a number");
  if (p.temperature <= 0) return std::move(chain.pick_greedy());
  chain.add(std::make_unique<Temperature>(p.temperature));
  if (p.top_k > 0) chain.add(std::make_unique<TopK>(p.top_k));
  if (p.top_p < 1.0f) chain.add(std::make_unique<TopP>(p.top_p));
  return std::move(chain.pick_sample(p.seed));
}

// =============================================================================================
// Generation

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::MaxTokens: return "max_tokens";
    case StopReason::Eos: return "eos";
    case StopReason::StopString: return "stop_string";
    case StopReason::Callback: return "callback";
    case StopReason::ContextFull: return "context_full";
  }
  return "?";
}

double GenerateResult::decode_tokens_per_second() const {
  const size_t n = tokens.size() > 1 ? tokens.size() - 1 : 0;
  return decode_ms > 0 ? n / (decode_ms / 1000.0) : 0.0;
}

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// No autograd during generation: InferenceMode (cheapest) or a NoGradGuard.
class GradModeScope {
 public:
  explicit GradModeScope(bool inference) {
    if (inference) inference_ = std::make_unique<c10::InferenceMode>();
    else no_grad_ = std::make_unique<at::NoGradGuard>();
  }

 private:
  std::unique_ptr<c10::InferenceMode> inference_;
  std::unique_ptr<at::NoGradGuard> no_grad_;
};

}  // namespace

bool TokenEmitter::emit(int64_t token) {
  r_.tokens.push_back(token);
  const bool is_eos = opt_.stop_at_eos && std::find(eos_.begin(), eos_.end(), token) != eos_.end();
  std::string delta;
  if (opt_.detokenize && !is_eos) {
    const std::string now = opt_.detokenize(r_.tokens);
    if (now.size() >= text_.size() && now.compare(0, text_.size(), text_) == 0) delta = now.substr(text_.size());
    text_ = now;
  }
  if (!opt_.stop_strings.empty()) {
    size_t cut = std::string::npos;
    for (const std::string& s : opt_.stop_strings)
      if (!s.empty()) cut = std::min(cut, text_.find(s));
    if (cut != std::string::npos) {
      const size_t before = text_.size() - delta.size();
      delta = cut > before ? text_.substr(before, cut - before) : std::string();
      text_.resize(cut);
      r_.stop = StopReason::StopString;
    }
  }
  if (on_token_ && !on_token_(token, delta) && r_.stop != StopReason::StopString) r_.stop = StopReason::Callback;
  if (is_eos) r_.stop = StopReason::Eos;
  r_.text = text_;
  return r_.stop == StopReason::MaxTokens && static_cast<int64_t>(r_.tokens.size()) < opt_.max_new_tokens;
}

namespace {

// The loop shared by generate(), generate_from() and generate_custom(): pick from `logits`,
// advance, repeat.
void decode_loop(LlamaForCausalLM& model, KVCache& cache, at::Tensor logits, const GenerateOptions& opt,
                 const TokenCallback& on_token, const PickFn& pick, const AdvanceFn& advance, GenerateResult& r) {
  if (opt.max_new_tokens < 0) throw ConfigError("generate: max_new_tokens must be >= 0");
  if (!opt.stop_strings.empty() && !opt.detokenize)
    throw ConfigError("generate: stop strings need a detokenizer (GenerateOptions::detokenize)");
  if (cache.batch() != 1) throw ConfigError("generate: batch 1 only (the cache has batch " + std::to_string(cache.batch()) + ")");
  const std::vector<int64_t>& eos = opt.eos_token_ids.empty() ? model->config().eos_token_ids : opt.eos_token_ids;
  std::vector<at::Tensor> kept;
  TokenEmitter emitter(opt, eos, on_token, r);
  const auto t0 = Clock::now();

  for (int64_t i = 0; i < opt.max_new_tokens; ++i) {
    at::Tensor row = logits.reshape({-1});
    if (opt.keep_logits) kept.push_back(row.to(at::kCPU, at::kFloat).clone());
    if (!emitter.emit(pick(row))) break;  // no step for a token nobody reads
    if (cache.remaining() < 1) {
      r.stop = StopReason::ContextFull;
      break;
    }
    logits = advance(r.tokens.back());  // [V] or [1, V]
  }
  r.decode_ms = ms_since(t0);
  if (opt.keep_logits && !kept.empty()) r.step_logits = at::stack(kept);
}

// The sampler chain's pick and a plain model step.
void sample_loop(LlamaForCausalLM& model, KVCache& cache, const at::Tensor& logits, const GenerateOptions& opt,
                 const TokenCallback& on_token, const std::vector<int64_t>& history, GenerateResult& r) {
  SamplerChain sampler = make_sampler(opt.sampling);
  sampler.accept(history);
  at::Tensor token_buf = at::empty({1, 1}, at::TensorOptions().dtype(at::kLong));
  const PickFn pick = [&](const at::Tensor& row) { return sampler.sample(row); };
  const AdvanceFn advance = [&](int64_t token) {
    token_buf.fill_(token);
    return model->step(token_buf, cache);  // [1, V]
  };
  decode_loop(model, cache, logits, opt, on_token, pick, advance, r);
}

}  // namespace

GenerateResult generate_custom(LlamaForCausalLM& model, KVCache& cache, const at::Tensor& first_logits,
                               const PickFn& pick, const AdvanceFn& advance, const GenerateOptions& opt,
                               const TokenCallback& on_token) {
  GenerateResult r;
  r.prompt_tokens = cache.length();
  decode_loop(model, cache, first_logits, opt, on_token, pick, advance, r);
  return r;
}

GenerateResult generate_from(LlamaForCausalLM& model, KVCache& cache, const at::Tensor& last_logits,
                             const GenerateOptions& opt, const TokenCallback& on_token,
                             const std::vector<int64_t>& history) {
  const GradModeScope scope(opt.inference_mode);
  GenerateResult r;
  r.prompt_tokens = cache.length();
  sample_loop(model, cache, last_logits, opt, on_token, history, r);
  return r;
}

GenerateResult generate(LlamaForCausalLM& model, const std::vector<int64_t>& prompt, const GenerateOptions& opt,
                        const TokenCallback& on_token) {
  if (prompt.empty()) throw ConfigError("generate: empty prompt");
  const int64_t n = static_cast<int64_t>(prompt.size());
  const int64_t max_pos = model->config().max_position_embeddings;
  const bool dynamic = model->config().rope_scaling.type == RopeScaling::Type::Dynamic;
  if (n > max_pos && !dynamic)
    throw ConfigError("generate: the prompt has " + std::to_string(n) + " tokens, more than the model's context of " +
                      std::to_string(max_pos) + " (max_position_embeddings)");
  int64_t capacity = opt.cache_capacity > 0 ? opt.cache_capacity : n + std::max<int64_t>(opt.max_new_tokens, 1);
  if (opt.cache_capacity <= 0 && !dynamic) capacity = std::min(capacity, max_pos);
  if (n > capacity)
    throw ConfigError("generate: the prompt has " + std::to_string(n) + " tokens, more than the KV cache capacity of " +
                      std::to_string(capacity));

  const GradModeScope scope(opt.inference_mode);

  GenerateResult r;
  r.prompt_tokens = n;
  KVCache cache = model->new_cache(1, capacity);
  const auto t0 = Clock::now();
  LlamaInput in;
  in.input_ids = at::tensor(prompt, at::TensorOptions().dtype(at::kLong)).view({1, n});
  LlamaForwardOptions fo;
  fo.logits = LogitsMode::Last;
  at::Tensor logits = model->forward(in, &cache, fo).logits;  // [1, 1, V]
  r.prefill_ms = ms_since(t0);
  sample_loop(model, cache, logits, opt, on_token, prompt, r);
  return r;
}

}  // namespace iris
