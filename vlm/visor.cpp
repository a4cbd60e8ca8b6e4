#include "vlm/visor.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>

#include "core/checkpoint.h"
#include "core/error.h"
#include "core/tensor_io.h"

namespace fs = std::filesystem;

namespace iris {

namespace {

std::string str(int64_t v) { return std::to_string(v); }

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

std::string list_string(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + str(v[i]);
  return s + "]";
}

std::vector<int64_t> parse_slots(const Json& j, const char* key, bool required, const std::string& what) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) throw ConfigError(join_context(what, std::string("key \"") + key + "\" is required"));
    return {};
  }
  if (!it->is_array()) throw ConfigError(join_context(what, std::string("key \"") + key + "\": expected a list of layer slots"));
  std::vector<int64_t> out;
  for (const Json& v : *it) {
    if (!v.is_number_integer())
      throw ConfigError(join_context(what, std::string("key \"") + key + "\": expected integers, found " + v.dump()));
    out.push_back(v.get<int64_t>());
  }
  return out;
}

void check_slots(const std::vector<int64_t>& slots, const char* key, int64_t layers, const std::string& what) {
  for (size_t i = 0; i < slots.size(); ++i) {
    if (slots[i] < 0 || slots[i] > layers)
      throw ConfigError(join_context(what, std::string("key \"") + key + "\": slot " + str(slots[i]) +
                                               " is outside 0.." + str(layers) + " (the language model has " +
                                               str(layers) + " layers; slot s runs before layer s)"));
    if (i > 0 && slots[i] <= slots[i - 1])
      throw ConfigError(join_context(what, std::string("key \"") + key + "\": slots must be strictly increasing, found " +
                                               list_string(slots)));
  }
}

// Multi-head attention with grouped keys/values and an optional key mask (no causal mask).
// q [B, Hq, Lq, D], k/v [B, Hkv, Lk, D], key_visible [B, Lk] bool or undefined -> [B, Lq, Hq * D]
// head0: when given, query head 0's post-softmax weights [B, Lq, Lk] (with autograd history).
at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& key_visible,
                  double scale, at::Tensor* head0 = nullptr) {
  const int64_t B = q.size(0), Hq = q.size(1), Lq = q.size(2), D = q.size(3), Hkv = k.size(1), Lk = k.size(2);
  const int64_t G = Hq / Hkv;
  const at::Tensor qg = q.reshape({B, Hkv, G * Lq, D});  // query head h reads kv head h / G
  at::Tensor s = at::matmul(qg, k.transpose(2, 3)) * scale;  // [B, Hkv, G*Lq, Lk]
  if (key_visible.defined())
    s = s.masked_fill(key_visible.logical_not().view({B, 1, 1, Lk}).to(s.device()),
                      -std::numeric_limits<float>::infinity());
  const at::Tensor p = at::softmax(s, -1);
  if (head0) *head0 = p.select(1, 0).narrow(1, 0, Lq);  // query head 0 = group 0 of kv head 0
  const at::Tensor o = at::matmul(p, v);  // [B, Hkv, G*Lq, D]
  return o.view({B, Hq, Lq, D}).transpose(1, 2).reshape({B, Lq, Hq * D});
}

// [B, L, heads * D] -> [B, heads, L, D]
at::Tensor split_heads(const at::Tensor& x, int64_t heads, int64_t D) {
  return x.view({x.size(0), x.size(1), heads, D}).transpose(1, 2);
}

// Mean over the rows marked in `rows` [B, L] bool (undefined: all rows) of x [B, L, H] -> [B, H].
at::Tensor masked_mean(const at::Tensor& x, const at::Tensor& rows) {
  if (!rows.defined()) return x.mean(1);
  const at::Tensor w = rows.to(x.device(), x.scalar_type()).unsqueeze(-1);  // [B, L, 1]
  return (x * w).sum(1) / w.sum(1).clamp_min(1.0);
}

LlamaDecoderLayerImpl& lm_layer(LlamaForCausalLM& lm, int64_t i) {
  return *lm->model->layers[static_cast<size_t>(i)]->as<LlamaDecoderLayerImpl>();
}

void copy_linear(LlamaLinear& dst, const LlamaLinear& src) {
  dst->weight.copy_(src->weight);
  if (dst->bias.defined() && src->bias.defined()) dst->bias.copy_(src->bias);
}

void zero_linear(LlamaLinear& l) {
  l->weight.zero_();
  if (l->bias.defined()) l->bias.zero_();
}

ConfigError not_a_visor_folder(const std::string& config_path) {
  return ConfigError(config_path + ": no \"visor\" block: this is a LLaVA folder, not a VISOR one (make one with "
                     "`iris train visor`)");
}

void normal_(at::Tensor& t, double std, at::Generator& gen) {
  t.copy_(at::empty(t.sizes(), t.options().device(at::kCPU)).normal_(0.0, std, gen));
}

}  // namespace

// =============================================================================================
// Config

