// UNet2DConditionModel and AutoencoderKL: parity with diffusers, configurations the
// fixtures do not show, and checkpoint errors.
#include <gtest/gtest.h>
#include <torch/utils.h>

#include "core/error.h"
#include "core/state_dict.h"
#include "core/tensor_io.h"
#include "diffusion/ldm_names.h"
#include "diffusion/noise.h"
#include "diffusion/unet.h"
#include "diffusion/vae.h"
#include "pipelines/parity.h"
#include "tests/test_util.h"

using namespace iris;

namespace {

void expect_all_pass(const std::string& fixture) {
  ParityOutcome out = run_parity(std::string(IRIS_FIXTURES_DIR) + "/" + fixture);
  ASSERT_TRUE(out.class_supported) << fixture << ": " << out.cls;
  for (const ParityLine& l : out.lines) EXPECT_TRUE(l.pass) << fixture << " " << l.name << " max_abs " << l.max_abs << " " << l.detail;
  EXPECT_GE(out.lines.size(), 3u);
}

UNetConfig small_config() {
  UNetConfig c;
  c.block_out_channels = {32, 64};
  c.down_block_types = {"CrossAttnDownBlock2D", "DownBlock2D"};
  c.up_block_types = {"UpBlock2D", "CrossAttnUpBlock2D"};
  c.layers_per_block = {1, 1};
  c.transformer_layers_per_block = {1, 1};
  c.num_attention_heads = {4, 4};
  c.cross_attention_dim = 24;
  return c;
}

}  // namespace

TEST(UNetParity, Tiny) { expect_all_pass("unet_tiny.safetensors"); }
TEST(UNetParity, Sd15Like) { expect_all_pass("unet_sd15like.safetensors"); }
TEST(UNetParity, Sd15LikeLdmNaming) { expect_all_pass("unet_sd15like_ldm.safetensors"); }
TEST(VaeParity, Tiny) { expect_all_pass("vae_tiny.safetensors"); }
TEST(VaeParity, TinyLdmNaming) { expect_all_pass("vae_tiny_ldm.safetensors"); }

TEST(UNet, OtherConfigurationsRun) {
  torch::NoGradGuard no_grad;
  // Head counts as a list, linear projections, another cross-attention width, 3 levels,
  // non-square latents whose sides are not multiples of 4 (explicit upsample sizes).
  Json j = parse_json(R"({"block_out_channels":[32,64,64],"down_block_types":["CrossAttnDownBlock2D","CrossAttnDownBlock2D","DownBlock2D"],
      "up_block_types":["UpBlock2D","CrossAttnUpBlock2D","CrossAttnUpBlock2D"],"layers_per_block":[1,2,1],
      "attention_head_dim":[2,4,8],"use_linear_projection":true,"cross_attention_dim":48,"transformer_layers_per_block":2,
      "norm_num_groups":16,"in_channels":4,"out_channels":4})", "cfg");
  UNetConfig c = UNetConfig::from_json(j, "cfg");
  EXPECT_EQ(c.num_attention_heads, (std::vector<int64_t>{2, 4, 8}));
  UNet2DCondition unet(c);
  for (auto [h, w] : {std::pair<int64_t, int64_t>{6, 10}, {7, 5}, {8, 8}}) {
    at::Tensor out = unet->forward(at::randn({2, 4, h, w}), at::tensor({10, 500}), at::randn({2, 5, 48}));
    EXPECT_EQ(out.sizes(), (std::vector<int64_t>{2, 4, h, w}));
  }
  // Eight attn2 layers (2 + 2 down with 2 transformer layers... counted per block) in processor order.
  auto layers = unet->cross_attention_layers();
  ASSERT_FALSE(layers.empty());
  EXPECT_EQ(layers.front().first, "down_blocks.0.attentions.0.transformer_blocks.0.attn2");
  EXPECT_EQ(layers.back().first.rfind("mid_block", 0), 0u);
}

TEST(UNet, LdmRenameCoversEveryParameter) {
  // The table is generated from the config: a non-SD topology (2 then 1 layers per block)
  // shifts every input/output block index.
  UNetConfig c = small_config();
  c.layers_per_block = {2, 1};
  RenameTable t = ldm_unet_renames(c);
  EXPECT_EQ(t.apply("model.diffusion_model.input_blocks.3.0.op.weight"), "down_blocks.0.downsamplers.0.conv.weight");
  EXPECT_EQ(t.apply("model.diffusion_model.input_blocks.4.0.in_layers.0.weight"), "down_blocks.1.resnets.0.norm1.weight");
  EXPECT_EQ(t.apply("model.diffusion_model.output_blocks.1.0.skip_connection.bias"), "up_blocks.0.resnets.1.conv_shortcut.bias");
  EXPECT_EQ(t.apply("model.diffusion_model.output_blocks.1.1.conv.weight"), "up_blocks.0.upsamplers.0.conv.weight");
  EXPECT_EQ(t.apply("model.diffusion_model.output_blocks.4.1.proj_in.weight"), "up_blocks.1.attentions.2.proj_in.weight");
}

