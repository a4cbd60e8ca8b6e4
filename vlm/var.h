#pragma once
// VAR — visual attention redistribution (METHODS.md "VAR"; seilk/VisAttnSink, ICLR 2025).
//
// Three parts, each usable on its own:
//   1. Sink tokens. A token is a sink in layer l when its hidden state (the layer's input, the
//      residual stream) has a massive activation in one of the model's sink dimensions D:
//        phi(x) = max_{d in D} |x_d| / RMS(x) >= tau,   RMS(x) = sqrt(mean(x^2) + eps).
//      D is model-specific (LLaMA-2-7B {1415, 2533}); rank_sink_dims / find_sink_dims find it
//      from a model's own activations.
//   2. Image-centric rows, per layer, head and query row: attention to image tokens >= 0.2 of
//      the row and the non-sink share of that image attention >= rho.
//   3. Redistribution in those rows (post-softmax): keep a fraction p of the attention on every
//      sink token (text and image) and give the freed Omega = (1 - p) * sum_sink(w) to the
//      non-sink image tokens in proportion to their weights. Rows still sum to 1.
// VarHook applies it in layers 2 .. L-2, to text queries after the image at prefill and to
// every new token at decode. Sinks are detected at prefill and kept for decode.
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "vlm/attention_hooks.h"
#include "vlm/llama.h"

namespace iris {

struct VarOptions {
  std::vector<int64_t> sink_dims;     // D (required; model-specific hidden dimensions)
  double tau = 20.0;                  // sink threshold on phi
  double p = 0.6;                     // fraction of sink attention kept
  double rho = 0.5;                   // min non-sink share of a row's image attention
  double image_attention_min = 0.2;   // min attention of a row to image tokens
  int first_layer = 2;                // first layer changed
  int last_layer = -2;                // last layer changed, inclusive; < 0 counts from the end (-2 = L-2)
  double rms_eps = 1e-6;              // in RMS(x)
  // New tokens at decode are not sinks unless this is on (then every new token is tested).
  bool detect_at_decode = false;
  // The released code changes nothing in a layer without an image sink; METHODS.md's rule
  // (the default) does not ask for one.
  bool require_image_sink = false;

  // ConfigError naming the field on an impossible value (dims checked against hidden_size).
  void validate(const LlamaConfig& cfg) const;
  // [first, last] as layer indices for a model of `num_layers` layers (may be empty: first > last).
  std::pair<int, int> layer_range(int num_layers) const;
};

// phi for every token: hidden [B, L, H] -> [B, L] float32.
at::Tensor sink_scores(const at::Tensor& hidden, const std::vector<int64_t>& sink_dims, double eps = 1e-6);
// hidden [B, L, H] -> [B, L] bool: phi >= tau.
at::Tensor detect_sink_tokens(const at::Tensor& hidden, const std::vector<int64_t>& sink_dims, double tau,
                              double eps = 1e-6);

// Rows VAR may change in one pass: [B, Lq] bool, true for text queries (not image tokens) that
// come after the last image token. image_keys: [B, Lk] bool; the queries are keys
// [past, past + Lq).
at::Tensor var_query_rows(const at::Tensor& image_keys, int64_t past, int64_t query_length);

// The redistribution on one layer's weights (a pure function; VarHook calls it).
//   weights    [B, H, Lq, Lk] post-softmax
//   image_keys [B, Lk] bool, sink_keys [B, Lk] bool, rows [B, Lq] bool (var_query_rows)
// Returns new weights: selected rows redistributed, every other row bit-identical.
// `selected` (optional) receives the [B, H, Lq] bool mask of changed rows.
at::Tensor var_redistribute(const at::Tensor& weights, const at::Tensor& image_keys, const at::Tensor& sink_keys,
                            const at::Tensor& rows, const VarOptions& opt, at::Tensor* selected = nullptr);

// The hook. Keeps, per layer, the sink flags of every cached key (set at prefill, extended
// at decode; a pass starting at an earlier slot, after a cache rollback, overwrites from there).
class VarHook : public AttentionHook {
 public:
  explicit VarHook(VarOptions options);
  const VarOptions& options() const { return opt_; }

  bool wants(int layer, const HookContext& ctx) const override;
  void on_weights(int layer, at::Tensor& weights, const HookContext& ctx) override;

  // Sink flags of `layer`'s keys as last seen ([B, n] bool; undefined before any pass).
  at::Tensor sinks(int layer) const;
  // Rows changed so far (image-centric rows of a batch row that has image sinks; all layers,
  // all passes) and rows examined (eligible query rows x heads).
  int64_t rows_changed() const { return rows_changed_; }
  int64_t rows_examined() const { return rows_examined_; }
  void reset();

 private:
  VarOptions opt_;
  std::vector<at::Tensor> sinks_;  // per layer [B, n] bool
  int64_t rows_changed_ = 0, rows_examined_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Finding a model's sink dimensions from its activations.

struct SinkDimOptions {
  double tau = 20.0;    // a (prompt, layer) "hits" a dim when some token's |x_d| / RMS(x) >= tau
  int first_layer = 2;  // layers whose inputs are examined, [first, last]
  int last_layer = -2;  // < 0 counts from the end
  size_t top = 10;      // dims returned
  double rms_eps = 1e-6;
};

struct SinkDimension {
  int64_t dim = 0;
  int64_t hits = 0;    // (prompt, layer) pairs where the dim reached tau on some token
  double score = 0;    // mean over (prompt, layer) of the max over tokens of |x_d| / RMS(x)
  double peak = 0;     // the largest |x_d| / RMS(x) seen
};

// hidden_states[prompt] in LlamaOutput's convention (num_layers + 1 entries, [B, L, H]; entry
// l is layer l's input). Ranked by hits, then score, descending; dims with no hit last.
// ConfigError when the layer range leaves nothing to examine.
std::vector<SinkDimension> rank_sink_dims(const std::vector<std::vector<at::Tensor>>& hidden_states,
                                          const SinkDimOptions& opt = {});
// Runs each prompt (no cache, no hooks) and ranks the dims of its layer inputs.
std::vector<SinkDimension> find_sink_dims(LlamaForCausalLM& model, const std::vector<LlamaInput>& prompts,
                                          const SinkDimOptions& opt = {});

}  // namespace iris