VisorConfig VisorConfig::uniform(int64_t num_layers, int64_t n_cross, int64_t n_self) {
  if (num_layers < 1) throw ConfigError("VISOR layout: the language model has no layers");
  if (n_cross < 1 || n_cross > num_layers)
    throw ConfigError("VISOR layout: " + str(n_cross) + " cross-attention layers for " + str(num_layers) +
                      " LM layers (need 1.." + str(num_layers) + ")");
  if (n_self < 0 || n_self > n_cross)
    throw ConfigError("VISOR layout: " + str(n_self) + " self-attention layers for " + str(n_cross) +
                      " cross-attention layers (need 0.." + str(n_cross) + ": each sits at a cross-attention slot)");
  VisorConfig c;
  for (int64_t i = 0; i < n_cross; ++i)
    c.cross_attention_layers.push_back(static_cast<int64_t>(std::floor((i + 0.5) * num_layers / n_cross)));
  for (int64_t j = 0; j < n_self; ++j) c.self_attention_layers.push_back(c.cross_attention_layers[j * n_cross / n_self]);
  return c;
}

VisorConfig VisorConfig::from_json(const Json& j, const LlamaConfig& text, const std::string& what) {
  if (!j.is_object()) throw ConfigError(join_context(what, "expected a JSON object"));
  VisorConfig c;
  c.cross_attention_layers = parse_slots(j, "cross_attention_layers", true, what);
  c.self_attention_layers = parse_slots(j, "self_attention_layers", false, what);
  c.position_conv_kernel = json_int(j, "position_conv_kernel", c.position_conv_kernel, what);
  c.position_conv_dims = json_int(j, "position_conv_dims", c.position_conv_dims, what);
  c.position_embedding = json_bool(j, "position_embedding", c.position_embedding, what);
  c.self_attention_intermediate_size =
      json_int(j, "self_attention_intermediate_size", c.self_attention_intermediate_size, what);
  c.router_hidden_size = json_int(j, "router_hidden_size", c.router_hidden_size, what);
  c.validate(text, what);
  return c;
}

Json VisorConfig::to_json() const {
  return {{"cross_attention_layers", cross_attention_layers},
          {"self_attention_layers", self_attention_layers},
          {"position_conv_kernel", position_conv_kernel},
          {"position_conv_dims", position_conv_dims},
          {"position_embedding", position_embedding},
          {"self_attention_intermediate_size", self_attention_intermediate_size},
          {"router_hidden_size", router_hidden_size}};
}

void VisorConfig::validate(const LlamaConfig& text, const std::string& what) const {
  const int64_t L = text.num_hidden_layers;
  if (cross_attention_layers.empty())
    throw ConfigError(join_context(what, "key \"cross_attention_layers\": at least one cross-attention layer is "
                                         "needed (the image reaches the text only through them)"));
  check_slots(cross_attention_layers, "cross_attention_layers", L, what);
  check_slots(self_attention_layers, "self_attention_layers", L, what);
  if (!self_attention_layers.empty() && self_attention_layers.back() > cross_attention_layers.back())
    throw ConfigError(join_context(what, "key \"self_attention_layers\": the block at slot " +
                                             str(self_attention_layers.back()) +
                                             " refines image tokens that no cross-attention layer reads (the last "
                                             "cross-attention slot is " + str(cross_attention_layers.back()) + ")"));
  if (position_conv_kernel < 1 || position_conv_kernel % 2 == 0)
    throw ConfigError(join_context(what, "key \"position_conv_kernel\" must be a positive odd number, found " +
                                             str(position_conv_kernel)));
  if (position_conv_dims != 1 && position_conv_dims != 2)
    throw ConfigError(join_context(what, "key \"position_conv_dims\" must be 1 or 2, found " + str(position_conv_dims)));
  if (self_attention_intermediate_size < 0)
    throw ConfigError(join_context(what, "key \"self_attention_intermediate_size\" must be >= 0 (0: the language "
                                         "model's), found " + str(self_attention_intermediate_size)));
  if (router_hidden_size < 1)
    throw ConfigError(join_context(what, "key \"router_hidden_size\" must be positive, found " + str(router_hidden_size)));
}

// =============================================================================================
// Modules

VisorCrossAttentionImpl::VisorCrossAttentionImpl(const LlamaConfig& t)
    : heads_(t.num_attention_heads), kv_heads_(t.num_key_value_heads), head_dim_(t.head_dim) {
  text_norm = register_module("text_norm", LlamaRMSNorm(t.hidden_size, t.rms_norm_eps));
  image_norm = register_module("image_norm", LlamaRMSNorm(t.hidden_size, t.rms_norm_eps));
  q_proj = register_module("q_proj", LlamaLinear(t.hidden_size, t.q_size(), t.attention_bias));
  k_proj = register_module("k_proj", LlamaLinear(t.hidden_size, t.kv_size(), t.attention_bias));
  v_proj = register_module("v_proj", LlamaLinear(t.hidden_size, t.kv_size(), t.attention_bias));
  o_proj = register_module("o_proj", LlamaLinear(t.q_size(), t.hidden_size, t.attention_bias));
}

std::pair<at::Tensor, at::Tensor> VisorCrossAttentionImpl::image_kv(const at::Tensor& image) {
  const at::Tensor n = image_norm(image);
  return {split_heads(k_proj(n), kv_heads_, head_dim_).contiguous(),
          split_heads(v_proj(n), kv_heads_, head_dim_).contiguous()};
}

