// Adapter training with the backbone frozen, on a tiny random SD model and a small Tinyworld
// folder: the loss on fixed samples goes down, the backbone is bit-identical afterwards, a
// resumed run equals an uninterrupted one, a dropped condition trains nothing, bad options fail.
#include <algorithm>
#include <cmath>
#include <functional>

#include <gtest/gtest.h>

#include <torch/utils.h>

#include "core/error.h"
#include "core/json_util.h"
#include "core/safetensors.h"
#include "core/tensor_io.h"
#include "pipelines/adapter_training.h"
#include "pipelines/random_model.h"
#include "pipelines/style_training.h"
#include "tests/test_util.h"
#include "world/captions.h"
#include "world/dataset.h"
#include "world/render.h"
#include "adapters/ip_adapter.h"
#include "pipelines/stable_diffusion.h"

using namespace iris;
using iris::testing_util::expect_error;
using iris::testing_util::scratch;

namespace {

const std::string& tiny_model_dir() {
  static const std::string dir = [] {
    const std::string d = (std::filesystem::temp_directory_path() / ("iris_train_sd_" + std::to_string(getpid()))).string();
    write_random_sd_pipeline(d, tiny_sd_spec(std::string(IRIS_FIXTURES_DIR) + "/data/clip_tokenizer", true));
    return d;
  }();
  return dir;
}

SdModel& tiny_model() {
  static SdModel model = [] {
    SdLoadOptions lo;
    lo.with_image_encoder = true;
    return SdModel::load(tiny_model_dir(), lo);
  }();
  return model;
}

// 8 Tinyworld images (64 px), most with a stick figure.
std::string dataset(double figure_probability = 0.7) {
  static std::map<double, std::string> made;
  auto it = made.find(figure_probability);
  if (it != made.end()) return it->second;
  const std::string dir = (std::filesystem::temp_directory_path() /
                           ("iris_train_data_" + std::to_string(getpid()) + "_" + std::to_string(made.size())))
                              .string();
  world::DatasetOptions o;
  o.count = 8;
  o.base_seed = 5;
  o.sampler.figure_probability = figure_probability;
  world::export_dataset(dir, o);
  return made[figure_probability] = dir;
}

AdapterTrainOptions options(AdapterKind kind, const std::string& out, int steps) {
  AdapterTrainOptions o;
  o.kind = kind;
  o.model = tiny_model_dir();
  o.data = dataset();
  o.out = out;
  o.steps = steps;
  o.batch = 2;
  o.lr = 3e-3;
  o.resolution = 32;
  o.log_every = 0;
  o.seed = 9;
  return o;
}

std::map<std::string, at::Tensor> snapshot(torch::nn::Module& m) {
  std::map<std::string, at::Tensor> out;
  for (const auto& kv : m.named_parameters(true)) out[kv.key()] = kv.value().detach().clone();
  return out;
}

void expect_same(torch::nn::Module& m, const std::map<std::string, at::Tensor>& before, const std::string& what) {
  for (const auto& kv : m.named_parameters(true))
    ASSERT_TRUE(at::equal(kv.value(), before.at(kv.key()))) << what << ": " << kv.key() << " changed";
}

std::map<std::string, at::Tensor> file_tensors(const std::string& path) { return read_all(TensorStore::open(path)); }

bool same_tensors(const std::map<std::string, at::Tensor>& a, const std::map<std::string, at::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [k, v] : a)
    if (!b.count(k) || !at::equal(v, b.at(k))) return false;
  return true;
}

AdapterTrainCallbacks quiet() {
  AdapterTrainCallbacks cb;
  cb.log = [](const std::string&) {};
  return cb;
}

}  // namespace

TEST(AdapterTraining, LossDecreasesAndTheBackboneStaysBitIdentical) {
  SdModel& model = tiny_model();
  const auto unet = snapshot(*model.unet), vae = snapshot(*model.vae), text = snapshot(*model.text_encoder),
             enc = snapshot(*model.image_encoder);
  for (AdapterKind kind : {AdapterKind::Style, AdapterKind::Skeleton, AdapterKind::IpAdapter}) {
    const std::string out = scratch(adapter_kind_name(kind));
    const AdapterTrainResult r = train_adapter(model, options(kind, out, 20), quiet());
    EXPECT_EQ(r.steps_done, 20);
    EXPECT_EQ(r.losses.size(), 20u);
    EXPECT_LT(r.eval_loss_after, r.eval_loss_before) << adapter_kind_name(kind);
    std::printf("%s: loss on fixed samples %.5f -> %.5f\n", adapter_kind_name(kind), r.eval_loss_before,
                r.eval_loss_after);
    EXPECT_TRUE(std::filesystem::is_regular_file(r.adapter_path));
    for (const auto& [path, attn] : model.unet->cross_attention_layers()) EXPECT_TRUE(attn->streams.empty());
  }
  expect_same(*model.unet, unet, "unet");
  expect_same(*model.vae, vae, "vae");
  expect_same(*model.text_encoder, text, "text encoder");
  expect_same(*model.image_encoder, enc, "image encoder");
  // The outputs load as adapters of this UNet.
  EXPECT_NO_THROW(load_style_adapter(scratch("style") + "/style-adapter.safetensors", model.unet));
  EXPECT_TRUE(std::filesystem::is_regular_file(scratch("style") + "/styles/" +
                                               load_style_adapter(scratch("style") + "/style-adapter.safetensors",
                                                                  model.unet)->config().styles[0] + ".safetensors"));
  EXPECT_NO_THROW(load_skeleton_adapter(scratch("sk-adapter") + "/sk-adapter.safetensors", model.unet));
  EXPECT_NO_THROW(load_ip_adapter_file(scratch("ip-adapter") + "/ip-adapter.safetensors", model.unet));
}

