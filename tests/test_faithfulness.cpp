// VLM faithfulness methods on tiny random LLaMA models: VAR (sink detection, sink-dimension
// ranking, redistribution, the hook), saliency (finite differences, brute-force autograd),
// SGRS (accept/reject logic with a stub saliency, end to end) and LocoRE.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>

#include "core/error.h"
#include "vlm/attention_hooks.h"
#include "vlm/faithfulness.h"
#include "vlm/kv_cache.h"
#include "vlm/llama.h"
#include "vlm/locore.h"
#include "vlm/saliency.h"
#include "vlm/sampling.h"
#include "vlm/sgrs.h"
#include "vlm/var.h"

using namespace iris;

namespace {

LlamaConfig tiny_config(int64_t layers = 4) {
  LlamaConfig c;
  c.vocab_size = 97;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = layers;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.max_position_embeddings = 64;
  c.rms_norm_eps = 1e-5;
  return c;
}

LlamaForCausalLM tiny_model(int64_t layers = 4, uint64_t seed = 11) {
  LlamaForCausalLM m(tiny_config(layers));
  m->init_weights(seed, 0.2);
  m->eval();
  return m;
}

at::Tensor random_ids(int64_t n, uint64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  return at::randint(3, 97, {1, n}, g, at::kLong);
}

LlamaInput ids_prompt(int64_t n, uint64_t seed) {
  LlamaInput in;
  in.input_ids = random_ids(n, seed);
  return in;
}

// Exactly n new tokens.
GenerateOptions fixed_length(int64_t n) {
  GenerateOptions g;
  g.max_new_tokens = n;
  g.stop_at_eos = false;
  return g;
}

// A prompt with image tokens: embeddings of random ids, positions [img0, img0 + n_img) marked.
LlamaInput image_prompt(LlamaForCausalLM& m, int64_t n, int64_t img0, int64_t n_img, uint64_t seed) {
  at::NoGradGuard ng;
  LlamaInput in;
  in.inputs_embeds = m->model->embed(random_ids(n, seed)).clone();
  in.image_mask = at::zeros({1, n}, at::kBool);
  in.image_mask.narrow(1, img0, n_img).fill_(true);
  return in;
}

at::Tensor random_weights(std::vector<int64_t> shape, uint64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  return at::softmax(at::randn(shape, g, at::TensorOptions().dtype(at::kFloat)) * 2.0, -1);
}

// A bool tensor from 0/1 values.
at::Tensor mask(std::vector<int64_t> v) { return at::tensor(v, at::kLong).to(at::kBool); }

bool bit_equal(const at::Tensor& a, const at::Tensor& b) { return a.sizes() == b.sizes() && at::equal(a, b); }

// Prefill + `steps` greedy decode steps; the logits of every step stacked [steps + 1, V].
at::Tensor run_steps(LlamaForCausalLM& m, const LlamaInput& prompt, int steps) {
  at::NoGradGuard ng;
  KVCache cache = m->new_cache(1, 48);
  LlamaForwardOptions fo;
  fo.logits = LogitsMode::Last;
  std::vector<at::Tensor> out{m->forward(prompt, &cache, fo).logits.reshape({-1})};
  for (int i = 0; i < steps; ++i) {
    const int64_t next = out.back().argmax().item<int64_t>();
    out.push_back(m->step(at::full({1, 1}, next, at::kLong), cache).reshape({-1}));
  }
  return at::stack(out);
}

}  // namespace

// =============================================================================================
// VAR

