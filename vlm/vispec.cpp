#include "vlm/vispec.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>

#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>
#include <torch/nn/modules/container/modulelist.h>

#include "core/error.h"
#include "core/safetensors.h"
#include "core/state_dict.h"
#include "core/tensor_io.h"

namespace iris {

namespace {

std::string str(int64_t v) { return std::to_string(v); }

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

// No autograd during generation: InferenceMode (cheapest) or a NoGradGuard.
class NoAutograd {
 public:
  explicit NoAutograd(bool inference) {
    if (inference) inference_ = std::make_unique<c10::InferenceMode>();
    else no_grad_ = std::make_unique<at::NoGradGuard>();
  }

 private:
  std::unique_ptr<c10::InferenceMode> inference_;
  std::unique_ptr<at::NoGradGuard> no_grad_;
};

}  // namespace

// =============================================================================================
// Config

VispecConfig VispecConfig::for_target(const LlamaConfig& target, int64_t num_q, bool vision) {
  VispecConfig c;
  c.text = target;
  c.text.num_hidden_layers = 1;
  c.num_q = num_q;
  c.vision = vision;
  c.validate("ViSpec draft config");
  return c;
}

VispecConfig VispecConfig::from_json(const Json& j, const std::string& what) {
  if (!j.is_object()) throw ConfigError(join_context(what, "expected a JSON object"));
  const std::string type = json_string(j, "model_type", "", what);
  if (type != "vispec_draft")
    throw ConfigError(join_context(what, "key \"model_type\": expected \"vispec_draft\", found \"" + type + "\""));
  if (!j.contains("text_config") || !j["text_config"].is_object())
    throw ConfigError(join_context(what, "key \"text_config\": missing (the draft layer's LLaMA config)"));
  VispecConfig c;
  c.text = LlamaConfig::from_json(j["text_config"], join_context(what, "text_config"));
  c.num_q = json_int(j, "num_q", c.num_q, what);
  c.vision = json_bool(j, "vision", c.vision, what);
  c.fc_bias = json_bool(j, "fc_bias", c.fc_bias, what);
  c.validate(what);
  return c;
}

Json VispecConfig::to_json() const {
  Json j;
  j["model_type"] = "vispec_draft";
  j["num_q"] = num_q;
  j["vision"] = vision;
  j["fc_bias"] = fc_bias;
  j["text_config"] = text.to_json();
  return j;
}

void VispecConfig::validate(const std::string& what) const {
  text.validate(join_context(what, "text_config"));
  if (text.num_hidden_layers != 1)
    throw ConfigError(join_context(what, "key \"text_config.num_hidden_layers\": a ViSpec draft has exactly 1 layer, found " +
                                             str(text.num_hidden_layers)));
  if (vision && num_q < 1) throw ConfigError(join_context(what, "key \"num_q\" must be >= 1, found " + str(num_q)));
  if (vision && text.hidden_size % text.num_attention_heads != 0)
    throw ConfigError(join_context(what, "text_config: the vision adaptor needs hidden_size " + str(text.hidden_size) +
                                             " divisible by num_attention_heads " + str(text.num_attention_heads)));
}

// =============================================================================================
// Vision adaptor

VisionAdaptorImpl::VisionAdaptorImpl(int64_t hidden, int64_t heads, int64_t num_q)
    : heads_(heads), head_dim_(hidden / heads), num_q_(num_q) {
  q = register_parameter("q", at::zeros({num_q, heads, head_dim_}));
  k_proj = register_module("k_proj", LlamaLinear(hidden, hidden, false));
  v_proj = register_module("v_proj", LlamaLinear(hidden, hidden, false));
  o_proj = register_module("o_proj", LlamaLinear(hidden, hidden, false));
}

at::Tensor VisionAdaptorImpl::forward(const at::Tensor& image) {
  if (image.dim() != 2 || image.size(0) == 0 || image.size(1) != heads_ * head_dim_)
    throw ShapeError("ViSpec vision adaptor: expects image embeddings [N, " + str(heads_ * head_dim_) + "]");
  const int64_t N = image.size(0);
  const at::Tensor k = k_proj(image).view({N, heads_, head_dim_}).transpose(0, 1);  // [heads, N, D]
  const at::Tensor v = v_proj(image).view({N, heads_, head_dim_}).transpose(0, 1);  // [heads, N, D]
  const at::Tensor qh = q.transpose(0, 1);                                           // [heads, num_q, D]
  const at::Tensor w = at::softmax(at::matmul(qh, k.transpose(1, 2)) / std::sqrt(static_cast<double>(head_dim_)), -1);
  const at::Tensor o = at::matmul(w, v).transpose(0, 1).reshape({num_q_, heads_ * head_dim_});  // [num_q, H]
  return o_proj(o);
}

// =============================================================================================
// Draft

VispecDraftImpl::VispecDraftImpl(const VispecConfig& cfg) : cfg_(cfg) {
  cfg_.validate("ViSpec draft config");
  const int64_t H = cfg_.text.hidden_size;
  auto layers = register_module("layers", torch::nn::ModuleList());
  layer = LlamaDecoderLayer(cfg_.text, 0, /*input_norm=*/false);
  layers->push_back(layer);
  fc = register_module("fc", LlamaLinear(2 * H, H, cfg_.fc_bias));
  if (cfg_.vision) {
    img_fc = register_module("img_fc", LlamaLinear(2 * H, H, cfg_.fc_bias));
    imadpt = register_module("imadpt", VisionAdaptor(H, cfg_.text.num_attention_heads, cfg_.num_q));
  }
  rope_ = RotaryEmbedding(cfg_.text.head_dim, cfg_.text.rope_theta, cfg_.text.rope_scaling,
                          cfg_.text.max_position_embeddings);
}

void VispecDraftImpl::init_weights(uint64_t seed, double std) {
  at::NoGradGuard no_grad;
  at::Generator gen = at::detail::createCPUGenerator(seed);
  for (auto& p : named_parameters(/*recurse=*/true)) {
    const std::string& name = p.key();
    at::Tensor& t = p.value();
    at::Tensor cpu = at::empty(t.sizes(), t.options().device(at::kCPU));
    if (name.find("norm.weight") != std::string::npos) cpu.fill_(1.0);
    else if (name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0) cpu.zero_();
    else if (name == "imadpt.q") cpu.normal_(0.0, 1.0 / std::sqrt(static_cast<double>(t.size(2))), gen);
    else cpu.normal_(0.0, std, gen);
    t.copy_(cpu);
  }
  if (img_fc) {
    // Identity on h, zero on g: a fresh adaptor leaves the text path unchanged.
    const int64_t H = cfg_.text.hidden_size;
    img_fc->weight.zero_();
    img_fc->weight.narrow(1, 0, H).copy_(at::eye(H, img_fc->weight.options()));
  }
}

void VispecDraftImpl::attach(LlamaForCausalLM& target) {
  const LlamaConfig& t = target->config();
  if (t.hidden_size != cfg_.text.hidden_size)
    throw ConfigError("ViSpec draft: hidden size " + str(cfg_.text.hidden_size) + " does not match the target's " +
                      str(t.hidden_size));
  if (t.vocab_size != cfg_.text.vocab_size)
    throw ConfigError("ViSpec draft: vocabulary of " + str(cfg_.text.vocab_size) + " tokens does not match the target's " +
                      str(t.vocab_size));
  // Views of the target's weights without autograd history: frozen, never the draft's parameters.
  embed_weight_ = target->model->embed_tokens->weight.detach();
  head_weight_ = target->lm_head_weight().detach();
  head_ = LlamaLinear(head_weight_, at::Tensor());
  head_->weight.requires_grad_(false);
}

at::Tensor VispecDraftImpl::embed(const at::Tensor& ids) {
  if (!attached()) throw ConfigError("ViSpec draft: not attached to a target (call attach(target) first)");
  at::Tensor i = ids.to(embed_weight_.device(), at::kLong);
  if (i.numel() && (i.min().item<int64_t>() < 0 || i.max().item<int64_t>() >= cfg_.text.vocab_size))
    throw ConfigError("ViSpec draft: token id outside the vocabulary [0, " + str(cfg_.text.vocab_size) + ")");
  return at::embedding(embed_weight_, i);
}

at::Tensor VispecDraftImpl::logits(const at::Tensor& hidden) {
  if (!attached()) throw ConfigError("ViSpec draft: not attached to a target (call attach(target) first)");
  return head_(hidden);
}

KVCache VispecDraftImpl::new_cache(int64_t capacity) const {
  const at::Tensor& w = fc->weight;
  return KVCache(1, 1, cfg_.text.num_key_value_heads, capacity, cfg_.text.head_dim,
                 at::TensorOptions().dtype(w.scalar_type()).device(w.device()));
}

at::Tensor VispecDraftImpl::fuse_inputs(const at::Tensor& next_embeds, const at::Tensor& hidden, const at::Tensor& g) {
  at::Tensor h = hidden;
  if (img_fc) h = img_fc(at::cat({hidden, g.reshape({1, 1, -1}).expand_as(hidden)}, -1));
  return fc(at::cat({next_embeds, h}, -1));
}

at::Tensor VispecDraftImpl::run_layer(const at::Tensor& x, const at::Tensor& positions, KVCache* cache,
                                      const at::Tensor& visible) {
  const at::Tensor& w = fc->weight;
  if (cache && (cache->num_layers() != 1 || cache->kv_heads() != cfg_.text.num_key_value_heads ||
                cache->head_dim() != cfg_.text.head_dim))
    throw ShapeError("ViSpec draft: the KV cache was made for another model");
  LlamaInput in;
  in.inputs_embeds = x;
  in.position_ids = positions;
  DecoderPass pass = prepare_decoder_pass(rope_, in, cache, cfg_.text.max_position_embeddings,
                                          cfg_.text.rope_scaling.type == RopeScaling::Type::Dynamic, w.scalar_type(),
                                          w.device());
  pass.num_layers = 1;
  if (visible.defined()) {
    const int64_t L = pass.length, K = pass.past + pass.length;
    if (visible.dim() != 2 || visible.size(0) != L || visible.size(1) != K)
      throw ShapeError("ViSpec draft: visibility must be [" + str(L) + ", " + str(K) + "]");
    at::Tensor attend = visible.to(at::kCPU).to(at::kBool).view({1, 1, L, K}).contiguous();
    pass.attend = attend.to(w.device());
    pass.blocked = pass.attend.logical_not();
    pass.tree = true;
  }
  at::Tensor out = layer->forward(x, pass);
  finish_decoder_pass(pass);
  return out;
}

DraftSequenceOutput VispecDraftImpl::forward_sequence(const at::Tensor& next_embeds, const at::Tensor& hidden,
                                                      const at::Tensor& next_is_image, const at::Tensor& positions,
                                                      const at::Tensor& g0, KVCache* cache) {
  const int64_t H = cfg_.text.hidden_size;
  if (next_embeds.dim() != 3 || next_embeds.size(0) != 1 || next_embeds.size(2) != H || hidden.sizes() != next_embeds.sizes())
    throw ShapeError("ViSpec draft: next_embeds and hidden must both be [1, n, " + str(H) + "]");
  const int64_t n = next_embeds.size(1);
  const at::Tensor pos = positions.to(at::kCPU, at::kLong).reshape({-1}).contiguous();
  if (pos.numel() != n) throw ShapeError("ViSpec draft: positions must be [1, " + str(n) + "]");
  std::vector<uint8_t> image(static_cast<size_t>(n), 0);
  if (next_is_image.defined() && cfg_.vision) {
    const at::Tensor m = next_is_image.to(at::kCPU).ne(0).reshape({-1}).contiguous();
    if (m.numel() != n) throw ShapeError("ViSpec draft: next_is_image must be [1, " + str(n) + "]");
    std::copy(m.data_ptr<bool>(), m.data_ptr<bool>() + n, image.begin());
  }

  DraftSequenceOutput r;
  at::Tensor g = g0.defined() ? g0.reshape({1, H}).to(next_embeds.options()) : at::zeros({1, H}, next_embeds.options());
  std::vector<at::Tensor> pieces;  // [1, *, H] each, in sequence order
  for (int64_t t = 0; t < n;) {
    int64_t e = t;
    while (e < n && image[e] == image[t]) ++e;
    if (!image[t]) {
      pieces.push_back(fuse_inputs(next_embeds.narrow(1, t, e - t), hidden.narrow(1, t, e - t), g));
      for (int64_t s = t; s < e; ++s) r.slots.push_back(s);
    } else {
      // One image: num_q - 1 tokens at its last positions, then its global feature.
      const at::Tensor a = imadpt(next_embeds.select(0, 0).narrow(0, t, e - t));  // [num_q, H]
      const int64_t nq = cfg_.num_q, keep = std::min(nq - 1, e - t);
      if (keep > 0) {
        pieces.push_back(a.narrow(0, nq - 1 - keep, keep).unsqueeze(0));
        for (int64_t s = e - keep; s < e; ++s) r.slots.push_back(s);
      }
      g = a.narrow(0, nq - 1, 1);
    }
    t = e;
  }
  r.g = g;
  if (pieces.empty()) {
    r.out = at::zeros({1, 0, H}, next_embeds.options());
    return r;
  }
  const at::Tensor x = pieces.size() == 1 ? pieces[0] : at::cat(pieces, 1);
  const at::Tensor kept = at::tensor(r.slots, at::TensorOptions().dtype(at::kLong));
  r.out = run_layer(x, pos.index_select(0, kept).view({1, -1}), cache, at::Tensor());
  return r;
}

at::Tensor VispecDraftImpl::forward_text(const at::Tensor& next_embeds, const at::Tensor& hidden, const at::Tensor& g,
                                         const at::Tensor& positions, KVCache* cache, const at::Tensor& visible) {
  const int64_t H = cfg_.text.hidden_size;
  if (next_embeds.dim() != 3 || next_embeds.size(0) != 1 || next_embeds.size(2) != H || hidden.sizes() != next_embeds.sizes())
    throw ShapeError("ViSpec draft: next_embeds and hidden must both be [1, n, " + str(H) + "]");
  const at::Tensor gg = g.defined() ? g : at::zeros({1, H}, next_embeds.options());
  return run_layer(fuse_inputs(next_embeds, hidden, gg), positions.reshape({1, -1}), cache, visible);
}

// =============================================================================================
// Saving and loading

void save_vispec_draft(VispecDraft& draft, const std::string& folder, bool f16) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(folder, ec);
  if (ec) throw IoError(join_context(folder, "cannot create the folder: " + ec.message()));
  const std::string cfg_path = (fs::path(folder) / "config.json").string();
  {
    std::ofstream f(cfg_path);
    f << draft->config().to_json().dump(2) << "\n";
    if (!f) throw IoError(join_context(cfg_path, "cannot write"));
  }
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& p : draft->named_parameters(/*recurse=*/true))
    tensors.emplace_back(p.key(), f16 ? p.value().detach().to(at::kHalf) : p.value().detach());
  write_safetensors((fs::path(folder) / "model.safetensors").string(), tensors, {{"format", "pt"}});
}

