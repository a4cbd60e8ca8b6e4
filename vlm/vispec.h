#pragma once
// ViSpec: vision-aware speculative decoding (METHODS.md "ViSpec"; KangJialiang/ViSpec).
//
// The draft is one LLaMA decoder layer (no input RMSNorm) that reads, at slot t,
//   x_t = fc(concat(emb(token_{t+1}), img_fc(concat(h_t, g))))       fc, img_fc: Linear(2H -> H, bias)
// where h_t is the target's last hidden state at position t (or the draft's own output while
// drafting) and g the global feature of the latest image (zeros before the first one). Its
// output at slot t regresses h_{t+1}; the target's (frozen, shared) LM head turns it into
// logits for token_{t+2}. Slot t takes position t, as the target's hidden state it reads.
//
// Image tokens never enter the draft one by one: a vision adaptor (num_q learned queries, one
// multi-head cross-attention over the target's input embeddings of the image) compresses each
// image to num_q - 1 tokens, placed at the image's last num_q - 1 positions, and the last query's
// output is that image's g.
//
// State dict (model.safetensors, strict; embeddings and LM head belong to the target):
//   layers.0.self_attn.{q,k,v,o}_proj.weight, layers.0.mlp.{gate,up,down}_proj.weight,
//   layers.0.post_attention_layernorm.weight          the draft layer (LLaMA names)
//   fc.weight [H, 2H], fc.bias [H]
//   img_fc.weight [H, 2H], img_fc.bias [H]             (vision drafts only)
//   imadpt.q [num_q, heads, H / heads], imadpt.{k,v,o}_proj.weight [H, H]   (vision drafts only)
//
// Generation (speculative_generate): prefill the target, prefill the draft on the target's
// hidden states, then cycles of: draft a chain of k tokens or an EAGLE-2 dynamic tree, verify
// it in one target pass (tree attention mask), accept the longest path the target agrees with
// (greedy) or by rejection sampling that keeps the target's distribution exactly, append the
// target's own next token (the bonus), roll both KV caches back to the accepted prefix.
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "core/json_util.h"
#include "vlm/kv_cache.h"
#include "vlm/llama.h"
#include "vlm/sampling.h"

namespace iris {

// ---------------------------------------------------------------------------------------------
// Config

struct VispecConfig {
  LlamaConfig text;         // the draft layer's sizes (num_hidden_layers = 1); vocab/hidden = the target's
  int64_t num_q = 2;        // adaptor queries: num_q - 1 image tokens + the global feature
  bool vision = true;       // false: a text-only (EAGLE-2) draft: image embeddings enter as tokens, no g
  bool fc_bias = true;      // bias on fc and img_fc

  // A draft shaped after a target (its text config, one layer).
  static VispecConfig for_target(const LlamaConfig& target, int64_t num_q = 2, bool vision = true);
  // config.json: {"model_type": "vispec_draft", "num_q", "vision", "fc_bias", "text_config": {...}}.
  static VispecConfig from_json(const Json& j, const std::string& what);
  Json to_json() const;
  void validate(const std::string& what) const;  // ConfigError naming the key
};

// ---------------------------------------------------------------------------------------------
// Modules

// Learned queries attending over one image's embeddings (no norm, no MLP).
class VisionAdaptorImpl : public torch::nn::Module {
 public:
  VisionAdaptorImpl(int64_t hidden, int64_t heads, int64_t num_q);
  // image: [N, H] (the target's input embeddings of one image) -> [num_q, H]
  at::Tensor forward(const at::Tensor& image);

  at::Tensor q;  // [num_q, heads, head_dim]
  LlamaLinear k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  int64_t heads_, head_dim_, num_q_;
};
TORCH_MODULE(VisionAdaptor);

// What a draft pass over a sequence returns.
struct DraftSequenceOutput {
  at::Tensor out;              // [1, n', H]: one row per draft slot actually run
  std::vector<int64_t> slots;  // n' entries: the full-sequence slot t each row stands for
  at::Tensor g;                // [1, H]: the global feature after the sequence
};

class VispecDraftImpl : public torch::nn::Module {
 public:
  explicit VispecDraftImpl(const VispecConfig& cfg);

  // Random weights (normal(0, std) for linear weights, zero biases, unit norm, adaptor queries
  // normal(0, head_dim^-0.5)); img_fc starts as identity on h and zero on g.
  void init_weights(uint64_t seed, double std = 0.02);
  // Shares the target's embeddings and LM head (not the draft's parameters; never trained or
  // saved). ConfigError when the hidden size or the vocabulary differ.
  void attach(LlamaForCausalLM& target);
  bool attached() const { return embed_weight_.defined(); }

  // A pass over a whole sequence (prefill, training). Slot t pairs next_embeds[t] (the target's
  // input embedding of token t+1) with hidden[t] (the target's hidden state at t); slots whose
  // next token is an image token (next_is_image) are compressed per image run by the adaptor.
  //   next_embeds, hidden: [1, n, H]; next_is_image: [1, n] bool or undefined; positions: [1, n]
  //   g0: [1, H] global feature in effect before the sequence (undefined = zeros)
  // With a cache the slots are appended to it; without, the pass is causal over its own slots.
  DraftSequenceOutput forward_sequence(const at::Tensor& next_embeds, const at::Tensor& hidden,
                                       const at::Tensor& next_is_image, const at::Tensor& positions,
                                       const at::Tensor& g0, KVCache* cache);
  // Text slots only (decode, tree expansion): next_embeds, hidden [1, n, H], g [1, H],
  // positions [1, n]. `visible` [n, P + n] bool (P = cached slots), when given, replaces the
  // causal visibility (a token tree drafted over several passes). -> [1, n, H]
  at::Tensor forward_text(const at::Tensor& next_embeds, const at::Tensor& hidden, const at::Tensor& g,
                          const at::Tensor& positions, KVCache* cache, const at::Tensor& visible = {});

