#pragma once
// Token sampling and the plain generation loop (DESIGN.md "Generation loops").
//
// Sampling is a chain of small stages over the candidate list, as in llama.cpp's sampler
// chain: stages filter or reshape the candidates (repetition penalty, temperature, top-k,
// top-p), a final stage picks one (greedy argmax, or a draw from a seeded CPU generator).
// make_sampler() builds the usual chain in transformers' order: repetition penalty ->
// temperature -> top-k -> top-p -> pick.
//
// generate() is prefill, then one Decoder step per token, with a per-token callback for
// streaming and stops on eos ids, stop strings and max tokens.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "vlm/kv_cache.h"
#include "vlm/llama.h"

namespace iris {

// ---------------------------------------------------------------------------------------------
// Candidates and stages

struct TokenCandidates {
  std::vector<int64_t> ids;
  std::vector<float> logits;
  bool sorted = false;  // by logit, descending

  // Every vocabulary entry of logits [V] (any float dtype/device).
  static TokenCandidates from_logits(const at::Tensor& logits);
  size_t size() const { return ids.size(); }
  void sort_descending();
  // Keeps the first n (after sorting where the stage needs it).
  void truncate(size_t n);
  // Softmax of the current logits, in candidate order.
  std::vector<double> probabilities() const;
};

class SamplerStage {
 public:
  virtual ~SamplerStage() = default;
  virtual std::string name() const = 0;
  virtual void apply(TokenCandidates& c) = 0;
  // A token was chosen (or fed as prompt): stages with memory (penalties) record it.
  virtual void accept(int64_t token) { (void)token; }
  virtual void reset() {}
};

// transformers' RepetitionPenaltyLogitsProcessor: for every token already seen (prompt and
// output), a positive logit is divided by `penalty`, a negative one multiplied. last_n = 0: the
// whole history; otherwise the last n tokens.
class RepetitionPenalty : public SamplerStage {
 public:
  explicit RepetitionPenalty(float penalty, int64_t last_n = 0);
  std::string name() const override { return "repetition_penalty"; }
  void apply(TokenCandidates& c) override;
  void accept(int64_t token) override { history_.push_back(token); }
  void reset() override { history_.clear(); }

 private:
  float penalty_;
  int64_t last_n_;
  std::vector<int64_t> history_;
};

class Temperature : public SamplerStage {
 public:
  explicit Temperature(float t);  // t > 0
  std::string name() const override { return "temperature"; }
  void apply(TokenCandidates& c) override;

 private:
  float t_;
};

class TopK : public SamplerStage {
 public:
  explicit TopK(int64_t k);  // k >= 1
  std::string name() const override { return "top_k"; }
  void apply(TokenCandidates& c) override;

 private:
  int64_t k_;
};

// Keeps the smallest prefix (by probability, descending) whose mass reaches p (at least min_keep).
class TopP : public SamplerStage {
 public:
  explicit TopP(float p, size_t min_keep = 1);  // 0 < p <= 1
  std::string name() const override { return "top_p"; }
  void apply(TokenCandidates& c) override;

 private:
  float p_;
  size_t min_keep_;
};

// ---------------------------------------------------------------------------------------------
// The chain

class SamplerChain {
 public:
  enum class Pick { Greedy, Sample };

  SamplerChain& add(std::unique_ptr<SamplerStage> stage);
  // Greedy: argmax (lowest id on ties). Sample: a draw from softmax(logits) of the remaining
  // candidates, with a CPU generator seeded here.
  SamplerChain& pick_greedy();
  SamplerChain& pick_sample(uint64_t seed);

  // logits [V] -> a token id; the token is accepted into every stage's history.
  int64_t sample(const at::Tensor& logits);
  // The candidates after the stages, before the pick (what SGRS' top-K pool wraps).
  TokenCandidates filter(const at::Tensor& logits);
  // Records tokens the chain did not pick (the prompt) for history-based stages.
  void accept(int64_t token);
  void accept(const std::vector<int64_t>& tokens);
  void reset();
  std::string describe() const;  // "repetition_penalty -> temperature -> ... -> sample(seed 7)"
  Pick pick() const { return pick_; }

