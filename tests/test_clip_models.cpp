// CLIP text and vision towers: golden fixtures (transformers 4.40.2), other configs, pooling,
// masks, early stop, checkpoint loading and error paths.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/grad_mode.h>

#include "core/checkpoint.h"
#include "core/error.h"
#include "core/runtime.h"
#include "core/state_dict.h"
#include "core/tensor_io.h"
#include "diffusion/clip.h"
#include "pipelines/parity.h"
#include "tests/test_util.h"

using namespace iris;

namespace {

std::string fixture(const std::string& name) { return std::string(IRIS_FIXTURES_DIR) + "/" + name; }

std::string describe(const ParityOutcome& out) {
  std::string s = "class " + out.cls + (out.class_supported ? "" : " (no runner)") + "\n";
  for (const ParityLine& l : out.lines)
    s += "  " + l.name + " max_abs " + std::to_string(l.max_abs) + (l.pass ? " PASS " : " FAIL ") + l.detail + "\n";
  return s;
}

// A text config unlike the fixture's: gelu, other widths, head count and lengths.
ClipTextConfig small_text_config() {
  ClipTextConfig c;
  c.vocab_size = 50;
  c.hidden_size = 48;
  c.intermediate_size = 64;
  c.projection_dim = 24;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 6;
  c.max_position_embeddings = 16;
  c.hidden_act = "gelu";
  c.eos_token_id = 49;
  return c;
}

ClipVisionConfig small_vision_config() {
  ClipVisionConfig c;
  c.hidden_size = 40;
  c.intermediate_size = 56;
  c.projection_dim = 12;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 5;
  c.num_channels = 1;
  c.image_size = 28;
  c.patch_size = 7;
  c.hidden_act = "gelu_new";
  return c;
}

std::vector<std::pair<std::string, at::Tensor>> state_of(torch::nn::Module& m) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& p : m.named_parameters(true)) out.emplace_back(p.key(), p.value().detach().clone());
  return out;
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

// ---- golden fixtures --------------------------------------------------------------------------

TEST(ClipParity, FixturesPassThroughTheRunners) {
  for (const char* name : {"clip_text.safetensors", "clip_text_proj.safetensors", "clip_vision_proj.safetensors"}) {
    const ParityOutcome out = run_parity(fixture(name));
    EXPECT_TRUE(out.class_supported) << name;
    EXPECT_TRUE(out.passed()) << name << "\n" << describe(out);
    // round trip + hidden_states.0..2 + last_hidden_state + pooled/embeds + early stop
    EXPECT_GE(out.lines.size(), 7u) << name << "\n" << describe(out);
  }
}

TEST(ClipParity, ModuleNamesAreTheReferenceStateDictNames) {
  const Fixture fx = open_fixture(fixture("clip_vision_proj.safetensors"));
  ClipVisionModel model(ClipVisionConfig::from_json(fx.config, "fixture"), true);
  std::vector<std::string> names;
  for (const auto& p : model->named_parameters(true)) names.push_back(p.key());
  std::vector<std::string> params;
  for (const std::string& n : fx.store->names())
    if (n.rfind("input.", 0) != 0 && n.rfind("output.", 0) != 0) params.push_back(n);
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, params);
  // And the loader needs no table at all for a file with only parameters.
  EXPECT_TRUE(std::count(names.begin(), names.end(), "vision_model.pre_layrnorm.weight"));
}

