// LLaVA-1.5 (vlm/llava.h), FtZ fusion (vlm/ftz.h), the chat template and the VQA pipeline:
//  * the `llava` golden fixture (transformers 4.40.2) through the parity runner, and the cached
//    generation path against no-cache forwards;
//  * the image-token merge: expansion, positions, masks, left padding, several images;
//  * config parsing (defaults, every option, clear errors) and loading errors;
//  * FtZ: shapes, the residual form, and a zero out-projection giving the anchor-only output
//    bit for bit;
//  * end to end on a tiny random folder: prompt ids, streaming, determinism, bad input.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <set>

#include <ATen/core/grad_mode.h>

#include "core/error.h"
#include "core/image.h"
#include "core/tensor_io.h"
#include "pipelines/parity.h"
#include "pipelines/random_model.h"
#include "pipelines/vlm_ask.h"
#include "pipelines/vlm_eval.h"
#include "pipelines/vqa.h"
#include "tests/test_util.h"
#include "vlm/chat_template.h"
#include "vlm/ftz.h"
#include "vlm/llava.h"

namespace fs = std::filesystem;
using namespace iris;

namespace {

const std::string kFixtures = IRIS_FIXTURES_DIR;

LlavaConfig tiny_config(bool ftz = false) { return LlavaConfig::from_json(tiny_llava_spec(ftz).config, "tiny"); }

LlavaForConditionalGeneration tiny_model(bool ftz = false, uint64_t seed = 3) {
  LlavaForConditionalGeneration m(tiny_config(ftz));
  m->init_weights(seed, 0.2);
  m->eval();
  return m;
}

at::Tensor pixels(int64_t n, uint64_t seed = 1) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  return at::randn({n, 3, 32, 32}, g);
}

at::Tensor ids_of(const std::vector<int64_t>& v) {
  return at::tensor(v, at::TensorOptions().dtype(at::kLong)).view({1, static_cast<int64_t>(v.size())});
}

double max_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

// A tiny random folder per test.
std::string tiny_folder(const std::string& name, bool ftz = false) {
  const std::string dir = iris::testing_util::scratch(name);
  RandomLlavaSpec spec = tiny_llava_spec(ftz);
  spec.seed = 11;
  write_random_llava(dir, spec);
  return dir;
}

std::string write_test_png(const std::string& name) {
  Image img(40, 30, 3);
  for (int y = 0; y < img.height; ++y)
    for (int x = 0; x < img.width; ++x)
      for (int c = 0; c < 3; ++c) img.at(x, y, c) = static_cast<uint8_t>((x * 7 + y * 13 + c * 50) % 256);
  const std::string p = iris::testing_util::scratch(name);
  save_png(p, img);
  return p;
}

using iris::testing_util::expect_error;

}  // namespace

// ---------------------------------------------------------------------------------------------
// The golden fixture

TEST(LlavaFixture, EveryOutputPasses) {
  const ParityOutcome out = run_parity(kFixtures + "/llava.safetensors");
  ASSERT_TRUE(out.class_supported);
  std::set<std::string> names;
  for (const ParityLine& l : out.lines) {
    EXPECT_TRUE(l.pass) << l.name << " max_abs " << l.max_abs << " " << l.detail;
    names.insert(l.name);
  }
  for (const char* n : {"vision_hidden_states_selected", "image_features_projected", "logits", "generate_greedy"})
    EXPECT_TRUE(names.count(n)) << n;
}

TEST(LlavaFixture, CachedGenerationEqualsNoCacheForwards) {
  at::NoGradGuard no_grad;
  const Fixture fx = open_fixture(kFixtures + "/llava.safetensors");
  LlavaConfig cfg = LlavaConfig::from_json(fx.config, "llava fixture");
  cfg.text.max_position_embeddings = 128;  // the fixture passes its nominal 64 (see parity_vlm.cpp)
  LlavaForConditionalGeneration m(cfg);
  load_llava_weights(m, *fx.store, {"input.", "output."});
  m->eval();
  const at::Tensor ids = fx.tensor("input.input_ids"), px = fx.tensor("input.pixel_values");
  GenerateOptions opt;
  opt.max_new_tokens = 6;
  opt.stop_at_eos = false;
  opt.keep_logits = true;
  const at::Tensor row = ids[0].contiguous();
  const std::vector<int64_t> prompt(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel());
  const GenerateResult r = llava_generate(m, prompt, px, opt);
  ASSERT_EQ(r.tokens.size(), 6u);
  EXPECT_EQ(r.prompt_tokens, 71);
  // One no-cache forward over prompt + generated tokens: its logits at the last 6 prompt/new
  // positions are the ones each step picked from.
  std::vector<int64_t> all = prompt;
  all.insert(all.end(), r.tokens.begin(), r.tokens.end() - 1);
  const at::Tensor full = m->forward(ids_of(all), px).logits[0];  // [71 + 5, V]
  EXPECT_LT(max_diff(full.narrow(0, 70, 6), r.step_logits), 1e-4);
}

// ---------------------------------------------------------------------------------------------
// Merge

