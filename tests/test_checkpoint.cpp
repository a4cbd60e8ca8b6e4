// Checkpoint folders and files: pipeline / model folder / single file, and their errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/checkpoint.h"
#include "core/error.h"
#include "tests/test_util.h"

using namespace iris;
namespace fs = std::filesystem;

namespace {

fs::path fresh_dir(const std::string& name) {
  fs::path d = iris::testing_util::scratch_dir() / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void write_text(const fs::path& p, const std::string& s) {
  fs::create_directories(p.parent_path());
  std::ofstream(p) << s;
}

void write_weights(const fs::path& p, const std::string& name) {
  float v[4] = {1, 2, 3, 4};
  SafetensorsWriter w;
  w.add(name, DType::F32, {2, 2}, v, sizeof v);
  w.write(p.string());
}

}  // namespace

TEST(Checkpoint, PipelineFolder) {
  fs::path d = fresh_dir("pipe");
  write_text(d / "model_index.json",
             R"({"_class_name":"StableDiffusionPipeline","unet":["diffusers","UNet2DConditionModel"],)"
             R"("tokenizer":["transformers","CLIPTokenizer"],"safety_checker":[null,null],"requires_safety_checker":false})");
  write_text(d / "unet/config.json", R"({"_class_name":"UNet2DConditionModel","in_channels":4})");
  write_weights(d / "unet/diffusion_pytorch_model.safetensors", "conv_in.weight");
  write_text(d / "tokenizer/tokenizer_config.json", R"({"model_max_length":77})");
  Checkpoint ck = Checkpoint::open(d.string());
  EXPECT_EQ(ck.kind(), Checkpoint::Kind::Pipeline);
  ASSERT_EQ(ck.parts().size(), 2u);
  const ModelPart& unet = ck.part("unet");
  EXPECT_EQ(unet.class_name, "UNet2DConditionModel");
  EXPECT_EQ(unet.config["in_channels"], 4);
  ASSERT_TRUE(unet.has_weights());
  EXPECT_TRUE(unet.weights->contains("conv_in.weight"));
  EXPECT_FALSE(ck.part("tokenizer").has_weights());
  try {
    ck.part("vae");
    FAIL();
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("no part \"vae\" (it has: tokenizer, unet)"), std::string::npos) << e.what();
  }
}

TEST(Checkpoint, PipelinePartFolderMissing) {
  fs::path d = fresh_dir("pipe_missing");
  write_text(d / "model_index.json", R"({"vae":["diffusers","AutoencoderKL"]})");
  EXPECT_THROW(Checkpoint::open(d.string()), CheckpointError);
}

TEST(Checkpoint, ModelFolderAndSingleFile) {
  fs::path d = fresh_dir("model");
  write_text(d / "config.json", R"({"architectures":["LlamaForCausalLM"],"hidden_size":64})");
  write_weights(d / "model.safetensors", "lm_head.weight");
  Checkpoint ck = Checkpoint::open(d.string());
  EXPECT_EQ(ck.kind(), Checkpoint::Kind::ModelFolder);
  EXPECT_EQ(ck.parts()[0].class_name, "LlamaForCausalLM");

  Checkpoint single = Checkpoint::open((d / "model.safetensors").string());
  EXPECT_EQ(single.kind(), Checkpoint::Kind::SingleFile);
  EXPECT_TRUE(single.parts()[0].weights->contains("lm_head.weight"));
}

TEST(Checkpoint, Errors) {
  EXPECT_THROW(Checkpoint::open((iris::testing_util::scratch_dir() / "nothing-here").string()), IoError);
  fs::path empty = fresh_dir("empty");
  EXPECT_THROW(Checkpoint::open(empty.string()), CheckpointError);

  fs::path pickles = fresh_dir("pickles");
  write_text(pickles / "config.json", "{}");
  write_text(pickles / "pytorch_model.bin", "not really");
  try {
    Checkpoint::open(pickles.string());
    FAIL();
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("pytorch_model.bin"), std::string::npos);
  }

  fs::path two = fresh_dir("two");
  write_weights(two / "a.safetensors", "x");
  write_weights(two / "b.safetensors", "y");
  EXPECT_THROW(Checkpoint::open(two.string()), CheckpointError);

  fs::path bad_json = fresh_dir("badjson");
  write_text(bad_json / "config.json", "{\"hidden_size\": ");
  try {
    Checkpoint::open(bad_json.string());
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("config.json: malformed JSON"), std::string::npos) << e.what();
  }
}

TEST(JsonUtil, TypedGettersNameTheKey) {
  Json j = parse_json(R"({"a": 3, "b": "x", "c": true, "d": 1.5})", "cfg");
  EXPECT_EQ(json_int(j, "a", 0, "cfg"), 3);
  EXPECT_EQ(json_int(j, "zz", 9, "cfg"), 9);
  EXPECT_EQ(json_string(j, "b", "", "cfg"), "x");
  EXPECT_TRUE(json_bool(j, "c", false, "cfg"));
  EXPECT_DOUBLE_EQ(json_number(j, "d", 0, "cfg"), 1.5);
  try {
    json_int(j, "b", 0, "unet/config.json");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(), "unet/config.json: key \"b\": expected an integer, found \"x\"");
  }
  EXPECT_THROW(json_require_int(j, "missing", "cfg"), ConfigError);
  EXPECT_THROW(parse_json("{", "cfg"), FormatError);
}
