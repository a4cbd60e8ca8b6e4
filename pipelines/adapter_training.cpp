#include "pipelines/adapter_training.h"

#include <algorithm>
#include <cstdio>
#include <cmath>
#include <filesystem>
#include <optional>
#include <random>

#include <torch/utils.h>

#include "adapters/adapter_streams.h"
#include "core/error.h"
#include "core/json_util.h"
#include "core/mmap_file.h"
#include "core/state_dict.h"
#include "core/tensor_io.h"
#include "diffusion/noise.h"
#include "diffusion/schedulers/schedule.h"
#include "pipelines/stable_diffusion.h"
#include "pipelines/trainer.h"
#include "pipelines/patch_labels.h"
#include "world/captions.h"
#include "world/dataset.h"
#include "world/render.h"

namespace fs = std::filesystem;

namespace iris {

AdapterKind parse_adapter_kind(const std::string& s) {
  if (s == "ip-adapter") return AdapterKind::IpAdapter;
  if (s == "style") return AdapterKind::Style;
  if (s == "sk-adapter" || s == "skeleton") return AdapterKind::Skeleton;
  throw ConfigError("adapter kind \"" + s + "\": expected ip-adapter, style or sk-adapter");
}

const char* adapter_kind_name(AdapterKind k) {
  return k == AdapterKind::IpAdapter ? "ip-adapter" : k == AdapterKind::Style ? "style" : "sk-adapter";
}

std::string adapter_file_name(AdapterKind k) {
  return k == AdapterKind::IpAdapter ? "ip-adapter.safetensors"
         : k == AdapterKind::Style   ? "style-adapter.safetensors"
                                     : "sk-adapter.safetensors";
}

void AdapterTrainOptions::validate() const {
  auto bad = [](const std::string& m) { throw ConfigError(m); };
  if (model.empty() || data.empty() || out.empty()) bad("training needs --model, --data and --out");
  if (steps < 1) bad("--steps " + std::to_string(steps) + " must be >= 1");
  if (batch < 1 || batch > 256) bad("--batch " + std::to_string(batch) + " must be in 1..256");
  if (!(lr > 0) || !std::isfinite(lr)) bad("--lr must be a positive number");
  if (!(weight_decay >= 0) || !(beta1 >= 0 && beta1 < 1) || !(beta2 >= 0 && beta2 < 1) || !(eps > 0))
    bad("AdamW settings out of range (weight decay >= 0, betas in [0, 1), eps > 0)");
  if (resolution < 0 || resolution > 2048) bad("--resolution must be in 0..2048");
  for (double p : {drop_text, drop_cond, drop_both})
    if (!(p >= 0 && p <= 1)) bad("condition dropout probabilities must be in [0, 1]");
  if (drop_text + drop_cond + drop_both > 1) bad("condition dropout probabilities sum to more than 1");
  if (checkpoint_every < 0 || log_every < 0) bad("--checkpoint-every and --log-every must be >= 0");
  if (!(limb_weight >= 0) || !std::isfinite(limb_weight)) bad("--limb-weight must be >= 0");
  if (limb_weight > 0 && kind != AdapterKind::Skeleton) bad("--limb-weight applies to sk-adapter training only");
  if (!(object_weight >= 0) || !std::isfinite(object_weight)) bad("--object-weight must be >= 0");
  if (object_weight > 0 && kind == AdapterKind::Skeleton)
    bad("--object-weight applies to ip-adapter and style training (sk-adapter: --limb-weight)");
  if (ip_plus && kind != AdapterKind::IpAdapter) bad("--plus applies to ip-adapter training only");
  if (!image_encoder.empty() && kind != AdapterKind::IpAdapter) bad("--image-encoder applies to ip-adapter training only");
  if (f16 && kind != AdapterKind::IpAdapter) bad("--f16 applies to ip-adapter training only");
  if (train_image_encoder && kind != AdapterKind::IpAdapter)
    bad("--train-image-encoder applies to ip-adapter training only");
  if (!(text_teacher >= 0 && text_teacher <= 1)) bad("--text-teacher must be in [0, 1]");
  if (text_teacher > 0 && kind != AdapterKind::IpAdapter) bad("--text-teacher applies to ip-adapter training only");
  if (!(caption_regression >= 0) || !std::isfinite(caption_regression)) bad("--caption-regression must be >= 0");
  if (caption_regression > 0 && (kind != AdapterKind::IpAdapter || !ip_plus))
    bad("--caption-regression applies to ip-adapter training with --plus only (one token per text position)");
  if (!(patch_labels >= 0) || !std::isfinite(patch_labels)) bad("--patch-labels must be >= 0");
  if (patch_labels > 0 && (kind != AdapterKind::IpAdapter || !ip_plus || !train_image_encoder))
    bad("--patch-labels applies to ip-adapter training with --plus and --train-image-encoder only");
  if (!(denoising_weight >= 0) || !std::isfinite(denoising_weight)) bad("--denoising-weight must be >= 0");
  if (denoising_weight != 1 && kind != AdapterKind::IpAdapter) bad("--denoising-weight applies to ip-adapter training only");
  if (regression_space != "text" && regression_space != "kv")
    bad("--regression-space must be text or kv, not \"" + regression_space + "\"");
  if (regression_space != "text" && caption_regression <= 0) bad("--regression-space needs --caption-regression");
  if (denoising_weight == 0 && caption_regression <= 0)
    bad("--denoising-weight 0 leaves no loss: it needs --caption-regression");
  if (denoising_weight == 0 && text_teacher > 0) bad("--text-teacher shapes the denoising loss: not with --denoising-weight 0");
}

namespace {

// Everything a step needs about one training image, computed once.
struct TrainSample {
  at::Tensor latents;       // [C, h, w] diffusion space
  at::Tensor text;          // [77, D] caption embedding
  at::Tensor image_embeds;  // [D_img] (IP-Adapter), [1 + N, D] penultimate patch features (Plus)
  at::Tensor clip_pixels;   // [3, S, S] the encoder's preprocessed input (when it trains)
  at::Tensor teacher_text;  // [77, D] the complete caption's embedding (text teacher)
  at::Tensor caption_states;  // [77, D] world::complete_caption's embedding (caption regression)
  world::Scene scene;          // what the image shows (patch labels)
  int64_t style = -1;       // bank index (style)
  world::Skeleton skeleton; // 2D (skeleton)
  at::Tensor loss_weight;   // [1, h, w] with a limb or object weight, else undefined
};

// [1, h, w]: 1 + weight where the pose map of `s` at the image's size draws a limb or joint in
// the latent cell (max-pooled from pixels to the h x w latent grid).
at::Tensor limb_loss_weight(const world::Skeleton& s, int image_size, int64_t h, int64_t w, double weight,
                            c10::Device device) {
  const Image map = world::render_skeleton_map(s, image_size);  // black background
  at::Tensor drawn = at::from_blob(const_cast<uint8_t*>(map.pixels.data()), {map.height, map.width, map.channels},
                                   at::kByte)
                         .to(at::kFloat)
                         .amax(2)
                         .gt(0)
                         .to(at::kFloat)
                         .view({1, 1, map.height, map.width});
  drawn = std::get<0>(at::adaptive_max_pool2d(drawn, {h, w}));  // any limb pixel in the cell
  return (1.0 + weight * drawn).view({1, h, w}).to(device);
}

// [1, h, w]: 1 + weight where an object or the figure of `s` covers part of the latent cell.
at::Tensor object_loss_weight(const world::Scene& s, int64_t h, int64_t w, double weight, c10::Device device) {
  std::vector<int> owner = world::render_owner_map(s);  // [R * R], -1 = background
  const int64_t R = s.resolution;
  at::Tensor covered = at::from_blob(owner.data(), {1, 1, R, R}, at::kInt).ge(0).to(at::kFloat);
  covered = std::get<0>(at::adaptive_max_pool2d(covered, {h, w}));
  return (1.0 + weight * covered).view({1, h, w}).to(device);
}

class AdapterTrainer {
 public:
  AdapterTrainer(const AdapterTrainOptions& o, const AdapterTrainCallbacks& cb) : o_(o), cb_(cb) {}