TEST(Var, SinkScoresAndDetectionOnConstructedStates) {
  // 1024 dims of 1 except one planted value: phi = a / sqrt((a^2 + 1023) / 1024).
  at::Tensor h = at::ones({1, 4, 1024});
  h[0][1][5] = 1000.0;   // a sink in dim 5
  h[0][2][9] = -800.0;   // massive but negative, in dim 9
  h[0][3][700] = 900.0;  // massive in a dim that is not a sink dim
  const at::Tensor phi = sink_scores(h, {5, 9});
  const double phi1 = 1000.0 / std::sqrt((1000.0 * 1000.0 + 1023.0) / 1024.0 + 1e-6);
  const double phi2 = 800.0 / std::sqrt((800.0 * 800.0 + 1023.0) / 1024.0 + 1e-6);
  EXPECT_NEAR(phi[0][1].item<double>(), phi1, 1e-3);
  EXPECT_NEAR(phi[0][2].item<double>(), phi2, 1e-3);
  EXPECT_NEAR(phi[0][0].item<double>(), 1.0, 1e-5);
  const at::Tensor s = detect_sink_tokens(h, {5, 9}, 20.0);
  EXPECT_EQ(s.sizes(), (std::vector<int64_t>{1, 4}));
  EXPECT_FALSE(s[0][0].item<bool>());
  EXPECT_TRUE(s[0][1].item<bool>());
  EXPECT_TRUE(s[0][2].item<bool>());
  EXPECT_FALSE(s[0][3].item<bool>());  // dim 700 is not watched
  EXPECT_THROW(sink_scores(h, {1024}), ConfigError);
}

TEST(Var, RanksSinkDimensions) {
  // Two prompts, 5 layers: dim 7 is massive in every examined layer, dim 3 in one.
  std::vector<std::vector<at::Tensor>> states;
  at::Generator g = at::detail::createCPUGenerator(3);
  for (int p = 0; p < 2; ++p) {
    std::vector<at::Tensor> per_layer;
    for (int l = 0; l <= 5; ++l) {
      at::Tensor h = at::randn({1, 6, 512}, g);
      if (l >= 1) h[0][0][7] = 600.0;
      if (l == 2) h[0][3][3] = 700.0;
      per_layer.push_back(h);
    }
    states.push_back(per_layer);
  }
  SinkDimOptions opt;
  opt.first_layer = 1;
  opt.last_layer = -1;  // layers 1..4
  opt.top = 3;
  const auto dims = rank_sink_dims(states, opt);
  ASSERT_EQ(dims.size(), 3u);
  EXPECT_EQ(dims[0].dim, 7);
  EXPECT_EQ(dims[0].hits, 8);  // 2 prompts x 4 layers
  EXPECT_EQ(dims[1].dim, 3);
  EXPECT_EQ(dims[1].hits, 2);
  EXPECT_GT(dims[0].peak, 20.0);
  EXPECT_LT(dims[2].peak, 20.0);
  opt.first_layer = 4;
  opt.last_layer = 3;
  EXPECT_THROW(rank_sink_dims(states, opt), ConfigError);  // no layer left to examine
}

TEST(Var, QueryRows) {
  at::Tensor img = at::zeros({1, 8}, at::kBool);
  img.narrow(1, 1, 3).fill_(true);  // image tokens at 1, 2, 3
  const at::Tensor rows = var_query_rows(img, 0, 8);
  EXPECT_TRUE(bit_equal(rows, mask({0, 0, 0, 0, 1, 1, 1, 1}).view({1, 8})));
  EXPECT_TRUE(var_query_rows(img, 7, 1).all().item<bool>());  // a decode token after the image
  // No image: every text row is "after" the (absent) image (VarHook does not run then).
  EXPECT_TRUE(var_query_rows(at::zeros({1, 8}, at::kBool), 0, 8).all().item<bool>());
}

