// `iris eval vlm`: a Tinyworld VLM on held-out scenes: short-answer accuracy, POPE per split,
// CHAIR on descriptions (pipelines/vlm_eval.h). A VISOR folder is answered by the VISOR decoder
// at --visor-budget (the router by default), with its visual compute against the LLaVA path.
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>

#include "app/cli.h"
#include "app/faithfulness_flags.h"
#include "app/progress_bar.h"
#include "core/error.h"
#include "core/mmap_file.h"
#include "core/runtime.h"
#include "pipelines/visor_vqa.h"
#include "pipelines/vlm_eval.h"
#include "pipelines/vqa.h"

namespace iris::cli {

namespace {

void write_text(const std::string& path, const std::string& text) { write_file_atomic(path, text.data(), text.size()); }

// What a VISOR eval's answers cost beyond VqaTally's counts: visual FLOPs (VISOR and the LLaVA
// path on the same answers) and the budgets run.
struct VisorTally {
  double flops = 0, llava_flops = 0;
  std::map<int64_t, int64_t> budgets;
  double saving() const { return flops > 0 ? llava_flops / flops : 0.0; }
  double mflops_per_answer(double f, int64_t answers) const { return answers ? f / answers / 1e6 : 0.0; }
  Json json(int64_t requested_budget, int64_t answers) const {
    Json b = Json::object();
    for (const auto& [k, n] : budgets) b[std::to_string(k)] = n;
    return {{"budget", requested_budget < 0 ? Json("auto") : Json(requested_budget)},
            {"answers", answers},
            {"visual_mflops_per_answer", mflops_per_answer(flops, answers)},
            {"llava_visual_mflops_per_answer", mflops_per_answer(llava_flops, answers)},
            {"saving_vs_llava", saving()},
            {"budgets_run", b}};
  }
};

}  // namespace

void add_eval_vlm_command(CLI::App& app) {
  auto* cmd = eval_command(app)->add_subcommand(
      "vlm", "VQA accuracy, POPE and CHAIR of a LLaVA-style model on held-out Tinyworld scenes");
  struct Opts {
    std::string model, json, samples, visor_budget;
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
  cmd->add_option("--visor-budget", o->visor_budget,
                  "VISOR folders: auto (the router picks) or 0..N self-attention layers on (default auto)");
  add_faithfulness_flags(cmd, o->v.faithfulness);
  // The loop reaches the model through a VlmAnswerFn: the LLaVA decoder (with the faithfulness
  // methods) or, for a VISOR folder, the VISOR one. (ViSpec's output is plain decoding's.)
  cmd->callback([o] {
    validate(o->e);  // option errors before the model loads
    const int64_t budget = parse_visor_budget(o->visor_budget);
    const bool visor = is_visor_folder(o->model);
    if (visor && o->v.faithfulness.any())
      throw ConfigError("--var, --locore and --sgrs run on plain LLaVA decoding, not with a VISOR folder (" + o->model +
                        ")");
    if (!visor && !o->visor_budget.empty())
      throw ConfigError("--visor-budget: " + o->model + " is a LLaVA folder, not a VISOR one (iris train visor makes one)");
    set_threads(o->threads);
    std::optional<VisorModel> visor_model;
    std::optional<VqaModel> llava_model;
    if (visor) {
      visor_model.emplace(VisorModel::load(o->model));
      if (budget > visor_model->visor->max_budget())
        throw ConfigError("--visor-budget " + o->visor_budget + ": " + o->model + " has budgets 0.." +
                          std::to_string(visor_model->visor->max_budget()));
    } else {
      llava_model.emplace(VqaModel::load(o->model));
      o->v.faithfulness.validate(llava_model->model->config().text);
    }
    VqaModel& model = visor ? visor_model->base : *llava_model;
    VqaTally tally;
    VisorTally vt;
    VlmAnswerFn visor_answer_fn = [&](const std::string& question, const Image& image, int64_t max_new_tokens) {
      VisorAskOptions a;
      a.vqa.max_new_tokens = max_new_tokens;
      a.budget = budget;
      const auto t0 = std::chrono::steady_clock::now();
      const VisorAnswer r = visor_ask(*visor_model, image, question, a);
      tally.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      ++tally.answers;
      tally.generated_tokens += static_cast<int64_t>(r.answer.tokens.size());
      vt.flops += r.flops.total();
      vt.llava_flops += r.llava_flops.total();
      ++vt.budgets[r.budget];
      return r.answer.text;
    };
    VlmEvalOptions e = o->e;
    e.progress.should_cancel = cancel_on_interrupt();
    ProgressBar bar;
    if (o->verbose) e.log = [](const std::string& s) { std::printf("%s\n", s.c_str()); };
    else e.progress.on_step = [&bar](int s, int t, const std::string& stage) { bar.update(s, t, stage); };
    const VlmEvalResult r = run_vlm_eval(visor ? visor_answer_fn : vqa_answerer(model, o->v, &tally), e);
    bar.finish();
    const std::string methods =
        visor ? "VISOR, budget " + (budget < 0 ? std::string("auto (router)") : std::to_string(budget))
              : o->v.faithfulness.describe();
    std::printf("model: %s\nmethods: %s\n%s", o->model.c_str(), methods.c_str(), format_vlm_eval_table(r, e).c_str());
    std::printf("generation: %lld tokens in %.1f s over %lld answers: %.1f tok/s (prefill included)\n",
                static_cast<long long>(tally.generated_tokens), tally.seconds, static_cast<long long>(tally.answers),
                tally.tokens_per_second());
    if (visor) {
      std::string used;
      for (const auto& [k, n] : vt.budgets) used += " " + std::to_string(k) + "=" + std::to_string(n);
      std::printf("VISOR visual compute: %.2f MFLOPs per answer, LLaVA path %.2f: %.2fx less (budgets run:%s)\n",
                  vt.mflops_per_answer(vt.flops, tally.answers), vt.mflops_per_answer(vt.llava_flops, tally.answers),
                  vt.saving(), used.c_str());
    }
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
      if (visor) j["visor"] = vt.json(budget, tally.answers);
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