  AdapterTrainResult run(SdModel* preloaded) {
    o_.validate();
    const std::string checkpoint_dir = (fs::path(o_.out) / "checkpoint").string();
    if (o_.resume) {
      // Refuse a mismatched resume now, not after minutes of loading and encoding the data;
      // the styles the data holds are checked once it is loaded.
      const bool found = Trainer::check_resumable(checkpoint_dir, o_.seed, [&](const Json& saved) {
        check_same_settings(saved, run_record(/*with_data=*/false), checkpoint_dir, {"styles"});
      });
      if (!found) throw IoError(Trainer::state_path(checkpoint_dir) + ": no checkpoint to resume from");
    }
    if (preloaded) model_ = *preloaded;
    else load_model();
    freeze_backbone();
    load_data();
    build_adapter();
    TrainerOptions to;
    to.name = adapter_kind_name(o_.kind);
    to.steps = o_.steps;
    to.lr = o_.lr;
    to.cosine = false;  // constant learning rate after warm-up, as the IP-Adapter recipe
    to.beta1 = o_.beta1;
    to.beta2 = o_.beta2;
    to.eps = o_.eps;
    to.weight_decay = o_.weight_decay;
    to.grad_clip = o_.grad_clip;
    to.seed = o_.seed;
    to.log_every = o_.log_every;
    to.checkpoint_every = 0;  // checkpoints are written below, with the adapter files
    to.checkpoint_dir = checkpoint_dir;
    to.log = [this](const std::string& line) { note(line); };
    Trainer trainer(trainable_parameters(), to);
    trainer.extra() = run_record();
    AdapterTrainResult r;
    if (o_.resume) {
      if (!trainer.resume([this](const Json& saved) { check_resumable(saved); }))
        throw IoError(Trainer::state_path(to.checkpoint_dir) + ": no checkpoint to resume from");
      r.start_step = static_cast<int>(trainer.current_step());
    }
    r.eval_loss_before = eval_loss();
    while (!trainer.done()) {
      if (cb_.progress.should_cancel && cb_.progress.should_cancel()) {
        r.cancelled = true;
        break;
      }
      const int64_t step = trainer.current_step();
      r.losses.push_back(trainer.step(step_loss(step)));
      cb_.progress.report(static_cast<int>(step + 1), o_.steps, "train");
      if (o_.checkpoint_every > 0 && (step + 1) % o_.checkpoint_every == 0 && !trainer.done()) save(trainer);
    }
    r.steps_done = static_cast<int>(trainer.current_step());
    save(trainer);
    r.eval_loss_after = eval_loss();
    r.adapter_path = (fs::path(o_.out) / adapter_file_name(o_.kind)).string();
    return r;
  }

