#include "diffusion/clip.h"

#include <limits>

#include "core/error.h"
#include "core/tensor_io.h"

namespace iris {

namespace {

std::string shape_of(const at::Tensor& t) { return shape_string(t.sizes()); }

// ---- config helpers ----

void require_positive(int64_t v, const char* key, const std::string& what) {
  if (v <= 0) throw ConfigError(join_context(what, std::string("key \"") + key + "\" must be positive, found " +
                                                      std::to_string(v)));
}

void validate_encoder(int64_t hidden, int64_t inter, int64_t layers, int64_t heads, double eps,
                      const std::string& act, const std::string& what) {
  require_positive(hidden, "hidden_size", what);
  require_positive(inter, "intermediate_size", what);
  require_positive(heads, "num_attention_heads", what);
  if (layers < 0) throw ConfigError(join_context(what, "key \"num_hidden_layers\" must be >= 0"));
  if (hidden % heads != 0)
    throw ConfigError(join_context(what, "hidden_size " + std::to_string(hidden) + " is not divisible by num_attention_heads " +
                                             std::to_string(heads)));
  if (!(eps > 0)) throw ConfigError(join_context(what, "key \"layer_norm_eps\" must be positive"));
  parse_clip_activation(act, what);
}

// The sub-config of a composite config (CLIPConfig / LlavaConfig) or the config itself.
// `legacy_key` ("text_config_dict") overlays the sub-config as CLIPConfig.__init__ does.
Json select_sub_config(const Json& j, const char* key, const char* legacy_key, std::string& what) {
  if (!j.is_object()) throw ConfigError(join_context(what, "expected a JSON object"));
  const auto type = j.find("model_type");
  const bool clip_type = type != j.end() && type->is_string() && type->get<std::string>() == "clip";
  const bool composite = j.contains(key) || (legacy_key && j.contains(legacy_key)) || clip_type;
  if (!composite) return j;
  Json sub = Json::object();
  if (j.contains(key) && !j[key].is_null()) {
    if (!j[key].is_object()) throw ConfigError(join_context(what, std::string("key \"") + key + "\": expected an object"));
    sub = j[key];
  }
  if (legacy_key && j.contains(legacy_key) && j[legacy_key].is_object())
    for (auto it = j[legacy_key].begin(); it != j[legacy_key].end(); ++it) sub[it.key()] = it.value();
  what = join_context(what, key);
  return sub;
}

// ---- activations ----

at::Tensor activate(ClipActivation act, const at::Tensor& x) {
  switch (act) {
    case ClipActivation::QuickGelu: return x * at::sigmoid(x * 1.702);
    case ClipActivation::Gelu: return at::gelu(x);
    case ClipActivation::GeluTanh: return at::gelu(x, "tanh");
    case ClipActivation::Relu: return at::relu(x);
  }
  return x;
}

torch::nn::LayerNorm make_layer_norm(int64_t dim, double eps) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim}).eps(eps));
}

torch::nn::Linear make_linear(int64_t in, int64_t out, bool bias) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
}

}  // namespace

ClipActivation parse_clip_activation(const std::string& name, const std::string& what) {
  if (name == "quick_gelu") return ClipActivation::QuickGelu;
  if (name == "gelu") return ClipActivation::Gelu;
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") return ClipActivation::GeluTanh;
  if (name == "relu") return ClipActivation::Relu;
  throw ConfigError(join_context(what, "key \"hidden_act\": unsupported activation \"" + name +
                                           "\" (expected quick_gelu, gelu, gelu_new, gelu_pytorch_tanh, gelu_fast or relu)"));
}

// ---------------------------------------------------------------------------------------------
// Configs

ClipTextConfig ClipTextConfig::from_json(const Json& j_in, const std::string& what_in) {
  std::string what = what_in;
  const Json j = select_sub_config(j_in, "text_config", "text_config_dict", what);
  ClipTextConfig c;
  c.vocab_size = json_int(j, "vocab_size", c.vocab_size, what);
  c.hidden_size = json_int(j, "hidden_size", c.hidden_size, what);
  c.intermediate_size = json_int(j, "intermediate_size", c.intermediate_size, what);
  c.projection_dim = json_int(j, "projection_dim", c.projection_dim, what);
  c.num_hidden_layers = json_int(j, "num_hidden_layers", c.num_hidden_layers, what);
  c.num_attention_heads = json_int(j, "num_attention_heads", c.num_attention_heads, what);
  c.max_position_embeddings = json_int(j, "max_position_embeddings", c.max_position_embeddings, what);
  c.hidden_act = json_string(j, "hidden_act", c.hidden_act, what);
  c.layer_norm_eps = json_number(j, "layer_norm_eps", c.layer_norm_eps, what);
  c.pad_token_id = json_int(j, "pad_token_id", c.pad_token_id, what);
  c.bos_token_id = json_int(j, "bos_token_id", c.bos_token_id, what);
  c.eos_token_id = json_int(j, "eos_token_id", c.eos_token_id, what);
  c.validate(what);
  return c;
}

