#pragma once
// The starter pack, image half: a Stable-Diffusion-layout pipeline trained from scratch on a
// Tinyworld dataset folder (world/dataset.h), one component at a time, each resumable:
//
//   train_starter_tokenizer  -> out/tokenizer/      CLIP BPE on the captions
//   train_starter_vae        -> out/vae/            AutoencoderKL, 64x64 RGB -> 4x16x16 latents
//   train_starter_clip       -> out/text_encoder/, out/image_encoder/   contrastive (CLIP loss)
//   train_starter_unet       -> out/unet/, out/scheduler/, out/model_index.json   (needs the above)
//
// Checkpoints go to work_dir (trainer.h); rerunning with the same options resumes. The UNet
// predicts v with min-SNR weighting on a cosine schedule whose last step is practically pure
// noise (no colour cast from leaked low frequencies), with 10% empty captions for CFG and EMA
// weights exported. See starter_*_config for the model sizes.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "core/clip_tokenizer.h"
#include "core/json_util.h"
#include "core/progress.h"

namespace iris {

// A Tinyworld dataset folder in memory.
struct ImageCaptionSet {
  at::Tensor images;  // [N, 3, H, W] uint8 RGB
  std::vector<std::string> captions, captions_with_style;
  int64_t size() const { return images.defined() ? images.size(0) : 0; }
  // [B, 3, H, W] float in [-1, 1]
  at::Tensor pixels(const std::vector<int64_t>& idx) const;
};
// Loads captions.jsonl and the images (the first max_images; 0 = all). Throws IoError for a
// missing folder or image, ConfigError for an empty dataset or images of different sizes.
ImageCaptionSet load_image_caption_set(const std::string& data_dir, int64_t max_images = 0,
                                       const std::function<void(const std::string&)>& log = {});

// `batch` indices in [0, n), uniform with replacement, from `seed`.
std::vector<int64_t> sample_indices(uint64_t seed, int64_t n, int64_t batch);
// Token ids [B, max_len] int64: bos, the text's tokens (cut to fit), eos, eos padding.
at::Tensor tokenize_batch(const ClipTokenizer& tok, const std::vector<std::string>& texts, int64_t max_len);

// Model configs (the config.json objects written). `tiny`: test-sized models.
Json starter_vae_config(bool tiny);
Json starter_text_config(bool tiny, int64_t vocab_size, int64_t bos_id, int64_t eos_id);
Json starter_vision_config(bool tiny);
Json starter_unet_config(bool tiny, int64_t cross_attention_dim);
Json starter_scheduler_config();  // EulerDiscreteScheduler, cosine betas, v-prediction, trailing

struct StarterTrainOptions {
  std::string data_dir;   // Tinyworld dataset folder
  std::string out_dir;    // the pipeline folder being assembled
  std::string work_dir;   // checkpoints of this component ("" = none, not resumable)
  bool tiny = false;      // test-sized models
  // 0 = the component's default (see the table in starter_pack.cpp).
  int64_t steps = 0, batch = 0, warmup_steps = -1;
  double lr = 0;
  uint64_t seed = 0;
  int64_t max_images = 0;  // 0 = the whole dataset
  int64_t log_every = 25, checkpoint_every = 250;
  // > 0: end this run at that step (checkpoint saved, nothing exported) while the LR schedule
  // still spans `steps` — how a schedule changed mid-training is replayed exactly.
  int64_t stop_at = 0;
  bool fixed_batch = false;  // every step sees the same batch (tests)
  // VAE only. from_pack: start from the pack's vae/ (fresh optimizer) instead of a random
  // initialisation. decoder_only (implies from_pack): train its decoder (post_quant_conv +
  // decoder) alone, so the latent space, and every model trained on it, stays valid.
  // detail_weight W > 0: pixels on or near an edge weigh 1 + W in the L1 loss (objects are a
  // few percent of a Tinyworld image; with plain L1 the background dominates and small shapes
  // come back with the wrong colour).
  // gradient_weight G > 0: adds G x the L1 distance between the reconstruction's and the
  // image's neighbouring-pixel differences. Plain L1 forgives an edge smeared over a few pixels
  // (the pixelated style's 2-px blocks come back as ramps); the gradient term does not.
  bool vae_from_pack = false;
  bool vae_decoder_only = false;
  double vae_detail_weight = 0;
  double vae_gradient_weight = 0;
  // latent_noise S > 0: the decoder reads latents with Gaussian noise of S latent standard
  // deviations added, so that it also turns the slightly-off latents a diffusion model
  // generates into clean images, not only the encoder's own.
  double vae_latent_noise = 0;
  // denoised D in (0, 1] (decoder only): that share of each batch decodes latents the pack's
  // own UNet has denoised — the image encoded, noised to a strength in [0.1, 0.5] and
  // denoised again with its caption (euler, 20 steps, cfg 4) — against the original image.
  // A generator's latents lose fine detail the encoder's keep (the pixelated style's blocks);
  // this teaches the decoder to draw it back. denoised_images: how many such latents are made
  // up front (the first images of the dataset).
  double vae_denoised = 0;
  int64_t vae_denoised_images = 2048;
  // UNet only. unet_from_pack: start from the pack's unet/ (fresh optimizer and schedule) instead
  // of a random initialisation. unet_train_text: train the text encoder together with the UNet
  // on the denoising loss and export it to text_encoder/ too. A contrastive text encoder only has
  // to tell captions apart; it is not taught which colour, size and position belong to which
  // object in "a red circle on the left and a blue square", which is what multi-object prompts
  // need (the calibration run trained its text encoder jointly for this reason).
  bool unet_from_pack = false;
  bool unet_train_text = false;
  bool f16 = true;           // exported weights stored as F16
  std::string device = "cpu";  // cpu | cuda | cuda:N | auto (noise is drawn on the CPU either way)
  std::function<void(const std::string&)> log;  // stdout when empty
  Progress progress;
};

struct TrainReport {
  std::vector<double> losses;   // one per step run by this call
  int64_t final_step = 0;
  double seconds_per_step = 0;  // mean over this call's steps (0 when none ran)
  int64_t parameters = 0;       // trained parameter count
  std::string output;           // what was written
};

// Tokenizer: out/tokenizer/{vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json}.
TrainReport train_starter_tokenizer(const StarterTrainOptions& o, int max_merges = 2000);
TrainReport train_starter_vae(const StarterTrainOptions& o);
TrainReport train_starter_clip(const StarterTrainOptions& o);
TrainReport train_starter_unet(const StarterTrainOptions& o);

}  // namespace iris