 private:
  void note(const std::string& s) const {
    if (cb_.log) cb_.log(s);
    else std::printf("%s\n", s.c_str());
  }

  void load_model() {
    SdLoadOptions lo;
    lo.device = o_.device;
    lo.with_image_encoder = o_.kind == AdapterKind::IpAdapter;
    lo.image_encoder_dir = o_.image_encoder;
    model_ = SdModel::load(o_.model, lo);
  }

  // The backbone is frozen: no parameter of it takes a gradient (activations still do).
  void freeze_backbone() {
    if (o_.kind == AdapterKind::IpAdapter && !model_.image_encoder)
      throw ConfigError(model_.source + ": IP-Adapter training needs the model's image encoder (image_encoder/)");
    if (o_.kind == AdapterKind::IpAdapter && !o_.ip_plus && !model_.image_encoder->with_projection())
      throw ConfigError(model_.image_encoder_dir + ": this image encoder has no projection (image_embeds), which the "
                        "base IP-Adapter reads; train --plus (patch features) or use a CLIPVisionModelWithProjection");
    std::vector<torch::nn::Module*> parts = {model_.unet.get(), model_.vae.get(), model_.text_encoder.get()};
    if (model_.image_encoder) parts.push_back(model_.image_encoder.get());
    for (torch::nn::Module* m : parts)
      for (auto& p : m->parameters()) p.set_requires_grad(false);
    if (o_.train_image_encoder) make_trainable_encoder_copy();
    const ScheduleConfig sc = parse_schedule_config(model_.scheduler_config, SchedulerKind::DDIM);
    schedule_ = make_noise_schedule(sc).alphas_cumprod;
    prediction_ = sc.prediction_type;
  }

  // The model's encoder is shared with the caller: train a copy, with gradients on.
  void make_trainable_encoder_copy() {
    const std::string& dir = model_.image_encoder_dir;
    if (!fs::is_regular_file(fs::path(dir) / "config.json"))
      throw ConfigError(model_.source + ": --train-image-encoder needs the folder the image encoder was loaded from "
                        "(its config.json is written with the trained weights); got \"" + dir + "\"");
    const ClipVisionModel& from = model_.image_encoder;
    ClipVisionModel copy(from->config(), from->with_projection());
    {
      torch::NoGradGuard no_grad;
      const auto src = from->named_parameters(true);
      for (auto& kv : copy->named_parameters(true)) kv.value().copy_(src[kv.key()]);
    }
    copy->to(model_.device);
    copy->train();
    model_.image_encoder = copy;
  }

  // Image features the adapter reads: [B, D_img] embeds, or (Plus) [B, 1 + N, D] penultimate
  // hidden states. pixels: [B, 3, S, S] preprocessed.
  at::Tensor image_features(const at::Tensor& pixels) {
    return o_.ip_plus ? model_.image_encoder->hidden_state(pixels, -2) : model_.image_encoder->forward(pixels).image_embeds;
  }

  at::Tensor encode_text(const std::string& text) {
    return encode_prompt(model_, text, [this](const std::string& w) { note("warning: " + w); });
  }

