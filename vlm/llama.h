#pragma once
// LLaMA decoder (transformers 4.40.2 `LlamaForCausalLM` semantics), built for generation:
// a pre-allocated KV cache, prefill / decode / speculative verification through one forward,
// and attention hooks (VAR, LocoRE, saliency) on an explicit attention path.
//
// Modules carry the reference state_dict names, so a Llama / Vicuna / LLaVA language model
// loads with no renaming (LLaVA: source_prefix "language_model."):
//   model.embed_tokens.weight                                  [V, H]
//   model.layers.<i>.input_layernorm.weight                    [H]
//   model.layers.<i>.self_attn.{q,k,v,o}_proj.weight (+ .bias when attention_bias)
//       q: [heads*head_dim, H]  k, v: [kv_heads*head_dim, H]  o: [H, heads*head_dim]
//   model.layers.<i>.post_attention_layernorm.weight           [H]
//   model.layers.<i>.mlp.{gate,up,down}_proj.weight (+ .bias when mlp_bias)
//       gate, up: [I, H]  down: [H, I]
//   model.norm.weight                                          [H]
//   lm_head.weight                                             [V, H]  (absent when tied)
//
// Shapes below: B batch, L new tokens in a pass, P tokens already cached, H hidden size,
// V vocabulary, D head_dim.
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/pimpl.h>

#include "core/checkpoint.h"
#include "core/json_util.h"
#include "core/state_dict.h"
#include "vlm/attention_hooks.h"
#include "vlm/kv_cache.h"

namespace iris {

// ---------------------------------------------------------------------------------------------
// Config

struct RopeScaling {
  enum class Type { None, Linear, Dynamic };
  Type type = Type::None;
  double factor = 1.0;
};

// LlamaConfig (config.json keys; absent or null keys take transformers' defaults).
struct LlamaConfig {
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;  // absent: num_attention_heads
  int64_t head_dim = 128;            // absent: hidden_size / num_attention_heads
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;          // {"type" (or "rope_type"): "linear" | "dynamic", "factor": > 1}
  std::string hidden_act = "silu";   // silu / swish (gelu variants accepted too)
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  bool mlp_bias = false;
  int64_t bos_token_id = 1;
  std::vector<int64_t> eos_token_ids{2};  // config may hold one id or a list
  int64_t pad_token_id = -1;              // -1: none

  // Takes a LlamaConfig, or a LLaVA config (uses its "text_config"; a missing one is LLaMA's
  // defaults, as transformers does). `what` names the source in errors. Validates.
  static LlamaConfig from_json(const Json& j, const std::string& what);
  // ConfigError naming the key on impossible values.
  void validate(const std::string& what) const;
  int64_t kv_groups() const { return num_attention_heads / num_key_value_heads; }
  int64_t q_size() const { return num_attention_heads * head_dim; }
  int64_t kv_size() const { return num_key_value_heads * head_dim; }
  Json to_json() const;
};

// ---------------------------------------------------------------------------------------------
// Rotary position embedding (rotate_half convention). cos/sin are tabulated once for positions
// [0, max_position_embeddings) in float32, exactly as transformers computes them (inv_freq times
// the position, linear scaling divides the position by the factor). Dynamic NTK scaling
// recomputes inv_freq for a pass whose largest position reaches past max_position_embeddings.
class RotaryEmbedding {
 public:
  RotaryEmbedding() = default;
  RotaryEmbedding(int64_t head_dim, double theta, RopeScaling scaling, int64_t max_position_embeddings);
  // positions: [B, L] int64 -> (cos, sin), each [B, L, D] float32 on the CPU.
  std::pair<at::Tensor, at::Tensor> lookup(const at::Tensor& positions) const;
  // [D / 2] float32 for a pass whose largest position is `max_position`.
  at::Tensor inv_freq(int64_t max_position = 0) const;
  int64_t head_dim() const { return head_dim_; }