TEST(AdapterTraining, ResumeEqualsUninterrupted) {
  for (AdapterKind kind : {AdapterKind::Style, AdapterKind::Skeleton}) {
    const std::string a = scratch(std::string("straight-") + adapter_kind_name(kind));
    const std::string b = scratch(std::string("resumed-") + adapter_kind_name(kind));
    train_adapter(tiny_model(), options(kind, a, 6), quiet());
    AdapterTrainOptions first = options(kind, b, 3);
    train_adapter(tiny_model(), first, quiet());
    const std::string file = adapter_file_name(kind);
    const auto after3 = file_tensors(b + "/" + file);
    AdapterTrainOptions second = options(kind, b, 6);
    second.resume = true;
    const AdapterTrainResult r = train_adapter(tiny_model(), second, quiet());
    EXPECT_EQ(r.start_step, 3);
    EXPECT_EQ(r.steps_done, 6);
    EXPECT_TRUE(same_tensors(file_tensors(a + "/" + file), file_tensors(b + "/" + file))) << adapter_kind_name(kind);
    EXPECT_TRUE(same_tensors(file_tensors(a + "/checkpoint/trainer_state.safetensors"),
                             file_tensors(b + "/checkpoint/trainer_state.safetensors")));
    EXPECT_FALSE(same_tensors(file_tensors(a + "/" + file), after3));  // steps 4-6 did change it
  }
}

TEST(AdapterTraining, ADroppedConditionTrainsNothing) {
  // Condition always dropped, no weight decay: the style stream is off for every row, its
  // gradients are zero, and AdamW leaves the adapter exactly as initialised.
  auto run = [](int steps, double drop_cond, const std::string& out) {
    AdapterTrainOptions o = options(AdapterKind::Style, scratch(out), steps);
    o.drop_text = o.drop_both = 0;
    o.drop_cond = drop_cond;
    o.weight_decay = 0;
    train_adapter(tiny_model(), o, quiet());
    return file_tensors(scratch(out) + "/style-adapter.safetensors");
  };
  EXPECT_TRUE(same_tensors(run(1, 1.0, "d1"), run(3, 1.0, "d3")));
  EXPECT_FALSE(same_tensors(run(1, 0.0, "k1"), run(3, 0.0, "k3")));
}

TEST(AdapterTraining, BadOptionsAndData) {
  SdModel& model = tiny_model();
  AdapterTrainOptions o = options(AdapterKind::Style, scratch("bad"), 0);
  EXPECT_THROW(train_adapter(model, o, quiet()), ConfigError);
  o.steps = 2;
  o.drop_text = 0.6;
  o.drop_cond = 0.6;
  EXPECT_THROW(train_adapter(model, o, quiet()), ConfigError);
  o = options(AdapterKind::Style, scratch("bad"), 2);
  o.resume = true;
  EXPECT_THROW(train_adapter(model, o, quiet()), IoError);  // nothing to resume
  o.resume = false;
  train_adapter(model, o, quiet());
  o.resume = true;
  o.batch = 3;
  o.steps = 4;
  EXPECT_THROW(train_adapter(model, o, quiet()), ConfigError);  // other batch size than the checkpoint
  // The settings are checked before any data is read: with the data gone, the batch is named.
  o.data = scratch("missing-folder");
  expect_error<ConfigError>([&] { train_adapter(model, o, quiet()); }, "\"batch\" was");
  o = options(AdapterKind::Skeleton, scratch("bad-sk"), 2);
  o.data = dataset(0.0);  // no figures, so no skeletons
  EXPECT_THROW(train_adapter(model, o, quiet()), ConfigError);
  o.data = scratch("missing-folder");
  EXPECT_THROW(train_adapter(model, o, quiet()), Error);
  EXPECT_THROW(parse_adapter_kind("lora"), ConfigError);
  EXPECT_EQ(parse_adapter_kind("skeleton"), AdapterKind::Skeleton);
  // The limb weight: skeleton training only, never negative.
  o = options(AdapterKind::Style, scratch("bad-limb"), 2);
  o.limb_weight = 4;
  expect_error<ConfigError>([&] { train_adapter(model, o, quiet()); }, "sk-adapter");
  o = options(AdapterKind::Skeleton, scratch("bad-limb"), 2);
  o.limb_weight = -1;
  expect_error<ConfigError>([&] { train_adapter(model, o, quiet()); }, "--limb-weight");
  // The object weight: IP-Adapter and style only (sk-adapter has the limb weight), never negative.
  o = options(AdapterKind::Skeleton, scratch("bad-object"), 2);
  o.object_weight = 4;
  expect_error<ConfigError>([&] { train_adapter(model, o, quiet()); }, "--object-weight");
  o = options(AdapterKind::IpAdapter, scratch("bad-object"), 2);
  o.object_weight = -1;
  expect_error<ConfigError>([&] { train_adapter(model, o, quiet()); }, "--object-weight");
  o = options(AdapterKind::Style, scratch("bad-plus"), 2);
  o.ip_plus = true;
  expect_error<ConfigError>([&] { train_adapter(model, o, quiet()); }, "ip-adapter");
}