  void load_data() {
    torch::NoGradGuard no_grad;
    std::vector<world::DatasetEntry> entries = world::load_dataset(o_.data);
    if (o_.kind == AdapterKind::Style) {  // the bank: the data's styles, in vocabulary order
      for (world::Style s : world::all_styles())
        for (const auto& e : entries)
          if (e.style == s) {
            styles_.push_back(world::name(s));
            break;
          }
    }
    int skipped = 0;
    for (const auto& e : entries) {
      if (o_.max_images > 0 && static_cast<int>(samples_.size()) >= o_.max_images) break;
      if (o_.kind == AdapterKind::Skeleton && !e.skeleton) {
        ++skipped;
        continue;
      }
      TrainSample s;
      Image img = to_rgb(load_image(e.image));
      if (o_.resolution > 0 && (img.width != o_.resolution || img.height != o_.resolution))
        img = resize_bicubic(img, o_.resolution, o_.resolution);
      const at::Tensor pixels = image_to_tensor(img).to(model_.device);
      s.latents = model_.vae->to_diffusion_space(model_.vae->encode(pixels).mean)[0];
      s.text = encode_text(o_.kind == AdapterKind::Style ? e.caption : e.caption_with_style);
      if (o_.kind == AdapterKind::IpAdapter && o_.text_teacher > 0) {
        world::CaptionOptions co;  // every object's size and position, the style, the figure's pose
        co.size_probability = co.position_probability = co.style_probability = 1;
        world::Rng rng(world::hash_combine(o_.seed ^ 0x7eac4e5ull, static_cast<uint64_t>(e.index)));
        s.teacher_text = encode_text(world::make_caption(e.scene, rng, co).text);
      }
      if (o_.caption_regression > 0) s.caption_states = encode_text(world::complete_caption(e.scene).text);
      if (o_.patch_labels > 0) s.scene = e.scene;
      if (o_.kind == AdapterKind::IpAdapter) {
        int h = 0, w = 0;
        std::vector<float> chw = clip_preprocess(img, model_.image_preprocess, &h, &w);
        const at::Tensor clip_in = at::from_blob(chw.data(), {1, 3, h, w}, at::kFloat).clone().to(model_.device);
        if (o_.train_image_encoder) {
          s.clip_pixels = clip_in[0];
        } else {
          s.image_embeds = image_features(clip_in)[0];
          // Plus's unconditional input, as at inference: the features of an all-zero image.
          if (o_.ip_plus && !no_image_.defined()) no_image_ = image_features(at::zeros_like(clip_in))[0];
        }
      } else if (o_.kind == AdapterKind::Style) {
        s.style = std::find(styles_.begin(), styles_.end(), world::name(e.style)) - styles_.begin();
      } else {
        s.skeleton = skeleton_in_2d(*e.skeleton, nullptr, [this](const std::string& w) { note("warning: " + w); });
        if (o_.limb_weight > 0)
          s.loss_weight = limb_loss_weight(s.skeleton, img.width, s.latents.size(1), s.latents.size(2), o_.limb_weight,
                                           model_.device);
      }
      if (o_.object_weight > 0)
        s.loss_weight = object_loss_weight(e.scene, s.latents.size(1), s.latents.size(2), o_.object_weight, model_.device);
      samples_.push_back(std::move(s));
    }
    if (samples_.empty())
      throw ConfigError(o_.data + ": no usable training images" +
                        (o_.kind == AdapterKind::Skeleton ? " (SK-Adapter training needs images with a skeleton)" : ""));
    for (const auto& s : samples_)
      if (s.latents.sizes() != samples_[0].latents.sizes())
        throw ConfigError(o_.data + ": images of different sizes; pass --resolution to resize them");
    empty_text_ = encode_text("");
    note(std::to_string(samples_.size()) + " training images" +
         (skipped ? " (" + std::to_string(skipped) + " without a skeleton skipped)" : "") + ", latents " +
         shape_string(samples_[0].latents.sizes()));
  }

  void build_adapter() {
    UNet2DCondition& unet = model_.unet;
    at::manual_seed(o_.seed);  // the initial weights depend on the seed only (resume, tests)
    if (o_.kind == AdapterKind::IpAdapter) {
      IpAdapterConfig c;
      const ClipVisionConfig& ec = model_.image_encoder->config();
      c.image_dim = o_.ip_plus ? ec.hidden_size : ec.projection_dim;
      if (o_.ip_plus) {  // a small resampler for a small UNet: width = the text width, 64-wide heads
        c.variant = IpVariant::Plus;
        // With caption regression: one query per text position ([77, D] in SD, the pack's 64).
        c.tokens = o_.caption_regression > 0 ? empty_text_.size(0) : 16;
        c.hidden = unet->config().cross_attention_dim;
        c.dim_head = 64;
        c.heads = std::max<int64_t>(1, c.hidden / c.dim_head);
        c.depth = 2;
      }
      c.cross_dim = unet->config().cross_attention_dim;
      c.layer_dims = cross_attention_widths(unet, all_cross_attention_layers(unet));
      ip_ = IpAdapter(c);
      copy_layer_kv(unet, all_cross_attention_layers(unet), ip_->to_k_ip, ip_->to_v_ip);
      if (o_.regression_space == "kv") regression_metric_ = kv_metric();
      ip_->to(model_.device);
      if (o_.patch_labels > 0) {
        label_grid_ = ec.image_size / ec.patch_size;
        check_label_grid(samples_[0].scene.resolution, label_grid_);
        label_heads_.emplace(ec.hidden_size, o_.seed ^ 0x1abe1ull, /*scene_labels=*/true);
        for (auto& kv : label_heads_->parameters("")) kv.second.set_data(kv.second.to(model_.device));
      }
      module_ = ip_.ptr();
    } else if (o_.kind == AdapterKind::Style) {
      style_ = make_style_adapter(unet, styles_);
      module_ = style_.ptr();
    } else {
      sk_ = make_skeleton_adapter(unet, default_joint_types());
      module_ = sk_.ptr();
    }
    module_->train();
  }