 private:
  int64_t head_dim_ = 0, max_positions_ = 0;
  double theta_ = 10000.0;
  RopeScaling scaling_;
  at::Tensor cos_, sin_;  // [max_positions, D] float32
};

// ---------------------------------------------------------------------------------------------
// One forward pass's shared state

// What a forward pass feeds the decoder. Exactly one of input_ids / inputs_embeds.
struct LlamaInput {
  at::Tensor input_ids;       // [B, L] int64
  at::Tensor inputs_embeds;   // [B, L, H] (LLaVA splices image features in here)
  at::Tensor position_ids;    // [B, L] int64. Default: continue each row's positions from the cache;
                              // with attention_mask, HF's cumsum(mask) - 1; with tree_mask, next + depth
  at::Tensor attention_mask;  // [B, P + L] or [B, L], 1 = token, 0 = left padding
  at::Tensor tree_mask;       // [L, L] or [B, L, L] bool: new token i may see new token j (ancestors and
                              // itself); replaces the causal mask among the new tokens (cached keys stay
                              // visible). Per row: a training batch of independent turns sharing a prefix
  at::Tensor image_mask;      // [B, L] bool: which new tokens are image tokens (hooks read it; the cache keeps it)
};

// Everything the decoder layers of one pass share, prepared once (prepare_decoder_pass) and
// read by every layer. Public so that a draft model built from LlamaDecoderLayer (ViSpec)
// runs passes of its own.
struct DecoderPass {
  int64_t batch = 0, length = 0;  // B, L
  int64_t past = 0;               // P: keys cached before this pass
  at::Tensor positions;           // [B, L] int64 (CPU)
  at::Tensor cos, sin;            // [B, 1, L, D] in the compute dtype, on the device
  at::Tensor blocked;             // [B|1, 1, L, P+L] bool, true = may NOT attend; undefined = all visible
  at::Tensor attend;              // the same as "may attend" (fused kernels take this form)
  at::Tensor new_valid;           // [B, L] bool or undefined (no padding among the new tokens)
  at::Tensor new_image;           // [B, L] bool or undefined
  at::Tensor key_valid;           // [B, P+L] bool or undefined
  at::Tensor image_keys;          // [B, P+L] bool or undefined
  KVCache* cache = nullptr;       // keys/values go here when set
  std::vector<const AttentionHookList*> hooks;  // model's, then the call's
  bool force_explicit = false;
  bool tree = false;
  int num_layers = 0;
  bool wants_hooks(int layer, const HookContext& ctx) const;
};

// Validates the input against the cache and builds positions, masks and RoPE tables.
// `hidden_size` checks inputs_embeds; `dtype`/`device` are the compute dtype and device.
DecoderPass prepare_decoder_pass(const RotaryEmbedding& rope, const LlamaInput& in, KVCache* cache,
                                 int64_t max_position_embeddings, bool dynamic_rope, at::ScalarType dtype,
                                 c10::Device device);
// Commits the pass's new tokens to its cache (after every layer has written its keys).
void finish_decoder_pass(DecoderPass& pass);

// ---------------------------------------------------------------------------------------------
// Modules

// y = x W^T + b under the reference names (weight [out, in], bias [out] when enabled). Weights
// start at zero: a model is loaded or initialised (init_weights), so no time goes into a random
// init that loading would overwrite. A single row (decode) runs as matrix-vector products.
class LlamaLinearImpl : public torch::nn::Module {
 public:
  LlamaLinearImpl(int64_t in_features, int64_t out_features, bool bias);
  // Parameters that live in memory someone else owns (views of a fused matrix).
  LlamaLinearImpl(const at::Tensor& weight, const at::Tensor& bias);
  at::Tensor forward(const at::Tensor& x);  // [..., in] -> [..., out]
  at::Tensor weight, bias;
};
TORCH_MODULE(LlamaLinear);

// RMSNorm computed in float32 (as transformers does), cast back, times weight.
class LlamaRMSNormImpl : public torch::nn::Module {
 public:
  LlamaRMSNormImpl(int64_t dim, double eps);
  at::Tensor forward(const at::Tensor& x);  // [..., dim] -> [..., dim]
  at::Tensor weight;

 private:
  double eps_;
};
TORCH_MODULE(LlamaRMSNorm);

// Linear layers that read the same input, stored as one matrix: each layer's weight (and bias)
// is a view into it, so loading writes through the views and a pass runs one GEMM / GEMV
// instead of several. When gradients are needed, or the views were separated (module.to()),
// the layers run one by one, so autograd reaches every weight.
class FusedProjection {
 public:
  FusedProjection() = default;
  // Creates the layers (in -> outs[i], optional bias) as views of one zero [sum(outs), in] matrix.
  FusedProjection(int64_t in_features, const std::vector<int64_t>& out_features, bool bias);
  LlamaLinear part(size_t i) const { return parts_.at(i); }
  // x: [..., in] -> [..., sum of the parts' out]
  at::Tensor forward(const at::Tensor& x);
  bool intact() const;

