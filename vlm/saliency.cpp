#include "vlm/saliency.h"

#include <algorithm>
#include <string>

#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/autograd/autograd.h>

#include "core/error.h"
#include "vlm/attention_hooks.h"

namespace iris {

namespace {

// Parameters stop requiring grad for the probe's forward (restored after): only the attention
// leaf carries a graph, and the layers before it keep their fast path.
class FrozenParameters {
 public:
  explicit FrozenParameters(torch::nn::Module& m) {
    for (at::Tensor& p : m.parameters(/*recurse=*/true)) {
      if (p.requires_grad()) {
        p.requires_grad_(false);
        frozen_.push_back(p);
      }
    }
  }
  ~FrozenParameters() {
    for (at::Tensor& p : frozen_) p.requires_grad_(true);
  }
  FrozenParameters(const FrozenParameters&) = delete;
  FrozenParameters& operator=(const FrozenParameters&) = delete;

 private:
  std::vector<at::Tensor> frozen_;
};

// Installed last for the probe's pass: in the first chosen layer the weights become a leaf
// that requires grad; in every chosen layer the weights the layer goes on to use are kept.
class ProbeHook : public AttentionHook {
 public:
  explicit ProbeHook(std::vector<int> layers) : layers_(std::move(layers)) {}
  bool wants(int layer, const HookContext& /*ctx*/) const override {
    return std::find(layers_.begin(), layers_.end(), layer) != layers_.end();
  }
  void on_weights(int layer, at::Tensor& weights, const HookContext& ctx) override {
    if (!weights.requires_grad()) weights = weights.detach().clone().requires_grad_(true);
    kept.push_back(weights);
    kept_layers.push_back(layer);
    if (!image_keys.defined()) image_keys = ctx.image_keys;
  }
  std::vector<at::Tensor> kept;
  std::vector<int> kept_layers;
  at::Tensor image_keys;  // [1, Lk] or undefined

