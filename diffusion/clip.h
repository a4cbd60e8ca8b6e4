#pragma once
// CLIP text and vision transformers, with the semantics of transformers 4.40.2
// (CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionModel, CLIPVisionModelWithProjection).
//
// Every module is registered under the reference state_dict name, so these load with no
// renaming: Stable Diffusion's `text_encoder/` (text_model.*), IP-Adapter's `image_encoder/`
// (vision_model.* + visual_projection.weight), and a LLaVA vision tower (source_prefix
// "vision_tower.").
//
//   text_model.embeddings.{token_embedding,position_embedding}.weight
//   text_model.encoder.layers.<i>.{self_attn.{q,k,v,out}_proj, layer_norm1, mlp.fc1, mlp.fc2, layer_norm2}.*
//   text_model.final_layer_norm.*                     text_projection.weight   (no bias)
//   vision_model.embeddings.{class_embedding, patch_embedding.weight, position_embedding.weight}
//   vision_model.pre_layrnorm.* (sic)  vision_model.encoder.layers.<i>.*  vision_model.post_layernorm.*
//   visual_projection.weight (no bias)
//
// Hidden states follow transformers: hidden_states[0] is the encoder input (text: token +
// position embeddings; vision: embeddings after pre_layrnorm), hidden_states[i] the output of
// layer i. The text model's last_hidden_state is final_layer_norm(hidden_states[-1]); the vision
// model's last_hidden_state is hidden_states[-1] itself and only the pooled CLS token goes
// through post_layernorm.
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include "core/attention.h"
#include "core/checkpoint.h"
#include "core/json_util.h"
#include "core/state_dict.h"

namespace iris {

// ---------------------------------------------------------------------------------------------
// Configs (config.json keys; absent or null keys take transformers' defaults)

// `hidden_act`: quick_gelu (x * sigmoid(1.702 x)), gelu (erf), gelu_new / gelu_pytorch_tanh /
// gelu_fast (tanh approximation), relu.
enum class ClipActivation { QuickGelu, Gelu, GeluTanh, Relu };
// Throws ConfigError naming `what` and the value.
ClipActivation parse_clip_activation(const std::string& name, const std::string& what);

// The transformer body both towers share.
struct ClipEncoderConfig {
  int64_t hidden_size = 512;
  int64_t intermediate_size = 2048;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 8;
  ClipActivation activation = ClipActivation::QuickGelu;
  double layer_norm_eps = 1e-5;
};

// CLIPTextConfig. from_json also takes a full CLIPConfig (uses its "text_config", overlaid with
// a legacy "text_config_dict" when present, as transformers does).
struct ClipTextConfig {
  int64_t vocab_size = 49408;
  int64_t hidden_size = 512;
  int64_t intermediate_size = 2048;
  int64_t projection_dim = 512;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 8;
  int64_t max_position_embeddings = 77;
  std::string hidden_act = "quick_gelu";
  double layer_norm_eps = 1e-5;
  int64_t pad_token_id = 1;
  int64_t bos_token_id = 49406;
  // Pooling position (transformers 4.40): eos_token_id == 2 is the legacy value of the
  // original OpenAI/SD configs and pools at argmax(input_ids) (the EOT id 49407 is the largest
  // in CLIP's vocabulary); any other value pools at the first position equal to it (position 0
  // when a row has none).
  int64_t eos_token_id = 49407;

  // `what` names the source in errors (file path). Validates (ConfigError naming the key).
  static ClipTextConfig from_json(const Json& j, const std::string& what);
  void validate(const std::string& what) const;
  ClipEncoderConfig encoder() const;
};

// CLIPVisionConfig. from_json also takes a full CLIPConfig or a LlavaConfig (uses "vision_config").
struct ClipVisionConfig {
  int64_t hidden_size = 768;
  int64_t intermediate_size = 3072;
  int64_t projection_dim = 512;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t num_channels = 3;
  int64_t image_size = 224;
  int64_t patch_size = 32;
  std::string hidden_act = "quick_gelu";
  double layer_norm_eps = 1e-5;

