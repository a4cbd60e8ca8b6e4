#pragma once
// VISOR, "VISion On Request" (METHODS.md "VISOR"; arXiv 2603.23495, no public code): a LLaVA
// whose language-model layers see text only. The image reaches the text through a few
// cross-attention blocks; a few optional self-attention blocks refine the image tokens for the
// cross-attention blocks after them, and a budget says how many of those run for a sample.
//
// Layer plan. L = the language model's layers; "slot s" runs just before LM layer s (slot L
// runs before the final norm). With image features F [B, N, H] from the LLaVA projector:
//   image = F + depthwise_conv(F)      position encoding over the sqrt(N) x sqrt(N) patch grid
//                                      (or the token sequence, position_conv_dims = 1), once
//   for s = 0 .. L:
//     router            at the first slot that holds a self-attention block, when the budget is
//                       "auto": MLP(mean of the prompt's text states, mean of the image tokens)
//                       -> logits over budgets 0 .. S
//     self-attention    blocks at s that the budget switches on: a LLaMA block whose queries are
//                       the image tokens and whose keys/values are image + prompt text (no RoPE,
//                       no causal mask); only the image tokens are updated
//     cross-attention   blocks at s: text queries, keys/values from all image tokens (no RoPE),
//                       residual into the text; the image is not updated
//     LM layer s        text tokens only (causal, RoPE over text positions: the image takes no
//                       positions)
// Budget b (0 .. S, S = number of self-attention blocks) switches on the first b blocks in
// layer order. A "configuration" in METHODS.md's sense is this budget.
//
// Generation: the prefill computes the image tokens, runs the switched-on self-attention
// blocks once, and caches every cross-attention block's image keys/values; decode steps run
// the text through the LM layers (their own KV cache, text only) and the cross-attention blocks
// (cached image keys/values). Self-attention blocks never run at decode: their keys are the
// prompt, so a sequence recomputed without a cache (prompt_lengths = the prompt) gives the same
// logits.
//
// A VISOR folder is a LLaVA folder (config.json, model.safetensors, tokenizer.model,
// preprocessor_config.json) whose config.json has a "visor" block and whose weights add:
//   visor.position_conv.weight [H, 1, k, k] (1-D: [H, 1, k]), visor.position_conv.bias [H]
//   visor.position_conv.embedding [N, H]                          (only with "position_embedding")
//   visor.cross_attn.<i>.{text_norm,image_norm}.weight [H]
//   visor.cross_attn.<i>.{q,k,v,o}_proj.weight        LLaMA attention shapes (q/o: heads, k/v: kv heads)
//   visor.self_attn.<j>.{input_layernorm,post_attention_layernorm}.weight [H]
//   visor.self_attn.<j>.self_attn.{q,k,v,o}_proj.weight, visor.self_attn.<j>.mlp.{gate,up,down}_proj.weight
//   visor.router.norm.weight [2H], visor.router.fc1.{weight,bias} [R, 2H], [R],
//   visor.router.fc2.{weight,bias} [S + 1, R], [S + 1]              (only when S > 0)
//
// Shapes: B batch, T text tokens in a pass, N image tokens, H hidden size, S self-attention
// blocks, R router width.
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include "core/json_util.h"
#include "vlm/kv_cache.h"
#include "vlm/llama.h"
#include "vlm/llava.h"
#include "vlm/sampling.h"

namespace iris {

// ---------------------------------------------------------------------------------------------
// Config: the "visor" block of config.json

struct VisorConfig {
  std::vector<int64_t> cross_attention_layers;  // slots (0 .. L), strictly increasing, at least one
  std::vector<int64_t> self_attention_layers;   // slots, strictly increasing; each needs a cross-attention
                                                // block at the same or a later slot to read its output
  int64_t position_conv_kernel = 3;             // odd
  int64_t position_conv_dims = 2;               // 2: over the patch grid (N must be a square); 1: the sequence
  // A learned absolute position embedding per image token (visor.position_conv.embedding
  // [N, H], zero at initialisation) added with the convolution. Not in the paper: there the
  // vision encoder's own position embeddings survive into its features; a tower trained only
  // behind an LLM, whose RoPE positions told it where each patch was, need not keep them, and
  // cross-attention keys carry no position.
  bool position_embedding = false;
  int64_t self_attention_intermediate_size = 0; // 0: the language model's intermediate_size
  int64_t router_hidden_size = 64;

