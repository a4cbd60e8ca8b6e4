// PokeFusion style attention and SK-Adapter as decoupled cross-attention streams on a tiny
// UNet: scale 0 / no stream is the plain UNet bit for bit, streams compose additively, the style
// touches only decoder layers and never the unconditional rows, missing joints are masked,
// topology matters, strict files and clear errors for bad input; and both in the SD pipeline.
#include <gtest/gtest.h>

#include <fstream>

#include <torch/utils.h>

#include "adapters/adapter_streams.h"
#include "adapters/ip_adapter.h"
#include "adapters/skeleton_adapter.h"
#include "adapters/style_adapter.h"
#include "core/error.h"
#include "core/tensor_io.h"
#include "pipelines/random_model.h"
#include "pipelines/stable_diffusion.h"
#include "tests/test_util.h"

using namespace iris;
using iris::testing_util::scratch;
using iris::testing_util::scratch_dir;

namespace {

const std::string kTokenizer = std::string(IRIS_FIXTURES_DIR) + "/data/clip_tokenizer";

UNet2DCondition tiny_unet(uint64_t seed = 1, int64_t cross_dim = 32) {
  at::manual_seed(seed);
  Json cfg = tiny_sd_spec(kTokenizer).unet_config;
  cfg["cross_attention_dim"] = cross_dim;
  UNet2DCondition unet(UNetConfig::from_json(cfg, "tiny unet"));
  unet->eval();
  return unet;
}

struct Inputs {
  at::Tensor x, t, ctx;
};

Inputs inputs(int64_t batch = 2) {
  at::manual_seed(7);
  return {at::randn({batch, 4, 8, 8}), at::tensor(std::vector<int64_t>(batch, 500)), at::randn({batch, 77, 32})};
}

at::Tensor run(UNet2DCondition& unet, const Inputs& in) {
  torch::NoGradGuard no_grad;
  return unet->forward(in.x, in.t, in.ctx);
}

at::Tensor style_tokens_for(StyleAdapter& a, const std::string& name, int64_t rows) {
  torch::NoGradGuard no_grad;
  return a->style_tokens(a->bank_embedding(name).unsqueeze(0)).expand({rows, -1, -1});
}

struct SkeletonTokens {
  at::Tensor tokens, valid;
};

SkeletonTokens skeleton_tokens_for(SkeletonAdapter& a, const world::Skeleton& s, int64_t rows) {
  torch::NoGradGuard no_grad;
  SkeletonInputs in = skeleton_inputs({s}, a->config());
  return {a->encoder->forward(in).expand({rows, -1, -1}), in.valid.expand({rows, -1})};
}

void randomise_distance_bias(SkeletonAdapter& a) {
  torch::NoGradGuard no_grad;
  for (auto& b : a->encoder->blocks) b.distance_bias.normal_(0, 1);
}

}  // namespace

// ---- style ------------------------------------------------------------------------------------

TEST(StyleAdapter, StrengthZeroAndDetachedAreBitIdentical) {
  UNet2DCondition unet = tiny_unet();
  const Inputs in = inputs();
  const at::Tensor plain = run(unet, in);
  StyleAdapter style = make_style_adapter(unet, {"flat", "outlined"});
  attach_style(style, unet, style_tokens_for(style, "outlined", 2), 0.0, {true, true});
  EXPECT_TRUE(at::equal(run(unet, in), plain));
  attach_style(style, unet, style_tokens_for(style, "outlined", 2), 1.0, {true, true});
  EXPECT_FALSE(at::equal(run(unet, in), plain));
  detach_style(unet);
  EXPECT_TRUE(at::equal(run(unet, in), plain));
}