VispecDraft load_vispec_draft(const std::string& folder) {
  namespace fs = std::filesystem;
  const std::string cfg_path = (fs::path(folder) / "config.json").string();
  const std::string weights = (fs::path(folder) / "model.safetensors").string();
  if (!fs::exists(cfg_path) || !fs::exists(weights))
    throw CheckpointError(join_context(folder, "expected a ViSpec draft folder (config.json + model.safetensors)"));
  VispecDraft draft(VispecConfig::from_json(read_json_file(cfg_path), cfg_path));
  const TensorStore store = TensorStore::open(weights);
  const LoadReport report = load_state_dict(*draft, store, RenameTable(), LoadOptions());
  if (!report.ok()) throw CheckpointError(join_context(weights, report.summary()));
  draft->eval();
  return draft;
}

// =============================================================================================
// Drafting

DraftTreeOptions DraftTreeOptions::chain(int64_t k) {
  DraftTreeOptions o;
  o.top_k = 1;
  o.depth = k - 1;
  o.total_tokens = k + 1;
  o.validate();
  return o;
}

void DraftTreeOptions::validate() const {
  if (top_k < 1) throw ConfigError("draft tree: top_k must be >= 1, got " + str(top_k));
  if (depth < 0) throw ConfigError("draft tree: depth must be >= 0, got " + str(depth));
  if (total_tokens < 2) throw ConfigError("draft tree: total_tokens must be >= 2 (root + one draft), got " + str(total_tokens));
}