TEST(AdapterTraining, IpAdapterPlusTrainsSavesAndLoadsAsPlus) {
  SdModel& model = tiny_model();
  AdapterTrainOptions o = options(AdapterKind::IpAdapter, scratch("ip-plus"), 20);
  o.ip_plus = true;
  const AdapterTrainResult r = train_adapter(model, o, quiet());
  EXPECT_LT(r.eval_loss_after, r.eval_loss_before);
  IpAdapter loaded = load_ip_adapter_file(r.adapter_path, model.unet);
  EXPECT_EQ(loaded->config().variant, IpVariant::Plus);
  EXPECT_EQ(loaded->config().tokens, 16);
  // The saved weights are the trained ones: the file round-trips bit for bit.
  const std::string again = scratch("ip-plus-again.safetensors");
  save_ip_adapter(loaded, again);
  EXPECT_TRUE(same_tensors(file_tensors(r.adapter_path), file_tensors(again)));
  // A render with it (the pipeline feeds Plus the penultimate patch features).
  SdLoadOptions lo;
  lo.ip_adapter = r.adapter_path;
  lo.with_image_encoder = true;
  SdModel with = SdModel::load(tiny_model_dir(), lo);
  GenerationParams p;
  p.prompt = "a red circle";
  p.steps = 2;
  p.width = p.height = 32;
  ImagePrompt ip;
  ip.image = world::render_scene(world::sample_scene(3));
  p.image_prompts.push_back(ip);
  EXPECT_EQ(generate(with, p).at(0).image.width, 32);
}

TEST(AdapterTraining, ATrainedImageEncoderIsACopyWrittenBesideTheAdapterThatTheLoaderUses) {
  SdModel& model = tiny_model();
  const auto enc = snapshot(*model.image_encoder);
  for (bool plus : {false, true}) {
    const std::string tag = plus ? "ip-enc-plus" : "ip-enc";
    AdapterTrainOptions o = options(AdapterKind::IpAdapter, scratch(tag), 6);
    o.ip_plus = plus;
    o.train_image_encoder = true;
    const AdapterTrainResult r = train_adapter(model, o, quiet());
    EXPECT_LT(r.eval_loss_after, r.eval_loss_before) << tag;
    expect_same(*model.image_encoder, enc, "the caller's image encoder");
    // The trained encoder: the source's config beside weights that moved.
    const std::string dir = scratch(tag) + "/image_encoder";
    ASSERT_TRUE(std::filesystem::is_regular_file(dir + "/config.json"));
    ASSERT_TRUE(std::filesystem::is_regular_file(dir + "/preprocessor_config.json"));
    const auto trained = file_tensors(dir + "/model.safetensors");
    ASSERT_EQ(trained.size(), enc.size());
    bool moved = false;
    for (const auto& [k, v] : trained) moved = moved || !at::equal(v, enc.at(k));
    EXPECT_TRUE(moved) << tag;
    // Loading the adapter picks up the encoder beside it, before the pipeline's own.
    SdLoadOptions lo;
    lo.ip_adapter = r.adapter_path;
    SdModel with = SdModel::load(tiny_model_dir(), lo);
    for (const auto& kv : with.image_encoder->named_parameters(true))
      EXPECT_TRUE(at::equal(kv.value(), trained.at(kv.key()))) << kv.key();
    // An explicit encoder folder still wins.
    lo.image_encoder_dir = tiny_model_dir() + "/image_encoder";
    expect_same(*SdModel::load(tiny_model_dir(), lo).image_encoder, enc, "an explicit --image-encoder");
  }
  // Resumed = uninterrupted, the encoder included (its weights and moments are in the state).
  AdapterTrainOptions o = options(AdapterKind::IpAdapter, scratch("ip-enc-straight"), 4);
  o.train_image_encoder = true;
  train_adapter(model, o, quiet());
  o.out = scratch("ip-enc-resumed");
  o.steps = 2;
  train_adapter(model, o, quiet());
  o.steps = 4;
  o.resume = true;
  train_adapter(model, o, quiet());
  for (const char* f : {"/image_encoder/model.safetensors", "/ip-adapter.safetensors"})
    EXPECT_TRUE(same_tensors(file_tensors(scratch("ip-enc-straight") + f), file_tensors(scratch("ip-enc-resumed") + f)))
        << f;
  // A resume must keep the setting; other adapters refuse it.
  o.train_image_encoder = false;
  o.steps = 5;
  expect_error<ConfigError>([&] { train_adapter(model, o, quiet()); }, "train_image_encoder");
  // An encoder that came from no folder has no config to write beside the trained weights.
  SdModel unsourced = model;
  unsourced.image_encoder_dir.clear();
  AdapterTrainOptions fresh = options(AdapterKind::IpAdapter, scratch("ip-enc-unsourced"), 2);
  fresh.train_image_encoder = true;
  expect_error<ConfigError>([&] { train_adapter(unsourced, fresh, quiet()); }, "the folder the image encoder was loaded from");
  AdapterTrainOptions style = options(AdapterKind::Style, scratch("bad-enc"), 2);
  style.train_image_encoder = true;
  expect_error<ConfigError>([&] { train_adapter(model, style, quiet()); }, "--train-image-encoder");
}