at::Tensor VisorCrossAttentionImpl::forward(const at::Tensor& text, const at::Tensor& keys, const at::Tensor& values,
                                            at::Tensor* head0_weights) {
  const at::Tensor q = split_heads(q_proj(text_norm(text)), heads_, head_dim_);
  return o_proj(attend(q, keys, values, at::Tensor(), 1.0 / std::sqrt(static_cast<double>(head_dim_)), head0_weights));
}

VisorSelfAttentionImpl::VisorSelfAttentionImpl(const LlamaConfig& t, int64_t intermediate_size)
    : heads_(t.num_attention_heads), kv_heads_(t.num_key_value_heads), head_dim_(t.head_dim) {
  LlamaConfig c = t;
  c.intermediate_size = intermediate_size;
  input_layernorm = register_module("input_layernorm", LlamaRMSNorm(t.hidden_size, t.rms_norm_eps));
  self_attn = register_module("self_attn", LlamaAttention(c, 0));
  post_attention_layernorm = register_module("post_attention_layernorm", LlamaRMSNorm(t.hidden_size, t.rms_norm_eps));
  mlp = register_module("mlp", LlamaMLP(c));
}

at::Tensor VisorSelfAttentionImpl::forward(const at::Tensor& image, const at::Tensor& text, const at::Tensor& text_keys) {
  const int64_t B = image.size(0), N = image.size(1);
  const at::Tensor hi = input_layernorm(image), ht = input_layernorm(text);
  const at::Tensor kv_in = at::cat({hi, ht}, 1);  // [B, N + T, H]
  const at::Tensor q = split_heads(self_attn->q_proj(hi), heads_, head_dim_);
  const at::Tensor k = split_heads(self_attn->k_proj(kv_in), kv_heads_, head_dim_);
  const at::Tensor v = split_heads(self_attn->v_proj(kv_in), kv_heads_, head_dim_);
  at::Tensor visible;
  if (text_keys.defined())
    visible = at::cat({at::ones({B, N}, at::TensorOptions().dtype(at::kBool)), text_keys.to(at::kCPU, at::kBool)}, 1);
  const at::Tensor o = attend(q, k, v, visible, 1.0 / std::sqrt(static_cast<double>(head_dim_)));
  const at::Tensor y = image + self_attn->o_proj(o);
  return y + mlp(post_attention_layernorm(y));
}

VisorPositionConvImpl::VisorPositionConvImpl(int64_t hidden, int64_t kernel, int64_t dims, int64_t tokens)
    : kernel_(kernel), dims_(dims) {
  weight = register_parameter("weight", dims == 2 ? at::zeros({hidden, 1, kernel, kernel}) : at::zeros({hidden, 1, kernel}));
  bias = register_parameter("bias", at::zeros({hidden}));
  if (tokens > 0) embedding = register_parameter("embedding", at::zeros({tokens, hidden}));
}

at::Tensor VisorPositionConvImpl::forward(const at::Tensor& image) {
  const int64_t B = image.size(0), N = image.size(1), H = image.size(2);
  const at::Tensor x = image.transpose(1, 2);  // [B, H, N]
  at::Tensor y;
  if (dims_ == 2) {
    const int64_t g = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(N))));
    if (g * g != N)
      throw ShapeError("VISOR position conv: " + str(N) + " image tokens do not form a square patch grid "
                       "(use \"position_conv_dims\": 1)");
    y = at::conv2d(x.reshape({B, H, g, g}), weight, bias, 1, kernel_ / 2, 1, H).reshape({B, H, N});
  } else {
    y = at::conv1d(x, weight, bias, 1, kernel_ / 2, 1, H);
  }
  y = image + y.transpose(1, 2);
  if (!embedding.defined()) return y;
  if (embedding.size(0) != N)
    throw ShapeError("VISOR position embedding: it has " + str(embedding.size(0)) + " image tokens, the image " + str(N));
  return y + embedding.unsqueeze(0);
}

void VisorPositionConvImpl::init_sincos(double rms) {
  if (!embedding.defined()) return;
  at::NoGradGuard no_grad;
  embedding.copy_(sincos_position_table(embedding.size(0), embedding.size(1), dims_ == 2) * rms);
}

VisorRouterImpl::VisorRouterImpl(int64_t hidden, int64_t width, int64_t budgets, double eps) {
  norm = register_module("norm", LlamaRMSNorm(2 * hidden, eps));
  fc1 = register_module("fc1", LlamaLinear(2 * hidden, width, true));
  fc2 = register_module("fc2", LlamaLinear(width, budgets, true));
}

at::Tensor VisorRouterImpl::forward(const at::Tensor& features) { return fc2(at::silu(fc1(norm(features)))); }