namespace {

// The draft's state between cycles: its cache holds every slot the target has confirmed.
struct DraftState {
  KVCache cache;
  at::Tensor last;  // [1, 1, H]: output of the last confirmed slot (predicts the token after the root)
  at::Tensor g;     // [1, H]: global feature of the latest image
};

struct Candidate {
  int64_t token = 0;
  int64_t parent = -1;  // candidate index, -1 = the root
  int64_t slot = -1;    // draft cache slot once fed
  double score = 0;     // cumulative draft log-probability
};

// Top-k of log_softmax over rows of draft logits [R, V] -> (values [R, k], indices [R, k]) on the CPU.
std::pair<at::Tensor, at::Tensor> top_log_probs(const at::Tensor& logits, int64_t k) {
  const at::Tensor lp = at::log_softmax(logits.to(at::kFloat), -1);
  auto [v, i] = lp.topk(std::min<int64_t>(k, lp.size(-1)), -1);
  return {v.to(at::kCPU).contiguous(), i.to(at::kCPU, at::kLong).contiguous()};
}

// Candidate order for selection: best score first, earlier index on ties. A child never scores
// above its parent and comes after it, so every prefix of this order is closed under parents.
std::vector<int64_t> ranked(const std::vector<Candidate>& c, const std::vector<int64_t>& among) {
  std::vector<int64_t> r = among;
  std::stable_sort(r.begin(), r.end(), [&](int64_t a, int64_t b) { return c[a].score > c[b].score; });
  return r;
}

// EAGLE-2 dynamic tree from the draft; the draft cache is back at its confirmed length afterwards.
TokenTree draft_tree(VispecDraft& draft, DraftState& st, int64_t root_token, int64_t root_pos,
                     const DraftTreeOptions& o, int64_t& passes) {
  KVCache& cache = st.cache;
  const int64_t S = cache.length(), K = o.top_k;
  std::vector<Candidate> cand;
  std::vector<int64_t> frontier;
  {
    auto [v, i] = top_log_probs(draft->logits(st.last.reshape({1, -1})), K);
    const auto va = v.accessor<float, 2>();
    const auto ia = i.accessor<int64_t, 2>();
    for (int64_t j = 0; j < v.size(1); ++j) {
      cand.push_back({ia[0][j], -1, -1, std::min(0.0, static_cast<double>(va[0][j]))});
      frontier.push_back(j);
    }
  }
  at::Tensor fh = st.last.expand({1, static_cast<int64_t>(frontier.size()), st.last.size(2)}).contiguous();
  for (int64_t d = 0; d < o.depth; ++d) {
    const int64_t F = static_cast<int64_t>(frontier.size()), P = cache.length();
    // Each frontier node sees the confirmed slots, its fed ancestors and itself.
    at::Tensor vis = at::zeros({F, P + F}, at::TensorOptions().dtype(at::kBool));
    auto va = vis.accessor<bool, 2>();
    std::vector<int64_t> toks(F);
    for (int64_t f = 0; f < F; ++f) {
      for (int64_t s = 0; s < S; ++s) va[f][s] = true;
      for (int64_t a = cand[frontier[f]].parent; a >= 0; a = cand[a].parent) va[f][cand[a].slot] = true;
      va[f][P + f] = true;
      toks[f] = cand[frontier[f]].token;
    }
    const at::Tensor ids = at::tensor(toks, at::TensorOptions().dtype(at::kLong)).view({1, F});
    const at::Tensor pos = at::full({1, F}, root_pos + d, at::TensorOptions().dtype(at::kLong));
    const at::Tensor out = draft->forward_text(draft->embed(ids), fh, st.g, pos, &cache, vis);  // [1, F, H]
    ++passes;
    for (int64_t f = 0; f < F; ++f) cand[frontier[f]].slot = P + f;
    auto [v, i] = top_log_probs(draft->logits(out.select(0, 0)), K);  // [F, k]
    const auto lpa = v.accessor<float, 2>();
    const auto ia = i.accessor<int64_t, 2>();
    std::vector<int64_t> children;
    std::vector<int64_t> owner;  // frontier row of each child
    for (int64_t f = 0; f < F; ++f)
      for (int64_t j = 0; j < v.size(1); ++j) {
        const double lp = std::min(0.0, static_cast<double>(lpa[f][j]));
        children.push_back(static_cast<int64_t>(cand.size()));
        owner.push_back(f);
        cand.push_back({ia[f][j], frontier[f], -1, cand[frontier[f]].score + lp});
      }
    if (d + 1 == o.depth) break;  // the last level is scored, never fed
    std::vector<int64_t> best = ranked(cand, children);
    best.resize(std::min<int64_t>(K, static_cast<int64_t>(best.size())));
    std::sort(best.begin(), best.end());
    std::vector<int64_t> rows;
    for (int64_t b : best) rows.push_back(owner[b - children.front()]);
    frontier = best;
    fh = out.index_select(1, at::tensor(rows, at::TensorOptions().dtype(at::kLong)).to(out.device())).contiguous();
  }
  cache.truncate(S);

  std::vector<int64_t> all(cand.size());
  std::iota(all.begin(), all.end(), 0);
  std::vector<int64_t> chosen = ranked(cand, all);
  chosen.resize(std::min<int64_t>(o.total_tokens - 1, static_cast<int64_t>(chosen.size())));
  std::sort(chosen.begin(), chosen.end());
  TokenTree tree;
  tree.tokens.push_back(root_token);
  tree.parents.push_back(-1);
  std::vector<int64_t> node_of(cand.size(), -1);
  for (int64_t c : chosen) {
    const int64_t parent = cand[c].parent < 0 ? 0 : node_of[cand[c].parent];
    if (parent < 0) throw Error("ViSpec: internal error, a drafted node was selected without its parent");
    node_of[c] = static_cast<int64_t>(tree.tokens.size());
    tree.tokens.push_back(cand[c].token);
    tree.parents.push_back(parent);
  }
  return tree;
}

// Draws from unnormalised probabilities p (total `sum`).
int64_t draw(const std::vector<double>& p, double sum, std::mt19937_64& rng) {
  const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng) * sum;
  double acc = 0;
  int64_t last = -1;
  for (size_t t = 0; t < p.size(); ++t) {
    if (p[t] <= 0) continue;
    acc += p[t];
    last = static_cast<int64_t>(t);
    if (u < acc) return last;
  }
  return last;  // rounding: the last token with mass
}