TEST(LlavaMerge, ImageTokenExpandsToEveryFeature) {
  at::NoGradGuard no_grad;
  LlavaForConditionalGeneration m = tiny_model();
  const int64_t img = m->config().image_token_index, T = m->config().image_feature_tokens();
  ASSERT_EQ(T, 16);
  const at::Tensor ids = ids_of({1, 40, 41, img, 42, 43});
  const at::Tensor feats = m->image_features(pixels(1));  // [1, 16, 64]
  ASSERT_EQ(feats.sizes(), (std::vector<int64_t>{1, 16, 64}));
  const LlavaMerged mg = m->merge(ids, feats);
  ASSERT_EQ(mg.inputs_embeds.sizes(), (std::vector<int64_t>{1, 6 - 1 + 16, 64}));
  const at::Tensor text = m->language_model->model->embed(ids);
  EXPECT_TRUE(at::equal(mg.inputs_embeds[0].narrow(0, 0, 3), text[0].narrow(0, 0, 3)));
  EXPECT_TRUE(at::equal(mg.inputs_embeds[0].narrow(0, 3, 16), feats[0]));
  EXPECT_TRUE(at::equal(mg.inputs_embeds[0].narrow(0, 19, 2), text[0].narrow(0, 4, 2)));
  EXPECT_TRUE(at::equal(mg.position_ids[0], at::arange(21, at::kLong)));
  EXPECT_TRUE(mg.attention_mask.eq(1).all().item<bool>());
  EXPECT_EQ(mg.image_mask.sum().item<int64_t>(), 16);
  EXPECT_TRUE(mg.image_mask[0].narrow(0, 3, 16).all().item<bool>());
}

TEST(LlavaMerge, LeftPaddedBatchWithDifferentImageCounts) {
  at::NoGradGuard no_grad;
  Json cfg = tiny_llava_spec().config;
  cfg["pad_token_id"] = 0;  // pad-token embeddings are zeroed
  LlavaForConditionalGeneration m(LlavaConfig::from_json(cfg, "pad 0"));
  m->init_weights(3, 0.2);
  const int64_t img = m->config().image_token_index, T = 16;
  // Row 0: two images; row 1: left padding (id 0, mask 0) and one image.
  const at::Tensor ids = at::tensor(std::vector<int64_t>{1, img, 40, img, 41, 0, 0, 1, img, 42}, at::kLong).view({2, 5});
  const at::Tensor mask = at::tensor(std::vector<int64_t>{1, 1, 1, 1, 1, 0, 0, 1, 1, 1}, at::kLong).view({2, 5});
  const at::Tensor feats = m->image_features(pixels(3));  // images in order: row 0 (2), row 1 (1)
  const LlavaMerged mg = m->merge(ids, feats, mask);
  const int64_t L = 2 * (T - 1) + 5;
  ASSERT_EQ(mg.inputs_embeds.size(1), L);
  // Row 0 fills the length; its second image follows token 40.
  EXPECT_TRUE(at::equal(mg.inputs_embeds[0].narrow(0, 1, T), feats[0]));
  EXPECT_TRUE(at::equal(mg.inputs_embeds[0].narrow(0, 2 + T, T), feats[1]));
  // Row 1 is 5 - 1 + 16 = 20 long, right-aligned: 15 extra padding slots, then its 2 pads.
  const int64_t pad = L - 20;
  EXPECT_EQ(mg.attention_mask[1].narrow(0, 0, pad + 2).sum().item<int64_t>(), 0);
  EXPECT_TRUE(mg.attention_mask[1].narrow(0, pad + 2, 18).eq(1).all().item<bool>());
  EXPECT_TRUE(at::equal(mg.inputs_embeds[1].narrow(0, pad + 3, T), feats[2]));
  EXPECT_EQ(mg.position_ids[1][pad + 2].item<int64_t>(), 0);
  EXPECT_EQ(mg.position_ids[1][L - 1].item<int64_t>(), 17);
  EXPECT_EQ(mg.position_ids[1][0].item<int64_t>(), 1);  // padding at 1, as transformers
  // Padding slots and pad-token positions hold zero embeddings.
  EXPECT_EQ(mg.inputs_embeds[1].narrow(0, 0, pad + 2).abs().sum().item<double>(), 0.0);

  // The padded row's logits equal the row alone.
  const at::Tensor both = m->language_model->forward(mg.input()).logits;
  const at::Tensor alone = m->forward(ids_of({1, img, 42}), pixels(3).narrow(0, 2, 1)).logits;
  EXPECT_LT(max_diff(both[1].narrow(0, pad + 2, 18), alone[0]), 1e-4);
}

TEST(LlavaMerge, ImageCountMustMatchTokens) {
  at::NoGradGuard no_grad;
  LlavaForConditionalGeneration m = tiny_model();
  const int64_t img = m->config().image_token_index;
  expect_error<ConfigError>([&] { m->forward(ids_of({1, img, img, 5}), pixels(1)); }, "2 <image> token(s)");
  expect_error<ConfigError>([&] { m->forward(ids_of({1, 5}), pixels(1)); }, "0 <image> token(s)");
  // No image: plain text through the decoder.
  const at::Tensor text_only = m->forward(ids_of({1, 5, 6}), at::Tensor()).logits;
  EXPECT_LT(max_diff(text_only, m->language_model->forward(ids_of({1, 5, 6}))), 0.0 + 1e-6);
}

// ---------------------------------------------------------------------------------------------
// Config