  // The adapter's parameters, and the image encoder's (under "image_encoder.") when it trains.
  NamedTensors trainable_parameters() {
    NamedTensors p = named_trainable_parameters(*module_);
    if (o_.kind == AdapterKind::IpAdapter && o_.denoising_weight == 0) {  // K/V stay copies of to_k / to_v
      p.erase(std::remove_if(p.begin(), p.end(),
                             [](const auto& kv) {
                               return kv.first.find("to_k_ip") != std::string::npos ||
                                      kv.first.find("to_v_ip") != std::string::npos;
                             }),
              p.end());
      for (auto* kv : {&ip_->to_k_ip, &ip_->to_v_ip})
        for (auto& l : *kv) l->weight.set_requires_grad(false);
    }
    if (o_.train_image_encoder)
      for (auto& kv : named_trainable_parameters(*model_.image_encoder, "image_encoder.")) p.push_back(kv);
    if (label_heads_)
      for (auto& kv : label_heads_->parameters("labels.")) p.push_back(kv);
    return p;
  }

  // The loss of step `step` (its batch, timesteps, noise and dropout depend on (seed, step) only).
  at::Tensor step_loss(int64_t step) {
    std::mt19937_64 rng(trainer_step_seed(o_.seed, step) ^ 0x5eedull);
    const int B = o_.batch;
    const auto N = static_cast<uint64_t>(samples_.size());
    const int64_t T = schedule_.size(0);
    std::vector<int64_t> idx(B), ts(B);
    std::vector<bool> drop_text(B), drop_cond(B);
    for (int b = 0; b < B; ++b) {
      idx[b] = static_cast<int64_t>(rng() % N);
      ts[b] = static_cast<int64_t>(rng() % static_cast<uint64_t>(T));
      // [0, text) text only | [text, text + cond) condition only | [.., + both) both | rest: nothing
      const double u = std::uniform_real_distribution<double>(0, 1)(rng);
      const double a = o_.drop_text, c = a + o_.drop_cond, both = c + o_.drop_both;
      drop_text[b] = u < a || (u >= c && u < both);
      drop_cond[b] = u >= a && u < both;
    }
    at::Generator gen = make_cpu_generator(trainer_step_seed(o_.seed, step));
    return batch_loss(idx, ts, drop_text, drop_cond, gen);
  }