VisorLayersImpl::VisorLayersImpl(const VisorConfig& cfg, const LlamaConfig& text, int64_t image_tokens) {
  position_conv = register_module("position_conv", VisorPositionConv(text.hidden_size, cfg.position_conv_kernel,
                                                                     cfg.position_conv_dims,
                                                                     cfg.position_embedding ? image_tokens : 0));
  cross_attn = register_module("cross_attn", torch::nn::ModuleList());
  self_attn = register_module("self_attn", torch::nn::ModuleList());
  for (int64_t i = 0; i < cfg.num_cross(); ++i) {
    cross_blocks.push_back(VisorCrossAttention(text));
    cross_attn->push_back(cross_blocks.back());
  }
  for (int64_t j = 0; j < cfg.num_self(); ++j) {
    self_blocks.push_back(VisorSelfAttention(text, cfg.sa_intermediate(text)));
    self_attn->push_back(self_blocks.back());
  }
  if (cfg.num_self() > 0)
    router = register_module("router", VisorRouter(text.hidden_size, cfg.router_hidden_size, cfg.num_self() + 1,
                                                   text.rms_norm_eps));
}

// =============================================================================================
// The model

VisorForConditionalGenerationImpl::VisorForConditionalGenerationImpl(LlavaForConditionalGeneration l,
                                                                     const VisorConfig& cfg)
    : llava(std::move(l)), cfg_(cfg) {
  const LlavaConfig& c = llava->config();
  cfg_.validate(c.text, "VISOR config");
  const int64_t n = c.image_feature_tokens();
  const int64_t g = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(n))));
  if (cfg_.position_conv_dims == 2 && g * g != n)
    throw ConfigError("VISOR config: key \"position_conv_dims\" = 2 needs a square patch grid, but the vision tower "
                      "gives " + str(n) + " image tokens (use 1)");
  register_module("vision_tower", llava->vision_tower);
  register_module("multi_modal_projector", llava->multi_modal_projector);
  language_model = register_module("language_model", llava->language_model);
  if (llava->ftz) register_module("ftz", llava->ftz);
  visor = register_module("visor", VisorLayers(cfg_, c.text, n));
}

VisorCache VisorForConditionalGenerationImpl::new_cache(int64_t batch, int64_t capacity) const {
  VisorCache c;
  c.text = language_model->new_cache(batch, capacity);
  c.image_keys.resize(cfg_.cross_attention_layers.size());
  c.image_values.resize(cfg_.cross_attention_layers.size());
  return c;
}

std::vector<int64_t> VisorForConditionalGenerationImpl::route(const at::Tensor& features) {
  if (!visor->router) throw ConfigError("VISOR: this model has no self-attention layers, so no router");
  const at::Tensor choice = visor->router(features).argmax(-1).to(at::kCPU, at::kLong).contiguous();
  return std::vector<int64_t>(choice.data_ptr<int64_t>(), choice.data_ptr<int64_t>() + choice.numel());
}