TEST(LlavaConfig, FixtureConfigAndDefaults) {
  const Fixture fx = open_fixture(kFixtures + "/llava.safetensors");
  const LlavaConfig c = LlavaConfig::from_json(fx.config, "fixture");
  EXPECT_EQ(c.image_token_index, 127);
  EXPECT_EQ(c.vision_feature_layer, -2);
  EXPECT_EQ(c.vision.num_hidden_layers, 2);
  EXPECT_EQ(c.vision.hidden_act, "quick_gelu");
  EXPECT_EQ(c.text.num_key_value_heads, 2);
  EXPECT_FALSE(c.text.tie_word_embeddings);  // text_config's flag, not the top-level one
  EXPECT_EQ(c.pad_token_id, 0);
  EXPECT_EQ(c.image_feature_tokens(), 64);
  EXPECT_FALSE(c.has_ftz);

  // Defaults: transformers' CLIP-L/336 tower and LLaMA-7B (with llava-hf's padded vocabulary,
  // which holds the <image> token 32000).
  const LlavaConfig d = LlavaConfig::from_json({{"text_config", {{"vocab_size", 32064}}}}, "defaults");
  EXPECT_EQ(d.vision.hidden_size, 1024);
  EXPECT_EQ(d.vision.num_hidden_layers, 24);
  EXPECT_EQ(d.vision.image_size, 336);
  EXPECT_EQ(d.vision.patch_size, 14);
  EXPECT_EQ(d.image_feature_tokens(), 576);
  EXPECT_EQ(d.text.hidden_size, 4096);
  EXPECT_EQ(d.image_token_index, 32000);
  EXPECT_EQ(d.pad_token_id, -1);
  Json j = Json::object();
  j["text_config"] = {{"vocab_size", 32064}};
  j["vision_feature_select_strategy"] = "full";
  j["vision_feature_layer"] = -1;
  const LlavaConfig f = LlavaConfig::from_json(j, "full");
  EXPECT_EQ(f.image_feature_tokens(), 577);
}