TEST(ClipParity, RunsOnCudaWhenAvailable) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device in this build/machine";
  at::NoGradGuard no_grad;
  RenameTable params_only;
  params_only.ignore("input.").ignore("output.");
  {
    const Fixture fx = open_fixture(fixture("clip_vision_proj.safetensors"));
    ClipVisionModel model(ClipVisionConfig::from_json(fx.config, "fixture"), true);
    model->eval();
    load_state_dict(*model, *fx.store, params_only);
    model->to(at::Device(at::kCUDA));
    const ClipVisionOutput out = model->forward(fx.tensor("input.pixel_values").to(at::kCUDA), true);
    EXPECT_TRUE(out.image_embeds.is_cuda());
    EXPECT_TRUE(compare("image_embeds", out.image_embeds, fx.tensor("output.image_embeds")).pass);
    EXPECT_TRUE(compare("last", out.last_hidden_state, fx.tensor("output.last_hidden_state")).pass);
    EXPECT_TRUE(compare("h1", model->hidden_state(fx.tensor("input.pixel_values"), -2),
                        fx.tensor("output.hidden_states.1"))
                    .pass);
  }
  {
    const Fixture fx = open_fixture(fixture("clip_text_proj.safetensors"));
    ClipTextModel model(ClipTextConfig::from_json(fx.config, "fixture"), true);
    model->eval();
    load_state_dict(*model, *fx.store, params_only);
    model->to(at::Device(at::kCUDA));
    const ClipTextOutput out = model->forward(fx.tensor("input.input_ids").to(at::kCUDA));
    EXPECT_TRUE(compare("text_embeds", out.text_embeds, fx.tensor("output.text_embeds")).pass);
    EXPECT_TRUE(compare("last", out.last_hidden_state, fx.tensor("output.last_hidden_state")).pass);
  }
}

// ---- configs ----------------------------------------------------------------------------------

TEST(ClipConfig, DefaultsAreTransformersDefaults) {
  const ClipTextConfig t = ClipTextConfig::from_json(Json::object(), "t");
  EXPECT_EQ(t.vocab_size, 49408);
  EXPECT_EQ(t.hidden_size, 512);
  EXPECT_EQ(t.intermediate_size, 2048);
  EXPECT_EQ(t.num_hidden_layers, 12);
  EXPECT_EQ(t.num_attention_heads, 8);
  EXPECT_EQ(t.max_position_embeddings, 77);
  EXPECT_EQ(t.projection_dim, 512);
  EXPECT_EQ(t.eos_token_id, 49407);
  EXPECT_EQ(t.hidden_act, "quick_gelu");
  const ClipVisionConfig v = ClipVisionConfig::from_json(Json::object(), "v");
  EXPECT_EQ(v.hidden_size, 768);
  EXPECT_EQ(v.intermediate_size, 3072);
  EXPECT_EQ(v.num_attention_heads, 12);
  EXPECT_EQ(v.image_size, 224);
  EXPECT_EQ(v.patch_size, 32);
  EXPECT_EQ(v.num_positions(), 50);
  // null means "absent" (vision configs carry "eos_token_id": null and the like).
  const ClipTextConfig n = ClipTextConfig::from_json(Json::parse(R"({"eos_token_id": null, "hidden_size": 64})"), "n");
  EXPECT_EQ(n.eos_token_id, 49407);
  EXPECT_EQ(n.hidden_size, 64);
}

TEST(ClipConfig, AcceptsFullClipConfigAndLlavaConfig) {
  const Json clip = Json::parse(R"({
    "model_type": "clip", "projection_dim": 768,
    "text_config": {"hidden_size": 768, "num_attention_heads": 12, "projection_dim": 768, "eos_token_id": 2},
    "text_config_dict": {"intermediate_size": 3072},
    "vision_config": {"hidden_size": 1024, "image_size": 336, "patch_size": 14, "num_hidden_layers": 24,
                      "num_attention_heads": 16, "intermediate_size": 4096, "projection_dim": 768}})");
  const ClipTextConfig t = ClipTextConfig::from_json(clip, "clip");
  EXPECT_EQ(t.hidden_size, 768);
  EXPECT_EQ(t.intermediate_size, 3072);
  EXPECT_EQ(t.eos_token_id, 2);
  EXPECT_EQ(t.projection_dim, 768);
  const ClipVisionConfig v = ClipVisionConfig::from_json(clip, "clip");
  EXPECT_EQ(v.hidden_size, 1024);
  EXPECT_EQ(v.num_positions(), 577);
  EXPECT_EQ(v.num_hidden_layers, 24);
  const Json llava = Json::parse(R"({"model_type": "llava", "vision_feature_layer": -2,
    "vision_config": {"model_type": "clip_vision_model", "hidden_size": 32, "image_size": 32, "patch_size": 4,
                      "num_attention_heads": 4, "num_hidden_layers": 2, "hidden_act": "quick_gelu"},
    "text_config": {"model_type": "llama"}})");
  const ClipVisionConfig lv = ClipVisionConfig::from_json(llava, "llava");
  EXPECT_EQ(lv.num_patches(), 64);
  EXPECT_EQ(clip_layers_for_hidden_state(-2, lv.num_hidden_layers, "llava"), 1);
}