TEST(Var, HandComputedRedistribution) {
  // Keys: 0 text sink (BOS), 1 image sink, 2 and 3 plain image, 4 text.
  const at::Tensor image = mask({0, 1, 1, 1, 0}).view({1, 5});
  const at::Tensor sink = mask({1, 1, 0, 0, 0}).view({1, 5});
  const at::Tensor w = at::tensor({0.3f, 0.2f, 0.2f, 0.1f, 0.2f,      // image-centric: changed
                                   0.7f, 0.05f, 0.05f, 0.05f, 0.15f,  // image attention 0.15 < 0.2
                                   0.2f, 0.4f, 0.05f, 0.05f, 0.3f,    // non-sink share 0.2 < rho
                                   0.3f, 0.2f, 0.2f, 0.1f, 0.2f})     // not an eligible query row
                           .view({1, 1, 4, 5});
  const at::Tensor rows = mask({1, 1, 1, 0}).view({1, 4});
  VarOptions opt;
  opt.sink_dims = {0};
  at::Tensor selected;
  const at::Tensor out = var_redistribute(w, image, sink, rows, opt, &selected);
  // Sinks keep 60%: 0.18, 0.12; Omega = 0.4 * 0.5 = 0.2 goes 2:1 to keys 2 and 3.
  const at::Tensor expect0 = at::tensor({0.18f, 0.12f, 0.2f + 0.2f * 2 / 3, 0.1f + 0.2f / 3, 0.2f});
  EXPECT_TRUE(at::allclose(out[0][0][0], expect0, 1e-6, 1e-7)) << out[0][0][0];
  for (int r = 1; r < 4; ++r) EXPECT_TRUE(bit_equal(out[0][0][r], w[0][0][r])) << "row " << r;
  EXPECT_TRUE(bit_equal(selected, mask({1, 0, 0, 0}).view({1, 1, 4})));
  // With no image sink the released code's rule changes nothing; METHODS.md's still does.
  const at::Tensor text_sink_only = mask({1, 0, 0, 0, 0}).view({1, 5});
  opt.require_image_sink = true;
  EXPECT_TRUE(bit_equal(var_redistribute(w, image, text_sink_only, rows, opt), w));
  opt.require_image_sink = false;
  EXPECT_FALSE(bit_equal(var_redistribute(w, image, text_sink_only, rows, opt), w));
}

TEST(Var, RowsSumToOneOthersUntouchedAndPOneIsIdentity) {
  const at::Tensor w = random_weights({2, 4, 6, 10}, 5);
  at::Generator g = at::detail::createCPUGenerator(9);
  const at::Tensor image = at::rand({2, 10}, g) < 0.6;
  const at::Tensor sink = at::rand({2, 10}, g) < 0.3;
  const at::Tensor rows = at::rand({2, 6}, g) < 0.7;
  VarOptions opt;
  opt.sink_dims = {0};
  opt.rho = 0.3;
  opt.image_attention_min = 0.1;
  at::Tensor selected;
  const at::Tensor out = var_redistribute(w, image, sink, rows, opt, &selected);
  ASSERT_GT(selected.sum().item<int64_t>(), 3);
  ASSERT_LT(selected.sum().item<int64_t>(), selected.numel());
  EXPECT_LE((out.sum(-1) - 1).abs().max().item<double>(), 1e-6);
  const at::Tensor same = selected.logical_not().unsqueeze(-1).expand_as(w);
  EXPECT_TRUE(bit_equal(out.masked_select(same), w.masked_select(same)));
  // In changed rows: sinks scaled by p exactly, text non-sinks unchanged, plain image tokens up.
  const at::Tensor sel4 = selected.unsqueeze(-1).expand_as(w);
  const at::Tensor sink4 = sink.view({2, 1, 1, 10}).expand_as(w) & sel4;
  EXPECT_TRUE(at::allclose(out.masked_select(sink4), w.masked_select(sink4) * 0.6));
  const at::Tensor text4 = (image | sink).logical_not().view({2, 1, 1, 10}).expand_as(w) & sel4;
  EXPECT_TRUE(bit_equal(out.masked_select(text4), w.masked_select(text4)));
  // p = 1: bit-identical everywhere.
  opt.p = 1.0;
  EXPECT_TRUE(bit_equal(var_redistribute(w, image, sink, rows, opt), w));
}

