// The Stable Diffusion pipeline on a tiny random-weight model in the real folder layout:
// determinism, image-to-image, guidance switch, metadata, bad parameters.
#include <gtest/gtest.h>

#include "core/error.h"
#include "pipelines/image_size.h"
#include "pipelines/random_model.h"
#include "pipelines/stable_diffusion.h"
#include "tests/test_util.h"

#include <fstream>

using namespace iris;

namespace {

SdModel& tiny_model() {
  static SdModel model = [] {
    const std::string dir = (std::filesystem::temp_directory_path() / ("iris_tiny_sd_" + std::to_string(getpid()))).string();
    write_random_sd_pipeline(dir, tiny_sd_spec(std::string(IRIS_FIXTURES_DIR) + "/data/clip_tokenizer"));
    return SdModel::load(dir);
  }();
  return model;
}

GenerationParams small_params() {
  GenerationParams p;
  p.prompt = "a small red circle at the top left";
  p.negative_prompt = "blurry";
  p.steps = 3;
  p.width = 32;
  p.height = 24;
  p.seed = 11;
  return p;
}

}  // namespace

TEST(Pipeline, SameSeedSamePixels) {
  for (const char* sampler : {"euler_a", "ddim", "dpmpp_2m"}) {
    GenerationParams p = small_params();
    p.sampler = sampler;
    auto a = generate(tiny_model(), p), b = generate(tiny_model(), p);
    ASSERT_EQ(a.size(), 1u);
    EXPECT_EQ(a[0].image.width, 32);
    EXPECT_EQ(a[0].image.height, 24);
    EXPECT_EQ(a[0].image.pixels, b[0].image.pixels) << sampler;
    p.seed = 12;
    EXPECT_NE(generate(tiny_model(), p)[0].image.pixels, a[0].image.pixels) << sampler;
  }
}

TEST(Pipeline, SizeZeroIsTheModelsNativeSize) {
  // As diffusers: no size means the UNet's sample_size times the VAE factor (8 x 2 here).
  SdModel& model = tiny_model();
  ASSERT_EQ(native_image_size(model), 16);
  GenerationParams p = small_params();
  p.width = p.height = 0;
  EXPECT_EQ(GenerationParams().width, 0);
  const GeneratedImage g = generate(model, p).at(0);
  EXPECT_EQ(g.image.width, 16);
  EXPECT_EQ(g.image.height, 16);
  p.height = 24;  // each side on its own
  const GenerationParams sized = with_native_size(model, p);
  EXPECT_EQ(sized.width, 16);
  EXPECT_EQ(sized.height, 24);
  EXPECT_EQ(generate(model, p).at(0).image.height, 24);
  EXPECT_NE(generation_metadata(sized, 11).at(0).second.find("Size: 16x24"), std::string::npos);
  // A model whose parts were released cannot say its size.
  SdModel released = model;
  released.unet = nullptr;
  EXPECT_THROW(with_native_size(released, p), ConfigError);
  EXPECT_EQ(with_native_size(released, small_params()).width, 32);  // nothing to resolve
}

TEST(Pipeline, ImageSizeText) {
  EXPECT_EQ(parse_image_size("auto", "--size"), std::make_pair(0, 0));
  EXPECT_EQ(parse_image_size("96x64", "--size"), std::make_pair(96, 64));
  EXPECT_EQ(parse_size_text("96X64", "--size"), std::make_pair(96, 64));
  for (const char* bad : {"0x64", "-8x8", "big", "64x", "64x64x3", ""})
    try {
      parse_image_size(bad, "--size");
      ADD_FAILURE() << bad;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("--size"), std::string::npos) << e.what();
    }
  EXPECT_THROW(parse_size_text("auto", "--size"), ConfigError);  // a window has no native size
}

TEST(Pipeline, BatchSeedsAndProgress) {
  GenerationParams p = small_params();
  p.batch = 2;
  int steps_seen = 0;
  GenerationCallbacks cb;
  cb.progress.on_step = [&](int, int total, const std::string&) {
    ++steps_seen;
    EXPECT_EQ(total, 3);
  };
  auto imgs = generate(tiny_model(), p, cb);
  ASSERT_EQ(imgs.size(), 2u);
  EXPECT_EQ(imgs[0].seed, 11u);
  EXPECT_EQ(imgs[1].seed, 12u);
  EXPECT_EQ(steps_seen, 3);
  // Image 1 of the batch is (up to float rounding) the seed-12 image alone.
  GenerationParams alone = small_params();
  alone.seed = 12;
  auto single = generate(tiny_model(), alone);
  int max_diff = 0;
  for (size_t i = 0; i < single[0].image.pixels.size(); ++i)
    max_diff = std::max(max_diff, std::abs(int(single[0].image.pixels[i]) - int(imgs[1].image.pixels[i])));
  EXPECT_LE(max_diff, 2);
}

