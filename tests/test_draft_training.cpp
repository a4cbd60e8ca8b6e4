// ViSpec draft training: the target's own answers, feature + token losses with multi-token
// prediction, and a few AdamW steps that must lower the loss and raise acceptance.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <random>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include "core/error.h"
#include "pipelines/draft_training.h"
#include "test_util.h"

namespace iris {
namespace {

LlamaForCausalLM small_target() {
  LlamaConfig c;
  c.vocab_size = 64;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 256;
  c.eos_token_ids = {-1};
  LlamaForCausalLM m(c);
  m->init_weights(41, 0.08);
  m->eval();
  return m;
}

std::vector<std::vector<int64_t>> prompts(int n) {
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<int64_t> tok(0, 63);
  std::vector<std::vector<int64_t>> out(n);
  for (auto& p : out)
    for (int i = 0; i < 6; ++i) p.push_back(tok(rng));
  return out;
}

TEST(DraftTrainingTest, ExamplesHoldTheTargetsAnswerAndFeatures) {
  LlamaForCausalLM target = small_target();
  const std::vector<int64_t> prompt{1, 2, 3, 4};
  const DraftExample ex = make_draft_example(target, prompt, 10);
  EXPECT_EQ(ex.prompt_length, 4);
  ASSERT_EQ(ex.embeds.size(1), 14);
  EXPECT_EQ(ex.hidden.sizes(), ex.embeds.sizes());
  // The answer is the target's greedy continuation.
  GenerateOptions g;
  g.max_new_tokens = 10;
  const GenerateResult r = generate(target, prompt, g);
  c10::InferenceMode guard;
  const at::Tensor answer = target->model->embed(at::tensor(r.tokens, at::kLong).view({1, -1}));
  EXPECT_TRUE(at::allclose(ex.embeds.narrow(1, 4, 10), answer));
}

TEST(DraftTrainingTest, TrainingLowersLossAndRaisesAcceptance) {
  LlamaForCausalLM target = small_target();
  const auto ps = prompts(6);
  std::vector<DraftExample> data;
  for (const auto& p : ps) data.push_back(make_draft_example(target, p, 24));
  VispecDraft draft(VispecConfig::for_target(target->config()));
  draft->init_weights(3);
  draft->attach(target);

  DraftLossOptions eval_loss;
  eval_loss.noise = 0;
  auto mean_loss = [&] {
    at::NoGradGuard no_grad;
    double s = 0;
    for (const auto& ex : data) s += draft_loss(draft, target, ex, eval_loss, nullptr).total.item<double>();
    return s / data.size();
  };
  SpeculativeOptions spec;
  spec.generate.max_new_tokens = 24;
  spec.tree = DraftTreeOptions::chain(3);
  const double loss0 = mean_loss();
  const DraftEvaluation before = evaluate_draft(target, draft, ps, spec);

  DraftTrainOptions o;
  o.trainer.steps = 80;
  o.trainer.lr = 3e-3;
  o.trainer.log_every = 0;
  o.trainer.warmup_steps = 5;
  o.batch = 2;
  o.loss.mtp_steps = 1;
  train_draft(target, draft, data, o);
  const double loss1 = mean_loss();
  const DraftEvaluation after = evaluate_draft(target, draft, ps, spec);
  std::printf("draft training: loss %.3f -> %.3f, tau %.2f -> %.2f\n", loss0, loss1, before.tau, after.tau);
  EXPECT_LT(loss1, 0.7 * loss0) << "loss " << loss0 << " -> " << loss1;
  EXPECT_GT(after.tau, before.tau + 0.3) << "tau " << before.tau << " -> " << after.tau;
  EXPECT_EQ(after.tokens, before.tokens);  // lossless either way: same number of tokens
}

TEST(DraftTrainingTest, ImageExamplesTrainTheVisionAdaptor) {
  LlamaForCausalLM target = small_target();
  at::Tensor embeds, mask;
  {
    c10::InferenceMode guard;
    embeds = target->model->embed(at::tensor(std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8}, at::kLong).view({1, -1})).clone();
    embeds.narrow(1, 1, 5).normal_(0.0, 0.1);
    mask = at::zeros({1, 8}, at::kBool);
    mask.narrow(1, 1, 5).fill_(true);
  }
  const DraftExample ex = make_draft_example(target, embeds, mask, 8);
  ASSERT_TRUE(ex.image_mask.defined());
  for (auto& p : target->parameters()) p.requires_grad_(false);
  VispecDraft draft(VispecConfig::for_target(target->config()));
  draft->init_weights(3);
  draft->attach(target);
  DraftLossOptions o;
  o.mtp_steps = 2;
  const DraftLoss l = draft_loss(draft, target, ex, o, nullptr);
  EXPECT_EQ(l.positions, 8);  // slots 7..14: every answer position
  l.total.backward();
  ASSERT_TRUE(draft->imadpt->q.grad().defined());
  EXPECT_GT(draft->imadpt->q.grad().abs().sum().item<double>(), 0.0);
  // g reaches the text through img_fc's g half.
  EXPECT_GT(draft->img_fc->weight.grad().narrow(1, 64, 64).abs().sum().item<double>(), 0.0);
}

TEST(DraftTrainingTest, PromptFile) {
  const std::string path = testing_util::scratch("prompts.jsonl");
  {
    std::ofstream f(path);
    f << "{\"ids\": [1, 2, 3]}\n\n{\"prompt\": \"ab\"}\n";
  }
  const auto ps = read_prompt_file(path, [](const std::string& s) { return std::vector<int64_t>(s.size(), 9); });
  ASSERT_EQ(ps.size(), 2u);
  EXPECT_EQ(ps[0], (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(ps[1], (std::vector<int64_t>{9, 9}));
  {
    std::ofstream f(path);
    f << "{\"ids\": [1]}\n{\"text\": 3}\n";
  }
  try {
    read_prompt_file(path, nullptr);
    FAIL() << "expected FormatError";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("prompts.jsonl:2"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace iris
