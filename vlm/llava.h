#pragma once
// LLaVA-1.5 (transformers 4.40.2 `LlavaForConditionalGeneration` semantics): a CLIP vision
// tower, a two-layer projector and a LLaMA decoder; the image's patch features replace the
// `<image>` token in the prompt's embeddings.
//
// Modules carry the reference state_dict names, so an HF LLaVA-1.5 folder loads unchanged:
//   vision_tower.vision_model.*                      CLIPVisionModel (diffusion/clip.h)
//   multi_modal_projector.linear_1.{weight,bias}     [H, Dv], [H]
//   multi_modal_projector.linear_2.{weight,bias}     [H, H], [H]
//   language_model.model.*, language_model.lm_head.weight   LlamaForCausalLM (vlm/llama.h)
//   ftz.*                                            FtZ fusion, when config.json has a "ftz" block (vlm/ftz.h)
//   multi_modal_projector.position_embedding         [T, H], when config.json has
//                                                    "image_position_embedding": true (an Iris extension)
//
// Image features: hidden_states[vision_feature_layer] of the tower (an index into the
// num_layers + 1 hidden states, negative from the end), without the CLS token for the
// "default" strategy, all tokens for "full"; then linear_2(act(linear_1(x))).
//
// Shapes: B batch, L prompt tokens, N images, T features per image, Dv vision width, H text
// width, L' = L + (number of <image> tokens) * (T - 1) merged positions.
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include "core/json_util.h"
#include "core/safetensors.h"
#include "core/state_dict.h"
#include "diffusion/clip.h"
#include "vlm/ftz.h"
#include "vlm/kv_cache.h"
#include "vlm/llama.h"
#include "vlm/sampling.h"

namespace iris {

// ---------------------------------------------------------------------------------------------
// Config

// transformers' ACT2FN names a config may give as projector_hidden_act.
enum class HfActivation {
  Gelu,         // "gelu", "gelu_python": erf form
  GeluTanh,     // "gelu_pytorch_tanh"
  GeluNew,      // "gelu_new", "gelu_accurate": 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
  GeluFast,     // "gelu_fast": 0.5 x (1 + tanh(0.7978845608 x (1 + 0.044715 x^2)))
  Gelu10,       // "gelu_10": gelu clipped to [-10, 10]
  QuickGelu,    // x * sigmoid(1.702 x)
  Relu, Relu2, Relu6, LeakyRelu, Silu, Mish, Tanh, Sigmoid, Linear
};
// ConfigError naming `what` and the supported names.
HfActivation parse_hf_activation(const std::string& name, const std::string& what);
at::Tensor apply_hf_activation(HfActivation act, const at::Tensor& x);

struct LlavaConfig {
  enum class FeatureSelect { Default, Full };  // drop the CLS token, or keep every token

  ClipVisionConfig vision;  // "vision_config" (absent: transformers' CLIP-L/336 default)
  LlamaConfig text;         // "text_config" (absent: LlamaConfig's defaults)
  int64_t image_token_index = 32000;
  std::string projector_hidden_act = "gelu";
  int64_t vision_feature_layer = -2;
  FeatureSelect feature_select = FeatureSelect::Default;
  int64_t pad_token_id = -1;  // top-level pad_token_id (null: -1, as transformers)
  bool has_ftz = false;
  FtzConfig ftz;            // "ftz" block
  // "image_position_embedding" (an Iris extension, absent in real LLaVA folders): a learned
  // embedding per image feature token added to the projector's output. RoPE rotates queries
  // and keys only, so an attended image token tells the LM *what* it shows but not *where*
  // unless its value carries the position; this puts the patch's place in the LM's own space.
  bool image_position_embedding = false;

  // `what` names the source (file) in errors. Validates.
  static LlavaConfig from_json(const Json& j, const std::string& what);
  void validate(const std::string& what) const;
  // Features each image contributes: the tower's patches, plus the CLS token for "full".
  int64_t image_feature_tokens() const;
};

// ---------------------------------------------------------------------------------------------
// Modules

// A fixed sin-cos position table [tokens, hidden] of root-mean-square 1: with grid, the tokens
// are a square patch grid (row-major) and a quarter of the channels each hold sin / cos of the
// row and of the column at geometric frequencies (as MAE's); without, half each hold sin / cos
// of the token index. The start for learned image position embeddings: the projected image
// tokens are large (RMS ~10 in the pack VLM), so a table learned from zero stays negligible.
// ShapeError when grid is set and `tokens` is not a square.
at::Tensor sincos_position_table(int64_t tokens, int64_t hidden, bool grid);

// LlavaMultiModalProjector: linear_2(act(linear_1(x))), "mlp2x_gelu" in the original LLaVA;
// with position_tokens > 0 (config "image_position_embedding") plus position_embedding[t] on
// the t-th of the image's position_tokens features (zeros at construction).
class LlavaProjectorImpl : public torch::nn::Module {
 public:
  LlavaProjectorImpl(int64_t vision_dim, int64_t text_dim, HfActivation act, int64_t position_tokens = 0);
  // [..., T, Dv] -> [..., T, H]; with a position embedding T must be position_tokens (ConfigError).
  at::Tensor forward(const at::Tensor& x);