TEST(AdapterTraining, TheTextTeacherChangesTheImageOnlyTargetAndResumesOnlyWithItsShare) {
  // Image-only rows (caption always dropped, image kept): the teacher's share moves the target
  // and so the first step's loss and the trained weights; with no image-only row (nothing
  // dropped) it changes nothing at all.
  auto run = [](const std::string& tag, double teacher, double drop_text) {
    AdapterTrainOptions o = options(AdapterKind::IpAdapter, scratch(tag), 4);
    o.text_teacher = teacher;
    o.drop_text = drop_text;
    o.drop_cond = o.drop_both = 0;
    return train_adapter(tiny_model(), o, quiet());
  };
  const AdapterTrainResult plain = run("tt-plain", 0, 1), taught = run("tt-taught", 1, 1);
  EXPECT_NE(plain.losses[0], taught.losses[0]);
  EXPECT_FALSE(same_tensors(file_tensors(plain.adapter_path), file_tensors(taught.adapter_path)));
  const AdapterTrainResult plain_text = run("tt-plain-text", 0, 0), taught_text = run("tt-taught-text", 1, 0);
  EXPECT_EQ(plain_text.losses, taught_text.losses);
  EXPECT_TRUE(same_tensors(file_tensors(plain_text.adapter_path), file_tensors(taught_text.adapter_path)));
  // A resume with another share (or none) is refused; so are shares outside [0, 1] and other adapters.
  AdapterTrainOptions again = options(AdapterKind::IpAdapter, scratch("tt-taught"), 6);
  again.drop_text = 1;
  again.drop_cond = again.drop_both = 0;
  again.resume = true;
  again.text_teacher = 0.5;
  expect_error<ConfigError>([&] { train_adapter(tiny_model(), again, quiet()); }, "text_teacher");
  again.text_teacher = 0;
  expect_error<ConfigError>([&] { train_adapter(tiny_model(), again, quiet()); }, "text_teacher");
  for (double bad : {-0.1, 1.5, std::nan("")}) {
    again.text_teacher = bad;
    expect_error<ConfigError>([&] { train_adapter(tiny_model(), again, quiet()); }, "--text-teacher");
  }
  AdapterTrainOptions style = options(AdapterKind::Style, scratch("tt-style"), 2);
  style.text_teacher = 0.5;
  expect_error<ConfigError>([&] { train_adapter(tiny_model(), style, quiet()); }, "--text-teacher");
}

namespace {
// Per training image: the adapter's image tokens minus the text encoder's states of that scene's
// complete caption, [T, C] (what caption regression pulls to zero).
std::vector<at::Tensor> caption_state_errors(const std::string& adapter) {
  SdLoadOptions lo;
  lo.ip_adapter = adapter;
  SdModel m = SdModel::load(tiny_model_dir(), lo);
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> errors;
  for (const auto& e : world::load_dataset(dataset())) {
    const Image img = resize_bicubic(to_rgb(load_image(e.image)), 32, 32);  // as the trainer's --resolution 32
    const at::Tensor tokens = image_prompt_tokens(m, img, 1, false)[0];  // [T, C]
    errors.push_back(tokens - encode_prompt(m, world::complete_caption(e.scene).text, nullptr).reshape_as(tokens));
  }
  return errors;
}
}  // namespace