TEST(LlavaConfig, ClearErrors) {
  Json base = tiny_llava_spec().config;
  auto with = [&](const std::string& key, const Json& v) {
    Json j = base;
    j[key] = v;
    return j;
  };
  expect_error<ConfigError>([&] { LlavaConfig::from_json(with("vision_feature_select_strategy", "cls"), "cfg"); },
                            "vision_feature_select_strategy");
  expect_error<ConfigError>([&] { LlavaConfig::from_json(with("vision_feature_layer", -5), "cfg"); }, "out of range");
  expect_error<ConfigError>([&] { LlavaConfig::from_json(with("vision_feature_layer", Json::array({-2, -1})), "cfg"); },
                            "lists of layers");
  expect_error<ConfigError>([&] { LlavaConfig::from_json(with("projector_hidden_act", "swiglu"), "cfg"); }, "swiglu");
  expect_error<ConfigError>([&] { LlavaConfig::from_json(with("image_token_index", 100000), "cfg"); },
                            "image_token_index");
  expect_error<ConfigError>([&] { LlavaConfig::from_json(with("model_type", "llava_next"), "cfg"); }, "llava_next");
  Json siglip = base;
  siglip["vision_config"]["model_type"] = "siglip_vision_model";
  expect_error<ConfigError>([&] { LlavaConfig::from_json(siglip, "cfg"); }, "siglip_vision_model");
  for (const char* act : {"gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "quick_gelu", "relu", "silu", "linear"})
    EXPECT_NO_THROW(LlavaConfig::from_json(with("projector_hidden_act", act), "cfg")) << act;
}

TEST(LlavaConfig, ActivationsMatchTheirFormulas) {
  const at::Tensor x = at::linspace(-4, 4, 33);
  EXPECT_LT(max_diff(apply_hf_activation(HfActivation::QuickGelu, x), x * at::sigmoid(1.702 * x)), 1e-7);
  EXPECT_LT(max_diff(apply_hf_activation(HfActivation::GeluNew, x), apply_hf_activation(HfActivation::GeluTanh, x)), 1e-6);
  EXPECT_LT(max_diff(apply_hf_activation(HfActivation::GeluFast, x), apply_hf_activation(HfActivation::GeluTanh, x)), 1e-6);
  EXPECT_LT(max_diff(apply_hf_activation(HfActivation::Gelu, x), apply_hf_activation(HfActivation::GeluTanh, x)), 1e-3);
  EXPECT_TRUE(at::equal(apply_hf_activation(HfActivation::Linear, x), x));
}

// ---------------------------------------------------------------------------------------------
// FtZ

TEST(Ftz, ShapesAndResidualForm) {
  at::NoGradGuard no_grad;
  LlavaForConditionalGeneration m = tiny_model(/*ftz=*/true);
  ASSERT_TRUE(m->ftz);
  FtzFusion& f = m->ftz;
  ASSERT_EQ(f->num_fusions(), 2u);
  const at::Tensor px = pixels(2);
  const std::vector<at::Tensor> fused = f->hidden_states(m->anchor(), px);
  ASSERT_EQ(fused.size(), 4u);  // 3 anchor layers + embeddings
  for (const at::Tensor& h : fused) EXPECT_EQ(h.sizes(), (std::vector<int64_t>{2, 17, 32}));
  const std::vector<at::Tensor> aug = f->augmenting().hidden_states(px, 3);
  ASSERT_EQ(aug.size(), 4u);
  EXPECT_EQ(aug[3].sizes(), (std::vector<int64_t>{2, 16, 24}));  // conv: 4x4 positions, width 24

  // Pair (1, 1): fused_1 = layer_0(h_0) + attn(layer_0(h_0), g_1). Pair (2, 3) continues from it.
  const at::Tensor pre1 = m->anchor().layer(0, fused[0]);
  EXPECT_TRUE(at::equal(fused[1], pre1 + f->fusion(0)->attend(pre1, aug[1])));
  const at::Tensor pre2 = m->anchor().layer(1, fused[1]);
  EXPECT_TRUE(at::equal(fused[2], pre2 + f->fusion(1)->attend(pre2, aug[3])));
  EXPECT_GT(max_diff(fused[1], pre1), 1e-3);  // the fusion does something
  EXPECT_TRUE(at::equal(fused[3], m->anchor().layer(2, fused[2])));  // no pair at depth 3
  // LLaVA's features are the fused hidden_states[-2] without CLS.
  EXPECT_TRUE(at::equal(m->vision_features(px), fused[2].narrow(1, 1, 16)));
}

TEST(Ftz, ZeroOutProjectionGivesTheAnchorOnlyPathBitForBit) {
  at::NoGradGuard no_grad;
  for (const bool clip_aug : {false, true}) {
    Json cfg = tiny_llava_spec(true).config;
    if (clip_aug)
      cfg["ftz"]["augmenting_encoder"] = {{"model_type", "clip_vision_model"}, {"hidden_size", 48},
                                          {"intermediate_size", 64}, {"num_hidden_layers", 3},
                                          {"num_attention_heads", 4}, {"image_size", 16}, {"patch_size", 4}};
    LlavaForConditionalGeneration with(LlavaConfig::from_json(cfg, "ftz"));
    with->init_weights(5, 0.2);
    with->ftz->init_weights(6, 0.2, /*zero_out_proj=*/true);
    cfg.erase("ftz");
    LlavaForConditionalGeneration without(LlavaConfig::from_json(cfg, "plain"));
    without->init_weights(5, 0.2);
    const at::Tensor px = pixels(2, 9);
    const at::Tensor a = with->vision_features(px), b = without->vision_features(px);
    EXPECT_TRUE(at::equal(a, b)) << "clip_aug " << clip_aug << " max diff " << max_diff(a, b);
    // And the anchor path itself is the tower's own hidden_state.
    EXPECT_TRUE(at::equal(b, without->vision_tower->hidden_state(px, -2).narrow(1, 1, 16)));
    const at::Tensor ids = ids_of({1, 50, with->config().image_token_index, 51});
    EXPECT_TRUE(at::equal(with->forward(ids, px.narrow(0, 0, 1)).logits, without->forward(ids, px.narrow(0, 0, 1)).logits));
    // A non-zero out projection changes the features.
    with->ftz->init_weights(6, 0.2, false);
    EXPECT_FALSE(at::equal(with->vision_features(px), b));
  }
}

TEST(Ftz, ConvPositionEmbeddingTellsTokensApart) {
  at::NoGradGuard no_grad;
  ConvEncoderConfig c;
  c.num_channels = 3, c.image_size = 16, c.patch_size = 4, c.hidden_size = 8, c.num_layers = 1, c.norm_groups = 2;
  ConvVisionEncoder plain(c);
  c.position_embedding = true;
  ConvVisionEncoder with(c);
  ASSERT_TRUE(with->position_embedding.defined());
  EXPECT_EQ(with->position_embedding.sizes(), (std::vector<int64_t>{16, 8}));
  with->stem->weight.copy_(plain->stem->weight);
  with->stem->bias.copy_(plain->stem->bias);
  const at::Tensor flat = at::full({1, 3, 16, 16}, 0.3);
  // A uniform image: every stem token is the same without the embedding; with it they differ
  // by exactly the embedding.
  const at::Tensor a = plain->embed(flat), b = with->embed(flat);
  EXPECT_TRUE(at::allclose(a[0][0], a[0][5]));
  with->position_embedding.normal_(0.0, 1.0);
  const at::Tensor b2 = with->embed(flat);
  EXPECT_TRUE(at::allclose(b2 - with->position_embedding, a, 1e-6, 1e-6));
  EXPECT_FALSE(at::allclose(b2[0][0], b2[0][5]));
  EXPECT_TRUE(at::equal(b, a));  // initialised at zero: the plain encoder until trained
  // Another image size gives another token count than the embedding has: a clear error.
  expect_error<ShapeError>([&] { with->embed(at::zeros({1, 3, 32, 32})); }, "the position embedding has 16");
  // The config key round-trips and must be a boolean.
  Json j = {{"model_type", "conv"}, {"image_size", 16}, {"patch_size", 4}, {"hidden_size", 8}, {"norm_groups", 2},
            {"position_embedding", true}};
  EXPECT_TRUE(ConvEncoderConfig::from_json(j, "aug").position_embedding);
  j["position_embedding"] = "yes";
  expect_error<ConfigError>([&] { ConvEncoderConfig::from_json(j, "aug"); }, "position_embedding");
}

TEST(Ftz, ConfigErrors) {
  Json cfg = tiny_llava_spec(true).config;
  auto bad = [&](const Json& ftz, const std::string& msg) {
    Json j = cfg;
    j["ftz"] = ftz;
    expect_error<ConfigError>([&] { LlavaForConditionalGeneration m(LlavaConfig::from_json(j, "cfg")); }, msg);
  };
  Json f = cfg["ftz"];
  Json g = f;
  g["pairs"] = {{2, 1}, {1, 2}};
  bad(g, "strictly increasing");
  g = f;
  g["pairs"] = {{4, 1}};
  bad(g, "beyond the anchor");
  g = f;
  g["pairs"] = {{1, 9}};
  bad(g, "beyond the augmenting encoder");
  g = f;
  g["heads"] = 5;
  bad(g, "heads 5");
  g = f;
  g["pairs"] = Json::array();
  bad(g, "pairs");
  g = f;
  g["augmenting_encoder"]["model_type"] = "dinov2";
  bad(g, "dinov2");
}

// ---------------------------------------------------------------------------------------------
// Loading

TEST(LlavaLoad, FolderRoundTripAndErrors) {
  at::NoGradGuard no_grad;
  const std::string dir = tiny_folder("llava");
  LlavaForConditionalGeneration m = load_llava(dir);
  const at::Tensor px = pixels(1);
  const at::Tensor ids = ids_of({1, 50, m->config().image_token_index, 51});
  const at::Tensor logits = m->forward(ids, px).logits;
  EXPECT_EQ(logits.size(1), 4 - 1 + 16);

  // A config whose sizes contradict the weights names the config key.
  auto with_config = [&](const std::string& name, const std::function<void(Json&)>& edit) {
    const std::string d = iris::testing_util::scratch(name);
    fs::create_directories(d);
    for (const char* f : {"model.safetensors", "tokenizer.model", "preprocessor_config.json"})
      fs::copy_file(fs::path(dir) / f, fs::path(d) / f);
    Json cfg = read_json_file(dir + "/config.json");
    edit(cfg);
    std::ofstream(d + "/config.json") << cfg.dump(2);
    return d;
  };
  expect_error<CheckpointError>([&] { load_llava(with_config("c1", [](Json& c) { c["text_config"]["hidden_size"] = 128; })); },
                                "hidden_size\" = 128");
  expect_error<CheckpointError>(
      [&] { load_llava(with_config("c2", [](Json& c) { c["vision_config"]["num_hidden_layers"] = 2; })); },
      "vision_config.num_hidden_layers");
  expect_error<CheckpointError>([&] { load_llava(with_config("c3", [](Json& c) { c["vision_config"]["patch_size"] = 4; })); },
                                "vision_config.patch_size");
  expect_error<CheckpointError>(
      [&] { load_llava(with_config("c4", [](Json& c) { c["text_config"]["num_key_value_heads"] = 4; })); },
      "num_key_value_heads");
  // FtZ declared but its weights absent, and the reverse.
  expect_error<CheckpointError>([&] { load_llava(with_config("c5", [](Json& c) { c["ftz"] = tiny_llava_spec(true).config["ftz"]; })); },
                                "no FtZ weights (ftz.*)");
  const std::string ftz_dir = tiny_folder("llava_ftz", true);
  LlavaForConditionalGeneration with_ftz = load_llava(ftz_dir);
  EXPECT_TRUE(with_ftz->ftz);
  {
    const std::string d = iris::testing_util::scratch("c6");
    fs::create_directories(d);
    fs::copy_file(fs::path(ftz_dir) / "model.safetensors", fs::path(d) / "model.safetensors");
    std::ofstream(d + "/config.json") << tiny_llava_spec(false).config.dump(2);
    expect_error<CheckpointError>([&] { load_llava(d); }, "declares no \"ftz\" block");
  }
}

// The image position embedding (config "image_position_embedding", an Iris extension): zeros
// at initialisation give the plain projector bit for bit; trained rows tell image tokens apart;
// it saves and loads back; a config and a checkpoint that disagree are refused by name.
TEST(LlavaImagePosition, StartsAsThePlainProjectorAndLoadsBack) {
  at::NoGradGuard no_grad;
  Json with_position = tiny_llava_spec(false).config;
  with_position["image_position_embedding"] = true;
  const LlavaConfig cfg = LlavaConfig::from_json(with_position, "tiny");
  EXPECT_TRUE(cfg.image_position_embedding);
  EXPECT_FALSE(tiny_config().image_position_embedding);
  LlavaForConditionalGeneration plain = tiny_model();
  LlavaForConditionalGeneration placed(cfg);
  placed->init_weights(3, 0.2);
  placed->eval();
  const at::Tensor pe = placed->multi_modal_projector->position_embedding;
  ASSERT_TRUE(pe.defined());
  EXPECT_EQ(pe.sizes(), (std::vector<int64_t>{cfg.image_feature_tokens(), cfg.text.hidden_size}));
  EXPECT_EQ(pe.abs().max().item<double>(), 0.0);
  const at::Tensor px = pixels(2);
  EXPECT_TRUE(at::equal(placed->image_features(px), plain->image_features(px)));
  const at::Tensor ids = ids_of({1, 50, cfg.image_token_index, 51});
  EXPECT_TRUE(at::equal(placed->forward(ids, px.narrow(0, 0, 1)).logits, plain->forward(ids, px.narrow(0, 0, 1)).logits));

  // A trained embedding adds its row t to the t-th token of every image.
  at::Generator g = at::detail::createCPUGenerator(5);
  pe.copy_(at::randn(pe.sizes(), g));
  const at::Tensor shift = placed->image_features(px) - plain->image_features(px);  // [2, T, H]
  EXPECT_LT(max_diff(shift[0], pe), 1e-5);
  EXPECT_LT(max_diff(shift[1], pe), 1e-5);
  expect_error<ConfigError>([&] { placed->multi_modal_projector(at::zeros({1, 3, cfg.vision.hidden_size})); },
                            "position embedding has 16 tokens but the image gives 3");

  // Round trip through a folder, then the two mismatches.
  const std::string dir = iris::testing_util::scratch("llava_image_position");
  fs::create_directories(dir);
  write_weights(dir + "/model.safetensors", *placed, /*f16=*/false);
  write_json(dir + "/config.json", with_position);
  LlavaForConditionalGeneration loaded = load_llava(dir);
  EXPECT_TRUE(at::equal(loaded->multi_modal_projector->position_embedding, pe));
  EXPECT_TRUE(at::equal(loaded->forward(ids, px.narrow(0, 0, 1)).logits, placed->forward(ids, px.narrow(0, 0, 1)).logits));
  write_json(dir + "/config.json", tiny_llava_spec(false).config);
  expect_error<CheckpointError>([&] { load_llava(dir); }, "does not set \"image_position_embedding\": true");
  const std::string plain_dir = tiny_folder("llava_plain_for_position");
  write_json(plain_dir + "/config.json", with_position);
  expect_error<CheckpointError>([&] { load_llava(plain_dir); }, "has no multi_modal_projector.position_embedding");
  with_position["image_position_embedding"] = "yes";
  expect_error<ConfigError>([&] { LlavaConfig::from_json(with_position, "tiny"); }, "image_position_embedding");
}

TEST(LlavaLoad, ShardedCheckpoint) {
  at::NoGradGuard no_grad;
  const std::string dir = tiny_folder("whole");
  const std::string d = iris::testing_util::scratch("sharded");
  fs::create_directories(d);
  for (const char* f : {"config.json", "tokenizer.model"}) fs::copy_file(fs::path(dir) / f, fs::path(d) / f);
  // Split the weights by part into two shards with an index, as transformers saves them.
  const TensorStore store = TensorStore::open(dir + "/model.safetensors");
  std::vector<std::pair<std::string, at::Tensor>> a, b;
  Json map = Json::object();
  for (const std::string& n : store.names()) {
    const bool first = n.rfind("language_model.", 0) == 0;
    (first ? a : b).emplace_back(n, read_tensor(store, n));
    map[n] = first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  write_safetensors(d + "/model-00001-of-00002.safetensors", a, {{"format", "pt"}});
  write_safetensors(d + "/model-00002-of-00002.safetensors", b, {{"format", "pt"}});
  std::ofstream(d + "/model.safetensors.index.json") << Json({{"metadata", Json::object()}, {"weight_map", map}}).dump();
  LlavaForConditionalGeneration whole = load_llava(dir), sharded = load_llava(d);
  const at::Tensor ids = ids_of({1, 50, whole->config().image_token_index, 51});
  EXPECT_TRUE(at::equal(whole->forward(ids, pixels(1)).logits, sharded->forward(ids, pixels(1)).logits));
}

// ---------------------------------------------------------------------------------------------
// Chat template and VQA

TEST(ChatTemplate, RenderAndLlamaTokenization) {
  const ChatTemplate t = ChatTemplate::llava15();
  EXPECT_EQ(t.render("  What are these? \n"), "USER: <image>\nWhat are these? ASSISTANT:");
  expect_error<ConfigError>([&] { t.render(" \n\t"); }, "question is empty");
  expect_error<ConfigError>([&] { ChatTemplate::parse("USER: <image> ASSISTANT:"); }, "{question}");
  EXPECT_EQ(ChatTemplate::parse("Q: {question}\nA:").image_count(), 0);
  // The ids LLaVA-1.5 sees (each piece encoded with the dummy prefix, <image> = 32000, BOS).
  const SentencePieceTokenizer llama = SentencePieceTokenizer::load(kFixtures + "/data/llama2_tokenizer.model");
  const std::vector<int64_t> ids = tokenize_with_images(llama, t.render("What are these?"), "<image>", 32000, 1);
  const std::vector<int64_t> want = {1,   3148, 1001, 29901, 29871, 32000, 29871, 13,   5618,
                                     526, 1438, 29973, 319,  1799,  9047,  13566, 29901};
  EXPECT_EQ(ids, want);
}

TEST(Vqa, EndToEndStreamingAndDeterminism) {
  const std::string dir = tiny_folder("vqa");
  VqaModel m = VqaModel::load(dir);
  const std::string img = write_test_png("img.png");
  VqaOptions opt;
  opt.max_new_tokens = 8;
  std::string streamed;
  const VqaAnswer a = ask(m, img, "What is the color of the square?", opt, [&](const std::string& d) {
    streamed += d;
    return true;
  });
  EXPECT_EQ(streamed, a.text);
  EXPECT_EQ(a.stats.generated_tokens, static_cast<int64_t>(a.tokens.size()));
  EXPECT_LE(a.stats.generated_tokens, 8);
  EXPECT_EQ(a.stats.prompt_tokens, a.stats.text_tokens - 1 + 16);
  EXPECT_GT(a.stats.prefill_ms, 0.0);
  EXPECT_NE(a.stats.line().find("prompt tokens " + std::to_string(a.stats.prompt_tokens)), std::string::npos);
  // Greedy twice: the same answer; sampling with a seed: reproducible.
  EXPECT_EQ(ask(m, img, "What is the color of the square?", opt).tokens, a.tokens);
  opt.sampling.temperature = 1.5f;
  opt.sampling.top_k = 20;
  opt.sampling.top_p = 0.9f;
  opt.sampling.repetition_penalty = 1.2f;
  opt.sampling.seed = 4;
  const VqaAnswer s1 = ask(m, img, "What is this?", opt), s2 = ask(m, img, "What is this?", opt);
  EXPECT_EQ(s1.tokens, s2.tokens);
  // The prompt: BOS, the template's text, the image token once.
  const std::vector<int64_t> ids = vqa_prompt_ids(m, "What is this?");
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), m.model->config().image_token_index), 1);
  EXPECT_EQ(m.tokenizer.decode(std::vector<int>(ids.begin() + 1, ids.begin() + 3)), "USER:");
}