TEST(Var, HookOnTinyModel) {
  LlamaForCausalLM m = tiny_model(5);
  const LlamaInput prompt = image_prompt(m, 12, 2, 5, 21);  // image tokens at 2..6
  // Sink dims and tau from the model's own activations (a 32-wide model cannot reach tau = 20).
  SinkDimOptions so;
  so.tau = 3.0;
  const auto dims = find_sink_dims(m, {prompt}, so);
  ASSERT_FALSE(dims.empty());
  LlamaForwardOptions ho;
  ho.output_hidden_states = true;
  ho.logits = LogitsMode::None;
  at::Tensor phi;
  {
    at::NoGradGuard ng;
    phi = sink_scores(m->forward(prompt, nullptr, ho).hidden_states[2], {dims[0].dim});
  }
  VarOptions vo;
  vo.sink_dims = {dims[0].dim};
  // The strongest image token is a sink (a margin: the hooked run's layers round differently).
  vo.tau = 0.999 * phi.narrow(1, 2, 5).max().item<double>();
  vo.rho = 0.3;
  vo.image_attention_min = 0.1;

  const at::Tensor base = run_steps(m, prompt, 3);
  // p = 1 leaves every layer on the fast path: bit-identical to no hook at all.
  {
    VarOptions one = vo;
    one.p = 1.0;
    auto hook = std::make_shared<VarHook>(one);
    m->attention_hooks().add(hook);
    EXPECT_TRUE(bit_equal(run_steps(m, prompt, 3), base));
    m->attention_hooks().clear();
  }
  // p = 0.6 changes image-centric rows in layers 2 .. L-2 only; the recorder (installed after)
  // sees the changed rows summing to 1, and the first VAR layer's other rows bit-identical.
  auto rec_base = std::make_shared<AttentionRecorder>(AttentionRecorder::Options{{1, 2, 4}, false});
  m->attention_hooks().add(rec_base);
  run_steps(m, prompt, 0);
  m->attention_hooks().clear();
  auto hook = std::make_shared<VarHook>(vo);
  auto rec = std::make_shared<AttentionRecorder>(AttentionRecorder::Options{{1, 2, 4}, false});
  m->attention_hooks().add(hook);
  m->attention_hooks().add(rec);
  const at::Tensor with_var = run_steps(m, prompt, 3);
  EXPECT_GT(hook->rows_changed(), 0);
  EXPECT_GT((with_var - base).abs().max().item<double>(), 1e-4);
  const at::Tensor sinks2 = hook->sinks(2);
  ASSERT_TRUE(sinks2.defined());
  EXPECT_EQ(sinks2.size(1), 12 + 3);  // prompt + decode tokens
  EXPECT_TRUE(bit_equal(sinks2.narrow(1, 0, 12), phi >= vo.tau));
  EXPECT_FALSE(sinks2.narrow(1, 12, 3).any().item<bool>());  // decode tokens are not sinks
  EXPECT_FALSE(hook->sinks(1).defined());                    // layer 1 is not a VAR layer
  // Prefill records: [0] layer 1, [1] layer 2 (the first VAR layer, same input as the baseline).
  ASSERT_EQ(rec->records()[1].layer, 2);
  const at::Tensor pre2 = rec->records()[1].weights, b2 = rec_base->records()[1].weights;
  EXPECT_LE((pre2.sum(-1) - 1).abs().max().item<double>(), 1e-5);
  EXPECT_TRUE(bit_equal(pre2.narrow(2, 0, 7), b2.narrow(2, 0, 7)));  // rows up to the image's end
  EXPECT_FALSE(bit_equal(pre2, b2));
  EXPECT_TRUE(bit_equal(rec->records()[0].weights, rec_base->records()[0].weights));  // layer 1
  m->attention_hooks().clear();
}

// =============================================================================================
// Saliency

namespace {

// The probe's quantity computed with full autograd over the whole sequence (no cache).
struct BruteForce {
  std::vector<at::Tensor> grads;  // per layer [H, n]: dL/dA on row n-1
  at::Tensor row;                 // [n]
};

BruteForce brute_force_saliency(LlamaForCausalLM& m, const at::Tensor& ids, const std::vector<int>& layers,
                                int64_t candidate) {
  for (at::Tensor& p : m->parameters()) p.requires_grad_(false);
  const int64_t n = ids.size(1);
  LlamaInput in;
  in.inputs_embeds = m->model->embed(ids).detach().requires_grad_(true);
  auto rec = std::make_shared<AttentionRecorder>(AttentionRecorder::Options{layers, true});
  AttentionHookList list;
  list.add(rec);
  LlamaForwardOptions fo;
  fo.hooks = &list;
  const at::Tensor logits = m->forward(in, nullptr, fo).logits;  // [1, n, V]
  const at::Tensor loss = -at::log_softmax(logits[0][n - 1], -1)[candidate];
  std::vector<at::Tensor> ws;
  for (int l : layers) ws.push_back(rec->last(l).weights);
  const auto g = torch::autograd::grad({loss}, ws);
  BruteForce out;
  at::Tensor sum;
  for (size_t i = 0; i < ws.size(); ++i) {
    const at::Tensor gi = g[i][0].select(1, n - 1);             // [H, n]
    const at::Tensor ai = ws[i].detach()[0].select(1, n - 1);  // [H, n]
    out.grads.push_back(gi);
    const at::Tensor s = (ai * gi).abs().mean(0).to(at::kDouble);
    const at::Tensor r = s / s.norm();
    sum = sum.defined() ? sum + r : r;
  }
  out.row = sum / static_cast<double>(ws.size());
  for (at::Tensor& p : m->parameters()) p.requires_grad_(true);
  return out;
}

}  // namespace