 private:
  void fuse();
  std::vector<LlamaLinear> parts_;
  at::Tensor weight_, bias_;
};

class LlamaAttentionImpl : public torch::nn::Module {
 public:
  LlamaAttentionImpl(const LlamaConfig& cfg, int layer_index);
  // x: [B, L, H] (normed) -> [B, L, H]. Writes this pass's keys/values to pass.cache.
  // `layer_input` (the un-normed residual stream) is what hooks see as hidden_states.
  at::Tensor forward(const at::Tensor& x, const DecoderPass& pass, const at::Tensor& layer_input = {});

  LlamaLinear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  int layer_index() const { return layer_; }

 private:
  int layer_;
  int64_t heads_, kv_heads_, head_dim_;
  double scale_;
  FusedProjection qkv_;
};
TORCH_MODULE(LlamaAttention);

// SwiGLU: down(act(gate(x)) * up(x)).
class LlamaMLPImpl : public torch::nn::Module {
 public:
  explicit LlamaMLPImpl(const LlamaConfig& cfg);
  at::Tensor forward(const at::Tensor& x);  // [B, L, H] -> [B, L, H]
  LlamaLinear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};

 private:
  int act_;
  int64_t inter_;
  FusedProjection gate_up_;
};
TORCH_MODULE(LlamaMLP);

class LlamaDecoderLayerImpl : public torch::nn::Module {
 public:
  // input_norm = false leaves out input_layernorm (ViSpec's / EAGLE's draft layer).
  LlamaDecoderLayerImpl(const LlamaConfig& cfg, int layer_index, bool input_norm = true);
  at::Tensor forward(const at::Tensor& x, const DecoderPass& pass);  // [B, L, H] -> [B, L, H]

  LlamaAttention self_attn{nullptr};
  LlamaMLP mlp{nullptr};
  LlamaRMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
};
TORCH_MODULE(LlamaDecoderLayer);

enum class LogitsMode { All, Last, None };

struct LlamaForwardOptions {
  LogitsMode logits = LogitsMode::All;
  bool output_hidden_states = false;         // per-layer states, HF convention (below)
  const AttentionHookList* hooks = nullptr;  // run after the model's own hooks
  bool force_explicit_attention = false;     // the explicit path on every layer, hooks or not
};

struct LlamaOutput {
  at::Tensor logits;             // [B, L, V] (All), [B, 1, V] (Last), undefined (None)
  at::Tensor last_hidden_state;  // [B, L, H] after the final norm (ViSpec's draft reads it)
  // num_layers + 1 entries when asked: [0] the input embeddings, [i] layer i's output, the last
  // one after the final norm (= last_hidden_state), as transformers returns them.
  std::vector<at::Tensor> hidden_states;
};

// The decoder stack: model.embed_tokens, model.layers, model.norm.
class LlamaModelImpl : public torch::nn::Module {
 public:
  explicit LlamaModelImpl(const LlamaConfig& cfg);
  // Runs the stack; `in` and the cache as LlamaForCausalLM::forward. Returns the final-normed
  // states [B, L, H]; fills `hidden_states` (if non-null) per LlamaOutput's convention.
  at::Tensor forward(const LlamaInput& in, KVCache* cache, const LlamaForwardOptions& opt,
                     std::vector<at::Tensor>* hidden_states = nullptr);
  at::Tensor embed(const at::Tensor& input_ids);  // [B, L] -> [B, L, H]

  const LlamaConfig& config() const { return cfg_; }
  const RotaryEmbedding& rope() const { return rope_; }
  AttentionHookList& attention_hooks() { return hooks_; }

  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  LlamaRMSNorm norm{nullptr};

 private:
  LlamaConfig cfg_;
  RotaryEmbedding rope_;
  std::vector<LlamaDecoderLayer> layer_list_;
  AttentionHookList hooks_;
};
TORCH_MODULE(LlamaModel);

class LlamaForCausalLMImpl : public torch::nn::Module {
 public:
  explicit LlamaForCausalLMImpl(const LlamaConfig& cfg);

  // The general pass: prefill, decode, verification, embeddings input, padding. With a cache
  // the new tokens' keys/values are appended to it (it must have room); without one the pass
  // sees only its own tokens.
  LlamaOutput forward(const LlamaInput& in, KVCache* cache = nullptr, const LlamaForwardOptions& opt = {});
  // No cache, all logits: input_ids [B, L] -> [B, L, V].
  at::Tensor forward(const at::Tensor& input_ids);

  // A cache for this model: capacity 0 = max_position_embeddings. Same dtype/device as the weights.
  KVCache new_cache(int64_t batch = 1, int64_t capacity = 0) const;