void ClipTextConfig::validate(const std::string& what) const {
  validate_encoder(hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, layer_norm_eps, hidden_act,
                   what);
  require_positive(vocab_size, "vocab_size", what);
  require_positive(projection_dim, "projection_dim", what);
  require_positive(max_position_embeddings, "max_position_embeddings", what);
}

ClipEncoderConfig ClipTextConfig::encoder() const {
  return {hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
          parse_clip_activation(hidden_act, "CLIP text config"), layer_norm_eps};
}

ClipVisionConfig ClipVisionConfig::from_json(const Json& j_in, const std::string& what_in) {
  std::string what = what_in;
  const Json j = select_sub_config(j_in, "vision_config", "vision_config_dict", what);
  ClipVisionConfig c;
  c.hidden_size = json_int(j, "hidden_size", c.hidden_size, what);
  c.intermediate_size = json_int(j, "intermediate_size", c.intermediate_size, what);
  c.projection_dim = json_int(j, "projection_dim", c.projection_dim, what);
  c.num_hidden_layers = json_int(j, "num_hidden_layers", c.num_hidden_layers, what);
  c.num_attention_heads = json_int(j, "num_attention_heads", c.num_attention_heads, what);
  c.num_channels = json_int(j, "num_channels", c.num_channels, what);
  c.image_size = json_int(j, "image_size", c.image_size, what);
  c.patch_size = json_int(j, "patch_size", c.patch_size, what);
  c.hidden_act = json_string(j, "hidden_act", c.hidden_act, what);
  c.layer_norm_eps = json_number(j, "layer_norm_eps", c.layer_norm_eps, what);
  c.validate(what);
  return c;
}

void ClipVisionConfig::validate(const std::string& what) const {
  validate_encoder(hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, layer_norm_eps, hidden_act,
                   what);
  require_positive(projection_dim, "projection_dim", what);
  require_positive(num_channels, "num_channels", what);
  require_positive(image_size, "image_size", what);
  require_positive(patch_size, "patch_size", what);
  if (patch_size > image_size)
    throw ConfigError(join_context(what, "patch_size " + std::to_string(patch_size) + " is larger than image_size " +
                                             std::to_string(image_size)));
}

ClipEncoderConfig ClipVisionConfig::encoder() const {
  return {hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
          parse_clip_activation(hidden_act, "CLIP vision config"), layer_norm_eps};
}

int64_t clip_layers_for_hidden_state(int64_t index, int64_t num_layers, const std::string& what) {
  const int64_t count = num_layers + 1;  // embeddings + one per layer
  if (index < -count || index >= count)
    throw ConfigError(join_context(what, "hidden state index " + std::to_string(index) + " is out of range for " +
                                             std::to_string(num_layers) + " layers (valid: " + std::to_string(-count) +
                                             " .. " + std::to_string(num_layers) + ")"));
  return index < 0 ? count + index : index;
}

// ---------------------------------------------------------------------------------------------
// Transformer body

ClipAttentionImpl::ClipAttentionImpl(int64_t hidden_size, int64_t num_heads)
    : num_heads_(num_heads), head_dim_(hidden_size / num_heads) {
  k_proj = register_module("k_proj", make_linear(hidden_size, hidden_size, true));
  v_proj = register_module("v_proj", make_linear(hidden_size, hidden_size, true));
  q_proj = register_module("q_proj", make_linear(hidden_size, hidden_size, true));
  out_proj = register_module("out_proj", make_linear(hidden_size, hidden_size, true));
}

