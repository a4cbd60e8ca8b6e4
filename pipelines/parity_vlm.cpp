// Parity runners for the VLM (transformers 4.40.2 golden fixtures `llama`, `llama_gen` and
// `llava`). Every `output.*` of a fixture is compared; one the runner does not produce is a
// failing line, so nothing is skipped silently.
#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include <ATen/core/grad_mode.h>

#include "core/error.h"
#include "core/state_dict.h"
#include "pipelines/parity.h"
#include "vlm/llama.h"
#include "vlm/llava.h"
#include "vlm/sampling.h"

namespace iris {

namespace {

using Outputs = std::map<std::string, ParityLine>;  // output name without "output." -> result

std::vector<int64_t> row_ids(const at::Tensor& ids, int64_t row) {
  at::Tensor r = ids.select(0, row).to(at::kLong).contiguous();
  return std::vector<int64_t>(r.data_ptr<int64_t>(), r.data_ptr<int64_t>() + r.numel());
}

at::Tensor ids_tensor(const std::vector<int64_t>& ids) {
  return at::tensor(ids, at::TensorOptions().dtype(at::kLong)).view({1, static_cast<int64_t>(ids.size())});
}

LlamaForCausalLM build_model(const Fixture& fx) {
  const LlamaConfig cfg = LlamaConfig::from_json(fx.config, fx.path + ": config");
  LlamaForCausalLM model(cfg);
  // The fixture holds the parameters under their real names plus input.* / output.*.
  RenameTable renames;
  renames.ignore("input.").ignore("output.");
  load_llama_weights(model, *fx.store, "", renames);
  model->eval();
  return model;
}

void emit(const Fixture& fx, Outputs& got, std::vector<ParityLine>& lines) {
  report_outputs(fx, lines, [&](const std::string& key) -> std::optional<ParityLine> {
    auto it = got.find(key);
    if (it == got.end()) return std::nullopt;
    return it->second;
  });
  // Extra checks beyond the fixture's own outputs (named with a parenthesis).
  for (auto& [key, line] : got)
    if (!fx.has("output." + key)) lines.push_back(line);
}

// Greedy generation through the cached decode loop: prompt + new tokens, and the logits used.
GenerateResult greedy(LlamaForCausalLM& model, const std::vector<int64_t>& prompt, int64_t n) {
  GenerateOptions opt;
  opt.max_new_tokens = n;
  opt.stop_at_eos = false;  // transformers stops at eos too; the fixtures hold none
  opt.keep_logits = true;
  return generate(model, prompt, opt);
}

// `llama`: logits (no cache), left-padded logits, layer caches, greedy generation.
void run_llama(const Fixture& fx, LlamaForCausalLM& model, std::vector<ParityLine>& lines) {
  Outputs got;
  const at::Tensor ids = fx.tensor("input.input_ids");
  got["logits"] = compare("logits", model->forward(ids), fx.tensor("output.logits"));

  {  // left padding: explicit mask and positions; only real tokens are compared
    LlamaInput in;
    in.input_ids = fx.tensor("input.input_ids_leftpad");
    in.attention_mask = fx.tensor("input.attention_mask_leftpad");
    in.position_ids = fx.tensor("input.position_ids_leftpad");
    const at::Tensor keep = in.attention_mask.to(at::kFloat).unsqueeze(-1);
    const at::Tensor logits = model->forward(in).logits;
    got["logits_leftpad"] =
        compare("logits_leftpad", logits * keep, fx.tensor("output.logits_leftpad") * keep);
    // The same batch through the cache with positions derived from the mask (HF's cumsum - 1).
    KVCache cache = model->new_cache(in.input_ids.size(0), in.input_ids.size(1) + 1);
    LlamaInput derived = in;
    derived.position_ids = at::Tensor();
    got["logits_leftpad (cached, derived positions)"] = compare(
        "logits_leftpad (cached, derived positions)", model->forward(derived, &cache).logits * keep,
        fx.tensor("output.logits_leftpad") * keep);
  }

  {  // the cache after a prefill of row 0
    const int64_t layers = model->config().num_hidden_layers;
    const at::Tensor row0 = ids.narrow(0, 0, 1);
    KVCache cache = model->new_cache(1, row0.size(1));
    LlamaInput in;
    in.input_ids = row0;
    model->forward(in, &cache);
    for (int64_t l = 0; l < layers; ++l) {
      const std::string k = "past_key." + std::to_string(l), v = "past_value." + std::to_string(l);
      if (fx.has("output." + k)) got[k] = compare(k, cache.keys(l), fx.tensor("output." + k));
      if (fx.has("output." + v)) got[v] = compare(v, cache.values(l), fx.tensor("output." + v));
    }
  }

  {  // greedy generation from row 0
    const at::Tensor want = fx.tensor("output.generate_greedy");
    const std::vector<int64_t> prompt = row_ids(ids, 0);
    const GenerateResult r = greedy(model, prompt, want.size(1) - static_cast<int64_t>(prompt.size()));
    std::vector<int64_t> all = prompt;
    all.insert(all.end(), r.tokens.begin(), r.tokens.end());
    got["generate_greedy"] = compare("generate_greedy", ids_tensor(all), want);
  }
  emit(fx, got, lines);
}

// `llama_gen`: cached generation, its step logits, and one speculative verification pass.
void run_llama_gen(const Fixture& fx, LlamaForCausalLM& model, std::vector<ParityLine>& lines) {
  Outputs got;
  const at::Tensor prompt_ids = fx.tensor("input.prompt_ids");
  const at::Tensor candidates = fx.tensor("input.candidate_tokens");
  const std::vector<int64_t> prompt = row_ids(prompt_ids, 0);
  const int64_t n_new = fx.tensor("output.new_tokens").size(1);

  const GenerateResult r = greedy(model, prompt, n_new);
  std::vector<int64_t> all = prompt;
  all.insert(all.end(), r.tokens.begin(), r.tokens.end());
  got["tokens"] = compare("tokens", ids_tensor(all), fx.tensor("output.tokens"));
  got["new_tokens"] = compare("new_tokens", ids_tensor(r.tokens), fx.tensor("output.new_tokens"));
  got["generate_step_logits"] =
      compare("generate_step_logits", r.step_logits.unsqueeze(0), fx.tensor("output.generate_step_logits"));
  got["logits"] = compare("logits", model->forward(fx.tensor("output.tokens")), fx.tensor("output.logits"));
  got["logits_prompt_plus_candidates_nocache"] =
      compare("logits_prompt_plus_candidates_nocache", model->forward(at::cat({prompt_ids, candidates}, 1)),
              fx.tensor("output.logits_prompt_plus_candidates_nocache"));

  // Prompt with a cache, then ONE pass over the 5 candidates on top of it.
  KVCache cache = model->new_cache(1, prompt_ids.size(1) + candidates.size(1));
  LlamaInput in;
  in.input_ids = prompt_ids;
  const at::Tensor prompt_logits = model->forward(in, &cache).logits;  // [1, 11, V]
  got["prompt_logits"] = compare("prompt_logits", prompt_logits, fx.tensor("output.prompt_logits"));
  const at::Tensor verify_logits = model->verify(candidates, cache);  // [1, 5, V]
  got["verify_logits"] = compare("verify_logits", verify_logits, fx.tensor("output.verify_logits"));
  const ChainVerdict v =
      greedy_accept_chain(prompt_logits.select(1, prompt_logits.size(1) - 1), verify_logits, row_ids(candidates, 0));
  got["verify_num_accepted"] =
      compare("verify_num_accepted", at::tensor({v.num_accepted}, at::kLong), fx.tensor("output.verify_num_accepted"));
  got["verify_next_token"] =
      compare("verify_next_token", at::tensor({v.next_token}, at::kLong), fx.tensor("output.verify_next_token"));
  got["verify_past_key.0"] = compare("verify_past_key.0", cache.keys(0), fx.tensor("output.verify_past_key.0"));
  got["verify_past_value.0"] = compare("verify_past_value.0", cache.values(0), fx.tensor("output.verify_past_value.0"));

  // Roll back to the accepted prefix, feed the bonus token: its logits must be what plain
  // decoding gives at that point (generate_step_logits[num_accepted + 1]).
  cache.truncate(prompt_ids.size(1) + v.num_accepted);
  const at::Tensor next = model->step(at::tensor({v.next_token}, at::kLong), cache);  // [1, V]
  got["verify then rollback: step logits"] =
      compare("verify then rollback: step logits", next,
              fx.tensor("output.generate_step_logits").select(1, v.num_accepted + 1));
  emit(fx, got, lines);
}

void run(const Fixture& fx, std::vector<ParityLine>& lines) {
  at::NoGradGuard no_grad;
  LlamaForCausalLM model = build_model(fx);
  if (fx.has("input.prompt_ids")) run_llama_gen(fx, model, lines);
  else run_llama(fx, model, lines);
}

// `llava`: the selected vision states, the projected features, the logits over the merged
// prompt (the <image> token expanded to the patch features) and greedy generation through the
// cache (prefill with the merged embeddings, then token steps).
void run_llava(const Fixture& fx, std::vector<ParityLine>& lines) {
  at::NoGradGuard no_grad;
  Outputs got;
  const at::Tensor ids = fx.tensor("input.input_ids");
  const at::Tensor pixels = fx.tensor("input.pixel_values");
  const at::Tensor mask = fx.tensor("input.attention_mask");
  const at::Tensor want_tokens = fx.tensor("output.generate_greedy");
  const int64_t n_new = want_tokens.size(1) - ids.size(1);

  LlavaConfig cfg = LlavaConfig::from_json(fx.config, fx.path + ": config");
  // transformers 4.40 computes RoPE for any position and does not enforce
  // max_position_embeddings; this tiny config's 64 is shorter than the merged prompt plus the
  // generated tokens (8 - 1 + 64 + 4 = 75). RoPE is the same formula at every position, so the
  // table is only widened to cover what the fixture uses.
  const int64_t images = ids.eq(cfg.image_token_index).sum().item<int64_t>();
  const int64_t needed = ids.size(1) + images * (cfg.image_feature_tokens() - 1) + n_new;
  cfg.text.max_position_embeddings = std::max(cfg.text.max_position_embeddings, needed);
  LlavaForConditionalGeneration model(cfg);
  load_llava_weights(model, *fx.store, {"input.", "output."});
  model->eval();

  const at::Tensor selected = model->vision_features(pixels);
  got["vision_hidden_states_selected"] =
      compare("vision_hidden_states_selected", selected, fx.tensor("output.vision_hidden_states_selected"));
  const at::Tensor features = model->multi_modal_projector(selected);
  got["image_features_projected"] =
      compare("image_features_projected", features, fx.tensor("output.image_features_projected"));
  const at::Tensor logits = model->forward(ids, pixels, mask).logits;  // [1, 71, V]
  got["logits"] = compare("logits", logits, fx.tensor("output.logits"));

  GenerateOptions opt;
  opt.max_new_tokens = n_new;
  opt.stop_at_eos = false;  // transformers stops at eos too; the fixture has none
  opt.keep_logits = true;
  const std::vector<int64_t> prompt = row_ids(ids, 0);
  const GenerateResult r = llava_generate(model, prompt, pixels, opt);
  std::vector<int64_t> all = prompt;
  all.insert(all.end(), r.tokens.begin(), r.tokens.end());
  got["generate_greedy"] = compare("generate_greedy", ids_tensor(all), want_tokens);
  // The cached prefill's first logits are the no-cache forward's last position.
  got["(cached prefill) first step logits"] =
      compare("(cached prefill) first step logits", r.step_logits.select(0, 0), logits.select(1, logits.size(1) - 1)[0]);
  emit(fx, got, lines);
}

}  // namespace

void register_vlm_parity(ParityRegistry& r) {
  r.add("transformers.LlamaForCausalLM", run);
  r.add("transformers.LlavaForConditionalGeneration", run_llava);
}

}  // namespace iris
