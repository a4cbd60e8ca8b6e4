#pragma once
// Text-to-image and image-to-image with classifier-free guidance. Front ends fill
// GenerationParams and call generate(); the parity runner and tests use the lower-level
// steps (encode_ids, denoise, decode_latents) directly.
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/image.h"
#include "core/progress.h"
#include "diffusion/schedulers/sampler.h"
#include "pipelines/sd_model.h"
#include "world/skeleton.h"

namespace iris {

// One reference image for the IP-Adapter.
struct ImagePrompt {
  Image image;
  std::string name;             // for the metadata
  double scale = 1.0;
  std::string preset = "all";   // all | style | composition (per-layer scales)
};

// An image prompt from a file (the file name goes into the metadata). Throws IoError/FormatError.
ImagePrompt load_image_prompt(const std::string& path, double scale = 1.0, const std::string& preset = "all");

struct GenerationParams {
  std::string prompt, negative_prompt;
  std::string sampler = "euler_a";  // ddim | euler | euler_a | dpmpp_2m | lcm
  bool karras = false;
  double eta = 0.0;                 // DDIM only
  int steps = 25;
  double cfg_scale = 7.5;           // <= 1 disables classifier-free guidance
  uint64_t seed = 0;                // image i of a batch uses seed + i
  // 0: the model's native size (the UNet's sample_size times the VAE's factor, as diffusers
  // does): 512 for SD 1.5, 64 for the starter pack.
  int width = 0, height = 0;
  int batch = 1;
  std::optional<Image> init_image;  // image-to-image when set
  std::string init_image_name;      // for the metadata
  double strength = 0.75;
  std::string model_name;           // for the metadata
  std::vector<ImagePrompt> image_prompts;  // needs a model loaded with an IP-Adapter
  // PokeFusion style (needs a model loaded with a style adapter): a bank style's name, NAME for
  // styles/NAME.safetensors next to the adapter file, or a style file path. "" = no style.
  std::string style;
  double style_strength = 1.0;
  // SK-Adapter skeleton (needs a model loaded with a skeleton adapter). 3D skeletons are
  // projected with skeleton_camera_distance (> 0), else the file's camera, else z is dropped
  // (with a warning).
  std::optional<world::Skeleton> skeleton;
  std::string skeleton_name;  // for the metadata
  double skeleton_scale = 1.0;
  double skeleton_camera_distance = 0.0;

  // Throws ConfigError naming the bad value (size not a multiple of `scale`, steps 0, ...).
  void validate(int64_t scale) const;
};

// The image side a model was trained at: UNet sample_size x VAE downsampling factor.
int native_image_size(const SdModel& model);
// `p` with a width or height of 0 set to the model's native size (what generate() renders, and
// what the metadata of its images should say).
GenerationParams with_native_size(const SdModel& model, GenerationParams p);

struct GeneratedImage {
  Image image;
  uint64_t seed = 0;
};

struct GenerationCallbacks {
  Progress progress;            // denoise steps (and cancel)
  PreviewFn preview;            // x0 estimate after each step (latents)
  std::function<void(const std::string&)> warn;  // e.g. prompt truncated
};

std::vector<GeneratedImage> generate(SdModel& model, const GenerationParams& params,
                                     const GenerationCallbacks& callbacks = {});

// ---- steps ----

// Attaches the style and skeleton streams `params` asks for (rows: cfg_rows(batch, guided)).
// Detach with detach_style / detach_skeleton.
void attach_style_and_skeleton(SdModel& model, const GenerationParams& params, int batch, bool guided,
                               const std::function<void(const std::string&)>& warn);

// IP-Adapter tokens for one image prompt: [B_unet, T, C] rows [uncond x B; cond x B] when
// `guided`, else [cond x B]. Base: projection of image_embeds (uncond: of zeros); Plus:
// resampler over the penultimate hidden states (uncond: of a zero image), as the reference.
at::Tensor image_prompt_tokens(SdModel& model, const Image& image, int batch, bool guided);

// Token ids for a prompt: [bos] + ids + [eos], truncated to 77 with a warning, padded.
std::vector<int> prompt_ids(const SdModel& model, const std::string& prompt,
                            const std::function<void(const std::string&)>& warn);
// ids: [B, 77] int64 -> last_hidden_state [B, 77, D]
at::Tensor encode_ids(ClipTextModel& text_encoder, const at::Tensor& ids);
// One prompt -> its text embeddings [77, D] on the model's device (prompt_ids + encode_ids).
at::Tensor encode_prompt(SdModel& model, const std::string& prompt, const std::function<void(const std::string&)>& warn);

// The UNet wrapped as a sampler denoiser with classifier-free guidance.
// cond / uncond: [B, 77, D] (uncond undefined when cfg_scale <= 1).
Denoiser guided_denoiser(UNet2DCondition& unet, const at::Tensor& cond, const at::Tensor& uncond, double cfg_scale);

// Diffusion-space latents -> image tensor in [-1, 1] (the VAE's raw output).
at::Tensor decode_latents(AutoencoderKL& vae, const at::Tensor& latents);
// [B, 3, H, W] in [-1, 1] -> 8-bit RGB images (x/2 + 0.5, clamped, rounded).
std::vector<Image> to_images(const at::Tensor& decoded);
// 8-bit RGB image -> [1, 3, H, W] in [-1, 1].
at::Tensor image_to_tensor(const Image& image);

// Noise for a batch where image i has its own generator (seed + i): image i gets the same
// noise whether it is rendered alone or in a batch, so seed + i reproduces it alone (up to
// float rounding: batched and single matmuls may round differently).
class BatchNoise {
 public:
  BatchNoise(uint64_t seed, int batch);
  // randn like `like` ([B, ...]), row i from generator i, on `like`'s device.
  at::Tensor operator()(const at::Tensor& like);
  NoiseSource source();

 private:
  std::vector<at::Generator> gens_;
};

// ---- metadata ----

// PNG text for a result: "parameters" in the form other SD tools show
// ("<prompt>\nNegative prompt: ...\nSteps: 25, Sampler: Euler a, CFG scale: 7.5, Seed: 1,
// Size: 512x512, ...") and "iris" with every parameter as JSON.
PngText generation_metadata(const GenerationParams& params, uint64_t seed);
// Parameters back from PNG text written by generation_metadata (the "iris" entry).
GenerationParams params_from_metadata(const PngText& text, const std::string& what);
std::string sampler_display_name(const std::string& sampler, bool karras);

}  // namespace iris