// The target's distribution at one position (after temperature / top-k / top-p) as a dense [V] vector.
std::vector<double> target_probs(SamplerChain& sampler, const at::Tensor& logits_row) {
  const TokenCandidates c = sampler.filter(logits_row);
  const std::vector<double> p = c.probabilities();
  std::vector<double> dense(static_cast<size_t>(logits_row.numel()), 0.0);
  for (size_t i = 0; i < c.ids.size(); ++i) dense[c.ids[i]] = p[i];
  return dense;
}

void check_generate_options(const GenerateOptions& g, const char* what) {
  if (g.max_new_tokens < 0) throw ConfigError(std::string(what) + ": max_new_tokens must be >= 0");
  if (!g.stop_strings.empty() && !g.detokenize)
    throw ConfigError(std::string(what) + ": stop strings need a detokenizer (GenerateOptions::detokenize)");
}

void check_prompt(const LlamaForCausalLM& target, const at::Tensor& inputs_embeds, const at::Tensor& image_mask,
                  const char* what) {
  const LlamaConfig& c = target->config();
  if (!inputs_embeds.defined() || inputs_embeds.dim() != 3 || inputs_embeds.size(0) != 1 ||
      inputs_embeds.size(2) != c.hidden_size || inputs_embeds.size(1) == 0)
    throw ShapeError(std::string(what) + ": inputs_embeds must be [1, L, " + str(c.hidden_size) + "] with L >= 1");
  if (image_mask.defined() && (image_mask.dim() != 2 || image_mask.size(0) != 1 || image_mask.size(1) != inputs_embeds.size(1)))
    throw ShapeError(std::string(what) + ": image_mask must be [1, " + str(inputs_embeds.size(1)) + "]");
}

