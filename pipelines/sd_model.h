#pragma once
// A loaded Stable Diffusion model: tokenizer, text encoder, UNet, VAE and scheduler config,
// from a diffusers folder (model_index.json + parts) or an original single-file LDM
// checkpoint, through one code path (the LDM file only adds rename tables).
#include <memory>
#include <optional>
#include <string>

#include "core/clip_tokenizer.h"
#include "core/json_util.h"
#include "diffusion/clip.h"
#include "diffusion/unet.h"
#include "diffusion/vae.h"
#include "adapters/ip_adapter.h"
#include "adapters/skeleton_adapter.h"
#include "adapters/style_adapter.h"
#include "core/image.h"

namespace iris {

struct SdLoadOptions {
  std::string device = "cpu";  // cpu | cuda | cuda:N | auto
  // Tokenizer folder (vocab.json + merges.txt, or bpe_simple_vocab_16e6.txt.gz) for single
  // files, which carry none. Ignored for folders that have tokenizer/.
  std::string tokenizer_dir;
  // IP-Adapter weights (.safetensors, original or diffusers layout) and the CLIP image
  // encoder folder it needs (default: an image_encoder/ folder beside the adapter file, else the
  // pipeline's image_encoder/ part).
  std::string ip_adapter;
  std::string image_encoder_dir;
  // Load the image encoder even without an IP-Adapter (IP-Adapter training).
  bool with_image_encoder = false;
  // PokeFusion style adapter and SK-Adapter files (adapters/style_adapter.h, skeleton_adapter.h).
  std::string style_adapter;
  std::string sk_adapter;
  // Optional log sink for notes (e.g. what was inferred from a single file).
  std::function<void(const std::string&)> log;
};

struct SdModel {
  std::string source;  // the folder or file it came from
  std::shared_ptr<ClipTokenizer> tokenizer;
  ClipTextModel text_encoder{nullptr};
  UNet2DCondition unet{nullptr};
  AutoencoderKL vae{nullptr};
  Json scheduler_config;  // scheduler/scheduler_config.json (SD1.5's when absent)
  int64_t pad_token_id = 49407;
  // Image prompt support (null unless an IP-Adapter was loaded).
  IpAdapter ip_adapter{nullptr};
  ClipVisionModel image_encoder{nullptr};
  std::string image_encoder_dir;  // the folder it was loaded from
  ClipPreprocessConfig image_preprocess;
  // Style and skeleton streams (null unless loaded). styles/NAME.safetensors next to the style
  // adapter file are found by name.
  StyleAdapter style_adapter{nullptr};
  std::string style_adapter_path;
  SkeletonAdapter sk_adapter{nullptr};
  c10::Device device{c10::kCPU};
  // One-shot use (a CLI render): generate() frees each part as soon as its work is done (text
  // and image encoders once the prompts are encoded, the UNet and adapters before decoding),
  // so the peak holds the UNet's weights or the VAE's activations, never both. The model
  // cannot generate again afterwards.
  bool release_after_use = false;

  // Throws IoError / FormatError / ConfigError / CheckpointError naming the file and key.
  static SdModel load(const std::string& path, const SdLoadOptions& options = {});
};

// Stable Diffusion 1.5's scheduler config (scaled_linear betas 0.00085..0.012, 1000 steps,
// steps_offset 1, leading spacing), used when a model has no scheduler folder.
Json sd15_scheduler_config();

// Converts a Python literal (a dict repr with None/True/False, single quotes, tuples) to
// JSON. Some reference fixtures store configs that way. Throws FormatError naming `what`.
Json python_literal_to_json(const std::string& text, const std::string& what);

}  // namespace iris