TEST(AdapterTraining, CaptionRegressionPullsThePlusTokensOntoTheCompleteCaptionsStatesAndCanTrainAlone) {
  // Mean squared distance between the adapter's image tokens for each training image and the
  // text encoder's states of that scene's complete caption.
  auto distance = [](const std::string& adapter) {
    double sum = 0;
    const std::vector<at::Tensor> errors = caption_state_errors(adapter);
    for (const at::Tensor& e : errors) sum += e.pow(2).mean().item<double>();
    return sum / static_cast<double>(errors.size());
  };
  // The projection alone (no denoising loss): its first step, then 40.
  AdapterTrainOptions o = options(AdapterKind::IpAdapter, scratch("cr-start"), 1);
  o.ip_plus = true;
  o.caption_regression = 10;
  o.denoising_weight = 0;
  o.lr = 1e-2;
  const AdapterTrainResult first = train_adapter(tiny_model(), o, quiet());
  const double start = distance(first.adapter_path);
  o.out = scratch("cr-trained");
  o.steps = 40;
  const AdapterTrainResult r = train_adapter(tiny_model(), o, quiet());
  // One query per text position: the tokens line up with the caption's states.
  const auto saved = file_tensors(r.adapter_path), initial = file_tensors(first.adapter_path);
  EXPECT_EQ(saved.at("image_proj.latents").size(1), encode_prompt(tiny_model(), "", nullptr).size(-2));
  const double trained = distance(r.adapter_path);
  EXPECT_LT(trained, 0.5 * start) << "from " << start;
  // Without the denoising loss to_k_ip / to_v_ip stay the copies of to_k / to_v they start as.
  int kv = 0;
  for (const auto& [k, v] : saved)
    if (k.find("_ip.") != std::string::npos) {
      EXPECT_TRUE(at::equal(v, initial.at(k))) << k;
      ++kv;
    } else if (k == "image_proj.latents") {
      EXPECT_FALSE(at::equal(v, initial.at(k)));
    }
  EXPECT_GT(kv, 0);
  // With the denoising loss as well, both terms train (and the K/V move).
  AdapterTrainOptions both = o;
  both.out = scratch("cr-both");
  both.steps = 3;
  both.denoising_weight = 1;
  const AdapterTrainResult b = train_adapter(tiny_model(), both, quiet());
  EXPECT_FALSE(at::equal(file_tensors(b.adapter_path).at("ip_adapter.1.to_k_ip.weight"),
                         initial.at("ip_adapter.1.to_k_ip.weight")));
  // A resume keeps the weight; the option needs Plus, an IP-Adapter and a weight >= 0.
  o.steps = 42;
  o.resume = true;
  o.caption_regression = 1;
  expect_error<ConfigError>([&] { train_adapter(tiny_model(), o, quiet()); }, "caption_regression");
  o.resume = false;
  o.ip_plus = false;
  expect_error<ConfigError>([&] { train_adapter(tiny_model(), o, quiet()); }, "--caption-regression");
  o.ip_plus = true;
  o.caption_regression = -1;
  expect_error<ConfigError>([&] { train_adapter(tiny_model(), o, quiet()); }, "--caption-regression");
  o.caption_regression = 0;
  expect_error<ConfigError>([&] { train_adapter(tiny_model(), o, quiet()); }, "--denoising-weight 0 leaves no loss");
  o.caption_regression = 1;
  o.text_teacher = 1;
  expect_error<ConfigError>([&] { train_adapter(tiny_model(), o, quiet()); }, "--text-teacher");
  o.text_teacher = 0;
  o.denoising_weight = -1;
  expect_error<ConfigError>([&] { train_adapter(tiny_model(), o, quiet()); }, "--denoising-weight");
  AdapterTrainOptions style = options(AdapterKind::Style, scratch("cr-style"), 2);
  style.caption_regression = 1;
  expect_error<ConfigError>([&] { train_adapter(tiny_model(), style, quiet()); }, "--caption-regression");
  style.caption_regression = 0;
  style.denoising_weight = 0.5;
  expect_error<ConfigError>([&] { train_adapter(tiny_model(), style, quiet()); }, "--denoising-weight");
}

