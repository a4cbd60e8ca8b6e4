#include "vlm/llama.h"

#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>

#include "core/error.h"
#include "core/torch_compat.h"

namespace iris {

namespace {

std::string str(int64_t v) { return std::to_string(v); }

// True when autograd has to see this op (gradients on and some input wants them).
bool tracks_grad(const at::Tensor& a, const at::Tensor& b = {}) {
  return at::GradMode::is_enabled() && (a.requires_grad() || (b.defined() && b.requires_grad()));
}

// Kernel switches (set_llama_kernels).
std::atomic<bool> g_kernels_onednn{true};
std::atomic<bool> g_kernels_avx2{true};

// ---- config helpers ----

void require_positive(int64_t v, const char* key, const std::string& what) {
  if (v <= 0)
    throw ConfigError(join_context(what, std::string("key \"") + key + "\" must be positive, found " + str(v)));
}

enum Activation { kSilu = 0, kGelu = 1, kGeluTanh = 2 };

int parse_activation(const std::string& name, const std::string& what) {
  if (name == "silu" || name == "swish") return kSilu;
  if (name == "gelu") return kGelu;
  if (name == "gelu_pytorch_tanh" || name == "gelu_new" || name == "gelu_fast") return kGeluTanh;
  throw ConfigError(join_context(what, "key \"hidden_act\": unsupported activation \"" + name + "\""));
}

at::Tensor activate(int act, const at::Tensor& x) {
  switch (act) {
    case kGelu: return at::gelu(x);
    case kGeluTanh: return at::gelu(x, "tanh");
    default: return at::silu(x);
  }
}

RopeScaling parse_rope_scaling(const Json& j, const std::string& what) {
  RopeScaling s;
  auto it = j.find("rope_scaling");
  if (it == j.end() || it->is_null()) return s;
  if (!it->is_object()) throw ConfigError(join_context(what, "key \"rope_scaling\": expected an object or null"));
  const std::string w = join_context(what, "rope_scaling");
  std::string type = json_string(*it, "type", "", w);
  if (type.empty()) type = json_string(*it, "rope_type", "", w);
  if (type == "linear") s.type = RopeScaling::Type::Linear;
  else if (type == "dynamic") s.type = RopeScaling::Type::Dynamic;
  else if (type == "default" && !it->contains("factor")) return s;
  else
    throw ConfigError(join_context(w, "key \"type\": unsupported RoPE scaling \"" + type +
                                          "\" (supported: \"linear\", \"dynamic\")"));
  if (!it->contains("factor")) throw ConfigError(join_context(w, "key \"factor\" is required"));
  s.factor = json_number(*it, "factor", 1.0, w);
  if (!(s.factor > 1.0))
    throw ConfigError(join_context(w, "key \"factor\" must be a number > 1, found " + std::to_string(s.factor)));
  return s;
}

std::vector<int64_t> parse_token_ids(const Json& j, const char* key, std::vector<int64_t> fallback, const std::string& what) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  std::vector<int64_t> out;
  if (it->is_number_integer()) {
    out.push_back(it->get<int64_t>());
  } else if (it->is_array()) {
    for (const Json& v : *it) {
      if (!v.is_number_integer())
        throw ConfigError(join_context(what, std::string("key \"") + key + "\": expected integers"));
      out.push_back(v.get<int64_t>());
    }
  } else {
    throw ConfigError(join_context(what, std::string("key \"") + key + "\": expected an integer or a list"));
  }
  return out;
}

// The language model's config inside a composite (LLaVA) config, or the config itself.
Json select_text_config(const Json& j, std::string& what) {
  if (!j.is_object()) throw ConfigError(join_context(what, "expected a JSON object"));
  const std::string type = json_string(j, "model_type", "", what);
  if (j.contains("text_config") && !j["text_config"].is_null()) {
    if (!j["text_config"].is_object()) throw ConfigError(join_context(what, "key \"text_config\": expected an object"));
    what = join_context(what, "text_config");
    return j["text_config"];
  }
  if (type.rfind("llava", 0) == 0 || j.contains("vision_config")) {
    what = join_context(what, "text_config");
    return Json::object();  // LlavaConfig without text_config: LlamaConfig's defaults
  }
  return j;
}

}  // namespace

// =============================================================================================
// Config

LlamaConfig LlamaConfig::from_json(const Json& j_in, const std::string& what_in) {
  std::string what = what_in;
  const Json j = select_text_config(j_in, what);
  const std::string type = json_string(j, "model_type", "llama", what);
  if (type != "llama")
    throw ConfigError(join_context(what, "key \"model_type\": \"" + type + "\" is not a LLaMA model"));
  LlamaConfig c;
  c.vocab_size = json_int(j, "vocab_size", c.vocab_size, what);
  c.hidden_size = json_int(j, "hidden_size", c.hidden_size, what);
  c.intermediate_size = json_int(j, "intermediate_size", c.intermediate_size, what);
  c.num_hidden_layers = json_int(j, "num_hidden_layers", c.num_hidden_layers, what);
  c.num_attention_heads = json_int(j, "num_attention_heads", c.num_attention_heads, what);
  c.num_key_value_heads = json_int(j, "num_key_value_heads", c.num_attention_heads, what);
  require_positive(c.num_attention_heads, "num_attention_heads", what);
  c.head_dim = json_int(j, "head_dim", c.hidden_size / c.num_attention_heads, what);
  c.max_position_embeddings = json_int(j, "max_position_embeddings", c.max_position_embeddings, what);
  c.rms_norm_eps = json_number(j, "rms_norm_eps", c.rms_norm_eps, what);
  c.rope_theta = json_number(j, "rope_theta", c.rope_theta, what);
  c.rope_scaling = parse_rope_scaling(j, what);
  c.hidden_act = json_string(j, "hidden_act", c.hidden_act, what);
  c.tie_word_embeddings = json_bool(j, "tie_word_embeddings", c.tie_word_embeddings, what);
  c.attention_bias = json_bool(j, "attention_bias", c.attention_bias, what);
  c.mlp_bias = json_bool(j, "mlp_bias", c.mlp_bias, what);
  c.bos_token_id = json_int(j, "bos_token_id", c.bos_token_id, what);
  c.eos_token_ids = parse_token_ids(j, "eos_token_id", c.eos_token_ids, what);
  c.pad_token_id = json_int(j, "pad_token_id", c.pad_token_id, what);
  c.validate(what);
  return c;
}

void LlamaConfig::validate(const std::string& what) const {
  require_positive(vocab_size, "vocab_size", what);
  require_positive(hidden_size, "hidden_size", what);
  require_positive(intermediate_size, "intermediate_size", what);
  require_positive(num_attention_heads, "num_attention_heads", what);
  require_positive(num_key_value_heads, "num_key_value_heads", what);
  require_positive(head_dim, "head_dim", what);
  require_positive(max_position_embeddings, "max_position_embeddings", what);
  if (num_hidden_layers < 0) throw ConfigError(join_context(what, "key \"num_hidden_layers\" must be >= 0"));
  if (num_attention_heads % num_key_value_heads != 0)
    throw ConfigError(join_context(what, "key \"num_key_value_heads\": " + str(num_key_value_heads) +
                                             " does not divide num_attention_heads " + str(num_attention_heads)));
  if (head_dim % 2 != 0) throw ConfigError(join_context(what, "key \"head_dim\": RoPE needs an even head_dim, found " + str(head_dim)));
  if (!(rms_norm_eps > 0)) throw ConfigError(join_context(what, "key \"rms_norm_eps\" must be positive"));
  if (!(rope_theta > 0)) throw ConfigError(join_context(what, "key \"rope_theta\" must be positive"));
  parse_activation(hidden_act, what);
}

Json LlamaConfig::to_json() const {
  Json j;
  j["model_type"] = "llama";
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = head_dim;
  j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_theta"] = rope_theta;
  if (rope_scaling.type == RopeScaling::Type::None) {
    j["rope_scaling"] = nullptr;
  } else {
    j["rope_scaling"] = {{"type", rope_scaling.type == RopeScaling::Type::Linear ? "linear" : "dynamic"},
                         {"factor", rope_scaling.factor}};
  }
  j["hidden_act"] = hidden_act;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["attention_bias"] = attention_bias;
  j["mlp_bias"] = mlp_bias;
  j["bos_token_id"] = bos_token_id;
  j["eos_token_id"] = eos_token_ids.size() == 1 ? Json(eos_token_ids[0]) : Json(eos_token_ids);
  if (pad_token_id >= 0) j["pad_token_id"] = pad_token_id;
  return j;
}

// =============================================================================================
// RoPE

RotaryEmbedding::RotaryEmbedding(int64_t head_dim, double theta, RopeScaling scaling, int64_t max_position_embeddings)
    : head_dim_(head_dim), max_positions_(max_position_embeddings), theta_(theta), scaling_(scaling) {
  at::NoGradGuard no_grad;
  // Positions as transformers feeds them: float32, divided by the factor for linear scaling.
  at::Tensor t = at::arange(max_positions_, at::TensorOptions().dtype(at::kFloat));
  if (scaling_.type == RopeScaling::Type::Linear) t = t / scaling_.factor;
  at::Tensor freqs = at::outer(t, inv_freq(0));  // [P, D/2], one float32 product each
  at::Tensor emb = at::cat({freqs, freqs}, -1);  // [P, D]
  cos_ = emb.cos();
  sin_ = emb.sin();
}