// The prompt into the target's cache: last-position logits [1, 1, V], all hidden states.
LlamaOutput prefill(LlamaForCausalLM& target, const at::Tensor& inputs_embeds, const at::Tensor& image_mask, KVCache& cache) {
  LlamaInput in;
  in.inputs_embeds = inputs_embeds;
  in.image_mask = image_mask;
  LlamaForwardOptions fo;
  fo.logits = LogitsMode::Last;
  return target->forward(in, &cache, fo);
}

}  // namespace

TreeVerdict sample_accept_tree(const TokenTree& tree, const std::function<std::vector<double>(int64_t node)>& probs_of,
                               std::mt19937_64& rng) {
  tree.validate();
  const int64_t n = static_cast<int64_t>(tree.tokens.size());
  std::vector<std::vector<int64_t>> children(n);
  for (int64_t c = 1; c < n; ++c) children[tree.parents[c]].push_back(c);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  TreeVerdict v;
  int64_t node = 0;
  v.path.push_back(0);
  for (;;) {
    std::vector<double> p = probs_of(node);
    const std::vector<double> original = p;
    double sum = std::accumulate(p.begin(), p.end(), 0.0);
    int64_t next = -1;
    for (int64_t c : children[node]) {
      const int64_t tok = tree.tokens[c];
      const double pc = tok >= 0 && tok < static_cast<int64_t>(p.size()) ? p[tok] : 0.0;
      if (sum > 0 && uniform(rng) * sum < pc) {
        next = c;
        break;
      }
      if (pc > 0) {
        sum -= pc;
        p[tok] = 0;
      }
    }
    if (next < 0) {
      // Every child rejected: the residual distribution (numerically empty only when the
      // children held all the mass, which rounding alone can cause).
      if (sum > 1e-12) v.next_token = draw(p, sum, rng);
      else v.next_token = std::max_element(original.begin(), original.end()) - original.begin();
      return v;
    }
    v.path.push_back(next);
    node = next;
  }
}

