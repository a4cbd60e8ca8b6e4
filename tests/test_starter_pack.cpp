// The starter pack trainers on test-sized models: the BPE tokenizer loads in the CLIP loader,
// every trainer's loss is finite and falls on a fixed batch, an interrupted run resumes to the
// same weights, the assembled folder loads with SdModel::load and renders, the eval scores it,
// and bad input gives clear errors.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/checkpoint.h"
#include "core/clip_tokenizer.h"
#include "core/error.h"
#include "core/json_util.h"
#include "core/safetensors.h"
#include "core/state_dict.h"
#include "core/tensor_io.h"
#include "diffusion/clip.h"
#include "diffusion/vae.h"
#include "pipelines/diffusion_eval.h"
#include "pipelines/random_model.h"
#include "pipelines/sd_model.h"
#include "pipelines/stable_diffusion.h"
#include "pipelines/starter_pack.h"
#include "pipelines/tokenizer_training.h"
#include "pipelines/trainer.h"
#include "test_util.h"
#include "world/dataset.h"

namespace fs = std::filesystem;
using namespace iris;
using iris::testing_util::expect_error;

namespace {

// A small Tinyworld dataset folder.
std::string make_dataset(const fs::path& dir, int count = 12) {
  world::DatasetOptions d;
  d.base_seed = 5;
  d.count = count;
  world::export_dataset(dir.string(), d);
  return dir.string();
}

StarterTrainOptions tiny_options(const std::string& data, const fs::path& out, int64_t steps) {
  StarterTrainOptions o;
  o.data_dir = data;
  o.out_dir = out.string();
  o.tiny = true;
  o.steps = steps;
  o.batch = 4;
  o.lr = 2e-3;
  o.warmup_steps = 0;
  o.seed = 11;
  o.fixed_batch = true;
  o.f16 = false;
  o.log = [](const std::string&) {};
  return o;
}

void expect_finite_and_falling(const TrainReport& r, const std::string& what) {
  ASSERT_GE(r.losses.size(), 2u) << what;
  for (double l : r.losses) EXPECT_TRUE(std::isfinite(l)) << what;
  EXPECT_LT(r.losses.back(), r.losses.front()) << what;
}

}  // namespace

TEST(StarterTokenizer, TrainsBpeTheClipLoaderReads) {
  const fs::path dir = testing_util::scratch_dir();
  const std::vector<std::string> corpus = {"a small red circle at the top left", "a big blue square",
                                           "two objects: a red circle and a green triangle",
                                           "a picture of a red square, in the outlined style"};
  const BpeModel m = train_bpe(corpus);
  write_bpe(m, dir.string());
  const ClipTokenizer tok = ClipTokenizer::from_folder(dir.string());
  EXPECT_EQ(tok.vocab_size(), m.vocab.size());
  EXPECT_EQ(tok.bos_id(), m.bos_id());
  EXPECT_EQ(tok.eos_id(), m.eos_id());
  // Frequent words became single tokens; unseen text still encodes (byte symbols) and round-trips.
  EXPECT_EQ(tok.encode("a red circle").size(), 3u);
  EXPECT_EQ(tok.decode(tok.encode("a red circle")), "a red circle ");
  EXPECT_EQ(tok.decode(tok.encode("zebra 42!")), "zebra 4 2 ! ");
  // Deterministic.
  const BpeModel again = train_bpe(corpus);
  EXPECT_EQ(again.vocab, m.vocab);
  EXPECT_EQ(again.merges, m.merges);
  EXPECT_THROW(train_bpe({"", "   "}), ConfigError);
}

