#include "vlm/faithfulness.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>

#include "core/error.h"

namespace iris {

namespace {

std::string fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

}  // namespace

void FaithfulnessOptions::validate(const LlamaConfig& cfg) const {
  if (var) var_options.validate(cfg);
  if (locore) locore_options.validate(cfg);
  if (sgrs) {
    sgrs_options.validate();
    saliency.validate(cfg);
  }
}

std::string FaithfulnessOptions::describe() const {
  std::string s;
  auto add = [&](const std::string& part) { s += (s.empty() ? "" : "+") + part; };
  if (var) add("var(p=" + fmt(var_options.p) + ",rho=" + fmt(var_options.rho) + ",tau=" + fmt(var_options.tau) + ")");
  if (locore)
    add("locore(beta=" + fmt(locore_options.beta) + ",w=" + std::to_string(locore_options.window) + ")");
  if (sgrs)
    add("sgrs(K=" + std::to_string(sgrs_options.top_k) + ",alpha=" + fmt(sgrs_options.alpha) +
        ",W=" + std::to_string(sgrs_options.window) + ",R=" + std::to_string(sgrs_options.max_tries) + ")");
  return s.empty() ? "baseline" : s;
}

FaithfulnessHooks configure_faithfulness(LlamaForCausalLM& model, const FaithfulnessOptions& options) {
  options.validate(model->config());
  FaithfulnessHooks h;
  if (options.var) {
    h.var = std::make_shared<VarHook>(options.var_options);
    model->attention_hooks().add(h.var);
  }
  if (options.locore) {
    h.locore = std::make_shared<LocoreHook>(options.locore_options);
    model->attention_hooks().add(h.locore);
  }
  return h;
}

void remove_faithfulness(LlamaForCausalLM& model, const FaithfulnessHooks& hooks) {
  if (hooks.var) model->attention_hooks().remove(hooks.var.get());
  if (hooks.locore) model->attention_hooks().remove(hooks.locore.get());
}

GenerateResult generate_faithful(LlamaForCausalLM& model, const LlamaInput& prompt, const FaithfulnessOptions& options,
                                 const GenerateOptions& gen, const TokenCallback& on_token, SgrsStats* stats) {
  options.validate(model->config());
  if (options.sgrs) return generate_sgrs(model, prompt, options.sgrs_options, options.saliency, gen, on_token, stats);

  const int64_t n = prompt_length(prompt);
  std::vector<int64_t> history;
  if (prompt.input_ids.defined()) {
    const at::Tensor ids = prompt.input_ids.reshape({-1}).to(at::kCPU, at::kLong).contiguous();
    history.assign(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + ids.numel());
  }
  std::unique_ptr<c10::InferenceMode> inference;
  std::unique_ptr<at::NoGradGuard> no_grad;
  if (gen.inference_mode) inference = std::make_unique<c10::InferenceMode>();
  else no_grad = std::make_unique<at::NoGradGuard>();
  const int64_t capacity = gen.cache_capacity > 0 ? gen.cache_capacity : n + std::max<int64_t>(gen.max_new_tokens, 1);
  KVCache cache = model->new_cache(1, capacity);
  const auto t0 = std::chrono::steady_clock::now();
  LlamaForwardOptions fo;
  fo.logits = LogitsMode::Last;
  const at::Tensor logits = model->forward(prompt, &cache, fo).logits;
  const double prefill_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  GenerateResult r = generate_from(model, cache, logits, gen, on_token, history);
  r.prefill_ms = prefill_ms;
  return r;
}

}  // namespace iris
