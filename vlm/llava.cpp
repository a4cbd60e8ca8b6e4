#include "vlm/llava.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>

#include "core/checkpoint.h"
#include "core/error.h"

namespace iris {

namespace {

std::string str(int64_t v) { return std::to_string(v); }

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

// transformers' LlavaConfig builds this CLIP-L/336 tower when "vision_config" is absent.
Json default_llava_vision_config() {
  return {{"model_type", "clip_vision_model"}, {"intermediate_size", 4096}, {"hidden_size", 1024},
          {"patch_size", 14}, {"image_size", 336}, {"num_hidden_layers", 24}, {"num_attention_heads", 16},
          {"projection_dim", 768}};
}

}  // namespace

// =============================================================================================
// Activations

HfActivation parse_hf_activation(const std::string& name, const std::string& what) {
  static const std::vector<std::pair<const char*, HfActivation>> kNames = {
      {"gelu", HfActivation::Gelu},           {"gelu_python", HfActivation::Gelu},
      {"gelu_pytorch_tanh", HfActivation::GeluTanh}, {"gelu_new", HfActivation::GeluNew},
      {"gelu_accurate", HfActivation::GeluNew}, {"gelu_fast", HfActivation::GeluFast},
      {"gelu_10", HfActivation::Gelu10},      {"quick_gelu", HfActivation::QuickGelu},
      {"relu", HfActivation::Relu},           {"relu2", HfActivation::Relu2},
      {"relu6", HfActivation::Relu6},         {"leaky_relu", HfActivation::LeakyRelu},
      {"silu", HfActivation::Silu},           {"swish", HfActivation::Silu},
      {"mish", HfActivation::Mish},           {"tanh", HfActivation::Tanh},
      {"sigmoid", HfActivation::Sigmoid},     {"linear", HfActivation::Linear}};
  std::string known;
  for (const auto& [n, a] : kNames) {
    if (name == n) return a;
    known += (known.empty() ? "" : ", ") + std::string(n);
  }
  throw ConfigError(join_context(what, "activation \"" + name + "\" is not supported (supported: " + known + ")"));
}

at::Tensor apply_hf_activation(HfActivation act, const at::Tensor& x) {
  constexpr double kSqrt2OverPi = 0.7978845608028654;
  switch (act) {
    case HfActivation::Gelu: return at::gelu(x);
    case HfActivation::GeluTanh: return at::gelu(x, "tanh");
    case HfActivation::GeluNew: return 0.5 * x * (1.0 + at::tanh(kSqrt2OverPi * (x + 0.044715 * at::pow(x, 3.0))));
    case HfActivation::GeluFast: return 0.5 * x * (1.0 + at::tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)));
    case HfActivation::Gelu10: return at::clamp(at::gelu(x), -10.0, 10.0);
    case HfActivation::QuickGelu: return x * at::sigmoid(1.702 * x);
    case HfActivation::Relu: return at::relu(x);
    case HfActivation::Relu2: return at::pow(at::relu(x), 2);
    case HfActivation::Relu6: return at::hardtanh(x, 0.0, 6.0);
    case HfActivation::LeakyRelu: return at::leaky_relu(x, 0.01);
    case HfActivation::Silu: return at::silu(x);
    case HfActivation::Mish: return x * at::tanh(at::softplus(x));
    case HfActivation::Tanh: return at::tanh(x);
    case HfActivation::Sigmoid: return at::sigmoid(x);
    case HfActivation::Linear: return x;
  }
  return x;
}

// =============================================================================================
// Config