// --regression-space kv: the regression's error is measured through every attn2 layer's keys
// and values (what the UNet reads of the tokens); training lowers that distance, learns other
// tokens than the plain MSE does, and a resume must keep the space.
TEST(AdapterTraining, CaptionRegressionInKeyValueSpaceLowersWhatTheLayersReadOfTheError) {
  // Mean over training images and layers of |e W_k^T|^2 + |e W_v^T|^2, e = tokens - caption states.
  auto kv_distance = [](const std::string& adapter) {
    const auto weights = file_tensors(adapter);
    double sum = 0;
    int64_t terms = 0;
    for (const at::Tensor& err : caption_state_errors(adapter)) {
      for (const auto& [k, w] : weights)
        if (k.find("_ip.weight") != std::string::npos) {
          sum += at::matmul(err, w.t()).pow(2).mean().item<double>();
          ++terms;
        }
    }
    return sum / static_cast<double>(terms);
  };
  AdapterTrainOptions o = options(AdapterKind::IpAdapter, scratch("kv-start"), 1);
  o.ip_plus = true;
  o.caption_regression = 10;
  o.denoising_weight = 0;
  o.lr = 1e-2;
  o.regression_space = "kv";
  const AdapterTrainResult first = train_adapter(tiny_model(), o, quiet());
  o.out = scratch("kv-trained");
  o.steps = 40;
  const AdapterTrainResult r = train_adapter(tiny_model(), o, quiet());
  const double start = kv_distance(first.adapter_path), trained = kv_distance(r.adapter_path);
  EXPECT_LT(trained, 0.5 * start) << "from " << start;
  // Another loss than the text-space MSE: other fixed-sample losses, other tokens.
  AdapterTrainOptions text = o;
  text.out = scratch("kv-text");
  text.regression_space = "text";
  const AdapterTrainResult t = train_adapter(tiny_model(), text, quiet());
  EXPECT_NE(t.eval_loss_before, r.eval_loss_before);
  EXPECT_FALSE(at::equal(file_tensors(t.adapter_path).at("image_proj.latents"),
                         file_tensors(r.adapter_path).at("image_proj.latents")));
  // A resume keeps the space; the option takes text or kv, and needs caption regression.
  text.out = o.out;
  text.steps = 42;
  text.resume = true;
  expect_error<ConfigError>([&] { train_adapter(tiny_model(), text, quiet()); }, "regression_space");
  o.resume = false;
  o.regression_space = "pixels";
  expect_error<ConfigError>([&] { train_adapter(tiny_model(), o, quiet()); }, "pixels");
  o.regression_space = "kv";
  o.caption_regression = 0;
  o.denoising_weight = 1;
  expect_error<ConfigError>([&] { train_adapter(tiny_model(), o, quiet()); }, "--regression-space");
}

TEST(AdapterTraining, PatchLabelsTeachTheTrainedEncoderWhatCoversEachPatch) {
  auto run = [](const std::string& tag, double labels, std::vector<std::string>* log) {
    AdapterTrainOptions o = options(AdapterKind::IpAdapter, scratch(tag), 6);
    o.ip_plus = o.train_image_encoder = true;
    o.caption_regression = 1;
    o.denoising_weight = 0;
    o.patch_labels = labels;
    o.log_every = 3;
    AdapterTrainCallbacks cb;
    cb.log = [log](const std::string& line) {
      if (log) log->push_back(line);
    };
    return train_adapter(tiny_model(), o, cb);
  };
  std::vector<std::string> log;
  const AdapterTrainResult with = run("pl-with", 1, &log), without = run("pl-without", 0, nullptr);
  // The read-out is reported, its heads live in the checkpoint only, and the encoder learns otherwise.
  EXPECT_TRUE(std::any_of(log.begin(), log.end(), [](const std::string& l) {
    return l.find("patch labels read") != std::string::npos && l.find("shape") != std::string::npos;
  }));
  const auto state = file_tensors(scratch("pl-with") + "/checkpoint/trainer_state.safetensors");
  EXPECT_TRUE(std::any_of(state.begin(), state.end(), [](const auto& kv) { return kv.first.find("labels.shape_head.") != std::string::npos; }));
  for (const auto& [k, v] : file_tensors(with.adapter_path)) EXPECT_EQ(k.find("head"), std::string::npos) << k;
  EXPECT_FALSE(same_tensors(file_tensors(scratch("pl-with") + "/image_encoder/model.safetensors"),
                            file_tensors(scratch("pl-without") + "/image_encoder/model.safetensors")));
  (void)without;
  // A resume keeps the weight; the heads need the trained encoder's patch features (Plus).
  AdapterTrainOptions o = options(AdapterKind::IpAdapter, scratch("pl-with"), 8);
  o.ip_plus = o.train_image_encoder = true;
  o.caption_regression = 1;
  o.denoising_weight = 0;
  o.resume = true;
  expect_error<ConfigError>([&] { train_adapter(tiny_model(), o, quiet()); }, "patch_labels");
  o.resume = false;
  o.patch_labels = 1;
  o.train_image_encoder = false;
  expect_error<ConfigError>([&] { train_adapter(tiny_model(), o, quiet()); }, "--patch-labels");
  o.train_image_encoder = true;
  o.ip_plus = false;
  o.caption_regression = 0;
  o.denoising_weight = 1;
  expect_error<ConfigError>([&] { train_adapter(tiny_model(), o, quiet()); }, "--patch-labels");
  o.ip_plus = true;
  o.patch_labels = -1;
  expect_error<ConfigError>([&] { train_adapter(tiny_model(), o, quiet()); }, "--patch-labels");
}