TEST(ClipConfig, InvalidValuesNameTheKey) {
  auto text_error = [](const char* json) {
    return error_of([&] { ClipTextConfig::from_json(Json::parse(json), "text_encoder/config.json"); });
  };
  EXPECT_NE(text_error(R"({"hidden_act": "swish"})").find("hidden_act"), std::string::npos);
  EXPECT_NE(text_error(R"({"hidden_size": "512"})").find("hidden_size"), std::string::npos);
  EXPECT_NE(text_error(R"({"hidden_size": 50, "num_attention_heads": 8})").find("not divisible"), std::string::npos);
  EXPECT_NE(text_error(R"({"vocab_size": 0})").find("vocab_size"), std::string::npos);
  EXPECT_NE(text_error(R"({"hidden_size": 50})").find("text_encoder/config.json"), std::string::npos);
  EXPECT_THROW(ClipVisionConfig::from_json(Json::parse(R"({"patch_size": 300})"), "v"), ConfigError);
  EXPECT_THROW(ClipTextConfig::from_json(Json::parse(R"({"hidden_act": "swish"})"), "t"), ConfigError);
  EXPECT_THROW(clip_layers_for_hidden_state(3, 2, "x"), ConfigError);
  EXPECT_THROW(clip_layers_for_hidden_state(-4, 2, "x"), ConfigError);
  EXPECT_EQ(clip_layers_for_hidden_state(-3, 2, "x"), 0);
  EXPECT_EQ(clip_layers_for_hidden_state(2, 2, "x"), 2);
}

// ---- other sizes ------------------------------------------------------------------------------

TEST(ClipText, OtherConfigBuildsAndRunsWithTheRightShapes) {
  at::manual_seed(1);
  at::NoGradGuard no_grad;
  const ClipTextConfig cfg = small_text_config();
  ClipTextModel model(cfg, true);
  model->eval();
  const at::Tensor ids = at::randint(0, 49, {3, 11}, at::kLong);
  ClipTextOptions opt;
  opt.output_hidden_states = true;
  const ClipTextOutput out = model->forward(ids, opt);
  EXPECT_EQ(out.last_hidden_state.sizes(), (std::vector<int64_t>{3, 11, 48}));
  EXPECT_EQ(out.pooler_output.sizes(), (std::vector<int64_t>{3, 48}));
  EXPECT_EQ(out.text_embeds.sizes(), (std::vector<int64_t>{3, 24}));
  ASSERT_EQ(out.hidden_states.size(), 4u);
  for (const at::Tensor& h : out.hidden_states) EXPECT_EQ(h.sizes(), (std::vector<int64_t>{3, 11, 48}));
  EXPECT_TRUE(out.last_hidden_state.isfinite().all().item<bool>());
  // final_layer_norm applies to the last hidden state only.
  EXPECT_TRUE(model->text_model->final_layer_norm(out.hidden_states.back()).equal(out.last_hidden_state));
  // Stopping early gives exactly the hidden state of the full run.
  for (int64_t k = 0; k <= 3; ++k) {
    EXPECT_TRUE(model->hidden_state(ids, k).equal(out.hidden_states[static_cast<size_t>(k)])) << k;
    EXPECT_TRUE(model->hidden_state(ids, k - 4).equal(out.hidden_states[static_cast<size_t>(k)])) << k;
  }
  // Without projection there is no text_projection parameter and no text_embeds.
  ClipTextModel plain(cfg, false);
  EXPECT_FALSE(plain->with_projection());
  EXPECT_FALSE(plain->forward(ids).text_embeds.defined());
}