VisorOutput VisorForConditionalGenerationImpl::forward(const VisorInput& in, VisorCache* cache,
                                                       const VisorForwardOptions& opt) {
  LlamaForCausalLM& lm = language_model;
  const LlamaConfig& tc = lm->config();
  if (!in.input_ids.defined() || in.input_ids.dim() != 2) throw ShapeError("VISOR forward: input_ids must be [B, T]");
  const int64_t B = in.input_ids.size(0), T = in.input_ids.size(1), L = tc.num_hidden_layers, S = cfg_.num_self();

  // ---- the image: fresh features (prefill, training) or the cache's keys/values (decode) ----
  at::Tensor image;  // [B, N, H]
  if (in.image_features.defined()) {
    if (in.image_features.dim() != 3 || in.image_features.size(0) != B || in.image_features.size(2) != tc.hidden_size)
      throw ShapeError("VISOR forward: image_features must be [B, N, " + str(tc.hidden_size) + "] with B = " + str(B) +
                       ", found " + shape_string(in.image_features.sizes()));
    if (cache && cache->has_image())
      throw ConfigError("VISOR forward: the cache already holds an image (one image per sequence, given with the "
                        "first pass)");
    const at::Tensor& w = lm->model->embed_tokens->weight;
    image = visor->position_conv(in.image_features.to(w.device(), w.scalar_type()));
  }
  const bool cached_image = !image.defined() && cache && cache->has_image();

  // ---- the prompt rows the self-attention blocks and the router read ----
  at::Tensor prompt_rows;  // [B, T] bool, undefined = all
  if (in.prompt_lengths.defined()) {
    const at::Tensor n = in.prompt_lengths.to(at::kCPU, at::kLong).reshape({-1});
    if (n.numel() != B) throw ShapeError("VISOR forward: prompt_lengths must hold one length per row (" + str(B) + ")");
    if (n.min().item<int64_t>() < 1 || n.max().item<int64_t>() > T)
      throw ConfigError("VISOR forward: prompt_lengths must be in 1.." + str(T));
    prompt_rows = at::arange(T, at::TensorOptions().dtype(at::kLong)).view({1, T}).lt(n.view({B, 1}));
  }

  // ---- budgets per row ----
  std::vector<int64_t> budgets(B, -1);
  if (opt.budgets.size() == 1) std::fill(budgets.begin(), budgets.end(), opt.budgets[0]);
  else if (static_cast<int64_t>(opt.budgets.size()) == B) budgets = opt.budgets;
  else if (!opt.budgets.empty())
    throw ShapeError("VISOR forward: give one budget, or one per row (" + str(B) + "), not " + str(opt.budgets.size()));
  for (int64_t b : budgets)
    if (b < -1 || b > S)
      throw ConfigError("VISOR: budget " + str(b) + " is outside 0.." + str(S) + " (or -1 / auto for the router)");
  if (opt.record_cross_block >= static_cast<int64_t>(cfg_.cross_attention_layers.size()))
    throw ConfigError("VISOR forward: cross-attention block " + str(opt.record_cross_block) + " to record, but the model has " +
                      str(cfg_.cross_attention_layers.size()));
  if (cached_image && static_cast<int64_t>(cache->budgets.size()) == B) {
    budgets = cache->budgets;  // decode: the configuration the prefill ran
  } else if (!image.defined() || S == 0) {
    std::fill(budgets.begin(), budgets.end(), 0);  // no self-attention block can run
  }

  // ---- text pass state (LM layers: text positions only) ----
  LlamaInput li;
  li.input_ids = in.input_ids;
  const at::Tensor& w = lm->model->embed_tokens->weight;
  DecoderPass pass = prepare_decoder_pass(lm->model->rope(), li, cache ? &cache->text : nullptr,
                                          tc.max_position_embeddings,
                                          tc.rope_scaling.type == RopeScaling::Type::Dynamic, w.scalar_type(), w.device());
  if (!lm->attention_hooks().empty()) pass.hooks.push_back(&lm->attention_hooks());
  pass.num_layers = static_cast<int>(L);
  at::Tensor x = lm->model->embed(in.input_ids);  // [B, T, H]

  VisorOutput out;
  size_t next_ca = 0, next_sa = 0;
  for (int64_t s = 0; s <= L; ++s) {
    // Self-attention blocks at this slot (prefill / training only: they refine the image).
    while (next_sa < cfg_.self_attention_layers.size() && cfg_.self_attention_layers[next_sa] == s) {
      const int64_t j = static_cast<int64_t>(next_sa++);
      if (!image.defined()) continue;
      if (j == 0) {
        out.router_features = at::cat({masked_mean(x, prompt_rows), image.mean(1)}, -1);  // [B, 2H]
        if (opt.router_features_only) return out;
        if (std::find(budgets.begin(), budgets.end(), -1) != budgets.end()) {
          out.router_logits = visor->router(out.router_features);
          const at::Tensor choice = out.router_logits.argmax(-1).to(at::kCPU, at::kLong).contiguous();
          for (int64_t b = 0; b < B; ++b)
            if (budgets[b] < 0) budgets[b] = choice.data_ptr<int64_t>()[b];
        }
      }
      std::vector<uint8_t> active(B);
      int64_t n_active = 0;
      for (int64_t b = 0; b < B; ++b) n_active += (active[b] = budgets[b] > j);
      if (n_active == 0) continue;
      const at::Tensor refined = visor->self_blocks[j]->forward(image, x, prompt_rows);
      if (n_active == B) {
        image = refined;
      } else {
        const at::Tensor rows = at::tensor(std::vector<int64_t>(active.begin(), active.end())).to(at::kBool);
        image = at::where(rows.view({B, 1, 1}).to(image.device()), refined, image);
      }
    }
    // Cross-attention blocks at this slot: the text reads the image.
    while (next_ca < cfg_.cross_attention_layers.size() && cfg_.cross_attention_layers[next_ca] == s) {
      const size_t i = next_ca++;
      VisorCrossAttention& ca = visor->cross_blocks[i];
      at::Tensor k, v;
      if (image.defined()) {
        std::tie(k, v) = ca->image_kv(image);
        if (cache) {
          cache->image_keys[i] = k;
          cache->image_values[i] = v;
        }
      } else if (cached_image) {
        k = cache->image_keys[i];
        v = cache->image_values[i];
      } else {
        continue;  // a text-only sequence
      }
      const bool record = static_cast<int64_t>(i) == opt.record_cross_block;
      x = x + ca->forward(x, k, v, record ? &out.cross_weights : nullptr);
    }
    if (s < L) x = lm_layer(lm, s).forward(x, pass);
  }
  if (opt.router_features_only)
    throw ConfigError("VISOR: router features need an image and at least one self-attention layer");
  x = lm->model->norm(x);
  finish_decoder_pass(pass);
  if (cache && image.defined()) cache->budgets = budgets;
  out.budgets = budgets;
  out.last_hidden_state = x;
  if (opt.logits == LogitsMode::All) out.logits = lm->logits(x);
  else if (opt.logits == LogitsMode::Last) out.logits = lm->logits(x.narrow(1, T - 1, 1));
  return out;
}

void VisorForConditionalGenerationImpl::init_weights(uint64_t seed, double std) {
  at::NoGradGuard no_grad;
  llava->init_weights(seed, std);
  at::Generator gen = at::detail::createCPUGenerator(seed + 7);
  for (auto& p : visor->named_parameters(true)) {
    const std::string& n = p.key();
    at::Tensor& t = p.value();
    if (n.find("norm.weight") != std::string::npos) t.fill_(1.0);
    else if (n.size() >= 5 && n.compare(n.size() - 5, 5, ".bias") == 0) t.zero_();
    else normal_(t, std, gen);
  }
}