  // Blocks spread evenly over `num_layers` LM layers: cross-attention i at slot
  // floor((i + 1/2) L / n_cross); self-attention blocks at the slots of evenly chosen
  // cross-attention blocks (the same slots when n_self = n_cross).
  static VisorConfig uniform(int64_t num_layers, int64_t n_cross, int64_t n_self);
  // `what` names the source in errors (file: key). Validates against the language model.
  static VisorConfig from_json(const Json& j, const LlamaConfig& text, const std::string& what);
  Json to_json() const;
  // ConfigError naming the key and value.
  void validate(const LlamaConfig& text, const std::string& what) const;

  int64_t num_cross() const { return static_cast<int64_t>(cross_attention_layers.size()); }
  int64_t num_self() const { return static_cast<int64_t>(self_attention_layers.size()); }
  int64_t max_budget() const { return num_self(); }
  int64_t sa_intermediate(const LlamaConfig& text) const {
    return self_attention_intermediate_size > 0 ? self_attention_intermediate_size : text.intermediate_size;
  }
};

// ---------------------------------------------------------------------------------------------
// Modules (everything under "visor.")

// Text queries over image keys/values; residual output [B, T, H] to add to the text.
class VisorCrossAttentionImpl : public torch::nn::Module {
 public:
  explicit VisorCrossAttentionImpl(const LlamaConfig& text);
  // image [B, N, H] -> keys, values [B, kv_heads, N, D] (what the cache keeps)
  std::pair<at::Tensor, at::Tensor> image_kv(const at::Tensor& image);
  // text [B, T, H], keys/values from image_kv -> [B, T, H] (o_proj output, before the residual)
  // head0_weights: when given, gets query head 0's attention weights over the image [B, T, N].
  at::Tensor forward(const at::Tensor& text, const at::Tensor& keys, const at::Tensor& values,
                     at::Tensor* head0_weights = nullptr);

  LlamaRMSNorm text_norm{nullptr}, image_norm{nullptr};
  LlamaLinear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  int64_t heads_, kv_heads_, head_dim_;
};
TORCH_MODULE(VisorCrossAttention);

// A LLaMA block whose queries are the image tokens; keys/values are image + text.
class VisorSelfAttentionImpl : public torch::nn::Module {
 public:
  VisorSelfAttentionImpl(const LlamaConfig& text, int64_t intermediate_size);
  // image [B, N, H], text [B, T, H], text_keys [B, T] bool (true = image tokens may attend to
  // this text row; undefined = all) -> the refined image [B, N, H]
  at::Tensor forward(const at::Tensor& image, const at::Tensor& text, const at::Tensor& text_keys);

  LlamaRMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  LlamaAttention self_attn{nullptr};  // its q/k/v/o projections (the LLaMA pass machinery is not used)
  LlamaMLP mlp{nullptr};

 private:
  int64_t heads_, kv_heads_, head_dim_;
};
TORCH_MODULE(VisorSelfAttention);

// image + depthwise_conv(image) over the patch grid (2-D) or the token sequence (1-D)
// (+ a learned embedding per token when `tokens` > 0).
class VisorPositionConvImpl : public torch::nn::Module {
 public:
  VisorPositionConvImpl(int64_t hidden, int64_t kernel, int64_t dims, int64_t tokens = 0);
  // [B, N, H] -> [B, N, H]. ShapeError for a non-square N with a 2-D convolution, or an N other
  // than the embedding's.
  at::Tensor forward(const at::Tensor& image);
  at::Tensor weight, bias;  // [H, 1, k, k] (1-D: [H, 1, k]), [H]
  at::Tensor embedding;     // [N, H], undefined without one
  // Sets the embedding to a fixed sin-cos pattern of the patch grid (2-D: a quarter of the
  // channels each for sin / cos of row and column at geometric frequencies, as MAE's; 1-D: of
  // the token index) scaled to root-mean-square `rms`: absolute position readable from the
  // first step, instead of learned from zero through a noisy gradient. No-op without one.
  void init_sincos(double rms);

 private:
  int64_t kernel_, dims_;
};
TORCH_MODULE(VisorPositionConv);

// MLP(norm(concat(mean text, mean image))) -> logits over budgets 0 .. S.
class VisorRouterImpl : public torch::nn::Module {
 public:
  VisorRouterImpl(int64_t hidden, int64_t width, int64_t budgets, double eps);
  at::Tensor forward(const at::Tensor& features);  // [B, 2H] -> [B, S + 1]

  LlamaRMSNorm norm{nullptr};
  LlamaLinear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(VisorRouter);

class VisorLayersImpl : public torch::nn::Module {
 public:
  // image_tokens: N, the position embedding's length (VisorConfig::position_embedding).
  VisorLayersImpl(const VisorConfig& cfg, const LlamaConfig& text, int64_t image_tokens);

