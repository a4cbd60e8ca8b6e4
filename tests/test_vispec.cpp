// ViSpec draft model, token-tree drafting, acceptance and the speculative generation loop.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include "core/error.h"
#include "core/tensor_io.h"
#include "test_util.h"
#include "vlm/vispec.h"

namespace iris {
namespace {

LlamaConfig tiny_config(int64_t vocab = 96) {
  LlamaConfig c;
  c.vocab_size = vocab;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 512;
  c.eos_token_ids = {-1};  // never stop early: every run emits max_new_tokens
  return c;
}

LlamaForCausalLM tiny_target(uint64_t seed, int64_t vocab = 96) {
  LlamaForCausalLM m(tiny_config(vocab));
  m->init_weights(seed, 0.08);
  m->eval();
  return m;
}

VispecDraft tiny_draft(const LlamaForCausalLM& target, uint64_t seed, bool vision = true) {
  VispecDraft d(VispecConfig::for_target(target->config(), 2, vision));
  d->init_weights(seed, 0.08);
  d->eval();
  return d;
}

std::vector<int64_t> random_prompt(std::mt19937_64& rng, int64_t vocab, int64_t len) {
  std::uniform_int_distribution<int64_t> tok(0, vocab - 1);
  std::vector<int64_t> p(static_cast<size_t>(len));
  for (auto& t : p) t = tok(rng);
  return p;
}

// A prompt with an "image": the target's embeddings with a run of random feature vectors.
std::pair<at::Tensor, at::Tensor> image_prompt(LlamaForCausalLM& target, std::mt19937_64& rng, int64_t text_before,
                                               int64_t image_len, int64_t text_after) {
  c10::InferenceMode guard;
  const std::vector<int64_t> ids = random_prompt(rng, target->config().vocab_size, text_before + image_len + text_after);
  at::Tensor emb = target->model->embed(at::tensor(ids, at::kLong).view({1, -1})).clone();
  at::Generator gen = at::detail::createCPUGenerator(rng());
  emb.narrow(1, text_before, image_len).normal_(0.0, 0.1, gen);
  at::Tensor mask = at::zeros({1, emb.size(1)}, at::kBool);
  mask.narrow(1, text_before, image_len).fill_(true);
  return {emb, mask};
}

GenerateOptions greedy_options(int64_t n) {
  GenerateOptions g;
  g.max_new_tokens = n;
  return g;
}

TEST(VispecConfigTest, JsonRoundTripAndValidation) {
  const VispecConfig c = VispecConfig::for_target(tiny_config(), 3, true);
  const VispecConfig back = VispecConfig::from_json(c.to_json(), "config.json");
  EXPECT_EQ(back.num_q, 3);
  EXPECT_TRUE(back.vision);
  EXPECT_EQ(back.text.hidden_size, 64);
  EXPECT_EQ(back.text.num_hidden_layers, 1);
  Json bad = c.to_json();
  bad["text_config"]["num_hidden_layers"] = 2;
  EXPECT_THROW(VispecConfig::from_json(bad, "config.json"), ConfigError);
  bad = c.to_json();
  bad["model_type"] = "llama";
  EXPECT_THROW(VispecConfig::from_json(bad, "config.json"), ConfigError);
}

TEST(VispecDraftTest, ImageRunsCompressToLastPositionsAndGlobalFeature) {
  LlamaForCausalLM target = tiny_target(1);
  VispecDraft draft = tiny_draft(target, 2);
  draft->attach(target);
  c10::InferenceMode guard;
  const int64_t n = 12, H = 64;
  at::Generator gen = at::detail::createCPUGenerator(3);
  const at::Tensor next = at::empty({1, n, H}).normal_(0, 1, gen);
  const at::Tensor hidden = at::empty({1, n, H}).normal_(0, 1, gen);
  at::Tensor img = at::zeros({1, n}, at::kBool);
  img.narrow(1, 3, 5).fill_(true);  // slots 3..7 see image tokens next
  const at::Tensor pos = at::arange(n, at::kLong).view({1, n});
  KVCache cache = draft->new_cache(32);
  const DraftSequenceOutput o = draft->forward_sequence(next, hidden, img, pos, at::Tensor(), &cache);
  // 3 text slots, the image as num_q - 1 = 1 token at its last position (7), 4 text slots.
  const std::vector<int64_t> want{0, 1, 2, 7, 8, 9, 10, 11};
  EXPECT_EQ(o.slots, want);
  EXPECT_EQ(o.out.size(1), 8);
  EXPECT_EQ(cache.length(), 8);
  EXPECT_EQ(cache.positions()[0][3].item<int64_t>(), 7);
  EXPECT_EQ(cache.next_positions()[0], 12);
  // g is the adaptor's last output over the image's embeddings.
  const at::Tensor a = draft->imadpt(next.select(0, 0).narrow(0, 3, 5));
  EXPECT_TRUE(at::allclose(o.g, a.narrow(0, 1, 1), 1e-5, 1e-6));
  // img_fc starts as identity on h: before the image (g = 0) and after it, the text slots equal
  // what a text-only pass computes (g only enters through img_fc's zero half).
  KVCache c2 = draft->new_cache(32);
  const at::Tensor t = draft->forward_text(next.narrow(1, 0, 3), hidden.narrow(1, 0, 3), at::Tensor(), pos.narrow(1, 0, 3), &c2);
  EXPECT_TRUE(at::allclose(t, o.out.narrow(1, 0, 3), 1e-5, 1e-6));
  // A text-only draft runs every slot.
  VispecDraft plain = tiny_draft(target, 2, false);
  plain->attach(target);
  KVCache c3 = plain->new_cache(32);
  EXPECT_EQ(plain->forward_sequence(next, hidden, img, pos, at::Tensor(), &c3).out.size(1), n);
}

TEST(VispecDraftTest, SaveLoadRoundTripStrict) {
  LlamaForCausalLM target = tiny_target(4);
  VispecDraft draft = tiny_draft(target, 5);
  const std::string dir = testing_util::scratch("draft");
  save_vispec_draft(draft, dir);
  VispecDraft back = load_vispec_draft(dir);
  auto a = draft->named_parameters(), b = back->named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (const auto& p : a) EXPECT_TRUE(at::equal(p.value(), b[p.key()])) << p.key();
  // An extra key is an error naming it.
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& p : a) tensors.emplace_back(p.key(), p.value().detach());
  tensors.emplace_back("embed_tokens.weight", at::zeros({96, 64}));
  write_safetensors(dir + "/model.safetensors", tensors);
  try {
    load_vispec_draft(dir);
    FAIL() << "expected CheckpointError";
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("embed_tokens.weight"), std::string::npos) << e.what();
  }
}