LlavaConfig LlavaConfig::from_json(const Json& j, const std::string& what) {
  if (!j.is_object()) throw ConfigError(join_context(what, "expected a JSON object"));
  const std::string type = json_string(j, "model_type", "llava", what);
  if (type != "llava")
    throw ConfigError(join_context(what, "key \"model_type\": \"" + type +
                                             "\" is not a LLaVA-1.5 model (supported: \"llava\")"));
  LlavaConfig c;
  Json vision = default_llava_vision_config();
  if (j.contains("vision_config") && !j["vision_config"].is_null()) {
    vision = j["vision_config"];
    if (!vision.is_object()) throw ConfigError(join_context(what, "key \"vision_config\": expected an object"));
    const std::string vt = json_string(vision, "model_type", "clip_vision_model", join_context(what, "vision_config"));
    if (vt != "clip_vision_model")
      throw ConfigError(join_context(what, "vision_config \"model_type\": \"" + vt +
                                               "\" is not supported (the vision tower must be \"clip_vision_model\")"));
  }
  c.vision = ClipVisionConfig::from_json(vision, join_context(what, "vision_config"));
  c.text = LlamaConfig::from_json(j, what);  // reads "text_config"
  c.image_token_index = json_int(j, "image_token_index", c.image_token_index, what);
  c.projector_hidden_act = json_string(j, "projector_hidden_act", c.projector_hidden_act, what);
  auto layer = j.find("vision_feature_layer");
  if (layer != j.end() && !layer->is_null()) {
    if (!layer->is_number_integer())
      throw ConfigError(join_context(what, "key \"vision_feature_layer\": expected one integer (lists of layers are "
                                           "not supported), found " + layer->dump()));
    c.vision_feature_layer = layer->get<int64_t>();
  }
  const std::string select = json_string(j, "vision_feature_select_strategy", "default", what);
  if (select == "default") c.feature_select = FeatureSelect::Default;
  else if (select == "full") c.feature_select = FeatureSelect::Full;
  else
    throw ConfigError(join_context(what, "key \"vision_feature_select_strategy\": \"" + select +
                                             "\" (expected \"default\" or \"full\")"));
  auto pad = j.find("pad_token_id");
  c.pad_token_id = (pad == j.end() || pad->is_null()) ? -1 : json_int(j, "pad_token_id", -1, what);
  c.image_position_embedding = json_bool(j, "image_position_embedding", false, what);
  auto ftz = j.find("ftz");
  if (ftz != j.end() && !ftz->is_null()) {
    c.ftz = FtzConfig::from_json(*ftz, what);
    c.has_ftz = true;
  }
  c.validate(what);
  return c;
}

void LlavaConfig::validate(const std::string& what) const {
  vision.validate(join_context(what, "vision_config"));
  text.validate(join_context(what, "text_config"));
  parse_hf_activation(projector_hidden_act, join_context(what, "projector_hidden_act"));
  clip_layers_for_hidden_state(vision_feature_layer, vision.num_hidden_layers, join_context(what, "vision_feature_layer"));
  if (image_token_index < 0 || image_token_index >= text.vocab_size)
    throw ConfigError(join_context(what, "image_token_index " + str(image_token_index) +
                                             " is outside the language model's vocabulary [0, " + str(text.vocab_size) +
                                             ")"));
}

int64_t LlavaConfig::image_feature_tokens() const {
  return vision.num_patches() + (feature_select == FeatureSelect::Full ? 1 : 0);
}

// =============================================================================================
// Modules

at::Tensor sincos_position_table(int64_t tokens, int64_t hidden, bool grid) {
  const int64_t g = grid ? static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(tokens)))) : tokens;
  if (grid && g * g != tokens)
    throw ShapeError("sin-cos position table: " + str(tokens) + " tokens do not form a square patch grid");
  const int64_t axes = grid ? 2 : 1, per_axis = hidden / axes, freqs = per_axis / 2;
  at::Tensor table = at::zeros({tokens, hidden});
  auto t = table.accessor<float, 2>();
  for (int64_t n = 0; n < tokens; ++n)
    for (int64_t a = 0; a < axes; ++a) {
      const double coord = static_cast<double>(grid ? (a == 0 ? n / g : n % g) : n);  // row, column / index
      for (int64_t f = 0; f < freqs; ++f) {
        const double w = std::pow(10000.0, -static_cast<double>(f) / static_cast<double>(freqs));
        t[n][a * per_axis + f] = static_cast<float>(std::sin(coord * w));
        t[n][a * per_axis + freqs + f] = static_cast<float>(std::cos(coord * w));
      }
    }
  const double rms = table.pow(2).mean().sqrt().item<double>();
  return rms > 0 ? table / rms : table;
}

LlavaProjectorImpl::LlavaProjectorImpl(int64_t vision_dim, int64_t text_dim, HfActivation act, int64_t position_tokens)
    : act_(act) {
  linear_1 = register_module("linear_1", torch::nn::Linear(vision_dim, text_dim));
  linear_2 = register_module("linear_2", torch::nn::Linear(text_dim, text_dim));
  if (position_tokens > 0)
    position_embedding = register_parameter("position_embedding", at::zeros({position_tokens, text_dim}));
}