at::Tensor RotaryEmbedding::inv_freq(int64_t max_position) const {
  const at::TensorOptions f32 = at::TensorOptions().dtype(at::kFloat);
  at::Tensor exponent = at::arange(0, head_dim_, 2, f32.dtype(at::kLong)).to(at::kFloat) / static_cast<double>(head_dim_);
  at::Tensor base = at::scalar_tensor(theta_, f32);
  if (scaling_.type == RopeScaling::Type::Dynamic && max_position + 1 > max_positions_) {
    // Dynamic NTK: base * ((factor * seq_len / max) - (factor - 1)) ** (dim / (dim - 2)), in float32.
    at::Tensor seq_len = at::scalar_tensor(static_cast<double>(max_position + 1), f32);
    at::Tensor ratio = seq_len * scaling_.factor / static_cast<double>(max_positions_) - (scaling_.factor - 1.0);
    base = base * at::pow(ratio, static_cast<double>(head_dim_) / static_cast<double>(head_dim_ - 2));
  }
  return 1.0 / at::pow(base, exponent);
}

std::pair<at::Tensor, at::Tensor> RotaryEmbedding::lookup(const at::Tensor& positions) const {
  at::NoGradGuard no_grad;
  at::Tensor pos = positions.to(at::kCPU, at::kLong);
  const int64_t max_pos = pos.numel() ? pos.max().item<int64_t>() : 0;
  const int64_t min_pos = pos.numel() ? pos.min().item<int64_t>() : 0;
  if (min_pos < 0) throw ConfigError("RoPE: negative position " + str(min_pos));
  std::vector<int64_t> out_shape = pos.sizes().vec();
  out_shape.push_back(head_dim_);
  if (max_pos < max_positions_) {
    at::Tensor flat = pos.reshape({-1});
    return {cos_.index_select(0, flat).view(out_shape), sin_.index_select(0, flat).view(out_shape)};
  }
  // Beyond the table (dynamic scaling, or a caller that skipped the length check): compute.
  at::Tensor t = pos.to(at::kFloat);
  if (scaling_.type == RopeScaling::Type::Linear) t = t / scaling_.factor;
  at::Tensor freqs = t.unsqueeze(-1) * inv_freq(max_pos);
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  return {emb.cos(), emb.sin()};
}

// =============================================================================================
// Pass preparation

bool DecoderPass::wants_hooks(int layer, const HookContext& ctx) const {
  for (const AttentionHookList* h : hooks)
    if (h->wants(layer, ctx)) return true;
  return false;
}

DecoderPass prepare_decoder_pass(const RotaryEmbedding& rope, const LlamaInput& in, KVCache* cache,
                                 int64_t max_position_embeddings, bool dynamic_rope, at::ScalarType dtype,
                                 c10::Device device) {
  at::NoGradGuard no_grad;
  const bool ids = in.input_ids.defined(), embeds = in.inputs_embeds.defined();
  if (ids == embeds) throw ConfigError("LLaMA forward: give exactly one of input_ids and inputs_embeds");
  if (ids && in.input_ids.dim() != 2) throw ShapeError("LLaMA forward: input_ids must be [B, L]");
  if (embeds && in.inputs_embeds.dim() != 3) throw ShapeError("LLaMA forward: inputs_embeds must be [B, L, H]");
  DecoderPass p;
  const at::Tensor& src = ids ? in.input_ids : in.inputs_embeds;
  p.batch = src.size(0);
  p.length = src.size(1);
  if (p.batch == 0 || p.length == 0) throw ConfigError("LLaMA forward: empty input (no tokens)");
  p.cache = cache;
  if (cache) {
    if (cache->batch() != p.batch)
      throw ShapeError("LLaMA forward: batch " + str(p.batch) + " does not match the KV cache's batch " + str(cache->batch()));
    cache->check_room(p.length, "LLaMA forward");
    p.past = cache->length();
  }
  const int64_t B = p.batch, L = p.length, P = p.past, K = P + L;
  const at::TensorOptions cpu_bool = at::TensorOptions().dtype(at::kBool);

  // ---- padding (1 = token, 0 = left padding) ----
  at::Tensor past_valid = cache ? cache->valid_mask() : at::Tensor();
  if (in.attention_mask.defined()) {
    at::Tensor m = in.attention_mask.to(at::kCPU).ne(0);
    if (m.dim() != 2 || m.size(0) != B || (m.size(1) != K && m.size(1) != L))
      throw ShapeError("LLaMA forward: attention_mask must be [B, P + L] = [" + str(B) + ", " + str(K) + "] or [B, L]");
    if (m.size(1) == K) {
      if (P > 0) past_valid = m.narrow(1, 0, P);
      m = m.narrow(1, P, L);
    }
    if (!m.all().item<bool>()) p.new_valid = m.contiguous();
  }
  if (past_valid.defined() && past_valid.all().item<bool>()) past_valid = at::Tensor();
  if (past_valid.defined() || p.new_valid.defined())
    p.key_valid = at::cat({past_valid.defined() ? past_valid : at::ones({B, P}, cpu_bool),
                           p.new_valid.defined() ? p.new_valid : at::ones({B, L}, cpu_bool)}, 1);

  // ---- token tree ----
  at::Tensor tree;
  if (in.tree_mask.defined()) {
    tree = in.tree_mask.to(at::kCPU).ne(0);
    const bool shared = tree.dim() == 2, per_row = tree.dim() == 3 && tree.size(0) == B;
    if (!(shared || per_row) || tree.size(-2) != L || tree.size(-1) != L)
      throw ShapeError("LLaMA forward: tree_mask must be [L, L] or [B, L, L] = [" + str(B) + ", " + str(L) + ", " + str(L) + "]");
    if (!tree.diagonal(0, -2, -1).all().item<bool>())
      throw ConfigError("LLaMA forward: tree_mask must let every node see itself");
    if (tree.triu(1).any().item<bool>())
      throw ConfigError("LLaMA forward: tree_mask must only point to earlier nodes (parents before children)");
    p.tree = true;
  }

  // ---- positions ----
  if (in.position_ids.defined()) {
    p.positions = in.position_ids.to(at::kCPU, at::kLong);
    if (p.positions.dim() == 1) p.positions = p.positions.unsqueeze(0).expand({B, L});
    if (p.positions.dim() != 2 || p.positions.size(0) != B || p.positions.size(1) != L)
      throw ShapeError("LLaMA forward: position_ids must be [B, L] = [" + str(B) + ", " + str(L) + "]");
    p.positions = p.positions.contiguous();
  } else {
    std::vector<int64_t> next = cache ? cache->next_positions() : std::vector<int64_t>(B, 0);
    at::Tensor base = at::tensor(next, at::TensorOptions().dtype(at::kLong)).view({B, 1});
    at::Tensor offsets;
    if (p.tree) {
      offsets = tree.sum(-1).to(at::kLong).sub(1).view({-1, L});  // depth = ancestors
    } else if (p.new_valid.defined()) {
      offsets = p.new_valid.to(at::kLong).cumsum(1).sub(1);
    } else {
      offsets = at::arange(L, at::TensorOptions().dtype(at::kLong)).view({1, L});
    }
    p.positions = (base + offsets).contiguous();
    // transformers gives left padding position 1 (it is masked out anyway).
    if (p.new_valid.defined()) p.positions.masked_fill_(p.new_valid.logical_not(), 1);
  }
  const int64_t max_pos = p.positions.max().item<int64_t>();
  if (!dynamic_rope && max_pos >= max_position_embeddings)
    throw ConfigError("LLaMA forward: position " + str(max_pos) + " is beyond max_position_embeddings " +
                      str(max_position_embeddings) + " (the prompt is too long for this model)");

  // ---- RoPE ----
  auto [cos, sin] = rope.lookup(p.positions);  // [B, L, D] float32
  p.cos = cos.unsqueeze(1).to(device, dtype);  // [B, 1, L, D]
  p.sin = sin.unsqueeze(1).to(device, dtype);

  // ---- visibility: end-aligned causal (or the tree) among the new tokens, cached keys visible ----
  if (L > 1 || p.key_valid.defined()) {
    at::Tensor block = p.tree ? tree : at::ones({L, L}, cpu_bool).tril();  // [L, L] or [B, L, L]
    const int64_t rows = block.dim() == 3 ? B : 1;
    at::Tensor attend =
        at::cat({at::ones({rows, L, P}, cpu_bool), block.view({rows, L, L})}, 2).view({rows, 1, L, K});
    if (p.key_valid.defined()) {
      attend = attend.logical_and(p.key_valid.view({B, 1, 1, K}));
      // A padding query may see no key at all: let it see every key (its output is ignored),
      // as transformers does, so softmax never meets an all-masked row.
      attend = attend.logical_or(attend.any(-1, /*keepdim=*/true).logical_not());
    }
    p.attend = attend.to(device);
    p.blocked = p.attend.logical_not();
  }

  // ---- image tokens (for hooks; the cache keeps them) ----
  if (in.image_mask.defined()) {
    at::Tensor m = in.image_mask.to(at::kCPU).ne(0);
    if (m.dim() != 2 || m.size(0) != B || m.size(1) != L)
      throw ShapeError("LLaMA forward: image_mask must be [B, L] = [" + str(B) + ", " + str(L) + "]");
    if (m.any().item<bool>()) p.new_image = m.contiguous();
  }
  at::Tensor past_image = cache ? cache->image_mask() : at::Tensor();
  if (past_image.defined() || p.new_image.defined())
    p.image_keys = at::cat({past_image.defined() ? past_image : at::zeros({B, P}, cpu_bool),
                            p.new_image.defined() ? p.new_image : at::zeros({B, L}, cpu_bool)}, 1);
  return p;
}