TEST(VispecDraftTest, MismatchedDraftIsRejectedBeforeGeneration) {
  LlamaForCausalLM target = tiny_target(6);
  LlamaConfig wide = tiny_config();
  wide.hidden_size = 32;
  wide.head_dim = 8;
  VispecDraft d1(VispecConfig::for_target(wide));
  SpeculativeOptions opt;
  opt.generate = greedy_options(4);
  try {
    speculative_generate(target, d1, std::vector<int64_t>{1, 2, 3}, opt);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("hidden size"), std::string::npos) << e.what();
  }
  VispecDraft d2(VispecConfig::for_target(tiny_config(100)));
  try {
    speculative_generate(target, d2, std::vector<int64_t>{1, 2, 3}, opt);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("vocabulary"), std::string::npos) << e.what();
  }
  VispecDraft ok = tiny_draft(target, 7);
  opt.generate.sampling.repetition_penalty = 1.2f;
  EXPECT_THROW(speculative_generate(target, ok, std::vector<int64_t>{1, 2, 3}, opt), ConfigError);
}

// Greedy speculative output equals plain greedy output, token for token.
void expect_lossless(const DraftTreeOptions& tree, bool with_image, int prompts, uint64_t seed) {
  LlamaForCausalLM target = tiny_target(seed);
  VispecDraft draft = tiny_draft(target, seed + 100);
  std::mt19937_64 rng(seed);
  SpeculativeOptions opt;
  opt.generate = greedy_options(20);
  opt.tree = tree;
  int64_t cycles = 0, accepted = 0;
  for (int i = 0; i < prompts; ++i) {
    at::Tensor emb, mask;
    if (with_image) {
      std::tie(emb, mask) = image_prompt(target, rng, 1 + i % 3, 6 + i % 5, 2 + i % 4);
    } else {
      c10::InferenceMode guard;
      emb = target->model->embed(at::tensor(random_prompt(rng, 96, 3 + i % 9), at::kLong).view({1, -1}));
    }
    const GenerateResult plain = plain_generate(target, emb, mask, opt.generate);
    std::vector<int64_t> streamed;
    const SpeculativeResult spec = speculative_generate(target, draft, emb, mask, opt, [&](int64_t t, const std::string&) {
      streamed.push_back(t);
      return true;
    });
    ASSERT_EQ(spec.result.tokens, plain.tokens) << "prompt " << i;
    ASSERT_EQ(streamed, plain.tokens);
    EXPECT_EQ(spec.stats.target_forwards, spec.stats.cycles + 1);
    // The phases are parts of the decode time (drafting and verification run in every cycle).
    const SpeculativeStats& st = spec.stats;
    EXPECT_LE(st.draft_ms + st.verify_ms + st.catchup_ms, st.decode_ms * 1.0001 + 1e-6);
    if (st.cycles > 0) EXPECT_GT(st.verify_ms, 0.0);
    cycles += spec.stats.cycles;
    accepted += spec.stats.accepted;
  }
  EXPECT_GT(cycles, 0);
  EXPECT_LE(accepted, cycles * tree.depth + cycles);
}

