// iris ask: visual question answering with a LLaVA-1.5 folder (or a VISOR one: --visor-budget),
// streaming the answer.
// iris random-llava: a tiny random LLaVA folder (config, weights, tokenizer) for tests.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "app/cli.h"
#include "app/faithfulness_flags.h"
#include "core/heatmap.h"
#include "core/error.h"
#include "core/image.h"
#include "pipelines/random_model.h"
#include "pipelines/visor_vqa.h"
#include "pipelines/vqa.h"

namespace iris::cli {

namespace {

// "\n" and "\t" typed on a command line become the characters (templates need newlines).
std::string unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size() && (s[i + 1] == 'n' || s[i + 1] == 't' || s[i + 1] == '\\')) {
      out += s[i + 1] == 'n' ? '\n' : s[i + 1] == 't' ? '\t' : '\\';
      ++i;
    } else {
      out += s[i];
    }
  }
  return out;
}

// --visor-budget: "auto" (-1, the router) or a budget >= 0; "" = not given.
int64_t parse_visor_budget(const std::string& s) {
  if (s.empty() || s == "auto") return -1;
  size_t used = 0;
  long long v = -1;
  try {
    v = std::stoll(s, &used);
  } catch (...) {
    used = 0;
  }
  if (used != s.size() || v < 0) throw ConfigError("--visor-budget " + s + ": expected auto or a budget 0..N");
  return v;
}

// The LLaVA path's visual FLOPs for the stats line (every layer over the image tokens).
std::string llava_flops_line(VqaModel& m, const std::string& question, const VqaOptions& v, const VqaAnswer& a) {
  const LlavaConfig& c = m.model->config();
  const VisualWorkload w = visual_workload(vqa_prompt_ids(m, question, v), c.image_token_index,
                                           c.image_feature_tokens(), static_cast<int64_t>(a.tokens.size()));
  return llava_visual_flops(c.text, w).line();
}

// --saliency PATH: the answer's patch saliency over the part of the picture the model saw
// (the central square CLIP's resize + centre crop keeps), at least 256 pixels wide.
void write_saliency_png(const std::string& path, const Image& picture, const at::Tensor& map) {
  const at::Tensor m = map.to(at::kCPU, at::kFloat).contiguous();
  const int gh = static_cast<int>(m.size(0)), gw = static_cast<int>(m.size(1));
  const std::vector<float> values(m.data_ptr<float>(), m.data_ptr<float>() + m.numel());
  const Image rgb = to_rgb(picture);
  const int side = std::min(rgb.width, rgb.height);
  const Image seen = center_crop(rgb, side, side);
  const int out = std::max(side, 256);
  save_png(path, heatmap_overlay(seen, values, gh, gw, out, out), {{"iris:saliency", "answer image-token saliency"}});
}

// Fails before the model loads when the PNG could not be written.
void check_output_path(const std::string& path) {
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (!dir.empty() && !std::filesystem::is_directory(dir))
    throw IoError(path + ": the folder " + dir.string() + " does not exist");
}

bool any_method(const FaithfulnessOptions& f) { return f.var || f.locore || f.sgrs; }

}  // namespace