void finish_decoder_pass(DecoderPass& pass) {
  if (pass.cache) pass.cache->commit(pass.length, pass.positions, pass.new_valid, pass.new_image);
}

// =============================================================================================
// Building blocks
//
// Every block has two implementations of the same arithmetic: LibTorch ops (any device and
// dtype, autograd) and, when nothing needs gradients and the tensors are float32 on the CPU,
// a fast path for generation on few cores:
//   * decode is bound by reading the weights once per token: q/k/v and gate/up are fused
//     matrices, products of a few rows run through a single-stream AVX2 GEMV;
//   * prefill is bound by GEMM: oneDNN's SGEMM for projections and per-head attention;
//   * the small per-token work is hand-written (RMSNorm, RoPE written straight into the KV
//     cache, scaled/masked softmax rows, SwiGLU), with in-place residuals, so a decode step
//     runs few LibTorch ops and allocates little.
// Tests compare the fast path with the LibTorch path (and transformers' fixtures) within 1e-5.

namespace {

bool cpu_f32(const at::Tensor& t) { return t.defined() && t.device().is_cpu() && t.scalar_type() == at::kFloat; }

// The fast path applies: float32 CPU tensors and no autograd.
bool fast_path(const at::Tensor& x, const at::Tensor& w = {}) {
  return cpu_f32(x) && (!w.defined() || cpu_f32(w)) && !tracks_grad(x, w);
}

// ---- matrix-vector products for a few rows (decode, small batches) ----
//
// y[m, n] = sum_k x[m, k] * w[n, k] for M <= kGemvRows (8) rows of x: every weight is read once per call,
// which is what bounds decoding. An AVX2 kernel when the CPU has it (chosen at run time);
// otherwise LibTorch's mv.

#if defined(__x86_64__) && defined(__GNUC__)
#define IRIS_LLAMA_AVX2 1

__attribute__((target("avx2,fma"))) inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// One row of x. Weight rows are read one after the other (a single sequential stream, which
// measured ~30% faster here than interleaving four rows), with four independent FMA chains.
__attribute__((target("avx2,fma"))) void gemv1_avx2(const float* w, const float* x, float* y, int64_t K, int64_t n0,
                                                    int64_t n1) {
  const int64_t K32 = K & ~int64_t(31), K8 = K & ~int64_t(7);
  for (int64_t n = n0; n < n1; ++n) {
    const float* r = w + n * K;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k < K32; k += 32) {
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r + k), _mm256_loadu_ps(x + k), a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(r + k + 8), _mm256_loadu_ps(x + k + 8), a1);
      a2 = _mm256_fmadd_ps(_mm256_loadu_ps(r + k + 16), _mm256_loadu_ps(x + k + 16), a2);
      a3 = _mm256_fmadd_ps(_mm256_loadu_ps(r + k + 24), _mm256_loadu_ps(x + k + 24), a3);
    }
    for (; k < K8; k += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r + k), _mm256_loadu_ps(x + k), a0);
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; k < K; ++k) s += r[k] * x[k];
    y[n] = s;
  }
}

// M rows of x (2..8), one weight row at a time, loaded once for all M (M accumulators + the
// weight vector stay within the 16 ymm registers).
template <int M>
__attribute__((target("avx2,fma"))) void gemvm_avx2(const float* w, const float* x, float* y, int64_t K, int64_t N,
                                                    int64_t n0, int64_t n1) {
  const int64_t K8 = K & ~int64_t(7);
  for (int64_t n = n0; n < n1; ++n) {
    const float* r = w + n * K;
    __m256 a[M];
    for (int m = 0; m < M; ++m) a[m] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K8; k += 8) {
      const __m256 wv = _mm256_loadu_ps(r + k);
      for (int m = 0; m < M; ++m) a[m] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + m * K + k), a[m]);
    }
    for (int m = 0; m < M; ++m) {
      float s = hsum256(a[m]);
      for (int64_t k = K8; k < K; ++k) s += r[k] * x[m * K + k];
      y[m * N + n] = s;
    }
  }
}

bool have_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok && g_kernels_avx2.load(std::memory_order_relaxed);
}

// e^x for 8 floats: x = n ln2 + r with |r| <= ln2 / 2, e^r by a degree-6 polynomial
// (Cephes' expf coefficients), 2^n through the exponent bits. Relative error ~1e-7; inputs
// below -88.37 (and -inf) give 0.
__attribute__((target("avx2,fma"))) inline __m256 exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-88.3762626647949f)), _mm256_set1_ps(88.3762626647949f));
  const __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  // ln2 in two parts
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
  p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// s[t] = exp(s[t] - m) for t < n; returns the sum.
__attribute__((target("avx2,fma"))) float exp_sum_avx2(float* s, int64_t n, float m) {
  const __m256 mv = _mm256_set1_ps(m);
  __m256 acc = _mm256_setzero_ps();
  int64_t t = 0;
  for (; t + 8 <= n; t += 8) {
    const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + t), mv));
    _mm256_storeu_ps(s + t, e);
    acc = _mm256_add_ps(acc, e);
  }
  float sum = hsum256(acc);
  if (t < n) {
    float tail[8];
    const int64_t rest = n - t;
    for (int64_t i = 0; i < 8; ++i) tail[i] = i < rest ? s[t + i] - m : -INFINITY;
    _mm256_storeu_ps(tail, exp256(_mm256_loadu_ps(tail)));
    for (int64_t i = 0; i < rest; ++i) sum += (s[t + i] = tail[i]);
  }
  return sum;
}

// out[i] = silu(g[i]) * u[i] = g / (1 + e^-g) * u
__attribute__((target("avx2,fma"))) void swiglu_avx2(const float* g, const float* u, float* out, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 gv = _mm256_loadu_ps(g + i);
    const __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), gv));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
  }
  for (; i < n; ++i) out[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

// o[d] += p * v[d]
__attribute__((target("avx2,fma"))) void axpy_avx2(float p, const float* v, float* o, int64_t n) {
  const __m256 pv = _mm256_set1_ps(p);
  int64_t d = 0;
  for (; d + 8 <= n; d += 8) _mm256_storeu_ps(o + d, _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + d), _mm256_loadu_ps(o + d)));
  for (; d < n; ++d) o[d] += p * v[d];
}
#endif

// ---- portable entry points (AVX2 when the CPU has it) ----

float exp_sum(float* s, int64_t n, float m) {
#ifdef IRIS_LLAMA_AVX2
  if (have_avx2()) return exp_sum_avx2(s, n, m);
#endif
  float sum = 0;
  for (int64_t t = 0; t < n; ++t) sum += (s[t] = std::exp(s[t] - m));
  return sum;
}

void swiglu_row(const float* g, const float* u, float* out, int64_t n) {
#ifdef IRIS_LLAMA_AVX2
  if (have_avx2()) return swiglu_avx2(g, u, out, n);
#endif
  for (int64_t i = 0; i < n; ++i) out[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void axpy(float p, const float* v, float* o, int64_t n) {
#ifdef IRIS_LLAMA_AVX2
  if (have_avx2()) return axpy_avx2(p, v, o, n);
#endif
  for (int64_t d = 0; d < n; ++d) o[d] += p * v[d];
}

// Scaled, masked softmax of one row of raw scores, in place: keys t < lim that are not blocked
// take part; the others get weight 0. Every row has at least one visible key (the pass makes
// sure of it).
void softmax_row(float* s, int64_t n, int64_t lim, float scale, const bool* blocked) {
  float m = -INFINITY;
  if (blocked) {
    for (int64_t t = 0; t < lim; ++t) {
      s[t] = blocked[t] ? -INFINITY : s[t] * scale;
      m = std::max(m, s[t]);
    }
  } else {
    for (int64_t t = 0; t < lim; ++t) {
      s[t] *= scale;
      m = std::max(m, s[t]);
    }
  }
  const float inv = 1.0f / exp_sum(s, lim, m);
  for (int64_t t = 0; t < lim; ++t) s[t] *= inv;
  std::fill(s + lim, s + n, 0.0f);
}

// Up to this many rows (decode, a verified draft chain or small tree, small batches) run as
// GEMV, the weights streamed once: a general SGEMM call costs tens of microseconds of set-up
// at these sizes, which made verifying 5 drafted tokens cost as much as ~4 decode steps.
constexpr int64_t kGemvRows = 8;

// x: [M, K] contiguous (M <= kGemvRows), w: [N, K] contiguous -> y: [M, N] (float32, CPU).
void gemv_rows(const at::Tensor& x, const at::Tensor& w, at::Tensor& y) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
#ifdef IRIS_LLAMA_AVX2
  if (have_avx2()) {
    const float* wd = w.data_ptr<float>();
    const float* xd = x.data_ptr<float>();
    float* yd = y.data_ptr<float>();
    // One core already saturates memory bandwidth here (measured: 1 and 2 threads stream the
    // weights equally fast), so only very large matrices (the LM head) are split across threads;
    // the rest run inline and skip the thread wake-ups.
    const int64_t grain = std::max<int64_t>(4, (int64_t(1) << 22) / std::max<int64_t>(K, 1)) & ~int64_t(3);
    at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
      switch (M) {
        case 1: gemv1_avx2(wd, xd, yd, K, n0, n1); break;
        case 2: gemvm_avx2<2>(wd, xd, yd, K, N, n0, n1); break;
        case 3: gemvm_avx2<3>(wd, xd, yd, K, N, n0, n1); break;
        case 4: gemvm_avx2<4>(wd, xd, yd, K, N, n0, n1); break;
        case 5: gemvm_avx2<5>(wd, xd, yd, K, N, n0, n1); break;
        case 6: gemvm_avx2<6>(wd, xd, yd, K, N, n0, n1); break;
        case 7: gemvm_avx2<7>(wd, xd, yd, K, N, n0, n1); break;
        default: gemvm_avx2<8>(wd, xd, yd, K, N, n0, n1); break;
      }
    });
    return;
  }