at::Tensor LlavaProjectorImpl::forward(const at::Tensor& x) {
  at::Tensor y = linear_2(apply_hf_activation(act_, linear_1(x)));  // [..., T, H]
  if (!position_embedding.defined()) return y;
  if (y.dim() < 2 || y.size(-2) != position_embedding.size(0))
    throw ConfigError("LLaVA projector: the image position embedding has " + str(position_embedding.size(0)) +
                      " tokens but the image gives " + (y.dim() < 2 ? std::string("none") : str(y.size(-2))));
  return y + position_embedding;  // same module, so same dtype and device as y
}

LlamaInput LlavaMerged::input() const {
  LlamaInput in;
  in.inputs_embeds = inputs_embeds;
  in.attention_mask = attention_mask;
  in.position_ids = position_ids;
  in.image_mask = image_mask;
  return in;
}

LlavaForConditionalGenerationImpl::LlavaForConditionalGenerationImpl(const LlavaConfig& cfg) : cfg_(cfg) {
  cfg_.validate("LLaVA config");
  vision_tower = register_module("vision_tower", ClipVisionModel(cfg_.vision, /*with_projection=*/false));
  multi_modal_projector = register_module(
      "multi_modal_projector",
      LlavaProjector(cfg_.vision.hidden_size, cfg_.text.hidden_size,
                     parse_hf_activation(cfg_.projector_hidden_act, "projector_hidden_act"),
                     cfg_.image_position_embedding ? cfg_.image_feature_tokens() : 0));
  language_model = register_module("language_model", LlamaForCausalLM(cfg_.text));
  anchor_ = std::make_shared<ClipLayeredEncoder>(vision_tower);
  if (cfg_.has_ftz)
    ftz = register_module("ftz", FtzFusion(cfg_.ftz, cfg_.vision.num_hidden_layers, cfg_.vision.hidden_size));
}

at::Tensor LlavaForConditionalGenerationImpl::vision_features(const at::Tensor& pixel_values) {
  // hidden_states[vision_feature_layer]: [N, 1 + P, Dv]
  const at::Tensor h = ftz ? ftz->hidden_state(*anchor_, pixel_values, cfg_.vision_feature_layer)
                           : vision_tower->hidden_state(pixel_values, cfg_.vision_feature_layer);
  if (cfg_.feature_select == LlavaConfig::FeatureSelect::Default) return h.narrow(1, 1, h.size(1) - 1);  // no CLS
  return h;
}

at::Tensor LlavaForConditionalGenerationImpl::image_features(const at::Tensor& pixel_values) {
  return multi_modal_projector(vision_features(pixel_values));  // [N, T, H]
}