at::Tensor ClipAttentionImpl::forward(const at::Tensor& x, const AttentionOptions& opt) {
  const int64_t b = x.size(0), l = x.size(1);
  // [B, L, D] -> [B, H, L, Dh]
  auto split_heads = [&](const at::Tensor& t) { return t.view({b, l, num_heads_, head_dim_}).transpose(1, 2); };
  const at::Tensor q = split_heads(q_proj(x));
  const at::Tensor k = split_heads(k_proj(x));
  const at::Tensor v = split_heads(v_proj(x));
  // Default scale 1/sqrt(Dh); transformers scales q before the matmul, the same up to rounding.
  const at::Tensor o = attention(q, k, v, opt);               // [B, H, L, Dh]
  return out_proj(o.transpose(1, 2).reshape({b, l, num_heads_ * head_dim_}));  // [B, L, D]
}

ClipMlpImpl::ClipMlpImpl(int64_t hidden_size, int64_t intermediate_size, ClipActivation act) : act_(act) {
  fc1 = register_module("fc1", make_linear(hidden_size, intermediate_size, true));
  fc2 = register_module("fc2", make_linear(intermediate_size, hidden_size, true));
}

at::Tensor ClipMlpImpl::forward(const at::Tensor& x) {
  return fc2(activate(act_, fc1(x)));  // [B, L, D] -> [B, L, I] -> [B, L, D]
}

ClipEncoderLayerImpl::ClipEncoderLayerImpl(const ClipEncoderConfig& cfg) {
  self_attn = register_module("self_attn", ClipAttention(cfg.hidden_size, cfg.num_attention_heads));
  layer_norm1 = register_module("layer_norm1", make_layer_norm(cfg.hidden_size, cfg.layer_norm_eps));
  mlp = register_module("mlp", ClipMlp(cfg.hidden_size, cfg.intermediate_size, cfg.activation));
  layer_norm2 = register_module("layer_norm2", make_layer_norm(cfg.hidden_size, cfg.layer_norm_eps));
}

at::Tensor ClipEncoderLayerImpl::forward(const at::Tensor& x, const AttentionOptions& opt) {
  at::Tensor h = x + self_attn->forward(layer_norm1(x), opt);  // [B, L, D]
  return h + mlp->forward(layer_norm2(h));
}

ClipEncoderImpl::ClipEncoderImpl(const ClipEncoderConfig& cfg) {
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    ClipEncoderLayer layer(cfg);
    layers->push_back(layer);
    blocks_.push_back(layer);
  }
}

at::Tensor ClipEncoderImpl::forward(at::Tensor x, const AttentionOptions& opt, int64_t num_layers,
                                    std::vector<at::Tensor>* hidden_states) {
  const int64_t n = num_layers < 0 ? this->num_layers() : std::min(num_layers, this->num_layers());
  if (hidden_states) hidden_states->push_back(x);
  for (int64_t i = 0; i < n; ++i) {
    x = blocks_[static_cast<size_t>(i)]->forward(x, opt);  // [B, L, D]
    if (hidden_states) hidden_states->push_back(x);
  }
  return x;
}

// ---------------------------------------------------------------------------------------------
// Text tower

ClipTextEmbeddingsImpl::ClipTextEmbeddingsImpl(const ClipTextConfig& cfg) {
  token_embedding = register_module("token_embedding", torch::nn::Embedding(cfg.vocab_size, cfg.hidden_size));
  position_embedding =
      register_module("position_embedding", torch::nn::Embedding(cfg.max_position_embeddings, cfg.hidden_size));
}

at::Tensor ClipTextEmbeddingsImpl::forward(const at::Tensor& input_ids) {
  // input_ids: [B, L]; position ids are 0..L-1 (transformers' default).
  const at::Tensor positions = at::arange(input_ids.size(1), input_ids.options().dtype(at::kLong));
  return token_embedding(input_ids) + position_embedding(positions).unsqueeze(0);  // [B, L, D]
}

ClipTextTransformerImpl::ClipTextTransformerImpl(const ClipTextConfig& cfg) : cfg_(cfg) {
  cfg_.validate("CLIP text config");
  embeddings = register_module("embeddings", ClipTextEmbeddings(cfg_));
  encoder = register_module("encoder", ClipEncoder(cfg_.encoder()));
  final_layer_norm = register_module("final_layer_norm", make_layer_norm(cfg_.hidden_size, cfg_.layer_norm_eps));
}