TEST(StarterPack, EndToEndTinyPipelineLoadsRendersAndEvaluates) {
  const fs::path root = testing_util::scratch_dir();
  const std::string data = make_dataset(root / "data");
  const fs::path out = root / "pack";
  StarterTrainOptions o = tiny_options(data, out, 5);
  train_starter_tokenizer(o, 300);

  const TrainReport vae = train_starter_vae(o);
  expect_finite_and_falling(vae, "vae");
  {
    Checkpoint ck = Checkpoint::open((out / "vae").string());
    const VaeConfig c = VaeConfig::from_json(ck.parts()[0].config, "vae");
    EXPECT_NE(c.scaling_factor, 1.0);
    EXPECT_EQ(c.scale(), 4);
  }
  const TrainReport clip = train_starter_clip(o);
  expect_finite_and_falling(clip, "clip");
  {
    ClipTextModel text = load_clip_text_model(Checkpoint::open((out / "text_encoder").string()).parts()[0]);
    ClipVisionModel vision = load_clip_vision_model(Checkpoint::open((out / "image_encoder").string()).parts()[0]);
    EXPECT_TRUE(vision->with_projection());
    EXPECT_LT(text->config().vocab_size, 2000);
  }
  {  // --stop-at: the run ends there with a checkpoint and exports nothing
    StarterTrainOptions staged = o;
    staged.work_dir = (root / "unet-work").string();
    staged.stop_at = 2;
    const TrainReport part = train_starter_unet(staged);
    EXPECT_EQ(part.final_step, 2);
    EXPECT_NE(part.output.find("stopped by --stop-at"), std::string::npos) << part.output;
    EXPECT_FALSE(fs::exists(out / "unet"));
    EXPECT_TRUE(fs::exists(Trainer::state_path(staged.work_dir)));
  }
  const TrainReport unet = train_starter_unet(o);
  expect_finite_and_falling(unet, "unet");

  SdModel model = SdModel::load(out.string());
  EXPECT_EQ(model.pad_token_id, model.tokenizer->eos_id());
  GenerationParams p;
  p.prompt = "a small red circle at the top left";
  p.steps = 2;
  p.width = p.height = 64;
  p.sampler = "euler";
  const std::vector<GeneratedImage> img = generate(model, p);
  ASSERT_EQ(img.size(), 1u);
  EXPECT_EQ(img[0].image.width, 64);

  DiffusionEvalOptions e;
  e.n = 3;
  e.steps = 2;
  const DiffusionEvalResult r = eval_text_to_image(model, e);
  EXPECT_EQ(r.images.size(), 3u);
  EXPECT_GT(r.score.color.total, 0);
  EXPECT_GE(r.described().total, r.score.object_attributes().total);
  EXPECT_NE(format_eval_table(r).find("described (all)"), std::string::npos);
  const Image sheet = contact_sheet(r.images, 2);
  EXPECT_EQ(sheet.width, 2 * 64 + 3 * 2);
  EXPECT_EQ(sheet.height, 2 * 64 + 3 * 2);
}

TEST(StarterPack, InterruptedVaeRunResumesToTheSameWeights) {
  const fs::path root = testing_util::scratch_dir();
  const std::string data = make_dataset(root / "data", 8);
  StarterTrainOptions straight = tiny_options(data, root / "a", 4);
  straight.fixed_batch = false;
  train_starter_vae(straight);

  StarterTrainOptions o = tiny_options(data, root / "b", 4);
  o.fixed_batch = false;
  o.work_dir = (root / "work").string();
  o.checkpoint_every = 2;
  int steps_seen = 0;
  o.progress.on_step = [&](int, int, const std::string&) { ++steps_seen; };
  o.progress.should_cancel = [&] { return steps_seen >= 3; };  // stop after step 3 (checkpoint at 2)
  EXPECT_THROW(train_starter_vae(o), Cancelled);
  o.progress = {};
  const TrainReport resumed = train_starter_vae(o);
  EXPECT_EQ(resumed.losses.size(), 2u);  // steps 3 and 4 only

  const auto a = read_all(TensorStore::open((root / "a/vae/diffusion_pytorch_model.safetensors").string()));
  const auto b = read_all(TensorStore::open((root / "b/vae/diffusion_pytorch_model.safetensors").string()));
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) EXPECT_TRUE(at::equal(t, b.at(name))) << name;
}