void VisorForConditionalGenerationImpl::init_from_language_model(uint64_t seed, double std) {
  at::NoGradGuard no_grad;
  at::Generator gen = at::detail::createCPUGenerator(seed + 7);
  const LlamaConfig& tc = language_model->config();
  const int64_t L = tc.num_hidden_layers;
  if (L < 1) throw ConfigError("VISOR: a language model without layers has nothing to initialise the blocks from");
  for (size_t i = 0; i < visor->cross_blocks.size(); ++i) {
    VisorCrossAttention& ca = visor->cross_blocks[i];
    LlamaDecoderLayerImpl& src = lm_layer(language_model, std::min(cfg_.cross_attention_layers[i], L - 1));
    ca->text_norm->weight.copy_(src.input_layernorm->weight);
    ca->image_norm->weight.copy_(src.input_layernorm->weight);
    copy_linear(ca->q_proj, src.self_attn->q_proj);
    copy_linear(ca->k_proj, src.self_attn->k_proj);
    copy_linear(ca->v_proj, src.self_attn->v_proj);
    zero_linear(ca->o_proj);
  }
  for (size_t j = 0; j < visor->self_blocks.size(); ++j) {
    VisorSelfAttention& sa = visor->self_blocks[j];
    LlamaDecoderLayerImpl& src = lm_layer(language_model, std::min(cfg_.self_attention_layers[j], L - 1));
    sa->input_layernorm->weight.copy_(src.input_layernorm->weight);
    sa->post_attention_layernorm->weight.copy_(src.post_attention_layernorm->weight);
    copy_linear(sa->self_attn->q_proj, src.self_attn->q_proj);
    copy_linear(sa->self_attn->k_proj, src.self_attn->k_proj);
    copy_linear(sa->self_attn->v_proj, src.self_attn->v_proj);
    zero_linear(sa->self_attn->o_proj);
    if (sa->mlp->gate_proj->weight.sizes() == src.mlp->gate_proj->weight.sizes()) {
      copy_linear(sa->mlp->gate_proj, src.mlp->gate_proj);
      copy_linear(sa->mlp->up_proj, src.mlp->up_proj);
    } else {
      normal_(sa->mlp->gate_proj->weight, std, gen);
      normal_(sa->mlp->up_proj->weight, std, gen);
    }
    zero_linear(sa->mlp->down_proj);
  }
  normal_(visor->position_conv->weight, std, gen);
  visor->position_conv->bias.zero_();
  if (visor->router) {
    VisorRouter& r = visor->router;
    r->norm->weight.fill_(1.0);
    normal_(r->fc1->weight, 1.0 / std::sqrt(static_cast<double>(r->fc1->weight.size(1))), gen);
    r->fc1->bias.zero_();
    normal_(r->fc2->weight, std, gen);
    r->fc2->bias.zero_();
    r->fc2->bias[cfg_.num_self()].fill_(1.0);  // untrained: the full budget
  }
}

// =============================================================================================
// Generation

VisorGenerateResult visor_generate(VisorForConditionalGeneration& model, const std::vector<int64_t>& prompt_ids,
                                   const at::Tensor& pixel_values, int64_t budget, const GenerateOptions& opt,
                                   const TokenCallback& on_token) {
  if (prompt_ids.empty()) throw ConfigError("VISOR: empty prompt");
  if (opt.max_new_tokens < 0) throw ConfigError("VISOR: max_new_tokens must be >= 0");
  const int64_t S = model->max_budget();
  if (budget < -1 || budget > S)
    throw ConfigError("VISOR: budget " + str(budget) + " is outside 0.." + str(S) + " (or auto)");
  const LlavaConfig& cfg = model->config();
  VisorGenerateResult out;
  std::vector<int64_t> text;
  int64_t images = 0;
  for (int64_t id : prompt_ids) {
    if (id == cfg.image_token_index) {
      if (images++ == 0) out.text_before_image = static_cast<int64_t>(text.size());
    } else {
      text.push_back(id);
    }
  }
  if (pixel_values.defined() && (images != 1 || pixel_values.size(0) != 1))
    throw ConfigError("VISOR: the prompt must hold the <image> token (id " + str(cfg.image_token_index) +
                      ") exactly once, for one image; found " + str(images) + " token(s) and " +
                      str(pixel_values.size(0)) + " image(s)");
  if (!pixel_values.defined() && images != 0)
    throw ConfigError("VISOR: the prompt has an <image> token but no image was given");
  if (text.empty()) throw ConfigError("VISOR: the prompt has no text token");
  const int64_t n = static_cast<int64_t>(text.size());
  const int64_t context = cfg.text.max_position_embeddings;
  const bool dynamic = cfg.text.rope_scaling.type == RopeScaling::Type::Dynamic;
  if (n > context && !dynamic)
    throw ConfigError("VISOR: the prompt has " + str(n) + " text tokens, more than the model's context of " +
                      str(context) + " (max_position_embeddings)");
  int64_t capacity = n + std::max<int64_t>(opt.max_new_tokens, 1);
  if (!dynamic) capacity = std::min(capacity, context);

  std::unique_ptr<c10::InferenceMode> inference;
  std::unique_ptr<at::NoGradGuard> no_grad;
  if (opt.inference_mode) inference = std::make_unique<c10::InferenceMode>();
  else no_grad = std::make_unique<at::NoGradGuard>();

  const auto t0 = Clock::now();
  VisorCache cache = model->new_cache(1, capacity);
  VisorInput in;
  in.input_ids = at::tensor(text, at::TensorOptions().dtype(at::kLong)).view({1, n});
  if (pixel_values.defined()) {
    in.image_features = model->image_features(pixel_values);  // [1, N, H]
    out.image_tokens = in.image_features.size(1);
  }
  VisorForwardOptions fo;
  fo.logits = LogitsMode::Last;
  fo.budgets = {budget};
  const VisorOutput first = model->forward(in, &cache, fo);
  out.budget = first.budgets[0];
  out.routed = budget < 0 && first.router_logits.defined();
  const double prefill_ms = ms_since(t0);

  SamplerChain sampler = make_sampler(opt.sampling);
  sampler.accept(prompt_ids);
  at::Tensor token_buf = at::empty({1, 1}, at::TensorOptions().dtype(at::kLong));
  VisorForwardOptions step_opt;
  step_opt.logits = LogitsMode::Last;
  const PickFn pick = [&](const at::Tensor& row) { return sampler.sample(row); };
  const AdvanceFn advance = [&](int64_t token) {
    token_buf.fill_(token);
    VisorInput step;
    step.input_ids = token_buf;
    return model->forward(step, &cache, step_opt).logits.reshape({1, -1});  // [1, V]
  };
  out.result = generate_custom(model->language_model, cache.text, first.logits, pick, advance, opt, on_token);
  out.result.prompt_tokens = n;
  out.result.prefill_ms = prefill_ms;
  return out;
}