  at::Tensor embed(const at::Tensor& ids);        // [...] -> [..., H] (the target's table)
  at::Tensor logits(const at::Tensor& hidden);    // [..., H] -> [..., V] (the target's head)
  KVCache new_cache(int64_t capacity) const;
  const VispecConfig& config() const { return cfg_; }

  LlamaDecoderLayer layer{nullptr};  // registered as "layers.0"
  LlamaLinear fc{nullptr}, img_fc{nullptr};
  VisionAdaptor imadpt{nullptr};

 private:
  // fc(concat(emb, img_fc(concat(h, g)))) over [1, n, H] inputs.
  at::Tensor fuse_inputs(const at::Tensor& next_embeds, const at::Tensor& hidden, const at::Tensor& g);
  at::Tensor run_layer(const at::Tensor& x, const at::Tensor& positions, KVCache* cache, const at::Tensor& visible);

  VispecConfig cfg_;
  RotaryEmbedding rope_;
  at::Tensor embed_weight_, head_weight_;  // the target's, shared (detached views)
  LlamaLinear head_{nullptr};              // over head_weight_ (the fast decode path); not registered
};
TORCH_MODULE(VispecDraft);

// A draft folder: config.json + model.safetensors.
void save_vispec_draft(VispecDraft& draft, const std::string& folder, bool f16 = false);  // f16: half-precision file
// Loads (strict keys; CheckpointError naming the key) in eval mode, not attached.
VispecDraft load_vispec_draft(const std::string& folder);

// ---------------------------------------------------------------------------------------------
// Drafting and acceptance

// EAGLE-2 dynamic tree: from the root, the draft's top_k tokens; then `depth` expansion passes,
// each feeding the top_k nodes of the best cumulative log-probability and scoring top_k children
// for each; finally the best total_tokens - 1 nodes (+ the root) go to the target.
// A chain of k tokens is the tree {top_k 1, depth k - 1, total_tokens k + 1}.
struct DraftTreeOptions {
  int64_t top_k = 8;
  int64_t depth = 3;
  int64_t total_tokens = 30;  // including the root
  static DraftTreeOptions chain(int64_t k);
  void validate() const;      // ConfigError naming the field
};

// Rejection-sampling acceptance over a verified tree (EAGLE-2's): at each node, try its children
// in order; child x is accepted when u < p(x) (u uniform in [0, 1), p the target's distribution
// at the node, renormalised), otherwise p(x) = 0 and the next child is tried. When none is
// accepted (or the node is a leaf) the bonus token is drawn from the remaining p. The emitted
// tokens are distributed exactly as the target's. `probs_of(node)` returns p at a node [V].
TreeVerdict sample_accept_tree(const TokenTree& tree, const std::function<std::vector<double>(int64_t node)>& probs_of,
                               std::mt19937_64& rng);

// ---------------------------------------------------------------------------------------------
// The speculative generation loop

struct SpeculativeOptions {
  GenerateOptions generate;  // max tokens, sampling (no repetition penalty), eos, stop strings
  DraftTreeOptions tree;     // DraftTreeOptions::chain(k) for a chain
};

struct SpeculativeStats {
  int64_t cycles = 0;           // draft + verify rounds
  int64_t accepted = 0;         // drafted tokens the target accepted (bonus tokens not counted)
  int64_t target_forwards = 0;  // prefill + one verification per cycle
  int64_t draft_forwards = 0;
  double prefill_ms = 0, decode_ms = 0;
  // decode_ms split by phase: drafting (draft passes, top-k, tree building), the target's
  // verification pass, and the draft catching up on the accepted path; the rest of decode_ms
  // is acceptance, cache bookkeeping and the token callback.
  double draft_ms = 0, verify_ms = 0, catchup_ms = 0;
  double tau() const { return cycles ? static_cast<double>(accepted) / cycles : 0.0; }
};

struct SpeculativeResult {
  GenerateResult result;
  SpeculativeStats stats;
};

// The prompt as the target's input embeddings (LLaVA: image features spliced in) with its image
// positions: inputs_embeds [1, L, H], image_mask [1, L] bool (undefined: no image). The draft
// must be attached to `target`. ConfigError before any work when the draft does not fit the
// target, or on unsupported options.
SpeculativeResult speculative_generate(LlamaForCausalLM& target, VispecDraft& draft, const at::Tensor& inputs_embeds,
                                       const at::Tensor& image_mask, const SpeculativeOptions& opt,
                                       const TokenCallback& on_token = nullptr);
// Token prompt (text only).
SpeculativeResult speculative_generate(LlamaForCausalLM& target, VispecDraft& draft, const std::vector<int64_t>& prompt,
                                       const SpeculativeOptions& opt, const TokenCallback& on_token = nullptr);

// Plain decoding of the same embeddings prompt (the baseline speedups are measured against).
GenerateResult plain_generate(LlamaForCausalLM& target, const at::Tensor& inputs_embeds, const at::Tensor& image_mask,
                              const GenerateOptions& opt, const TokenCallback& on_token = nullptr);

}  // namespace iris