TEST(AdapterTraining, AVlmsVisionTowerCanBeThePlusImageEncoderAndIsWrittenAsAClipFolder) {
  const std::string llava = scratch("tower-llava");
  write_random_llava(llava, tiny_llava_spec());
  AdapterTrainOptions o = options(AdapterKind::IpAdapter, scratch("tower-ip"), 3);
  o.image_encoder = llava;
  o.ip_plus = o.train_image_encoder = o.f16 = true;
  const AdapterTrainResult r = train_adapter(o, quiet());
  // --f16: both files in F16 storage (the loader below reads them as any other).
  for (const std::string& f : {r.adapter_path, scratch("tower-ip") + "/image_encoder/model.safetensors"})
    for (const TensorInfo& t : SafetensorsFile(f).tensors()) EXPECT_TRUE(t.dtype == DType::F16) << f << " " << t.name;
  // The written encoder is a CLIP vision folder of the tower's config that the loader takes
  // beside the adapter, and its weights moved from the LLaVA's.
  const Json config = read_json_file(scratch("tower-ip") + "/image_encoder/config.json");
  EXPECT_EQ(config.at("architectures").at(0), "CLIPVisionModel");
  EXPECT_EQ(config.at("hidden_size"), read_json_file(llava + "/config.json").at("vision_config").at("hidden_size"));
  SdLoadOptions lo;
  lo.ip_adapter = r.adapter_path;
  SdModel with = SdModel::load(tiny_model_dir(), lo);
  EXPECT_FALSE(with.image_encoder->with_projection());
  const auto tower = file_tensors(llava + "/model.safetensors");
  bool moved = false;
  for (const auto& kv : with.image_encoder->named_parameters(true))
    moved = moved || !at::equal(kv.value().to(at::kHalf), tower.at("vision_tower." + kv.key()).to(at::kHalf));
  EXPECT_TRUE(moved);
  GenerationParams p;
  p.prompt = "";
  p.width = p.height = 32;
  p.steps = 2;
  p.image_prompts.push_back({});
  p.image_prompts.back().image = world::render_scene(world::sample_scene(3));
  EXPECT_EQ(generate(with, p).size(), 1u);
  // The base adapter reads image_embeds, which a tower without projection does not have.
  AdapterTrainOptions base = options(AdapterKind::IpAdapter, scratch("tower-base"), 1);
  base.image_encoder = llava;
  expect_error<ConfigError>([&] { train_adapter(base, quiet()); }, "has no projection");
  lo.ip_adapter = train_adapter(tiny_model(), options(AdapterKind::IpAdapter, scratch("tower-base-ok"), 1), quiet()).adapter_path;
  lo.image_encoder_dir = llava;
  expect_error<ConfigError>([&] { SdModel::load(tiny_model_dir(), lo); }, "has no projection");
  // Both options are the IP-Adapter's own.
  AdapterTrainOptions style = options(AdapterKind::Style, scratch("tower-style"), 1);
  style.image_encoder = llava;
  expect_error<ConfigError>([&] { train_adapter(tiny_model(), style, quiet()); }, "--image-encoder");
  style.image_encoder.clear();
  style.f16 = true;
  expect_error<ConfigError>([&] { train_adapter(tiny_model(), style, quiet()); }, "--f16");
}

// A loss weight (`weight` sets it on the options): training with it lowers its loss, is another
// loss than the plain run's and trains other weights, and a resume must keep the same weight
// (`key` names it in the checkpoint), including not switching it off.
namespace {
void expect_weighted_training(AdapterKind kind, const std::string& tag, const std::string& file,
                              const std::function<void(AdapterTrainOptions&, double)>& weight, const std::string& key) {
  AdapterTrainOptions o = options(kind, scratch(tag), 20);
  weight(o, 8);
  const AdapterTrainResult r = train_adapter(tiny_model(), o, quiet());
  EXPECT_LT(r.eval_loss_after, r.eval_loss_before);
  const AdapterTrainResult plain = train_adapter(tiny_model(), options(kind, scratch(tag + "0"), 20), quiet());
  EXPECT_NE(r.eval_loss_before, plain.eval_loss_before);
  EXPECT_FALSE(same_tensors(file_tensors(scratch(tag) + "/" + file), file_tensors(scratch(tag + "0") + "/" + file)));
  AdapterTrainOptions again = o;
  again.resume = true;
  again.steps = 22;
  weight(again, 2);
  expect_error<ConfigError>([&] { train_adapter(tiny_model(), again, quiet()); }, key);
  weight(again, 0);  // off: the key is absent now, but the checkpoint has it
  expect_error<ConfigError>([&] { train_adapter(tiny_model(), again, quiet()); }, key);
}
}  // namespace

TEST(AdapterTraining, LimbWeightedSkeletonTrainingLowersItsLossAndResumesOnlyWithTheSameWeight) {
  expect_weighted_training(AdapterKind::Skeleton, "limb", "sk-adapter.safetensors",
                           [](AdapterTrainOptions& o, double w) { o.limb_weight = w; }, "limb_weight");
}

TEST(AdapterTraining, ObjectWeightedIpAndStyleTrainingLowerTheirLossAndResumeOnlyWithTheSameWeight) {
  expect_weighted_training(AdapterKind::IpAdapter, "object-ip", "ip-adapter.safetensors",
                           [](AdapterTrainOptions& o, double w) { o.object_weight = w; }, "object_weight");
  expect_weighted_training(AdapterKind::Style, "object-style", "style-adapter.safetensors",
                           [](AdapterTrainOptions& o, double w) { o.object_weight = w; }, "object_weight");
}