LlavaMerged LlavaForConditionalGenerationImpl::merge(const at::Tensor& input_ids, const at::Tensor& image_features,
                                                     const at::Tensor& attention_mask) {
  if (!input_ids.defined() || input_ids.dim() != 2 || input_ids.size(0) == 0 || input_ids.size(1) == 0)
    throw ShapeError("LLaVA merge: input_ids must be a non-empty [B, L]");
  const at::Tensor ids = input_ids.to(at::kCPU, at::kLong).contiguous();
  const int64_t B = ids.size(0), L = ids.size(1), H = cfg_.text.hidden_size;
  at::Tensor mask = attention_mask.defined() ? attention_mask.to(at::kCPU, at::kLong).contiguous()
                                             : at::ones({B, L}, at::TensorOptions().dtype(at::kLong));
  if (mask.sizes() != ids.sizes())
    throw ShapeError("LLaVA merge: attention_mask must be [B, L] like input_ids");

  const at::Tensor is_image = ids.eq(cfg_.image_token_index);  // [B, L]
  const int64_t num_images = is_image.sum().item<int64_t>();
  const int64_t have = image_features.defined() ? image_features.size(0) : 0;
  if (num_images != have)
    throw ConfigError("LLaVA: the prompt has " + str(num_images) + " <image> token(s) (id " +
                      str(cfg_.image_token_index) + ") but " + str(have) + " image(s) were given");
  if (image_features.defined() && (image_features.dim() != 3 || image_features.size(2) != H))
    throw ShapeError("LLaVA merge: image_features must be [N, T, " + str(H) + "]");
  const int64_t T = image_features.defined() ? image_features.size(1) : 1;

  // Text embeddings (image tokens looked up as id 0: their rows are replaced anyway).
  const at::Tensor text = language_model->model->embed(ids.masked_fill(is_image, 0));  // [B, L, H]
  // One table every merged slot gathers from: text rows, image rows, then a zero row.
  std::vector<at::Tensor> parts = {text.reshape({B * L, H})};
  if (image_features.defined()) parts.push_back(image_features.to(text.options()).reshape({-1, H}));
  parts.push_back(at::zeros({1, H}, text.options()));
  const at::Tensor table = at::cat(parts, 0);
  const int64_t zero_row = table.size(0) - 1, image_base = B * L;

  // Where each token lands: cumsum(is_image * (T - 1) + 1) - 1, as transformers.
  const at::Tensor new_pos = (is_image.to(at::kLong) * (T - 1) + 1).cumsum(1) - 1;  // [B, L]
  const int64_t merged = is_image.sum(1).max().item<int64_t>() * (T - 1) + L;
  // Left padding unless some row ends with the pad token (transformers' test).
  const bool left_padding = !ids.select(1, L - 1).eq(cfg_.pad_token_id).any().item<bool>();

  at::Tensor gather = at::full({B, merged}, zero_row, at::TensorOptions().dtype(at::kLong));
  at::Tensor out_mask = at::zeros({B, merged}, at::TensorOptions().dtype(at::kLong));
  at::Tensor image_mask = at::zeros({B, merged}, at::TensorOptions().dtype(at::kBool));
  auto g = gather.accessor<int64_t, 2>();
  auto m = out_mask.accessor<int64_t, 2>();
  auto im = image_mask.accessor<bool, 2>();
  auto id = ids.accessor<int64_t, 2>();
  auto np = new_pos.accessor<int64_t, 2>();
  auto in_mask = mask.accessor<int64_t, 2>();
  int64_t next_image = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t shift = left_padding ? merged - 1 - np[b][L - 1] : 0;
    for (int64_t k = 0; k < L; ++k) {
      const int64_t dest = np[b][k] + shift;
      if (id[b][k] == cfg_.image_token_index) {
        for (int64_t t = 0; t < T; ++t) {
          const int64_t s = dest - (T - 1) + t;
          g[b][s] = image_base + next_image * T + t;
          m[b][s] = 1;
          im[b][s] = true;
        }
        ++next_image;
      } else {
        // Pad-token embeddings are zeroed (transformers masks them this way for the cache).
        g[b][dest] = id[b][k] == cfg_.pad_token_id ? zero_row : b * L + k;
        m[b][dest] = in_mask[b][k];
      }
    }
  }
  LlavaMerged out;
  out.inputs_embeds = table.index_select(0, gather.view({-1}).to(table.device())).view({B, merged, H});
  out.attention_mask = out_mask;
  out.position_ids = (out_mask.cumsum(1) - 1).masked_fill(out_mask.eq(0), 1);
  out.image_mask = image_mask;
  return out;
}

LlamaOutput LlavaForConditionalGenerationImpl::forward(const at::Tensor& input_ids, const at::Tensor& pixel_values,
                                                       const at::Tensor& attention_mask, KVCache* cache,
                                                       const LlamaForwardOptions& opt) {
  const at::Tensor features = pixel_values.defined() ? image_features(pixel_values) : at::Tensor();
  const LlavaMerged merged = merge(input_ids, features, attention_mask);
  return language_model->forward(merged.input(), cache, opt);
}

void LlavaForConditionalGenerationImpl::init_weights(uint64_t seed, double std) {
  at::NoGradGuard no_grad;
  language_model->init_weights(seed, std);
  if (ftz) ftz->init_weights(seed + 2, std);
  at::Generator gen = at::detail::createCPUGenerator(seed + 1);
  auto init = [&](torch::nn::Module& m) {
    for (auto& p : m.named_parameters(true)) {
      const std::string& n = p.key();
      at::Tensor& t = p.value();
      if (n.size() >= 4 && n.compare(n.size() - 4, 4, "bias") == 0) t.zero_();
      else if (n == "position_embedding") t.zero_();  // starts as the plain projector
      else if (n.find("norm") != std::string::npos) t.fill_(1.0);
      else t.copy_(at::empty(t.sizes(), t.options().device(at::kCPU)).normal_(0.0, std, gen));
    }
  };
  init(*vision_tower);
  init(*multi_modal_projector);
}

// =============================================================================================
// Generation

