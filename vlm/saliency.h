#pragma once
// Token saliency (METHODS.md "LVLMs-Saliency"; Zhang et al., ICLR 2026).
//
// For a candidate next token c with loss L = -log p(c), and post-softmax attention A of layer l:
//   S^l = |A ⊙ ∂L/∂A|, mean over heads, each row L2-normalised,
// read on the row of the query whose logits predict c (the last position; NOT c's own row,
// whose gradient is zero — the released code's mistake). The saliency of c is that row,
// averaged over the chosen layers, then averaged over a set of keys J (by default every text
// key after the image: the question and the tokens generated so far).
//
// Only what is needed is differentiated: the last position runs on top of the KV cache, the
// earlier positions' keys and values are constants. In the first chosen layer the last row's
// attention becomes a leaf that requires grad; the rest of the single-position forward
// continues from it to the logits (later chosen layers' attention are intermediate nodes, so
// their gradients are the full derivatives). No backward ever runs through the prompt, and
// the model's parameters are frozen during the probe.
#include <cstdint>
#include <memory>
#include <vector>

#include <ATen/ATen.h>

#include "vlm/kv_cache.h"
#include "vlm/llama.h"

namespace iris {

struct SaliencyOptions {
  // Layers whose attention is differentiated. Empty: the paper's 6, 7, 8 (chosen on 32-layer
  // LLaVA-1.5-7B) when the model has more than 8 layers, else its middle half [L/4, 3L/4).
  std::vector<int> layers;
  enum class Keys {
    AfterImage,  // text keys after the last image token (all keys without an image), query included
    Generated,   // keys of generated tokens only (empty for the first token: saliency 0)
  };
  Keys keys = Keys::AfterImage;
  // ConfigError naming the layer when it is outside the model.
  void validate(const LlamaConfig& cfg) const;
  // The layers used on a model of `num_layers` layers (the default resolved), sorted, unique.
  std::vector<int> resolved_layers(int64_t num_layers) const;
};

// One single-position forward with gradients on the chosen layers' attention; then any number
// of candidates' saliency from the same graph.
class SaliencyProbe {
 public:
  SaliencyProbe(LlamaForCausalLM model, SaliencyOptions options);

  // Runs one new position (`one`: batch 1, length 1; input_ids or inputs_embeds) on top of
  // `cache` (committed to it, as a decode step) and keeps the graph. -> logits [V] (detached).
  // Runs with grad mode on and outside inference mode; the cache must not hold inference tensors.
  at::Tensor forward(const LlamaInput& one, KVCache& cache);

  // dL/dA for candidate c, per chosen layer: [H, Lk] each (Lk = keys the probed query saw).
  std::vector<at::Tensor> attention_gradients(int64_t candidate);
  // The attention rows that were differentiated, per chosen layer: [H, Lk] each (detached).
  std::vector<at::Tensor> attention() const;
  // The saliency row of c: [Lk] float, mean over the chosen layers of the row-L2-normalised
  // head-mean |A ⊙ dL/dA|.
  at::Tensor row(int64_t candidate);
  // The saliency of c: row(c) averaged over the keys J (0 when J is empty).
  double score(int64_t candidate);

  // First key of the generated tokens (for Keys::Generated and LocoRE-style uses); -1 = unset.
  void set_generation_start(int64_t key) { generation_start_ = key; }
  // [Lk] bool: the image keys of the last probe (all false without an image).
  at::Tensor image_keys() const { return image_keys_; }
  int64_t key_length() const { return key_length_; }
  // Keys J of the last probe: [start, key_length).
  int64_t keys_start() const;
  // Drops the graph (also done by the next forward).
  void release();

 private:
  LlamaForCausalLM model_;
  SaliencyOptions opt_;
  at::Tensor log_probs_;            // [V], with graph
  std::vector<at::Tensor> weights_;  // per chosen layer [1, H, 1, Lk], in the graph
  at::Tensor image_keys_;           // [Lk] bool (CPU)
  int64_t key_length_ = 0;
  int64_t generation_start_ = -1;
};

// Batch-1 prompt helpers. The prompt is prefilled as usual (hooks see a normal prefill), then
// its last position is rolled back and re-run through the probe, so the first new token's
// saliency comes from the query that predicts it. -> the probe's logits [V].
// `cache` is created here (capacity: prompt + extra tokens).
at::Tensor probe_prompt(LlamaForCausalLM& model, SaliencyProbe& probe, const LlamaInput& prompt, KVCache& cache,
                        int64_t extra_tokens);
// Length of a batch-1 prompt; ConfigError when it has padding, a tree mask or batch > 1.
int64_t prompt_length(const LlamaInput& prompt);
// Position i of a batch-1 prompt as a one-token input (ids/embeds, image mask, position).
LlamaInput prompt_position(const LlamaInput& prompt, int64_t i);

// The image-token saliency of an answer, for display: for each answer token, the saliency
// row of the query that predicted it (teacher-forced), at the image keys; averaged over the
// answer tokens and reshaped to [grid_h, grid_w] (the image-token count must be grid_h *
// grid_w). Raw values (not normalised for display).
struct SaliencyMap {
  at::Tensor map;        // [grid_h, grid_w] float
  at::Tensor per_token;  // [T, grid_h * grid_w]: each answer token's image row
};
SaliencyMap answer_saliency_map(LlamaForCausalLM& model, const LlamaInput& prompt, const std::vector<int64_t>& answer,
                                const SaliencyOptions& options, int64_t grid_h, int64_t grid_w);

}  // namespace iris