TEST(Pipeline, CancelStopsWithinAStep) {
  GenerationParams p = small_params();
  int calls = 0;
  GenerationCallbacks cb;
  cb.progress.should_cancel = [&] { return ++calls > 1; };
  EXPECT_THROW(generate(tiny_model(), p, cb), Cancelled);
  EXPECT_EQ(calls, 2);
}

TEST(Pipeline, ImageToImage) {
  GenerationParams p = small_params();
  Image init(32, 24, 3);
  for (size_t i = 0; i < init.pixels.size(); ++i) init.pixels[i] = static_cast<uint8_t>(i * 7);
  p.init_image = init;
  p.strength = 0.5;
  int steps = 0;
  GenerationCallbacks cb;
  cb.progress.on_step = [&](int, int total, const std::string&) { steps = total; };
  auto out = generate(tiny_model(), p, cb);
  EXPECT_EQ(steps, 1);  // int(3 * 0.5) = 1 step runs
  EXPECT_EQ(out[0].image.width, 32);
  // A differently sized init image is resized to the requested size.
  p.init_image = Image(40, 40, 3);
  EXPECT_EQ(generate(tiny_model(), p)[0].image.height, 24);
}

TEST(Pipeline, LongPromptIsTruncatedWithAWarning) {
  GenerationParams p = small_params();
  p.prompt.clear();
  for (int i = 0; i < 100; ++i) p.prompt += "red ";
  std::string warning;
  GenerationCallbacks cb;
  cb.warn = [&](const std::string& w) { warning = w; };
  generate(tiny_model(), p, cb);
  EXPECT_NE(warning.find("100 tokens"), std::string::npos) << warning;
}

TEST(Pipeline, BadParametersAreConfigErrors) {
  auto expect_bad = [](auto mutate, const char* fragment) {
    GenerationParams p = small_params();
    mutate(p);
    try {
      generate(tiny_model(), p);
      FAIL() << fragment;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  };
  expect_bad([](GenerationParams& p) { p.width = 31; }, "multiple of 2");
  expect_bad([](GenerationParams& p) { p.steps = 0; }, "steps 0");
  expect_bad([](GenerationParams& p) { p.batch = 0; }, "batch 0");
  expect_bad([](GenerationParams& p) { p.sampler = "plms"; }, "plms");
  expect_bad([](GenerationParams& p) {
    p.init_image = Image(8, 8, 3);
    p.strength = 1.5;
  }, "strength");
}

TEST(Pipeline, MetadataRoundTrip) {
  GenerationParams p = small_params();
  p.sampler = "dpmpp_2m";
  p.karras = true;
  PngText text = generation_metadata(p, 99);
  ASSERT_EQ(text[0].first, "parameters");
  EXPECT_NE(text[0].second.find("Steps: 3, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 99, Size: 32x24"),
            std::string::npos)
      << text[0].second;
  EXPECT_NE(text[0].second.find("Negative prompt: blurry"), std::string::npos);
  GenerationParams back = params_from_metadata(text, "x.png");
  EXPECT_EQ(back.prompt, p.prompt);
  EXPECT_EQ(back.seed, 99u);
  EXPECT_TRUE(back.karras);
  EXPECT_EQ(back.sampler, "dpmpp_2m");
  EXPECT_THROW(params_from_metadata({{"parameters", "x"}}, "x.png"), FormatError);
  EXPECT_THROW(params_from_metadata({{"iris", "{"}}, "x.png"), FormatError);
}

TEST(Pipeline, ModelLoadErrors) {
  EXPECT_THROW(SdModel::load("/nonexistent/sd"), IoError);
  const auto dir = iris::testing_util::scratch_dir() / "broken";
  write_random_sd_pipeline(dir.string(), tiny_sd_spec(std::string(IRIS_FIXTURES_DIR) + "/data/clip_tokenizer"));
  // A UNet config that contradicts the weights.
  Json cfg = read_json_file((dir / "unet/config.json").string());
  cfg["block_out_channels"] = {32, 32};
  std::ofstream((dir / "unet/config.json").string()) << cfg.dump();
  try {
    SdModel::load(dir.string());
    FAIL();
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("expected [32,"), std::string::npos) << e.what();
  }
}