 private:
  std::vector<int> layers_;
};

}  // namespace

void SaliencyOptions::validate(const LlamaConfig& cfg) const {
  if (cfg.num_hidden_layers < 1) throw ConfigError("saliency: the model has no layers");
  for (int l : layers)
    if (l < 0 || l >= cfg.num_hidden_layers)
      throw ConfigError("saliency: layer " + std::to_string(l) + " outside the model's " +
                        std::to_string(cfg.num_hidden_layers) + " layers");
}

std::vector<int> SaliencyOptions::resolved_layers(int64_t num_layers) const {
  std::vector<int> out = layers;
  if (out.empty()) {
    if (num_layers > 8) {
      out = {6, 7, 8};
    } else {
      const int lo = static_cast<int>(num_layers / 4);
      const int hi = std::max(lo + 1, static_cast<int>(3 * num_layers / 4));
      for (int l = lo; l < hi; ++l) out.push_back(l);
    }
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

SaliencyProbe::SaliencyProbe(LlamaForCausalLM model, SaliencyOptions options)
    : model_(std::move(model)), opt_(std::move(options)) {
  opt_.validate(model_->config());
  opt_.layers = opt_.resolved_layers(model_->config().num_hidden_layers);
}

at::Tensor SaliencyProbe::forward(const LlamaInput& one, KVCache& cache) {
  const at::Tensor& x = one.input_ids.defined() ? one.input_ids : one.inputs_embeds;
  if (!x.defined() || x.size(0) != 1 || x.size(1) != 1)
    throw ConfigError("saliency probe: expects one new position of a batch-1 input");
  release();
  c10::InferenceMode normal(false);
  at::AutoGradMode grad(true);
  auto hook = std::make_shared<ProbeHook>(opt_.layers);
  AttentionHookList hooks;
  hooks.add(hook);
  LlamaForwardOptions fo;
  fo.logits = LogitsMode::Last;
  fo.hooks = &hooks;
  at::Tensor logits;
  {
    FrozenParameters frozen(*model_);
    logits = model_->forward(one, &cache, fo).logits.reshape({-1});  // [V]
  }
  if (hook->kept.size() != opt_.layers.size())
    throw ConfigError("saliency probe: the chosen layers were not all seen in the forward pass");
  weights_ = hook->kept;
  key_length_ = weights_.front().size(3);
  image_keys_ = hook->image_keys.defined() ? hook->image_keys.reshape({-1}).to(at::kCPU, at::kBool)
                                           : at::zeros({key_length_}, at::TensorOptions().dtype(at::kBool));
  const at::ScalarType dt = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  log_probs_ = at::log_softmax(logits.to(dt), -1);
  return logits.detach();
}

std::vector<at::Tensor> SaliencyProbe::attention_gradients(int64_t candidate) {
  if (!log_probs_.defined()) throw ConfigError("saliency probe: no forward to differentiate (call forward first)");
  if (candidate < 0 || candidate >= log_probs_.size(0))
    throw ConfigError("saliency probe: candidate " + std::to_string(candidate) + " outside the vocabulary");
  c10::InferenceMode normal(false);
  at::AutoGradMode grad(true);
  const at::Tensor loss = -log_probs_[candidate];
  const std::vector<at::Tensor> g =
      torch::autograd::grad({loss}, weights_, {}, /*retain_graph=*/true, /*create_graph=*/false, /*allow_unused=*/true);
  std::vector<at::Tensor> out;
  for (size_t i = 0; i < g.size(); ++i) {
    const at::Tensor& w = weights_[i];
    out.push_back(g[i].defined() ? g[i].reshape({w.size(1), w.size(3)}) : at::zeros({w.size(1), w.size(3)}, w.options()));
  }
  return out;
}

std::vector<at::Tensor> SaliencyProbe::attention() const {
  std::vector<at::Tensor> out;
  for (const at::Tensor& w : weights_) out.push_back(w.detach().reshape({w.size(1), w.size(3)}));
  return out;
}

at::Tensor SaliencyProbe::row(int64_t candidate) {
  const std::vector<at::Tensor> grads = attention_gradients(candidate);
  at::NoGradGuard no_grad;
  at::Tensor sum;
  for (size_t i = 0; i < grads.size(); ++i) {
    const at::Tensor a = weights_[i].detach().reshape_as(grads[i]);
    const at::Tensor s = (a * grads[i]).abs().mean(0).to(at::kCPU, at::kDouble);  // [Lk]
    const at::Tensor r = s / s.norm().clamp_min(1e-9);
    sum = sum.defined() ? sum + r : r;
  }
  return (sum / static_cast<double>(grads.size())).to(at::kFloat);
}

int64_t SaliencyProbe::keys_start() const {
  if (opt_.keys == SaliencyOptions::Keys::Generated)
    return generation_start_ < 0 ? key_length_ : std::min(generation_start_, key_length_);
  if (!image_keys_.defined() || !image_keys_.any().item<bool>()) return 0;
  const at::Tensor idx = at::nonzero(image_keys_).reshape({-1});
  return idx[-1].item<int64_t>() + 1;
}

double SaliencyProbe::score(int64_t candidate) {
  const at::Tensor r = row(candidate);
  const int64_t start = keys_start();
  if (start >= key_length_) return 0.0;
  return r.narrow(0, start, key_length_ - start).to(at::kDouble).mean().item<double>();
}

void SaliencyProbe::release() {
  log_probs_ = at::Tensor();
  weights_.clear();
}

// ---------------------------------------------------------------------------------------------
// Prompt helpers

int64_t prompt_length(const LlamaInput& prompt) {
  const at::Tensor& x = prompt.input_ids.defined() ? prompt.input_ids : prompt.inputs_embeds;
  if (!x.defined()) throw ConfigError("prompt: neither input_ids nor inputs_embeds");
  if (x.size(0) != 1) throw ConfigError("prompt: batch 1 only, got batch " + std::to_string(x.size(0)));
  if (prompt.tree_mask.defined()) throw ConfigError("prompt: a tree mask is not a prompt");
  if (prompt.attention_mask.defined() && !prompt.attention_mask.to(at::kBool).all().item<bool>())
    throw ConfigError("prompt: padding is not supported here (batch 1, no attention mask)");
  if (x.size(1) < 1) throw ConfigError("prompt: empty");
  return x.size(1);
}

LlamaInput prompt_position(const LlamaInput& prompt, int64_t i) {
  LlamaInput one;
  if (prompt.input_ids.defined()) one.input_ids = prompt.input_ids.narrow(1, i, 1);
  else one.inputs_embeds = prompt.inputs_embeds.narrow(1, i, 1);
  if (prompt.image_mask.defined()) one.image_mask = prompt.image_mask.narrow(1, i, 1);
  if (prompt.position_ids.defined()) one.position_ids = prompt.position_ids.narrow(1, i, 1);
  return one;
}

at::Tensor probe_prompt(LlamaForCausalLM& model, SaliencyProbe& probe, const LlamaInput& prompt, KVCache& cache,
                        int64_t extra_tokens) {
  const int64_t n = prompt_length(prompt);
  c10::InferenceMode normal(false);
  cache = model->new_cache(1, n + std::max<int64_t>(extra_tokens, 1));
  {
    at::NoGradGuard no_grad;
    LlamaForwardOptions fo;
    fo.logits = LogitsMode::None;
    model->forward(prompt, &cache, fo);
  }
  cache.truncate(n - 1);
  probe.set_generation_start(n);
  return probe.forward(prompt_position(prompt, n - 1), cache);
}

SaliencyMap answer_saliency_map(LlamaForCausalLM& model, const LlamaInput& prompt, const std::vector<int64_t>& answer,
                                const SaliencyOptions& options, int64_t grid_h, int64_t grid_w) {
  if (answer.empty()) throw ConfigError("saliency map: empty answer");
  if (grid_h < 1 || grid_w < 1) throw ConfigError("saliency map: grid must be positive");
  SaliencyProbe probe(model, options);
  KVCache cache;
  probe_prompt(model, probe, prompt, cache, static_cast<int64_t>(answer.size()));
  std::vector<at::Tensor> rows;
  for (size_t t = 0; t < answer.size(); ++t) {
    if (t > 0) {
      LlamaInput one;
      one.input_ids = at::full({1, 1}, answer[t - 1], at::TensorOptions().dtype(at::kLong));
      probe.forward(one, cache);
    }
    const at::Tensor img = probe.image_keys();
    const int64_t n_img = img.sum().item<int64_t>();
    if (n_img != grid_h * grid_w)
      throw ConfigError("saliency map: " + std::to_string(n_img) + " image tokens, grid " + std::to_string(grid_h) +
                        "x" + std::to_string(grid_w));
    rows.push_back(probe.row(answer[t]).masked_select(img));
  }
  probe.release();
  SaliencyMap out;
  out.per_token = at::stack(rows);  // [T, n_img]
  out.map = out.per_token.mean(0).view({grid_h, grid_w});
  return out;
}

}  // namespace iris