  static ClipVisionConfig from_json(const Json& j, const std::string& what);
  void validate(const std::string& what) const;
  ClipEncoderConfig encoder() const;
  int64_t grid() const { return image_size / patch_size; }       // patches per side
  int64_t num_patches() const { return grid() * grid(); }
  int64_t num_positions() const { return num_patches() + 1; }    // + CLS token
};

// Resolves a Python-style index into hidden_states (num_layers + 1 entries: -1 = last, -2 =
// penultimate, 0 = embeddings) to the number of encoder layers to run. ConfigError when out of
// range, naming the index and the range.
int64_t clip_layers_for_hidden_state(int64_t index, int64_t num_layers, const std::string& what);

// ---------------------------------------------------------------------------------------------
// Shared transformer body

// Multi-head self-attention with biased q/k/v/out projections.
class ClipAttentionImpl : public torch::nn::Module {
 public:
  ClipAttentionImpl(int64_t hidden_size, int64_t num_heads);
  // x: [B, L, D] -> [B, L, D]. `opt` carries the causal flag / padding mask.
  at::Tensor forward(const at::Tensor& x, const AttentionOptions& opt);

  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, out_proj{nullptr};

 private:
  int64_t num_heads_, head_dim_;
};
TORCH_MODULE(ClipAttention);

// fc1 -> activation -> fc2.
class ClipMlpImpl : public torch::nn::Module {
 public:
  ClipMlpImpl(int64_t hidden_size, int64_t intermediate_size, ClipActivation act);
  at::Tensor forward(const at::Tensor& x);  // [B, L, D] -> [B, L, D]

  torch::nn::Linear fc1{nullptr}, fc2{nullptr};

 private:
  ClipActivation act_;
};
TORCH_MODULE(ClipMlp);

// Pre-LN block: x + attn(ln1(x)), then x + mlp(ln2(x)).
class ClipEncoderLayerImpl : public torch::nn::Module {
 public:
  explicit ClipEncoderLayerImpl(const ClipEncoderConfig& cfg);
  at::Tensor forward(const at::Tensor& x, const AttentionOptions& opt);  // [B, L, D] -> [B, L, D]

  ClipAttention self_attn{nullptr};
  torch::nn::LayerNorm layer_norm1{nullptr};
  ClipMlp mlp{nullptr};
  torch::nn::LayerNorm layer_norm2{nullptr};
};
TORCH_MODULE(ClipEncoderLayer);

class ClipEncoderImpl : public torch::nn::Module {
 public:
  explicit ClipEncoderImpl(const ClipEncoderConfig& cfg);
  // x: [B, L, D] -> [B, L, D] after the first `num_layers` layers (-1: all). With
  // `hidden_states`, appends x before the first layer and after every layer run.
  at::Tensor forward(at::Tensor x, const AttentionOptions& opt, int64_t num_layers = -1,
                     std::vector<at::Tensor>* hidden_states = nullptr);
  int64_t num_layers() const { return static_cast<int64_t>(blocks_.size()); }
  ClipEncoderLayer& layer(int64_t i) { return blocks_.at(static_cast<size_t>(i)); }

  torch::nn::ModuleList layers{nullptr};

 private:
  std::vector<ClipEncoderLayer> blocks_;  // the same modules as `layers`, typed
};
TORCH_MODULE(ClipEncoder);

// ---------------------------------------------------------------------------------------------
// Text tower

class ClipTextEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit ClipTextEmbeddingsImpl(const ClipTextConfig& cfg);
  at::Tensor forward(const at::Tensor& input_ids);  // [B, L] int -> [B, L, D]

  torch::nn::Embedding token_embedding{nullptr}, position_embedding{nullptr};
};
TORCH_MODULE(ClipTextEmbeddings);