void add_ask_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("ask", "Answer a question about an image with a LLaVA-1.5 model");
  struct Opts {
    std::string model, image, question, chat_template, visor_budget, draft, saliency;
    int64_t draft_chain = 0;
    bool compare = false;
    VqaOptions v;
    std::vector<std::string> stops;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--model", o->model, "LLaVA folder (config.json, safetensors, tokenizer.model)")->required();
  cmd->add_option("--image", o->image, "Image file (PNG, JPEG, BMP)")->required();
  cmd->add_option("question", o->question, "The question")->required();
  cmd->add_option("--max-tokens", o->v.max_new_tokens, "Most new tokens")->capture_default_str();
  cmd->add_option("--temperature", o->v.sampling.temperature, "Sampling temperature (0: greedy)")->capture_default_str();
  cmd->add_option("--top-k", o->v.sampling.top_k, "Keep the k likeliest tokens (0: off)")->capture_default_str();
  cmd->add_option("--top-p", o->v.sampling.top_p, "Nucleus sampling mass (1: off)")->capture_default_str();
  cmd->add_option("--repetition-penalty", o->v.sampling.repetition_penalty, "Repetition penalty (1: off)")
      ->capture_default_str();
  cmd->add_option("--seed", o->v.sampling.seed, "Sampling seed")->capture_default_str();
  cmd->add_option("--stop", o->stops, "Stop string (repeatable); the answer ends before it");
  cmd->add_option("--template", o->chat_template,
                  "Chat template with {question} and <image> (\\n for newlines); default LLaVA-1.5's "
                  "\"USER: <image>\\n{question} ASSISTANT:\"");
  cmd->add_option("--visor-budget", o->visor_budget,
                  "VISOR folders: auto (the router picks) or 0..N self-attention layers on (default auto)");
  cmd->add_option("--draft", o->draft, "ViSpec draft folder (iris train draft): speculative decoding, same output");
  cmd->add_option("--draft-chain", o->draft_chain, "Draft a chain of K tokens per cycle (0: an EAGLE-2 dynamic tree)")
      ->capture_default_str();
  cmd->add_flag("--compare", o->compare, "With --draft: also decode plainly and report the speedup and whether the outputs match");
  cmd->add_option("--saliency", o->saliency, "Write a heat map of the image tokens' saliency for the answer (PNG)");
  add_faithfulness_flags(cmd, o->v.faithfulness);
  cmd->callback([o] {
    if (o->v.max_new_tokens < 1) throw ConfigError("--max-tokens " + std::to_string(o->v.max_new_tokens) + ": must be >= 1");
    if (o->question.find_first_not_of(" \t\r\n") == std::string::npos) throw ConfigError("the question is empty");
    VqaOptions v = o->v;
    v.stop_strings = o->stops;
    v.chat_template = unescape(o->chat_template);
    make_sampler(v.sampling);  // option errors before the model loads
    const int64_t budget = parse_visor_budget(o->visor_budget);
    const bool methods = any_method(v.faithfulness) || !o->saliency.empty();
    if (methods && (is_visor_folder(o->model) || !o->draft.empty()))
      throw ConfigError("--var, --locore, --sgrs and --saliency run on plain LLaVA decoding, not with " +
                        std::string(o->draft.empty() ? "a VISOR folder" : "--draft"));
    if (!o->saliency.empty()) check_output_path(o->saliency);
    v.saliency_map = !o->saliency.empty();
    const TextCallback print = [](const std::string& delta) {
      std::fputs(delta.c_str(), stdout);
      std::fflush(stdout);
      return true;
    };
    if (is_visor_folder(o->model)) {
      if (!o->draft.empty())
        throw ConfigError("--draft: speculative decoding runs on LLaVA folders; " + o->model + " is a VISOR folder");
      VisorModel m = VisorModel::load(o->model);
      if (budget > m.visor->max_budget())
        throw ConfigError("--visor-budget " + o->visor_budget + ": this model's budgets are 0.." +
                          std::to_string(m.visor->max_budget()) + " (or auto)");
      VisorAskOptions vo;
      vo.vqa = v;
      vo.budget = budget;
      const VisorAnswer a = visor_ask(m, o->image, o->question, vo, print);
      std::printf("\n%s, %s\n", a.answer.stats.line().c_str(), a.line().c_str());
      return;
    }
    if (!o->visor_budget.empty())
      throw ConfigError("--visor-budget: " + o->model + " is a LLaVA folder, not a VISOR one (iris train visor makes one)");
    if (o->draft_chain < 0) throw ConfigError("--draft-chain " + std::to_string(o->draft_chain) + ": must be >= 0");
    if (o->draft.empty() && o->compare) throw ConfigError("--compare needs --draft");
    VqaModel m = VqaModel::load(o->model);
    if (!o->draft.empty()) {
      VispecDraft draft = load_vispec_draft(o->draft);
      draft->attach(m.model->language_model);  // a draft for another model fails here, before decoding
      SpeculativeAskOptions so;
      if (o->draft_chain > 0) so.tree = DraftTreeOptions::chain(o->draft_chain);
      so.compare = o->compare;
      const SpeculativeAnswer a = ask_speculative(m, draft, load_image(o->image), o->question, v, so, print);
      std::printf("\n%s\n%s\n", a.answer.stats.line().c_str(), a.line().c_str());
      return;
    }
    const Image picture = load_image(o->image);
    const VqaAnswer a = ask(m, picture, o->question, v, print);
    std::printf("\n%s, %s\n", a.stats.line().c_str(), llava_flops_line(m, o->question, v, a).c_str());
    if (a.methods != "baseline") {
      std::printf("methods: %s", a.methods.c_str());
      if (v.faithfulness.var)
        std::printf("; VAR: %lld of %lld examined attention rows redistributed",
                    static_cast<long long>(a.var_rows_changed), static_cast<long long>(a.var_rows_examined));
      if (v.faithfulness.sgrs)
        std::printf("; SGRS: %lld first draws accepted, %lld redrawn, %lld fallbacks",
                    static_cast<long long>(a.sgrs.first_draw_accepted), static_cast<long long>(a.sgrs.redrawn),
                    static_cast<long long>(a.sgrs.fallbacks));
      std::printf("\n");
    }
    if (!o->saliency.empty()) {
      if (!a.saliency.defined()) throw ConfigError("--saliency: the answer is empty, nothing to explain");
      write_saliency_png(o->saliency, picture, a.saliency);
      std::printf("saliency: %s\n", o->saliency.c_str());
    }
  });
}

void add_random_llava_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("random-llava", "Write a tiny LLaVA folder with random weights (for tests)");
  auto dir = std::make_shared<std::string>();
  auto seed = std::make_shared<uint64_t>(0);
  auto ftz = std::make_shared<bool>(false);
  cmd->add_option("dir", *dir, "Output folder")->required();
  cmd->add_option("--seed", *seed, "Weight seed")->capture_default_str();
  cmd->add_flag("--ftz", *ftz, "With an FtZ block (a small conv augmenting encoder)");
  cmd->callback([dir, seed, ftz] {
    RandomLlavaSpec spec = tiny_llava_spec(*ftz);
    spec.seed = *seed;
    write_random_llava(*dir, spec);
    std::printf("%s\n", dir->c_str());
  });
}

}  // namespace iris::cli
