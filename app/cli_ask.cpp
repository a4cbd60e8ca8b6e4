// iris ask: visual question answering with a LLaVA-1.5 folder, streaming the answer.
// iris random-llava: a tiny random LLaVA folder (config, weights, tokenizer) for tests.
#include <cstdio>
#include <string>
#include <vector>

#include "app/cli.h"
#include "core/error.h"
#include "pipelines/random_model.h"
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

}  // namespace

void add_ask_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("ask", "Answer a question about an image with a LLaVA-1.5 model");
  struct Opts {
    std::string model, image, question, chat_template;
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
  cmd->callback([o] {
    if (o->v.max_new_tokens < 1) throw ConfigError("--max-tokens " + std::to_string(o->v.max_new_tokens) + ": must be >= 1");
    if (o->question.find_first_not_of(" \t\r\n") == std::string::npos) throw ConfigError("the question is empty");
    VqaOptions v = o->v;
    v.stop_strings = o->stops;
    v.chat_template = unescape(o->chat_template);
    make_sampler(v.sampling);  // option errors before the model loads
    VqaModel m = VqaModel::load(o->model);
    const VqaAnswer a = ask(m, o->image, o->question, v, [](const std::string& delta) {
      std::fputs(delta.c_str(), stdout);
      std::fflush(stdout);
      return true;
    });
    std::printf("\n%s\n", a.stats.line().c_str());
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