 private:
  std::vector<std::unique_ptr<SamplerStage>> stages_;
  Pick pick_ = Pick::Greedy;
  uint64_t seed_ = 0;
  at::Generator gen_;
};

struct SamplingParams {
  float temperature = 0.0f;        // <= 0: greedy
  int64_t top_k = 0;               // 0: off
  float top_p = 1.0f;              // 1: off
  float repetition_penalty = 1.0f; // 1: off
  int64_t penalty_last_n = 0;      // 0: whole history
  uint64_t seed = 0;
};
// ConfigError naming the field on a bad value.
SamplerChain make_sampler(const SamplingParams& p);

// ---------------------------------------------------------------------------------------------
// Generation loop

enum class StopReason { MaxTokens, Eos, StopString, Callback, ContextFull };
const char* stop_reason_name(StopReason r);

struct GenerateOptions {
  int64_t max_new_tokens = 128;
  SamplingParams sampling;
  std::vector<int64_t> eos_token_ids;     // empty: the model config's
  bool stop_at_eos = true;
  std::vector<std::string> stop_strings;  // need `detokenize`
  // Text of a list of generated ids (e.g. SentencePieceTokenizer::decode). Optional; required
  // for stop strings; gives GenerateResult::text and the callback's text deltas.
  std::function<std::string(const std::vector<int64_t>&)> detokenize;
  int64_t cache_capacity = 0;  // 0: prompt + max_new_tokens, at most max_position_embeddings
  bool keep_logits = false;    // GenerateResult::step_logits
  bool inference_mode = true;  // run under c10::InferenceMode (fastest; no autograd at all)
};

struct GenerateResult {
  std::vector<int64_t> tokens;  // new tokens, the eos / stop-string tokens included
  std::string text;             // detokenized new tokens, cut before a stop string (eos excluded)
  StopReason stop = StopReason::MaxTokens;
  int64_t prompt_tokens = 0;
  double prefill_ms = 0, decode_ms = 0;  // decode: every step after the first token
  at::Tensor step_logits;                // [n, V]: the logits each new token was picked from
  double decode_tokens_per_second() const;
};

// Called after each new token with its id and the text it added (empty without detokenize).
// Return false to stop (StopReason::Callback).
using TokenCallback = std::function<bool(int64_t token, const std::string& text_delta)>;

// Hands generated tokens to the caller one at a time with the stop rules every decoding loop
// shares (plain, SGRS, speculative: the last confirms several tokens per cycle): eos, stop
// strings (the text is cut before them), the callback asking to stop, max_new_tokens. Keeps
// r.tokens and r.text up to date.
class TokenEmitter {
 public:
  TokenEmitter(const GenerateOptions& opt, const std::vector<int64_t>& eos, const TokenCallback& on_token,
               GenerateResult& r)
      : opt_(opt), eos_(eos), on_token_(on_token), r_(r) {}
  // false: generation is over (r.stop says why, MaxTokens when the budget is spent).
  bool emit(int64_t token);

 private:
  const GenerateOptions& opt_;
  const std::vector<int64_t>& eos_;
  const TokenCallback& on_token_;
  GenerateResult& r_;
  std::string text_;
};

// prompt (ids, BOS included if the model wants it) -> new tokens. Batch 1.
GenerateResult generate(LlamaForCausalLM& model, const std::vector<int64_t>& prompt, const GenerateOptions& opt = {},
                        const TokenCallback& on_token = nullptr);

// Continues after a prefill the caller ran itself (LLaVA: embeddings with the image spliced
// in): `cache` holds the prompt, `last_logits` [V] (or [1, V] / [1, 1, V]) are the logits of its
// last position, `history` the prompt ids for repetition penalties. The cache must have room.
GenerateResult generate_from(LlamaForCausalLM& model, KVCache& cache, const at::Tensor& last_logits,
                             const GenerateOptions& opt = {}, const TokenCallback& on_token = nullptr,
                             const std::vector<int64_t>& history = {});

// The loop with its two moves supplied by the caller (SGRS picks by saliency and steps with
// gradients): pick(logits [V]) -> token; advance(token) appends the token to `cache` and returns
// the next logits ([V] or [1, V]). Stops, callback and result as generate_from(); opt.sampling
// and opt.inference_mode are not used (the caller owns sampling and grad mode).
using PickFn = std::function<int64_t(const at::Tensor& logits)>;
using AdvanceFn = std::function<at::Tensor(int64_t token)>;
GenerateResult generate_custom(LlamaForCausalLM& model, KVCache& cache, const at::Tensor& first_logits,
                               const PickFn& pick, const AdvanceFn& advance, const GenerateOptions& opt = {},
                               const TokenCallback& on_token = nullptr);

}  // namespace iris
