#pragma once
// Writes a Stable Diffusion pipeline folder with randomly initialised weights, in exactly
// the diffusers layout a real checkpoint has (model_index.json, unet/, vae/, text_encoder/,
// tokenizer/, scheduler/). Tests, benchmarks and the trainers' starting points use it.
#include <cstdint>
#include <string>

#include "core/json_util.h"

namespace torch { namespace nn { class Module; } }

namespace iris {

struct RandomSdSpec {
  Json unet_config;          // diffusers UNet2DConditionModel config
  Json vae_config;           // diffusers AutoencoderKL config
  Json text_encoder_config;  // transformers CLIPTextConfig
  std::string tokenizer_dir; // folder with vocab.json + merges.txt to copy into tokenizer/
  uint64_t seed = 0;
  bool f16 = false;          // store weights as F16 (loading converts to F32)
  // With an image encoder (image_encoder/) and a base IP-Adapter (ip-adapter.safetensors,
  // original release layout) when set.
  Json image_encoder_config;
};

// A small configuration that runs in well under a second per step on 2 cores.
RandomSdSpec tiny_sd_spec(const std::string& tokenizer_dir, bool with_ip_adapter = false);

void write_random_sd_pipeline(const std::string& dir, const RandomSdSpec& spec);

// ---- LLaVA ----

// Bytes of a small SentencePiece BPE model shaped like Llama's (<unk> = 0, <s> = 1, </s> = 2,
// 256 byte-fallback pieces, printable ASCII and a few English words, dummy prefix, whitespace
// kept), about 400 pieces: any text encodes.
std::string tiny_sentencepiece_model();

struct RandomLlavaSpec {
  Json config;  // transformers LlavaConfig (+ an optional "ftz" block)
  uint64_t seed = 0;
};

// A LLaVA-1.5-shaped config with tiny widths (CLIP 32x32 images, 16 patches; LLaMA 2 layers,
// GQA) whose vocabulary is the tiny tokenizer's plus the <image> token (as llava-hf adds 32000
// to Llama's 32000 pieces). with_ftz adds an FtZ block with a small conv augmenting encoder.
RandomLlavaSpec tiny_llava_spec(bool with_ftz = false);

// Writes config.json, model.safetensors, tokenizer.model (tiny_sentencepiece_model) and
// preprocessor_config.json: a folder `iris ask` loads.
void write_random_llava(const std::string& dir, const RandomLlavaSpec& spec);

// Shared with the trainers: a pretty-printed JSON file, and a module's parameters and buffers
// as safetensors (parameters F16 when asked), each creating the parent folder.
void write_json(const std::string& path, const Json& j);
void write_weights(const std::string& path, torch::nn::Module& m, bool f16);

}  // namespace iris