#endif
  for (int64_t r = 0; r < M; ++r) {
    at::Tensor yr = y.select(0, r);
    at::mv_out(yr, w, x.select(0, r));
  }
}

// ---- GEMM for many rows (prefill) ----
//
// Debian's LibTorch 1.13 routes at::linear to OpenBLAS, whose SGEMM ran the prefill shapes at
// 30-100 GFLOP/s here; oneDNN's SGEMM (AVX-512 JIT), which LibTorch already loads as a
// dependency, ran them at 130-170. It is looked up at run time, so nothing links against it;
// where it is not exported (e.g. pip wheels, which hide oneDNN) at::linear is used.
// IRIS_NO_DNNL=1 turns it off.
using DnnlSgemm = int (*)(char transa, char transb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

DnnlSgemm dnnl_sgemm_symbol() {
  static const DnnlSgemm fn = []() -> DnnlSgemm {
    if (std::getenv("IRIS_NO_DNNL")) return nullptr;
    return reinterpret_cast<DnnlSgemm>(dlsym(RTLD_DEFAULT, "dnnl_sgemm"));
  }();
  return fn;
}

DnnlSgemm dnnl_sgemm() { return g_kernels_onednn.load(std::memory_order_relaxed) ? dnnl_sgemm_symbol() : nullptr; }

// Row-major C[m, n] = A[m, k] * op(B) with op(B) = B^T (B: [n, k]) or B ([k, n]); beta = 0.
bool sgemm_rows(const float* a, int64_t lda, const float* b, int64_t ldb, bool b_transposed, float* c, int64_t ldc,
                int64_t m, int64_t n, int64_t k) {
  const DnnlSgemm fn = dnnl_sgemm();
  return fn && fn('N', b_transposed ? 'T' : 'N', m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc) == 0;
}

// x @ w^T + b. A few rows (decode, small batches) go through gemv_rows: LibTorch 1.13 sends
// [1, K] x [K, N] to a general GEMM that is several times slower than GEMV on this CPU. Many
// rows go through sgemm_rows.
at::Tensor dense(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  const int64_t in = x.size(-1);
  const int64_t rows = in ? x.numel() / in : 0;
  if (rows >= 1 && fast_path(x, w) && w.is_contiguous() && !(b.defined() && tracks_grad(b))) {
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = w.size(0);
    const at::Tensor x2 = x.reshape({rows, in}).contiguous();
    at::Tensor y = at::empty({rows, w.size(0)}, x.options());
    bool done = true;
    if (rows <= kGemvRows) gemv_rows(x2, w, y);
    else done = sgemm_rows(x2.data_ptr<float>(), in, w.data_ptr<float>(), in, true, y.data_ptr<float>(), w.size(0),
                           rows, w.size(0), in);
    if (done) {
      if (b.defined()) y.add_(b);
      return y.view(shape);
    }
  }
  return at::linear(x, w, b);
}

// ---- LibTorch-op versions (autograd, any device) ----

// rotate_half(x) = cat(-x2, x1) on the last dim.
at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({x.narrow(-1, half, half).neg(), x.narrow(-1, 0, half)}, -1);
}

// x * cos + rotate_half(x) * sin; x: [B, heads, L, D], cos/sin: [B, 1, L, D].
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  return x * cos + rotate_half(x) * sin;
}

// ---- fast-path kernels (float32, CPU, contiguous innermost dims) ----

// y = x * rsqrt(mean(x^2) + eps) * w over rows of n.
void rms_norm_rows(const float* x, const float* w, float* y, int64_t rows, int64_t n, double eps) {
  at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / std::max<int64_t>(n, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * n;
      float* yr = y + r * n;
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t i = 0;
      for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; ++j) acc[j] += xr[i + j] * xr[i + j];
      float ss = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
      for (; i < n; ++i) ss += xr[i] * xr[i];
      const float inv = 1.0f / std::sqrt(ss / static_cast<float>(n) + static_cast<float>(eps));
      for (int64_t k = 0; k < n; ++k) yr[k] = w[k] * (xr[k] * inv);
    }
  });
}

// One head's RoPE: dst = src * cos + rotate_half(src) * sin (D floats each).
inline void rope_head(const float* src, const float* cos, const float* sin, float* dst, int64_t D) {
  const int64_t h = D / 2;
  for (int64_t i = 0; i < h; ++i) dst[i] = src[i] * cos[i] + (-src[i + h]) * sin[i];
  for (int64_t i = h; i < D; ++i) dst[i] = src[i] * cos[i] + src[i - h] * sin[i];
}

// Splits a fused projection [B, L, (H + 2 Hkv) * D] into RoPE'd queries q [B, H, L, D] and
// RoPE'd keys / plain values written at position (b, j, t0 + l) of k/v ([B, Hkv, T, D] buffers:
// the KV cache itself, or fresh tensors).
void split_rope(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, int64_t H, int64_t Hkv,
                int64_t D, at::Tensor& q, at::Tensor& k, at::Tensor& v, int64_t t0) {
  const int64_t B = qkv.size(0), L = qkv.size(1), W = qkv.size(2);
  const float* src = qkv.data_ptr<float>();
  const float* cs = cos.data_ptr<float>();  // [B, 1, L, D] contiguous
  const float* sn = sin.data_ptr<float>();
  float* qd = q.data_ptr<float>();
  float* kd = k.data_ptr<float>();
  float* vd = v.data_ptr<float>();
  const int64_t ks_b = k.stride(0), ks_h = k.stride(1), ks_t = k.stride(2);
  const int64_t vs_b = v.stride(0), vs_h = v.stride(1), vs_t = v.stride(2);
  at::parallel_for(0, B * L, std::max<int64_t>(1, 16384 / W), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / L, l = r % L;
      const float* row = src + r * W;
      const float* c = cs + r * D;
      const float* s = sn + r * D;
      for (int64_t h = 0; h < H; ++h) rope_head(row + h * D, c, s, qd + ((b * H + h) * L + l) * D, D);
      for (int64_t j = 0; j < Hkv; ++j) {
        rope_head(row + (H + j) * D, c, s, kd + b * ks_b + j * ks_h + (t0 + l) * ks_t, D);
        std::copy(row + (H + Hkv + j) * D, row + (H + Hkv + j + 1) * D, vd + b * vs_b + j * vs_h + (t0 + l) * vs_t);
      }
    }
  });
}

inline float dot(const float* a, const float* b, int64_t n) {
#ifdef IRIS_LLAMA_AVX2
  if (have_avx2()) {
    float y;
    gemv1_avx2(a, b, &y, n, 0, 1);
    return y;
  }
#endif
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Attention of a few queries per head (decode, verification), straight from the cache:
//   q [B, H, L, D] contiguous; k/v [B, Hkv, >=K, D] with a contiguous last dim;
//   blocked [B|1, 1, L, K] bool (true = masked) or undefined; out [B, L, H, D].
void attend_few(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t K, const at::Tensor& blocked,
                double scale, at::Tensor& out) {
  const int64_t B = q.size(0), H = q.size(1), L = q.size(2), D = q.size(3), Hkv = k.size(1), G = H / Hkv;
  const float* qd = q.data_ptr<float>();
  const float* kd = k.data_ptr<float>();
  const float* vd = v.data_ptr<float>();
  float* od = out.data_ptr<float>();
  const int64_t ks_b = k.stride(0), ks_h = k.stride(1), ks_t = k.stride(2);
  const int64_t vs_b = v.stride(0), vs_h = v.stride(1), vs_t = v.stride(2);
  const at::Tensor blk = blocked.defined() ? blocked.contiguous() : at::Tensor();
  const bool* md = blk.defined() ? blk.data_ptr<bool>() : nullptr;
  const int64_t mb = blk.defined() ? blk.size(0) : 0;
  const float sc = static_cast<float>(scale);
  const int64_t work = L * K * D;  // per (b, h)
  at::parallel_for(0, B * H, std::max<int64_t>(1, 65536 / std::max<int64_t>(work, 1)), [&](int64_t u0, int64_t u1) {
    std::vector<float> s(static_cast<size_t>(K));
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t b = u / H, h = u % H, j = h / G;
      const float* kb = kd + b * ks_b + j * ks_h;
      const float* vb = vd + b * vs_b + j * vs_h;
      for (int64_t i = 0; i < L; ++i) {
        const float* qi = qd + ((b * H + h) * L + i) * D;
        const bool* mi = md ? md + ((mb > 1 ? b : 0) * L + i) * K : nullptr;
#ifdef IRIS_LLAMA_AVX2
        if (have_avx2() && ks_t == D) gemv1_avx2(kb, qi, s.data(), D, 0, K);  // the keys as a [K, D] matrix
        else
#endif
          for (int64_t t = 0; t < K; ++t) s[t] = dot(qi, kb + t * ks_t, D);
        softmax_row(s.data(), K, K, sc, mi);
        float* o = od + ((b * L + i) * H + h) * D;
        std::fill(o, o + D, 0.0f);
        for (int64_t t = 0; t < K; ++t)
          if (s[t] != 0.0f) axpy(s[t], vb + t * vs_t, o, D);
      }
    }
  });
}