TEST(Vqa, StopStringsCutTheAnswer) {
  const std::string dir = tiny_folder("vqa_stop");
  VqaModel m = VqaModel::load(dir);
  const std::string img = write_test_png("img.png");
  VqaOptions opt;
  opt.max_new_tokens = 12;
  const VqaAnswer full = ask(m, img, "Describe it.", opt);
  ASSERT_GE(full.text.size(), 3u) << "the random model should say something";
  opt.stop_strings = {full.text.substr(full.text.size() / 2, 2)};
  std::string streamed;
  const VqaAnswer cut = ask(m, img, "Describe it.", opt, [&](const std::string& d) {
    streamed += d;
    return true;
  });
  EXPECT_EQ(cut.stats.stop, StopReason::StopString);
  EXPECT_EQ(cut.text, full.text.substr(0, full.text.find(opt.stop_strings[0])));
  EXPECT_EQ(streamed, cut.text);
}

TEST(Vqa, BadInputGivesClearErrors) {
  const std::string dir = tiny_folder("vqa_bad");
  const std::string img = write_test_png("img.png");
  {  // missing tokenizer.model
    const std::string d = iris::testing_util::scratch("no_tok");
    fs::create_directories(d);
    for (const char* f : {"config.json", "model.safetensors"}) fs::copy_file(fs::path(dir) / f, fs::path(d) / f);
    expect_error<IoError>([&] { VqaModel::load(d); }, "tokenizer.model: missing");
  }
  expect_error<IoError>([&] { VqaModel::load("/nonexistent/llava"); }, "/nonexistent/llava");
  VqaModel m = VqaModel::load(dir);
  // An image that fails to decode.
  const std::string junk = iris::testing_util::scratch("junk.png");
  std::ofstream(junk) << "not a png at all";
  expect_error<FormatError>([&] { ask(m, junk, "What is this?"); }, "junk.png");
  expect_error<IoError>([&] { ask(m, "/nonexistent/img.png", "What is this?"); }, "/nonexistent/img.png");
  // An empty question.
  expect_error<ConfigError>([&] { ask(m, img, "   "); }, "question is empty");
  // A prompt longer than the context (256 positions here).
  const std::string long_q(400, 'x');
  expect_error<ConfigError>([&] { ask(m, img, long_q); }, "more than the model's context of 256");
  // A template without the image.
  VqaOptions opt;
  opt.chat_template = "Q: {question} A:";
  expect_error<ConfigError>([&] { ask(m, img, "What?", opt); }, "exactly once");
}