at::Tensor ClipTextTransformerImpl::prepare_ids(const at::Tensor& input_ids) const {
  if (!input_ids.defined() || input_ids.dim() != 2)
    throw ShapeError("CLIP text: input_ids must be [batch, tokens], got " +
                     (input_ids.defined() ? shape_of(input_ids) : std::string("an undefined tensor")));
  if (at::isFloatingType(input_ids.scalar_type()) || input_ids.scalar_type() == at::kBool)
    throw ShapeError("CLIP text: input_ids must hold integers, got " + std::string(c10::toString(input_ids.scalar_type())));
  const int64_t len = input_ids.size(1);
  if (len == 0 || input_ids.size(0) == 0) throw ShapeError("CLIP text: empty input_ids " + shape_of(input_ids));
  if (len > cfg_.max_position_embeddings)
    throw ShapeError("CLIP text: input_ids has " + std::to_string(len) + " tokens, more than the model's max_position_embeddings " +
                     std::to_string(cfg_.max_position_embeddings) + " (input_ids " + shape_of(input_ids) + ")");
  at::Tensor ids = input_ids.to(embeddings->token_embedding->weight.device(), at::kLong);
  const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
  if (lo < 0 || hi >= cfg_.vocab_size)
    throw ShapeError("CLIP text: token id " + std::to_string(lo < 0 ? lo : hi) + " is outside the vocabulary [0, " +
                     std::to_string(cfg_.vocab_size) + ")");
  return ids;
}

AttentionOptions ClipTextTransformerImpl::attention_options(const at::Tensor& ids,
                                                            const c10::optional<at::Tensor>& mask) const {
  AttentionOptions opt;
  if (!mask || !mask->defined()) {
    opt.causal = true;  // the common case (Stable Diffusion): the helper's causal path
    return opt;
  }
  if (mask->sizes() != ids.sizes())
    throw ShapeError("CLIP text: attention_mask " + shape_of(*mask) + " does not match input_ids " + shape_of(ids));
  // With padding, one additive mask holds both, as transformers builds it: the lowest float
  // above the diagonal and at padded keys (both: -inf). Rows whose visible keys are all
  // padding stay finite (uniform weights), as in transformers. Fused kernels also refuse an
  // explicit mask together with is_causal.
  const int64_t b = ids.size(0), l = ids.size(1);
  const float lowest = std::numeric_limits<float>::lowest();
  const at::ScalarType dtype = embeddings->token_embedding->weight.scalar_type();
  const at::TensorOptions o = ids.options().dtype(dtype);
  const at::Tensor future = at::ones({l, l}, ids.options().dtype(at::kBool)).triu(1);  // key j > query i
  const at::Tensor causal = at::zeros({l, l}, o).masked_fill(future, lowest).view({1, 1, l, l});
  const at::Tensor padded = mask->to(ids.device()).eq(0).view({b, 1, 1, l});
  const at::Tensor padding = at::zeros({b, 1, 1, l}, o).masked_fill(padded, lowest);
  opt.mask = causal + padding;  // [B, 1, L, L]
  return opt;
}

at::Tensor ClipTextTransformerImpl::eos_positions(const at::Tensor& ids) const {
  // ids: [B, L] -> [B]. argmax returns the first maximal index.
  if (cfg_.eos_token_id == 2) return ids.argmax(-1);  // legacy configs: EOT has the largest id
  return ids.eq(cfg_.eos_token_id).to(at::kInt).argmax(-1);
}

ClipTextOutput ClipTextTransformerImpl::forward(const at::Tensor& input_ids, const ClipTextOptions& opt) {
  const at::Tensor ids = prepare_ids(input_ids);
  const AttentionOptions attn = attention_options(ids, opt.attention_mask);
  ClipTextOutput out;
  at::Tensor h = embeddings->forward(ids);  // [B, L, D]
  h = encoder->forward(h, attn, -1, opt.output_hidden_states ? &out.hidden_states : nullptr);
  out.last_hidden_state = final_layer_norm(h);  // [B, L, D]
  const int64_t b = ids.size(0), d = cfg_.hidden_size;
  const at::Tensor pos = eos_positions(ids).to(at::kLong).view({b, 1, 1}).expand({b, 1, d});
  out.pooler_output = out.last_hidden_state.gather(1, pos).squeeze(1);  // [B, D]
  return out;
}

at::Tensor ClipTextTransformerImpl::hidden_state(const at::Tensor& input_ids, int64_t index,
                                                 const c10::optional<at::Tensor>& attention_mask) {
  const int64_t layers = clip_layers_for_hidden_state(index, cfg_.num_hidden_layers, "CLIP text");
  const at::Tensor ids = prepare_ids(input_ids);
  return encoder->forward(embeddings->forward(ids), attention_options(ids, attention_mask), layers);
}