// Attention of many queries (prefill) through oneDNN's SGEMM, one (batch, head) per task: the
// task's scores for a block of query rows stay in a per-thread buffer, get softmaxed in place,
// and the second GEMM writes straight into out [B, L, H, D]. With a plain causal mask a block
// reads only the keys it can see. Returns false (nothing written) without oneDNN.
//   q [B, H, L, D] contiguous; k/v [B, Hkv, >=K, D] with rows of D contiguous.
bool attend_gemm(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t K, const DecoderPass& pass,
                 double scale, at::Tensor& out) {
  if (!dnnl_sgemm() || k.stride(3) != 1 || v.stride(3) != 1) return false;
  const int64_t B = q.size(0), H = q.size(1), L = q.size(2), D = q.size(3), Hkv = k.size(1), G = H / Hkv;
  const bool causal_only = !pass.tree && !pass.key_valid.defined();
  const at::Tensor blk = (!causal_only && pass.blocked.defined()) ? pass.blocked.contiguous() : at::Tensor();
  const bool* md = blk.defined() ? blk.data_ptr<bool>() : nullptr;
  const int64_t mb = blk.defined() ? blk.size(0) : 0;
  const float* qd = q.data_ptr<float>();
  const float* kd = k.data_ptr<float>();
  const float* vd = v.data_ptr<float>();
  float* od = out.data_ptr<float>();
  const int64_t ks_b = k.stride(0), ks_h = k.stride(1), ks_t = k.stride(2);
  const int64_t vs_b = v.stride(0), vs_h = v.stride(1), vs_t = v.stride(2);
  const float sc = static_cast<float>(scale);
  const int64_t R = 128;  // query rows per block
  std::atomic<bool> ok{true};
  at::parallel_for(0, B * H, 1, [&](int64_t u0, int64_t u1) {
    thread_local std::vector<float> scores;
    scores.resize(static_cast<size_t>(std::min(R, L) * K));
    for (int64_t u = u0; u < u1 && ok; ++u) {
      const int64_t b = u / H, h = u % H, j = h / G;
      const float* qh = qd + (b * H + h) * L * D;
      const float* kh = kd + b * ks_b + j * ks_h;
      const float* vh = vd + b * vs_b + j * vs_h;
      float* oh = od + b * L * H * D + h * D;  // row i at oh + i * H * D
      for (int64_t r0 = 0; r0 < L; r0 += R) {
        const int64_t rows = std::min(R, L - r0);
        const int64_t kn = causal_only ? pass.past + r0 + rows : K;  // keys this block can see
        float* S = scores.data();
        if (!sgemm_rows(qh + r0 * D, D, kh, ks_t, true, S, kn, rows, kn, D)) {
          ok = false;
          return;
        }
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t lim = causal_only ? pass.past + r0 + i + 1 : kn;
          const bool* mi = md ? md + ((mb > 1 ? b : 0) * L + r0 + i) * K : nullptr;
          softmax_row(S + i * kn, kn, lim, sc, mi);
        }
        if (!sgemm_rows(S, kn, vh, vs_t, false, oh + r0 * H * D, H * D, rows, D, kn)) {
          ok = false;
          return;
        }
      }
    }
  });
  return ok;
}

// Queries per chunk for the BLAS path, so that a chunk's scores stay around 2 MB (cache-sized,
// and no large fresh allocation per layer).
int64_t query_chunk(int64_t B, int64_t H, int64_t K) {
  return std::max<int64_t>(16, (int64_t(1) << 19) / std::max<int64_t>(1, B * H * K));
}

// Fast path for many queries (prefill): matmul-softmax-matmul per chunk of queries with grouped
// heads (head h reads kv head h / G; no repeated K/V), in-place scale/mask/softmax. With a
// plain causal mask a chunk reads only the keys it can see.
//   q [B, H, L, D] contiguous; k/v [B, Hkv, K, D] -> out [B, L, H, D]
void attend_chunked(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const DecoderPass& pass,
                    double scale, at::Tensor& out) {
  const int64_t B = q.size(0), H = q.size(1), L = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), G = H / Hkv, K = k.size(2);
  const bool causal_only = !pass.tree && !pass.key_valid.defined();
  const at::Tensor q5 = q.view({B, Hkv, G, L, D});
  at::Tensor out5 = out.view({B, L, Hkv, G, D});
  const int64_t C = query_chunk(B, H, K);
  for (int64_t i0 = 0; i0 < L; i0 += C) {
    const int64_t c = std::min(C, L - i0);
    const int64_t kn = causal_only ? pass.past + i0 + c : K;  // keys this chunk can see
    const at::Tensor qc = q5.narrow(3, i0, c).reshape({B, Hkv, G * c, D});
    at::Tensor s = at::matmul(qc, k.narrow(2, 0, kn).transpose(2, 3));  // [B, Hkv, G*c, kn]
    s.mul_(scale);
    if (pass.blocked.defined())
      s.view({B, Hkv, G, c, kn})
          .masked_fill_(pass.blocked.narrow(2, i0, c).narrow(3, 0, kn).unsqueeze(2),
                        -std::numeric_limits<float>::infinity());
    at::_softmax_out(s, s, -1, false);
    const at::Tensor o = at::matmul(s, v.narrow(2, 0, kn));  // [B, Hkv, G*c, D]
    out5.narrow(1, i0, c).copy_(o.view({B, Hkv, G, c, D}).permute({0, 3, 1, 2, 4}));
  }
}

// The explicit path: post-softmax weights [B, H, L, K] exist as a tensor and hooks see them.
// Grouped heads as above; autograd-safe when gradients are on.  -> [B, H, L, D]
// Per (batch, kv head) GEMMs of a grouped batch: c[u] = a[u] (m x k) * op(b[u]), op = B^T or B,
// for u in [0, B * Hkv); a/c contiguous [B, Hkv, m, *], b [B, Hkv, *, *] with rows contiguous.
// False when oneDNN is not there (the caller uses at::matmul).
bool grouped_gemm(const at::Tensor& a, const at::Tensor& b, bool b_transposed, at::Tensor& c) {
  if (!dnnl_sgemm() || !cpu_f32(a) || !cpu_f32(b) || !a.is_contiguous() || b.stride(3) != 1) return false;
  const int64_t n_units = a.size(0) * a.size(1), m = a.size(2), kk = a.size(3), n = c.size(3);
  const int64_t Hkv = a.size(1);
  const float* ad = a.data_ptr<float>();
  const float* bd = b.data_ptr<float>();
  float* cd = c.data_ptr<float>();
  std::atomic<bool> ok{true};
  at::parallel_for(0, n_units, 1, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1 && ok; ++u) {
      const float* bu = bd + (u / Hkv) * b.stride(0) + (u % Hkv) * b.stride(1);
      if (!sgemm_rows(ad + u * m * kk, kk, bu, b.stride(2), b_transposed, cd + u * m * n, n, m, n, kk)) ok = false;
    }
  });
  return ok;
}

at::Tensor attend_explicit(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const DecoderPass& pass,
                           double scale, int layer, const HookContext* ctx) {
  const int64_t B = q.size(0), H = q.size(1), L = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), G = H / Hkv, K = k.size(2);
  const bool grad = tracks_grad(q, k) || tracks_grad(v);
  const at::Tensor qg = q.reshape({B, Hkv, G * L, D});
  at::Tensor s;  // [B, Hkv, G*L, K]
  if (!grad) {
    s = at::empty({B, Hkv, G * L, K}, q.options());
    if (!grouped_gemm(qg, k, true, s)) s = at::Tensor();
  }
  if (!s.defined()) s = at::matmul(qg, k.transpose(2, 3));
  if (grad) s = s * scale;
  else s.mul_(scale);
  if (pass.blocked.defined()) {
    const at::Tensor blocked = pass.blocked.unsqueeze(2);  // [B|1, 1, 1, L, K]
    if (grad) s = s.view({B, Hkv, G, L, K}).masked_fill(blocked, -std::numeric_limits<float>::infinity()).view({B, Hkv, G * L, K});
    else s.view({B, Hkv, G, L, K}).masked_fill_(blocked, -std::numeric_limits<float>::infinity());
  }
  at::Tensor probs;
  if (!grad && s.device().is_cpu()) probs = at::_softmax_out(s, s, -1, false);  // in place: one [B, H, L, K] buffer
  else probs = at::softmax(s, -1);
  if (ctx) {
    at::Tensor w = probs.view({B, H, L, K});
    for (const AttentionHookList* hooks : pass.hooks) hooks->run(layer, w, *ctx);
    probs = w.reshape({B, Hkv, G * L, K});
  }
  if (!grad && !tracks_grad(probs)) {
    at::Tensor o = at::empty({B, Hkv, G * L, D}, q.options());
    if (grouped_gemm(probs.contiguous(), v, false, o)) return o.view({B, H, L, D});
  }
  return at::matmul(probs, v).view({B, H, L, D});
}