// =============================================================================================
// Visual FLOPs

VisualWorkload visual_workload(const std::vector<int64_t>& prompt_ids, int64_t image_token_id, int64_t image_tokens,
                               int64_t generated) {
  VisualWorkload w;
  w.image_tokens = image_tokens;
  const auto it = std::find(prompt_ids.begin(), prompt_ids.end(), image_token_id);
  w.text_before_image = it - prompt_ids.begin();
  w.text_after_image = static_cast<int64_t>(prompt_ids.size()) - w.text_before_image - (it == prompt_ids.end() ? 0 : 1);
  w.generated_tokens = generated;
  return w;
}

std::string VisualFlops::line() const {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "visual %.1f MFLOPs", total() / 1e6);
  return buf;
}

VisualFlops llava_visual_flops(const LlamaConfig& t, const VisualWorkload& w) {
  const double H = static_cast<double>(t.hidden_size), q = static_cast<double>(t.q_size());
  const double kv = static_cast<double>(t.kv_size()), I = static_cast<double>(t.intermediate_size);
  const double N = static_cast<double>(w.image_tokens), a = static_cast<double>(w.text_before_image);
  const double later = static_cast<double>(w.text_after_image + w.decode_passes());
  const double layers = static_cast<double>(t.num_hidden_layers);
  VisualFlops f;
  f.projections = layers * (2 * N * H * (q + 2 * kv) + 2 * N * q * H);
  f.mlp = layers * 2 * N * 3 * H * I;
  // Query-key pairs with an image token on one side: image queries (causal: the text before the
  // image and the image so far), and every later text query over the N image keys.
  const double pairs = N * a + N * (N + 1) / 2 + later * N;
  f.attention = layers * 4 * q * pairs;  // scores (2 D per head) + weighted sum (2 D per head)
  return f;
}

VisualFlops visor_visual_flops(const VisorConfig& cfg, const LlamaConfig& t, const VisualWorkload& w, int64_t budget,
                               bool routed) {
  if (budget < 0 || budget > cfg.num_self())
    throw ConfigError("VISOR FLOPs: budget " + str(budget) + " is outside 0.." + str(cfg.num_self()));
  const double H = static_cast<double>(t.hidden_size), q = static_cast<double>(t.q_size());
  const double kv = static_cast<double>(t.kv_size()), I = static_cast<double>(cfg.sa_intermediate(t));
  const double N = static_cast<double>(w.image_tokens), Tp = static_cast<double>(w.prompt_text());
  const double text = Tp + static_cast<double>(w.decode_passes());
  VisualFlops f;
  f.other = 2 * N * H * std::pow(static_cast<double>(cfg.position_conv_kernel), static_cast<double>(cfg.position_conv_dims));
  if (routed && cfg.num_self() > 0) {
    const double R = static_cast<double>(cfg.router_hidden_size);
    f.other += 2 * (2 * H * R + R * static_cast<double>(cfg.num_self() + 1));
  }
  const double ca = static_cast<double>(cfg.num_cross()), sa = static_cast<double>(budget);
  // Cross-attention: image keys/values, the text's q/o, text-to-image attention.
  f.projections += ca * (2 * N * H * 2 * kv + 2 * text * H * q * 2);
  f.attention += ca * 4 * q * text * N;
  // Self-attention (switched on): image queries over image + prompt text keys.
  f.projections += sa * (2 * N * H * q + 2 * (N + Tp) * H * 2 * kv + 2 * N * q * H);
  f.attention += sa * 4 * q * N * (N + Tp);
  f.mlp += sa * 2 * N * 3 * H * I;
  return f;
}

// =============================================================================================
// Folders

