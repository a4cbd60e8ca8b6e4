#include "pipelines/starter_pack.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>

#include <torch/nn/module.h>
#include <torch/utils.h>

#include "core/checkpoint.h"
#include "core/error.h"
#include "core/image.h"
#include "core/runtime.h"
#include "core/state_dict.h"
#include "diffusion/clip.h"
#include "diffusion/noise.h"
#include "diffusion/schedulers/factory.h"
#include "diffusion/schedulers/sampler.h"
#include "diffusion/schedulers/schedule.h"
#include "diffusion/unet.h"
#include "diffusion/vae.h"
#include "pipelines/random_model.h"
#include "pipelines/sd_model.h"
#include "pipelines/stable_diffusion.h"
#include "pipelines/tokenizer_training.h"
#include "pipelines/trainer.h"
#include "world/dataset.h"
#include "world/rng.h"

namespace fs = std::filesystem;

namespace iris {

// Default schedules per component (full size; tests pass their own steps):
//   component   steps  batch  lr      warm-up  notes
//   vae         1500   16     1e-3    100      L1 + 1e-5 KL (per element); optionally detail-weighted
//                                              L1, or the decoder alone from the pack's VAE
//   clip        1500   64     5e-4    100      symmetric InfoNCE, learned temperature
//   unet        5000   32     5e-4    200      v-prediction, min-SNR-5, EMA 0.999
namespace {

struct Defaults {
  int64_t steps, batch;
  double lr;
  int64_t warmup;
};
constexpr Defaults kVae{1500, 16, 1e-3, 100};
constexpr Defaults kClip{1500, 64, 5e-4, 100};
constexpr Defaults kUnet{5000, 32, 5e-4, 200};

std::function<void(const std::string&)> log_of(const StarterTrainOptions& o) {
  if (o.log) return o.log;
  return [](const std::string& line) {
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  };
}

TrainerOptions trainer_options(const StarterTrainOptions& o, const Defaults& d, const std::string& name) {
  TrainerOptions t;
  t.name = name;
  t.steps = o.steps > 0 ? o.steps : d.steps;
  t.lr = o.lr > 0 ? o.lr : d.lr;
  t.warmup_steps = std::min(o.warmup_steps >= 0 ? o.warmup_steps : d.warmup, t.steps / 2);
  t.seed = o.seed;
  t.log_every = o.log_every;
  t.checkpoint_every = o.checkpoint_every;
  t.checkpoint_dir = o.work_dir;
  t.stop_at = o.stop_at;
  t.log = log_of(o);
  t.progress = o.progress;
  return t;
}

int64_t batch_of(const StarterTrainOptions& o, const Defaults& d) { return o.batch > 0 ? o.batch : d.batch; }

// The step's data seed, or a constant one for fixed-batch runs.
uint64_t data_seed(const StarterTrainOptions& o, const Trainer& t) {
  return o.fixed_batch ? world::hash_combine(o.seed, 0x5eedull) : t.step_seed();
}

// Runs the trainer to the end, timing the steps this call runs. Fixed-batch runs also fix the
// noise, so the loss is a function of the parameters alone.
TrainReport run_trainer(Trainer& t, const StarterTrainOptions& o, const std::function<at::Tensor(at::Generator&)>& loss_fn) {
  TrainReport r;
  const int64_t start = t.current_step();
  const auto t0 = std::chrono::steady_clock::now();
  t.run([&](int64_t, at::Generator& gen) {
    at::Generator fixed = make_cpu_generator(world::hash_combine(o.seed, 0xf12edull));
    at::Tensor loss = loss_fn(o.fixed_batch ? fixed : gen);
    r.losses.push_back(loss.item<double>());
    return loss;
  });
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.final_step = t.current_step();
  if (r.final_step > start) r.seconds_per_step = secs / static_cast<double>(r.final_step - start);
  for (const auto& [n, p] : t.parameters()) r.parameters += p.numel();
  return r;
}

// stop_at ended the run before the end of its schedule: the checkpoint holds the state and
// nothing is exported (a later run without stop_at finishes and exports).
TrainReport stopped_before_export(const Trainer& t, TrainReport r) {
  r.output = "checkpoint at step " + std::to_string(t.current_step()) + " (stopped by --stop-at; nothing exported)";
  return r;
}

void require_dir(const std::string& dir, const std::string& what) {
  if (dir.empty()) throw ConfigError(what + ": no folder given");
  if (!fs::is_directory(dir)) throw IoError(dir + ": no such folder (" + what + ")");
}

// A model folder (config.json + weights) inside the pack, with a hint at what makes it.
ModelPart open_pack_part(const std::string& out_dir, const std::string& name, const std::string& made_by) {
  const fs::path dir = fs::path(out_dir) / name;
  if (!fs::is_directory(dir))
    throw IoError(dir.string() + ": missing; run `" + made_by + "` first");
  Checkpoint ck = Checkpoint::open(dir.string());
  ModelPart part = ck.parts().at(0);
  part.name = name;
  if (!part.has_weights()) throw CheckpointError(dir.string() + ": no weights (.safetensors)");
  return part;
}

ClipTokenizer open_pack_tokenizer(const std::string& out_dir) {
  const fs::path dir = fs::path(out_dir) / "tokenizer";
  if (!fs::exists(dir / "vocab.json")) throw IoError(dir.string() + ": missing; run `iris train tokenizer` first");
  return ClipTokenizer::from_folder(dir.string());
}

std::vector<std::string> pick(const std::vector<std::string>& v, const std::vector<int64_t>& idx) {
  std::vector<std::string> out;
  for (int64_t i : idx) out.push_back(v[static_cast<size_t>(i)]);
  return out;
}

// Captions for a batch: half with the style named (so text can ask for a style), and
// `empty_rate` of them empty (the unconditional branch of classifier-free guidance).
std::vector<std::string> batch_captions(const ImageCaptionSet& data, const std::vector<int64_t>& idx, uint64_t seed,
                                        double empty_rate) {
  world::Rng rng(seed);
  std::vector<std::string> out;
  for (int64_t i : idx) {
    const auto k = static_cast<size_t>(i);
    if (empty_rate > 0 && rng.chance(empty_rate))
      out.emplace_back();
    else
      out.push_back(rng.chance(0.5) ? data.captions_with_style[k] : data.captions[k]);
  }
  return out;
}

// CLIP pixel normalisation of uint8 images [B, 3, H, W] (what clip_preprocess does at the
// encoder's own size: rescale, then (x - mean) / std).
at::Tensor clip_normalize(const at::Tensor& u8) {
  const ClipPreprocessConfig c;
  const at::Tensor mean = at::tensor({c.mean[0], c.mean[1], c.mean[2]}).view({1, 3, 1, 1});
  const at::Tensor std = at::tensor({c.std[0], c.std[1], c.std[2]}).view({1, 3, 1, 1});
  return (u8.to(at::kFloat) * static_cast<float>(c.rescale_factor) - mean) / std;
}

}  // namespace

// ---- data -------------------------------------------------------------------------------------

at::Tensor ImageCaptionSet::pixels(const std::vector<int64_t>& idx) const {
  const at::Tensor i = at::tensor(idx, at::kLong);
  return images.index_select(0, i).to(at::kFloat).div_(127.5).sub_(1.0);
}

ImageCaptionSet load_image_caption_set(const std::string& data_dir, int64_t max_images,
                                       const std::function<void(const std::string&)>& log) {
  require_dir(data_dir, "Tinyworld dataset");
  std::vector<world::DatasetEntry> entries = world::load_dataset(data_dir);
  if (entries.empty()) throw ConfigError(data_dir + ": the dataset is empty (captions.jsonl has no lines)");
  if (max_images > 0 && static_cast<int64_t>(entries.size()) > max_images) entries.resize(static_cast<size_t>(max_images));
  ImageCaptionSet s;
  const int64_t n = static_cast<int64_t>(entries.size());
  for (int64_t i = 0; i < n; ++i) {
    const world::DatasetEntry& e = entries[static_cast<size_t>(i)];
    const Image img = load_image(e.image);
    if (!s.images.defined()) s.images = at::empty({n, 3, img.height, img.width}, at::kByte);
    if (img.height != s.images.size(2) || img.width != s.images.size(3))
      throw ConfigError(e.image + ": " + std::to_string(img.width) + "x" + std::to_string(img.height) +
                        ", but the dataset's first image is " + std::to_string(s.images.size(3)) + "x" +
                        std::to_string(s.images.size(2)));
    // HWC bytes -> CHW
    s.images[i].copy_(at::from_blob(const_cast<uint8_t*>(img.pixels.data()), {img.height, img.width, 3}, at::kByte)
                          .permute({2, 0, 1}));
    s.captions.push_back(e.caption);
    s.captions_with_style.push_back(e.caption_with_style.empty() ? e.caption : e.caption_with_style);
    if (log && (i + 1) % 5000 == 0) log("[data] " + std::to_string(i + 1) + "/" + std::to_string(n) + " images");
  }
  if (log)
    log("[data] " + data_dir + ": " + std::to_string(n) + " images " + std::to_string(s.images.size(3)) + "x" +
        std::to_string(s.images.size(2)));
  return s;
}

std::vector<int64_t> sample_indices(uint64_t seed, int64_t n, int64_t batch) {
  if (n <= 0) throw ConfigError("cannot sample a batch from an empty dataset");
  world::Rng rng(seed);
  std::vector<int64_t> idx(static_cast<size_t>(batch));
  for (auto& i : idx) i = static_cast<int64_t>(rng.below(static_cast<uint64_t>(n)));
  return idx;
}

at::Tensor tokenize_batch(const ClipTokenizer& tok, const std::vector<std::string>& texts, int64_t max_len) {
  at::Tensor ids = at::empty({static_cast<int64_t>(texts.size()), max_len}, at::kLong);
  auto acc = ids.accessor<int64_t, 2>();
  for (size_t b = 0; b < texts.size(); ++b) {
    const std::vector<int> row = tok.encode_padded(texts[b], static_cast<int>(max_len), tok.eos_id());
    for (int64_t j = 0; j < max_len; ++j) acc[static_cast<int64_t>(b)][j] = row[static_cast<size_t>(j)];
  }
  return ids;
}

// ---- configs ------------------------------------------------------------------------------------

Json starter_vae_config(bool tiny) {
  const std::vector<int64_t> ch = tiny ? std::vector<int64_t>{8, 16, 16} : std::vector<int64_t>{16, 32, 64};
  return {{"_class_name", "AutoencoderKL"},
          {"in_channels", 3},
          {"out_channels", 3},
          {"block_out_channels", ch},
          {"down_block_types", {"DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"}},
          {"up_block_types", {"UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"}},
          {"layers_per_block", 1},
          {"norm_num_groups", tiny ? 4 : 8},
          {"latent_channels", 4},
          {"act_fn", "silu"},
          {"mid_block_add_attention", false},
          {"sample_size", 64},
          {"scaling_factor", 1.0}};
}

Json starter_text_config(bool tiny, int64_t vocab_size, int64_t bos_id, int64_t eos_id) {
  return {{"architectures", {"CLIPTextModel"}},
          {"model_type", "clip_text_model"},
          {"vocab_size", vocab_size},
          {"hidden_size", tiny ? 32 : 128},
          {"intermediate_size", tiny ? 64 : 256},
          {"num_hidden_layers", tiny ? 1 : 3},
          {"num_attention_heads", 4},
          {"max_position_embeddings", tiny ? 40 : 64},
          {"hidden_act", "quick_gelu"},
          {"layer_norm_eps", 1e-5},
          {"projection_dim", tiny ? 32 : 128},
          {"bos_token_id", bos_id},
          {"eos_token_id", eos_id},
          {"pad_token_id", eos_id}};
}

Json starter_vision_config(bool tiny) {
  return {{"architectures", {"CLIPVisionModelWithProjection"}},
          {"model_type", "clip_vision_model"},
          {"hidden_size", tiny ? 32 : 96},
          {"intermediate_size", tiny ? 64 : 192},
          {"num_hidden_layers", tiny ? 1 : 3},
          {"num_attention_heads", 4},
          {"num_channels", 3},
          {"image_size", 64},
          {"patch_size", tiny ? 16 : 8},
          {"hidden_act", "quick_gelu"},
          {"layer_norm_eps", 1e-5},
          {"projection_dim", tiny ? 32 : 128}};
}

Json starter_unet_config(bool tiny, int64_t cross_attention_dim) {
  // 16x16 latents: a plain block at 16x16 (attention there doubled the step time in the
  // calibration run), cross-attention at 8x8, 4x4 and in the mid block.
  const std::vector<int64_t> ch = tiny ? std::vector<int64_t>{16, 32, 32} : std::vector<int64_t>{32, 64, 128};
  return {{"_class_name", "UNet2DConditionModel"},
          {"in_channels", 4},
          {"out_channels", 4},
          {"sample_size", 16},
          {"block_out_channels", ch},
          {"down_block_types", {"DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"}},
          {"up_block_types", {"CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"}},
          {"mid_block_type", "UNetMidBlock2DCrossAttn"},
          {"layers_per_block", 1},
          {"attention_head_dim", tiny ? 2 : 4},
          {"cross_attention_dim", cross_attention_dim},
          {"norm_num_groups", tiny ? 8 : 32},
          {"act_fn", "silu"},
          {"flip_sin_to_cos", true},
          {"freq_shift", 0}};
}

Json starter_scheduler_config() {
  return {{"_class_name", "EulerDiscreteScheduler"},
          {"num_train_timesteps", 1000},
          {"beta_schedule", "squaredcos_cap_v2"},
          {"beta_start", 0.0001},
          {"beta_end", 0.02},
          {"prediction_type", "v_prediction"},
          {"timestep_spacing", "trailing"},
          {"steps_offset", 0},
          {"clip_sample", false},
          {"set_alpha_to_one", false}};
}

// ---- tokenizer ----------------------------------------------------------------------------------

TrainReport train_starter_tokenizer(const StarterTrainOptions& o, int max_merges) {
  const auto log = log_of(o);
  const auto t0 = std::chrono::steady_clock::now();
  TokenizerTrainOptions to;
  to.max_merges = max_merges;
  to.log = log;
  const BpeModel bpe = train_bpe(dataset_caption_corpus(o.data_dir), to);
  const fs::path dir = fs::path(o.out_dir) / "tokenizer";
  write_bpe(bpe, dir.string());
  write_json((dir / "tokenizer_config.json").string(),
             {{"tokenizer_class", "CLIPTokenizer"}, {"model_max_length", o.tiny ? 40 : 64},
              {"bos_token", "<|startoftext|>"}, {"eos_token", "<|endoftext|>"}, {"unk_token", "<|endoftext|>"},
              {"pad_token", "<|endoftext|>"}, {"do_lower_case", true}});
  write_json((dir / "special_tokens_map.json").string(),
             {{"bos_token", "<|startoftext|>"}, {"eos_token", "<|endoftext|>"}, {"unk_token", "<|endoftext|>"},
              {"pad_token", "<|endoftext|>"}});
  TrainReport r;
  r.final_step = static_cast<int64_t>(bpe.merges.size());
  r.seconds_per_step = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.output = dir.string();
  log("[tokenizer] wrote " + r.output);
  return r;
}

// ---- VAE ----------------------------------------------------------------------------------------

// Per-pixel L1 weights for the detail-weighted VAE loss. x: [B, 3, H, W] in [-1, 1] -> [B, 1, H, W]:
// 1 + weight where a pixel differs from its 7x7 neighbourhood mean (an edge, a stripe, a limb),
// grown by 2 pixels so that small shapes weigh in whole.
static at::Tensor vae_detail_weights(const at::Tensor& x, double weight) {
  torch::NoGradGuard no_grad;
  const at::Tensor local_mean = at::avg_pool2d(x, {7, 7}, {1, 1}, {3, 3}, false, false);
  const at::Tensor detail = (x - local_mean).abs().sum(1, true);  // [B, 1, H, W]
  const at::Tensor mask = at::max_pool2d((detail > 0.05).to(x.scalar_type()), {5, 5}, {1, 1}, {2, 2});
  return 1.0 + weight * mask;
}

// Mean L1 distance between the horizontal and vertical neighbour differences of a and b
// ([B, C, H, W]): zero only when every edge is where it is and as steep.
static at::Tensor gradient_l1(const at::Tensor& a, const at::Tensor& b) {
  auto dx = [](const at::Tensor& t) { return t.narrow(3, 1, t.size(3) - 1) - t.narrow(3, 0, t.size(3) - 1); };
  auto dy = [](const at::Tensor& t) { return t.narrow(2, 1, t.size(2) - 1) - t.narrow(2, 0, t.size(2) - 1); };
  return (dx(a) - dx(b)).abs().mean() + (dy(a) - dy(b)).abs().mean();
}

// Raw latents [n, C, h, w] of images 0..n-1 of `data` as the pack's own UNet hands them to the
// decoder (StarterTrainOptions::vae_denoised): encoded by the pack's VAE, noised to strength
// 0.1, 0.2, .. 0.5 (one per chunk, in turn) and denoised again with the image's caption
// (euler, 20 steps, cfg 4). Deterministic for a seed.
static at::Tensor unet_denoised_latents(const StarterTrainOptions& o, const ImageCaptionSet& data, int64_t n,
                                        const std::function<void(const std::string&)>& log) {
  torch::NoGradGuard no_grad;
  SdLoadOptions lo;
  lo.device = o.device;
  SdModel model = SdModel::load(o.out_dir, lo);
  const auto warn = [&](const std::string& w) { log("warning: " + w); };
  const at::Tensor uncond = encode_prompt(model, "", warn).unsqueeze(0);  // [1, 77, D]
  const double strengths[] = {0.1, 0.2, 0.3, 0.4, 0.5};
  const int64_t chunk = 32;
  std::vector<at::Tensor> out;
  for (int64_t s = 0, c = 0; s < n; s += chunk, ++c) {
    std::vector<int64_t> idx;
    std::vector<at::Tensor> cond;
    for (int64_t i = s; i < std::min(n, s + chunk); ++i) {
      idx.push_back(i);
      cond.push_back(encode_prompt(model, data.captions_with_style[i], warn));
    }
    const auto b = static_cast<int64_t>(idx.size());
    auto scheduler = make_scheduler("euler", model.scheduler_config);
    set_img2img_timesteps(*scheduler, 20, strengths[c % 5]);
    at::Generator gen = make_cpu_generator(o.seed * 1000003ull + static_cast<uint64_t>(c));
    const at::Tensor x0 = model.vae->to_diffusion_space(model.vae->encode(data.pixels(idx).to(model.device)).mean);
    at::Tensor x = img2img_latents(*scheduler, x0, seeded_randn(x0.sizes(), gen, model.device));
    x = sample(*scheduler, guided_denoiser(model.unet, at::stack(cond), uncond.expand({b, -1, -1}), 4.0), x, gen,
               Progress());
    out.push_back(model.vae->from_diffusion_space(x));  // [b, C, h, w]
    if ((c + 1) % 16 == 0 || s + chunk >= n)
      log("[vae-decoder] denoised latents " + std::to_string(std::min(n, s + chunk)) + "/" + std::to_string(n));
  }
  return at::cat(out);
}

TrainReport train_starter_vae(const StarterTrainOptions& o) {
  for (const auto& [value, option] : {std::pair<double, const char*>{o.vae_detail_weight, "--detail-weight"},
                                      {o.vae_gradient_weight, "--gradient-weight"},
                                      {o.vae_latent_noise, "--latent-noise"},
                                      {o.vae_denoised, "--denoised"}})
    if (!(value >= 0) || !std::isfinite(value))
      throw ConfigError("iris train vae: " + std::string(option) + " must be a finite number >= 0, got " +
                        std::to_string(value));
  if (o.vae_denoised > 0 && !o.vae_decoder_only)
    throw ConfigError("iris train vae: --denoised trains the decoder on the UNet's latents; it needs --decoder-only "
                      "(a trained encoder would move the latents the UNet was trained on)");
  if (o.vae_denoised > 1 || o.vae_denoised_images < 1)
    throw ConfigError("iris train vae: --denoised must be in [0, 1] and --denoised-images >= 1, got " +
                      std::to_string(o.vae_denoised) + " and " + std::to_string(o.vae_denoised_images));
  const auto log = log_of(o);
  const ImageCaptionSet data = load_image_caption_set(o.data_dir, o.max_images, log);
  Json config = starter_vae_config(o.tiny);
  at::manual_seed(o.seed);
  AutoencoderKL vae{nullptr};
  if (o.vae_from_pack || o.vae_decoder_only) {
    const ModelPart part = open_pack_part(o.out_dir, "vae", "iris train vae");
    config = part.config;  // decoder only: the scaling factor (the latent space) stays as it is
    vae = AutoencoderKL(VaeConfig::from_json(config, part.config_path));
    load_state_dict(*vae, *part.weights, RenameTable(), LoadOptions());
    if (o.vae_decoder_only)
      for (auto& p : vae->named_parameters())  // freeze the encoder side: encoder.*, quant_conv.*
        if (p.key().rfind("encoder.", 0) == 0 || p.key().rfind("quant_conv.", 0) == 0)
          p.value().set_requires_grad(false);
  } else {
    vae = AutoencoderKL(VaeConfig::from_json(config, "starter vae config"));
  }
  const c10::Device dev = select_device(o.device);
  vae->to(dev);
  const char* run_name = o.vae_decoder_only ? "vae-decoder" : o.vae_from_pack ? "vae-finetune" : "vae";
  Trainer t(named_trainable_parameters(*vae), trainer_options(o, kVae, run_name));
  // The loss settings: a resume with other ones is refused. A checkpoint with no record at all
  // predates the record and resumes as before.
  const Json settings = {{"detail_weight", o.vae_detail_weight},
                         {"gradient_weight", o.vae_gradient_weight},
                         {"latent_noise", o.vae_latent_noise},
                         {"denoised", {o.vae_denoised, o.vae_denoised > 0 ? o.vae_denoised_images : 0}}};
  t.resume([&](const Json& saved) {
    if (!saved.empty()) check_same_settings(saved, settings, Trainer::state_path(o.work_dir));
  });
  t.extra() = settings;
  const int64_t B = batch_of(o, kVae);
  const double kl_weight = 1e-5;
  // The last `B_denoised` rows of a batch decode the UNet's latents of their images.
  at::Tensor denoised;
  int64_t B_denoised = 0;
  if (o.vae_denoised > 0) {
    denoised = unet_denoised_latents(o, data, std::min(o.vae_denoised_images, data.size()), log).to(dev);
    B_denoised = std::clamp<int64_t>(std::llround(o.vae_denoised * static_cast<double>(B)), 1, B);
  }
  TrainReport r = run_trainer(t, o, [&](at::Generator& gen) {
    std::vector<int64_t> idx = sample_indices(data_seed(o, t), data.size(), B - B_denoised);
    const std::vector<int64_t> idx_denoised =
        sample_indices(data_seed(o, t) ^ 0xde7015edull, denoised.defined() ? denoised.size(0) : 1, B_denoised);
    idx.insert(idx.end(), idx_denoised.begin(), idx_denoised.end());
    const at::Tensor x = data.pixels(idx).to(dev);  // [B, 3, 64, 64]
    const LatentDistribution d = vae->encode(x);  // decoder only: no graph (nothing upstream needs grad)
    at::Tensor z = d.sample(gen);  // [B, 4, h, w]
    if (B_denoised > 0)
      z = at::cat({z.narrow(0, 0, B - B_denoised),
                   denoised.index_select(0, at::tensor(idx_denoised, at::kLong).to(dev))});
    if (o.vae_latent_noise > 0)  // the latents' spread is 1 / scaling_factor
      z = z + (o.vae_latent_noise / config.value("scaling_factor", 1.0)) * seeded_randn(z.sizes(), gen, dev);
    const at::Tensor rec = vae->decode(z);
    at::Tensor l1 = (rec - x).abs();  // [B, 3, H, W]
    if (o.vae_detail_weight > 0) {
      const at::Tensor w = vae_detail_weights(x, o.vae_detail_weight);
      l1 = l1 * w / w.mean();
    }
    at::Tensor loss = l1.mean();
    if (o.vae_gradient_weight > 0) loss = loss + o.vae_gradient_weight * gradient_l1(rec, x);
    if (o.vae_decoder_only) return loss;  // the encoder (and so the KL term) is frozen
    const at::Tensor kl = 0.5 * (d.mean.pow(2) + d.std.pow(2) - 1.0 - d.logvar).mean();
    return loss + kl_weight * kl;
  });
  if (!t.done()) return stopped_before_export(t, r);

  // Scaling factor: 1 / std of the latent means over (up to) 1024 images, so the diffusion
  // model sees unit-variance latents.
  torch::NoGradGuard no_grad;
  const int64_t n = std::min<int64_t>(data.size(), 1024);
  std::vector<at::Tensor> means;
  for (int64_t s = 0; s < n; s += 64) {
    std::vector<int64_t> idx;
    for (int64_t i = s; i < std::min(n, s + 64); ++i) idx.push_back(i);
    means.push_back(vae->encode(data.pixels(idx).to(dev)).mean.cpu());
  }
  const double std_all = at::cat(means).std().item<double>();
  if (!o.vae_decoder_only) config["scaling_factor"] = std_all > 0 ? 1.0 / std_all : 1.0;
  vae->to(c10::kCPU);
  const fs::path dir = fs::path(o.out_dir) / "vae";
  write_json((dir / "config.json").string(), config);
  write_weights((dir / "diffusion_pytorch_model.safetensors").string(), *vae, o.f16);
  r.output = dir.string();
  char buf[160];
  std::snprintf(buf, sizeof buf, "[vae] wrote %s (%lld parameters, latent std %.4f, scaling_factor %.4f, %.3f s/step)",
                r.output.c_str(), static_cast<long long>(r.parameters), std_all, config["scaling_factor"].get<double>(),
                r.seconds_per_step);
  log(buf);
  return r;
}

// ---- CLIP ---------------------------------------------------------------------------------------

TrainReport train_starter_clip(const StarterTrainOptions& o) {
  const auto log = log_of(o);
  const ClipTokenizer tok = open_pack_tokenizer(o.out_dir);
  const ImageCaptionSet data = load_image_caption_set(o.data_dir, o.max_images, log);
  const Json text_config =
      starter_text_config(o.tiny, static_cast<int64_t>(tok.vocab_size()), tok.bos_id(), tok.eos_id());
  Json vision_config = starter_vision_config(o.tiny);
  vision_config["image_size"] = data.images.size(2);
  at::manual_seed(o.seed);
  ClipTextModel text(ClipTextConfig::from_json(text_config, "starter text encoder config"), true);
  ClipVisionModel vision(ClipVisionConfig::from_json(vision_config, "starter image encoder config"), true);
  // CLIP's learned temperature, initialised to 1/0.07.
  const c10::Device dev = select_device(o.device);
  text->to(dev);
  vision->to(dev);
  at::Tensor logit_scale = at::full({}, std::log(1 / 0.07), at::TensorOptions().device(dev)).set_requires_grad(true);
  NamedTensors params = named_trainable_parameters(*text, "text.");
  for (auto& p : named_trainable_parameters(*vision, "vision.")) params.push_back(p);
  params.emplace_back("logit_scale", logit_scale);
  TrainerOptions to = trainer_options(o, kClip, "clip");
  Trainer t(params, to);
  t.resume();
  const int64_t B = batch_of(o, kClip);
  const int64_t L = text_config["max_position_embeddings"].get<int64_t>();
  TrainReport r = run_trainer(t, o, [&](at::Generator&) {
    const uint64_t seed = data_seed(o, t);
    const std::vector<int64_t> idx = sample_indices(seed, data.size(), B);
    const at::Tensor ids = tokenize_batch(tok, batch_captions(data, idx, seed, 0.0), L).to(dev);
    at::Tensor te = text->forward(ids).text_embeds;  // [B, P]
    at::Tensor ie = vision->forward(clip_normalize(data.images.index_select(0, at::tensor(idx))).to(dev)).image_embeds;
    te = te / te.norm(2, -1, true);
    ie = ie / ie.norm(2, -1, true);
    const at::Tensor logits = ie.matmul(te.t()) * logit_scale.clamp_max(std::log(100.0)).exp();  // [B, B]
    // Identical captions in a batch are both right answers: the target spreads over them.
    const at::Tensor same = (ids.unsqueeze(1) == ids.unsqueeze(0)).all(-1).to(at::kFloat);     // [B, B]
    const at::Tensor target = same / same.sum(1, true);
    const at::Tensor li = -(target * at::log_softmax(logits, 1)).sum(1).mean();
    const at::Tensor lt = -(target * at::log_softmax(logits.t(), 1)).sum(1).mean();
    return 0.5 * (li + lt);
  });
  if (!t.done()) return stopped_before_export(t, r);

  text->to(c10::kCPU);
  vision->to(c10::kCPU);
  const fs::path te_dir = fs::path(o.out_dir) / "text_encoder";
  const fs::path ie_dir = fs::path(o.out_dir) / "image_encoder";
  write_json((te_dir / "config.json").string(), text_config);
  write_weights((te_dir / "model.safetensors").string(), *text, o.f16);
  write_json((ie_dir / "config.json").string(), vision_config);
  write_weights((ie_dir / "model.safetensors").string(), *vision, o.f16);
  const ClipPreprocessConfig pc;
  const int64_t size = vision_config["image_size"].get<int64_t>();
  write_json((ie_dir / "preprocessor_config.json").string(),
             {{"image_processor_type", "CLIPImageProcessor"}, {"size", {{"shortest_edge", size}}},
              {"crop_size", {{"height", size}, {"width", size}}}, {"do_resize", true}, {"do_center_crop", true},
              {"do_rescale", true}, {"rescale_factor", pc.rescale_factor}, {"do_normalize", true},
              {"image_mean", {pc.mean[0], pc.mean[1], pc.mean[2]}}, {"image_std", {pc.std[0], pc.std[1], pc.std[2]}},
              {"resample", 3}});
  r.output = te_dir.string() + ", " + ie_dir.string();
  char buf[256];
  std::snprintf(buf, sizeof buf, "[clip] wrote %s (%lld parameters, temperature 1/%.2f, %.3f s/step)", r.output.c_str(),
                static_cast<long long>(r.parameters), std::exp(logit_scale.item<double>()), r.seconds_per_step);
  log(buf);
  return r;
}

// ---- UNet ---------------------------------------------------------------------------------------

TrainReport train_starter_unet(const StarterTrainOptions& o) {
  const auto log = log_of(o);
  const ClipTokenizer tok = open_pack_tokenizer(o.out_dir);
  const ModelPart te_part = open_pack_part(o.out_dir, "text_encoder", "iris train clip");
  const ModelPart vae_part = open_pack_part(o.out_dir, "vae", "iris train vae");
  // --finetune: the pack's UNet, opened before the dataset is encoded so a missing one fails fast.
  const std::optional<ModelPart> unet_part =
      o.unet_from_pack ? std::optional<ModelPart>(open_pack_part(o.out_dir, "unet", "iris train unet")) : std::nullopt;
  ClipTextModel text = load_clip_text_model(te_part);
  AutoencoderKL vae(VaeConfig::from_json(vae_part.config, vae_part.config_path));
  load_state_dict(*vae, *vae_part.weights, RenameTable(), LoadOptions());
  const c10::Device dev = select_device(o.device);
  text->to(dev);
  vae->to(dev);
  vae->eval();
  for (auto& p : vae->parameters()) p.set_requires_grad(false);
  // Trained jointly (CLIP has no dropout, so train() and eval() compute the same) or frozen.
  if (o.unet_train_text) {
    text->train();
  } else {
    text->eval();
    for (auto& p : text->parameters()) p.set_requires_grad(false);
  }
  const ImageCaptionSet data = load_image_caption_set(o.data_dir, o.max_images, log);
  const int64_t L = text->config().max_position_embeddings;

  // Latents of the whole dataset (posterior means, diffusion space), computed once.
  at::Tensor latents;
  {
    torch::NoGradGuard no_grad;
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<at::Tensor> parts;
    for (int64_t s = 0; s < data.size(); s += 64) {
      std::vector<int64_t> idx;
      for (int64_t i = s; i < std::min(data.size(), s + 64); ++i) idx.push_back(i);
      parts.push_back(vae->to_diffusion_space(vae->encode(data.pixels(idx).to(dev)).mean).contiguous());
    }
    latents = at::cat(parts);  // [N, 4, h, w]
    char buf[160];
    std::snprintf(buf, sizeof buf, "[unet] encoded %lld latents %s in %.1f s (std %.3f)",
                  static_cast<long long>(latents.size(0)), shape_string(latents.sizes().slice(1)).c_str(),
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                  latents.std().item<double>());
    log(buf);
  }

  const Json sched_config = starter_scheduler_config();
  const NoiseSchedule sched = make_noise_schedule(parse_schedule_config(sched_config, SchedulerKind::Euler));
  const at::Tensor acp = sched.alphas_cumprod.to(dev);  // [T]
  const int64_t T = acp.size(0);

  Json unet_config = starter_unet_config(o.tiny, text->config().hidden_size);
  unet_config["sample_size"] = latents.size(2);
  at::manual_seed(o.seed);
  UNet2DCondition unet{nullptr};
  if (unet_part) {
    const ModelPart& part = *unet_part;
    unet_config = part.config;
    const UNetConfig uc = UNetConfig::from_json(unet_config, part.config_path);
    if (uc.cross_attention_dim != text->config().hidden_size || uc.sample_size != latents.size(2))
      throw ConfigError(part.config_path + ": cross_attention_dim " + std::to_string(uc.cross_attention_dim) +
                        " / sample_size " + std::to_string(uc.sample_size) + " do not fit the text encoder (" +
                        std::to_string(text->config().hidden_size) + ") and the latents (" +
                        std::to_string(latents.size(2)) + ")");
    unet = UNet2DCondition(uc);
    load_state_dict(*unet, *part.weights, RenameTable(), LoadOptions());
  } else {
    unet = UNet2DCondition(UNetConfig::from_json(unet_config, "starter unet config"));
  }
  unet->to(dev);
  TrainerOptions to = trainer_options(o, kUnet, o.unet_from_pack ? "unet-finetune" : "unet");
  to.ema_decay = 0.999;
  // The text encoder's tensors go under their own prefix (a UNet-only checkpoint has none, so
  // resuming it with --train-text-encoder, or the reverse, is refused as other parameters).
  NamedTensors params = named_trainable_parameters(*unet);
  if (o.unet_train_text)
    for (auto& p : named_trainable_parameters(*text, "text_encoder.")) params.push_back(p);
  Trainer t(params, to);
  t.resume();
  const int64_t B = batch_of(o, kUnet);
  const double min_snr_gamma = 5.0;
  TrainReport r = run_trainer(t, o, [&](at::Generator& gen) {
    const uint64_t seed = data_seed(o, t);
    const std::vector<int64_t> idx = sample_indices(seed, data.size(), B);
    const at::Tensor ids = tokenize_batch(tok, batch_captions(data, idx, seed, 0.1), L).to(dev);
    at::Tensor context;  // [B, L, hidden]
    if (o.unet_train_text) {
      context = text->forward(ids).last_hidden_state;
    } else {
      torch::NoGradGuard no_grad;
      context = text->forward(ids).last_hidden_state;
    }
    const at::Tensor x0 = latents.index_select(0, at::tensor(idx).to(dev));          // [B, 4, h, w]
    const at::Tensor ts = at::randint(T, {B}, gen, at::kLong).to(dev);                // [B]
    const at::Tensor noise = at::randn(x0.sizes(), gen, at::kFloat).to(dev);
    const at::Tensor a = acp.index_select(0, ts).view({B, 1, 1, 1});
    const at::Tensor sa = a.sqrt(), s1a = (1 - a).sqrt();
    const at::Tensor xt = sa * x0 + s1a * noise;
    const at::Tensor v = sa * noise - s1a * x0;
    const at::Tensor pred = unet->forward(xt, ts, context);
    // min-SNR-gamma weighting for v targets: min(snr, gamma) / (snr + 1).
    const at::Tensor snr = a / (1 - a);
    const at::Tensor w = snr.clamp_max(min_snr_gamma) / (snr + 1);
    return (w * (pred - v).pow(2)).mean();
  });
  if (!t.done()) return stopped_before_export(t, r);

  // Export the EMA weights (the trainer is done with the live ones) and the pipeline folder.
  t.swap_ema();
  unet->to(c10::kCPU);
  const fs::path out(o.out_dir);
  write_json((out / "unet/config.json").string(), unet_config);
  write_weights((out / "unet/diffusion_pytorch_model.safetensors").string(), *unet, o.f16);
  // Same config; the weights as trained with this UNet (EMA too). Written as the CLIPTextModel
  // the config names, so without the contrastive text_projection of `iris train clip`: the
  // denoising loss does not train it and a stale copy would no longer match the encoder.
  if (o.unet_train_text) {
    text->to(c10::kCPU);
    write_weights((out / "text_encoder/model.safetensors").string(), *text, o.f16);
  }
  write_json((out / "scheduler/scheduler_config.json").string(), sched_config);
  Json index = {{"_class_name", "StableDiffusionPipeline"},
                {"_diffusers_version", "0.29.2"},
                {"unet", {"diffusers", "UNet2DConditionModel"}},
                {"vae", {"diffusers", "AutoencoderKL"}},
                {"text_encoder", {"transformers", "CLIPTextModel"}},
                {"tokenizer", {"transformers", "CLIPTokenizer"}},
                {"scheduler", {"diffusers", "EulerDiscreteScheduler"}},
                {"safety_checker", {nullptr, nullptr}},
                {"feature_extractor", {nullptr, nullptr}},
                {"requires_safety_checker", false}};
  if (fs::is_directory(out / "image_encoder")) index["image_encoder"] = {"transformers", "CLIPVisionModelWithProjection"};
  write_json((out / "model_index.json").string(), index);
  r.output = o.out_dir;
  char buf[256];
  std::snprintf(buf, sizeof buf, "[unet] wrote %s (%lld parameters%s, %.3f s/step)", r.output.c_str(),
                static_cast<long long>(r.parameters), o.unet_train_text ? " with the text encoder's" : "",
                r.seconds_per_step);
  log(buf);
  return r;
}

}  // namespace iris