// ---------------------------------------------------------------------------------------------
// The faithfulness methods through ask() (issue 8): VAR, LocoRE, SGRS and the saliency map

TEST(VqaFaithfulness, NeutralMethodsEqualPlainDecodingAndHooksGoAway) {
  const std::string dir = tiny_folder("vqa_faith");
  VqaModel m = VqaModel::load(dir);
  const std::string img = write_test_png("img.png");
  VqaOptions plain;
  plain.max_new_tokens = 10;
  const VqaAnswer base = ask(m, img, "What is this?", plain);
  ASSERT_FALSE(base.tokens.empty());
  EXPECT_EQ(base.methods, "baseline");

  // VAR keeping all sink attention (p = 1) and LocoRE with beta = 0 change nothing: the
  // hooked path (merged prompt, generate_faithful) must give plain decoding's tokens.
  VqaOptions neutral = plain;
  neutral.faithfulness.var = true;
  neutral.faithfulness.var_options.sink_dims = {0, 5};
  neutral.faithfulness.var_options.p = 1.0;
  neutral.faithfulness.var_options.tau = 1.0;  // many sinks: p = 1 must still be neutral
  neutral.faithfulness.locore = true;
  neutral.faithfulness.locore_options.beta = 0.0;
  const VqaAnswer same = ask(m, img, "What is this?", neutral);
  EXPECT_EQ(same.tokens, base.tokens);
  EXPECT_EQ(same.text, base.text);
  EXPECT_NE(same.methods.find("var(p=1"), std::string::npos) << same.methods;
  EXPECT_NE(same.methods.find("locore(beta=0"), std::string::npos) << same.methods;
  EXPECT_EQ(same.stats.prompt_tokens, base.stats.prompt_tokens);

  // A strong LocoRE changes the attention; afterwards no hook is left behind.
  VqaOptions strong = plain;
  strong.faithfulness.locore = true;
  strong.faithfulness.locore_options.beta = 5.0;
  strong.faithfulness.locore_options.layers = {0, 1};
  const VqaAnswer boosted = ask(m, img, "What is this?", strong);
  EXPECT_EQ(boosted.tokens.size() <= 10, true);
  EXPECT_EQ(ask(m, img, "What is this?", plain).tokens, base.tokens);

  // A bad option fails before decoding and leaves no hook installed.
  VqaOptions bad = plain;
  bad.faithfulness.locore = true;
  bad.faithfulness.locore_options.layers = {7};
  expect_error<ConfigError>([&] { ask(m, img, "What is this?", bad); }, "7");
  bad = plain;
  bad.faithfulness.var = true;  // no sink dims
  expect_error<ConfigError>([&] { ask(m, img, "What is this?", bad); }, "sink_dims is empty");
  bad = plain;
  bad.faithfulness.sgrs = true;
  bad.faithfulness.saliency.layers = {9};
  expect_error<ConfigError>([&] { ask(m, img, "What is this?", bad); }, "layer 9");
  EXPECT_EQ(ask(m, img, "What is this?", plain).tokens, base.tokens);
}