  torch::nn::Linear linear_1{nullptr}, linear_2{nullptr};
  at::Tensor position_embedding;  // [T, H] or undefined

 private:
  HfActivation act_;
};
TORCH_MODULE(LlavaProjector);

// The prompt with the image features spliced in, ready for the language model.
struct LlavaMerged {
  at::Tensor inputs_embeds;   // [B, L', H]
  at::Tensor attention_mask;  // [B, L'] int64, 1 = attended
  at::Tensor position_ids;    // [B, L'] int64: cumsum(mask) - 1, padding at 1 (transformers)
  at::Tensor image_mask;      // [B, L'] bool: positions holding image features
  LlamaInput input() const;   // all four, as a LlamaInput
};

class LlavaForConditionalGenerationImpl : public torch::nn::Module {
 public:
  explicit LlavaForConditionalGenerationImpl(const LlavaConfig& cfg);

  // pixel_values [N, C, S, S] -> the selected tower states [N, T, Dv] (fused by FtZ when configured).
  at::Tensor vision_features(const at::Tensor& pixel_values);
  // -> projected features [N, T, H].
  at::Tensor image_features(const at::Tensor& pixel_values);
  // The prompt's embeddings with each <image> token replaced by the next image's T features,
  // exactly as transformers 4.40's _merge_input_ids_with_image_features: rows are padded to
  // the longest merged row on the left (when no row ends with pad_token_id, i.e. left-padded
  // input) or on the right; embeddings at pad_token_id positions are zeroed.
  // input_ids [B, L], image_features [N, T, H] (N = the number of <image> tokens; may be
  // undefined when there are none), attention_mask [B, L] (undefined: all ones).
  LlavaMerged merge(const at::Tensor& input_ids, const at::Tensor& image_features,
                    const at::Tensor& attention_mask = {});
  // The whole forward: features, merge, decoder. pixel_values may be undefined (text only).
  // With a cache, the merged prompt's keys/values go into it.
  LlamaOutput forward(const at::Tensor& input_ids, const at::Tensor& pixel_values,
                      const at::Tensor& attention_mask = {}, KVCache* cache = nullptr,
                      const LlamaForwardOptions& opt = {});

  // Random weights (the decoder's init_weights scheme everywhere), for tests and tiny models.
  void init_weights(uint64_t seed, double std = 0.02);
  const LlavaConfig& config() const { return cfg_; }
  LayeredVisionEncoder& anchor() { return *anchor_; }

  ClipVisionModel vision_tower{nullptr};
  LlavaProjector multi_modal_projector{nullptr};
  LlamaForCausalLM language_model{nullptr};
  FtzFusion ftz{nullptr};  // null unless the config has a "ftz" block

 private:
  LlavaConfig cfg_;
  std::shared_ptr<ClipLayeredEncoder> anchor_;
};
TORCH_MODULE(LlavaForConditionalGeneration);

// ---------------------------------------------------------------------------------------------
// Generation (batch 1)

struct LlavaPrefill {
  KVCache cache;               // holds the merged prompt
  at::Tensor last_logits;      // [1, 1, V]: the logits of the prompt's last position
  int64_t merged_length = 0;   // L'
  double vision_ms = 0, prefill_ms = 0;  // prefill_ms includes the vision tower
};

// Vision tower, merge and one prefill pass into a new cache with room for `max_new_tokens`
// more (capped at max_position_embeddings unless RoPE scaling is dynamic). ConfigError when the
// merged prompt is longer than the model's context, naming both lengths.
LlavaPrefill llava_prefill(LlavaForConditionalGeneration& model, const std::vector<int64_t>& input_ids,
                           const at::Tensor& pixel_values, int64_t max_new_tokens);

// Prefill, then the decoder's sampling loop (vlm/sampling.h); GenerateResult::prompt_tokens is
// the merged length and prefill_ms includes the vision tower. The repetition penalty's
// history is `input_ids` (the <image> token once), as transformers' generate sees it.
GenerateResult llava_generate(LlavaForConditionalGeneration& model, const std::vector<int64_t>& input_ids,
                              const at::Tensor& pixel_values, const GenerateOptions& opt = {},
                              const TokenCallback& on_token = nullptr);

// ---------------------------------------------------------------------------------------------
// Loading

// Strict load of every part from a store with the names above. Config sizes are checked
// against the weights first (CheckpointError naming the config key). Keys under
// `ignore_prefixes` (e.g. a fixture's "input.", "output.") are skipped; any other key outside
// the model is an error.
LoadReport load_llava_weights(LlavaForConditionalGeneration& model, const TensorStore& store,
                              const std::vector<std::string>& ignore_prefixes = {});

// A LLaVA folder (config.json + model.safetensors or a sharded index) -> a loaded model in
// eval mode. The tokenizer and preprocessor are the pipeline's business (pipelines/vqa.h).
LlavaForConditionalGeneration load_llava(const std::string& folder);

}  // namespace iris