TEST(VispecGenerateTest, GreedyChainIsLossless) { expect_lossless(DraftTreeOptions::chain(4), false, 50, 11); }
TEST(VispecGenerateTest, GreedyTreeIsLossless) { expect_lossless({4, 3, 12}, false, 50, 12); }
TEST(VispecGenerateTest, GreedyChainWithImageIsLossless) { expect_lossless(DraftTreeOptions::chain(3), true, 50, 13); }
TEST(VispecGenerateTest, GreedyTreeWithImageIsLossless) { expect_lossless({8, 3, 30}, true, 50, 14); }

// Stops as the plain loop does: max tokens, eos (mid-cycle), the callback.
TEST(VispecGenerateTest, StopsAtMaxTokensAndEos) {
  LlamaForCausalLM target = tiny_target(21);
  VispecDraft draft = tiny_draft(target, 22);
  SpeculativeOptions opt;
  opt.generate = greedy_options(7);
  opt.tree = DraftTreeOptions::chain(3);
  const std::vector<int64_t> prompt{5, 6, 7, 8};
  const SpeculativeResult a = speculative_generate(target, draft, prompt, opt);
  ASSERT_EQ(a.result.tokens.size(), 7u);
  EXPECT_EQ(a.result.stop, StopReason::MaxTokens);
  // eos = the third token: generation stops right there, as the plain loop does.
  opt.generate.eos_token_ids = {a.result.tokens[2]};
  const SpeculativeResult b = speculative_generate(target, draft, prompt, opt);
  const GenerateResult p = generate(target, prompt, opt.generate);
  EXPECT_EQ(b.result.tokens, p.tokens);
  EXPECT_EQ(b.result.stop, StopReason::Eos);
  // The callback stops it too.
  opt.generate.eos_token_ids = {-1};
  int seen = 0;
  const SpeculativeResult c = speculative_generate(target, draft, prompt, opt, [&](int64_t, const std::string&) {
    return ++seen < 2;
  });
  EXPECT_EQ(c.result.tokens.size(), 2u);
  EXPECT_EQ(c.result.stop, StopReason::Callback);
}