#if IRIS_HAS_FUSED_SDPA
// LibTorch >= 2.1: the fused kernel, grouped heads as above (mask expanded per group).
at::Tensor attend_fused(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const DecoderPass& pass,
                        double scale) {
  const int64_t B = q.size(0), H = q.size(1), L = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), G = H / Hkv, K = k.size(2);
  c10::optional<at::Tensor> mask;
  if (pass.attend.defined()) {
    const int64_t mb = pass.attend.size(0);
    mask = pass.attend.unsqueeze(2).expand({mb, 1, G, L, K}).reshape({mb, 1, G * L, K});
  }
  const at::Tensor qg = q.reshape({B, Hkv, G * L, D});
  return at::scaled_dot_product_attention(qg, k, v, mask, 0.0, false, scale).view({B, H, L, D});
}
#endif

}  // namespace

void set_llama_kernels(const LlamaKernels& k) {
  g_kernels_onednn = k.onednn_gemm;
  g_kernels_avx2 = k.avx2;
}

LlamaKernels llama_kernels() {
  LlamaKernels k;
  k.onednn_gemm = dnnl_sgemm() != nullptr;
#ifdef IRIS_LLAMA_AVX2
  k.avx2 = have_avx2();
#else
  k.avx2 = false;
#endif
  return k;
}

// =============================================================================================
// Modules

LlamaLinearImpl::LlamaLinearImpl(int64_t in_features, int64_t out_features, bool with_bias) {
  weight = register_parameter("weight", at::zeros({out_features, in_features}));
  if (with_bias) bias = register_parameter("bias", at::zeros({out_features}));
}

LlamaLinearImpl::LlamaLinearImpl(const at::Tensor& w, const at::Tensor& b) {
  // Registered as parameters of their own, then pointed at the given memory (set_data keeps
  // them leaves, so autograd and optimizers treat them as ordinary parameters).
  weight = register_parameter("weight", at::empty({0}, w.options()));
  weight.set_data(w);
  if (b.defined()) {
    bias = register_parameter("bias", at::empty({0}, b.options()));
    bias.set_data(b);
  }
}

at::Tensor LlamaLinearImpl::forward(const at::Tensor& x) { return dense(x, weight, bias); }

FusedProjection::FusedProjection(int64_t in_features, const std::vector<int64_t>& out_features, bool with_bias) {
  c10::InferenceMode normal(false);
  int64_t total = 0;
  for (int64_t o : out_features) total += o;
  weight_ = at::zeros({total, in_features});
  if (with_bias) bias_ = at::zeros({total});
  int64_t row = 0;
  for (int64_t o : out_features) {
    parts_.push_back(LlamaLinear(weight_.narrow(0, row, o), with_bias ? bias_.narrow(0, row, o) : at::Tensor()));
    row += o;
  }
}

bool FusedProjection::intact() const {
  if (!weight_.defined()) return false;
  int64_t row = 0;
  const int64_t in = weight_.size(1);
  for (const LlamaLinear& p : parts_) {
    const at::Tensor& w = p->weight;
    if (w.scalar_type() != weight_.scalar_type() || w.device() != weight_.device() || !w.is_contiguous() ||
        w.data_ptr() != static_cast<char*>(weight_.data_ptr()) + row * in * weight_.element_size())
      return false;
    if (p->bias.defined() != bias_.defined()) return false;
    if (bias_.defined() && p->bias.data_ptr() != static_cast<char*>(bias_.data_ptr()) + row * bias_.element_size())
      return false;
    row += w.size(0);
  }
  return row == weight_.size(0);
}

void FusedProjection::fuse() {
  // Normal (not inference-mode) tensors, so the parameters stay usable with autograd.
  c10::InferenceMode normal(false);
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> ws, bs;
  for (const LlamaLinear& p : parts_) {
    ws.push_back(p->weight);
    if (p->bias.defined()) bs.push_back(p->bias);
  }
  weight_ = at::cat(ws, 0);
  bias_ = bs.size() == parts_.size() && !bs.empty() ? at::cat(bs, 0) : at::Tensor();
  int64_t row = 0;
  for (LlamaLinear& p : parts_) {
    const int64_t n = p->weight.size(0);
    p->weight.set_data(weight_.narrow(0, row, n));
    if (bias_.defined()) p->bias.set_data(bias_.narrow(0, row, n));
    row += n;
  }
}

at::Tensor FusedProjection::forward(const at::Tensor& x) {
  bool grad = tracks_grad(x);
  for (const LlamaLinear& p : parts_) grad = grad || tracks_grad(p->weight) || (p->bias.defined() && tracks_grad(p->bias));
  if (!grad) {
    if (!intact()) fuse();  // e.g. after module.to(): rebuild on the new device / dtype
    return dense(x, weight_, bias_);
  }
  std::vector<at::Tensor> outs;
  for (LlamaLinear& p : parts_) outs.push_back(p->forward(x));
  return at::cat(outs, -1);
}

LlamaRMSNormImpl::LlamaRMSNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", at::ones({dim}));
}

at::Tensor LlamaRMSNormImpl::forward(const at::Tensor& x) {
  if (fast_path(x, weight) && x.is_contiguous() && weight.is_contiguous()) {
    at::Tensor y = at::empty_like(x);
    rms_norm_rows(x.data_ptr<float>(), weight.data_ptr<float>(), y.data_ptr<float>(), x.numel() / x.size(-1),
                  x.size(-1), eps_);
    return y;
  }
  const at::ScalarType dtype = x.scalar_type();
  at::Tensor h = x.to(at::kFloat);
  at::Tensor variance = h.pow(2).mean(-1, /*keepdim=*/true);
  h = h * at::rsqrt(variance + eps_);
  return weight * h.to(dtype);
}

LlamaAttentionImpl::LlamaAttentionImpl(const LlamaConfig& cfg, int layer_index)
    : layer_(layer_index),
      heads_(cfg.num_attention_heads),
      kv_heads_(cfg.num_key_value_heads),
      head_dim_(cfg.head_dim),
      scale_(1.0 / std::sqrt(static_cast<double>(cfg.head_dim))) {
  auto lin = [&](const char* name, int64_t in, int64_t out) {
    return register_module(name, LlamaLinear(in, out, cfg.attention_bias));
  };
  qkv_ = FusedProjection(cfg.hidden_size, {cfg.q_size(), cfg.kv_size(), cfg.kv_size()}, cfg.attention_bias);
  q_proj = register_module("q_proj", qkv_.part(0));
  k_proj = register_module("k_proj", qkv_.part(1));
  v_proj = register_module("v_proj", qkv_.part(2));
  o_proj = lin("o_proj", cfg.q_size(), cfg.hidden_size);
}

at::Tensor LlamaAttentionImpl::forward(const at::Tensor& x, const DecoderPass& pass, const at::Tensor& layer_input) {
  const int64_t B = x.size(0), L = x.size(1), H = heads_, Hkv = kv_heads_, D = head_dim_;
  const int64_t K = pass.past + L;  // keys this pass attends over
  const at::Tensor qkv = qkv_.forward(x);  // [B, L, (H + 2 Hkv) * D]

  // Hooks decide per layer whether the explicit path runs.
  bool explicit_path = pass.force_explicit;
  HookContext ctx;
  bool hooked = false;
  if (!pass.hooks.empty()) {
    ctx.layer = layer_;
    ctx.num_layers = pass.num_layers;
    ctx.num_heads = H;
    ctx.num_kv_heads = Hkv;
    ctx.prefill = pass.past == 0;
    ctx.decode = pass.past > 0 && L == 1;
    ctx.past_length = pass.past;
    ctx.query_length = L;
    ctx.key_length = K;
    ctx.query_positions = pass.positions;
    ctx.image_keys = pass.image_keys;
    ctx.key_valid = pass.key_valid;
    ctx.hidden_states = layer_input.defined() ? layer_input : x;
    hooked = pass.wants_hooks(layer_, ctx);
    explicit_path = explicit_path || hooked;
  }

  at::Tensor out;  // [B, L, H * D]
  const bool cache_f32 = !pass.cache || cpu_f32(pass.cache->key_buffer(layer_));
  if (fast_path(qkv) && qkv.is_contiguous() && pass.cos.is_contiguous() && cache_f32) {
    // Queries to [B, H, L, D]; keys (RoPE'd) and values straight into the cache slots.
    at::Tensor q = at::empty({B, H, L, D}, qkv.options());
    at::Tensor keys, values;
    if (pass.cache) {
      keys = pass.cache->key_buffer(layer_);
      values = pass.cache->value_buffer(layer_);
      split_rope(qkv, pass.cos, pass.sin, H, Hkv, D, q, keys, values, pass.past);
      keys = keys.narrow(2, 0, K);
      values = values.narrow(2, 0, K);
    } else {
      keys = at::empty({B, Hkv, L, D}, qkv.options());
      values = at::empty({B, Hkv, L, D}, qkv.options());
      split_rope(qkv, pass.cos, pass.sin, H, Hkv, D, q, keys, values, 0);
    }
    if (explicit_path) {
      out = attend_explicit(q, keys, values, pass, scale_, layer_, hooked ? &ctx : nullptr)
                .transpose(1, 2)
                .reshape({B, L, H * D});
    } else {
      at::Tensor o = at::empty({B, L, H, D}, qkv.options());
      if (L <= 8) attend_few(q, keys, values, K, pass.blocked, scale_, o);
      else if (!attend_gemm(q, keys, values, K, pass, scale_, o)) attend_chunked(q, keys, values, pass, scale_, o);
      out = o.view({B, L, H * D});
    }
  } else {
    // LibTorch ops: any device / dtype, autograd.
    const int64_t qs = H * D, kvs = Hkv * D;
    at::Tensor q = qkv.narrow(-1, 0, qs).reshape({B, L, H, D}).transpose(1, 2);
    at::Tensor k = qkv.narrow(-1, qs, kvs).reshape({B, L, Hkv, D}).transpose(1, 2);
    at::Tensor v = qkv.narrow(-1, qs + kvs, kvs).reshape({B, L, Hkv, D}).transpose(1, 2);
    q = apply_rope(q, pass.cos, pass.sin).contiguous();  // [B, H, L, D]
    k = apply_rope(k, pass.cos, pass.sin);               // [B, Hkv, L, D]
    at::Tensor keys = k, values = v;
    if (pass.cache) {
      pass.cache->write(layer_, pass.past, k, v);
      if (tracks_grad(k) || tracks_grad(v)) {
        // Gradients reach this pass's keys/values; the cached past is a constant.
        keys = at::cat({pass.cache->keys(layer_, pass.past), k}, 2);
        values = at::cat({pass.cache->values(layer_, pass.past), v}, 2);
      } else {
        keys = pass.cache->keys(layer_, K);
        values = pass.cache->values(layer_, K);
      }
    }
    at::Tensor o;
#if IRIS_HAS_FUSED_SDPA
    if (!explicit_path) o = attend_fused(q, keys, values, pass, scale_);
#endif
    if (!o.defined()) o = attend_explicit(q, keys, values, pass, scale_, layer_, hooked ? &ctx : nullptr);
    out = o.transpose(1, 2).reshape({B, L, H * D});
  }
  return o_proj(out);
}