TEST(StyleAdapter, OnlyDecoderLayersAndNotTheUnconditionalRows) {
  UNet2DCondition unet = tiny_unet();
  const Inputs in = inputs();
  const at::Tensor plain = run(unet, in);
  StyleAdapter style = make_style_adapter(unet, {"flat"});
  attach_style(style, unet, style_tokens_for(style, "flat", 2), 1.0, cfg_rows(1, true));
  size_t with_stream = 0;
  for (const auto& [path, attn] : unet->cross_attention_layers()) {
    EXPECT_EQ(!attn->streams.empty(), path.rfind("up_blocks.", 0) == 0) << path;
    with_stream += !attn->streams.empty();
  }
  EXPECT_EQ(with_stream, style->config().layers.size());
  EXPECT_GE(with_stream, 1u);
  const at::Tensor out = run(unet, in);
  EXPECT_TRUE(at::equal(out[0], plain[0]));  // unconditional row: no style
  EXPECT_FALSE(at::equal(out[1], plain[1]));
}

TEST(StyleAdapter, FilesRoundTripStrictly) {
  UNet2DCondition unet = tiny_unet();
  StyleAdapter a = make_style_adapter(unet, {"flat", "striped"});
  const std::string path = scratch("style-adapter.safetensors");
  save_style_adapter(a, path);
  StyleAdapter b = load_style_adapter(path, unet);
  EXPECT_EQ(b->config().styles, (std::vector<std::string>{"flat", "striped"}));
  for (const auto& kv : a->named_parameters(true))
    EXPECT_TRUE(at::equal(kv.value(), b->named_parameters(true)[kv.key()])) << kv.key();

  // Unknown key, wrong shape, missing key: CheckpointError naming the key.
  std::map<std::string, at::Tensor> t = read_all(TensorStore::open(path));
  const auto meta = SafetensorsFile(path).metadata();
  auto rewrite = [&](std::map<std::string, at::Tensor> tensors) {
    std::vector<std::pair<std::string, at::Tensor>> v(tensors.begin(), tensors.end());
    write_safetensors(scratch("bad.safetensors"), v, meta);
    return scratch("bad.safetensors");
  };
  auto expect_error = [&](const std::map<std::string, at::Tensor>& tensors, const std::string& needle) {
    try {
      load_style_adapter(rewrite(tensors), unet);
      FAIL() << "expected CheckpointError mentioning " << needle;
    } catch (const CheckpointError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  auto extra = t;
  extra["style_proj.extra.weight"] = at::zeros({2});
  expect_error(extra, "style_proj.extra.weight");
  auto wrong = t;
  wrong["style_proj.fc1.weight"] = at::zeros({3, 3});
  expect_error(wrong, "style_proj.fc1.weight");
  auto missing = t;
  missing.erase("layers.0.to_k_style.weight");
  expect_error(missing, "layers.0.to_k_style.weight");

  // Another UNet (cross-attention width 48): refused, naming the widths.
  UNet2DCondition other = tiny_unet(1, 48);
  EXPECT_THROW(load_style_adapter(path, other), CheckpointError);
  // Not an Iris adapter file at all.
  write_safetensors(scratch("plain.safetensors"), {{"x", at::ones({1})}});
  EXPECT_THROW(load_style_adapter(scratch("plain.safetensors"), unet), FormatError);
}

TEST(StyleAdapter, StyleFilesNamesAndBadStyles) {
  UNet2DCondition unet = tiny_unet();
  StyleAdapter a = make_style_adapter(unet, {"flat", "striped"});
  const auto dir = scratch_dir();
  const std::string adapter_path = (dir / "style-adapter.safetensors").string();
  save_style_adapter(a, adapter_path);
  // A shared style (not in the bank) beside the adapter, found by name.
  StyleFile mine{"watercolour", at::randn({4, 64}), "soft edges"};
  std::filesystem::create_directories(dir / "styles");
  save_style((dir / "styles" / "watercolour.safetensors").string(), mine);
  StyleFile got = resolve_style(a, "watercolour", adapter_path);
  EXPECT_EQ(got.name, "watercolour");
  EXPECT_EQ(got.description, "soft edges");
  EXPECT_TRUE(at::equal(got.embedding, mine.embedding));
  EXPECT_TRUE(at::equal(resolve_style(a, "striped", adapter_path).embedding, a->bank_embedding("striped")));
  EXPECT_TRUE(at::equal(resolve_style(a, (dir / "styles" / "watercolour.safetensors").string(), "").embedding,
                        mine.embedding));

  // Unknown style name: ConfigError listing the bank.
  try {
    resolve_style(a, "cubist", adapter_path);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("cubist"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("flat, striped"), std::string::npos) << e.what();
  }
  // An empty style file, a style of another size, a non-finite one, stray tensors.
  const std::string empty = scratch("empty.safetensors");
  write_safetensors(empty, {}, {{"iris.style", "empty"}});
  EXPECT_THROW(load_style(empty), FormatError);
  save_style(scratch("small.safetensors"), {"small", at::randn({2, 64}), ""});
  EXPECT_THROW(resolve_style(a, scratch("small.safetensors"), ""), CheckpointError);
  at::Tensor nan = at::randn({4, 64});
  nan[0][0] = std::numeric_limits<float>::quiet_NaN();
  write_safetensors(scratch("nan.safetensors"), {{"style.embedding", nan}});
  EXPECT_THROW(load_style(scratch("nan.safetensors")), FormatError);
  write_safetensors(scratch("stray.safetensors"), {{"style.embedding", at::randn({4, 64})}, {"other", at::ones({1})}});
  EXPECT_THROW(load_style(scratch("stray.safetensors")), FormatError);
  EXPECT_THROW(save_style(scratch("x.safetensors"), {"../evil", at::randn({4, 64}), ""}), ConfigError);
  EXPECT_THROW(make_style_adapter(unet, {"flat", "flat"}), ConfigError);
  EXPECT_THROW(make_style_adapter(unet, {}), ConfigError);
}

// ---- skeleton ---------------------------------------------------------------------------------

TEST(SkeletonAdapter, GraphDistancesOfTheDefaultSkeleton) {
  const world::Skeleton& s = world::default_skeleton_2d();
  const auto d = graph_distances(s);
  using namespace world::joint;
  EXPECT_EQ(d[Head][Head], 0);
  EXPECT_EQ(d[Head][Neck], 1);
  EXPECT_EQ(d[Head][LeftAnkle], 4);       // head-neck-left_hip-left_knee-left_ankle
  EXPECT_EQ(d[RightWrist][LeftAnkle], 6);  // wrist-elbow-shoulder-neck-hip-knee-ankle
  world::Skeleton cut = s;
  cut.edges.pop_back();  // left_knee - left_ankle
  EXPECT_EQ(graph_distances(cut)[Head][LeftAnkle], -1);
}

TEST(SkeletonAdapter, MissingJointsAreMaskedAndTopologyMatters) {
  UNet2DCondition unet = tiny_unet();
  at::manual_seed(3);
  SkeletonAdapter a = make_skeleton_adapter(unet, default_joint_types());
  randomise_distance_bias(a);
  world::Skeleton s = world::default_skeleton_2d();
  s.joints[world::joint::LeftWrist].confidence = 0;
  const SkeletonTokens base = skeleton_tokens_for(a, s, 1);
  EXPECT_EQ(base.tokens.sizes(), (std::vector<int64_t>{1, 14, 32}));
  EXPECT_FALSE(base.valid[0][world::joint::LeftWrist].item<bool>());
  // Moving the missing joint changes nothing but its own token.
  world::Skeleton moved = s;
  moved.joints[world::joint::LeftWrist].x = 0.9;
  const SkeletonTokens m = skeleton_tokens_for(a, moved, 1);
  for (int64_t j = 0; j < 14; ++j)
    if (j != world::joint::LeftWrist) EXPECT_TRUE(at::equal(m.tokens[0][j], base.tokens[0][j])) << j;
  // ... and nothing in the UNet either (its token is masked out of the attention).
  const Inputs in = inputs(1);
  attach_skeleton(a, unet, base.tokens, base.valid, 1.0, {true});
  const at::Tensor out_base = run(unet, in);
  attach_skeleton(a, unet, m.tokens, m.valid, 1.0, {true});
  EXPECT_TRUE(at::equal(run(unet, in), out_base));
  // Moving a present joint changes the output.
  world::Skeleton moved2 = s;
  moved2.joints[world::joint::RightWrist].x = 0.1;
  const SkeletonTokens m2 = skeleton_tokens_for(a, moved2, 1);
  attach_skeleton(a, unet, m2.tokens, m2.valid, 1.0, {true});
  EXPECT_FALSE(at::equal(run(unet, in), out_base));
  // Same joints, other edges: other tokens (the graph-distance bias).
  world::Skeleton rewired = world::default_skeleton_2d();
  rewired.edges[0] = {world::joint::Head, world::joint::LeftWrist};
  EXPECT_FALSE(at::allclose(skeleton_tokens_for(a, rewired, 1).tokens,
                            skeleton_tokens_for(a, world::default_skeleton_2d(), 1).tokens));
  detach_skeleton(unet);
}

TEST(SkeletonAdapter, ThreeDimensionalSkeletons) {
  const world::Skeleton s3 = world::load_skeleton(
      (std::filesystem::path(__FILE__).parent_path().parent_path() / "assets/skeletons/example_3d.json").string());
  ASSERT_TRUE(s3.is_3d());
  std::vector<std::string> warnings;
  auto warn = [&](const std::string& w) { warnings.push_back(w); };
  world::Skeleton no_cam = s3;
  no_cam.has_camera = false;
  const world::Skeleton dropped = skeleton_in_2d(no_cam, nullptr, warn);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("z dropped"), std::string::npos) << warnings[0];
  EXPECT_FALSE(dropped.is_3d());
  EXPECT_DOUBLE_EQ(dropped.joints[7].x, s3.joints[7].x);
  warnings.clear();
  const world::Skeleton projected = skeleton_in_2d(s3, nullptr, warn);  // the file's camera
  EXPECT_FALSE(projected.is_3d());
  EXPECT_NE(projected.joints[7].x, s3.joints[7].x);  // left wrist at z = -0.3 moves outward
  world::Camera near;
  near.distance = 1.0;
  EXPECT_NE(skeleton_in_2d(s3, &near, warn).joints[7].x, projected.joints[7].x);
  UNet2DCondition unet = tiny_unet();
  SkeletonAdapter a = make_skeleton_adapter(unet, default_joint_types());
  EXPECT_THROW(skeleton_inputs({s3}, a->config()), ConfigError);  // must be projected first
}

TEST(SkeletonAdapter, BadSkeletonsGiveClearErrors) {
  auto parse = [](const std::string& text) {
    return world::parse_skeleton(parse_json(text, "pose.json"), "pose.json");
  };
  const std::string joints = R"("joints": [{"name": "a", "xy": [0.5, 0.5]}, {"name": "b", "xy": [0.4, 0.6]}])";
  EXPECT_NO_THROW(parse("{" + joints + R"(, "edges": [["a", "b"]]})"));
  try {
    parse("{" + joints + R"(, "edges": [["a", "ghost"]]})");
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("ghost"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse(R"({"joints": [{"name": "a", "xy": [NaN, 0.5]}], "edges": []})"), FormatError);
  EXPECT_THROW(parse(R"({"joints": [{"name": "a", "xy": [1e999, 0.5]}], "edges": []})"), FormatError);
  EXPECT_THROW(parse(R"({"joints": [], "edges": []})"), FormatError);

  UNet2DCondition unet = tiny_unet();
  SkeletonAdapter a = make_skeleton_adapter(unet, default_joint_types());
  world::Skeleton invisible = world::default_skeleton_2d();
  for (auto& j : invisible.joints) j.confidence = 0;
  EXPECT_THROW(skeleton_inputs({invisible}, a->config()), ConfigError);
  world::Skeleton nan = world::default_skeleton_2d();
  nan.joints[2].x = std::numeric_limits<double>::quiet_NaN();  // built in code, past the parser
  EXPECT_THROW(skeleton_inputs({nan}, a->config()), ConfigError);
}

TEST(SkeletonAdapter, FileRoundTripAndWrongUNet) {
  UNet2DCondition unet = tiny_unet();
  SkeletonAdapter a = make_skeleton_adapter(unet, default_joint_types());
  randomise_distance_bias(a);
  const std::string path = scratch("sk-adapter.safetensors");
  save_skeleton_adapter(a, path);
  SkeletonAdapter b = load_skeleton_adapter(path, unet);
  EXPECT_EQ(b->config().joint_types, default_joint_types());
  const SkeletonTokens ta = skeleton_tokens_for(a, world::default_skeleton_2d(), 1);
  const SkeletonTokens tb = skeleton_tokens_for(b, world::default_skeleton_2d(), 1);
  EXPECT_TRUE(at::equal(ta.tokens, tb.tokens));
  UNet2DCondition other = tiny_unet(1, 48);
  EXPECT_THROW(load_skeleton_adapter(path, other), CheckpointError);
  // A style adapter file is not a skeleton adapter.
  StyleAdapter s = make_style_adapter(unet, {"flat"});
  save_style_adapter(s, scratch("style.safetensors"));
  EXPECT_THROW(load_skeleton_adapter(scratch("style.safetensors"), unet), FormatError);
}

// ---- composition --------------------------------------------------------------------------------

TEST(StreamComposition, TwoStreamsAddAtTheAttentionLevel) {
  at::manual_seed(5);
  Attention layer(64, 32, 4, 16, false);
  const at::Tensor x = at::randn({2, 24, 64}), ctx = at::randn({2, 77, 32});
  auto stream = [&](const std::string& owner, int64_t tokens, double scale) {
    auto s = std::make_shared<AttentionStream>();
    s->owner = owner;
    s->to_k = torch::nn::Linear(torch::nn::LinearOptions(32, 64).bias(false));
    s->to_v = torch::nn::Linear(torch::nn::LinearOptions(32, 64).bias(false));
    s->tokens = at::randn({2, tokens, 32});
    s->scale = scale;
    return s;
  };
  torch::NoGradGuard no_grad;
  const at::Tensor plain = layer->forward(x, ctx);
  auto a = stream("style", 4, 0.7), b = stream("skeleton", 14, 1.3);
  b->key_mask = at::ones({2, 14}, at::kBool);
  b->key_mask[1][3] = false;
  layer->streams = {a};
  const at::Tensor only_a = layer->forward(x, ctx);
  layer->streams = {b};
  const at::Tensor only_b = layer->forward(x, ctx);
  layer->streams = {a, b};
  const at::Tensor both = layer->forward(x, ctx);
  EXPECT_FALSE(at::allclose(only_a, plain));
  EXPECT_FALSE(at::allclose(only_b, plain));
  EXPECT_TRUE(at::allclose(both - plain, (only_a - plain) + (only_b - plain), 1e-5, 1e-5));
  a->scale = b->scale = 0.0;
  EXPECT_TRUE(at::equal(layer->forward(x, ctx), plain));
}

TEST(StreamComposition, IpStyleAndSkeletonTogether) {
  UNet2DCondition unet = tiny_unet();
  const Inputs in = inputs();
  const at::Tensor plain = run(unet, in);
  IpAdapterConfig ic;
  ic.image_dim = 16;
  ic.cross_dim = 32;
  ic.layer_dims = cross_attention_widths(unet, all_cross_attention_layers(unet));
  IpAdapter ip(ic);
  copy_layer_kv(unet, all_cross_attention_layers(unet), ip->to_k_ip, ip->to_v_ip);
  StyleAdapter style = make_style_adapter(unet, {"flat"});
  SkeletonAdapter sk = make_skeleton_adapter(unet, default_joint_types());
  at::Tensor ip_tokens;
  {
    torch::NoGradGuard no_grad;
    ip_tokens = ip->image_tokens(at::randn({2, 16}));
  }
  const SkeletonTokens skt = skeleton_tokens_for(sk, world::default_skeleton_2d(), 2);
  auto attach_all = [&](double s_ip, double s_style, double s_sk) {
    attach_ip_adapter(ip, unet, ip_tokens, s_ip);
    attach_style(style, unet, style_tokens_for(style, "flat", 2), s_style, {true, true});
    attach_skeleton(sk, unet, skt.tokens, skt.valid, s_sk, {true, true});
    return run(unet, in);
  };
  EXPECT_TRUE(at::equal(attach_all(0, 0, 0), plain));
  const at::Tensor all = attach_all(0.5, 1.0, 0.8);
  EXPECT_FALSE(at::allclose(all, attach_all(0.5, 1.0, 0)));
  EXPECT_FALSE(at::allclose(all, attach_all(0.5, 0, 0.8)));
  EXPECT_FALSE(at::allclose(all, attach_all(0, 1.0, 0.8)));
  detach_streams(unet, "ip_adapter");
  detach_style(unet);
  detach_skeleton(unet);
  EXPECT_TRUE(at::equal(run(unet, in), plain));
}

// ---- in the pipeline ----------------------------------------------------------------------------

TEST(StreamAdapters, PipelineStyleAndSkeleton) {
  const auto dir = scratch_dir();
  const std::string model_dir = (dir / "sd").string();
  write_random_sd_pipeline(model_dir, tiny_sd_spec(kTokenizer));
  SdModel plain_model = SdModel::load(model_dir);
  StyleAdapter style = make_style_adapter(plain_model.unet, {"flat", "outlined"});
  SkeletonAdapter sk = make_skeleton_adapter(plain_model.unet, default_joint_types());
  const std::string style_path = (dir / "style-adapter.safetensors").string();
  const std::string sk_path = (dir / "sk-adapter.safetensors").string();
  save_style_adapter(style, style_path);
  save_skeleton_adapter(sk, sk_path);
  SdLoadOptions lo;
  lo.style_adapter = style_path;
  lo.sk_adapter = sk_path;
  SdModel model = SdModel::load(model_dir, lo);

  GenerationParams p;
  p.prompt = "a person";
  p.steps = 2;
  p.width = p.height = 16;
  p.seed = 3;
  const auto plain = generate(model, p)[0].image.pixels;
  p.style = "outlined";
  p.style_strength = 0.0;
  p.skeleton = world::default_skeleton_2d();
  p.skeleton_scale = 0.0;
  EXPECT_EQ(generate(model, p)[0].image.pixels, plain);  // scale 0: the plain pipeline
  p.style_strength = 1.0;
  p.skeleton_scale = 1.0;
  p.skeleton_name = "default_2d.json";
  const auto styled = generate(model, p)[0].image.pixels;
  EXPECT_NE(styled, plain);
  EXPECT_EQ(generate(model, p)[0].image.pixels, styled);  // deterministic; streams detached between runs
  for (const auto& [path, attn] : model.unet->cross_attention_layers()) EXPECT_TRUE(attn->streams.empty());

  // Metadata carries the style and the whole skeleton.
  const PngText text = generation_metadata(p, p.seed);
  const GenerationParams back = params_from_metadata(text, "png");
  EXPECT_EQ(back.style, "outlined");
  EXPECT_EQ(back.style_strength, 1.0);
  ASSERT_TRUE(back.skeleton.has_value());
  EXPECT_EQ(back.skeleton->joints.size(), 14u);
  EXPECT_EQ(back.skeleton_name, "default_2d.json");
  EXPECT_NE(text[0].second.find("Style: outlined"), std::string::npos) << text[0].second;

  p.style = "cubist";
  EXPECT_THROW(generate(model, p), ConfigError);
  p.style = "";
  EXPECT_THROW(generate(plain_model, p), ConfigError);  // a skeleton, and no SK-Adapter loaded
}