struct ClipTextOptions {
  // [B, L], 1 = token, 0 = padding (keys at padding positions are masked, on top of the causal
  // mask). Stable Diffusion passes none.
  c10::optional<at::Tensor> attention_mask;
  bool output_hidden_states = false;
};

struct ClipTextOutput {
  at::Tensor last_hidden_state;            // [B, L, D]: final_layer_norm(hidden_states[-1])
  at::Tensor pooler_output;                // [B, D]: last_hidden_state at each row's EOS position
  at::Tensor text_embeds;                  // [B, P]: text_projection(pooler_output); with projection only
  std::vector<at::Tensor> hidden_states;   // num_layers + 1 tensors [B, L, D], when asked
};

// transformers' CLIPTextTransformer (registered as "text_model").
class ClipTextTransformerImpl : public torch::nn::Module {
 public:
  explicit ClipTextTransformerImpl(const ClipTextConfig& cfg);
  ClipTextOutput forward(const at::Tensor& input_ids, const ClipTextOptions& opt = {});
  // hidden_states[index] (Python-style index), running only the layers it needs.
  at::Tensor hidden_state(const at::Tensor& input_ids, int64_t index,
                          const c10::optional<at::Tensor>& attention_mask = c10::nullopt);
  // [B] positions the pooler reads (see ClipTextConfig::eos_token_id).
  at::Tensor eos_positions(const at::Tensor& input_ids) const;

  const ClipTextConfig& config() const { return cfg_; }

  ClipTextEmbeddings embeddings{nullptr};
  ClipEncoder encoder{nullptr};
  torch::nn::LayerNorm final_layer_norm{nullptr};

 private:
  // Checks ids ([B, L] integers, L <= max positions, ids < vocab) and moves them to the
  // weights' device; builds the attention options (causal + optional padding mask).
  at::Tensor prepare_ids(const at::Tensor& input_ids) const;
  AttentionOptions attention_options(const at::Tensor& ids, const c10::optional<at::Tensor>& mask) const;

  ClipTextConfig cfg_;
};
TORCH_MODULE(ClipTextTransformer);

// CLIPTextModel (with_projection = false) or CLIPTextModelWithProjection (true).
class ClipTextModelImpl : public torch::nn::Module {
 public:
  explicit ClipTextModelImpl(const ClipTextConfig& cfg, bool with_projection = false);
  ClipTextOutput forward(const at::Tensor& input_ids, const ClipTextOptions& opt = {});
  at::Tensor hidden_state(const at::Tensor& input_ids, int64_t index,
                          const c10::optional<at::Tensor>& attention_mask = c10::nullopt) {
    return text_model->hidden_state(input_ids, index, attention_mask);
  }
  // Strict load through clip_text_rename_table(with_projection()); options.source_prefix
  // selects a component inside a bigger file ("text_encoder.").
  LoadReport load(const TensorStore& store, const LoadOptions& options = {});

  bool with_projection() const { return !text_projection.is_empty(); }
  const ClipTextConfig& config() const { return text_model->config(); }

  ClipTextTransformer text_model{nullptr};
  torch::nn::Linear text_projection{nullptr};  // [P, D], no bias; null without projection
};
TORCH_MODULE(ClipTextModel);

// ---------------------------------------------------------------------------------------------
// Vision tower

class ClipVisionEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit ClipVisionEmbeddingsImpl(const ClipVisionConfig& cfg);
  // pixel_values: [B, C, S, S] -> [B, 1 + (S/P)^2, D] (CLS token first).
  at::Tensor forward(const at::Tensor& pixel_values);

  at::Tensor class_embedding;               // [D]
  torch::nn::Conv2d patch_embedding{nullptr};  // [D, C, P, P], stride P, no bias
  torch::nn::Embedding position_embedding{nullptr};  // [1 + N, D]
};
TORCH_MODULE(ClipVisionEmbeddings);