LlavaPrefill llava_prefill(LlavaForConditionalGeneration& model, const std::vector<int64_t>& input_ids,
                           const at::Tensor& pixel_values, int64_t max_new_tokens) {
  if (input_ids.empty()) throw ConfigError("LLaVA: empty prompt");
  if (max_new_tokens < 0) throw ConfigError("LLaVA: max_new_tokens must be >= 0");
  const LlavaConfig& cfg = model->config();
  LlavaPrefill p;
  const auto t0 = Clock::now();
  const at::Tensor ids =
      at::tensor(input_ids, at::TensorOptions().dtype(at::kLong)).view({1, static_cast<int64_t>(input_ids.size())});
  const at::Tensor features = pixel_values.defined() ? model->image_features(pixel_values) : at::Tensor();
  p.vision_ms = ms_since(t0);
  const LlavaMerged merged = model->merge(ids, features);
  p.merged_length = merged.inputs_embeds.size(1);

  const int64_t context = cfg.text.max_position_embeddings;
  const bool dynamic = cfg.text.rope_scaling.type == RopeScaling::Type::Dynamic;
  if (p.merged_length > context && !dynamic) {
    const int64_t image_positions = features.defined() ? features.size(0) * features.size(1) : 0;
    throw ConfigError("LLaVA: the prompt is " + str(p.merged_length) + " positions long (" +
                      str(p.merged_length - image_positions) + " text tokens + " + str(image_positions) +
                      " image features), more than the model's context of " + str(context) +
                      " (max_position_embeddings)");
  }
  int64_t capacity = p.merged_length + std::max<int64_t>(max_new_tokens, 1);
  if (!dynamic) capacity = std::min(capacity, context);
  p.cache = model->language_model->new_cache(1, capacity);
  LlamaForwardOptions fo;
  fo.logits = LogitsMode::Last;
  p.last_logits = model->language_model->forward(merged.input(), &p.cache, fo).logits;  // [1, 1, V]
  p.prefill_ms = ms_since(t0);
  return p;
}

GenerateResult llava_generate(LlavaForConditionalGeneration& model, const std::vector<int64_t>& input_ids,
                              const at::Tensor& pixel_values, const GenerateOptions& opt,
                              const TokenCallback& on_token) {
  LlavaPrefill p;
  {
    std::unique_ptr<c10::InferenceMode> inference;
    std::unique_ptr<at::NoGradGuard> no_grad;
    if (opt.inference_mode) inference = std::make_unique<c10::InferenceMode>();
    else no_grad = std::make_unique<at::NoGradGuard>();
    p = llava_prefill(model, input_ids, pixel_values, opt.max_new_tokens);
  }
  GenerateOptions o = opt;
  if (o.cache_capacity <= 0) o.cache_capacity = p.cache.capacity();
  GenerateResult r = generate_from(model->language_model, p.cache, p.last_logits, o, on_token, input_ids);
  r.prompt_tokens = p.merged_length;
  r.prefill_ms = p.prefill_ms;
  return r;
}

// =============================================================================================
// Loading

namespace {

// The vision tower's and projector's sizes against the file, naming the config key.
void check_vision_against_weights(const LlavaConfig& c, const TensorStore& store) {
  auto expect = [&](const std::string& name, int dim, int64_t want, const std::string& key) {
    if (!store.contains(name)) return;
    const auto& shape = store.info(name).shape;
    if (static_cast<int>(shape.size()) <= dim || shape[dim] != want)
      throw CheckpointError(join_context(store.path(), "config \"" + key + "\" = " + str(want) + " contradicts " + name +
                                                           " of shape " + shape_string(shape)));
  };
  const std::string v = "vision_tower.vision_model.";
  expect(v + "embeddings.patch_embedding.weight", 0, c.vision.hidden_size, "vision_config.hidden_size");
  expect(v + "embeddings.patch_embedding.weight", 1, c.vision.num_channels, "vision_config.num_channels");
  expect(v + "embeddings.patch_embedding.weight", 2, c.vision.patch_size, "vision_config.patch_size");
  expect(v + "embeddings.position_embedding.weight", 0, c.vision.num_positions(),
         "vision_config.image_size / patch_size (positions)");
  expect(v + "encoder.layers.0.mlp.fc1.weight", 0, c.vision.intermediate_size, "vision_config.intermediate_size");
  int64_t layers = 0;
  const std::string lp = v + "encoder.layers.";
  for (const std::string& n : store.names())
    if (n.compare(0, lp.size(), lp) == 0) layers = std::max<int64_t>(layers, std::stoll(n.substr(lp.size())) + 1);
  if (store.contains(v + "embeddings.patch_embedding.weight") && layers != c.vision.num_hidden_layers)
    throw CheckpointError(join_context(store.path(), "config \"vision_config.num_hidden_layers\" = " +
                                                         str(c.vision.num_hidden_layers) +
                                                         " contradicts the checkpoint, which has " + str(layers) +
                                                         " vision layers"));
  expect("multi_modal_projector.linear_1.weight", 0, c.text.hidden_size, "text_config.hidden_size");
  expect("multi_modal_projector.linear_1.weight", 1, c.vision.hidden_size, "vision_config.hidden_size");
}

void append(LoadReport& into, const LoadReport& r) {
  into.loaded.insert(into.loaded.end(), r.loaded.begin(), r.loaded.end());
  into.missing.insert(into.missing.end(), r.missing.begin(), r.missing.end());
  into.unexpected.insert(into.unexpected.end(), r.unexpected.begin(), r.unexpected.end());
  into.mismatched.insert(into.mismatched.end(), r.mismatched.begin(), r.mismatched.end());
}

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

}  // namespace