TEST(StarterPack, VaeFinetuneAndDecoderOnlyStartFromThePacksVae) {
  const fs::path root = testing_util::scratch_dir();
  const std::string data = make_dataset(root / "data", 8);
  StarterTrainOptions o = tiny_options(data, root / "pack", 3);
  train_starter_vae(o);
  const std::string weights = (root / "pack/vae/diffusion_pytorch_model.safetensors").string();
  const auto scaling = [&] {
    return VaeConfig::from_json(Checkpoint::open((root / "pack/vae").string()).parts()[0].config, "vae").scaling_factor;
  };
  const auto before = read_all(TensorStore::open(weights));
  const double factor_before = scaling();

  // Decoder only (detail-weighted): the encoder side and the scaling factor stay bit-identical,
  // the decoder moves, and its loss falls.
  StarterTrainOptions dec = o;
  dec.steps = 6;
  dec.vae_decoder_only = true;
  dec.vae_detail_weight = 9;
  const TrainReport r = train_starter_vae(dec);
  expect_finite_and_falling(r, "vae decoder only");
  const auto after = read_all(TensorStore::open(weights));
  ASSERT_EQ(before.size(), after.size());
  int decoder_changed = 0;
  for (const auto& [name, t] : before) {
    const bool encoder_side = name.rfind("encoder.", 0) == 0 || name.rfind("quant_conv.", 0) == 0;
    if (encoder_side) EXPECT_TRUE(at::equal(t, after.at(name))) << name;
    else decoder_changed += !at::equal(t, after.at(name));
  }
  EXPECT_GT(decoder_changed, 0);
  EXPECT_EQ(scaling(), factor_before);
  // The whole VAE from the pack's weights: the encoder trains too.
  StarterTrainOptions ft = o;
  ft.vae_from_pack = true;
  ft.steps = 6;
  ft.lr = 3e-4;  // a fresh optimizer on trained weights: a gentler step than from scratch
  const TrainReport f = train_starter_vae(ft);
  expect_finite_and_falling(f, "vae finetune");
  const auto tuned = read_all(TensorStore::open(weights));
  EXPECT_FALSE(at::equal(after.at("encoder.conv_in.weight"), tuned.at("encoder.conv_in.weight")));
  // Without a pack VAE the error names the command that makes one.
  StarterTrainOptions none = dec;
  none.out_dir = (root / "empty").string();
  fs::create_directories(none.out_dir);
  expect_error<IoError>([&] { train_starter_vae(none); }, "iris train vae");
}

// The edge (neighbour-difference) term and latent noise each change what a decoder-only step
// computes; from the same decoder, the same batch and noise, the first loss tells them apart.
TEST(StarterPack, VaeGradientWeightAndLatentNoiseChangeTheDecodersLoss) {
  const fs::path root = testing_util::scratch_dir();
  const std::string data = make_dataset(root / "data", 8);
  StarterTrainOptions o = tiny_options(data, root / "pack", 3);
  train_starter_vae(o);
  const auto run = [&](const std::string& name, double gradient_weight, double latent_noise) {
    const fs::path out = root / name;
    fs::create_directories(out);
    fs::copy(root / "pack/vae", out / "vae");
    StarterTrainOptions d = o;
    d.out_dir = out.string();
    d.steps = 6;
    d.vae_decoder_only = true;
    d.vae_gradient_weight = gradient_weight;
    d.vae_latent_noise = latent_noise;
    const TrainReport r = train_starter_vae(d);
    return std::make_pair(r, read_all(TensorStore::open((out / "vae/diffusion_pytorch_model.safetensors").string())));
  };
  const auto [plain, plain_w] = run("plain", 0, 0);
  const auto [edges, edges_w] = run("edges", 2, 0);
  const auto [noisy, noisy_w] = run("noisy", 0, 0.5);
  expect_finite_and_falling(edges, "vae decoder, gradient weight");
  ASSERT_FALSE(plain.losses.empty());
  // Same weights and batch at step 1: the edge term only adds (a random decoder misses every edge).
  EXPECT_GT(edges.losses[0], plain.losses[0]);
  EXPECT_NE(noisy.losses[0], plain.losses[0]);
  for (const auto* w : {&edges_w, &noisy_w}) {
    EXPECT_TRUE(at::equal(plain_w.at("encoder.conv_in.weight"), w->at("encoder.conv_in.weight")));
    EXPECT_FALSE(at::equal(plain_w.at("decoder.conv_out.weight"), w->at("decoder.conv_out.weight")));
  }
  // Negative or NaN weights are refused before any data is read, naming the option.
  for (const auto& [field, option] : {std::pair<double StarterTrainOptions::*, std::string>{
                                          &StarterTrainOptions::vae_gradient_weight, "--gradient-weight"},
                                      {&StarterTrainOptions::vae_latent_noise, "--latent-noise"},
                                      {&StarterTrainOptions::vae_detail_weight, "--detail-weight"},
                                      {&StarterTrainOptions::vae_denoised, "--denoised"}})
    for (double bad : {-1.0, std::nan("")}) {
      StarterTrainOptions b = o;
      b.data_dir = (root / "missing").string();
      b.*field = bad;
      expect_error<ConfigError>([&] { train_starter_vae(b); }, option);
    }
}