  VisorPositionConv position_conv{nullptr};
  torch::nn::ModuleList cross_attn{nullptr}, self_attn{nullptr};
  VisorRouter router{nullptr};  // null when there is no self-attention block
  std::vector<VisorCrossAttention> cross_blocks;
  std::vector<VisorSelfAttention> self_blocks;
};
TORCH_MODULE(VisorLayers);

// ---------------------------------------------------------------------------------------------
// The model

// The state the LM layers and cross-attention blocks keep between passes (batch B).
struct VisorCache {
  KVCache text;                                       // LM layers, text positions only
  std::vector<at::Tensor> image_keys, image_values;   // per cross-attention block [B, kv_heads, N, D]
  std::vector<int64_t> budgets;                       // per row, as the prefill ran
  bool has_image() const { return !image_keys.empty() && image_keys[0].defined(); }
};

struct VisorInput {
  at::Tensor input_ids;       // [B, T] text tokens (no image token)
  at::Tensor image_features;  // [B, N, H] projector outputs (one image per row); undefined on decode
                              // steps (the cache has the image) or for text-only prompts
  at::Tensor prompt_lengths;  // [B] int64: the first n text rows of this pass are the prompt the
                              // self-attention blocks read (training with answers appended);
                              // undefined: every row
};

struct VisorForwardOptions {
  LogitsMode logits = LogitsMode::All;
  // Per row (size B) or one for all rows (size 1): 0 .. S, or -1 = the router decides.
  // Empty: the router decides.
  std::vector<int64_t> budgets;
  bool router_features_only = false;  // stop at the router's slot (VisorOutput::router_features)
  // >= 0: VisorOutput::cross_weights gets head 0's attention weights in this cross-attention
  // block (0-based, in slot order), with their autograd history (the lookup loss of training).
  int64_t record_cross_block = -1;
};

struct VisorOutput {
  at::Tensor logits;             // [B, T, V] (All), [B, 1, V] (Last), undefined (None)
  at::Tensor last_hidden_state;  // [B, T, H] after the final norm
  std::vector<int64_t> budgets;  // per row, as run (0 without an image)
  at::Tensor router_features;    // [B, 2H] when the router's slot was reached with an image
  at::Tensor router_logits;      // [B, S + 1] when the router ran
  at::Tensor cross_weights;      // [B, T, N] with record_cross_block (undefined without an image)
};

class VisorForConditionalGenerationImpl : public torch::nn::Module {
 public:
  // Shares `llava`'s modules (registered under their LLaVA names) and adds "visor". The new
  // parameters start at zero: call init_weights or init_from_language_model, or load.
  VisorForConditionalGenerationImpl(LlavaForConditionalGeneration llava, const VisorConfig& cfg);

  VisorOutput forward(const VisorInput& in, VisorCache* cache = nullptr, const VisorForwardOptions& opt = {});
  // pixel_values [B, C, S, S] -> projected features [B, N, H] (LLaVA's tower and projector)
  at::Tensor image_features(const at::Tensor& pixel_values) { return llava->image_features(pixel_values); }
  // A cache for batch B with room for `capacity` text tokens (0: max_position_embeddings).
  VisorCache new_cache(int64_t batch = 1, int64_t capacity = 0) const;
  // Budget of each row: router argmax over budgets 0 .. S. features [B, 2H].
  std::vector<int64_t> route(const at::Tensor& features);

  // Random weights everywhere (the LLaVA modules too), normal(0, std): for tests.
  void init_weights(uint64_t seed, double std = 0.02);
  // The VISOR blocks only, so that the model starts as the text-only language model: cross-
  // attention q/k/v and norms copied from the LM layer at their slot (what that layer used to
  // read the image with), o_proj zero; self-attention blocks copied from the LM layer at their
  // slot with o_proj and mlp.down_proj zero (an MLP of another width starts random); position
  // conv small random; router random with its output bias favouring the full budget.
  void init_from_language_model(uint64_t seed, double std = 0.02);

  const VisorConfig& visor_config() const { return cfg_; }
  const LlavaConfig& config() const { return llava->config(); }
  int64_t max_budget() const { return cfg_.max_budget(); }

  LlavaForConditionalGeneration llava{nullptr};  // not registered itself: its parts are
  LlamaForCausalLM language_model{nullptr};
  VisorLayers visor{nullptr};

