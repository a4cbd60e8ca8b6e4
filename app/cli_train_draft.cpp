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
#include "pipelines/draft_training.h"

namespace iris::cli {

namespace {

struct TrainDraftArgs {
  std::string target, data, out, init;
  int64_t steps = 2000, batch = 4, answer_tokens = 128, mtp_steps = 2, num_q = 2, eval_prompts = 8;
  double lr = 3e-4, noise = 0.1;
  uint64_t seed = 0;
  bool text_only = false;
};

void print_evaluation(const char* when, const DraftEvaluation& e) {
  std::printf("%s: tau %.2f accepted draft tokens per cycle (%lld cycles, %lld tokens)\n", when, e.tau,
              static_cast<long long>(e.cycles), static_cast<long long>(e.tokens));
}

void run_train_draft(const TrainDraftArgs& a) {
  namespace fs = std::filesystem;
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

  VispecDraft draft{nullptr};
  if (!a.init.empty()) {
    draft = load_vispec_draft(a.init);
  } else {
    draft = VispecDraft(VispecConfig::for_target(target->config(), a.num_q, !a.text_only));
    draft->init_weights(a.seed);
  }
  draft->attach(target);  // a draft that does not fit the target fails here, before any work

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

  DraftTrainOptions o;
  o.trainer.name = "draft";
  o.trainer.steps = a.steps;
  o.trainer.lr = a.lr;
  o.trainer.beta2 = 0.95;  // ViSpec's AdamW (0.9, 0.95), clip 0.5
  o.trainer.grad_clip = 0.5;
  o.trainer.warmup_steps = std::min<int64_t>(100, a.steps / 10);
  o.trainer.seed = a.seed;
  o.trainer.checkpoint_dir = a.out;
  o.trainer.checkpoint_every = 500;
  o.batch = a.batch;
  o.loss.mtp_steps = a.mtp_steps;
  o.loss.noise = a.noise;
  train_draft(target, draft, data, o);
  save_vispec_draft(draft, a.out);
  std::printf("saved the draft to %s\n", a.out.c_str());
  if (!eval_prompts.empty()) print_evaluation("after", evaluate_draft(target, draft, eval_prompts, eval));
}

}  // namespace

void add_train_draft_command(CLI::App& app) {
  auto args = std::make_shared<TrainDraftArgs>();
  CLI::App* cmd = train_command(app)->add_subcommand(
      "draft", "Train a ViSpec draft model (speculative decoding) against a frozen LLaMA target");
  cmd->add_option("--target", args->target, "Target model folder (config.json + safetensors)")->required();
  cmd->add_option("--data", args->data, "prompts.jsonl: {\"prompt\": text} or {\"ids\": [..]} per line")->required();
  cmd->add_option("--out", args->out, "Draft folder to write (the training state is kept there; a rerun resumes it)")->required();
  cmd->add_option("--init", args->init, "Start from this draft folder instead of random weights");
  cmd->add_option("--steps", args->steps, "Optimizer steps")->capture_default_str();
  cmd->add_option("--lr", args->lr, "Peak learning rate")->capture_default_str();
  cmd->add_option("--batch", args->batch, "Sequences per step")->capture_default_str();
  cmd->add_option("--answer-tokens", args->answer_tokens, "Longest answer the target generates per prompt")->capture_default_str();
  cmd->add_option("--mtp", args->mtp_steps, "Multi-token-prediction passes fed with the draft's own outputs")->capture_default_str();
  cmd->add_option("--noise", args->noise, "Uniform noise on the input features")->capture_default_str();
  cmd->add_option("--num-q", args->num_q, "Vision adaptor queries (num_q - 1 image tokens + the global feature)")->capture_default_str();
  cmd->add_flag("--text-only", args->text_only, "No vision adaptor and no global feature (an EAGLE-2 draft)");
  cmd->add_option("--eval-prompts", args->eval_prompts, "Prompts to measure tau on before and after")->capture_default_str();
  cmd->add_option("--seed", args->seed, "Seed")->capture_default_str();
  cmd->callback([args] { run_train_draft(*args); });
}

}  // namespace iris::cli