SpeculativeResult speculative_generate(LlamaForCausalLM& target, VispecDraft& draft, const at::Tensor& inputs_embeds,
                                       const at::Tensor& image_mask, const SpeculativeOptions& opt,
                                       const TokenCallback& on_token) {
  const GenerateOptions& g = opt.generate;
  const LlamaConfig& tc = target->config();
  // Everything that can be wrong is checked before any model runs.
  draft->attach(target);
  check_generate_options(g, "speculative generate");
  opt.tree.validate();
  if (g.sampling.repetition_penalty != 1.0f)
    throw ConfigError("speculative generate: repetition penalty is not supported (it changes the target's "
                      "distribution along each drafted path)");
  make_sampler(g.sampling);  // validates the sampling fields
  check_prompt(target, inputs_embeds, image_mask, "speculative generate");
  const int64_t L = inputs_embeds.size(1);
  const bool dynamic = tc.rope_scaling.type == RopeScaling::Type::Dynamic;
  if (L > tc.max_position_embeddings && !dynamic)
    throw ConfigError("speculative generate: the prompt has " + str(L) + " tokens, more than the model's context of " +
                      str(tc.max_position_embeddings) + " (max_position_embeddings)");

  const NoAutograd scope(g.inference_mode);
  SpeculativeResult out;
  GenerateResult& r = out.result;
  SpeculativeStats& stats = out.stats;
  r.prompt_tokens = L;
  if (g.max_new_tokens == 0) return out;

  const bool greedy = g.sampling.temperature <= 0;
  SamplerChain sampler = make_sampler(g.sampling);
  std::mt19937_64 rng(g.sampling.seed);
  const std::vector<int64_t>& eos = g.eos_token_ids.empty() ? tc.eos_token_ids : g.eos_token_ids;
  TokenEmitter emitter(g, eos, on_token, r);
  const DraftTreeOptions& to = opt.tree;

  // Room for the prompt, every new token and one tree on top (verification appends it).
  const int64_t room = L + g.max_new_tokens + to.total_tokens + 1;
  const int64_t t_capacity = g.cache_capacity > 0 ? g.cache_capacity : (dynamic ? room : std::min(room, tc.max_position_embeddings));
  KVCache tcache = target->new_cache(1, t_capacity);
  DraftState ds;
  ds.cache = draft->new_cache(L + g.max_new_tokens + to.depth * to.top_k + to.depth + 2);

  auto pick = [&](const at::Tensor& logits_row) -> int64_t {
    if (greedy) return logits_row.reshape({-1}).argmax().item<int64_t>();
    const std::vector<double> p = target_probs(sampler, logits_row.reshape({-1}));
    return draw(p, std::accumulate(p.begin(), p.end(), 0.0), rng);
  };

  // ---- prefill: target, then the draft on the target's hidden states ----
  const auto t0 = Clock::now();
  const LlamaOutput pre = prefill(target, inputs_embeds, image_mask, tcache);
  ++stats.target_forwards;
  int64_t root = pick(pre.logits.reshape({-1}));
  {
    const at::Tensor emb = inputs_embeds.to(pre.last_hidden_state.options());
    const at::Tensor next = L > 1 ? at::cat({emb.narrow(1, 1, L - 1), draft->embed(at::full({1, 1}, root, at::kLong))}, 1)
                                  : draft->embed(at::full({1, 1}, root, at::kLong));
    at::Tensor next_image;
    if (image_mask.defined())
      next_image = at::cat({image_mask.to(at::kCPU).ne(0).narrow(1, 1, L - 1), at::zeros({1, 1}, at::kBool)}, 1);
    const DraftSequenceOutput d =
        draft->forward_sequence(next, pre.last_hidden_state, next_image, tcache.positions(), at::Tensor(), &ds.cache);
    ++stats.draft_forwards;
    ds.last = d.out.narrow(1, d.out.size(1) - 1, 1);  // slot L-1 is text (its next token is the new one)
    ds.g = d.g;
  }
  stats.prefill_ms = ms_since(t0);

  const auto t1 = Clock::now();
  bool go = emitter.emit(root);
  while (go) {
    const int64_t past = tcache.length();
    const int64_t root_pos = tcache.next_positions()[0];
    if (tcache.remaining() < to.total_tokens || ds.cache.remaining() < to.depth * to.top_k + to.depth + 2 ||
        (!dynamic && root_pos + to.depth + 1 >= tc.max_position_embeddings)) {
      r.stop = StopReason::ContextFull;
      break;
    }
    // ---- draft, verify ----
    auto phase = Clock::now();
    const TokenTree tree = draft_tree(draft, ds, root, root_pos, to, stats.draft_forwards);
    stats.draft_ms += ms_since(phase);
    phase = Clock::now();
    const int64_t n = static_cast<int64_t>(tree.tokens.size());
    LlamaInput vin;
    vin.input_ids = at::tensor(tree.tokens, at::TensorOptions().dtype(at::kLong)).view({1, n});
    bool chain = true;  // a chain's tree mask is the causal mask: the plain (cheaper) pass
    for (int64_t i = 1; i < n; ++i) chain = chain && tree.parents[i] == i - 1;
    if (!chain) vin.tree_mask = tree.attention_mask();
    const LlamaOutput ver = target->forward(vin, &tcache, {});  // logits [1, n, V], hidden [1, n, H]
    ++stats.target_forwards;
    ++stats.cycles;
    stats.verify_ms += ms_since(phase);
    const at::Tensor lg = ver.logits.select(0, 0);
    const TreeVerdict verdict =
        greedy ? greedy_accept_tree(tree, lg)
               : sample_accept_tree(tree, [&](int64_t node) { return target_probs(sampler, lg.select(0, node)); }, rng);

    // ---- keep the accepted path in the target cache ----
    const int64_t m = static_cast<int64_t>(verdict.path.size());  // root + accepted drafts
    std::vector<int64_t> slots(m);
    for (int64_t i = 0; i < m; ++i) slots[i] = past + verdict.path[i];
    tcache.keep_slots(past, slots);
    stats.accepted += m - 1;

    std::vector<int64_t> next_tokens;  // the tokens after each path node: accepted drafts, then the bonus
    for (int64_t i = 1; i < m; ++i) next_tokens.push_back(tree.tokens[verdict.path[i]]);
    next_tokens.push_back(verdict.next_token);
    for (int64_t t : next_tokens)
      if (!(go = emitter.emit(t))) break;
    if (!go) break;

    // ---- the draft catches up on the target's hidden states of the accepted path ----
    phase = Clock::now();
    const at::Tensor path = at::tensor(verdict.path, at::TensorOptions().dtype(at::kLong)).to(ver.last_hidden_state.device());
    const at::Tensor hid = ver.last_hidden_state.index_select(1, path);  // [1, m, H]
    const at::Tensor ids = at::tensor(next_tokens, at::TensorOptions().dtype(at::kLong)).view({1, m});
    const at::Tensor pos = tcache.positions().narrow(1, past, m);
    const at::Tensor o = draft->forward_text(draft->embed(ids), hid, ds.g, pos, &ds.cache);
    ++stats.draft_forwards;
    ds.last = o.narrow(1, m - 1, 1);
    root = verdict.next_token;
    stats.catchup_ms += ms_since(phase);
  }
  stats.decode_ms = ms_since(t1);
  r.prefill_ms = stats.prefill_ms;
  r.decode_ms = stats.decode_ms;
  return out;
}

