// `iris eval vlm`: a Tinyworld VLM on held-out scenes: short-answer accuracy, POPE per split,
// CHAIR on descriptions (pipelines/vlm_eval.h).
#include <cstdio>
#include <memory>

#include "app/cli.h"
#include "app/faithfulness_flags.h"
#include "app/progress_bar.h"
#include "core/error.h"
#include "core/mmap_file.h"
#include "core/runtime.h"
#include "pipelines/vlm_eval.h"
#include "pipelines/vqa.h"

namespace iris::cli {

namespace {

void write_text(const std::string& path, const std::string& text) { write_file_atomic(path, text.data(), text.size()); }

}  // namespace

void add_eval_vlm_command(CLI::App& app) {
  auto* cmd = eval_command(app)->add_subcommand(
      "vlm", "VQA accuracy, POPE and CHAIR of a LLaVA-style model on held-out Tinyworld scenes");
  struct Opts {
    std::string model, json, samples;
    VlmEvalOptions e;
    VqaOptions v;  // the faithfulness methods (and a seed for SGRS' draws)
    int threads = 0;
    bool verbose = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--model", o->model, "LLaVA folder (config.json, model.safetensors, tokenizer.model)")->required();
  cmd->add_option("--questions", o->e.questions, "At least this many short questions")->capture_default_str();
  cmd->add_option("--describe", o->e.describe, "\"Describe the image.\" questions (CHAIR)")->capture_default_str();
  cmd->add_option("--per-scene", o->e.per_scene, "Short questions kept per scene (1..12)")->capture_default_str();
  cmd->add_option("--seed", o->e.base_seed, "Base seed of the held-out scenes")->capture_default_str();
  cmd->add_option("--max-new-tokens", o->e.short_max_new_tokens, "Most new tokens of a short answer")
      ->capture_default_str();
  cmd->add_option("--describe-max-new-tokens", o->e.describe_max_new_tokens, "Most new tokens of a description")
      ->capture_default_str();
  cmd->add_option("--json", o->json, "Write every figure to this JSON file");
  cmd->add_option("--samples", o->samples, "Write every answer as JSON lines (seed, question, expected, got, correct)");
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores)");
  cmd->add_flag("-v,--verbose", o->verbose, "One line per answer on stdout");
  cmd->add_option("--sample-seed", o->v.sampling.seed, "Seed of SGRS' draws")->capture_default_str();
  add_faithfulness_flags(cmd, o->v.faithfulness);
  // Later: --variant (ViSpec, VISOR) picks another VlmAnswerFn; the loop does not change.
  cmd->callback([o] {
    validate(o->e);  // option errors before the model loads
    set_threads(o->threads);
    VqaModel model = VqaModel::load(o->model);
    o->v.faithfulness.validate(model.model->config().text);
    VlmEvalOptions e = o->e;
    e.progress.should_cancel = cancel_on_interrupt();
    ProgressBar bar;
    if (o->verbose) e.log = [](const std::string& s) { std::printf("%s\n", s.c_str()); };
    else e.progress.on_step = [&bar](int s, int t, const std::string& stage) { bar.update(s, t, stage); };
    VqaTally tally;
    const VlmEvalResult r = run_vlm_eval(vqa_answerer(model, o->v, &tally), e);
    bar.finish();
    const std::string methods = o->v.faithfulness.describe();
    std::printf("model: %s\nmethods: %s\n%s", o->model.c_str(), methods.c_str(), format_vlm_eval_table(r, e).c_str());
    std::printf("generation: %lld tokens in %.1f s over %lld answers: %.1f tok/s (prefill included)\n",
                static_cast<long long>(tally.generated_tokens), tally.seconds, static_cast<long long>(tally.answers),
                tally.tokens_per_second());
    const FaithfulnessOptions& f = o->v.faithfulness;
    if (f.var)
      std::printf("VAR: %lld of %lld examined attention rows redistributed\n",
                  static_cast<long long>(tally.var_rows_changed), static_cast<long long>(tally.var_rows_examined));
    if (f.sgrs)
      std::printf("SGRS: %lld tokens: %lld first draws accepted, %lld redrawn, %lld fallbacks, %lld saliency calls\n",
                  static_cast<long long>(tally.sgrs.tokens), static_cast<long long>(tally.sgrs.first_draw_accepted),
                  static_cast<long long>(tally.sgrs.redrawn), static_cast<long long>(tally.sgrs.fallbacks),
                  static_cast<long long>(tally.sgrs.saliency_calls));
    if (!o->json.empty()) {
      Json j = vlm_eval_json(r, e);
      if (f.var) j["var_rows"] = {{"changed", tally.var_rows_changed}, {"examined", tally.var_rows_examined}};
      if (f.sgrs)
        j["sgrs"] = {{"tokens", tally.sgrs.tokens},
                     {"first_draw_accepted", tally.sgrs.first_draw_accepted},
                     {"redrawn", tally.sgrs.redrawn},
                     {"fallbacks", tally.sgrs.fallbacks},
                     {"saliency_calls", tally.sgrs.saliency_calls}};
      j["model"] = o->model;
      j["methods"] = methods;
      j["generation"] = {{"answers", tally.answers},
                         {"generated_tokens", tally.generated_tokens},
                         {"seconds", tally.seconds},
                         {"tokens_per_second", tally.tokens_per_second()}};
      write_text(o->json, j.dump(2) + "\n");
      std::printf("figures: %s\n", o->json.c_str());
    }
    if (!o->samples.empty()) {
      write_text(o->samples, vlm_eval_samples_jsonl(r));
      std::printf("samples: %s\n", o->samples.c_str());
    }
  });
}

}  // namespace iris::cli
