#pragma once
// Training the token-stream adapters with the diffusion backbone frozen (the papers' recipe):
// IP-Adapter (image projection + to_k_ip / to_v_ip, initialised as copies of each attn2 layer's
// to_k / to_v), PokeFusion style (style bank + projection + decoder style K/V) and SK-Adapter
// (skeleton encoder + K/V). Loss: MSE against the backbone's prediction target (eps, v or x0, from
// its scheduler config) on (image latents, caption, condition).
//
// Data: a Tinyworld dataset folder (world/dataset.h): images, captions, style labels, skeletons.
//   IP-Adapter: condition = the image itself through the CLIP image encoder (the model folder
//     needs image_encoder/); caption_with_style.
//   style: condition = the sample's style label (bank: the styles present in the data); the
//     caption WITHOUT the style phrase, so the style has to come from the style stream.
//   skeleton: only samples with a skeleton; caption_with_style.
// Latents (VAE mean), caption embeddings and image embeddings (unless the image encoder trains:
// then its preprocessed input) are computed once up front.
//
// Condition dropout for classifier-free guidance, per sample: text only (empty prompt),
// condition only, or both, with the given probabilities. A dropped condition is what inference
// uses for the unconditional branch: zero image embeds for IP-Adapter; the stream switched off
// for style and skeleton.
//
// Determinism and resume: step s draws its batch, timesteps, noise and dropout from generators
// seeded by (seed, s) only, and the shared Trainer (pipelines/trainer.h: AdamW, constant LR here,
// gradient clipping) saves its state with the step, so N steps in one run and N in several resumed runs give the same weights bit for
// bit (same build, same thread count).
//
// Output folder:
//   ip-adapter.safetensors (original release layout) | style-adapter.safetensors +
//   styles/<name>.safetensors | sk-adapter.safetensors  — written at every checkpoint and at the end
//   image_encoder/ — with train_image_encoder: the encoder trained with the IP-Adapter
//   checkpoint/trainer_state.safetensors (pipelines/trainer.h: parameters, AdamW moments, step;
//   the data settings a resume must share in its "extra" record)
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/progress.h"
#include "pipelines/sd_model.h"