struct ClipVisionOutput {
  at::Tensor last_hidden_state;            // [B, 1 + N, D] = hidden_states[-1] (no post-LN)
  at::Tensor pooler_output;                // [B, D]: post_layernorm(last_hidden_state[:, 0])
  at::Tensor image_embeds;                 // [B, P]: visual_projection(pooler_output); with projection only
  std::vector<at::Tensor> hidden_states;   // num_layers + 1 tensors [B, 1 + N, D], when asked
};

// transformers' CLIPVisionTransformer (registered as "vision_model").
class ClipVisionTransformerImpl : public torch::nn::Module {
 public:
  explicit ClipVisionTransformerImpl(const ClipVisionConfig& cfg);
  ClipVisionOutput forward(const at::Tensor& pixel_values, bool output_hidden_states = false);
  // hidden_states[index] (Python-style: IP-Adapter Plus uses -2, LLaVA its vision_feature_layer),
  // running only the layers it needs.
  at::Tensor hidden_state(const at::Tensor& pixel_values, int64_t index);

  const ClipVisionConfig& config() const { return cfg_; }

  ClipVisionEmbeddings embeddings{nullptr};
  torch::nn::LayerNorm pre_layrnorm{nullptr};  // (sic): the reference name
  ClipEncoder encoder{nullptr};
  torch::nn::LayerNorm post_layernorm{nullptr};

 private:
  // ShapeError unless pixel_values is [B, C, S, S] with the config's C and S; returns it on
  // the weights' device and dtype.
  at::Tensor prepare_pixels(const at::Tensor& pixel_values) const;
  at::Tensor embed(const at::Tensor& pixel_values);  // hidden_states[0]: [B, 1 + N, D]

  ClipVisionConfig cfg_;
};
TORCH_MODULE(ClipVisionTransformer);

// CLIPVisionModel (with_projection = false) or CLIPVisionModelWithProjection (true).
class ClipVisionModelImpl : public torch::nn::Module {
 public:
  explicit ClipVisionModelImpl(const ClipVisionConfig& cfg, bool with_projection = false);
  ClipVisionOutput forward(const at::Tensor& pixel_values, bool output_hidden_states = false);
  at::Tensor hidden_state(const at::Tensor& pixel_values, int64_t index) {
    return vision_model->hidden_state(pixel_values, index);
  }
  // Strict load through clip_vision_rename_table(with_projection()); options.source_prefix
  // selects a component ("image_encoder.", "vision_tower.").
  LoadReport load(const TensorStore& store, const LoadOptions& options = {});

  bool with_projection() const { return !visual_projection.is_empty(); }
  const ClipVisionConfig& config() const { return vision_model->config(); }

  ClipVisionTransformer vision_model{nullptr};
  torch::nn::Linear visual_projection{nullptr};  // [P, D], no bias; null without projection
};
TORCH_MODULE(ClipVisionModel);

// ---------------------------------------------------------------------------------------------
// Loading

// What transformers itself skips when loading these classes, and nothing else:
//  - `*.embeddings.position_ids`: a buffer that files saved by transformers < 4.31 carry
//    (Stable Diffusion 1.x text_encoder, IP-Adapter image_encoder); it is always arange.
//  - the other tower and `logit_scale` of a full CLIPModel file;
//  - the projection when the model has none (CLIPTextModel from a ...WithProjection file).
RenameTable clip_text_rename_table(bool with_projection);
RenameTable clip_vision_rename_table(bool with_projection);

// Builds and loads a model folder part (config.json + weights): `text_encoder/`,
// `image_encoder/`, a transformers CLIP folder. The projection is used when the part's class
// says so (…WithProjection, CLIPModel), or, for an unnamed class, when the weights carry it.
// load_clip_vision_model also takes a LLaVA folder (a config with "vision_config"): its vision
// tower, without projection (e.g. the VLM's tower as an IP-Adapter Plus image encoder).
ClipTextModel load_clip_text_model(const ModelPart& part);
ClipVisionModel load_clip_vision_model(const ModelPart& part);

}  // namespace iris