TEST(VqaFaithfulness, SgrsIsSeededAndCountsItsDraws) {
  const std::string dir = tiny_folder("vqa_sgrs");
  VqaModel m = VqaModel::load(dir);
  const std::string img = write_test_png("img.png");
  VqaOptions o;
  o.max_new_tokens = 6;
  o.faithfulness.sgrs = true;
  o.sampling.seed = 3;
  const VqaAnswer a = ask(m, img, "Describe it.", o), b = ask(m, img, "Describe it.", o);
  EXPECT_EQ(a.tokens, b.tokens);
  ASSERT_FALSE(a.tokens.empty());
  EXPECT_EQ(a.sgrs.tokens, static_cast<int64_t>(a.tokens.size()));
  EXPECT_EQ(a.sgrs.first_draw_accepted + a.sgrs.redrawn + a.sgrs.fallbacks, a.sgrs.tokens);
  EXPECT_NE(a.methods.find("sgrs(K=5"), std::string::npos) << a.methods;
}

TEST(VqaFaithfulness, SaliencyMapCoversThePatchGrid) {
  const std::string dir = tiny_folder("vqa_saliency");
  VqaModel m = VqaModel::load(dir);
  const std::string img = write_test_png("img.png");
  VqaOptions o;
  o.max_new_tokens = 5;
  o.saliency_map = true;
  const VqaAnswer a = ask(m, img, "Where is the square?", o);
  VqaOptions plain = o;
  plain.saliency_map = false;
  EXPECT_EQ(a.tokens, ask(m, img, "Where is the square?", plain).tokens);  // the map does not change the answer
  ASSERT_TRUE(a.saliency.defined());
  const int64_t side = m.model->config().vision.image_size / m.model->config().vision.patch_size;
  ASSERT_EQ(a.saliency.sizes(), (std::vector<int64_t>{side, side}));
  EXPECT_TRUE(at::isfinite(a.saliency).all().item<bool>());
  EXPECT_GE(a.saliency.min().item<float>(), 0.0f);
  EXPECT_GT(a.saliency.sum().item<float>(), 0.0f);
}

