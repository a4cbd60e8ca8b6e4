// VISOR (vlm/visor.h, pipelines/visor_vqa.h, pipelines/visor_training.h) on tiny random models:
//  * shapes of a pass, of the cache, and of the router;
//  * zero cross-attention output projections + no self-attention = the text-only LM, and the
//    trainer's initialisation starts there at every budget;
//  * KV-cached greedy generation = recomputing the whole sequence without a cache, at every
//    budget and with the router; mixed budgets in one batch = one row at a time;
//  * the visual FLOPs counter (hand-computed numbers, budgets, the pack-sized table);
//  * save / load, the router's choices, clear errors for bad configs, folders and options;
//  * training: a batch is learned, gradients reach exactly the blocks a budget switches on,
//    the whole run resumes, and the CLI (train visor, ask --visor-budget) works end to end.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <set>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include "core/error.h"
#include "core/image.h"
#include "pipelines/random_model.h"
#include "pipelines/trainer.h"
#include "pipelines/visor_training.h"
#include "pipelines/vlm_eval.h"
#include "pipelines/visor_vqa.h"
#include "tests/test_util.h"
#include "vlm/visor.h"

namespace fs = std::filesystem;
using namespace iris;
using testing_util::expect_error;
#ifdef IRIS_CLI
using testing_util::CliRun;
using testing_util::run_cli;
#endif

namespace {

// tiny_llava_spec: LLaMA 2 layers, hidden 64, 4 heads / 2 kv heads; CLIP 32x32, 16 patches (4x4).
LlavaConfig tiny_llava_config() { return LlavaConfig::from_json(tiny_llava_spec().config, "tiny"); }

VisorForConditionalGeneration tiny_visor(uint64_t seed = 3, int64_t n_cross = 2, int64_t n_self = 2) {
  LlavaForConditionalGeneration llava(tiny_llava_config());
  VisorForConditionalGeneration v(llava, VisorConfig::uniform(2, n_cross, n_self));
  v->init_weights(seed, 0.2);
  v->eval();
  return v;
}

at::Tensor randn(at::IntArrayRef shape, uint64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  return at::randn(shape, g);
}

at::Tensor random_ids(int64_t B, int64_t T, int64_t vocab, uint64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  return at::randint(3, vocab - 1, {B, T}, g);
}

double max_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

// A tiny random LLaVA folder.
std::string llava_folder(const std::string& name, uint64_t seed = 11) {
  const std::string dir = testing_util::scratch(name);
  RandomLlavaSpec spec = tiny_llava_spec();
  spec.seed = seed;
  write_random_llava(dir, spec);
  return dir;
}

// A VISOR folder made from a random LLaVA folder with random VISOR blocks.
std::string visor_folder(const std::string& name, uint64_t seed = 5) {
  const std::string llava = llava_folder(name + "_llava");
  const std::string dir = testing_util::scratch(name);
  VqaModel base = VqaModel::load(llava);
  VisorForConditionalGeneration v(base.model, VisorConfig::uniform(2, 2, 2));
  {
    at::NoGradGuard no_grad;
    v->init_weights(seed, 0.2);
  }
  save_visor(v, read_json_file(llava + "/config.json"), dir);
  for (const char* f : {"tokenizer.model", "preprocessor_config.json"})
    fs::copy_file(fs::path(llava) / f, fs::path(dir) / f, fs::copy_options::overwrite_existing);
  return dir;
}

Image test_image() {
  Image img(40, 30, 3);
  for (int y = 0; y < img.height; ++y)
    for (int x = 0; x < img.width; ++x)
      for (int c = 0; c < 3; ++c) img.at(x, y, c) = static_cast<uint8_t>((x * 7 + y * 13 + c * 50) % 256);
  return img;
}

// A prompt with the image token: BOS, a few text ids, <image>, more text ids.
std::vector<int64_t> image_prompt(const LlavaConfig& c) {
  return {1, 40, 41, 42, c.image_token_index, 50, 51, 52, 53, 54};
}

}  // namespace

// =============================================================================================