TEST(UNet, BadConfigsAndInputs) {
  EXPECT_THROW(UNetConfig::from_json(parse_json(R"({"class_embed_type":"timestep"})", "c"), "c"), ConfigError);
  EXPECT_THROW(UNetConfig::from_json(parse_json(R"({"down_block_types":["Weird"],"up_block_types":["UpBlock2D"],"block_out_channels":[32]})", "c"), "c"), ConfigError);
  EXPECT_THROW(UNetConfig::from_json(parse_json(R"({"block_out_channels":[32,64],"down_block_types":["DownBlock2D"]})", "c"), "c"), ConfigError);
  try {
    UNetConfig::from_json(parse_json(R"({"attention_head_dim":"eight"})", "unet/config.json"), "unet/config.json");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("attention_head_dim"), std::string::npos) << e.what();
  }
  UNetConfig c = small_config();
  c.num_attention_heads = {5, 5};  // 32 channels do not split into 5 heads
  EXPECT_THROW(UNet2DCondition{c}, ConfigError);
  UNet2DCondition unet(small_config());
  EXPECT_THROW(unet->forward(at::randn({1, 3, 8, 8}), at::tensor({1}), at::randn({1, 2, 24})), ShapeError);
  EXPECT_THROW(unet->forward(at::randn({1, 4, 8, 8}), at::tensor({1}), at::randn({1, 2, 25})), ShapeError);
  EXPECT_THROW(unet->forward(at::randn({2, 4, 8, 8}), at::tensor({1, 2, 3}), at::randn({2, 2, 24})), ShapeError);
}

TEST(UNet, CheckpointErrorsNameTheKey) {
  const std::string fx = std::string(IRIS_FIXTURES_DIR) + "/unet_tiny.safetensors";
  TensorStore store = TensorStore::open(fx);
  Json cfg = parse_json(store.metadata().at("config"), "config");
  // A config that contradicts the weights: other channel widths.
  Json wrong = cfg;
  wrong["block_out_channels"] = {64, 64};
  UNet2DCondition unet(UNetConfig::from_json(wrong, "cfg"));
  RenameTable t;
  t.ignore("input.").ignore("output.");
  try {
    load_state_dict(*unet, store, t);
    FAIL();
  } catch (const CheckpointError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("key conv_in.weight: expected [64,4,3,3], found [32,4,3,3]"), std::string::npos) << msg;
  }
  // A missing key and an extra key.
  auto tensors = read_all(store);
  tensors.erase("conv_out.bias");
  tensors["conv_out.extra"] = at::zeros({1});
  UNet2DCondition ok(UNetConfig::from_json(cfg, "cfg"));
  try {
    load_state_dict(*ok, tensors, t, LoadOptions(), "unet.safetensors");
    FAIL();
  } catch (const CheckpointError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("missing keys: conv_out.bias"), std::string::npos) << msg;
    EXPECT_NE(msg.find("unexpected keys: conv_out.extra"), std::string::npos) << msg;
  }
}

TEST(Vae, ShapesAndErrors) {
  torch::NoGradGuard no_grad;
  VaeConfig c = VaeConfig::from_json(parse_json(R"({"block_out_channels":[32,32,64],"layers_per_block":1,"norm_num_groups":8})", "v"), "v");
  EXPECT_EQ(c.scale(), 4);
  AutoencoderKL vae(c);
  LatentDistribution d = vae->encode(at::randn({1, 3, 16, 24}));
  EXPECT_EQ(d.mean.sizes(), (std::vector<int64_t>{1, 4, 4, 6}));
  EXPECT_EQ(vae->decode(d.mean).sizes(), (std::vector<int64_t>{1, 3, 16, 24}));
  EXPECT_THROW(vae->encode(at::randn({1, 3, 15, 16})), ShapeError);
  EXPECT_THROW(vae->decode(at::randn({1, 3, 4, 4})), ShapeError);
  EXPECT_THROW(VaeConfig::from_json(parse_json(R"({"down_block_types":["Other"]})", "v"), "v"), ConfigError);
  // Same seed, same posterior sample.
  at::Generator g1 = make_cpu_generator(5), g2 = make_cpu_generator(5);
  EXPECT_TRUE(d.sample(g1).equal(d.sample(g2)));
}