TEST(Saliency, GradientsMatchFiniteDifferences) {
  LlamaForCausalLM m = tiny_model(4, 5);
  m->to(at::kDouble);
  const int64_t n = 7;
  const LlamaInput in = ids_prompt(n, 8);
  SaliencyOptions so;
  so.layers = {1, 2};
  SaliencyProbe probe(m, so);
  KVCache cache;
  const at::Tensor logits = probe_prompt(m, probe, in, cache, 2);
  const int64_t c = logits.argmax().item<int64_t>() == 5 ? 6 : 5;
  const std::vector<at::Tensor> grads = probe.attention_gradients(c);
  ASSERT_EQ(grads.size(), 2u);
  EXPECT_EQ(grads[0].sizes(), (std::vector<int64_t>{4, n}));

  auto loss_with = [&](int layer, int64_t h, int64_t j, double eps) {
    at::NoGradGuard ng;
    cache.truncate(n - 1);
    AttentionHookList list;
    list.add(std::make_shared<FunctionHook>(
        [&](int, at::Tensor& w, const HookContext&) {
          at::Tensor d = at::zeros_like(w);
          d[0][h][0][j].fill_(eps);
          w = w + d;
        },
        [layer](int l, const HookContext&) { return l == layer; }));
    LlamaForwardOptions fo;
    fo.logits = LogitsMode::Last;
    fo.hooks = &list;
    const at::Tensor lg = m->forward(prompt_position(in, n - 1), &cache, fo).logits.reshape({-1});
    return -at::log_softmax(lg, -1)[c].item<double>();
  };
  int checked = 0;
  for (int li = 0; li < 2; ++li) {
    const int layer = so.layers[li];
    for (int64_t h : {0, 3})
      for (int64_t j : {int64_t{0}, int64_t{3}, n - 1}) {
        // RMSNorm runs in float32 even in a double model, so the step is not tiny.
        const double eps = 1e-3;
        const double fd = (loss_with(layer, h, j, eps) - loss_with(layer, h, j, -eps)) / (2 * eps);
        const double g = grads[li][h][j].item<double>();
        EXPECT_NEAR(g, fd, 1e-3 * std::max(1.0, std::abs(fd))) << "layer " << layer << " head " << h << " key " << j;
        checked += std::abs(fd) > 1e-2;
      }
  }
  EXPECT_GT(checked, 4);  // the gradients are not trivially zero
}

TEST(Saliency, EqualsBruteForceAutograd) {
  LlamaForCausalLM m = tiny_model(4, 5);
  m->to(at::kDouble);
  const int64_t n = 9;
  const at::Tensor ids = random_ids(n, 4);
  const std::vector<int> layers{1, 3};
  LlamaInput in;
  in.input_ids = ids;
  SaliencyOptions so;
  so.layers = layers;
  SaliencyProbe probe(m, so);
  KVCache cache;
  const at::Tensor logits = probe_prompt(m, probe, in, cache, 2);
  {
    at::NoGradGuard ng;
    const at::Tensor plain = m->forward(ids)[0][n - 1];
    EXPECT_LE((plain - logits).abs().max().item<double>(), 1e-5);  // the probe predicts as usual
  }
  for (int64_t c : {5, 17, 60}) {
    const BruteForce bf = brute_force_saliency(m, ids, layers, c);
    const std::vector<at::Tensor> g = probe.attention_gradients(c);
    for (size_t i = 0; i < layers.size(); ++i)
      EXPECT_LE((g[i] - bf.grads[i]).abs().max().item<double>(), 1e-5 * (1 + bf.grads[i].abs().max().item<double>()))
          << "layer " << layers[i];
    const at::Tensor row = probe.row(c);
    EXPECT_LE((row.to(at::kDouble) - bf.row).abs().max().item<double>(), 1e-6);
    EXPECT_NEAR(probe.score(c), bf.row.mean().item<double>(), 1e-6);  // no image: J = every key
  }
  // Parameters are left as they were and collect no gradients.
  for (const at::Tensor& p : m->parameters()) {
    EXPECT_TRUE(p.requires_grad());
    EXPECT_FALSE(p.grad().defined());
  }
}