// ---- A new style from a folder of images (pipelines/style_training.h) ----------------------

TEST(NewStyle, TrainsOnlyTheEmbeddingDeterministicallyAndFindsItByName) {
  // An adapter to extend (2 steps are enough: its weights only have to exist).
  const std::string adapter_dir = scratch("ns-adapter");
  train_adapter(tiny_model(), options(AdapterKind::Style, adapter_dir, 2), quiet());
  const std::string adapter = adapter_dir + "/style-adapter.safetensors";
  const auto adapter_before = file_tensors(adapter);

  NewStyleOptions o;
  o.model = tiny_model_dir();
  o.adapter = adapter;
  o.images = dataset() + "/images";
  o.name = "my-style";
  o.steps = 6;
  o.batch = 2;
  o.resolution = 32;
  o.seed = 3;
  NewStyleCallbacks cb;
  cb.log = [](const std::string&) {};
  int calls = 0;
  cb.on_step = [&](int step, int total, double loss) {
    ++calls;
    EXPECT_EQ(step, calls);
    EXPECT_EQ(total, 6);
    EXPECT_TRUE(std::isfinite(loss));
  };
  const NewStyleResult r = train_new_style(o, cb);
  EXPECT_EQ(calls, 6);
  EXPECT_EQ(r.losses.size(), 6u);
  EXPECT_EQ(r.images, 8);
  EXPECT_EQ(r.path, adapter_dir + "/styles/my-style.safetensors");
  const StyleFile made = load_style(r.path);
  EXPECT_EQ(made.name, "my-style");
  StyleAdapter loaded = load_style_adapter(adapter, tiny_model().unet);
  EXPECT_EQ(made.embedding.sizes(), loaded->bank.sizes().slice(1));
  // Found by name next to the adapter, as the renderer and the studio look styles up.
  EXPECT_TRUE(at::equal(resolve_style(loaded, "my-style", adapter).embedding, made.embedding));
  // Only the embedding trained: the adapter file is untouched; it moved away from its start.
  EXPECT_TRUE(same_tensors(file_tensors(adapter), adapter_before));
  EXPECT_FALSE(at::allclose(made.embedding, loaded->bank.mean(0)));
  // The same seed gives the same style, bit for bit.
  o.out = scratch("again.safetensors");
  const NewStyleResult again = train_new_style(o, cb = NewStyleCallbacks{[](const std::string&) {}, nullptr, nullptr});
  EXPECT_TRUE(at::equal(load_style(again.path).embedding, made.embedding));
  EXPECT_EQ(again.losses, r.losses);
  // Cancelling writes the style so far.
  int seen = 0;
  NewStyleCallbacks stop{[](const std::string&) {}, [&](int, int, double) { ++seen; }, [&] { return seen >= 2; }};
  o.out = scratch("early.safetensors");
  const NewStyleResult early = train_new_style(o, stop);
  EXPECT_TRUE(early.cancelled);
  EXPECT_EQ(early.losses.size(), 2u);
  EXPECT_TRUE(std::filesystem::is_regular_file(early.path));
}

TEST(NewStyle, BadInputsNameTheProblem) {
  const std::string adapter_dir = scratch("ns-bad");
  train_adapter(tiny_model(), options(AdapterKind::Style, adapter_dir, 1), quiet());
  NewStyleOptions o;
  o.model = tiny_model_dir();
  o.adapter = adapter_dir + "/style-adapter.safetensors";
  o.images = dataset() + "/images";
  o.name = "fresh";
  o.steps = 1;
  o.resolution = 32;
  NewStyleCallbacks quiet_cb;
  quiet_cb.log = [](const std::string&) {};
  auto expect = [&](NewStyleOptions bad, const std::string& part) {
    try {
      train_new_style(bad, quiet_cb);
      ADD_FAILURE() << "no error; expected one naming " << part;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  NewStyleOptions b = o;
  b.name = "../evil";
  expect(b, "--name");
  b = o;
  b.images = scratch("empty-folder");
  std::filesystem::create_directories(b.images);
  expect(b, "no images");
  b = o;
  b.images = "/nonexistent/styles";
  expect(b, "/nonexistent/styles");
  b = o;
  b.name = load_style_adapter(o.adapter, tiny_model().unet)->config().styles[0];  // already in the bank
  expect(b, "already in");
  b = o;
  b.adapter = "/nonexistent/style-adapter.safetensors";
  expect(b, "/nonexistent/style-adapter.safetensors");
  b = o;
  b.steps = 0;
  expect(b, "--steps");
#ifdef IRIS_CLI
  // The CLI: one clear error naming the folder, before any model loads.
  const auto r = iris::testing_util::run_cli("train new-style --model " + o.model + " --adapter " + o.adapter +
                                             " --images /nonexistent/style-images --name fresh");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("/nonexistent/style-images"), std::string::npos) << r.err;
#endif
}