TEST(ClipVision, OtherConfigBuildsAndRunsWithTheRightShapes) {
  at::manual_seed(2);
  at::NoGradGuard no_grad;
  const ClipVisionConfig cfg = small_vision_config();
  ClipVisionModel model(cfg, true);
  model->eval();
  const at::Tensor px = at::randn({2, 1, 28, 28});
  const ClipVisionOutput out = model->forward(px, true);
  EXPECT_EQ(out.last_hidden_state.sizes(), (std::vector<int64_t>{2, 17, 40}));
  EXPECT_EQ(out.pooler_output.sizes(), (std::vector<int64_t>{2, 40}));
  EXPECT_EQ(out.image_embeds.sizes(), (std::vector<int64_t>{2, 12}));
  ASSERT_EQ(out.hidden_states.size(), 4u);
  EXPECT_TRUE(out.hidden_states.back().equal(out.last_hidden_state));
  EXPECT_TRUE(model->vision_model->post_layernorm(out.last_hidden_state.select(1, 0)).equal(out.pooler_output));
  for (int64_t k = 0; k <= 3; ++k)
    EXPECT_TRUE(model->hidden_state(px, k).equal(out.hidden_states[static_cast<size_t>(k)])) << k;
  EXPECT_TRUE(model->hidden_state(px, -2).equal(out.hidden_states[2]));
  // Pixels in another dtype are converted to the weights' dtype.
  EXPECT_TRUE(at::allclose(model->forward(px.to(at::kDouble)).image_embeds, out.image_embeds, 1e-6, 1e-6));
}

// ---- pooling, masks, causality ------------------------------------------------------------------

TEST(ClipText, PoolsAtTheFirstEosOrAtTheLargestIdForLegacyConfigs) {
  at::manual_seed(3);
  at::NoGradGuard no_grad;
  ClipTextConfig cfg = small_text_config();  // eos 49
  ClipTextModel model(cfg, false);
  model->eval();
  // Row 0: EOS at 3 then EOS padding (as SD pads); row 1: no EOS at all -> position 0.
  const at::Tensor ids = at::tensor({0, 5, 7, 49, 49, 49, 1, 9, 8, 7, 6, 5}, at::kLong).view({2, 6});
  EXPECT_TRUE(model->text_model->eos_positions(ids).to(at::kLong).equal(at::tensor({3, 0}, at::kLong)));
  const ClipTextOutput out = model->forward(ids);
  EXPECT_TRUE(out.pooler_output[0].equal(out.last_hidden_state[0][3]));
  EXPECT_TRUE(out.pooler_output[1].equal(out.last_hidden_state[1][0]));

  cfg.eos_token_id = 2;  // legacy: argmax of the ids, first maximum
  ClipTextModel legacy(cfg, false);
  EXPECT_TRUE(legacy->text_model->eos_positions(ids).to(at::kLong).equal(at::tensor({3, 1}, at::kLong)));
}

TEST(ClipText, CausalAndPaddingMasks) {
  at::manual_seed(4);
  at::NoGradGuard no_grad;
  ClipTextModel model(small_text_config(), false);
  model->eval();
  at::Tensor ids = at::randint(0, 49, {2, 9}, at::kLong);
  const at::Tensor base = model->forward(ids).last_hidden_state;
  // Causal: changing token 5 leaves positions 0..4 unchanged.
  at::Tensor changed = ids.clone();
  changed.select(1, 5).copy_(at::remainder(ids.select(1, 5) + 1, 49));  // a different token
  const at::Tensor after = model->forward(changed).last_hidden_state;
  EXPECT_TRUE(at::allclose(after.narrow(1, 0, 5), base.narrow(1, 0, 5), 1e-6, 1e-6));
  EXPECT_FALSE(at::allclose(after.narrow(1, 5, 1), base.narrow(1, 5, 1), 1e-6, 1e-6));
  // A mask of ones changes nothing; masking trailing keys leaves earlier positions unchanged.
  ClipTextOptions ones;
  ones.attention_mask = at::ones({2, 9}, at::kLong);
  EXPECT_TRUE(at::allclose(model->forward(ids, ones).last_hidden_state, base, 1e-6, 1e-6));
  ClipTextOptions pad;
  at::Tensor m = at::ones({2, 9}, at::kLong);
  m.narrow(1, 6, 3).zero_();
  pad.attention_mask = m;
  const at::Tensor padded = model->forward(ids, pad).last_hidden_state;
  EXPECT_TRUE(at::allclose(padded.narrow(1, 0, 6), base.narrow(1, 0, 6), 1e-6, 1e-6));
  // Left padding: queries whose visible keys are all padding stay finite (as in transformers).
  ClipTextOptions left;
  at::Tensor lm = at::ones({2, 9}, at::kLong);
  lm.narrow(1, 0, 3).zero_();
  left.attention_mask = lm;
  EXPECT_TRUE(model->forward(ids, left).last_hidden_state.isfinite().all().item<bool>());
  EXPECT_TRUE(model->hidden_state(ids, -2, lm).isfinite().all().item<bool>());
  ClipTextOptions bad;
  bad.attention_mask = at::ones({2, 8}, at::kLong);
  EXPECT_THROW(model->forward(ids, bad), ShapeError);
}