  // MSE of the UNet with the adapter stream on rows idx at timesteps ts, against the target the
  // backbone was trained to predict (eps, v = sqrt(acp) eps - sqrt(1 - acp) x0, or x0).
  at::Tensor batch_loss(const std::vector<int64_t>& idx, const std::vector<int64_t>& ts,
                        const std::vector<bool>& drop_text, const std::vector<bool>& drop_cond, at::Generator& gen) {
    const auto B = static_cast<int64_t>(idx.size());
    std::vector<bool> rows(B);
    for (int64_t b = 0; b < B; ++b) rows[b] = !drop_cond[b];
    if (o_.kind == AdapterKind::IpAdapter && o_.denoising_weight == 0) {  // the projection alone
      ip_tokens_ = ip_->image_tokens(image_inputs(idx, rows));
      return o_.caption_regression * caption_regression_loss(idx, rows) + patch_label_loss(idx, rows);
    }
    std::vector<at::Tensor> x0, ctx;
    for (int64_t b = 0; b < B; ++b) {
      x0.push_back(samples_[idx[b]].latents);
      ctx.push_back(drop_text[b] ? empty_text_ : samples_[idx[b]].text);
    }
    const at::Tensor latents = at::stack(x0);
    const at::Tensor t = at::tensor(ts, at::kLong);
    const at::Tensor noise = seeded_randn(latents.sizes(), gen, model_.device);
    const at::Tensor acp = schedule_.index_select(0, t).to(model_.device).view({B, 1, 1, 1});
    const at::Tensor noisy = acp.sqrt() * latents + (1 - acp).sqrt() * noise;
    // The text teacher: the backbone alone, given the complete caption (before any stream is
    // attached), for the rows that prompt with the image only.
    at::Tensor teacher, teacher_share;  // [B, C, h, w], [B, 1, 1, 1]
    if (o_.text_teacher > 0) {
      std::vector<float> share(B, 0.f);
      std::vector<at::Tensor> full;
      for (int64_t b = 0; b < B; ++b) {
        if (drop_text[b] && !drop_cond[b]) share[b] = static_cast<float>(o_.text_teacher);
        full.push_back(samples_[idx[b]].teacher_text);
      }
      if (std::any_of(share.begin(), share.end(), [](float v) { return v > 0; })) {
        torch::NoGradGuard no_grad;
        teacher = model_.unet->forward(noisy, t.to(model_.device), at::stack(full));
        teacher_share = at::tensor(share).to(model_.device).view({B, 1, 1, 1});
      }
    }
    attach(idx, rows);
    struct Detach {
      UNet2DCondition& unet;
      ~Detach() {
        detach_streams(unet, "ip_adapter.train");
        detach_style(unet);
        detach_skeleton(unet);
      }
    } detach{model_.unet};
    const at::Tensor pred = model_.unet->forward(noisy, t.to(model_.device), at::stack(ctx));
    at::Tensor target = prediction_target(prediction_, latents, noise, acp);
    if (teacher.defined()) target = target + teacher_share * (teacher - target);
    at::Tensor loss;  // the denoising loss
    if (o_.limb_weight <= 0 && o_.object_weight <= 0) {
      loss = at::mse_loss(pred, target);
    } else {
      std::vector<at::Tensor> w;
      for (int64_t b = 0; b < B; ++b) w.push_back(samples_[idx[b]].loss_weight);
      const at::Tensor weight = at::stack(w);  // [B, 1, h, w], broadcast over channels
      loss = ((pred - target).pow(2) * weight).mean() / weight.mean();
    }
    if (o_.denoising_weight != 1) loss = o_.denoising_weight * loss;
    if (o_.caption_regression > 0) loss = loss + o_.caption_regression * caption_regression_loss(idx, rows);
    return loss + patch_label_loss(idx, rows);
  }

  // patch_labels x the label heads' cross-entropy on the patch features of the rows that keep
  // their image (image_inputs keeps them in encoder_features_); 0 when off or every image is dropped.
  at::Tensor patch_label_loss(const std::vector<int64_t>& idx, const std::vector<bool>& rows) {
    if (!label_heads_) return at::zeros({}, at::TensorOptions().device(model_.device));
    std::vector<int64_t> kept;
    std::vector<world::Scene> scenes;
    for (size_t b = 0; b < idx.size(); ++b)
      if (rows[b]) {
        kept.push_back(static_cast<int64_t>(b));
        scenes.push_back(samples_[idx[b]].scene);
      }
    if (kept.empty()) return at::zeros({}, encoder_features_.options());
    // [n, 1 + N, D] -> the patch tokens [n, N, D] (the class token has no patch)
    const at::Tensor patches =
        encoder_features_.index_select(0, at::tensor(kept, at::kLong).to(encoder_features_.device())).narrow(1, 1, label_grid_ * label_grid_);
    std::vector<at::Tensor> labels = patch_label_targets(scenes, label_grid_, /*scene_labels=*/true);
    for (auto& l : labels) l = l.to(patches.device());
    const at::Tensor loss = o_.patch_labels * label_heads_->loss(patches, labels);
    if (o_.log_every > 0)
      if (const std::string r = label_heads_->report_if_due(o_.log_every); !r.empty()) note("[ip-adapter] " + r);
    return loss;
  }

  // MSE between the step's image tokens (ip_tokens_, [B, T, C]) and the text encoder's states of
  // each scene's complete caption; a row whose image is dropped (the unconditional input) is
  // pulled onto the empty prompt's states, which is what classifier-free guidance then pairs.
  at::Tensor caption_regression_loss(const std::vector<int64_t>& idx, const std::vector<bool>& rows) {
    std::vector<at::Tensor> states;
    for (size_t b = 0; b < idx.size(); ++b) states.push_back(rows[b] ? samples_[idx[b]].caption_states : empty_text_);
    const at::Tensor target = at::stack(states).view_as(ip_tokens_);
    if (!regression_metric_.defined()) return at::mse_loss(ip_tokens_, target);
    const at::Tensor e = ip_tokens_ - target;  // [B, T, C]
    return (at::matmul(e, regression_metric_) * e).mean();  // e^T M e / C per token
  }