TEST(Saliency, KeysAndImageMap) {
  LlamaForCausalLM m = tiny_model(4, 6);
  const LlamaInput prompt = image_prompt(m, 10, 1, 4, 31);  // image tokens 1..4: a 2x2 grid
  SaliencyOptions so;
  so.layers = {1, 2};
  SaliencyProbe probe(m, so);
  KVCache cache;
  probe_prompt(m, probe, prompt, cache, 3);
  EXPECT_EQ(probe.keys_start(), 5);  // after the image
  const at::Tensor row = probe.row(7);
  EXPECT_NEAR(probe.score(7), row.narrow(0, 5, 5).mean().item<double>(), 1e-6);
  so.keys = SaliencyOptions::Keys::Generated;
  SaliencyProbe gen_probe(m, so);
  KVCache cache2;
  probe_prompt(m, gen_probe, prompt, cache2, 3);
  EXPECT_EQ(gen_probe.score(7), 0.0);  // nothing generated yet

  const SaliencyMap map = answer_saliency_map(m, prompt, {7, 8, 9}, {{1, 2}}, 2, 2);
  EXPECT_EQ(map.map.sizes(), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(map.per_token.sizes(), (std::vector<int64_t>{3, 4}));
  EXPECT_TRUE(at::allclose(map.per_token[0], row.narrow(0, 1, 4)));  // token 7 predicted by the prompt's last query
  EXPECT_GT(map.map.sum().item<double>(), 0.0);
  EXPECT_THROW(answer_saliency_map(m, prompt, {7}, {{1, 2}}, 3, 2), ConfigError);
  SaliencyOptions bad;
  bad.layers = {4};
  EXPECT_THROW(SaliencyProbe bad_probe(m, bad), ConfigError);
}

// =============================================================================================
// SGRS

namespace {

TokenCandidates pool_of(std::vector<float> logits) {
  TokenCandidates c;
  for (size_t i = 0; i < logits.size(); ++i) {
    c.ids.push_back(static_cast<int64_t>(i));
    c.logits.push_back(logits[i]);
  }
  return c;
}

}  // namespace

TEST(Sgrs, AcceptRejectLogicWithStubSaliency) {
  SgrsOptions o;
  o.seed = 3;
  SgrsSelector sel(o);
  const TokenCandidates pool = pool_of({5.0f, 4.0f, 3.0f, 2.0f, 1.0f, 0.5f, 0.0f});  // K = 5 keeps ids 0..4
  std::vector<int64_t> asked;
  // First token: threshold 0, the first draw is accepted whatever its saliency.
  auto d = sel.select(pool, [&](int64_t t) {
    asked.push_back(t);
    return 0.0;
  });
  EXPECT_EQ(d.threshold, 0.0);
  EXPECT_EQ(d.draws, 1);
  EXPECT_FALSE(d.fallback);
  EXPECT_LT(d.token, 5);
  EXPECT_EQ(asked.size(), 1u);
  // History [0] -> threshold 0 again; now push a salient token to raise it.
  d = sel.select(pool, [](int64_t) { return 1.0; });
  EXPECT_NEAR(sel.threshold(), 0.6 * 0.5, 1e-12);  // mean of {0, 1}
  // Only token 4 (the least likely of the K) is salient enough: up to R = 3 draws, then fallback.
  asked.clear();
  d = sel.select(pool, [&](int64_t t) {
    asked.push_back(t);
    return t == 4 ? 0.9 : (t == 3 ? 0.25 : 0.1);
  });
  EXPECT_NEAR(d.threshold, 0.3, 1e-12);
  if (!d.fallback) {
    EXPECT_EQ(d.token, 4);
  } else {
    EXPECT_EQ(d.draws, 3);
    EXPECT_EQ(d.token, 4);  // the most salient of the K
    EXPECT_EQ(d.rejected.size(), 3u);
  }
  for (size_t i = 0; i < d.rejected.size(); ++i)
    for (size_t j = i + 1; j < d.rejected.size(); ++j) EXPECT_NE(d.rejected[i], d.rejected[j]);  // never redrawn
  for (int64_t t : asked) EXPECT_LT(t, 5);  // only the top K are ever scored
  // Nobody passes: the fallback takes the most salient, and every candidate is scored once.
  asked.clear();
  d = sel.select(pool, [&](int64_t t) {
    asked.push_back(t);
    return 0.01 * static_cast<double>(t == 2 ? 5 : 1);
  });
  EXPECT_TRUE(d.fallback);
  EXPECT_EQ(d.draws, 3);
  EXPECT_EQ(d.token, 2);
  EXPECT_EQ(asked.size(), 5u);
  EXPECT_EQ(d.saliency_calls, 5);
  // The window keeps the last W = 5 accepted saliencies.
  for (int i = 0; i < 7; ++i) sel.select(pool, [](int64_t) { return 2.0; });
  EXPECT_EQ(sel.history().size(), 5u);
  EXPECT_NEAR(sel.threshold(), 0.6 * 2.0, 1e-12);
}

TEST(Sgrs, SeededAndDeterministic) {
  SgrsOptions o;
  o.seed = 42;
  auto run = [&](uint64_t seed) {
    SgrsOptions so = o;
    so.seed = seed;
    SgrsSelector sel(so);
    std::vector<int64_t> out;
    for (int i = 0; i < 40; ++i)
      out.push_back(sel.select(pool_of({1.0f, 0.9f, 0.8f, 0.7f, 0.6f}), [](int64_t t) { return 0.2 * t; }).token);
    return out;
  };
  EXPECT_EQ(run(42), run(42));
  EXPECT_NE(run(42), run(43));
  EXPECT_THROW(SgrsSelector bad(SgrsOptions{0, 0.6, 5, 3, 0}), ConfigError);
}

TEST(Sgrs, EndToEndOnTinyModel) {
  LlamaForCausalLM m = tiny_model(4, 12);
  const LlamaInput prompt = ids_prompt(8, 13);
  GenerateOptions gen = fixed_length(6);
  gen.sampling.seed = 9;
  SgrsOptions so;
  SaliencyOptions sal;
  sal.layers = {1, 2};
  SgrsStats st1, st2;
  const GenerateResult a = generate_sgrs(m, prompt, so, sal, gen, nullptr, &st1);
  const GenerateResult b = generate_sgrs(m, prompt, so, sal, gen, nullptr, &st2);
  ASSERT_EQ(a.tokens.size(), 6u);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(st1.tokens, 6);
  EXPECT_EQ(st1.first_draw_accepted + st1.redrawn + st1.fallbacks, 6);
  EXPECT_GE(st1.saliency_calls, 6);
  // Every token is one of the top K = 5 of its step's plain logits (teacher-forced check).
  {
    at::NoGradGuard ng;
    std::vector<int64_t> seq(prompt.input_ids.data_ptr<int64_t>(), prompt.input_ids.data_ptr<int64_t>() + 8);
    for (int64_t t : a.tokens) {
      const at::Tensor lg = m->forward(at::tensor(seq, at::kLong).view({1, -1}))[0][-1];
      const at::Tensor top = std::get<1>(lg.topk(5));
      EXPECT_TRUE((top == t).any().item<bool>());
      seq.push_back(t);
    }
  }
  // A strict threshold forces rejections: the saliency differs between candidates.
  so.alpha = 5.0;
  SgrsStats st3;
  generate_sgrs(m, prompt, so, sal, gen, nullptr, &st3);
  EXPECT_GT(st3.redrawn + st3.fallbacks, 0);
}

// =============================================================================================
// LocoRE

TEST(Locore, ReweightsOnlyTheWindowAndRenormalises) {
  const at::Tensor w = random_weights({1, 2, 3, 12}, 7);
  LocoreOptions o;
  o.window = 2;
  const at::Tensor out = locore_reweight(w, /*past=*/9, /*prompt_length=*/6, o);  // queries 9, 10, 11
  EXPECT_LE((out.sum(-1) - 1).abs().max().item<double>(), 1e-6);
  for (int64_t i = 0; i < 3; ++i) {
    const int64_t q = 9 + i;
    const at::Tensor ratio = out[0][0][i].to(at::kDouble) / w[0][0][i].to(at::kDouble);
    const double base = ratio[0].item<double>();  // a key outside the window
    for (int64_t k = 0; k <= q; ++k) {
      const bool boosted = k >= q - 2 && k < q;
      EXPECT_NEAR(ratio[k].item<double>(), boosted ? 1.15 * base : base, 1e-5) << "q " << q << " k " << k;
    }
  }
  // Queries inside the prompt, and beta = 0: bit-identical.
  EXPECT_TRUE(bit_equal(locore_reweight(w, 2, 6, o), w));
  o.beta = 0.0;
  EXPECT_TRUE(bit_equal(locore_reweight(w, 9, 6, o), w));
  // The window stops at the prompt: query 7 boosts only key 6.
  o.beta = 0.5;
  const at::Tensor o7 = locore_reweight(w, 7, 6, o);
  const at::Tensor r7 = o7[0][1][0] / w[0][1][0];
  EXPECT_NEAR((r7[6] / r7[5]).item<double>(), 1.5, 1e-5);
  EXPECT_NEAR((r7[5] / r7[0]).item<double>(), 1.0, 1e-5);
}

TEST(Locore, HookOnTinyModel) {
  LlamaForCausalLM m = tiny_model(4, 14);
  const LlamaInput prompt = ids_prompt(8, 15);
  const at::Tensor base = run_steps(m, prompt, 4);
  LocoreOptions o;
  o.beta = 0.0;
  m->attention_hooks().add(std::make_shared<LocoreHook>(o));
  EXPECT_TRUE(bit_equal(run_steps(m, prompt, 4), base));  // beta = 0: identical
  m->attention_hooks().clear();
  o.beta = 0.5;
  auto hook = std::make_shared<LocoreHook>(o);
  m->attention_hooks().add(hook);
  const at::Tensor boosted = run_steps(m, prompt, 4);
  EXPECT_EQ(hook->prompt_length(), 8);
  EXPECT_LE((boosted[0] - base[0]).abs().max().item<double>(), 1e-5);  // prefill unchanged
  EXPECT_LE((boosted[1] - base[1]).abs().max().item<double>(), 1e-5);  // no generated key yet
  EXPECT_GT((boosted.narrow(0, 2, 3) - base.narrow(0, 2, 3)).abs().max().item<double>(), 1e-4);
  m->attention_hooks().clear();
}

// =============================================================================================
// Options

TEST(Faithfulness, ConfigureDescribeAndGenerate) {
  LlamaForCausalLM m = tiny_model(4, 16);
  const LlamaInput prompt = ids_prompt(6, 17);
  const GenerateOptions gen = fixed_length(5);
  FaithfulnessOptions fo;
  EXPECT_EQ(fo.describe(), "baseline");
  std::vector<int64_t> ids(prompt.input_ids.data_ptr<int64_t>(), prompt.input_ids.data_ptr<int64_t>() + 6);
  EXPECT_EQ(generate_faithful(m, prompt, fo, gen).tokens, generate(m, ids, gen).tokens);

  fo.var = true;
  EXPECT_THROW(configure_faithfulness(m, fo), ConfigError);  // no sink dims
  fo.var_options.sink_dims = {3};
  fo.locore = true;
  fo.sgrs = true;
  fo.saliency.layers = {1, 2};
  EXPECT_EQ(fo.describe(), "var(p=0.6,rho=0.5,tau=20)+locore(beta=0.15,w=8)+sgrs(K=5,alpha=0.6,W=5,R=3)");
  const FaithfulnessHooks hooks = configure_faithfulness(m, fo);
  EXPECT_EQ(m->attention_hooks().size(), 2u);
  const GenerateResult r = generate_faithful(m, prompt, fo, gen);
  EXPECT_EQ(r.tokens.size(), 5u);
  remove_faithfulness(m, hooks);
  EXPECT_TRUE(m->attention_hooks().empty());
  fo.saliency.layers = {9};
  EXPECT_THROW(fo.validate(m->config()), ConfigError);
}
