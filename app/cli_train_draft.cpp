// iris train draft --target DIR --data prompts.jsonl --out DIR: trains a ViSpec draft model for
// speculative decoding against a frozen LLaMA target, on answers the target generates itself.
#include <algorithm>
#include <cstdio>
#include <functional>
#include <filesystem>
#include <memory>
#include <string>

#include "app/cli.h"
#include "core/sentencepiece.h"
#include "core/error.h"
#include "core/json_util.h"
#include "pipelines/draft_training.h"
#include "pipelines/vqa.h"

namespace iris::cli {

namespace {

struct TrainDraftArgs {
  std::string target, data, out, init;
  int64_t steps = 2000, batch = 4, answer_tokens = 128, mtp_steps = 2, num_q = 2, eval_prompts = 8;
  int64_t scenes = 256;  // LLaVA targets: Tinyworld training scenes described by the target
  double lr = 3e-4, noise = 0.1;
  uint64_t seed = 0;
  bool text_only = false;
  bool f16 = false;
};

void print_evaluation(const char* when, const DraftEvaluation& e) {
  std::printf("%s: tau %.2f accepted draft tokens per cycle (%lld cycles, %lld tokens)\n", when, e.tau,
              static_cast<long long>(e.cycles), static_cast<long long>(e.tokens));
}

// The trainer settings both target kinds share (ViSpec's AdamW betas (0.9, 0.95), clip 0.5).
DraftTrainOptions draft_train_options(const TrainDraftArgs& a) {
  DraftTrainOptions o;
  o.trainer.name = "draft";
  o.trainer.steps = a.steps;
  o.trainer.lr = a.lr;
  o.trainer.beta2 = 0.95;
  o.trainer.grad_clip = 0.5;
  o.trainer.warmup_steps = std::min<int64_t>(100, a.steps / 10);
  o.trainer.seed = a.seed;
  o.trainer.checkpoint_dir = a.out;
  o.trainer.checkpoint_every = 250;
  o.batch = a.batch;
  o.loss.mtp_steps = a.mtp_steps;
  o.loss.noise = a.noise;
  return o;
}

// --init's draft or a fresh one for `target`, attached (a draft that does not fit the target
// fails here, before any work).
VispecDraft new_or_loaded_draft(const TrainDraftArgs& a, LlamaForCausalLM& target) {
  VispecDraft draft{nullptr};
  if (!a.init.empty()) {
    draft = load_vispec_draft(a.init);
  } else {
    draft = VispecDraft(VispecConfig::for_target(target->config(), a.num_q, !a.text_only));
    draft->init_weights(a.seed);
  }
  draft->attach(target);
  return draft;
}

bool is_llava_folder(const std::string& folder) {
  const std::filesystem::path cfg = std::filesystem::path(folder) / "config.json";
  if (!std::filesystem::exists(cfg)) return false;
  const Json j = read_json_file(cfg.string());
  return j.is_object() && j.contains("text_config");
}

void print_speed(const char* when, const SpeedEvaluation& e) {
  std::printf("%s: tau %.2f accepted draft tokens per cycle (%lld cycles, %lld tokens); speculative %.0f ms vs plain "
              "%.0f ms: %.2fx; %lld/%lld outputs identical\n",
              when, e.draft.tau, static_cast<long long>(e.draft.cycles), static_cast<long long>(e.draft.tokens),
              e.speculative_ms, e.plain_ms, e.speedup(), static_cast<long long>(e.identical),
              static_cast<long long>(e.prompts));
}

// A draft for a LLaVA folder's language model, trained on its descriptions of Tinyworld scenes.
void run_train_llava_draft(const TrainDraftArgs& a) {
  VqaModel m = VqaModel::load(a.target);
  LlamaForCausalLM& target = m.model->language_model;
  VispecDraft draft = new_or_loaded_draft(a, target);

  std::printf("describing %lld Tinyworld scenes with the target (up to %lld tokens each)\n",
              static_cast<long long>(a.scenes), static_cast<long long>(a.answer_tokens));
  const std::vector<EmbedsPrompt> prompts = tinyworld_describe_prompts(m, a.scenes + a.eval_prompts, a.seed + 1, /*held_out=*/false);
  std::vector<DraftExample> data;
  for (int64_t i = 0; i < a.scenes; ++i) {
    data.push_back(make_draft_example(target, prompts[i].embeds, prompts[i].image_mask, a.answer_tokens));
    std::printf("\r  %lld/%lld", static_cast<long long>(i + 1), static_cast<long long>(a.scenes));
    std::fflush(stdout);
  }
  std::printf("\n");
  // Held-out prompts for the before/after measurement: scenes after the training ones.
  const std::vector<EmbedsPrompt> eval_prompts(prompts.begin() + a.scenes, prompts.end());
  SpeculativeOptions eval;
  eval.generate.max_new_tokens = a.answer_tokens;

  train_draft(target, draft, data, draft_train_options(a));
  save_vispec_draft(draft, a.out, a.f16);
  std::printf("saved the draft to %s\n", a.out.c_str());
  if (!eval_prompts.empty()) {
    print_speed("chain of 4", [&] {
      SpeculativeOptions c = eval;
      c.tree = DraftTreeOptions::chain(4);
      return evaluate_draft_speed(target, draft, eval_prompts, c);
    }());
    print_speed("EAGLE-2 tree", evaluate_draft_speed(target, draft, eval_prompts, eval));
  }
}

void run_train_draft(const TrainDraftArgs& a) {
  namespace fs = std::filesystem;
  if (is_llava_folder(a.target)) return run_train_llava_draft(a);
  if (a.data.empty()) throw ConfigError("--data: a prompt file is needed for a text-only target (" + a.target + ")");
  LlamaForCausalLM target = load_llama(a.target);
  std::unique_ptr<SentencePieceTokenizer> tok;
  const fs::path spm = fs::path(a.target) / "tokenizer.model";
  if (fs::exists(spm)) tok = std::make_unique<SentencePieceTokenizer>(SentencePieceTokenizer::load(spm.string()));
  const int64_t bos = target->config().bos_token_id;
  std::function<std::vector<int64_t>(const std::string&)> encode;
  if (tok)
    encode = [&](const std::string& text) {
      std::vector<int64_t> ids;
      if (bos >= 0) ids.push_back(bos);
      for (int t : tok->encode(text)) ids.push_back(t);
      return ids;
    };
  const std::vector<std::vector<int64_t>> prompts = read_prompt_file(a.data, encode);

  VispecDraft draft = new_or_loaded_draft(a, target);

  std::printf("generating %zu answers with the target (up to %lld tokens each)\n", prompts.size(),
              static_cast<long long>(a.answer_tokens));
  std::vector<DraftExample> data;
  for (size_t i = 0; i < prompts.size(); ++i) {
    data.push_back(make_draft_example(target, prompts[i], a.answer_tokens));
    std::printf("\r  %zu/%zu", i + 1, prompts.size());
    std::fflush(stdout);
  }
  std::printf("\n");

  SpeculativeOptions eval;
  eval.generate.max_new_tokens = a.answer_tokens;
  const std::vector<std::vector<int64_t>> eval_prompts(
      prompts.begin(), prompts.begin() + std::min<size_t>(prompts.size(), static_cast<size_t>(std::max<int64_t>(a.eval_prompts, 0))));
  if (!eval_prompts.empty()) print_evaluation("before", evaluate_draft(target, draft, eval_prompts, eval));

  train_draft(target, draft, data, draft_train_options(a));
  save_vispec_draft(draft, a.out, a.f16);
  std::printf("saved the draft to %s\n", a.out.c_str());
  if (!eval_prompts.empty()) print_evaluation("after", evaluate_draft(target, draft, eval_prompts, eval));
}

}  // namespace

void add_train_draft_command(CLI::App& app) {
  auto args = std::make_shared<TrainDraftArgs>();
  CLI::App* cmd = train_command(app)->add_subcommand(
      "draft", "Train a ViSpec draft model (speculative decoding) against a frozen LLaMA or LLaVA target");
  cmd->add_option("--target", args->target, "Target model folder (config.json + safetensors)")->required();
  cmd->add_option("--data", args->data, "prompts.jsonl: {\"prompt\": text} or {\"ids\": [..]} per line (LLaMA targets)");
  cmd->add_option("--scenes", args->scenes, "LLaVA targets: Tinyworld scenes the target describes for training")
      ->capture_default_str();
  cmd->add_option("--out", args->out, "Draft folder to write (the training state is kept there; a rerun resumes it)")->required();
  cmd->add_option("--init", args->init, "Start from this draft folder instead of random weights");
  cmd->add_option("--steps", args->steps, "Optimizer steps")->capture_default_str();
  cmd->add_option("--lr", args->lr, "Peak learning rate")->capture_default_str();
  cmd->add_option("--batch", args->batch, "Sequences per step")->capture_default_str();
  cmd->add_option("--answer-tokens", args->answer_tokens, "Longest answer the target generates per prompt")->capture_default_str();
  cmd->add_option("--mtp", args->mtp_steps, "Multi-token-prediction passes fed with the draft's own outputs")->capture_default_str();
  cmd->add_option("--noise", args->noise, "Uniform noise on the input features")->capture_default_str();
  cmd->add_option("--num-q", args->num_q, "Vision adaptor queries (num_q - 1 image tokens + the global feature)")->capture_default_str();
  cmd->add_flag("--f16", args->f16, "Store the draft's weights in F16 (half the size; loaded back as F32)");
  cmd->add_flag("--text-only", args->text_only, "No vision adaptor and no global feature (an EAGLE-2 draft)");
  cmd->add_option("--eval-prompts", args->eval_prompts, "Prompts to measure tau on before and after")->capture_default_str();
  cmd->add_option("--seed", args->seed, "Seed")->capture_default_str();
  cmd->callback([args] { run_train_draft(*args); });
}

}  // namespace iris::cli