  // [C, C]: mean over the attn2 layers of W_k^T W_k + W_v^T W_v (the layers' own to_k / to_v, of
  // which to_k_ip / to_v_ip are copies), scaled to trace C, so that e^T M e / C is the MSE for
  // an error spread evenly over the eigen-directions.
  at::Tensor kv_metric() const {
    torch::NoGradGuard no_grad;
    at::Tensor m;
    for (size_t i = 0; i < ip_->to_k_ip.size(); ++i)
      for (const torch::nn::Linear& l : {ip_->to_k_ip[i], ip_->to_v_ip[i]}) {
        const at::Tensor w = l->weight.detach().to(at::kFloat);  // [inner, C]
        const at::Tensor g = at::matmul(w.t(), w);
        m = m.defined() ? m + g : g;
      }
    const double c = static_cast<double>(m.size(0));
    return (m * (c / m.trace().item<double>())).contiguous();
  }

  // The adapter's input for rows idx: image embeds [B, D_img] or (Plus) patch features
  // [B, 1 + N, D]. A dropped image (rows[b] false) is what inference's unconditional branch
  // uses: zero image embeds, or (Plus) the features of an all-zero image.
  at::Tensor image_inputs(const std::vector<int64_t>& idx, const std::vector<bool>& rows) {
    const auto B = static_cast<int64_t>(idx.size());
    if (o_.train_image_encoder) {
      std::vector<at::Tensor> px;
      std::vector<float> keep;
      for (int64_t b = 0; b < B; ++b) {
        const at::Tensor& p = samples_[idx[b]].clip_pixels;
        px.push_back(rows[b] || !o_.ip_plus ? p : at::zeros_like(p));
        keep.push_back(rows[b] ? 1.f : 0.f);
      }
      at::Tensor embeds = image_features(at::stack(px));
      encoder_features_ = embeds;
      if (!o_.ip_plus) embeds = embeds * at::tensor(keep).to(embeds.device()).view({B, 1});
      return embeds;
    }
    std::vector<at::Tensor> e;
    for (int64_t b = 0; b < B; ++b)
      e.push_back(rows[b] ? samples_[idx[b]].image_embeds
                          : o_.ip_plus ? no_image_ : at::zeros_like(samples_[idx[b]].image_embeds));
    return at::stack(e);
  }

  void attach(const std::vector<int64_t>& idx, const std::vector<bool>& rows) {
    const auto B = static_cast<int64_t>(idx.size());
    UNet2DCondition& unet = model_.unet;
    if (o_.kind == AdapterKind::IpAdapter) {
      const at::Tensor embeds = image_inputs(idx, rows);
      ip_tokens_ = ip_->image_tokens(embeds);  // [B, T, C]
      attach_ip_adapter(ip_, unet, ip_tokens_, 1.0, {}, {}, "ip_adapter.train");
    } else if (o_.kind == AdapterKind::Style) {
      std::vector<int64_t> which;
      for (int64_t b = 0; b < B; ++b) which.push_back(samples_[idx[b]].style);
      const at::Tensor emb = style_->bank.index_select(0, at::tensor(which, at::kLong).to(style_->bank.device()));
      attach_style(style_, unet, style_->style_tokens(emb), 1.0, rows);
    } else {
      std::vector<world::Skeleton> sk;
      for (int64_t b = 0; b < B; ++b) sk.push_back(samples_[idx[b]].skeleton);
      const SkeletonInputs in = skeleton_inputs(sk, sk_->config()).to(model_.device);
      attach_skeleton(sk_, unet, sk_->encoder->forward(in), in.valid, 1.0, rows);
    }
  }

  // Loss on fixed samples, timesteps and noise, nothing dropped: comparable across runs.
  double eval_loss() {
    torch::NoGradGuard no_grad;
    const int64_t n = std::min<int64_t>(static_cast<int64_t>(samples_.size()), 8);
    const int64_t T = schedule_.size(0);
    std::vector<int64_t> idx, ts;
    for (int64_t i = 0; i < n; ++i) {
      idx.push_back(i);
      ts.push_back((i + 1) * T / (n + 1));
    }
    at::Generator gen = make_cpu_generator(trainer_step_seed(o_.seed ^ 0xe7a1ull, -1));
    module_->eval();
    if (o_.train_image_encoder) model_.image_encoder->eval();
    const double loss = batch_loss(idx, ts, std::vector<bool>(n, false), std::vector<bool>(n, false), gen).item<double>();
    module_->train();
    if (o_.train_image_encoder) model_.image_encoder->train();
    return loss;
  }

