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
#include "core/error.h"
#include "core/image.h"
#include "pipelines/random_model.h"
#include "pipelines/visor_vqa.h"
#include "pipelines/vlm_ask.h"

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

// Fails before the model loads when the PNG could not be written.
void check_output_path(const std::string& path) {
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (!dir.empty() && !std::filesystem::is_directory(dir))
    throw IoError(path + ": the folder " + dir.string() + " does not exist");
}

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
    // Flag-named checks first; VlmAsker (pipelines/vlm_ask.h) checks the same rules again.
    if (o->v.max_new_tokens < 1) throw ConfigError("--max-tokens " + std::to_string(o->v.max_new_tokens) + ": must be >= 1");
    if (o->question.find_first_not_of(" \t\r\n") == std::string::npos) throw ConfigError("the question is empty");
    VlmAskOptions a;
    a.vqa = o->v;
    a.vqa.stop_strings = o->stops;
    a.vqa.chat_template = unescape(o->chat_template);
    a.vqa.saliency_map = !o->saliency.empty();
    a.draft = o->draft;
    a.draft_chain = o->draft_chain;
    a.compare = o->compare;
    a.visor_budget = parse_visor_budget(o->visor_budget);
    make_sampler(a.vqa.sampling);  // option errors before the model loads
    const bool visor = is_visor_folder(o->model);
    const bool methods = a.vqa.faithfulness.any() || a.vqa.saliency_map;
    if (methods && (visor || !o->draft.empty()))
      throw ConfigError("--var, --locore, --sgrs and --saliency run on plain LLaVA decoding, not with " +
                        std::string(o->draft.empty() ? "a VISOR folder" : "--draft"));
    if (visor && !o->draft.empty())
      throw ConfigError("--draft: speculative decoding runs on LLaVA folders; " + o->model + " is a VISOR folder");
    if (!visor && !o->visor_budget.empty())
      throw ConfigError("--visor-budget: " + o->model + " is a LLaVA folder, not a VISOR one (iris train visor makes one)");
    if (o->draft_chain < 0) throw ConfigError("--draft-chain " + std::to_string(o->draft_chain) + ": must be >= 0");
    if (o->draft.empty() && o->compare) throw ConfigError("--compare needs --draft");
    if (!o->saliency.empty()) check_output_path(o->saliency);

    const Image picture = load_image(o->image);
    VlmAsker asker;
    const VlmAskResult r = asker.ask(o->model, picture, o->question, a, [](const std::string& delta) {
      std::fputs(delta.c_str(), stdout);
      std::fflush(stdout);
      return true;
    });
    std::printf("\n");
    for (const std::string& line : r.stats) std::printf("%s\n", line.c_str());
    if (!o->saliency.empty()) {
      if (!r.answer.saliency.defined()) throw ConfigError("--saliency: the answer is empty, nothing to explain");
      save_png(o->saliency, saliency_overlay(picture, r.answer.saliency),
               {{"iris:saliency", "image-patch saliency of the answer to: " + o->question}});
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
