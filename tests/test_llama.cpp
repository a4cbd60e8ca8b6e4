// LLaMA decoder: golden fixtures (transformers 4.40.2), KV cache (decode == full forward,
// truncation, token-tree verification), attention hooks, config and loading errors, sampling
// and the generation loop.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include "core/error.h"
#include "core/tensor_io.h"
#include "pipelines/parity.h"
#include "tests/test_util.h"
#include "vlm/attention_hooks.h"
#include "vlm/kv_cache.h"
#include "vlm/llama.h"
#include "vlm/sampling.h"

using namespace iris;

namespace {

std::string fixture(const std::string& name) { return std::string(IRIS_FIXTURES_DIR) + "/" + name; }

std::string describe(const ParityOutcome& out) {
  std::string s = "class " + out.cls + (out.class_supported ? "" : " (no runner)") + "\n";
  for (const ParityLine& l : out.lines)
    s += "  " + l.name + " max_abs " + std::to_string(l.max_abs) + (l.pass ? " PASS " : " FAIL ") + l.detail + "\n";
  return s;
}

double max_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

// A small config unlike the fixtures': 3 layers, 4 heads, 2 KV heads, head_dim 8.
LlamaConfig small_config() {
  LlamaConfig c;
  c.vocab_size = 97;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.max_position_embeddings = 64;
  c.rms_norm_eps = 1e-5;
  return c;
}

LlamaForCausalLM small_model(const LlamaConfig& c = small_config(), uint64_t seed = 7) {
  LlamaForCausalLM m(c);
  m->init_weights(seed, 0.2);  // large enough that attention is far from uniform
  m->eval();
  return m;
}

at::Tensor random_ids(int64_t b, int64_t l, int64_t vocab, uint64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  return at::randint(3, vocab, {b, l}, g, at::kLong);
}

at::Tensor ids(std::vector<int64_t> v) {
  return at::tensor(v, at::kLong).view({1, static_cast<int64_t>(v.size())});
}

// Logits of one full forward (no cache).
at::Tensor full_logits(LlamaForCausalLM& m, const at::Tensor& input) {
  at::NoGradGuard ng;
  return m->forward(input);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Golden fixtures

TEST(LlamaFixtures, LlamaPasses) {
  const ParityOutcome out = run_parity(fixture("llama.safetensors"));
  EXPECT_TRUE(out.class_supported);
  EXPECT_TRUE(out.passed()) << describe(out);
  EXPECT_GE(out.lines.size(), 7u) << describe(out);
}

TEST(LlamaFixtures, LlamaGenPasses) {
  const ParityOutcome out = run_parity(fixture("llama_gen.safetensors"));
  EXPECT_TRUE(out.class_supported);
  EXPECT_TRUE(out.passed()) << describe(out);
  EXPECT_GE(out.lines.size(), 13u) << describe(out);
}

TEST(LlamaFixtures, AutogradPathMatchesFixture) {
  // The LibTorch-op path (taken when gradients are on) against the same golden logits.
  const Fixture fx = open_fixture(fixture("llama_gen.safetensors"));
  LlamaForCausalLM m(LlamaConfig::from_json(fx.config, "fixture"));
  RenameTable t;
  t.ignore("input.").ignore("output.");
  load_llama_weights(m, *fx.store, "", t);
  const at::Tensor logits = m->forward(fx.tensor("output.tokens"));
  EXPECT_TRUE(logits.requires_grad());
  EXPECT_LE(max_diff(logits, fx.tensor("output.logits")), 1e-4);
}

// ---------------------------------------------------------------------------------------------
// KV cache

TEST(LlamaCache, DecodeOneByOneEqualsFullForward) {
  LlamaForCausalLM m = small_model();
  const at::Tensor input = random_ids(1, 20, 97, 1);
  const at::Tensor full = full_logits(m, input);  // [1, 20, V]
  at::NoGradGuard ng;
  KVCache cache = m->new_cache(1, 32);
  for (int64_t i = 0; i < 20; ++i) {
    const at::Tensor step = m->step(input.select(1, i), cache);  // [1, V]
    EXPECT_LE(max_diff(step, full.select(1, i)), 1e-5) << "position " << i;
  }
  EXPECT_EQ(cache.length(), 20);
  EXPECT_EQ(cache.next_positions()[0], 20);
}

TEST(LlamaCache, PrefillThenDecodeEqualsFullForwardBatched) {
  LlamaForCausalLM m = small_model();
  const at::Tensor input = random_ids(3, 16, 97, 2);
  const at::Tensor full = full_logits(m, input);
  at::NoGradGuard ng;
  KVCache cache = m->new_cache(3, 16);
  LlamaInput in;
  in.input_ids = input.narrow(1, 0, 10);  // prefill 10 (BLAS path), then 6 single steps
  const at::Tensor pre = m->forward(in, &cache).logits;
  EXPECT_LE(max_diff(pre, full.narrow(1, 0, 10)), 1e-5);
  for (int64_t i = 10; i < 16; ++i) EXPECT_LE(max_diff(m->step(input.select(1, i), cache), full.select(1, i)), 1e-5);
}

TEST(LlamaCache, FastPathEqualsAutogradPath) {
  LlamaForCausalLM m = small_model();
  const at::Tensor input = random_ids(2, 24, 97, 3);
  const at::Tensor with_grad = m->forward(input);  // LibTorch ops, autograd on
  ASSERT_TRUE(with_grad.requires_grad());
  EXPECT_LE(max_diff(with_grad, full_logits(m, input)), 1e-5);
}

TEST(LlamaCache, LongPrefillAcrossBlocksAndKernels) {
  // Over 128 query rows (the attention's row blocks), prefilled in two parts on one cache.
  LlamaConfig c = small_config();
  c.max_position_embeddings = 512;
  LlamaForCausalLM m = small_model(c);
  const at::Tensor input = random_ids(2, 300, 97, 23);
  const at::Tensor reference = m->forward(input);  // LibTorch ops, autograd on
  at::NoGradGuard ng;
  EXPECT_LE(max_diff(m->forward(input), reference), 1e-5);
  KVCache cache = m->new_cache(2, 300);
  LlamaInput a, b;
  a.input_ids = input.narrow(1, 0, 110);
  b.input_ids = input.narrow(1, 110, 190);
  const at::Tensor first = m->forward(a, &cache).logits, second = m->forward(b, &cache).logits;
  EXPECT_LE(max_diff(at::cat({first, second}, 1), reference), 1e-5);
  // The same with the oneDNN / AVX2 kernels off (LibTorch fallbacks of the fast path).
  const LlamaKernels saved = llama_kernels();
  set_llama_kernels({false, false});
  EXPECT_FALSE(llama_kernels().onednn_gemm);
  EXPECT_FALSE(llama_kernels().avx2);
  EXPECT_LE(max_diff(m->forward(input), reference), 1e-5);
  cache.reset();
  EXPECT_LE(max_diff(at::cat({m->forward(a, &cache).logits, m->forward(b, &cache).logits}, 1), reference), 1e-5);
  KVCache step_cache = m->new_cache(2, 8);
  EXPECT_LE(max_diff(m->step(input.select(1, 0), step_cache), reference.select(1, 0)), 1e-5);
  set_llama_kernels(saved);
}

TEST(LlamaCache, FewTokenPassesOnACacheEqualTheFullForward) {
  // 1..9 tokens after a prefill: every row count of the few-row GEMV kernels (1..8, as in
  // speculative verification) and the first count past them (the GEMM path).
  LlamaForCausalLM m = small_model();
  const at::Tensor input = random_ids(1, 20, 97, 31);
  const at::Tensor reference = m->forward(input);  // LibTorch ops, autograd on
  at::NoGradGuard ng;
  for (int64_t n = 1; n <= 9; ++n) {
    KVCache cache = m->new_cache(1, 20);
    LlamaInput pre, few;
    pre.input_ids = input.narrow(1, 0, 11);
    few.input_ids = input.narrow(1, 11, n);
    m->forward(pre, &cache);
    EXPECT_LE(max_diff(m->forward(few, &cache).logits, reference.narrow(1, 11, n)), 1e-5) << n << " tokens";
  }
}

TEST(LlamaCache, TruncateThenContinueEqualsNeverHavingGonePast) {
  LlamaForCausalLM m = small_model();
  const at::Tensor prompt = random_ids(1, 8, 97, 4);
  const at::Tensor wrong = random_ids(1, 4, 97, 5), right = random_ids(1, 4, 97, 6);
  at::NoGradGuard ng;
  LlamaInput p;
  p.input_ids = prompt;

  KVCache a = m->new_cache(1, 20);
  m->forward(p, &a);
  m->verify(wrong, a);  // 4 drafted tokens, all rejected
  EXPECT_EQ(a.length(), 12);
  a.truncate(8);
  EXPECT_EQ(a.next_positions()[0], 8);
  const at::Tensor got = m->verify(right, a);
  const at::Tensor got_next = m->step(ids({5}), a);

  KVCache b = m->new_cache(1, 20);
  m->forward(p, &b);
  const at::Tensor want = m->verify(right, b);
  const at::Tensor want_next = m->step(ids({5}), b);
  EXPECT_LE(max_diff(got, want), 1e-6);
  EXPECT_LE(max_diff(got_next, want_next), 1e-6);
  EXPECT_LE(max_diff(a.keys(1), b.keys(1)), 0.0);
}

TEST(LlamaCache, TreeVerifyEqualsSequentialDecodingOfEachBranch) {
  LlamaForCausalLM m = small_model();
  const at::Tensor prompt = random_ids(1, 9, 97, 7);
  // root 0 (the bonus token, not cached yet); 1, 2 children of 0; 3 child of 1; 4, 5 children of 2; 6 child of 5
  TokenTree tree;
  tree.tokens = {11, 21, 22, 31, 41, 42, 51};
  tree.parents = {-1, 0, 0, 1, 2, 2, 5};
  at::NoGradGuard ng;
  LlamaInput p;
  p.input_ids = prompt;
  KVCache cache = m->new_cache(1, 32);
  m->forward(p, &cache);
  const at::Tensor tree_logits = m->verify(ids(tree.tokens), cache, tree.attention_mask()).squeeze(0);  // [7, V]
  EXPECT_EQ(cache.positions()[0][9 + 6].item<int64_t>(), 9 + 3);  // node 6 sits at depth 3

  const std::vector<std::vector<int64_t>> branches = {{0, 1, 3}, {0, 2, 4}, {0, 2, 5, 6}};
  for (const auto& branch : branches) {
    KVCache seq = m->new_cache(1, 32);
    m->forward(p, &seq);
    for (int64_t node : branch) {
      const at::Tensor l = m->step(ids({tree.tokens[node]}), seq);
      EXPECT_LE(max_diff(l.squeeze(0), tree_logits[node]), 1e-5) << "node " << node;
    }
  }

  // Accept the path 0 -> 2 -> 5 -> 6: compact it and continue; equals the sequential cache.
  cache.keep_slots(9, {9 + 0, 9 + 2, 9 + 5, 9 + 6});
  EXPECT_EQ(cache.length(), 13);
  EXPECT_EQ(cache.next_positions()[0], 13);
  KVCache seq = m->new_cache(1, 32);
  m->forward(p, &seq);
  for (int64_t node : {0, 2, 5, 6}) m->step(ids({tree.tokens[node]}), seq);
  EXPECT_LE(max_diff(m->step(ids({7}), cache), m->step(ids({7}), seq)), 1e-5);
}

TEST(LlamaCache, GreedyTreeAcceptanceFollowsTheArgmax) {
  TokenTree tree;
  tree.tokens = {5, 1, 2, 3};
  tree.parents = {-1, 0, 0, 2};
  at::Tensor logits = at::zeros({4, 6});
  logits[0][2] = 1;  // root predicts 2 -> node 2
  logits[2][3] = 1;  // node 2 predicts 3 -> node 3
  logits[3][4] = 1;  // node 3 predicts 4 (the bonus)
  const TreeVerdict v = greedy_accept_tree(tree, logits);
  EXPECT_EQ(v.path, (std::vector<int64_t>{0, 2, 3}));
  EXPECT_EQ(v.next_token, 4);
  const at::Tensor mask = tree.attention_mask();
  EXPECT_TRUE(mask[3][2].item<bool>() && mask[3][0].item<bool>() && !mask[3][1].item<bool>());
  EXPECT_EQ(tree.depths(), (std::vector<int64_t>{0, 1, 1, 2}));
  TokenTree bad;
  bad.tokens = {1, 2};
  bad.parents = {-1, 1};
  EXPECT_THROW(bad.validate(), ConfigError);
}

TEST(LlamaCache, LeftPaddedBatchMatchesUnpaddedRows) {
  LlamaForCausalLM m = small_model();
  const at::Tensor a = random_ids(1, 9, 97, 8), b = random_ids(1, 6, 97, 9);
  // Row 1 is left-padded by 3.
  at::Tensor batch = at::cat({a, at::cat({at::zeros({1, 3}, at::kLong), b}, 1)}, 0);
  at::Tensor mask = at::ones({2, 9}, at::kLong);
  mask[1].narrow(0, 0, 3).fill_(0);
  at::NoGradGuard ng;
  KVCache cache = m->new_cache(2, 12);
  LlamaInput in;
  in.input_ids = batch;
  in.attention_mask = mask;
  const at::Tensor got = m->forward(in, &cache).logits;
  EXPECT_LE(max_diff(got[0], full_logits(m, a)[0]), 1e-5);
  EXPECT_LE(max_diff(got[1].narrow(0, 3, 6), full_logits(m, b)[0]), 1e-5);
  EXPECT_EQ(cache.next_positions(), (std::vector<int64_t>{9, 6}));
  // Decode two steps on the padded batch: each row as if alone.
  const at::Tensor next = at::tensor({7, 8}, at::kLong);
  const at::Tensor step = m->step(next, cache);
  EXPECT_LE(max_diff(step[0], full_logits(m, at::cat({a, ids({7})}, 1))[0][9]), 1e-5);
  EXPECT_LE(max_diff(step[1], full_logits(m, at::cat({b, ids({8})}, 1))[0][6]), 1e-5);
}

// A per-row [B, L, L] visibility mask (isolated training turns): row 0 has a prefix and two
// turns that each see the prefix and themselves; row 1 is plain causal. Each turn equals the
// prefix + that turn run alone (its positions follow the prefix), row 1 equals its own run.
TEST(LlamaCache, PerRowMaskIsolatesTurnsThatShareAPrefix) {
  LlamaForCausalLM m = small_model();
  at::NoGradGuard ng;
  const int64_t P = 4, T1 = 3, T2 = 5, L = P + T1 + T2;
  const at::Tensor x = random_ids(2, L, 97, 21);  // [2, L]
  at::Tensor mask = at::ones({2, L, L}, at::kBool).tril();
  for (int64_t i = P + T1; i < L; ++i)
    for (int64_t j = P; j < P + T1; ++j) mask[0][i][j] = false;  // turn 2 does not see turn 1
  LlamaInput in;
  in.input_ids = x;
  in.tree_mask = mask;
  const at::Tensor both = m->forward(in).logits;  // [2, L, V]

  auto alone = [&](const at::Tensor& row_ids) {
    LlamaInput one;
    one.input_ids = row_ids.unsqueeze(0);
    return m->forward(one).logits.squeeze(0);
  };
  const at::Tensor r0 = x[0];
  const at::Tensor turn1 = alone(r0.narrow(0, 0, P + T1));
  const at::Tensor turn2 = alone(at::cat({r0.narrow(0, 0, P), r0.narrow(0, P + T1, T2)}));
  EXPECT_LE(max_diff(both[0].narrow(0, 0, P + T1), turn1), 1e-5);
  EXPECT_LE(max_diff(both[0].narrow(0, P + T1, T2), turn2.narrow(0, P, T2)), 1e-5);
  EXPECT_LE(max_diff(both[1], alone(x[1])), 1e-5);

  in.tree_mask = at::ones({3, L, L}, at::kBool).tril();  // 3 rows for a batch of 2
  EXPECT_THROW(m->forward(in), ShapeError);
}

TEST(LlamaCache, ErrorsAreClear) {
  LlamaForCausalLM m = small_model();
  at::NoGradGuard ng;
  KVCache cache = m->new_cache(1, 8);
  LlamaInput in;
  in.input_ids = random_ids(1, 9, 97, 10);
  try {
    m->forward(in, &cache);
    FAIL() << "expected an error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("capacity of 8"), std::string::npos) << e.what();
  }
  EXPECT_EQ(cache.length(), 0);  // nothing committed
  in.input_ids = random_ids(1, 65, 97, 11);  // max_position_embeddings 64
  try {
    m->forward(in);
    FAIL() << "expected an error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("max_position_embeddings 64"), std::string::npos) << e.what();
  }
  EXPECT_THROW(generate(m, std::vector<int64_t>(70, 5)), ConfigError);
  EXPECT_THROW(cache.truncate(3), ConfigError);
  in.input_ids = ids({96, 97});  // 97 is outside the vocabulary
  EXPECT_THROW(m->forward(in), ConfigError);
  KVCache wrong_batch = m->new_cache(2, 8);
  in.input_ids = ids({1, 2});
  EXPECT_THROW(m->forward(in, &wrong_batch), ShapeError);
}

// ---------------------------------------------------------------------------------------------
// Attention hooks

TEST(LlamaHooks, WeightsSumToOneAndRespectCausality) {
  LlamaForCausalLM m = small_model();
  auto rec = std::make_shared<AttentionRecorder>();
  m->attention_hooks().add(rec);
  at::NoGradGuard ng;
  KVCache cache = m->new_cache(1, 16);
  LlamaInput in;
  in.input_ids = random_ids(1, 7, 97, 12);
  m->forward(in, &cache);
  m->step(ids({3}), cache);
  ASSERT_EQ(rec->records().size(), 6u);  // 3 layers x (prefill, decode)
  const auto& pre = rec->records()[0];
  EXPECT_TRUE(pre.prefill);
  EXPECT_EQ(pre.weights.sizes(), (std::vector<int64_t>{1, 4, 7, 7}));
  EXPECT_LE(max_diff(pre.weights.sum(-1), at::ones({1, 4, 7})), 1e-5);
  EXPECT_EQ(pre.weights.triu(1).abs().max().item<float>(), 0.0f);  // no look-ahead
  const auto& dec = rec->last(2);
  EXPECT_FALSE(dec.prefill);
  EXPECT_EQ(dec.past_length, 7);
  EXPECT_EQ(dec.weights.sizes(), (std::vector<int64_t>{1, 4, 1, 8}));
  EXPECT_LE(max_diff(dec.weights.sum(-1), at::ones({1, 4, 1})), 1e-5);
}

TEST(LlamaHooks, IdentityHookChangesNothing) {
  LlamaForCausalLM m = small_model();
  const at::Tensor input = random_ids(2, 11, 97, 13);
  const at::Tensor plain = full_logits(m, input);
  int calls = 0;
  m->attention_hooks().add(std::make_shared<FunctionHook>([&](int, at::Tensor&, const HookContext&) { ++calls; }));
  const at::Tensor hooked = full_logits(m, input);
  EXPECT_EQ(calls, 3);
  EXPECT_LE(max_diff(plain, hooked), 1e-5);
  // A hook that replaces the weights with a scaled-and-renormalised copy: still the same.
  m->attention_hooks().clear();
  m->attention_hooks().add(std::make_shared<FunctionHook>([](int, at::Tensor& w, const HookContext&) {
    w = (w * 3.0) / (w * 3.0).sum(-1, true);
  }));
  EXPECT_LE(max_diff(plain, full_logits(m, input)), 1e-5);
}

TEST(LlamaHooks, HooksChangeOutputAndSeeContext) {
  LlamaForCausalLM m = small_model();
  const at::Tensor input = random_ids(1, 6, 97, 14);
  const at::Tensor plain = full_logits(m, input);
  std::vector<int> seen;
  HookContext last;
  // Uniform attention on layer 1 only.
  auto hook = std::make_shared<FunctionHook>(
      [&](int layer, at::Tensor& w, const HookContext& ctx) {
        seen.push_back(layer);
        last = ctx;
        at::Tensor visible = (w > 0).to(w.scalar_type());
        w = visible / visible.sum(-1, true);
      },
      [](int layer, const HookContext&) { return layer == 1; });
  LlamaForwardOptions opt;
  AttentionHookList list;
  list.add(hook);
  opt.hooks = &list;  // a per-call list
  at::NoGradGuard ng;
  LlamaInput in;
  in.input_ids = input;
  in.image_mask = at::zeros({1, 6}, at::kBool);
  in.image_mask[0].narrow(0, 1, 3).fill_(true);
  const at::Tensor changed = m->forward(in, nullptr, opt).logits;
  EXPECT_EQ(seen, std::vector<int>{1});
  EXPECT_GT(max_diff(plain, changed), 1e-3);
  EXPECT_EQ(last.layer, 1);
  EXPECT_EQ(last.num_heads, 4);
  EXPECT_EQ(last.key_length, 6);
  ASSERT_TRUE(last.image_keys.defined());
  EXPECT_EQ(last.image_keys.sum().item<int64_t>(), 3);
  EXPECT_EQ(last.hidden_states.sizes(), (std::vector<int64_t>{1, 6, 32}));
  EXPECT_TRUE(m->attention_hooks().empty());  // per-call hooks are not installed
}

TEST(LlamaHooks, RecorderKeepsGradients) {
  LlamaForCausalLM m = small_model();
  AttentionRecorder::Options o;
  o.layers = {1};
  o.keep_graph = true;
  auto rec = std::make_shared<AttentionRecorder>(o);
  m->attention_hooks().add(rec);
  LlamaInput in;
  in.input_ids = random_ids(1, 5, 97, 15);
  const at::Tensor logits = m->forward(in).logits;  // autograd on
  const at::Tensor loss = -at::log_softmax(logits[0][4], -1)[17];
  loss.backward();
  ASSERT_EQ(rec->records().size(), 1u);
  const at::Tensor grad = rec->records()[0].weights.grad();
  ASSERT_TRUE(grad.defined());
  EXPECT_EQ(grad.sizes(), (std::vector<int64_t>{1, 4, 5, 5}));
  EXPECT_GT(grad.abs().sum().item<double>(), 0.0);
}

TEST(LlamaHooks, ExplicitPathEqualsFastPath) {
  LlamaForCausalLM m = small_model();
  const at::Tensor input = random_ids(2, 13, 97, 16);
  LlamaForwardOptions opt;
  opt.force_explicit_attention = true;
  at::NoGradGuard ng;
  LlamaInput in;
  in.input_ids = input;
  EXPECT_LE(max_diff(m->forward(in, nullptr, opt).logits, full_logits(m, input)), 1e-5);
}

// ---------------------------------------------------------------------------------------------
// Architecture variants, config, loading

TEST(LlamaModel, TiedEmbeddings) {
  LlamaConfig c = small_config();
  c.tie_word_embeddings = true;
  LlamaForCausalLM m = small_model(c);
  for (const auto& p : m->named_parameters()) EXPECT_EQ(p.key().find("lm_head"), std::string::npos);
  at::NoGradGuard ng;
  LlamaInput in;
  in.input_ids = random_ids(1, 5, 97, 17);
  const LlamaOutput out = m->forward(in);
  const at::Tensor want = at::matmul(out.last_hidden_state, m->model->embed_tokens->weight.t());
  EXPECT_LE(max_diff(out.logits, want), 1e-5);
  // Loads without lm_head.weight; a stored copy is ignored.
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& p : m->named_parameters()) tensors.emplace_back(p.key(), p.value());
  tensors.emplace_back("lm_head.weight", at::zeros({97, 32}));
  const std::string path = testing_util::scratch("tied.safetensors");
  write_safetensors(path, tensors);
  LlamaForCausalLM m2(c);
  load_llama_weights(m2, TensorStore::open(path));
  EXPECT_LE(max_diff(m2->forward(in).logits, out.logits), 0.0);
}

TEST(LlamaModel, GqaWithOneKvHeadAndMultiHeadAttention) {
  for (int64_t kv : {1, 4}) {
    LlamaConfig c = small_config();
    c.num_key_value_heads = kv;
    LlamaForCausalLM m = small_model(c);
    EXPECT_EQ(m->model->layers->ptr<LlamaDecoderLayerImpl>(0)->self_attn->k_proj->weight.size(0), kv * 8);
    const at::Tensor input = random_ids(1, 10, 97, 18);
    const at::Tensor full = full_logits(m, input);
    EXPECT_LE(max_diff(m->forward(input), full), 1e-5);  // autograd path (repeat-free grouping too)
    at::NoGradGuard ng;
    KVCache cache = m->new_cache(1, 10);
    for (int64_t i = 0; i < 10; ++i) EXPECT_LE(max_diff(m->step(input.select(1, i), cache), full.select(1, i)), 1e-5);
  }
}

TEST(LlamaModel, BiasesAndHiddenStates) {
  LlamaConfig c = small_config();
  c.attention_bias = true;
  c.mlp_bias = true;
  LlamaForCausalLM m(c);
  m->init_weights(3, 0.2);
  at::NoGradGuard ng;
  for (auto& p : m->named_parameters())
    if (p.key().size() > 5 && p.key().substr(p.key().size() - 5) == ".bias") p.value().normal_(0, 0.1);
  const at::Tensor input = random_ids(1, 7, 97, 19);
  LlamaInput in;
  in.input_ids = input;
  LlamaForwardOptions opt;
  opt.output_hidden_states = true;
  const LlamaOutput out = m->forward(in, nullptr, opt);
  ASSERT_EQ(out.hidden_states.size(), 4u);
  EXPECT_LE(max_diff(out.hidden_states[0], m->model->embed(input)), 0.0);
  EXPECT_LE(max_diff(out.hidden_states.back(), out.last_hidden_state), 0.0);
  KVCache cache = m->new_cache(1, 7);
  for (int64_t i = 0; i < 7; ++i) EXPECT_LE(max_diff(m->step(input.select(1, i), cache), out.logits.select(1, i)), 1e-5);
  {
    at::AutoGradMode on(true);
    EXPECT_LE(max_diff(m->forward(input), out.logits), 1e-5);
  }
  // Inputs as embeddings (LLaVA's way) give the same logits.
  LlamaInput e;
  e.inputs_embeds = m->model->embed(input);
  EXPECT_LE(max_diff(m->forward(e).logits, out.logits), 0.0);
}

TEST(LlamaModel, WeightsFollowModuleToDtype) {
  LlamaForCausalLM m = small_model();
  const at::Tensor input = random_ids(1, 6, 97, 20);
  const at::Tensor f32 = full_logits(m, input);
  m->to(at::kDouble);  // the fused projections rebuild themselves
  EXPECT_LE(max_diff(full_logits(m, input), f32), 1e-5);
}

TEST(LlamaConfigTest, DefaultsNestingAndErrors) {
  const LlamaConfig d = LlamaConfig::from_json(Json::object(), "cfg");
  EXPECT_EQ(d.hidden_size, 4096);
  EXPECT_EQ(d.num_key_value_heads, 32);
  EXPECT_EQ(d.head_dim, 128);
  EXPECT_EQ(d.rms_norm_eps, 1e-6);
  EXPECT_EQ(d.eos_token_ids, std::vector<int64_t>{2});

  Json llava = {{"model_type", "llava"},
                {"text_config", {{"hidden_size", 64}, {"num_attention_heads", 4}, {"vocab_size", 320},
                                 {"rope_scaling", {{"type", "linear"}, {"factor", 2.0}}}, {"eos_token_id", {2, 7}}}}};
  const LlamaConfig n = LlamaConfig::from_json(llava, "llava");
  EXPECT_EQ(n.hidden_size, 64);
  EXPECT_EQ(n.head_dim, 16);
  EXPECT_EQ(n.num_key_value_heads, 4);
  EXPECT_EQ(n.rope_scaling.type, RopeScaling::Type::Linear);
  EXPECT_EQ(n.eos_token_ids, (std::vector<int64_t>{2, 7}));
  EXPECT_EQ(LlamaConfig::from_json(Json{{"model_type", "llava"}}, "llava").hidden_size, 4096);

  auto expect_error = [](const Json& j, const std::string& needle) {
    try {
      LlamaConfig::from_json(j, "config.json");
      ADD_FAILURE() << "no error for " << j.dump();
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error(Json{{"rope_scaling", {{"type", "yarn"}, {"factor", 4.0}}}}, "rope_scaling");
  expect_error(Json{{"rope_scaling", {{"type", "linear"}, {"factor", 0.5}}}}, "factor");
  expect_error(Json{{"num_attention_heads", 12}, {"num_key_value_heads", 5}}, "num_key_value_heads");
  expect_error(Json{{"hidden_act", "tanh"}}, "hidden_act");
  expect_error(Json{{"hidden_size", "big"}}, "hidden_size");
  expect_error(Json{{"model_type", "mistral"}}, "model_type");
}

TEST(LlamaConfigTest, SizesContradictingWeightsNameTheKey) {
  LlamaForCausalLM m = small_model();
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& p : m->named_parameters()) tensors.emplace_back(p.key(), p.value());
  const std::string dir = testing_util::scratch("model");
  std::filesystem::create_directories(dir);
  write_safetensors(dir + "/model.safetensors", tensors);
  auto write_config = [&](const LlamaConfig& c) { std::ofstream(dir + "/config.json") << c.to_json().dump(1); };

  write_config(small_config());
  LlamaForCausalLM loaded = load_llama(dir);
  const at::Tensor input = random_ids(1, 5, 97, 21);
  EXPECT_LE(max_diff(full_logits(loaded, input), full_logits(m, input)), 0.0);

  auto expect_key = [&](LlamaConfig c, const std::string& key) {
    write_config(c);
    try {
      load_llama(dir);
      ADD_FAILURE() << "no error for " << key;
    } catch (const CheckpointError& e) {
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    }
  };
  LlamaConfig c = small_config();
  c.num_key_value_heads = 4;
  expect_key(c, "num_key_value_heads");
  c = small_config();
  c.intermediate_size = 64;
  expect_key(c, "intermediate_size");
  c = small_config();
  c.num_hidden_layers = 2;
  expect_key(c, "num_hidden_layers");
  c = small_config();
  c.vocab_size = 98;
  expect_key(c, "vocab_size");
  c = small_config();
  c.tie_word_embeddings = true;  // the file has lm_head.weight: ignored, loads
  write_config(c);
  EXPECT_NO_THROW(load_llama(dir));
}

TEST(LlamaRope, ScalingVariants) {
  // Linear: position p uses p / factor.
  RotaryEmbedding plain(8, 10000, {}, 64);
  RopeScaling lin{RopeScaling::Type::Linear, 4.0};
  RotaryEmbedding linear(8, 10000, lin, 64);
  const auto [c1, s1] = linear.lookup(at::tensor({8}, at::kLong).view({1, 1}));
  const at::Tensor want = at::cos(at::cat({at::full({4}, 2.0f) * plain.inv_freq(), at::full({4}, 2.0f) * plain.inv_freq()}));
  EXPECT_LE(max_diff(c1.reshape({-1}), want), 1e-6);
  // Dynamic: unchanged within max_position_embeddings, a larger base beyond it.
  RopeScaling dyn{RopeScaling::Type::Dynamic, 2.0};
  RotaryEmbedding dynamic(8, 10000, dyn, 64);
  EXPECT_LE(max_diff(dynamic.inv_freq(63), plain.inv_freq()), 0.0);
  EXPECT_LT(dynamic.inv_freq(100)[3].item<float>(), plain.inv_freq()[3].item<float>());
  // A model with dynamic scaling accepts positions past max_position_embeddings.
  LlamaConfig c = small_config();
  c.max_position_embeddings = 16;
  c.rope_scaling = dyn;
  LlamaForCausalLM m = small_model(c);
  const at::Tensor input = random_ids(1, 24, 97, 22);
  EXPECT_NO_THROW(full_logits(m, input));
}

// ---------------------------------------------------------------------------------------------
// Sampling and generation

TEST(LlamaSampling, StagesAndChain) {
  const at::Tensor logits = at::tensor({1.0f, 3.0f, 2.0f, -1.0f, 2.9f});
  SamplerChain greedy = make_sampler({});
  EXPECT_EQ(greedy.sample(logits), 1);
  EXPECT_EQ(greedy.describe(), "greedy");

  // Repetition penalty as transformers: positive / p, negative * p.
  SamplingParams rp;
  rp.repetition_penalty = 2.0f;
  SamplerChain pen = make_sampler(rp);
  pen.accept(std::vector<int64_t>{1, 3});
  const TokenCandidates c = pen.filter(logits);
  EXPECT_FLOAT_EQ(c.logits[1], 1.5f);
  EXPECT_FLOAT_EQ(c.logits[3], -2.0f);
  EXPECT_EQ(pen.sample(logits), 4);  // 2.9 now beats 1.5

  SamplingParams k1;
  k1.temperature = 1.0f;
  k1.top_k = 1;
  for (uint64_t seed = 0; seed < 5; ++seed) {
    k1.seed = seed;
    EXPECT_EQ(make_sampler(k1).sample(logits), 1);
  }
  SamplingParams p_small;
  p_small.temperature = 0.7f;
  p_small.top_p = 0.05f;
  EXPECT_EQ(make_sampler(p_small).sample(logits), 1);

  TopP top_p(0.6f);
  TokenCandidates all = TokenCandidates::from_logits(logits);
  top_p.apply(all);
  // softmax: 3 -> .42, 2.9 -> .38: the mass above 2.9 is .42 < .6, so both stay.
  EXPECT_EQ(all.ids, (std::vector<int64_t>{1, 4}));

  // Seeded sampling is reproducible and follows the distribution roughly.
  SamplingParams s;
  s.temperature = 1.0f;
  s.seed = 42;
  SamplerChain a = make_sampler(s), b = make_sampler(s);
  std::vector<int> counts(5, 0);
  for (int i = 0; i < 2000; ++i) {
    const int64_t x = a.sample(logits);
    EXPECT_EQ(x, b.sample(logits));
    ++counts[x];
  }
  EXPECT_GT(counts[1], counts[2]);
  EXPECT_GT(counts[2], counts[0]);
  EXPECT_LT(counts[3], 60);

  SamplingParams bad;
  bad.top_p = 1.5f;
  EXPECT_THROW(make_sampler(bad), ConfigError);
}

TEST(LlamaGenerate, GreedyStreamingAndStops) {
  LlamaForCausalLM m = small_model();
  const std::vector<int64_t> prompt = {1, 5, 9, 13};
  GenerateOptions opt;
  opt.max_new_tokens = 10;
  opt.stop_at_eos = false;
  opt.keep_logits = true;
  std::vector<int64_t> streamed;
  const GenerateResult r = generate(m, prompt, opt, [&](int64_t t, const std::string&) {
    streamed.push_back(t);
    return true;
  });
  ASSERT_EQ(r.tokens.size(), 10u);
  EXPECT_EQ(streamed, r.tokens);
  EXPECT_EQ(r.stop, StopReason::MaxTokens);
  EXPECT_EQ(r.prompt_tokens, 4);
  // Equals argmax of a full forward over prompt + output, at every step.
  std::vector<int64_t> all = prompt;
  all.insert(all.end(), r.tokens.begin(), r.tokens.end());
  const at::Tensor full = full_logits(m, ids(all))[0];
  for (size_t i = 0; i < r.tokens.size(); ++i) {
    EXPECT_EQ(full[prompt.size() - 1 + i].argmax().item<int64_t>(), r.tokens[i]);
    EXPECT_LE(max_diff(r.step_logits[i], full[prompt.size() - 1 + i]), 1e-5);
  }

  // eos: the first generated token declared as eos stops at once.
  GenerateOptions eos = opt;
  eos.stop_at_eos = true;
  eos.eos_token_ids = {r.tokens[2]};
  const GenerateResult e = generate(m, prompt, eos);
  EXPECT_EQ(e.stop, StopReason::Eos);
  EXPECT_EQ(e.tokens.back(), r.tokens[2]);

  // Stop strings over a toy detokenizer ("<id>" per token); the text is cut before the match.
  GenerateOptions ss = opt;
  ss.detokenize = [](const std::vector<int64_t>& t) {
    std::string s;
    for (int64_t x : t) s += "<" + std::to_string(x) + ">";
    return s;
  };
  ss.stop_strings = {"<" + std::to_string(r.tokens[3]) + ">"};
  std::string streamed_text;
  const GenerateResult st = generate(m, prompt, ss, [&](int64_t, const std::string& d) {
    streamed_text += d;
    return true;
  });
  EXPECT_EQ(st.stop, StopReason::StopString);
  EXPECT_EQ(st.text.find(ss.stop_strings[0]), std::string::npos);
  EXPECT_EQ(streamed_text, st.text);
  EXPECT_LE(st.tokens.size(), 4u);

  // The callback stops it.
  const GenerateResult cb = generate(m, prompt, opt, [&](int64_t, const std::string&) { return false; });
  EXPECT_EQ(cb.stop, StopReason::Callback);
  EXPECT_EQ(cb.tokens.size(), 1u);

  // Continuing from a caller's own prefill gives the same tokens.
  at::NoGradGuard ng;
  KVCache cache = m->new_cache(1, 20);
  LlamaInput in;
  in.input_ids = ids(prompt);
  LlamaForwardOptions fo;
  fo.logits = LogitsMode::Last;
  const at::Tensor last = m->forward(in, &cache, fo).logits;
  const GenerateResult g2 = generate_from(m, cache, last, opt, nullptr, prompt);
  EXPECT_EQ(g2.tokens, r.tokens);
  EXPECT_THROW(generate(m, {}, opt), ConfigError);
}