 private:
  VisorConfig cfg_;
};
TORCH_MODULE(VisorForConditionalGeneration);

// ---------------------------------------------------------------------------------------------
// Generation (batch 1)

struct VisorGenerateResult {
  GenerateResult result;      // prompt_tokens = text tokens; prefill_ms includes the vision tower
  int64_t budget = 0;         // as run
  bool routed = false;        // the router chose it
  int64_t image_tokens = 0;   // N
  int64_t text_before_image = 0;  // prompt text tokens before the <image> token
};

// `prompt_ids` is a LLaVA prompt (vqa_prompt_ids: BOS, text, the <image> token once, text);
// the image token is taken out and the image enters through the VISOR blocks. budget: 0 .. S,
// or -1 for the router. ConfigError for a budget outside that range (naming it), a prompt
// without exactly one image token when pixel_values is given, or a prompt longer than the
// model's context.
VisorGenerateResult visor_generate(VisorForConditionalGeneration& model, const std::vector<int64_t>& prompt_ids,
                                   const at::Tensor& pixel_values, int64_t budget, const GenerateOptions& opt = {},
                                   const TokenCallback& on_token = nullptr);

// ---------------------------------------------------------------------------------------------
// Visual compute per answer

// What an answer costs: prompt text tokens around the image, image tokens, and tokens decoded
// after the prompt (each new token but the last passes through the model once).
struct VisualWorkload {
  int64_t image_tokens = 0;
  int64_t text_before_image = 0;  // prompt tokens before the image (LLaVA order)
  int64_t text_after_image = 0;   // prompt tokens after it
  int64_t generated_tokens = 0;
  int64_t prompt_text() const { return text_before_image + text_after_image; }
  int64_t decode_passes() const { return generated_tokens > 1 ? generated_tokens - 1 : 0; }
};

// The workload of a LLaVA prompt (ids holding the image token once) answered with `generated`
// tokens, the image giving `image_tokens` features.
VisualWorkload visual_workload(const std::vector<int64_t>& prompt_ids, int64_t image_token_id, int64_t image_tokens,
                               int64_t generated);

// FLOPs (2 per multiply-add) of the work that exists because of the image. Matrix products
// only: norms, activations, softmax and RoPE are left out (a few percent); the vision tower and
// projector are the same for both paths and not counted.
struct VisualFlops {
  double projections = 0;  // linear layers over image rows (VISOR: and the text side of cross-attention)
  double attention = 0;    // scores and weighted sums with an image token on either side
  double mlp = 0;          // MLPs over image rows
  double other = 0;        // position convolution, router
  double total() const { return projections + attention + mlp + other; }
  std::string line() const;  // "visual 12.3 MFLOPs"
};

// LLaVA-style: every LM layer runs the image tokens through attention and MLP in the prefill;
// image queries attend causally (to the text before the image and the image so far) and every
// later text query (prompt and decoded) attends to the N image keys.
VisualFlops llava_visual_flops(const LlamaConfig& text, const VisualWorkload& w);
// VISOR at one budget: the position conv; each cross-attention block's image keys/values,
// its text-side q/o projections and the text-to-image attention (prompt and decoded tokens);
// each switched-on self-attention block over the image rows (keys/values over image + prompt
// text); the router when `routed`.
VisualFlops visor_visual_flops(const VisorConfig& cfg, const LlamaConfig& text, const VisualWorkload& w,
                               int64_t budget, bool routed = false);

// ---------------------------------------------------------------------------------------------
// Folders

// Writes a VISOR folder's config.json (`llava_config`, the LLaVA folder's config.json, with the
// "visor" block set) and model.safetensors (F32, or F16) into `folder` (created). Tokenizer and
// preprocessor files are the caller's (the trainer copies them from the LLaVA folder).
void save_visor(VisorForConditionalGeneration& model, const Json& llava_config, const std::string& folder,
                bool f16 = false);
// True when `folder`/config.json has a "visor" block.
bool is_visor_folder(const std::string& folder);
// ConfigError naming config.json when it exists without a "visor" block (a LLaVA folder), so
// that loaders fail before reading weights.
void require_visor_folder(const std::string& folder);
// Strict load of a VISOR folder in eval mode: ConfigError for a bad "visor" block (naming the
// key), CheckpointError for missing/extra/mis-shaped keys or a block count that contradicts the
// config (naming the key and both counts).
VisorForConditionalGeneration load_visor(const std::string& folder);
// The VISOR part of `folder` on top of its LLaVA modules, already loaded (load_llava(folder)
// skips the visor.* weights of a folder whose config has a "visor" block).
VisorForConditionalGeneration load_visor_onto(LlavaForConditionalGeneration llava, const std::string& folder);
// The "visor.*" part of a store into a model built from the same config.
LoadReport load_visor_weights(VisorForConditionalGeneration& model, const TensorStore& store);

}  // namespace iris