// ---- error paths ------------------------------------------------------------------------------

TEST(ClipErrors, TooManyTokensAndBadIds) {
  ClipTextModel model(small_text_config(), false);  // max_position_embeddings 16
  const std::string e = error_of([&] { model->forward(at::zeros({1, 17}, at::kLong)); });
  EXPECT_NE(e.find("17"), std::string::npos) << e;
  EXPECT_NE(e.find("16"), std::string::npos) << e;
  EXPECT_THROW(model->forward(at::zeros({1, 17}, at::kLong)), ShapeError);
  EXPECT_THROW(model->hidden_state(at::zeros({1, 17}, at::kLong), -2), ShapeError);
  EXPECT_NO_THROW(model->forward(at::zeros({1, 16}, at::kLong)));
  EXPECT_THROW(model->forward(at::full({1, 4}, 50, at::kLong)), ShapeError);  // vocab 50
  EXPECT_THROW(model->forward(at::full({1, 4}, -1, at::kLong)), ShapeError);
  EXPECT_THROW(model->forward(at::zeros({4}, at::kLong)), ShapeError);
  EXPECT_THROW(model->forward(at::zeros({1, 4}, at::kFloat)), ShapeError);
  EXPECT_THROW(model->forward(at::zeros({1, 0}, at::kLong)), ShapeError);
  EXPECT_THROW(model->hidden_state(at::zeros({1, 4}, at::kLong), 4), ConfigError);
}

TEST(ClipErrors, WrongPixelValues) {
  ClipVisionModel model(small_vision_config(), true);  // 1 x 28 x 28
  const std::string e = error_of([&] { model->forward(at::zeros({2, 1, 30, 30})); });
  EXPECT_NE(e.find("[2,1,30,30]"), std::string::npos) << e;
  EXPECT_NE(e.find("28"), std::string::npos) << e;
  EXPECT_THROW(model->forward(at::zeros({2, 1, 30, 30})), ShapeError);
  EXPECT_THROW(model->forward(at::zeros({2, 3, 28, 28})), ShapeError);
  EXPECT_THROW(model->forward(at::zeros({1, 28, 28})), ShapeError);
  EXPECT_THROW(model->hidden_state(at::zeros({2, 1, 28, 27}), -2), ShapeError);
  EXPECT_THROW(model->forward(at::zeros({2, 1, 28, 28}, at::kLong)), ShapeError);
}