ClipTextModelImpl::ClipTextModelImpl(const ClipTextConfig& cfg, bool with_projection) {
  text_model = register_module("text_model", ClipTextTransformer(cfg));
  if (with_projection)
    text_projection = register_module("text_projection", make_linear(cfg.hidden_size, cfg.projection_dim, false));
}

ClipTextOutput ClipTextModelImpl::forward(const at::Tensor& input_ids, const ClipTextOptions& opt) {
  ClipTextOutput out = text_model->forward(input_ids, opt);
  if (with_projection()) out.text_embeds = text_projection(out.pooler_output);  // [B, P]
  return out;
}

LoadReport ClipTextModelImpl::load(const TensorStore& store, const LoadOptions& options) {
  return load_state_dict(*this, store, clip_text_rename_table(with_projection()), options);
}

// ---------------------------------------------------------------------------------------------
// Vision tower

ClipVisionEmbeddingsImpl::ClipVisionEmbeddingsImpl(const ClipVisionConfig& cfg) {
  class_embedding = register_parameter("class_embedding", at::randn({cfg.hidden_size}) * 0.02);
  patch_embedding = register_module(
      "patch_embedding", torch::nn::Conv2d(torch::nn::Conv2dOptions(cfg.num_channels, cfg.hidden_size, cfg.patch_size)
                                               .stride(cfg.patch_size)
                                               .bias(false)));
  position_embedding = register_module("position_embedding", torch::nn::Embedding(cfg.num_positions(), cfg.hidden_size));
}

at::Tensor ClipVisionEmbeddingsImpl::forward(const at::Tensor& pixel_values) {
  const int64_t b = pixel_values.size(0), d = class_embedding.size(0);
  at::Tensor patches = patch_embedding(pixel_values);       // [B, D, S/P, S/P]
  patches = patches.flatten(2).transpose(1, 2);            // [B, N, D], row-major over the grid
  const at::Tensor cls = class_embedding.view({1, 1, d}).expand({b, 1, d});
  const at::Tensor x = at::cat({cls, patches}, 1);         // [B, 1 + N, D]
  return x + position_embedding->weight.unsqueeze(0);      // position ids 0..N
}

ClipVisionTransformerImpl::ClipVisionTransformerImpl(const ClipVisionConfig& cfg) : cfg_(cfg) {
  cfg_.validate("CLIP vision config");
  embeddings = register_module("embeddings", ClipVisionEmbeddings(cfg_));
  pre_layrnorm = register_module("pre_layrnorm", make_layer_norm(cfg_.hidden_size, cfg_.layer_norm_eps));
  encoder = register_module("encoder", ClipEncoder(cfg_.encoder()));
  post_layernorm = register_module("post_layernorm", make_layer_norm(cfg_.hidden_size, cfg_.layer_norm_eps));
}

at::Tensor ClipVisionTransformerImpl::prepare_pixels(const at::Tensor& px) const {
  const int64_t c = cfg_.num_channels, s = cfg_.image_size;
  const std::string expected = "[B," + std::to_string(c) + "," + std::to_string(s) + "," + std::to_string(s) + "]";
  if (!px.defined() || px.dim() != 4 || px.size(0) == 0 || px.size(1) != c || px.size(2) != s || px.size(3) != s)
    throw ShapeError("CLIP vision: pixel_values " + (px.defined() ? shape_of(px) : std::string("(undefined)")) +
                     " do not fit the model: expected " + expected + " (image_size " + std::to_string(s) +
                     ", num_channels " + std::to_string(c) + ")");
  if (!at::isFloatingType(px.scalar_type()))
    throw ShapeError("CLIP vision: pixel_values must be floating point (normalised), got " +
                     std::string(c10::toString(px.scalar_type())));
  const at::Tensor& w = embeddings->patch_embedding->weight;
  return px.to(w.device(), w.scalar_type());
}

at::Tensor ClipVisionTransformerImpl::embed(const at::Tensor& pixel_values) {
  return pre_layrnorm(embeddings->forward(prepare_pixels(pixel_values)));  // [B, 1 + N, D]
}