TEST(Visor, ShapesOfAPassTheCacheAndTheRouter) {
  VisorForConditionalGeneration v = tiny_visor();
  const LlavaConfig& c = v->config();
  EXPECT_EQ(v->visor_config().cross_attention_layers, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(v->visor_config().self_attention_layers, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(v->max_budget(), 2);
  at::NoGradGuard no_grad;
  VisorInput in;
  in.input_ids = random_ids(2, 7, c.text.vocab_size, 1);
  in.image_features = randn({2, 16, 64}, 2);
  VisorCache cache = v->new_cache(2, 32);
  const VisorOutput out = v->forward(in, &cache);
  EXPECT_EQ(out.logits.sizes(), (at::IntArrayRef{2, 7, c.text.vocab_size}));
  EXPECT_EQ(out.last_hidden_state.sizes(), (at::IntArrayRef{2, 7, 64}));
  EXPECT_EQ(out.router_features.sizes(), (at::IntArrayRef{2, 128}));
  EXPECT_EQ(out.router_logits.sizes(), (at::IntArrayRef{2, 3}));
  ASSERT_EQ(out.budgets.size(), 2u);
  EXPECT_EQ(cache.text.length(), 7);  // text positions only: the image takes none
  ASSERT_TRUE(cache.has_image());
  EXPECT_EQ(cache.image_keys[1].sizes(), (at::IntArrayRef{2, 2, 16, 16}));  // [B, kv heads, N, head_dim]
  // A decode step reads the cached image.
  VisorInput step;
  step.input_ids = random_ids(2, 1, c.text.vocab_size, 3);
  const VisorOutput next = v->forward(step, &cache);
  EXPECT_EQ(next.logits.sizes(), (at::IntArrayRef{2, 1, c.text.vocab_size}));
  EXPECT_EQ(next.budgets, out.budgets);
  EXPECT_EQ(cache.text.length(), 8);
  // Parameter names: the LLaVA ones plus visor.*.
  const auto params = v->named_parameters(true);
  EXPECT_TRUE(params.contains("language_model.model.layers.1.mlp.down_proj.weight"));
  EXPECT_TRUE(params.contains("visor.cross_attn.1.q_proj.weight"));
  EXPECT_TRUE(params.contains("visor.self_attn.0.mlp.gate_proj.weight"));
  EXPECT_TRUE(params.contains("visor.router.fc2.bias"));
  EXPECT_EQ(params["visor.position_conv.weight"].sizes(), (at::IntArrayRef{64, 1, 3, 3}));
}

TEST(Visor, ZeroCrossAttentionAndNoSelfAttentionIsTheTextModel) {
  VisorForConditionalGeneration v = tiny_visor();
  at::NoGradGuard no_grad;
  VisorInput in;
  in.input_ids = random_ids(1, 9, v->config().text.vocab_size, 4);
  in.image_features = randn({1, 16, 64}, 5);
  const at::Tensor text_only = v->language_model->forward(in.input_ids);
  VisorForwardOptions fo;
  fo.budgets = {0};
  EXPECT_GT(max_diff(v->forward(in, nullptr, fo).logits, text_only), 1e-2);  // the image matters...
  for (auto& ca : v->visor->cross_blocks) ca->o_proj->weight.zero_();
  EXPECT_LT(max_diff(v->forward(in, nullptr, fo).logits, text_only), 1e-6);  // ...only through cross-attention
  // Self-attention blocks update the image only: with the cross-attention silent, no effect either.
  fo.budgets = {2};
  EXPECT_LT(max_diff(v->forward(in, nullptr, fo).logits, text_only), 1e-6);
}

TEST(Visor, TrainingStartsAsTheTextOnlyModelAtEveryBudget) {
  VisorForConditionalGeneration v = tiny_visor(7);
  at::NoGradGuard no_grad;
  v->init_from_language_model(1);
  // The copies: cross-attention q from the LM layer at its slot, self-attention MLP from its layer.
  EXPECT_TRUE(v->visor->cross_blocks[1]->q_proj->weight.equal(
      v->language_model->model->layers[1]->as<LlamaDecoderLayerImpl>()->self_attn->q_proj->weight));
  EXPECT_TRUE(v->visor->self_blocks[0]->mlp->up_proj->weight.equal(
      v->language_model->model->layers[0]->as<LlamaDecoderLayerImpl>()->mlp->up_proj->weight));
  VisorInput in;
  in.input_ids = random_ids(1, 8, v->config().text.vocab_size, 8);
  in.image_features = randn({1, 16, 64}, 9);
  const at::Tensor text_only = v->language_model->forward(in.input_ids);
  for (int64_t b : {0, 1, 2, -1}) {
    VisorForwardOptions fo;
    fo.budgets = {b};
    const VisorOutput out = v->forward(in, nullptr, fo);
    EXPECT_LT(max_diff(out.logits, text_only), 1e-6) << "budget " << b;
    if (b < 0) EXPECT_EQ(out.budgets[0], 2);  // an untrained router asks for the full budget
  }
}

TEST(Visor, CachedGreedyGenerationEqualsRecomputation) {
  VisorForConditionalGeneration v = tiny_visor(5);
  const LlavaConfig& c = v->config();
  const std::vector<int64_t> prompt = image_prompt(c);
  std::vector<int64_t> text;
  for (int64_t id : prompt)
    if (id != c.image_token_index) text.push_back(id);
  const int64_t n = static_cast<int64_t>(text.size());
  const at::Tensor pixels = randn({1, 3, 32, 32}, 6);
  at::Tensor features;
  {
    at::NoGradGuard no_grad;
    features = v->image_features(pixels);
  }
  std::set<std::vector<int64_t>> answers;
  for (int64_t budget : {0, 1, 2, -1}) {
    GenerateOptions g;
    g.max_new_tokens = 10;
    g.stop_at_eos = false;
    g.keep_logits = true;
    const VisorGenerateResult r = visor_generate(v, prompt, pixels, budget, g);
    ASSERT_EQ(r.result.tokens.size(), 10u);
    EXPECT_EQ(r.image_tokens, 16);
    EXPECT_EQ(r.text_before_image, 4);
    EXPECT_EQ(r.result.prompt_tokens, n);
    if (budget >= 0) EXPECT_EQ(r.budget, budget);
    EXPECT_EQ(r.routed, budget < 0);
    answers.insert(r.result.tokens);
    at::NoGradGuard no_grad;
    std::vector<int64_t> seq = text;
    for (size_t t = 0; t < r.result.tokens.size(); ++t) {
      VisorInput in;
      in.input_ids = at::tensor(seq, at::TensorOptions().dtype(at::kLong)).view({1, -1});
      in.image_features = features;
      in.prompt_lengths = at::tensor(std::vector<int64_t>{n}, at::TensorOptions().dtype(at::kLong));
      VisorForwardOptions fo;
      fo.logits = LogitsMode::Last;
      fo.budgets = {budget};
      const VisorOutput out = v->forward(in, nullptr, fo);
      EXPECT_EQ(out.budgets[0], r.budget);
      const at::Tensor row = out.logits.reshape({-1});
      EXPECT_LT(max_diff(row, r.result.step_logits[t]), 1e-4) << "budget " << budget << " token " << t;
      EXPECT_EQ(row.argmax().item<int64_t>(), r.result.tokens[t]) << "budget " << budget << " token " << t;
      seq.push_back(r.result.tokens[t]);
    }
  }
  EXPECT_GE(answers.size(), 2u);  // the budget changes what a random model says
}

TEST(Visor, MixedBudgetsInABatchEqualOneRowAtATime) {
  VisorForConditionalGeneration v = tiny_visor(9);
  at::NoGradGuard no_grad;
  VisorInput in;
  in.input_ids = random_ids(2, 6, v->config().text.vocab_size, 10);
  in.image_features = randn({2, 16, 64}, 11);
  in.prompt_lengths = at::tensor(std::vector<int64_t>{4, 6}, at::TensorOptions().dtype(at::kLong));
  VisorForwardOptions fo;
  fo.budgets = {0, 2};
  const at::Tensor both = v->forward(in, nullptr, fo).logits;
  for (int64_t r = 0; r < 2; ++r) {
    VisorInput one;
    one.input_ids = in.input_ids.narrow(0, r, 1);
    one.image_features = in.image_features.narrow(0, r, 1);
    one.prompt_lengths = in.prompt_lengths.narrow(0, r, 1);
    VisorForwardOptions o1;
    o1.budgets = {fo.budgets[r]};
    EXPECT_LT(max_diff(v->forward(one, nullptr, o1).logits, both.narrow(0, r, 1)), 1e-5) << "row " << r;
  }
}

TEST(Visor, VisualFlopsByHand) {
  // One layer, hidden 4, one head of 4, MLP 8; 4 image tokens, 1 text token before, 1 after, 1
  // generated token (no decode pass).
  LlamaConfig t;
  t.hidden_size = 4;
  t.num_attention_heads = t.num_key_value_heads = 1;
  t.head_dim = 4;
  t.intermediate_size = 8;
  t.num_hidden_layers = 1;
  VisualWorkload w;
  w.image_tokens = 4;
  w.text_before_image = 1;
  w.text_after_image = 1;
  w.generated_tokens = 1;
  const VisualFlops llava = llava_visual_flops(t, w);
  EXPECT_DOUBLE_EQ(llava.projections, 2 * 4 * 4 * 12 + 2 * 4 * 4 * 4);   // q, k, v + o over 4 image rows
  EXPECT_DOUBLE_EQ(llava.mlp, 2 * 4 * 3 * 4 * 8);
  EXPECT_DOUBLE_EQ(llava.attention, 4 * 4 * (4 * 1 + 10 + 1 * 4));        // 18 pairs with an image token
  EXPECT_DOUBLE_EQ(llava.total(), 1568);
  VisorConfig c;
  c.cross_attention_layers = {0};
  c.self_attention_layers = {0};
  c.router_hidden_size = 2;
  c.validate(t, "test");
  const VisualFlops b0 = visor_visual_flops(c, t, w, 0);
  // conv 2*4*4*9 = 288; cross-attention: image k/v 256, text q/o 128, attention 128.
  EXPECT_DOUBLE_EQ(b0.other, 288);
  EXPECT_DOUBLE_EQ(b0.total(), 288 + 256 + 128 + 128);
  // Self-attention: q 128, k/v over 6 rows 384, o 128, attention 384, MLP 768.
  EXPECT_DOUBLE_EQ(visor_visual_flops(c, t, w, 1).total() - b0.total(), 1792);
  EXPECT_DOUBLE_EQ(visor_visual_flops(c, t, w, 0, true).total() - b0.total(), 2 * (2 * 4 * 2 + 2 * 2));  // router
  // A decode pass adds one text query to the LLaVA attention and to every cross-attention.
  w.generated_tokens = 2;
  EXPECT_DOUBLE_EQ(llava_visual_flops(t, w).total() - llava.total(), 4 * 4 * 4);
  EXPECT_DOUBLE_EQ(visor_visual_flops(c, t, w, 0).total() - b0.total(), 2 * 4 * 4 * 2 + 4 * 4 * 4);
  expect_error<ConfigError>([&] { visor_visual_flops(c, t, w, 2); }, "budget 2");
  // The workload of a prompt: text around the image token.
  const VisualWorkload p = visual_workload({1, 7, 99, 8, 9, 10}, 99, 64, 3);
  EXPECT_EQ(p.text_before_image, 2);
  EXPECT_EQ(p.text_after_image, 3);
  EXPECT_EQ(p.image_tokens, 64);
  EXPECT_EQ(p.decode_passes(), 2);
}

TEST(Visor, VisualFlopsOfThePackSizedModel) {
  // The starter pack's LM (vlm_training.h defaults: hidden 256, 4 layers, 4 heads, MLP 704) and
  // a 224-wide variant; 64 image tokens; a ~20-token prompt; 3 answer tokens.
  for (int64_t hidden : {224, 256}) {
    LlamaConfig t;
    t.hidden_size = hidden;
    t.num_hidden_layers = 4;
    t.num_attention_heads = t.num_key_value_heads = hidden == 224 ? 7 : 4;
    t.head_dim = hidden / t.num_attention_heads;
    t.intermediate_size = hidden == 224 ? 608 : 704;
    VisualWorkload w;
    w.image_tokens = 64;
    w.text_before_image = 4;
    w.text_after_image = 16;
    w.generated_tokens = 3;
    const double llava = llava_visual_flops(t, w).total();
    std::printf("hidden %lld: LLaVA path %.1f MFLOPs\n", static_cast<long long>(hidden), llava / 1e6);
    for (int64_t n_self : {1, 2}) {
      const VisorConfig c = VisorConfig::uniform(4, 2, n_self);
      double last = 0;
      for (int64_t b = 0; b <= n_self; ++b) {
        const double f = visor_visual_flops(c, t, w, b).total();
        std::printf("  2 cross / %lld self, budget %lld: %.1f MFLOPs, %.2fx less\n", static_cast<long long>(n_self),
                    static_cast<long long>(b), f / 1e6, llava / f);
        EXPECT_GT(f, last);
        EXPECT_LT(f, llava);
        last = f;
      }
      EXPECT_GT(llava / visor_visual_flops(c, t, w, 0).total(), 4.0);
    }
  }
}

TEST(Visor, BudgetChangesTheFlopsOfAnAnswer) {
  VisorModel m = VisorModel::load(visor_folder("visor"));
  VisorAskOptions o;
  o.vqa.max_new_tokens = 4;
  std::vector<double> flops;
  for (int64_t b : {0, 1, 2}) {
    o.budget = b;
    const VisorAnswer a = visor_ask(m, test_image(), "What color is the circle?", o);
    EXPECT_EQ(a.budget, b);
    EXPECT_FALSE(a.routed);
    EXPECT_EQ(a.workload.image_tokens, 16);
    EXPECT_EQ(a.workload.prompt_text() + 1, a.answer.stats.text_tokens);  // + the <image> token
    EXPECT_EQ(a.answer.stats.prompt_tokens, a.workload.prompt_text() + 16);
    EXPECT_EQ(a.workload.generated_tokens, static_cast<int64_t>(a.answer.tokens.size()));
    EXPECT_DOUBLE_EQ(a.flops.total(),
                     visor_visual_flops(m.visor->visor_config(), m.visor->config().text, a.workload, b).total());
    EXPECT_DOUBLE_EQ(a.llava_flops.total(), llava_visual_flops(m.visor->config().text, a.workload).total());
    EXPECT_NE(a.line().find("budget " + std::to_string(b)), std::string::npos) << a.line();
    flops.push_back(a.flops.total() - visor_visual_flops(m.visor->visor_config(), m.visor->config().text,
                                                         a.workload, 0).total());
  }
  EXPECT_EQ(flops[0], 0);
  EXPECT_GT(flops[1], 0);
  EXPECT_NEAR(flops[2], 2 * flops[1], 1e-6 * flops[2]);  // two equal self-attention blocks
}

TEST(Visor, SaveLoadRoundtrip) {
  const std::string dir = visor_folder("visor");
  EXPECT_TRUE(is_visor_folder(dir));
  VisorModel m = VisorModel::load(dir);
  VisorForConditionalGeneration direct = load_visor(dir);
  // The same weights as written: the visor_folder model re-made from the same seed.
  VqaModel base = VqaModel::load(dir + "_llava");
  VisorForConditionalGeneration ref(base.model, VisorConfig::uniform(2, 2, 2));
  {
    at::NoGradGuard no_grad;
    ref->init_weights(5, 0.2);
  }
  at::NoGradGuard no_grad;
  VisorInput in;
  in.input_ids = random_ids(1, 7, m.visor->config().text.vocab_size, 12);
  in.image_features = randn({1, 16, 64}, 13);
  for (int64_t b : {0, 2}) {
    VisorForwardOptions fo;
    fo.budgets = {b};
    const at::Tensor want = ref->forward(in, nullptr, fo).logits;
    EXPECT_TRUE(m.visor->forward(in, nullptr, fo).logits.equal(want)) << "budget " << b;
    EXPECT_TRUE(direct->forward(in, nullptr, fo).logits.equal(want)) << "budget " << b;
  }
  // A plain LLaVA loader reads the folder's LLaVA part (skipping visor.*).
  VqaModel as_llava = VqaModel::load(dir);
  EXPECT_TRUE(as_llava.model->language_model->lm_head_weight().equal(ref->language_model->lm_head_weight()));
  // F16 weights load back within F16 rounding.
  const std::string half = testing_util::scratch("half");
  save_visor(m.visor, read_json_file(dir + "/config.json"), half, true);
  VisorForConditionalGeneration h = load_visor(half);
  EXPECT_LT(max_diff(h->visor->self_blocks[1]->mlp->down_proj->weight, m.visor->visor->self_blocks[1]->mlp->down_proj->weight),
            1e-3);
}

TEST(Visor, RouterPicksAValidBudget) {
  VisorForConditionalGeneration v = tiny_visor(13);
  const LlavaConfig& c = v->config();
  const at::Tensor pixels = randn({1, 3, 32, 32}, 14);
  GenerateOptions g;
  g.max_new_tokens = 2;
  for (uint64_t s = 0; s < 4; ++s) {
    const VisorGenerateResult r = visor_generate(v, image_prompt(c), randn({1, 3, 32, 32}, 20 + s), -1, g);
    EXPECT_TRUE(r.routed);
    EXPECT_GE(r.budget, 0);
    EXPECT_LE(r.budget, 2);
  }
  {
    at::NoGradGuard no_grad;
    for (int64_t b : v->route(randn({5, 128}, 15))) {
      EXPECT_GE(b, 0);
      EXPECT_LE(b, 2);
    }
  }
  // The router's choice is what runs: force each budget through the output bias.
  for (int64_t want : {1, 0, 2}) {
    {
      at::NoGradGuard no_grad;
      v->visor->router->fc2->weight.zero_();
      v->visor->router->fc2->bias.zero_();
      v->visor->router->fc2->bias[want].fill_(5.0);
    }
    EXPECT_EQ(visor_generate(v, image_prompt(c), pixels, -1, g).budget, want);
  }
  // Without self-attention blocks there is nothing to route: budget 0, no router.
  VisorForConditionalGeneration plain = tiny_visor(13, 1, 0);
  EXPECT_FALSE(plain->visor->router);
  const VisorGenerateResult r = visor_generate(plain, image_prompt(c), pixels, -1, g);
  EXPECT_EQ(r.budget, 0);
  EXPECT_FALSE(r.routed);
}

TEST(Visor, BadConfigsErrorClearly) {
  const LlamaConfig text = tiny_llava_config().text;  // 2 layers
  auto parse = [&](const Json& j) { return VisorConfig::from_json(j, text, "config.json: visor"); };
  expect_error<ConfigError>([&] { parse(Json::object()); }, "\"cross_attention_layers\" is required");
  expect_error<ConfigError>([&] { parse({{"cross_attention_layers", Json::array()}}); }, "at least one");
  expect_error<ConfigError>([&] { parse({{"cross_attention_layers", {0, 3}}}); }, "slot 3 is outside 0..2");
  expect_error<ConfigError>([&] { parse({{"cross_attention_layers", {1, 1}}}); }, "strictly increasing");
  expect_error<ConfigError>([&] { parse({{"cross_attention_layers", {"a"}}}); }, "expected integers");
  expect_error<ConfigError>([&] { parse({{"cross_attention_layers", {0}}, {"self_attention_layers", {1}}}); },
                            "no cross-attention layer reads");
  expect_error<ConfigError>([&] { parse({{"cross_attention_layers", {0}}, {"position_conv_kernel", 4}}); },
                            "position_conv_kernel");
  expect_error<ConfigError>([&] { parse({{"cross_attention_layers", {0}}, {"position_conv_dims", 3}}); },
                            "position_conv_dims");
  expect_error<ConfigError>([&] { VisorConfig::uniform(2, 3, 0); }, "3 cross-attention layers for 2 LM layers");
  // A 2-D position conv needs a square grid: "full" features add the CLS token (17).
  Json full = tiny_llava_spec().config;
  full["vision_feature_select_strategy"] = "full";
  expect_error<ConfigError>(
      [&] { VisorForConditionalGeneration(LlavaForConditionalGeneration(LlavaConfig::from_json(full, "t")),
                                          VisorConfig::uniform(2, 1, 0)); },
      "17 image tokens");
  // Budgets out of range.
  VisorForConditionalGeneration v = tiny_visor();
  expect_error<ConfigError>([&] { visor_generate(v, image_prompt(v->config()), randn({1, 3, 32, 32}, 1), 3); },
                            "budget 3 is outside 0..2");
  expect_error<ConfigError>([&] { visor_generate(v, {1, 40, 41}, randn({1, 3, 32, 32}, 1), 0); },
                            "exactly once");
  // Folders: a LLaVA folder is not a VISOR one; a config that contradicts the weights names the key.
  const std::string llava = llava_folder("llava");
  expect_error<ConfigError>([&] { VisorModel::load(llava); }, "no \"visor\" block");
  expect_error<ConfigError>([&] { load_visor(llava); }, "no \"visor\" block");
  const std::string dir = visor_folder("visor");
  Json cfg = read_json_file(dir + "/config.json");
  cfg["visor"]["cross_attention_layers"] = {1};
  cfg["visor"]["self_attention_layers"] = {0, 1};
  write_json(dir + "/config.json", cfg);
  expect_error<CheckpointError>([&] { load_visor(dir); }, "visor.cross_attention_layers\" lists 1 layers but the "
                                                          "checkpoint has 2");
  cfg["visor"]["cross_attention_layers"] = {0, 1};
  cfg["visor"]["self_attention_intermediate_size"] = 32;
  write_json(dir + "/config.json", cfg);
  expect_error<CheckpointError>([&] { load_visor(dir); }, "self_attention_intermediate_size");
  cfg["visor"]["self_attention_intermediate_size"] = 0;
  cfg["visor"]["self_attention_layers"] = {1};
  write_json(dir + "/config.json", cfg);
  expect_error<CheckpointError>([&] { load_visor(dir); }, "has 2 self-attention blocks");
}

// The sin-cos position table: the requested RMS, every patch its own row, and rows that differ
// in row or column only differ in their own half of the channels.
TEST(Visor, SinCosPositionTableTellsPatchesApart) {
  VisorPositionConv pc(16, 3, 2, 16);  // H 16, a 4 x 4 grid
  pc->init_sincos(0.5);
  const at::Tensor e = pc->embedding.detach();
  EXPECT_NEAR(e.pow(2).mean().sqrt().item<double>(), 0.5, 1e-5);
  for (int64_t a = 0; a < 16; ++a)
    for (int64_t b = a + 1; b < 16; ++b) EXPECT_GT((e[a] - e[b]).abs().max().item<double>(), 1e-3) << a << " " << b;
  // Patches 0 and 1 share a row: the row half (channels 0..7) is equal, the column half is not.
  EXPECT_LT((e[0].narrow(0, 0, 8) - e[1].narrow(0, 0, 8)).abs().max().item<double>(), 1e-6);
  EXPECT_GT((e[0].narrow(0, 8, 8) - e[1].narrow(0, 8, 8)).abs().max().item<double>(), 1e-3);
  VisorPositionConv none(16, 3, 2);
  none->init_sincos(0.5);  // no embedding: nothing to set
  EXPECT_FALSE(none->embedding.defined());
  // An image of another length than the table's is refused.
  expect_error<ShapeError>([&] { pc(at::zeros({1, 9, 16})); }, "it has 16 image tokens, the image 9");
}

// =============================================================================================
// Training

TEST(VisorTraining, LearnsABatchWithGradientsWhereTheBudgetSays) {
  VisorModel m{VqaModel::load(llava_folder("llava")), nullptr};
  m.visor = VisorForConditionalGeneration(m.base.model, VisorConfig::uniform(2, 2, 2));
  m.visor->init_from_language_model(0);
  const std::vector<VisorVqaItem> batch = visor_vqa_items(1, 2, world::Split::Train, 0.0);
  ASSERT_EQ(batch.size(), 2u);
  EXPECT_FALSE(batch[0].question.answer.empty());
  for (auto& p : m.visor->llava->vision_tower->parameters()) p.set_requires_grad(false);
  for (auto& p : m.visor->visor->router->parameters()) p.set_requires_grad(false);
  TrainerOptions o;
  o.steps = 16;
  o.lr = 3e-3;
  o.log_every = 0;
  Trainer t(named_trainable_parameters(*m.visor), o);
  double first = 0, last = 0;
  t.run([&](int64_t step, at::Generator&) {
    at::Tensor loss = visor_answer_loss(m, batch, step % 3);
    (step == 0 ? first : last) = loss.item<double>();
    return loss;
  });
  EXPECT_LT(last, 0.6 * first) << first << " -> " << last;

  // Gradients reach the cross-attention blocks at every budget, and exactly the self-attention
  // blocks the budget switches on.
  auto grad_norm = [&](torch::nn::Module& mod) {
    double s = 0;
    for (auto& p : mod.parameters())
      if (p.grad().defined()) s += p.grad().norm().item<double>();
    return s;
  };
  auto zero_grads = [&] {
    for (auto& p : m.visor->parameters())
      if (p.grad().defined()) p.mutable_grad() = at::Tensor();
  };
  zero_grads();
  visor_answer_loss(m, batch, 0).backward();
  EXPECT_GT(grad_norm(*m.visor->visor->cross_blocks[0]->k_proj), 0);
  EXPECT_EQ(grad_norm(*m.visor->visor->self_blocks[0]), 0);
  zero_grads();
  visor_answer_loss(m, batch, 1).backward();
  EXPECT_GT(grad_norm(*m.visor->visor->self_blocks[0]->mlp->down_proj), 0);
  EXPECT_EQ(grad_norm(*m.visor->visor->self_blocks[1]), 0);
  EXPECT_EQ(grad_norm(*m.visor->llava->vision_tower), 0);
}

// The lookup loss (VisorTrainOptions::lookup_weight): a cross-attention head learns to put its
// weight, at the position that predicts the answer, on the patches of the object asked about.
TEST(VisorTraining, LookupLossTeachesACrossAttentionHeadWhereAnswersAreRead) {
  VisorModel m{VqaModel::load(llava_folder("llava")), nullptr};
  m.visor = VisorForConditionalGeneration(m.base.model, VisorConfig::uniform(2, 2, 0));
  m.visor->init_from_language_model(0);
  std::vector<VisorVqaItem> batch;
  for (VisorVqaItem& item : visor_vqa_items(7, 40, world::Split::Train, 0.0))
    if (item.question.items.size() == 1 && batch.size() < 8) batch.push_back(std::move(item));
  ASSERT_EQ(batch.size(), 8u);
  for (auto& p : m.visor->llava->vision_tower->parameters()) p.set_requires_grad(false);
  double mass0 = 0, ignored = 0;
  const double plain = visor_answer_loss(m, batch, 0).item<double>();
  const double with = visor_answer_loss(m, batch, 0, 1.0, -1, &mass0).item<double>();
  ASSERT_GT(mass0, 0);
  EXPECT_GT(with - plain, 0.5) << "-log of a weight spread over all patches";
  EXPECT_NEAR(visor_answer_loss(m, batch, 0, 0.0, -1, &ignored).item<double>(), plain, 1e-6);
  EXPECT_EQ(ignored, -1);  // no lookup asked: no mass
  TrainerOptions o;
  o.steps = 30;
  o.lr = 3e-3;
  o.log_every = 0;
  Trainer t(named_trainable_parameters(*m.visor), o);
  double mass = 0;
  t.run([&](int64_t, at::Generator&) { return visor_answer_loss(m, batch, 0, 1.0, -1, &mass); });
  EXPECT_GT(mass, mass0 + 0.2) << mass0 << " -> " << mass;
  // Block 0 was not asked: its head 0 stays spread.
  double block0 = 0;
  visor_answer_loss(m, batch, 0, 1.0, 0, &block0);
  EXPECT_LT(block0, mass - 0.1);
  expect_error<ConfigError>([&] { visor_answer_loss(m, batch, 0, 1.0, 2); }, "cross-attention block 2 is outside 0..1");
  VisorInput in;
  in.input_ids = at::tensor(std::vector<int64_t>{1, 5}, at::kLong).view({1, 2});
  VisorForwardOptions fo;
  fo.record_cross_block = 3;
  expect_error<ConfigError>([&] { m.visor->forward(in, nullptr, fo); }, "block 3 to record, but the model has 2");
}

// questions_per_image: distinct questions about one scene, consecutive, the first one as with
// one per scene; the loss encodes the shared image once and equals the loss of separate copies.
TEST(VisorTraining, SeveralQuestionsPerSceneShareOneImage) {
  const auto one = visor_vqa_items(9, 4, world::Split::Train, 0.0);
  const auto three = visor_vqa_items(9, 12, world::Split::Train, 0.0, false, 3);
  ASSERT_EQ(three.size(), 12u);
  for (size_t s = 0; s < 4; ++s) {
    EXPECT_EQ(three[3 * s].scene.seed, one[s].scene.seed);
    EXPECT_EQ(three[3 * s].question.question, one[s].question.question);
    for (size_t k = 1; k < 3; ++k) {
      EXPECT_EQ(three[3 * s + k].scene.seed, one[s].scene.seed);
      for (size_t j = 0; j < k; ++j)
        EXPECT_FALSE(three[3 * s + k].question.question == three[3 * s + j].question.question &&
                     three[3 * s + k].question.answer == three[3 * s + j].question.answer);
    }
  }
  VisorModel m{VqaModel::load(llava_folder("llava")), nullptr};
  m.visor = VisorForConditionalGeneration(m.base.model, VisorConfig::uniform(2, 2, 1));
  m.visor->init_weights(3);
  std::vector<VisorVqaItem> shared(three.begin(), three.begin() + 6), apart = shared;
  for (size_t i = 0; i < apart.size(); ++i) apart[i].scene.seed = 1000 + i;  // no two items share an image
  at::NoGradGuard no_grad;
  EXPECT_NEAR(visor_answer_loss(m, shared, 1).item<double>(), visor_answer_loss(m, apart, 1).item<double>(), 1e-5);
  expect_error<ConfigError>([] { visor_vqa_items(9, 2, world::Split::Train, 0.0, false, 0); }, "questions per image");
}

// balance_existence: the training questions' existence probes are as often "yes" as "no"
// (make_questions' own mix asks up to three absent objects per present one).
TEST(VisorTraining, BalancedItemsAskPresentAndAbsentObjectsAlike) {
  auto yes_no = [](bool balanced) {
    std::pair<int, int> n{0, 0};
    for (const VisorVqaItem& item : visor_vqa_items(5, 600, world::Split::Train, 0.0, balanced)) {
      if (item.question.pope.empty()) continue;
      (item.question.answer == "yes" ? n.first : n.second) += 1;
    }
    return n;
  };
  const auto plain = yes_no(false), balanced = yes_no(true);
  EXPECT_GT(plain.second, 2 * plain.first) << plain.first << " yes, " << plain.second << " no";
  ASSERT_GT(balanced.first, 20);
  const double ratio = static_cast<double>(balanced.second) / balanced.first;
  EXPECT_GT(ratio, 0.7) << balanced.first << " yes, " << balanced.second << " no";
  EXPECT_LT(ratio, 1.4) << balanced.first << " yes, " << balanced.second << " no";
}

TEST(VisorTraining, PseudoLabelIsTheCheapestBudgetKeepingTheFullAnswer) {
  VisorModel m = VisorModel::load(visor_folder("visor"));
  const auto items = visor_vqa_items(3, 3, world::Split::Train, 0.0);
  for (const VisorVqaItem& item : items) {
    at::Tensor f;
    const int64_t label = visor_pseudo_label(m, item, 5, &f, VisorTrainOptions::RouterLabel::kSameAnswer);
    ASSERT_GE(label, 0);
    ASSERT_LE(label, 2);
    EXPECT_EQ(f.sizes(), (at::IntArrayRef{128}));
    const std::string full = visor_answer(m, item.question.question, item.image, 5, 2);
    EXPECT_EQ(visor_answer(m, item.question.question, item.image, 5, label), full);
    for (int64_t b = 0; b < label; ++b) EXPECT_NE(visor_answer(m, item.question.question, item.image, 5, b), full);
  }
}

// METHODS.md's rule: the cheapest budget reaching the full budget's accuracy on the question:
// a right answer where the full budget's is right (no cheaper budget right), else budget 0.
TEST(VisorTraining, PseudoLabelByCorrectnessIsTheCheapestBudgetAsRightAsTheFull) {
  VisorModel m = VisorModel::load(visor_folder("visor"));
  const auto items = visor_vqa_items(5, 6, world::Split::Train, 0.0);
  for (VisorVqaItem item : items) {
    // The random model's own full-budget answer as the truth, and one it never gives.
    const std::string full = visor_answer(m, item.question.question, item.image, 5, 2);
    for (const bool truth_is_full : {true, false}) {
      item.question.answer = truth_is_full ? full : "no such answer";
      at::Tensor f;
      const int64_t label = visor_pseudo_label(m, item, 5, &f, VisorTrainOptions::RouterLabel::kCorrect);
      EXPECT_EQ(f.sizes(), (at::IntArrayRef{128}));
      if (!truth_is_full) {
        EXPECT_EQ(label, 0) << "the full budget is wrong: the cheapest budget is as right";
        continue;
      }
      ASSERT_GE(label, 0);
      ASSERT_LE(label, 2);
      EXPECT_TRUE(answers_match(visor_answer(m, item.question.question, item.image, 5, label), full));
      for (int64_t b = 0; b < label; ++b)
        EXPECT_FALSE(answers_match(visor_answer(m, item.question.question, item.image, 5, b), full)) << b;
    }
  }
}

TEST(VisorTraining, RunExportsEvaluatesAndResumes) {
  VisorTrainOptions o;
  o.llava_dir = llava_folder("llava");
  o.out_dir = testing_util::scratch("out");
  o.work_dir = testing_util::scratch("work");
  o.steps = 3;
  o.batch = 2;
  o.router_examples = 3;
  o.router_steps = 4;
  o.eval_questions = 2;
  o.max_new_tokens = 3;
  o.log = [](const std::string&) {};
  const VisorTrainReport r = train_visor(o);
  EXPECT_EQ(r.universal_losses.size(), 3u);
  EXPECT_EQ(r.router_losses.size(), 4u);
  ASSERT_EQ(r.label_counts.size(), 2u);  // 2 layers: 1 cross-attention, 1 self-attention by default
  EXPECT_EQ(r.label_counts[0] + r.label_counts[1], 3);
  ASSERT_EQ(r.eval.size(), 4u);  // llava, budget 0, budget 1, router
  EXPECT_EQ(r.eval[0].name, "llava");
  EXPECT_EQ(r.eval[3].name, "router");
  EXPECT_GT(r.eval[0].mean_visual_flops, r.eval[2].mean_visual_flops);
  EXPECT_GT(r.eval[2].mean_visual_flops, r.eval[1].mean_visual_flops);
  for (const VisorEvalRow& row : r.eval) {  // per question kind, adding up to the row
    int64_t asked = 0, correct = 0;
    for (const auto& [kind, cn] : row.by_kind) correct += cn.first, asked += cn.second;
    EXPECT_EQ(asked, row.asked) << row.name;
    EXPECT_EQ(correct, row.correct) << row.name;
  }
  EXPECT_NE(format_visor_eval(r.eval).find("by kind"), std::string::npos);
  EXPECT_TRUE(read_json_file((fs::path(o.out_dir) / "visor_eval.json").string()).dump().find("by_kind") != std::string::npos);
  EXPECT_TRUE(fs::exists(fs::path(o.out_dir) / "visor_eval.json"));
  EXPECT_TRUE(fs::exists(fs::path(o.out_dir) / "tokenizer.model"));
  VisorModel m = VisorModel::load(o.out_dir);
  EXPECT_EQ(m.visor->max_budget(), 1);
  // The same run again: everything is done, nothing retrains, the labels are read back.
  o.eval_questions = 0;
  const VisorTrainReport same = train_visor(o);
  EXPECT_TRUE(same.universal_losses.empty());
  EXPECT_TRUE(same.router_losses.empty());
  EXPECT_EQ(same.label_counts, r.label_counts);
  // More steps: the universal phase resumes at step 3, and labels and router are redone.
  o.steps = 5;
  const VisorTrainReport more = train_visor(o);
  EXPECT_EQ(more.universal_losses.size(), 2u);
  EXPECT_EQ(more.universal_step, 5);
  EXPECT_EQ(more.router_losses.size(), 4u);
  expect_error<ConfigError>([&] {
    VisorTrainOptions bad = o;
    bad.batch = 0;
    train_visor(bad);
  }, "--batch");
  expect_error<ConfigError>([&] {
    VisorTrainOptions bad = o;
    bad.position_kernel = 4;
    train_visor(bad);
  }, "--position-kernel must be a positive odd number");
  expect_error<ConfigError>([&] {
    VisorTrainOptions bad = o;
    bad.lookup_weight = -1;
    train_visor(bad);
  }, "--lookup must be >= 0");
  // A wider position convolution and a position embedding are the exported model's.
  o.position_kernel = 7;
  o.position_embedding = true;
  o.steps = 3;  // the cross-attention blocks' o_proj start at zero: the embedding's gradient comes from step 2
  o.warmup = 0;
  o.work_dir.clear();
  o.router_examples = 0;
  o.out_dir = testing_util::scratch("out7");
  train_visor(o);
  EXPECT_EQ(read_json_file((fs::path(o.out_dir) / "config.json").string())["visor"]["position_conv_kernel"], 7);
  VisorModel wide = VisorModel::load(o.out_dir);
  EXPECT_EQ(wide.visor->visor->position_conv->weight.size(3), 7);
  const at::Tensor embedding = wide.visor->visor->position_conv->embedding;
  ASSERT_TRUE(embedding.defined());
  EXPECT_EQ(embedding.size(0), wide.base.model->config().image_feature_tokens());
  EXPECT_GT(embedding.abs().max().item<double>(), 0) << "a sin-cos table at the image tokens' scale";
  // The embedding moves the image tokens: zeroing it changes the position conv's output.
  const at::Tensor image = at::randn({1, embedding.size(0), embedding.size(1)});
  const at::Tensor with = wide.visor->visor->position_conv(image);
  wide.visor->visor->position_conv->embedding.detach().zero_();
  EXPECT_GT((with - wide.visor->visor->position_conv(image)).abs().max().item<double>(), 0);
  // A config asking for an embedding the weights lack is refused, naming the key.
  const std::string plain_dir = testing_util::scratch("out-plain");
  fs::create_directories(plain_dir);
  for (const auto& e : fs::directory_iterator(o.out_dir)) fs::copy_file(e.path(), fs::path(plain_dir) / e.path().filename());
  o.position_embedding = false;
  o.out_dir = testing_util::scratch("out-noemb");
  train_visor(o);
  fs::copy_file(fs::path(o.out_dir) / "model.safetensors", fs::path(plain_dir) / "model.safetensors",
                fs::copy_options::overwrite_existing);
  expect_error<CheckpointError>([&] { VisorModel::load(plain_dir); }, "position_conv.embedding");
}

#ifdef IRIS_CLI
TEST(VisorCli, TrainThenAskWithABudget) {
  const std::string llava = llava_folder("llava"), out = testing_util::scratch("visor"),
                    image = testing_util::scratch("img.png");
  save_png(image, test_image());
  CliRun r = run_cli("train visor --from " + llava + " --out " + out + " --work " + testing_util::scratch("work") +
                  " --steps 2 --batch 1 --router-examples 2 --router-steps 2 --eval 0 --threads 1");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("cheapest budget as right as the full budget"), std::string::npos) << "METHODS.md's rule by default";
  // The other rule relabels (its own label file); an unknown rule is refused by name.
  r = run_cli("train visor --from " + llava + " --out " + out + " --work " + testing_util::scratch("work") +
              " --steps 2 --batch 1 --router-examples 2 --router-steps 2 --eval 0 --threads 1 --router-label same");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("labelling 2 questions: cheapest budget keeping the full budget's answer"), std::string::npos)
      << r.out;
  r = run_cli("train visor --from " + llava + " --out " + out + " --router-label best");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("best"), std::string::npos) << r.err;
  r = run_cli("ask --model " + out + " --image " + image + " --max-tokens 3 --visor-budget 1 \"What color?\"");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("budget 1, visual"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("x less)"), std::string::npos) << r.out;
  // A budget beyond the model's (checked by VlmAsker once the folder is loaded).
  r = run_cli("ask --model " + out + " --image " + image + " --max-tokens 3 --visor-budget 99 \"What color?\"");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("VISOR budget 99: this model's budgets are 0.."), std::string::npos) << r.err;
  // A budget needs a VISOR folder.
  r = run_cli("ask --model " + llava + " --image " + image + " --visor-budget 1 \"What color?\"");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("not a VISOR one"), std::string::npos) << r.err;

  // iris eval vlm answers with the VISOR decoder at the budget asked, and reports its visual
  // compute against the LLaVA path (budget 1 runs one self-attention block: more than budget 0).
  const std::string json = testing_util::scratch("visor_eval.json");
  const std::string eval = "eval vlm --model " + out + " --questions 4 --describe 1 --threads 1";
  r = run_cli(eval + " --visor-budget 1 --json " + json);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("methods: VISOR, budget 1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("budgets run: 1="), std::string::npos) << r.out;
  const Json j = read_json_file(json);
  ASSERT_TRUE(j.contains("visor")) << j.dump();
  EXPECT_EQ(j["visor"]["budget"], 1);
  const double b1 = j["visor"]["visual_mflops_per_answer"].get<double>();
  EXPECT_GT(j["visor"]["saving_vs_llava"].get<double>(), 0.0);
  r = run_cli(eval + " --visor-budget 0 --json " + json);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_LT(read_json_file(json)["visor"]["visual_mflops_per_answer"].get<double>(), b1);
  // Errors: a budget the folder lacks, a budget for a LLaVA folder, LLaVA-only methods.
  r = run_cli(eval + " --visor-budget 99");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("has budgets 0..1"), std::string::npos) << r.err;
  r = run_cli("eval vlm --model " + llava + " --questions 4 --visor-budget 1");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("not a VISOR one"), std::string::npos) << r.err;
  r = run_cli(eval + " --var");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("not with a VISOR folder"), std::string::npos) << r.err;
}
#endif