// Rejection sampling over a tree keeps the target's distribution: the first emitted token
// follows p_root, and the second (after the first was drafted node 1's token) follows p_node1.
TEST(VispecAcceptTest, SamplingAcceptanceMatchesTargetDistribution) {
  const int64_t V = 6;
  TokenTree tree;
  tree.tokens = {0, 2, 0, 5, 1, 3};
  tree.parents = {-1, 0, 0, 0, 1, 1};
  const std::vector<std::vector<double>> probs{
      {0.10, 0.05, 0.40, 0.15, 0.20, 0.10},  // root
      {0.30, 0.25, 0.05, 0.10, 0.20, 0.10},  // node 1 (token 2)
      {1.0 / 6, 1.0 / 6, 1.0 / 6, 1.0 / 6, 1.0 / 6, 1.0 / 6},
      {0.5, 0.5, 0, 0, 0, 0},
      {0.2, 0.2, 0.2, 0.2, 0.1, 0.1},
      {0.05, 0.05, 0.3, 0.3, 0.2, 0.1}};
  std::mt19937_64 rng(123);
  const int N = 40000;
  std::vector<double> first(V, 0), second(V, 0);
  double after2 = 0;
  int64_t accepted = 0;
  for (int s = 0; s < N; ++s) {
    const TreeVerdict v = sample_accept_tree(tree, [&](int64_t node) { return probs[node]; }, rng);
    accepted += static_cast<int64_t>(v.path.size()) - 1;
    std::vector<int64_t> out;
    for (size_t i = 1; i < v.path.size(); ++i) out.push_back(tree.tokens[v.path[i]]);
    out.push_back(v.next_token);
    first[out[0]] += 1;
    if (out[0] == 2 && v.path.size() >= 2) {  // node 1 accepted: the next token comes from node 1
      second[out[1]] += 1;
      after2 += 1;
    }
  }
  for (int64_t t = 0; t < V; ++t) {
    const double p = probs[0][t], tol = 4.5 * std::sqrt(p * (1 - p) / N) + 1e-3;
    EXPECT_NEAR(first[t] / N, p, tol) << "first token " << t;
    const double q = probs[1][t], tol2 = 4.5 * std::sqrt(q * (1 - q) / after2) + 1e-3;
    EXPECT_NEAR(second[t] / after2, q, tol2) << "second token " << t;
  }
  EXPECT_GT(accepted, 0);
}

// End to end at temperature 1 on a small vocabulary: the second generated token (the first one
// a speculative cycle emits) follows the target's marginal sum_x p(x) p(y | x).
TEST(VispecAcceptTest, SpeculativeSamplingMatchesTargetMarginal) {
  const int64_t V = 12;
  LlamaForCausalLM target(tiny_config(V));
  target->init_weights(31, 0.3);  // peaky enough that drafts are sometimes right
  target->eval();
  VispecDraft draft = tiny_draft(target, 32);
  const std::vector<int64_t> prompt{3, 7, 1};
  std::vector<double> marginal(V, 0.0);
  {
    c10::InferenceMode guard;
    const at::Tensor p0 = at::softmax(target->forward(at::tensor(prompt, at::kLong).view({1, -1})).select(1, 2), -1)[0];
    for (int64_t x = 0; x < V; ++x) {
      std::vector<int64_t> px = prompt;
      px.push_back(x);
      const at::Tensor p1 = at::softmax(target->forward(at::tensor(px, at::kLong).view({1, -1})).select(1, 3), -1)[0];
      marginal = [&] {
        std::vector<double> m = marginal;
        for (int64_t y = 0; y < V; ++y) m[y] += p0[x].item<double>() * p1[y].item<double>();
        return m;
      }();
    }
  }
  SpeculativeOptions opt;
  opt.generate.max_new_tokens = 2;
  opt.generate.sampling.temperature = 1.0f;
  opt.tree = {3, 2, 8};
  const int N = 3000;
  std::vector<double> seen(V, 0.0);
  for (int s = 0; s < N; ++s) {
    opt.generate.sampling.seed = 1000 + s;
    const SpeculativeResult r = speculative_generate(target, draft, prompt, opt);
    ASSERT_EQ(r.result.tokens.size(), 2u);
    seen[r.result.tokens[1]] += 1;
  }
  for (int64_t y = 0; y < V; ++y) {
    const double p = marginal[y], tol = 4.5 * std::sqrt(p * (1 - p) / N) + 2e-3;
    EXPECT_NEAR(seen[y] / N, p, tol) << "token " << y;
  }
}

}  // namespace
}  // namespace iris