namespace iris {

enum class AdapterKind { IpAdapter, Style, Skeleton };
// "ip-adapter" | "style" | "sk-adapter" (or "skeleton"); ConfigError otherwise.
AdapterKind parse_adapter_kind(const std::string& s);
const char* adapter_kind_name(AdapterKind k);
// The adapter file the trainer writes in the output folder.
std::string adapter_file_name(AdapterKind k);

struct AdapterTrainOptions {
  AdapterKind kind = AdapterKind::Style;
  std::string model;  // Stable Diffusion folder (frozen backbone)
  std::string data;   // Tinyworld dataset folder
  std::string out;    // output folder
  // IP-Adapter only: the image encoder to use instead of the model's image_encoder/: a CLIP
  // vision folder, or a LLaVA folder (its vision tower, e.g. the VLM's, whose patch features
  // were taught what covers them).
  std::string image_encoder;
  int steps = 300;    // total steps (a resumed run continues up to this)
  int batch = 4;
  double lr = 1e-4, weight_decay = 0.01, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double grad_clip = 1.0;  // global gradient-norm clip (<= 0: off)
  uint64_t seed = 0;
  int resolution = 0;   // images resized to this square size (0: as stored)
  int max_images = 0;   // use at most this many dataset images (0: all)
  double drop_text = 0.05, drop_cond = 0.05, drop_both = 0.05;
  // SK-Adapter only: latent positions under the stick figure's limbs (the pose map, pooled to
  // the latent grid) weigh 1 + limb_weight in the loss. A figure's 1-2 pixel limbs are a few
  // percent of the latent, so with a plain MSE the pose barely moves the loss.
  double limb_weight = 0;
  // IP-Adapter and style only: latent cells covering an object or the stick figure (the scene's
  // owner map, pooled to the latent grid) weigh 1 + object_weight. Objects are a small part of a
  // 64 px scene: with a plain MSE the background and style dominate the loss, and an image
  // prompt's objects (shape, position) are what the adapter learns last.
  double object_weight = 0;
  // IP-Adapter only: the Plus variant, a resampler over the image encoder's penultimate patch
  // features (16 tokens) instead of one projected image embedding (4 tokens).
  bool ip_plus = false;
  // IP-Adapter only: the CLIP image encoder trains with the adapter on the denoising loss
  // (contrastive features only had to tell captions apart; the denoiser needs where each object
  // is and how many there are). Written as out/image_encoder/ (config, weights, processor
  // config), the folder beside the adapter file that the loader then uses with it, as the
  // IP-Adapter releases ship their encoder (models/image_encoder/). The model's own encoder is
  // not changed: the trainer works on a copy.
  bool train_image_encoder = false;
  // IP-Adapter only: distillation from the text-conditioned backbone. For a sample whose caption
  // is dropped and image kept (the image-only prompt), the target becomes
  //   (1 - a) * denoising target + a * UNet(x_t, t, complete caption)
  // with a = text_teacher: the frozen UNet's own prediction given a caption that states every
  // object's colour, shape, size and position, the style and the figure. The noise target at
  // high noise is one sample of many scenes; the teacher's is the expectation given the scene,
  // which tells the adapter where each object goes and how many there are. 0: off.
  double text_teacher = 0;
  // IP-Adapter Plus only: the image tokens also regress onto the text encoder's hidden states of
  // the scene's complete caption (world::complete_caption: every object's colour, size, shape and
  // position in reading order, the figure, the style), with this weight on the MSE beside the
  // denoising loss. The resampler then has one query per text position (the text encoder's
  // length instead of 16), and since to_k_ip / to_v_ip start as copies of to_k / to_v, an image
  // prompt starts out read like the caption that describes it. The denoising loss alone has to
  // discover position and count through a weak, noisy signal; this states them. 0: off.
  double caption_regression = 0;
  // Where caption regression measures the distance: "text" (the text encoder's state space, plain
  // MSE) or "kv" (the space the UNet reads the tokens in: the error e is weighted by
  // M = mean over attn2 layers of W_k^T W_k + W_v^T W_v, normalised to mean eigenvalue 1, so
  // directions every layer's keys and values ignore cost nothing and the ones they amplify
  // cost more).
  std::string regression_space = "text";
  // IP-Adapter only: weight of the denoising loss. 0 (with caption regression) trains the image
  // projection alone: to_k_ip / to_v_ip stay the copies of each layer's to_k / to_v, so an image
  // prompt is read exactly as the caption its tokens imitate, and no step runs the UNet. (With
  // the denoising loss those K/V drift to what the noise target rewards, and that drift draws
  // extra copies of the objects even from perfect caption tokens.)
  double denoising_weight = 1;
  // IP-Adapter with --plus --train-image-encoder only: the encoder's patch features (the
  // penultimate layer the resampler reads) must also tell, patch by patch, the colour, shape and
  // size of the item covering it and the scene's style and background (linear heads, cross-entropy
  // with this weight; pipelines/patch_labels.h). Contrastive features only had to tell captions
  // apart; the VLM's tower read shapes 96 % of the time once taught this way. 0: off.
  double patch_labels = 0;
  // IP-Adapter only: the adapter file and a trained image encoder are written in F16 (the
  // checkpoint keeps F32).
  bool f16 = false;
  int checkpoint_every = 100;  // steps between checkpoints (0: only at the end)
  int log_every = 10;         // progress line every N steps (0: none)
  bool resume = false;         // continue from out/checkpoint
  std::string device = "cpu";

  void validate() const;  // ConfigError naming the option
};

struct AdapterTrainCallbacks {
  // Progress lines ("[style] step 10/300  loss ..."), data summary, checkpoints, warnings
  // (default: stdout).
  std::function<void(const std::string&)> log;
  // Reports each step ("train"); should_cancel is polled between steps: the run saves a
  // checkpoint and returns with `cancelled` set.
  Progress progress;
};

struct AdapterTrainResult {
  int start_step = 0, steps_done = 0;
  bool cancelled = false;
  std::vector<double> losses;          // per step of this run (with dropout, random timesteps)
  double eval_loss_before = 0, eval_loss_after = 0;  // fixed samples, timesteps and noise
  std::string adapter_path;
};

AdapterTrainResult train_adapter(const AdapterTrainOptions& options, const AdapterTrainCallbacks& callbacks = {});
// The same on an already loaded model (options.model and options.device are not used). Its
// parameters are set not to require gradients; they are never changed (a trained image encoder
// is a copy). IP-Adapter training needs model.image_encoder (SdLoadOptions::with_image_encoder).
AdapterTrainResult train_adapter(SdModel& model, const AdapterTrainOptions& options,
                                 const AdapterTrainCallbacks& callbacks = {});

}  // namespace iris