ClipVisionOutput ClipVisionTransformerImpl::forward(const at::Tensor& pixel_values, bool output_hidden_states) {
  ClipVisionOutput out;
  const AttentionOptions attn;  // bidirectional, no mask
  out.last_hidden_state =
      encoder->forward(embed(pixel_values), attn, -1, output_hidden_states ? &out.hidden_states : nullptr);
  out.pooler_output = post_layernorm(out.last_hidden_state.select(1, 0));  // CLS token: [B, D]
  return out;
}

at::Tensor ClipVisionTransformerImpl::hidden_state(const at::Tensor& pixel_values, int64_t index) {
  const int64_t layers = clip_layers_for_hidden_state(index, cfg_.num_hidden_layers, "CLIP vision");
  return encoder->forward(embed(pixel_values), AttentionOptions(), layers);  // [B, 1 + N, D]
}

ClipVisionModelImpl::ClipVisionModelImpl(const ClipVisionConfig& cfg, bool with_projection) {
  vision_model = register_module("vision_model", ClipVisionTransformer(cfg));
  if (with_projection)
    visual_projection = register_module("visual_projection", make_linear(cfg.hidden_size, cfg.projection_dim, false));
}

ClipVisionOutput ClipVisionModelImpl::forward(const at::Tensor& pixel_values, bool output_hidden_states) {
  ClipVisionOutput out = vision_model->forward(pixel_values, output_hidden_states);
  if (with_projection()) out.image_embeds = visual_projection(out.pooler_output);  // [B, P]
  return out;
}

LoadReport ClipVisionModelImpl::load(const TensorStore& store, const LoadOptions& options) {
  return load_state_dict(*this, store, clip_vision_rename_table(with_projection()), options);
}

// ---------------------------------------------------------------------------------------------
// Loading

RenameTable clip_text_rename_table(bool with_projection) {
  RenameTable t;
  t.ignore("text_model.embeddings.position_ids").ignore("vision_model.").ignore("visual_projection.").ignore("logit_scale");
  if (!with_projection) t.ignore("text_projection.");
  return t;
}

RenameTable clip_vision_rename_table(bool with_projection) {
  RenameTable t;
  t.ignore("vision_model.embeddings.position_ids").ignore("text_model.").ignore("text_projection.").ignore("logit_scale");
  if (!with_projection) t.ignore("visual_projection.");
  return t;
}

namespace {

const TensorStore& weights_of(const ModelPart& part, const char* kind) {
  if (!part.weights)
    throw CheckpointError(join_context(part.dir.empty() ? std::string(kind) : part.dir, "no weights (.safetensors) found"));
  return *part.weights;
}

// The class says whether there is a projection; without a class, the weights do.
bool wants_projection(const ModelPart& part, const char* with_class, const char* plain_class, const char* key) {
  if (part.class_name == with_class || part.class_name == "CLIPModel") return true;
  if (part.class_name == plain_class) return false;
  return part.weights && part.weights->contains(key);
}

}  // namespace

ClipTextModel load_clip_text_model(const ModelPart& part) {
  const TensorStore& store = weights_of(part, "CLIP text model");
  const std::string what = part.config_path.empty() ? part.dir : part.config_path;
  ClipTextModel model(ClipTextConfig::from_json(part.config.is_null() ? Json::object() : part.config, what),
                      wants_projection(part, "CLIPTextModelWithProjection", "CLIPTextModel", "text_projection.weight"));
  model->eval();
  model->load(store);
  return model;
}

ClipVisionModel load_clip_vision_model(const ModelPart& part) {
  const TensorStore& store = weights_of(part, "CLIP vision model");
  const std::string what = part.config_path.empty() ? part.dir : part.config_path;
  // A LLaVA folder: its vision tower (vision_tower.*, no projection). from_json reads the
  // LlavaConfig's vision_config as it reads a CLIPConfig's.
  const auto type = part.config.is_object() ? part.config.find("model_type") : part.config.end();
  const bool llava = type != part.config.end() && type->is_string() && type->get<std::string>() == "llava";
  ClipVisionModel model(
      ClipVisionConfig::from_json(part.config.is_null() ? Json::object() : part.config, what),
      !llava && wants_projection(part, "CLIPVisionModelWithProjection", "CLIPVisionModel", "visual_projection.weight"));
  model->eval();
  LoadOptions opt;
  if (llava) opt.source_prefix = "vision_tower.";
  model->load(store, opt);
  return model;
}

}  // namespace iris
