#include "pipelines/vqa.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>

#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>

#include "core/checkpoint.h"
#include "core/clip_preprocess_file.h"
#include "core/error.h"

namespace fs = std::filesystem;

namespace iris {

namespace {

// Text that may still change when more tokens come: a trailing U+FFFD is an incomplete
// byte-fallback character (SentencePiece decodes a partial UTF-8 sequence to U+FFFD).
size_t stable_prefix(const std::string& text) {
  static const std::string kReplacement = "\xEF\xBF\xBD";
  size_t n = text.size();
  while (n >= kReplacement.size() && text.compare(n - kReplacement.size(), kReplacement.size(), kReplacement) == 0)
    n -= kReplacement.size();
  return n;
}

}  // namespace

VqaModel VqaModel::load(const std::string& folder) {
  if (!fs::exists(folder)) throw IoError(folder + ": no such model folder");
  if (!fs::is_directory(folder))
    throw CheckpointError(folder + ": a LLaVA model is a folder (config.json, model.safetensors, tokenizer.model)");
  const std::string tok_path = (fs::path(folder) / "tokenizer.model").string();
  if (!fs::is_regular_file(tok_path))
    throw IoError(tok_path + ": missing (a LLaVA folder needs its SentencePiece tokenizer.model)");
  VqaModel m{nullptr, SentencePieceTokenizer::load(tok_path), {}, {}, folder};  // tokenizer before any weight
  const std::string cfg_path = (fs::path(folder) / "config.json").string();
  if (!fs::is_regular_file(cfg_path)) throw IoError(cfg_path + ": missing (the model's config)");
  const Json cfg = read_json_file(cfg_path);
  const LlavaConfig lc = LlavaConfig::from_json(cfg, cfg_path);
  if (static_cast<int64_t>(m.tokenizer.vocab_size()) > lc.text.vocab_size)
    throw CheckpointError(tok_path + ": the tokenizer has " + std::to_string(m.tokenizer.vocab_size()) +
                          " pieces, more than the language model's vocab_size " + std::to_string(lc.text.vocab_size) +
                          " in " + cfg_path);
  m.model = load_llava(folder);

  m.preprocess = read_clip_preprocess((fs::path(folder) / "preprocessor_config.json").string(),
                                      static_cast<int>(lc.vision.image_size));
  auto tmpl = cfg.find("chat_template");
  // A plain "{question}" template; Jinja templates (other exporters) are not run here.
  if (tmpl != cfg.end() && tmpl->is_string() && tmpl->get<std::string>().find("{%") == std::string::npos) {
    try {
      m.chat = ChatTemplate::parse(tmpl->get<std::string>());
    } catch (...) {
      rethrow_with_context(cfg_path);
    }
  }
  return m;
}

std::string VqaModel::detokenize(const std::vector<int64_t>& ids) const {
  std::vector<int> known;
  known.reserve(ids.size());
  const int64_t vocab = static_cast<int64_t>(tokenizer.vocab_size());
  for (int64_t id : ids)
    if (id >= 0 && id < vocab) known.push_back(static_cast<int>(id));
  return tokenizer.decode(known);
}

std::string VqaStats::line() const {
  char buf[256];
  std::snprintf(buf, sizeof(buf), "prompt tokens %lld, generated tokens %lld, prefill %.1f ms, decode %.1f tok/s, stop %s",
                static_cast<long long>(prompt_tokens), static_cast<long long>(generated_tokens), prefill_ms,
                decode_tokens_per_second, stop_reason_name(stop));
  return buf;
}

std::vector<int64_t> vqa_prompt_ids(const VqaModel& m, const std::string& question, const VqaOptions& opt) {
  const ChatTemplate chat = opt.chat_template.empty() ? m.chat : ChatTemplate::parse(opt.chat_template);
  if (chat.image_count() != 1)
    throw ConfigError("chat template \"" + chat.format + "\": must contain the image placeholder " +
                      chat.image_placeholder + " exactly once (one image per question)");
  const LlavaConfig& c = m.model->config();
  const int64_t bos = c.text.bos_token_id >= 0 ? c.text.bos_token_id : m.tokenizer.bos_id();
  return tokenize_with_images(m.tokenizer, chat.render(question), chat.image_placeholder, c.image_token_index, bos);
}

at::Tensor vqa_pixels(const VqaModel& m, const Image& image) {
  int h = 0, w = 0;
  std::vector<float> chw = clip_preprocess(to_rgb(image), m.preprocess, &h, &w);
  const at::Tensor& weight = m.model->vision_tower->vision_model->embeddings->patch_embedding->weight;
  return at::from_blob(chw.data(), {1, 3, h, w}, at::kFloat).clone().to(weight.device());  // [1, 3, S, S]
}

LlavaMerged vqa_merged_prompt(VqaModel& m, const Image& image, const std::string& question, const VqaOptions& opt) {
  return vqa_merged_prompt(m, image, vqa_prompt_ids(m, question, opt));
}

namespace {

// Image features spliced into the prompt ids; the caller picks the grad mode.
LlavaMerged merge_prompt(VqaModel& m, const Image& image, const std::vector<int64_t>& ids) {
  const at::Tensor pixels = vqa_pixels(m, image);
  const at::Tensor input_ids = at::tensor(ids, at::kLong).unsqueeze(0).to(pixels.device());  // [1, L]
  return m.model->merge(input_ids, m.model->image_features(pixels));
}

}  // namespace

LlavaMerged vqa_merged_prompt(VqaModel& m, const Image& image, const std::vector<int64_t>& ids) {
  c10::InferenceMode inference;
  return merge_prompt(m, image, ids);
}

LlamaInput vqa_prompt_input(VqaModel& m, const Image& image, const std::vector<int64_t>& ids) {
  at::NoGradGuard no_grad;
  return merge_prompt(m, image, ids).input();
}

namespace {

// Removes the faithfulness hooks when the answer is done, however it ends.
struct InstalledHooks {
  LlamaForCausalLM model;
  FaithfulnessHooks hooks;
  InstalledHooks(LlamaForCausalLM m, const FaithfulnessOptions& f) : model(std::move(m)) {
    hooks = configure_faithfulness(model, f);
  }
  ~InstalledHooks() { remove_faithfulness(model, hooks); }
  InstalledHooks(const InstalledHooks&) = delete;
  InstalledHooks& operator=(const InstalledHooks&) = delete;
};

// The answer's tokens the saliency map explains: every generated token but a final EOS.
std::vector<int64_t> explained_tokens(const std::vector<int64_t>& tokens, const LlamaConfig& cfg) {
  std::vector<int64_t> out = tokens;
  while (!out.empty() && std::find(cfg.eos_token_ids.begin(), cfg.eos_token_ids.end(), out.back()) != cfg.eos_token_ids.end())
    out.pop_back();
  return out;
}

// [side, side] from the saliency over every image feature (the CLS feature of "full" dropped).
at::Tensor patch_saliency(VqaModel& m, const LlamaInput& prompt, const std::vector<int64_t>& answer,
                          const SaliencyOptions& so) {
  const LlavaConfig& c = m.model->config();
  const int64_t n = c.image_feature_tokens();
  at::Tensor flat = answer_saliency_map(m.model->language_model, prompt, answer, so, 1, n).map.reshape({-1});
  if (c.feature_select == LlavaConfig::FeatureSelect::Full) flat = flat.narrow(0, 1, n - 1);
  const int64_t side = c.vision.image_size / c.vision.patch_size;
  return flat.reshape({side, side}).contiguous();
}

}  // namespace

VqaAnswer ask(VqaModel& m, const Image& image, const std::string& question, const VqaOptions& opt,
              const TextCallback& on_text) {
  const std::vector<int64_t> ids = vqa_prompt_ids(m, question, opt);
  const FaithfulnessOptions& f = opt.faithfulness;
  if (!f.any() && !opt.saliency_map) {
    const at::Tensor pixels = vqa_pixels(m, image);
    return ask_with(m, ids, opt, [&](const GenerateOptions& g, const TokenCallback& on_token) {
      return llava_generate(m.model, ids, pixels, g, on_token);
    }, on_text);
  }
  LlamaForCausalLM lm = m.model->language_model;
  f.validate(lm->config());
  if (opt.saliency_map) f.saliency.validate(lm->config());
  const LlamaInput prompt = vqa_prompt_input(m, image, ids);
  InstalledHooks installed(lm, f);
  SgrsStats sgrs;
  VqaAnswer a = ask_with(m, ids, opt, [&](const GenerateOptions& g, const TokenCallback& on_token) {
    GenerateResult r = generate_faithful(lm, prompt, f, g, on_token, &sgrs);
    r.prompt_tokens = prompt_length(prompt);
    return r;
  }, on_text);
  a.methods = f.describe();
  a.sgrs = sgrs;
  if (installed.hooks.var) {
    a.var_rows_changed = installed.hooks.var->rows_changed();
    a.var_rows_examined = installed.hooks.var->rows_examined();
  }
  if (opt.saliency_map) {
    const std::vector<int64_t> answer = explained_tokens(a.tokens, lm->config());
    if (!answer.empty()) a.saliency = patch_saliency(m, prompt, answer, f.saliency);
  }
  return a;
}

VqaAnswer ask_with(VqaModel& m, const std::vector<int64_t>& ids, const VqaOptions& opt, const VqaGenerateFn& generate,
                   const TextCallback& on_text) {
  GenerateOptions g;
  g.max_new_tokens = opt.max_new_tokens;
  g.sampling = opt.sampling;
  g.stop_strings = opt.stop_strings;
  g.detokenize = [&m](const std::vector<int64_t>& t) { return m.detokenize(t); };

  // Streaming: emit text once it can no longer change (held back while a byte-fallback
  // character is incomplete, and never past a stop string).
  std::vector<int64_t> so_far;
  std::string emitted;
  bool stopped = false;
  auto emit_upto = [&](const std::string& text) {
    const size_t n = stable_prefix(text);
    if (n > emitted.size() && text.compare(0, emitted.size(), emitted) == 0) {
      const std::string delta = text.substr(emitted.size(), n - emitted.size());
      emitted = text.substr(0, n);
      if (on_text && !stopped && !on_text(delta)) stopped = true;
    }
  };
  TokenCallback on_token = [&](int64_t token, const std::string&) {
    so_far.push_back(token);
    std::string text = m.detokenize(so_far);
    for (const std::string& s : opt.stop_strings) {
      if (s.empty()) continue;
      // Hold back anything that could be the start of a stop string.
      const size_t cut = text.find(s);
      if (cut != std::string::npos) text.resize(cut);
      for (size_t k = std::min(s.size() - 1, text.size()); k > 0; --k)
        if (text.compare(text.size() - k, k, s, 0, k) == 0) {
          text.resize(text.size() - k);
          break;
        }
    }
    emit_upto(text);
    return !stopped;
  };

  const GenerateResult r = generate(g, on_token);
  if (!stopped && r.text.size() > emitted.size() && r.text.compare(0, emitted.size(), emitted) == 0 && on_text)
    on_text(r.text.substr(emitted.size()));  // the rest, now final

  VqaAnswer a;
  a.text = r.text;
  a.tokens = r.tokens;
  a.stats.prompt_tokens = r.prompt_tokens;
  a.stats.text_tokens = static_cast<int64_t>(ids.size());
  a.stats.generated_tokens = static_cast<int64_t>(r.tokens.size());
  a.stats.prefill_ms = r.prefill_ms;
  a.stats.decode_tokens_per_second = r.decode_tokens_per_second();
  a.stats.stop = r.stop;
  return a;
}

VqaAnswer ask(VqaModel& m, const std::string& image_path, const std::string& question, const VqaOptions& opt,
              const TextCallback& on_text) {
  // The question first: an empty one fails before the image is read.
  if (question.find_first_not_of(" \t\r\n\v\f") == std::string::npos) throw ConfigError("the question is empty");
  return ask(m, load_image(image_path), question, opt, on_text);
}

// ---------------------------------------------------------------------------------------------
// Speculative decoding (ViSpec)

std::string SpeculativeAnswer::line() const {
  char buf[256];
  std::snprintf(buf, sizeof(buf), "ViSpec: tau %.2f accepted draft tokens per cycle, %lld cycles, %lld target forwards",
                stats.tau(), static_cast<long long>(stats.cycles), static_cast<long long>(stats.target_forwards));
  std::string s = buf;
  if (compared) {
    std::snprintf(buf, sizeof(buf), "; plain decoding %.1f ms, speculative %.1f ms: %.2fx, output %s", plain_ms,
                  speculative_ms, speculative_ms > 0 ? plain_ms / speculative_ms : 0.0,
                  identical ? "identical" : "DIFFERENT");
    s += buf;
  }
  return s;
}

SpeculativeAnswer ask_speculative(VqaModel& m, VispecDraft& draft, const Image& image, const std::string& question,
                                  const VqaOptions& opt, const SpeculativeAskOptions& so, const TextCallback& on_text) {
  so.tree.validate();
  if (!draft->attached()) draft->attach(m.model->language_model);  // ConfigError when it does not fit
  const std::vector<int64_t> ids = vqa_prompt_ids(m, question, opt);
  const LlavaMerged prompt = vqa_merged_prompt(m, image, ids);
  SpeculativeAnswer out;
  auto now = [] { return std::chrono::steady_clock::now(); };
  auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  if (so.compare) {  // untimed warm-up of both paths (see SpeculativeAskOptions::compare)
    GenerateOptions warm;
    warm.max_new_tokens = std::min<int64_t>(8, opt.max_new_tokens);
    SpeculativeOptions sp;
    sp.generate = warm;
    sp.tree = so.tree;
    speculative_generate(m.model->language_model, draft, prompt.inputs_embeds, prompt.image_mask, sp, nullptr);
    plain_generate(m.model->language_model, prompt.inputs_embeds, prompt.image_mask, warm);
  }
  const auto t0 = now();
  out.answer = ask_with(m, ids, opt, [&](const GenerateOptions& g, const TokenCallback& on_token) {
    SpeculativeOptions sp;
    sp.generate = g;
    sp.tree = so.tree;
    SpeculativeResult r = speculative_generate(m.model->language_model, draft, prompt.inputs_embeds, prompt.image_mask,
                                               sp, on_token);
    out.stats = r.stats;
    return r.result;
  }, on_text);
  out.speculative_ms = ms(t0, now());
  if (so.compare) {
    GenerateOptions g;
    g.max_new_tokens = opt.max_new_tokens;
    g.sampling = opt.sampling;
    g.stop_strings = opt.stop_strings;
    g.detokenize = [&m](const std::vector<int64_t>& t) { return m.detokenize(t); };
    const auto t1 = now();
    const GenerateResult plain = plain_generate(m.model->language_model, prompt.inputs_embeds, prompt.image_mask, g);
    out.plain_ms = ms(t1, now());
    out.compared = true;
    out.identical = plain.tokens == out.answer.tokens;
  }
  return out;
}

}  // namespace iris