LlamaMLPImpl::LlamaMLPImpl(const LlamaConfig& cfg)
    : act_(parse_activation(cfg.hidden_act, "LLaMA config")), inter_(cfg.intermediate_size) {
  auto lin = [&](const char* name, int64_t in, int64_t out) {
    return register_module(name, LlamaLinear(in, out, cfg.mlp_bias));
  };
  gate_up_ = FusedProjection(cfg.hidden_size, {cfg.intermediate_size, cfg.intermediate_size}, cfg.mlp_bias);
  gate_proj = register_module("gate_proj", gate_up_.part(0));
  up_proj = register_module("up_proj", gate_up_.part(1));
  down_proj = lin("down_proj", cfg.intermediate_size, cfg.hidden_size);
}

at::Tensor LlamaMLPImpl::forward(const at::Tensor& x) {
  const at::Tensor gu = gate_up_.forward(x);  // [B, L, 2I]
  if (act_ == kSilu && fast_path(gu) && gu.is_contiguous()) {
    const int64_t rows = gu.numel() / (2 * inter_);
    std::vector<int64_t> shape = gu.sizes().vec();
    shape.back() = inter_;
    at::Tensor h = at::empty(shape, gu.options());
    const float* g = gu.data_ptr<float>();
    float* hd = h.data_ptr<float>();
    at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / inter_), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) swiglu_row(g + r * 2 * inter_, g + r * 2 * inter_ + inter_, hd + r * inter_, inter_);
    });
    return down_proj(h);
  }
  const at::Tensor up = gu.narrow(-1, inter_, inter_);
  at::Tensor h = activate(act_, gu.narrow(-1, 0, inter_));
  if (tracks_grad(h) || tracks_grad(up)) h = h * up;
  else h.mul_(up);
  return down_proj(h);
}

LlamaDecoderLayerImpl::LlamaDecoderLayerImpl(const LlamaConfig& cfg, int layer_index, bool input_norm) {
  self_attn = register_module("self_attn", LlamaAttention(cfg, layer_index));
  mlp = register_module("mlp", LlamaMLP(cfg));
  if (input_norm) input_layernorm = register_module("input_layernorm", LlamaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps));
  post_attention_layernorm =
      register_module("post_attention_layernorm", LlamaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps));
}

at::Tensor LlamaDecoderLayerImpl::forward(const at::Tensor& x, const DecoderPass& pass) {
  const at::Tensor h = input_layernorm ? input_layernorm(x) : x;
  at::Tensor y = self_attn->forward(h, pass, x);
  // Residuals in place when autograd is off (y and m are fresh tensors).
  if (tracks_grad(y) || tracks_grad(x)) y = x + y;
  else y.add_(x);
  at::Tensor m = mlp(post_attention_layernorm(y));
  if (tracks_grad(m) || tracks_grad(y)) return y + m;
  return m.add_(y);
}

LlamaModelImpl::LlamaModelImpl(const LlamaConfig& cfg) : cfg_(cfg) {
  cfg_.validate("LLaMA config");
  rope_ = RotaryEmbedding(cfg_.head_dim, cfg_.rope_theta, cfg_.rope_scaling, cfg_.max_position_embeddings);
  embed_tokens = register_module("embed_tokens", torch::nn::Embedding(cfg_.vocab_size, cfg_.hidden_size));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < cfg_.num_hidden_layers; ++i) {
    layer_list_.push_back(LlamaDecoderLayer(cfg_, static_cast<int>(i)));
    layers->push_back(layer_list_.back());
  }
  norm = register_module("norm", LlamaRMSNorm(cfg_.hidden_size, cfg_.rms_norm_eps));
}

at::Tensor LlamaModelImpl::embed(const at::Tensor& input_ids) {
  at::Tensor ids = input_ids.to(embed_tokens->weight.device(), at::kLong);
  const int64_t lo = ids.numel() ? ids.min().item<int64_t>() : 0, hi = ids.numel() ? ids.max().item<int64_t>() : 0;
  if (lo < 0 || hi >= cfg_.vocab_size)
    throw ConfigError("LLaMA: token id " + str(lo < 0 ? lo : hi) + " outside the vocabulary [0, " + str(cfg_.vocab_size) + ")");
  return at::embedding(embed_tokens->weight, ids);
}

at::Tensor LlamaModelImpl::forward(const LlamaInput& in, KVCache* cache, const LlamaForwardOptions& opt,
                                   std::vector<at::Tensor>* hidden_states) {
  const at::Tensor& w = embed_tokens->weight;
  DecoderPass pass = prepare_decoder_pass(rope_, in, cache, cfg_.max_position_embeddings,
                                          cfg_.rope_scaling.type == RopeScaling::Type::Dynamic, w.scalar_type(),
                                          w.device());
  if (!hooks_.empty()) pass.hooks.push_back(&hooks_);
  if (opt.hooks && !opt.hooks->empty()) pass.hooks.push_back(opt.hooks);
  pass.force_explicit = opt.force_explicit_attention;
  pass.num_layers = static_cast<int>(cfg_.num_hidden_layers);
  if (cache && (cache->num_layers() != cfg_.num_hidden_layers || cache->kv_heads() != cfg_.num_key_value_heads ||
                cache->head_dim() != cfg_.head_dim))
    throw ShapeError("LLaMA forward: the KV cache was made for another model (layers/kv heads/head_dim differ)");

  at::Tensor x;
  if (in.inputs_embeds.defined()) {
    if (in.inputs_embeds.size(2) != cfg_.hidden_size)
      throw ShapeError("LLaMA forward: inputs_embeds hidden size " + str(in.inputs_embeds.size(2)) + ", expected " +
                       str(cfg_.hidden_size));
    x = in.inputs_embeds.to(w.device(), w.scalar_type());
  } else {
    x = embed(in.input_ids);
  }
  if (hidden_states) {
    hidden_states->clear();
    hidden_states->push_back(x);
  }
  for (auto& layer : layer_list_) {
    x = layer->forward(x, pass);
    if (hidden_states) hidden_states->push_back(x);
  }
  x = norm(x);
  if (hidden_states) hidden_states->back() = x;  // transformers: the last entry is after the norm
  finish_decoder_pass(pass);
  return x;
}

LlamaForCausalLMImpl::LlamaForCausalLMImpl(const LlamaConfig& cfg) : cfg_(cfg) {
  model = register_module("model", LlamaModel(cfg));
  if (!cfg.tie_word_embeddings)
    lm_head = register_module("lm_head", LlamaLinear(cfg.hidden_size, cfg.vocab_size, false));
}

const at::Tensor& LlamaForCausalLMImpl::lm_head_weight() const {
  return lm_head ? lm_head->weight : model->embed_tokens->weight;
}

at::Tensor LlamaForCausalLMImpl::logits(const at::Tensor& hidden) { return dense(hidden, lm_head_weight(), at::Tensor()); }

