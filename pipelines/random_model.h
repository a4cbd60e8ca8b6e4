#pragma once
// Writes a Stable Diffusion pipeline folder with randomly initialised weights, in exactly
// the diffusers layout a real checkpoint has (model_index.json, unet/, vae/, text_encoder/,
// tokenizer/, scheduler/). Tests, benchmarks and the trainers' starting points use it.
#include <cstdint>
#include <string>

#include "core/json_util.h"

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

}  // namespace iris