SpeculativeResult speculative_generate(LlamaForCausalLM& target, VispecDraft& draft, const std::vector<int64_t>& prompt,
                                       const SpeculativeOptions& opt, const TokenCallback& on_token) {
  if (prompt.empty()) throw ConfigError("speculative generate: empty prompt");
  at::Tensor embeds;
  {
    const NoAutograd scope(opt.generate.inference_mode);
    embeds = target->model->embed(at::tensor(prompt, at::TensorOptions().dtype(at::kLong)).view({1, -1}));
  }
  return speculative_generate(target, draft, embeds, at::Tensor(), opt, on_token);
}

GenerateResult plain_generate(LlamaForCausalLM& target, const at::Tensor& inputs_embeds, const at::Tensor& image_mask,
                              const GenerateOptions& opt, const TokenCallback& on_token) {
  check_generate_options(opt, "generate");
  check_prompt(target, inputs_embeds, image_mask, "generate");
  const LlamaConfig& tc = target->config();
  const int64_t L = inputs_embeds.size(1);
  const bool dynamic = tc.rope_scaling.type == RopeScaling::Type::Dynamic;
  int64_t capacity = opt.cache_capacity > 0 ? opt.cache_capacity : L + std::max<int64_t>(opt.max_new_tokens, 1);
  if (opt.cache_capacity <= 0 && !dynamic) capacity = std::min(capacity, tc.max_position_embeddings);
  if (L > capacity)
    throw ConfigError("generate: the prompt has " + str(L) + " tokens, more than the KV cache capacity of " + str(capacity));
  at::Tensor logits;
  KVCache cache;
  double prefill_ms = 0;
  {
    const NoAutograd scope(opt.inference_mode);
    cache = target->new_cache(1, capacity);
    const auto t0 = Clock::now();
    logits = prefill(target, inputs_embeds, image_mask, cache).logits;
    prefill_ms = ms_since(t0);
  }
  GenerateResult r = generate_from(target, cache, logits, opt, on_token);
  r.prefill_ms = prefill_ms;
  r.prompt_tokens = L;
  return r;
}

}  // namespace iris