LlamaOutput LlamaForCausalLMImpl::forward(const LlamaInput& in, KVCache* cache, const LlamaForwardOptions& opt) {
  LlamaOutput out;
  out.last_hidden_state = model->forward(in, cache, opt, opt.output_hidden_states ? &out.hidden_states : nullptr);
  const int64_t L = out.last_hidden_state.size(1);
  if (opt.logits == LogitsMode::All) out.logits = logits(out.last_hidden_state);
  else if (opt.logits == LogitsMode::Last) out.logits = logits(out.last_hidden_state.narrow(1, L - 1, 1));
  return out;
}

at::Tensor LlamaForCausalLMImpl::forward(const at::Tensor& input_ids) {
  LlamaInput in;
  in.input_ids = input_ids;
  return forward(in, nullptr, {}).logits;
}

void LlamaForCausalLMImpl::init_weights(uint64_t seed, double std) {
  at::NoGradGuard no_grad;
  at::Generator gen = at::detail::createCPUGenerator(seed);
  for (auto& p : named_parameters(/*recurse=*/true)) {
    const std::string& name = p.key();
    at::Tensor& t = p.value();
    const bool is_norm = name.size() >= 16 && name.find("norm.weight") != std::string::npos;
    if (is_norm) t.fill_(1.0);
    else if (name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0) t.zero_();
    else if (t.device().is_cpu()) t.normal_(0.0, std, gen);
    else t.copy_(at::empty(t.sizes(), t.options().device(at::kCPU)).normal_(0.0, std, gen));
  }
}

KVCache LlamaForCausalLMImpl::new_cache(int64_t batch, int64_t capacity) const {
  const at::Tensor& w = model->embed_tokens->weight;
  return KVCache(cfg_.num_hidden_layers, batch, cfg_.num_key_value_heads,
                 capacity > 0 ? capacity : cfg_.max_position_embeddings, cfg_.head_dim,
                 at::TensorOptions().dtype(w.scalar_type()).device(w.device()));
}

at::Tensor LlamaForCausalLMImpl::step(const at::Tensor& tokens, KVCache& cache) {
  LlamaInput in;
  in.input_ids = tokens.dim() == 1 ? tokens.unsqueeze(1) : tokens;
  LlamaForwardOptions opt;
  opt.logits = LogitsMode::Last;
  return forward(in, &cache, opt).logits.squeeze(1);
}

at::Tensor LlamaForCausalLMImpl::verify(const at::Tensor& candidates, KVCache& cache, const at::Tensor& tree_mask) {
  LlamaInput in;
  in.input_ids = candidates.dim() == 1 ? candidates.unsqueeze(0) : candidates;
  in.tree_mask = tree_mask;
  return forward(in, &cache, {}).logits;
}

// =============================================================================================
// Loading

namespace {

// Compares the config's sizes with the checkpoint's shapes so that a wrong config names the
// config key, not only the tensor.
void check_config_against_weights(const LlamaConfig& c, const TensorStore& store, const std::string& prefix) {
  auto expect = [&](const std::string& name, int dim, int64_t want, const std::string& key) {
    const std::string full = prefix + name;
    if (!store.contains(full)) return;
    const auto& shape = store.info(full).shape;
    if (static_cast<int>(shape.size()) <= dim || shape[dim] != want)
      throw CheckpointError(join_context(store.path(), "config \"" + key + "\" = " + str(want) + " contradicts " + full +
                                                           " of shape " + shape_string(shape)));
  };
  expect("model.embed_tokens.weight", 0, c.vocab_size, "vocab_size");
  expect("model.embed_tokens.weight", 1, c.hidden_size, "hidden_size");
  expect("lm_head.weight", 0, c.vocab_size, "vocab_size");
  expect("model.norm.weight", 0, c.hidden_size, "hidden_size");
  expect("model.layers.0.self_attn.q_proj.weight", 0, c.q_size(), "num_attention_heads * head_dim");
  expect("model.layers.0.self_attn.k_proj.weight", 0, c.kv_size(), "num_key_value_heads");
  expect("model.layers.0.mlp.gate_proj.weight", 0, c.intermediate_size, "intermediate_size");
  // Layer count: the highest layer index in the file.
  int64_t layers = 0;
  const std::string lp = prefix + "model.layers.";
  for (const std::string& n : store.names()) {
    if (n.compare(0, lp.size(), lp) != 0) continue;
    layers = std::max<int64_t>(layers, std::stoll(n.substr(lp.size())) + 1);
  }
  if (store.contains(prefix + "model.embed_tokens.weight") && layers != c.num_hidden_layers)
    throw CheckpointError(join_context(store.path(), "config \"num_hidden_layers\" = " + str(c.num_hidden_layers) +
                                                         " contradicts the checkpoint, which has " + str(layers) +
                                                         " layers"));
  if (!c.tie_word_embeddings && store.contains(prefix + "model.embed_tokens.weight") &&
      !store.contains(prefix + "lm_head.weight"))
    throw CheckpointError(join_context(store.path(), "config \"tie_word_embeddings\" is false but the checkpoint has no " +
                                                         prefix + "lm_head.weight"));
}

}  // namespace

LoadReport load_llama_weights(LlamaForCausalLM& model, const TensorStore& store, const std::string& source_prefix,
                              RenameTable renames) {
  const LlamaConfig& c = model->config();
  check_config_against_weights(c, store, source_prefix);
  // Old conversions saved RoPE's inv_freq as a buffer; it is recomputed from the config.
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) renames.ignore("model.layers." + str(i) + ".self_attn.rotary_emb.");
  if (c.tie_word_embeddings) renames.ignore("lm_head.");  // some tied checkpoints store a copy
  LoadOptions opt;
  opt.source_prefix = source_prefix;
  return load_state_dict(*model, store, renames, opt);
}

LlamaForCausalLM load_llama(const std::string& folder) {
  const Checkpoint ck = Checkpoint::open(folder);
  const ModelPart* part = nullptr;
  for (const ModelPart& p : ck.parts())
    if (p.has_weights()) part = &p;
  if (!part || part->config.is_null())
    throw CheckpointError(join_context(folder, "expected a model folder with config.json and safetensors weights"));
  const LlamaConfig cfg = LlamaConfig::from_json(part->config, part->config_path);
  LlamaForCausalLM model(cfg);
  load_llama_weights(model, *part->weights);
  model->eval();
  return model;
}

// =============================================================================================
// Speculative decoding helpers

namespace {

int64_t argmax_row(const at::Tensor& logits) { return logits.reshape({-1}).argmax().item<int64_t>(); }

}  // namespace

ChainVerdict greedy_accept_chain(const at::Tensor& first_logits, const at::Tensor& verify_logits,
                                 const std::vector<int64_t>& candidates) {
  const int64_t k = static_cast<int64_t>(candidates.size());
  at::Tensor vl = verify_logits.dim() == 3 ? verify_logits.select(0, 0) : verify_logits;  // [k, V]
  if (vl.dim() != 2 || vl.size(0) != k) throw ShapeError("greedy_accept_chain: verify_logits must be [k, V]");
  ChainVerdict v;
  int64_t target = argmax_row(first_logits);
  while (v.num_accepted < k && candidates[v.num_accepted] == target) {
    target = argmax_row(vl.select(0, v.num_accepted));
    ++v.num_accepted;
  }
  v.next_token = target;
  return v;
}

void TokenTree::validate() const {
  if (tokens.empty() || tokens.size() != parents.size())
    throw ConfigError("token tree: tokens and parents must be non-empty and of one length");
  if (parents[0] != -1) throw ConfigError("token tree: node 0 is the root (parent -1)");
  for (size_t i = 1; i < parents.size(); ++i)
    if (parents[i] < 0 || parents[i] >= static_cast<int64_t>(i))
      throw ConfigError("token tree: node " + str(static_cast<int64_t>(i)) + " must have a parent among the earlier nodes");
}

std::vector<int64_t> TokenTree::depths() const {
  validate();
  std::vector<int64_t> d(tokens.size(), 0);
  for (size_t i = 1; i < tokens.size(); ++i) d[i] = d[parents[i]] + 1;
  return d;
}

at::Tensor TokenTree::attention_mask() const {
  validate();
  const int64_t n = static_cast<int64_t>(tokens.size());
  at::Tensor m = at::zeros({n, n}, at::TensorOptions().dtype(at::kBool));
  auto acc = m.accessor<bool, 2>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i; j >= 0; j = parents[j]) acc[i][j] = true;
  return m;
}

TreeVerdict greedy_accept_tree(const TokenTree& tree, const at::Tensor& logits) {
  tree.validate();
  const int64_t n = static_cast<int64_t>(tree.tokens.size());
  at::Tensor lg = logits.dim() == 3 ? logits.select(0, 0) : logits;
  if (lg.dim() != 2 || lg.size(0) != n) throw ShapeError("greedy_accept_tree: logits must be [n, V]");
  std::vector<int64_t> best(n);
  {
    at::Tensor am = lg.argmax(-1).to(at::kCPU, at::kLong).contiguous();
    std::copy(am.data_ptr<int64_t>(), am.data_ptr<int64_t>() + n, best.begin());
  }
  TreeVerdict v;
  int64_t node = 0;
  v.path.push_back(0);
  for (;;) {
    int64_t next = -1;
    for (int64_t c = node + 1; c < n; ++c)
      if (tree.parents[c] == node && tree.tokens[c] == best[node]) {
        next = c;
        break;
      }
    if (next < 0) break;
    v.path.push_back(next);
    node = next;
  }
  v.next_token = best[node];
  return v;
}

}  // namespace iris