LoadReport load_llava_weights(LlavaForConditionalGeneration& model, const TensorStore& store,
                              const std::vector<std::string>& ignore_prefixes) {
  const LlavaConfig& c = model->config();
  // Every key must belong to a part (the per-part loads below only look under their prefix).
  const std::vector<std::string> names = store.names();
  std::vector<std::string> parts = {"vision_tower.", "multi_modal_projector.", "language_model."};
  if (c.has_ftz) parts.push_back("ftz.");
  for (const std::string& n : names) {
    if (std::any_of(ignore_prefixes.begin(), ignore_prefixes.end(), [&](const std::string& p) { return starts_with(n, p); }))
      continue;
    if (std::any_of(parts.begin(), parts.end(), [&](const std::string& p) { return starts_with(n, p); })) continue;
    if (starts_with(n, "ftz."))
      throw CheckpointError(join_context(store.path(), "the checkpoint has FtZ weights (" + n +
                                                           ") but its config declares no \"ftz\" block"));
    throw CheckpointError(join_context(store.path(), "unexpected key " + n +
                                                         " (a LLaVA checkpoint holds vision_tower.*, "
                                                         "multi_modal_projector.*, language_model.* and optionally ftz.*)"));
  }
  const std::string position_key = "multi_modal_projector.position_embedding";
  if (store.contains(position_key) && !c.image_position_embedding)
    throw CheckpointError(join_context(store.path(), "the checkpoint has " + position_key +
                                                         " but its config does not set \"image_position_embedding\": true"));
  if (!store.contains(position_key) && c.image_position_embedding)
    throw CheckpointError(join_context(store.path(), "the config sets \"image_position_embedding\": true but the "
                                                     "checkpoint has no " + position_key));
  if (c.has_ftz && std::none_of(names.begin(), names.end(), [](const std::string& n) { return starts_with(n, "ftz."); }))
    throw CheckpointError(join_context(store.path(), "the config declares an \"ftz\" block but the checkpoint has no "
                                                     "FtZ weights (ftz.*)"));
  check_vision_against_weights(c, store);
  LoadReport report;
  LoadOptions opt;
  opt.source_prefix = "vision_tower.";
  append(report, model->vision_tower->load(store, opt));
  opt.source_prefix = "multi_modal_projector.";
  append(report, load_state_dict(*model->multi_modal_projector, store, RenameTable(), opt));
  append(report, load_llama_weights(model->language_model, store, "language_model."));
  if (c.has_ftz) {
    opt.source_prefix = "ftz.";
    append(report, load_state_dict(*model->ftz, store, RenameTable(), opt));
  }
  return report;
}

LlavaForConditionalGeneration load_llava(const std::string& folder) {
  const Checkpoint ck = Checkpoint::open(folder);
  const ModelPart* part = nullptr;
  for (const ModelPart& p : ck.parts())
    if (p.has_weights()) part = &p;
  if (!part || part->config.is_null())
    throw CheckpointError(join_context(folder, "expected a LLaVA folder with config.json and safetensors weights"));
  const LlavaConfig cfg = LlavaConfig::from_json(part->config, part->config_path);
  LlavaForConditionalGeneration model(cfg);
  // A VISOR folder (vlm/visor.h) is a LLaVA folder plus "visor.*" weights, loaded by load_visor.
  const bool visor = part->config.contains("visor") && !part->config["visor"].is_null();
  load_llava_weights(model, *part->weights, visor ? std::vector<std::string>{"visor."} : std::vector<std::string>{});
  model->eval();
  return model;
}

}  // namespace iris