  // Generation step: tokens [B] or [B, L] appended to the cache -> logits of the last new
  // token [B, V].
  at::Tensor step(const at::Tensor& tokens, KVCache& cache);
  // Speculative verification: k candidate tokens [B, k] in one pass on top of the cache ->
  // logits [B, k, V]; causal among the candidates, or tree_mask [k, k] for a token tree
  // (positions = next position + depth). The candidates stay cached: roll back with
  // cache.truncate() / cache.keep_slots() once acceptance is known.
  at::Tensor verify(const at::Tensor& candidates, KVCache& cache, const at::Tensor& tree_mask = {});

  // LM head on hidden states [..., H] -> [..., V] (lm_head, or the embeddings when tied).
  at::Tensor logits(const at::Tensor& hidden);
  const at::Tensor& lm_head_weight() const;

  // Random weights as transformers initialises them (normal(0, std) for linear and embedding
  // weights, zero biases, unit norms), from a seeded CPU generator. For tests and benchmarks.
  void init_weights(uint64_t seed, double std = 0.02);

  const LlamaConfig& config() const { return cfg_; }
  AttentionHookList& attention_hooks() { return model->attention_hooks(); }

  LlamaModel model{nullptr};
  LlamaLinear lm_head{nullptr};  // null when tie_word_embeddings

 private:
  LlamaConfig cfg_;
};
TORCH_MODULE(LlamaForCausalLM);

// Loads a checkpoint's tensors (strict; CheckpointError naming the key). Checks the config's
// sizes against the weights first, so a config that contradicts the file names the config key.
// `source_prefix` selects a sub-model ("language_model." in a LLaVA checkpoint); `renames` may
// add ignores or renames (RoPE inv_freq buffers of old conversions, and lm_head.weight when
// tied, are ignored anyway).
LoadReport load_llama_weights(LlamaForCausalLM& model, const TensorStore& store, const std::string& source_prefix = "",
                              RenameTable renames = {});

// A model folder (config.json + model.safetensors or shards) -> a loaded model in eval mode.
LlamaForCausalLM load_llama(const std::string& folder);

// ---------------------------------------------------------------------------------------------
// CPU kernels of the fast path (float32, no autograd). Both are on by default where available:
// oneDNN's SGEMM (found at run time in the oneDNN library LibTorch loads; absent from pip wheels)
// for prefill projections and attention, and AVX2 kernels (CPU checked at run time) for
// decode GEMV, softmax and SwiGLU. Off, the same math runs on LibTorch ops. For tests and
// benchmarks; IRIS_NO_DNNL=1 in the environment disables oneDNN too.
struct LlamaKernels {
  bool onednn_gemm = true;
  bool avx2 = true;
};
void set_llama_kernels(const LlamaKernels& k);
LlamaKernels llama_kernels();  // what is in effect (requested and available)

// ---------------------------------------------------------------------------------------------
// Speculative decoding helpers

// Greedy acceptance of a chain: first_logits [V] are the logits that predict candidates[0]
// (the last position before the candidates); verify_logits [k, V] from verify(). Accepts while
// candidate j equals argmax of the logits before it.
struct ChainVerdict {
  int64_t num_accepted = 0;  // accepted candidates (not counting the bonus token)
  int64_t next_token = -1;   // the target's own token after the accepted prefix (the bonus)
};
ChainVerdict greedy_accept_chain(const at::Tensor& first_logits, const at::Tensor& verify_logits,
                                 const std::vector<int64_t>& candidates);

// A token tree for verification: node 0 is the root; parents[i] < i for every other node
// (parents[0] = -1). The root is the last accepted token, not yet in the cache.
struct TokenTree {
  std::vector<int64_t> tokens;
  std::vector<int64_t> parents;
  // [n, n] bool: node i sees node j iff j is i or one of its ancestors.
  at::Tensor attention_mask() const;
  std::vector<int64_t> depths() const;
  void validate() const;  // ConfigError on a malformed tree
};

// Greedy acceptance over a tree verified in one pass (logits [n, V], node i's logits predict
// its children): follows, from the root, the child whose token equals the argmax of its
// parent's logits, as deep as possible.
struct TreeVerdict {
  std::vector<int64_t> path;  // accepted nodes from the root (root included, so size >= 1)
  int64_t next_token = -1;    // argmax of the last accepted node's logits (the bonus)
};
TreeVerdict greedy_accept_tree(const TokenTree& tree, const at::Tensor& logits);

}  // namespace iris
