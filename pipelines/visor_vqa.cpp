#include "pipelines/visor_vqa.h"

#include <cstdio>

#include "core/error.h"

namespace iris {

VisorModel VisorModel::load(const std::string& folder) {
  require_visor_folder(folder);  // a plain LLaVA folder fails before its weights are read
  VisorModel m{VqaModel::load(folder), nullptr};
  m.visor = load_visor_onto(m.base.model, folder);
  return m;
}

std::string VisorAnswer::line() const {
  char buf[200];
  const double ratio = flops.total() > 0 ? llava_flops.total() / flops.total() : 0.0;
  std::snprintf(buf, sizeof(buf), "budget %lld%s, %s (LLaVA path %.1f, %.1fx less)", static_cast<long long>(budget),
                routed ? " (router)" : "", flops.line().c_str(), llava_flops.total() / 1e6, ratio);
  return buf;
}

VisorAnswer visor_ask(VisorModel& m, const Image& image, const std::string& question, const VisorAskOptions& opt,
                      const TextCallback& on_text) {
  const std::vector<int64_t> ids = vqa_prompt_ids(m.base, question, opt.vqa);
  const at::Tensor pixels = vqa_pixels(m.base, image);
  VisorGenerateResult run;
  VisorAnswer out;
  out.answer = ask_with(m.base, ids, opt.vqa, [&](const GenerateOptions& g, const TokenCallback& on_token) {
    run = visor_generate(m.visor, ids, pixels, opt.budget, g, on_token);
    return run.result;
  }, on_text);
  out.answer.stats.prompt_tokens = run.result.prompt_tokens + run.image_tokens;
  out.budget = run.budget;
  out.routed = run.routed;
  out.workload = visual_workload(ids, m.visor->config().image_token_index, run.image_tokens,
                                 static_cast<int64_t>(out.answer.tokens.size()));
  const LlamaConfig& text = m.visor->config().text;
  out.flops = visor_visual_flops(m.visor->visor_config(), text, out.workload, out.budget, out.routed);
  out.llava_flops = llava_visual_flops(text, out.workload);
  return out;
}

VisorAnswer visor_ask(VisorModel& m, const std::string& image_path, const std::string& question,
                      const VisorAskOptions& opt, const TextCallback& on_text) {
  if (question.find_first_not_of(" \t\r\n\v\f") == std::string::npos) throw ConfigError("the question is empty");
  return visor_ask(m, load_image(image_path), question, opt, on_text);
}

std::string visor_answer(VisorModel& m, const std::string& question, const Image& image, int64_t max_new_tokens,
                         int64_t budget) {
  VisorAskOptions o;
  o.vqa.max_new_tokens = max_new_tokens;
  o.budget = budget;
  return visor_ask(m, image, question, o).answer.text;
}

}  // namespace iris