TEST(ClipErrors, CheckpointWithMissingKeyOrWrongShapeNamesTheKey) {
  at::manual_seed(5);
  ClipTextModel src(small_text_config(), true);
  auto state = state_of(*src);
  const std::string path = testing_util::scratch("text.safetensors");

  // Missing key.
  auto missing = state;
  missing.erase(std::find_if(missing.begin(), missing.end(),
                             [](const auto& kv) { return kv.first == "text_model.encoder.layers.1.mlp.fc1.bias"; }));
  write_safetensors(path, missing);
  ClipTextModel dst(small_text_config(), true);
  std::string e = error_of([&] { dst->load(TensorStore::open(path)); });
  EXPECT_NE(e.find("text_model.encoder.layers.1.mlp.fc1.bias"), std::string::npos) << e;
  EXPECT_THROW(dst->load(TensorStore::open(path)), CheckpointError);

  // Wrong shape: a checkpoint with other widths than the config.
  auto wrong = state;
  for (auto& kv : wrong)
    if (kv.first == "text_projection.weight") kv.second = at::zeros({25, 48});
  write_safetensors(path, wrong);
  e = error_of([&] { dst->load(TensorStore::open(path)); });
  EXPECT_NE(e.find("text_projection.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("[24,48]"), std::string::npos) << e;
  EXPECT_NE(e.find("[25,48]"), std::string::npos) << e;
  EXPECT_THROW(dst->load(TensorStore::open(path)), CheckpointError);

  // An unexpected key is an error too.
  auto extra = state;
  extra.emplace_back("text_model.encoder.layers.7.mlp.fc1.bias", at::zeros({64}));
  write_safetensors(path, extra);
  e = error_of([&] { dst->load(TensorStore::open(path)); });
  EXPECT_NE(e.find("text_model.encoder.layers.7.mlp.fc1.bias"), std::string::npos) << e;
}

// ---- loading real checkpoint layouts --------------------------------------------------------------

TEST(ClipLoad, LegacyPositionIdsAndFullClipModelFiles) {
  at::manual_seed(6);
  at::NoGradGuard no_grad;
  ClipTextModel text(small_text_config(), true);
  ClipVisionModel vision(small_vision_config(), true);
  text->eval();
  vision->eval();
  auto state = state_of(*text);
  for (auto& kv : state_of(*vision)) state.push_back(kv);
  // What a transformers < 4.31 CLIPModel file holds besides the parameters.
  state.emplace_back("text_model.embeddings.position_ids", at::arange(16, at::kLong).view({1, 16}));
  state.emplace_back("vision_model.embeddings.position_ids", at::arange(17, at::kLong).view({1, 17}));
  state.emplace_back("logit_scale", at::full({}, 2.6592f));
  const std::string path = testing_util::scratch("clip.safetensors");
  write_safetensors(path, state);
  const TensorStore store = TensorStore::open(path);

  ClipTextModel t2(small_text_config(), true);
  ClipVisionModel v2(small_vision_config(), false);  // CLIPVisionModel: the projection is ignored
  t2->eval();
  v2->eval();
  EXPECT_TRUE(t2->load(store).ok());
  EXPECT_TRUE(v2->load(store).ok());
  const at::Tensor ids = at::randint(0, 49, {2, 7}, at::kLong);
  EXPECT_TRUE(t2->forward(ids).text_embeds.equal(text->forward(ids).text_embeds));
  const at::Tensor px = at::randn({1, 1, 28, 28});
  EXPECT_TRUE(v2->forward(px).pooler_output.equal(vision->forward(px).pooler_output));
}

TEST(ClipLoad, ModelFolderWithConfigJson) {
  at::manual_seed(7);
  at::NoGradGuard no_grad;
  ClipVisionModel src(small_vision_config(), true);
  src->eval();
  const auto dir = testing_util::scratch_dir() / "image_encoder";
  std::filesystem::create_directories(dir);
  write_safetensors((dir / "model.safetensors").string(), state_of(*src));
  write_text((dir / "config.json").string(), R"({
    "architectures": ["CLIPVisionModelWithProjection"], "model_type": "clip_vision_model",
    "hidden_size": 40, "intermediate_size": 56, "projection_dim": 12, "num_hidden_layers": 3,
    "num_attention_heads": 5, "num_channels": 1, "image_size": 28, "patch_size": 7, "hidden_act": "gelu_new"})");
  const Checkpoint ck = Checkpoint::open(dir.string());
  ClipVisionModel loaded = load_clip_vision_model(ck.parts().at(0));
  EXPECT_TRUE(loaded->with_projection());
  const at::Tensor px = at::randn({2, 1, 28, 28});
  EXPECT_TRUE(loaded->forward(px).image_embeds.equal(src->forward(px).image_embeds));

  // A config that disagrees with the weights: the error names the key and both shapes.
  write_text((dir / "config.json").string(), R"({"architectures": ["CLIPVisionModelWithProjection"],
    "hidden_size": 40, "intermediate_size": 60, "projection_dim": 12, "num_hidden_layers": 3,
    "num_attention_heads": 5, "num_channels": 1, "image_size": 28, "patch_size": 7})");
  const std::string e = error_of([&] { load_clip_vision_model(Checkpoint::open(dir.string()).parts().at(0)); });
  EXPECT_NE(e.find("vision_model.encoder.layers.0.mlp.fc1.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("[60,40]"), std::string::npos) << e;
  EXPECT_NE(e.find("[56,40]"), std::string::npos) << e;
}