  // The settings that change what a step computes: a resumed run must use the same ones.
  // with_data = false: before the data is loaded, without the styles it holds.
  Json run_record(bool with_data = true) const {
    Json j = {{"kind", adapter_kind_name(o_.kind)}, {"batch", o_.batch},
            {"resolution", o_.resolution},       {"max_images", o_.max_images},
            {"drop", {o_.drop_text, o_.drop_cond, o_.drop_both}}};
    if (with_data) j["styles"] = styles_;
    if (o_.limb_weight > 0) j["limb_weight"] = o_.limb_weight;  // absent when off: older checkpoints resume
    if (o_.ip_plus) j["plus"] = true;
    if (o_.train_image_encoder) j["train_image_encoder"] = true;
    if (o_.text_teacher > 0) j["text_teacher"] = o_.text_teacher;
    if (o_.object_weight > 0) j["object_weight"] = o_.object_weight;
    if (o_.caption_regression > 0) j["caption_regression"] = o_.caption_regression;
    if (o_.regression_space != "text") j["regression_space"] = o_.regression_space;
    if (o_.denoising_weight != 1) j["denoising_weight"] = o_.denoising_weight;
    if (o_.patch_labels > 0) j["patch_labels"] = o_.patch_labels;
    return j;
  }

  void check_resumable(const Json& saved) const {
    check_same_settings(saved, run_record(), o_.out + "/checkpoint");
  }

  void save(const Trainer& trainer) {
    trainer.save();
    const std::string path = (fs::path(o_.out) / adapter_file_name(o_.kind)).string();
    if (o_.kind == AdapterKind::IpAdapter) {
      save_ip_adapter(ip_, path, o_.f16);
      if (o_.train_image_encoder) save_image_encoder();
    } else if (o_.kind == AdapterKind::Style) {
      save_style_adapter(style_, path);
      export_bank_styles(style_, (fs::path(o_.out) / "styles").string());
    } else {
      save_skeleton_adapter(sk_, path);
    }
    note("step " + std::to_string(trainer.current_step()) + ": wrote " + path);
  }

  // out/image_encoder/: the source encoder's config and processor config, the trained weights.
  void save_image_encoder() {
    const fs::path dir = fs::path(o_.out) / "image_encoder";
    fs::create_directories(dir);
    const fs::path src(model_.image_encoder_dir);
    if (fs::is_regular_file(src / "preprocessor_config.json"))
      fs::copy_file(src / "preprocessor_config.json", dir / "preprocessor_config.json", fs::copy_options::overwrite_existing);
    const Json source_config = read_json_file((src / "config.json").string());
    if (source_config.contains("vision_config")) {  // a LLaVA's tower: a CLIP vision config of its own
      Json config = source_config["vision_config"];
      config["architectures"] = Json::array({"CLIPVisionModel"});
      config["model_type"] = "clip_vision_model";
      const std::string text = config.dump(2) + "\n";
      write_file_atomic((dir / "config.json").string(), text.data(), text.size());
    } else {
      fs::copy_file(src / "config.json", dir / "config.json", fs::copy_options::overwrite_existing);
    }
    NamedTensors ts;
    for (const auto& kv : model_.image_encoder->named_parameters(true))
      ts.emplace_back(kv.key(), kv.value().detach().to(c10::kCPU).to(o_.f16 ? at::kHalf : at::kFloat));
    write_safetensors((dir / "model.safetensors").string(), ts, {{"format", "pt"}});
  }

  AdapterTrainOptions o_;
  AdapterTrainCallbacks cb_;
  SdModel model_;
  at::Tensor schedule_;  // alphas_cumprod [T]
  PredictionType prediction_ = PredictionType::Epsilon;  // the backbone's (scheduler config)
  std::vector<TrainSample> samples_;
  at::Tensor empty_text_;
  std::vector<std::string> styles_;
  at::Tensor regression_metric_;  // [C, C] with --regression-space kv (kv_metric)
  IpAdapter ip_{nullptr};
  StyleAdapter style_{nullptr};
  SkeletonAdapter sk_{nullptr};
  at::Tensor no_image_;  // IP-Adapter Plus: the zero image's features (a dropped image prompt)
  at::Tensor ip_tokens_;  // IP-Adapter: the image tokens of the step's batch [B, T, C]
  at::Tensor encoder_features_;  // the trained encoder's output for the step's batch (image_inputs)
  std::optional<PatchLabelHeads> label_heads_;  // --patch-labels
  int64_t label_grid_ = 0;                      // patches per side of the encoder's input
  std::shared_ptr<torch::nn::Module> module_;
};

}  // namespace

AdapterTrainResult train_adapter(const AdapterTrainOptions& options, const AdapterTrainCallbacks& callbacks) {
  return AdapterTrainer(options, callbacks).run(nullptr);
}

AdapterTrainResult train_adapter(SdModel& model, const AdapterTrainOptions& options,
                                 const AdapterTrainCallbacks& callbacks) {
  return AdapterTrainer(options, callbacks).run(&model);
}

}  // namespace iris