TEST(Pipeline, ImagePromptsThroughTheIpAdapter) {
  const auto dir = iris::testing_util::scratch_dir() / "ipsd";
  write_random_sd_pipeline(dir.string(), tiny_sd_spec(std::string(IRIS_FIXTURES_DIR) + "/data/clip_tokenizer", true));
  SdLoadOptions lo;
  lo.ip_adapter = (dir / "ip-adapter.safetensors").string();
  SdModel model = SdModel::load(dir.string(), lo);
  ASSERT_TRUE(model.ip_adapter);
  GenerationParams p = small_params();
  const auto plain = generate(model, p);
  Image ref(40, 30, 3);
  for (size_t i = 0; i < ref.pixels.size(); ++i) ref.pixels[i] = static_cast<uint8_t>((i * 37) % 251);
  // Scale 0: bit-identical to no image prompt.
  p.image_prompts.push_back({ref, "ref.png", 0.0, "all"});
  EXPECT_EQ(generate(model, p)[0].image.pixels, plain[0].image.pixels);
  // Scale 1 changes the image; two prompts compose; the streams are gone afterwards.
  p.image_prompts[0].scale = 1.0;
  const auto with_ip = generate(model, p);
  EXPECT_NE(with_ip[0].image.pixels, plain[0].image.pixels);
  p.image_prompts.push_back({ref, "ref2.png", 0.5, "style"});
  EXPECT_NE(generate(model, p)[0].image.pixels, with_ip[0].image.pixels);
  for (const auto& l : model.unet->cross_attention_layers()) EXPECT_TRUE(l.second->streams.empty());
  EXPECT_NE(generation_metadata(p, 1)[0].second.find("IP-Adapter: 2 image(s)"), std::string::npos);
  // Presets and errors.
  EXPECT_THROW(ip_layer_scales("nope", 1.0, model.unet), ConfigError);
  p.image_prompts[0].preset = "composition";
  generate(model, p);
  SdModel no_ip = SdModel::load(dir.string());
  EXPECT_THROW(generate(no_ip, p), ConfigError);
}

TEST(Pipeline, AnImageEncoderWithoutProcessorConfigTakesImagesAtItsOwnSize) {
  // No preprocessor_config.json and no feature_extractor/: images are resized and cropped to
  // the encoder's image_size (32 here) instead of CLIP's usual 224, which it would refuse.
  const auto dir = iris::testing_util::scratch_dir() / "ipsd-noproc";
  write_random_sd_pipeline(dir.string(), tiny_sd_spec(std::string(IRIS_FIXTURES_DIR) + "/data/clip_tokenizer", true));
  std::filesystem::remove(dir / "image_encoder" / "preprocessor_config.json");
  SdLoadOptions lo;
  lo.ip_adapter = (dir / "ip-adapter.safetensors").string();
  SdModel model = SdModel::load(dir.string(), lo);
  EXPECT_EQ(model.image_preprocess.crop_h, 32);
  EXPECT_EQ(model.image_preprocess.crop_w, 32);
  EXPECT_EQ(model.image_preprocess.shortest_edge, 32);
  GenerationParams p = small_params();
  Image ref(40, 30, 3);
  p.image_prompts.push_back({ref, "ref.png", 1.0, "all"});
  EXPECT_EQ(generate(model, p).at(0).image.width, p.width);
}

TEST(Pipeline, AMalformedImageEncoderProcessorConfigIsNamed) {
  // A processor config of the wrong shape is one error naming the file, not a bare JSON message.
  const auto dir = iris::testing_util::scratch_dir() / "ipsd-badproc";
  write_random_sd_pipeline(dir.string(), tiny_sd_spec(std::string(IRIS_FIXTURES_DIR) + "/data/clip_tokenizer", true));
  const std::string pre = (dir / "image_encoder" / "preprocessor_config.json").string();
  SdLoadOptions lo;
  lo.ip_adapter = (dir / "ip-adapter.safetensors").string();
  for (const char* text : {"[1, 2]", "{\"crop_size\": -3}", "{\"do_resize\": "}) {
    std::ofstream(pre, std::ios::trunc) << text;
    try {
      SdModel::load(dir.string(), lo);
      ADD_FAILURE() << "expected an error for " << text;
    } catch (const iris::Error& e) {
      EXPECT_NE(std::string(e.what()).find(pre), std::string::npos) << e.what();
    }
  }
}