void save_visor(VisorForConditionalGeneration& model, const Json& llava_config, const std::string& folder,
                bool f16) {
  if (!llava_config.is_object()) throw ConfigError("save_visor: the LLaVA config must be a JSON object");
  fs::create_directories(folder);
  Json cfg = llava_config;
  cfg["visor"] = model->visor_config().to_json();
  const std::string cfg_path = (fs::path(folder) / "config.json").string();
  {
    std::ofstream f(cfg_path);
    if (!(f << cfg.dump(2) << "\n")) throw IoError(cfg_path + ": cannot write");
  }
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& kv : model->named_parameters(true))
    tensors.emplace_back(kv.key(), f16 ? kv.value().detach().to(at::kHalf) : kv.value().detach());
  for (const auto& kv : model->named_buffers(true)) tensors.emplace_back(kv.key(), kv.value());
  write_safetensors((fs::path(folder) / "model.safetensors").string(), tensors, {{"format", "pt"}});
}

bool is_visor_folder(const std::string& folder) {
  const fs::path p = fs::path(folder) / "config.json";
  if (!fs::is_regular_file(p)) return false;
  const Json j = read_json_file(p.string());
  return j.is_object() && j.contains("visor") && !j["visor"].is_null();
}

LoadReport load_visor_weights(VisorForConditionalGeneration& model, const TensorStore& store) {
  const VisorConfig& c = model->visor_config();
  // Block counts and widths against the config first, so that a contradiction names the key.
  int64_t cross = 0, self = 0;
  bool any = false, router = false;
  for (const std::string& n : store.names()) {
    if (!starts_with(n, "visor.")) continue;
    any = true;
    if (starts_with(n, "visor.cross_attn.")) cross = std::max<int64_t>(cross, std::stoll(n.substr(17)) + 1);
    if (starts_with(n, "visor.self_attn.")) self = std::max<int64_t>(self, std::stoll(n.substr(16)) + 1);
    if (starts_with(n, "visor.router.")) router = true;
  }
  if (!any)
    throw CheckpointError(join_context(store.path(), "the config declares a \"visor\" block but the checkpoint has no "
                                                     "VISOR weights (visor.*)"));
  if (cross != c.num_cross())
    throw CheckpointError(join_context(store.path(), "config \"visor.cross_attention_layers\" lists " +
                                                         str(c.num_cross()) + " layers but the checkpoint has " +
                                                         str(cross) + " cross-attention blocks"));
  if (self != c.num_self())
    throw CheckpointError(join_context(store.path(), "config \"visor.self_attention_layers\" lists " +
                                                         str(c.num_self()) + " layers but the checkpoint has " +
                                                         str(self) + " self-attention blocks"));
  if (router != (c.num_self() > 0))
    throw CheckpointError(join_context(store.path(), router ? "the checkpoint has a router but no self-attention layers"
                                                            : "the checkpoint has self-attention layers but no router "
                                                              "(visor.router.*)"));
  const std::string gate = "visor.self_attn.0.mlp.gate_proj.weight";
  if (store.contains(gate)) {
    const auto& shape = store.info(gate).shape;
    const int64_t want = c.sa_intermediate(model->language_model->config());
    if (shape.empty() || shape[0] != want)
      throw CheckpointError(join_context(store.path(), "config \"visor.self_attention_intermediate_size\" gives " +
                                                           str(want) + " but " + gate + " has shape " +
                                                           shape_string(shape)));
  }
  const std::string conv = "visor.position_conv.weight";
  if (store.contains(conv) && static_cast<int64_t>(store.info(conv).shape.size()) != c.position_conv_dims + 2)
    throw CheckpointError(join_context(store.path(), "config \"visor.position_conv_dims\" = " +
                                                         str(c.position_conv_dims) + " contradicts " + conv +
                                                         " of shape " + shape_string(store.info(conv).shape)));
  LoadOptions opt;
  opt.source_prefix = "visor.";
  return load_state_dict(*model->visor, store, RenameTable(), opt);
}

VisorForConditionalGeneration load_visor_onto(LlavaForConditionalGeneration llava, const std::string& folder) {
  const Checkpoint ck = Checkpoint::open(folder);
  const ModelPart* part = nullptr;
  for (const ModelPart& p : ck.parts())
    if (p.has_weights()) part = &p;
  if (!part || part->config.is_null())
    throw CheckpointError(join_context(folder, "expected a VISOR folder with config.json and safetensors weights"));
  auto it = part->config.find("visor");
  if (it == part->config.end() || it->is_null()) throw not_a_visor_folder(part->config_path);
  const VisorConfig vc = VisorConfig::from_json(*it, llava->config().text, join_context(part->config_path, "visor"));
  VisorForConditionalGeneration model(std::move(llava), vc);
  load_visor_weights(model, *part->weights);
  model->eval();
  return model;
}

void require_visor_folder(const std::string& folder) {
  const fs::path cfg = fs::path(folder) / "config.json";
  if (fs::is_regular_file(cfg) && !is_visor_folder(folder)) throw not_a_visor_folder(cfg.string());
}

VisorForConditionalGeneration load_visor(const std::string& folder) {
  require_visor_folder(folder);
  return load_visor_onto(load_llava(folder), folder);
}

}  // namespace iris