// A VAE run resumes only with the loss settings it was started with (a changed or dropped
// weight would silently train a mix of two objectives).
TEST(StarterPack, VaeResumeRefusesOtherLossSettings) {
  const fs::path root = testing_util::scratch_dir();
  const std::string data = make_dataset(root / "data", 8);
  StarterTrainOptions o = tiny_options(data, root / "pack", 3);
  train_starter_vae(o);
  StarterTrainOptions d = o;
  d.steps = 4;
  d.stop_at = 2;
  d.vae_decoder_only = true;
  d.vae_gradient_weight = 2;
  d.work_dir = (root / "work").string();
  d.checkpoint_every = 1;
  train_starter_vae(d);  // stops at step 2, checkpoint saved
  d.stop_at = 0;
  for (const auto& [gradient_weight, said] : {std::pair<double, std::string>{0, "0.0"}, {3, "3.0"}}) {
    StarterTrainOptions other = d;
    other.vae_gradient_weight = gradient_weight;
    expect_error<ConfigError>([&] { train_starter_vae(other); }, "\"gradient_weight\" was 2.0, now " + said);
  }
  StarterTrainOptions noisy = d;
  noisy.vae_latent_noise = 0.1;  // a setting the checkpoint did not have
  expect_error<ConfigError>([&] { train_starter_vae(noisy); }, "\"latent_noise\" was 0.0, now 0.1");
  const TrainReport same = train_starter_vae(d);
  EXPECT_EQ(same.losses.size(), 2u);  // steps 3 and 4

  // A run with every setting off is recorded too: switching a weight on when resuming it is refused.
  StarterTrainOptions plain = d;
  plain.vae_gradient_weight = 0;
  plain.stop_at = 2;
  plain.work_dir = (root / "work-plain").string();
  train_starter_vae(plain);
  plain.stop_at = 0;
  plain.vae_gradient_weight = 2;
  expect_error<ConfigError>([&] { train_starter_vae(plain); }, "gradient_weight");
}

// --denoised: part of each batch decodes latents the pack's own UNet denoised (img2img of the
// batch's images). It needs the whole pack (UNet, text encoder) and the encoder frozen.
TEST(StarterPack, VaeDecoderLearnsFromTheUnetsDenoisedLatents) {
  const fs::path root = testing_util::scratch_dir();
  const std::string data = make_dataset(root / "data", 8);
  StarterTrainOptions o = tiny_options(data, root / "pack", 3);
  train_starter_tokenizer(o, 300);
  train_starter_vae(o);
  train_starter_clip(o);
  train_starter_unet(o);
  fs::copy(root / "pack", root / "plain", fs::copy_options::recursive);
  const auto weights = [&](const std::string& name) {
    return read_all(TensorStore::open((root / name / "vae/diffusion_pytorch_model.safetensors").string()));
  };
  const auto before = weights("pack");

  StarterTrainOptions d = o;
  d.steps = 6;
  d.vae_decoder_only = true;
  d.vae_gradient_weight = 2;
  StarterTrainOptions plain = d;
  plain.out_dir = (root / "plain").string();
  const TrainReport p = train_starter_vae(plain);
  d.vae_denoised = 0.5;
  d.vae_denoised_images = 4;
  const TrainReport r = train_starter_vae(d);
  ASSERT_EQ(r.losses.size(), 6u);
  for (double l : r.losses) EXPECT_TRUE(std::isfinite(l));
  EXPECT_NE(r.losses[0], p.losses[0]);  // same weights, same step: only the denoised rows differ
  const auto after = weights("pack");
  EXPECT_TRUE(at::equal(before.at("encoder.conv_in.weight"), after.at("encoder.conv_in.weight")));
  EXPECT_FALSE(at::equal(before.at("decoder.conv_out.weight"), after.at("decoder.conv_out.weight")));

  // The encoder must stay as the UNet knows it; a share above 1 is no share; nor are 0 latents.
  StarterTrainOptions whole = d;
  whole.vae_decoder_only = false;
  whole.vae_from_pack = true;
  StarterTrainOptions over = d;
  over.vae_denoised = 1.5;
  StarterTrainOptions none_made = d;
  none_made.vae_denoised_images = 0;
  for (const StarterTrainOptions* bad : {&whole, &over, &none_made}) {
    expect_error<ConfigError>([&] { train_starter_vae(*bad); }, "--denoised");
  }
}