TEST(VqaFaithfulness, EvalAnswererCountsTokensAndTime) {
  const std::string dir = tiny_folder("vqa_tally");
  VqaModel m = VqaModel::load(dir);
  Image picture(32, 32, 3);
  VqaTally tally;
  VqaOptions o;
  const VlmAnswerFn answer = vqa_answerer(m, o, &tally);
  const std::string first = answer("What is this?", picture, 4);
  answer("Describe it.", picture, 3);
  EXPECT_EQ(tally.answers, 2);
  EXPECT_GE(tally.generated_tokens, 2);
  EXPECT_LE(tally.generated_tokens, 7);
  EXPECT_GT(tally.seconds, 0.0);
  EXPECT_EQ(first, greedy_vqa_answerer(m)("What is this?", picture, 4));
}

TEST(VlmAsk, OptionRulesNameTheConflict) {
  auto rejects = [](VlmAskOptions o, bool visor, const std::string& part) {
    try {
      validate_ask_options(o, visor);
      ADD_FAILURE() << "no error; expected one naming " << part;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  VlmAskOptions ok;
  EXPECT_NO_THROW(validate_ask_options(ok, false));
  EXPECT_NO_THROW(validate_ask_options(ok, true));
  VlmAskOptions o;
  o.vqa.max_new_tokens = 0;
  rejects(o, false, "max new tokens 0");
  o = ok;
  o.draft_chain = -1;
  rejects(o, false, "draft chain -1");
  o = ok;
  o.compare = true;
  rejects(o, false, "compare needs a ViSpec draft");
  o = ok;
  o.draft = "/d";
  rejects(o, true, "not on a VISOR folder");
  o = ok;
  o.visor_budget = 1;
  rejects(o, false, "needs a VISOR folder");
  o.visor_budget = -2;
  rejects(o, true, "VISOR budget -2");
  o = ok;
  o.vqa.faithfulness.locore = true;
  rejects(o, true, "not on a VISOR folder");
  o.draft = "/d";
  rejects(o, false, "not with a ViSpec draft");
  o = ok;
  o.vqa.saliency_map = true;
  rejects(o, true, "saliency maps");
  // The overlay needs a 2-D map.
  EXPECT_THROW(saliency_overlay(Image(8, 8, 3), at::ones({4})), ShapeError);
  const Image heat = saliency_overlay(Image(40, 30, 3), at::rand({4, 4}), 64);
  EXPECT_EQ(heat.width, 64);
  EXPECT_EQ(heat.height, 64);
}

#ifdef IRIS_CLI
TEST(VqaFaithfulness, AskCliWritesTheSaliencyMapAndRejectsBadCombinations) {
  using iris::testing_util::run_cli;
  const std::string dir = tiny_folder("vqa_cli_faith");
  const std::string img = write_test_png("img.png");
  const std::string out = iris::testing_util::scratch("saliency.png");
  fs::remove(out);
  const auto ok = run_cli("ask --model " + dir + " --image " + img + " --max-tokens 4 --locore --sgrs --saliency " +
                          out + " \"What is this?\"");
  ASSERT_EQ(ok.code, 0) << ok.err;
  EXPECT_NE(ok.out.find("methods: locore(beta=0.15,w=8)+sgrs(K=5"), std::string::npos) << ok.out;
  EXPECT_NE(ok.out.find("saliency: " + out), std::string::npos) << ok.out;
  const Image map = load_image(out);
  EXPECT_EQ(map.width, 256);  // the 30-pixel square the model saw, enlarged for viewing
  EXPECT_EQ(map.height, 256);

  const auto missing = run_cli("ask --model " + dir + " --image " + img + " --saliency /nonexistent/dir/s.png \"What?\"");
  EXPECT_NE(missing.code, 0);
  EXPECT_NE(missing.err.find("/nonexistent/dir"), std::string::npos) << missing.err;
  const auto with_draft = run_cli("ask --model " + dir + " --image " + img + " --draft " + dir + " --locore \"What?\"");
  EXPECT_NE(with_draft.code, 0);
  EXPECT_NE(with_draft.err.find("not with --draft"), std::string::npos) << with_draft.err;
  const auto no_dims = run_cli("ask --model " + dir + " --image " + img + " --var \"What?\"");
  EXPECT_NE(no_dims.code, 0);
  EXPECT_NE(no_dims.err.find("iris vlm sinks"), std::string::npos) << no_dims.err;
  const auto bad_k = run_cli("ask --model " + dir + " --image " + img + " --sgrs --sgrs-k 0 \"What?\"");
  EXPECT_NE(bad_k.code, 0);
  EXPECT_NE(bad_k.err.find("SGRS"), std::string::npos) << bad_k.err;
}
#endif
