#pragma once
// diffusers AutoencoderKL, built from its config.json.
#include <string>
#include <vector>

#include "core/json_util.h"
#include "diffusion/unet_blocks.h"

namespace iris {

struct VaeConfig {
  int64_t in_channels = 3, out_channels = 3, latent_channels = 4;
  std::vector<int64_t> block_out_channels = {128, 256, 512, 512};
  int64_t layers_per_block = 2;
  int64_t norm_num_groups = 32;
  double scaling_factor = 0.18215;
  double shift_factor = 0.0;
  bool use_quant_conv = true, use_post_quant_conv = true;
  bool mid_block_add_attention = true;
  int64_t sample_size = 512;

  static VaeConfig from_json(const Json& j, const std::string& what);
  static VaeConfig sd();  // the Stable Diffusion 1.x/2.x VAE
  // Spatial down-sampling factor (8 for SD).
  int64_t scale() const { return int64_t(1) << (block_out_channels.size() - 1); }
};

// Encoder / Decoder mid block: resnet, attention, resnet (eps 1e-6, no time embedding).
struct VaeMidBlockImpl : torch::nn::Module {
  VaeMidBlockImpl(int64_t channels, int64_t groups, bool add_attention);
  at::Tensor forward(at::Tensor x);
  std::vector<ResnetBlock2D> resnets;
  SpatialSelfAttention attention{nullptr};
};
TORCH_MODULE(VaeMidBlock);

// DownEncoderBlock2D / UpDecoderBlock2D: resnets + optional down/up sampler.
struct VaeBlockImpl : torch::nn::Module {
  VaeBlockImpl(int64_t in, int64_t out, int64_t layers, int64_t groups, bool down, bool add_sampler);
  at::Tensor forward(at::Tensor x);
  std::vector<ResnetBlock2D> resnets;
  Downsample2D downsampler{nullptr};
  Upsample2D upsampler{nullptr};
};
TORCH_MODULE(VaeBlock);

struct VaeEncoderImpl : torch::nn::Module {
  explicit VaeEncoderImpl(const VaeConfig& c);
  at::Tensor forward(const at::Tensor& x);  // [B, 3, H, W] -> [B, 2*latent, H/8, W/8]
  torch::nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  std::vector<VaeBlock> blocks;
  VaeMidBlock mid_block{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
};
TORCH_MODULE(VaeEncoder);

struct VaeDecoderImpl : torch::nn::Module {
  explicit VaeDecoderImpl(const VaeConfig& c);
  at::Tensor forward(const at::Tensor& z);  // [B, latent, h, w] -> [B, 3, 8h, 8w]
  torch::nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  std::vector<VaeBlock> blocks;
  VaeMidBlock mid_block{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
};
TORCH_MODULE(VaeDecoder);

// Diagonal Gaussian over latents, from the encoder's moments.
struct LatentDistribution {
  at::Tensor mean, logvar, std;  // [B, latent, h, w]
  // mean + std * noise (noise drawn from `gen` on the CPU, so seeds agree across devices).
  at::Tensor sample(at::Generator& gen) const;
};

class AutoencoderKLImpl : public torch::nn::Module {
 public:
  explicit AutoencoderKLImpl(const VaeConfig& config);
  // image in [-1, 1]: [B, 3, H, W] (H, W multiples of the scale factor)
  LatentDistribution encode(const at::Tensor& image);
  // Raw latents (not scaled) -> image in about [-1, 1].
  at::Tensor decode(const at::Tensor& z);
  // Diffusion-space latents <-> VAE latents: (z - shift) * scaling_factor and back.
  at::Tensor to_diffusion_space(const at::Tensor& z) const;
  at::Tensor from_diffusion_space(const at::Tensor& latents) const;
  const VaeConfig& config() const { return config_; }

 private:
  VaeConfig config_;
  VaeEncoder encoder{nullptr};
  VaeDecoder decoder{nullptr};
  torch::nn::Conv2d quant_conv{nullptr}, post_quant_conv{nullptr};
};
TORCH_MODULE(AutoencoderKL);

}  // namespace iris