TEST(StarterPack, UnetFinetuneStartsFromThePackAndCanTrainTheTextEncoder) {
  const fs::path root = testing_util::scratch_dir();
  const std::string data = make_dataset(root / "data", 8);
  const fs::path out = root / "pack";
  StarterTrainOptions o = tiny_options(data, out, 3);
  // Without a pack UNet, --finetune names the command that makes one.
  train_starter_tokenizer(o, 300);
  train_starter_vae(o);
  train_starter_clip(o);
  StarterTrainOptions ft = o;
  ft.unet_from_pack = true;
  expect_error<IoError>([&] { train_starter_unet(ft); }, "iris train unet");
  train_starter_unet(o);
  const std::string unet_file = (out / "unet/diffusion_pytorch_model.safetensors").string();
  const std::string text_file = (out / "text_encoder/model.safetensors").string();
  const auto unet0 = read_all(TensorStore::open(unet_file));
  const auto text0 = read_all(TensorStore::open(text_file));

  // Frozen text encoder: the UNet moves from the pack's weights, the text encoder file stays.
  ft.steps = 4;
  ft.lr = 1e-3;
  ft.work_dir = (root / "ft-work").string();
  const TrainReport frozen = train_starter_unet(ft);
  expect_finite_and_falling(frozen, "unet finetune");
  const auto unet1 = read_all(TensorStore::open(unet_file));
  EXPECT_FALSE(at::equal(unet0.at("conv_in.weight"), unet1.at("conv_in.weight")));
  for (const auto& [name, t] : read_all(TensorStore::open(text_file))) EXPECT_TRUE(at::equal(t, text0.at(name))) << name;

  // Its checkpoint holds UNet tensors only: resuming it with the text encoder trainable is
  // refused instead of silently starting the text encoder's optimizer state from nothing.
  StarterTrainOptions joint = ft;
  joint.unet_train_text = true;
  joint.steps = 8;
  EXPECT_THROW(train_starter_unet(joint), CheckpointError);

  // Jointly: the text encoder is trained on the denoising loss and written back as the
  // CLIPTextModel its config names: every key but the contrastive head (text_projection, which
  // the denoising loss does not train and the pipeline never reads), a folder that loads and
  // renders.
  joint.work_dir = (root / "joint-work").string();
  joint.steps = 4;
  const TrainReport j = train_starter_unet(joint);
  expect_finite_and_falling(j, "unet + text encoder");
  EXPECT_GT(j.parameters, frozen.parameters);
  const auto text2 = read_all(TensorStore::open(text_file));
  EXPECT_EQ(text2.size() + 1, text0.size());
  for (const auto& [name, t] : text0)
    if (name != "text_projection.weight") EXPECT_TRUE(text2.count(name)) << name;
  EXPECT_FALSE(at::equal(text0.at("text_model.encoder.layers.0.self_attn.q_proj.weight"),
                         text2.at("text_model.encoder.layers.0.self_attn.q_proj.weight")));
  // A pack UNet that does not fit the text encoder is refused, naming its config and the value.
  {
    const std::string config_path = (out / "unet/config.json").string();
    Json config = read_json_file(config_path);
    const Json original = config;
    config["cross_attention_dim"] = 48;
    write_json(config_path, config);
    StarterTrainOptions bad = ft;
    bad.work_dir.clear();
    try {
      train_starter_unet(bad);
      ADD_FAILURE() << "expected ConfigError";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("unet/config.json"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("cross_attention_dim 48"), std::string::npos) << e.what();
    }
    write_json(config_path, original);
  }
  SdModel model = SdModel::load(out.string());
  GenerationParams p;
  p.prompt = "a large blue square on the left";
  p.steps = 2;
  p.width = p.height = 64;
  EXPECT_EQ(generate(model, p).size(), 1u);
}

TEST(StarterPack, BadInputGivesClearErrors) {
  const fs::path root = testing_util::scratch_dir();
  // Missing data folder.
  StarterTrainOptions o = tiny_options((root / "nope").string(), root / "pack", 2);
  expect_error<IoError>([&] { train_starter_vae(o); }, "nope");
  EXPECT_THROW(train_starter_tokenizer(o), IoError);
  // Empty dataset.
  fs::create_directories(root / "empty");
  { std::ofstream(root / "empty/captions.jsonl"); }
  o.data_dir = (root / "empty").string();
  EXPECT_THROW(train_starter_vae(o), ConfigError);
  EXPECT_THROW(train_starter_tokenizer(o), ConfigError);
  // The UNet before its inputs exist names the command that makes them.
  o.data_dir = make_dataset(root / "data", 4);
  expect_error<IoError>([&] { train_starter_unet(o); }, "iris train tokenizer");
  // A corrupt checkpoint.
  o.work_dir = (root / "work").string();
  fs::create_directories(o.work_dir);
  { std::ofstream(Trainer::state_path(o.work_dir)) << "not a checkpoint"; }
  EXPECT_THROW(train_starter_vae(o), FormatError);
}
