#include "vlm/var.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <string>

#include <ATen/core/grad_mode.h>

#include "core/error.h"

namespace iris {

namespace {

std::string num(double v) {
  std::string s = std::to_string(v);
  while (s.size() > 1 && s.back() == '0') s.pop_back();
  if (!s.empty() && s.back() == '.') s.pop_back();
  return s;
}

// [first, last] with negative indices counted from the end.
std::pair<int, int> resolve_range(int first, int last, int num_layers) {
  const int lo = first < 0 ? num_layers + first : first;
  const int hi = last < 0 ? num_layers + last : last;
  return {std::max(lo, 0), std::min(hi, num_layers - 1)};
}

at::Tensor dims_tensor(const std::vector<int64_t>& dims, const at::Tensor& like) {
  return at::tensor(dims, at::TensorOptions().dtype(at::kLong)).to(like.device());
}

}  // namespace

void VarOptions::validate(const LlamaConfig& cfg) const {
  if (sink_dims.empty())
    throw ConfigError("VAR: sink_dims is empty (the model's sink dimensions must be found first: iris vlm sinks)");
  for (int64_t d : sink_dims)
    if (d < 0 || d >= cfg.hidden_size)
      throw ConfigError("VAR: sink dim " + std::to_string(d) + " outside the hidden size " +
                        std::to_string(cfg.hidden_size));
  if (!(tau > 0)) throw ConfigError("VAR: tau must be > 0, got " + num(tau));
  if (!(p >= 0 && p <= 1)) throw ConfigError("VAR: p must be in [0, 1], got " + num(p));
  if (!(rho >= 0 && rho <= 1)) throw ConfigError("VAR: rho must be in [0, 1], got " + num(rho));
  if (!(image_attention_min >= 0 && image_attention_min <= 1))
    throw ConfigError("VAR: image_attention_min must be in [0, 1], got " + num(image_attention_min));
  if (!(rms_eps >= 0)) throw ConfigError("VAR: rms_eps must be >= 0");
}

std::pair<int, int> VarOptions::layer_range(int num_layers) const {
  return resolve_range(first_layer, last_layer, num_layers);
}

at::Tensor sink_scores(const at::Tensor& hidden, const std::vector<int64_t>& sink_dims, double eps) {
  if (hidden.dim() != 3) throw ShapeError("VAR: hidden states must be [B, L, H]");
  for (int64_t d : sink_dims)
    if (d < 0 || d >= hidden.size(2))
      throw ConfigError("VAR: sink dim " + std::to_string(d) + " outside the hidden size " +
                        std::to_string(hidden.size(2)));
  at::NoGradGuard no_grad;
  const at::Tensor h = hidden.to(at::kFloat);
  const at::Tensor rms = at::sqrt(h.pow(2).mean(-1) + eps);         // [B, L]
  if (sink_dims.empty()) return at::zeros_like(rms);
  const at::Tensor sel = h.index_select(2, dims_tensor(sink_dims, h)).abs();  // [B, L, |D|]
  return std::get<0>(sel.max(-1)) / rms;
}

at::Tensor detect_sink_tokens(const at::Tensor& hidden, const std::vector<int64_t>& sink_dims, double tau,
                              double eps) {
  return sink_scores(hidden, sink_dims, eps) >= tau;
}

at::Tensor var_query_rows(const at::Tensor& image_keys, int64_t past, int64_t query_length) {
  const int64_t Lk = image_keys.size(1);
  if (past + query_length > Lk) throw ShapeError("VAR: queries reach past the keys");
  const at::Tensor img = image_keys.to(at::kCPU, at::kBool);
  const at::Tensor idx = at::arange(Lk, at::TensorOptions().dtype(at::kLong)).unsqueeze(0);  // [1, Lk]
  const at::Tensor last_image = std::get<0>(at::where(img, idx, at::full_like(idx, -1)).max(1));  // [B]
  const at::Tensor q = at::arange(past, past + query_length, at::TensorOptions().dtype(at::kLong)).unsqueeze(0);
  return (q > last_image.unsqueeze(1)) & img.narrow(1, past, query_length).logical_not();  // [B, Lq]
}

at::Tensor var_redistribute(const at::Tensor& weights, const at::Tensor& image_keys, const at::Tensor& sink_keys,
                            const at::Tensor& rows, const VarOptions& opt, at::Tensor* selected) {
  if (weights.dim() != 4) throw ShapeError("VAR: weights must be [B, H, Lq, Lk]");
  const int64_t B = weights.size(0), Lq = weights.size(2), Lk = weights.size(3);
  if (image_keys.sizes() != at::IntArrayRef({B, Lk}) || sink_keys.sizes() != at::IntArrayRef({B, Lk}) ||
      rows.sizes() != at::IntArrayRef({B, Lq}))
    throw ShapeError("VAR: image/sink keys must be [B, Lk] and rows [B, Lq]");
  const c10::Device dev = weights.device();
  const at::Tensor img = image_keys.to(dev, at::kBool).view({B, 1, 1, Lk});
  const at::Tensor sink = sink_keys.to(dev, at::kBool).view({B, 1, 1, Lk});
  const at::Tensor plain_img = img & sink.logical_not();
  const at::Tensor& w = weights;

  const at::Tensor zero = at::zeros({}, w.options().requires_grad(false));
  const at::Tensor img_att = at::where(img, w, zero).sum(-1);          // [B, H, Lq]
  const at::Tensor plain_att = at::where(plain_img, w, zero).sum(-1);  // [B, H, Lq]
  const at::Tensor sink_att = at::where(sink, w, zero).sum(-1);        // [B, H, Lq]

  at::Tensor sel = rows.to(dev, at::kBool).view({B, 1, Lq}) & (img_att >= opt.image_attention_min) &
                   (plain_att >= img_att * opt.rho) & (plain_att > 0);
  if (opt.require_image_sink) sel = sel & (img & sink).any(-1);  // [B, 1, 1] per batch row
  if (selected) *selected = sel;

  // Sinks keep p; the freed budget goes to the non-sink image tokens, in proportion.
  const at::Tensor omega = sink_att * (1.0 - opt.p);                          // [B, H, Lq]
  const at::Tensor share = (omega / plain_att.clamp_min(1e-30)).unsqueeze(-1);  // [B, H, Lq, 1]
  const at::Tensor changed = at::where(sink, w * opt.p, w) + at::where(plain_img, w * share, zero);
  return at::where(sel.unsqueeze(-1), changed, w);
}

// ---------------------------------------------------------------------------------------------
// VarHook

VarHook::VarHook(VarOptions options) : opt_(std::move(options)) {
  if (opt_.sink_dims.empty()) throw ConfigError("VAR: sink_dims is empty (find them first: iris vlm sinks)");
}

bool VarHook::wants(int layer, const HookContext& ctx) const {
  if (opt_.p == 1.0 || !ctx.image_keys.defined()) return false;  // p = 1 changes nothing: stay on the fast path
  const auto range = opt_.layer_range(ctx.num_layers);
  return layer >= range.first && layer <= range.second;
}

void VarHook::on_weights(int layer, at::Tensor& weights, const HookContext& ctx) {
  if (layer < 0) return;
  if (static_cast<size_t>(layer) >= sinks_.size()) sinks_.resize(layer + 1);
  const int64_t B = weights.size(0), P = ctx.past_length, Lq = ctx.query_length;

  // Sink flags of this pass's keys: kept for the cached slots, decided for the new ones.
  at::Tensor new_flags;
  if (ctx.prefill || Lq > 1 || opt_.detect_at_decode)
    new_flags = detect_sink_tokens(ctx.hidden_states, opt_.sink_dims, opt_.tau, opt_.rms_eps).to(at::kCPU);
  else
    new_flags = at::zeros({B, Lq}, at::TensorOptions().dtype(at::kBool));
  at::Tensor& kept = sinks_[layer];
  at::Tensor old;
  if (P > 0) {
    old = at::zeros({B, P}, at::TensorOptions().dtype(at::kBool));
    if (kept.defined() && kept.size(0) == B) {
      const int64_t n = std::min<int64_t>(P, kept.size(1));
      old.narrow(1, 0, n).copy_(kept.narrow(1, 0, n));
    }
    kept = at::cat({old, new_flags}, 1);
  } else {
    kept = new_flags;
  }

  const at::Tensor rows = var_query_rows(ctx.image_keys, P, Lq);
  if (!rows.any().item<bool>()) return;
  at::Tensor selected;
  weights = var_redistribute(weights, ctx.image_keys, kept, rows, opt_, &selected);
  rows_examined_ += rows.sum().item<int64_t>() * weights.size(1);
  // Selected rows move only where the batch row has image sinks (otherwise nothing is freed).
  const at::Tensor has_sink = (ctx.image_keys.to(at::kCPU, at::kBool) & kept).any(1).view({B, 1, 1});
  rows_changed_ += (selected.to(at::kCPU) & has_sink).sum().item<int64_t>();
}

at::Tensor VarHook::sinks(int layer) const {
  if (layer < 0 || static_cast<size_t>(layer) >= sinks_.size()) return at::Tensor();
  return sinks_[layer];
}

void VarHook::reset() {
  sinks_.clear();
  rows_changed_ = rows_examined_ = 0;
}

// ---------------------------------------------------------------------------------------------
// Sink dimensions

std::vector<SinkDimension> rank_sink_dims(const std::vector<std::vector<at::Tensor>>& hidden_states,
                                          const SinkDimOptions& opt) {
  at::NoGradGuard no_grad;
  at::Tensor hits, score_sum, peak;  // [H] each
  int64_t samples = 0;
  for (const auto& states : hidden_states) {
    // Entries 0 .. num_layers - 1 are layer inputs; the last one is after the final norm.
    const int num_layers = static_cast<int>(states.size()) - 1;
    if (num_layers < 1) throw ConfigError("sink dims: hidden states need num_layers + 1 entries");
    const auto range = resolve_range(opt.first_layer, opt.last_layer, num_layers);
    for (int l = range.first; l <= range.second; ++l) {
      const at::Tensor h = states[l].to(at::kCPU, at::kFloat);
      if (h.dim() != 3) throw ShapeError("sink dims: hidden states must be [B, L, H]");
      const at::Tensor rms = at::sqrt(h.pow(2).mean(-1, true) + opt.rms_eps);  // [B, L, 1]
      const at::Tensor ratio = (h.abs() / rms).reshape({-1, h.size(2)});      // [B*L, H]
      const at::Tensor m = std::get<0>(ratio.max(0)).to(at::kDouble);         // [H]
      if (!hits.defined()) {
        hits = at::zeros(m.sizes(), at::TensorOptions().dtype(at::kLong));
        score_sum = at::zeros_like(m);
        peak = at::zeros_like(m);
      } else if (m.size(0) != hits.size(0)) {
        throw ShapeError("sink dims: hidden sizes differ between prompts");
      }
      hits += (m >= opt.tau).to(at::kLong);
      score_sum += m;
      peak = at::maximum(peak, m);
      ++samples;
    }
  }
  std::vector<SinkDimension> dims;
  if (samples == 0)
    throw ConfigError("sink dims: no layer to examine (first_layer " + std::to_string(opt.first_layer) +
                      ", last_layer " + std::to_string(opt.last_layer) + " leave none in this model)");
  const int64_t H = hits.size(0);
  const int64_t* hp = hits.data_ptr<int64_t>();
  const double* sp = score_sum.data_ptr<double>();
  const double* pp = peak.data_ptr<double>();
  for (int64_t d = 0; d < H; ++d) dims.push_back({d, hp[d], sp[d] / samples, pp[d]});
  std::stable_sort(dims.begin(), dims.end(), [](const SinkDimension& a, const SinkDimension& b) {
    return a.hits != b.hits ? a.hits > b.hits : a.score > b.score;
  });
  if (dims.size() > opt.top) dims.resize(opt.top);
  return dims;
}

std::vector<SinkDimension> find_sink_dims(LlamaForCausalLM& model, const std::vector<LlamaInput>& prompts,
                                          const SinkDimOptions& opt) {
  if (prompts.empty()) throw ConfigError("sink dims: no prompts");
  at::NoGradGuard no_grad;
  std::vector<std::vector<at::Tensor>> states;
  LlamaForwardOptions fo;
  fo.logits = LogitsMode::None;
  fo.output_hidden_states = true;
  for (const LlamaInput& in : prompts) states.push_back(model->forward(in, nullptr, fo).hidden_states);
  return rank_sink_dims(states, opt);
}

}  // namespace iris
