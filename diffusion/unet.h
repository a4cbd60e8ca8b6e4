#pragma once
// diffusers UNet2DConditionModel, built from its config.json.
#include <string>
#include <vector>

#include "core/json_util.h"
#include "diffusion/unet_blocks.h"

namespace iris {

struct UNetConfig {
  int64_t in_channels = 4, out_channels = 4;
  std::vector<int64_t> block_out_channels = {320, 640, 1280, 1280};
  std::vector<std::string> down_block_types = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                               "CrossAttnDownBlock2D", "DownBlock2D"};
  std::vector<std::string> up_block_types = {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                             "CrossAttnUpBlock2D"};
  std::string mid_block_type = "UNetMidBlock2DCrossAttn";  // or "" (none)
  std::vector<int64_t> layers_per_block = {2, 2, 2, 2};
  std::vector<int64_t> transformer_layers_per_block = {1, 1, 1, 1};
  // Heads per down block. diffusers' `attention_head_dim` holds the head COUNT when
  // `num_attention_heads` is absent (a naming accident kept for compatibility).
  std::vector<int64_t> num_attention_heads = {8, 8, 8, 8};
  int64_t cross_attention_dim = 768;
  int64_t norm_num_groups = 32;
  double norm_eps = 1e-5;
  bool use_linear_projection = false;
  bool only_cross_attention = false;
  bool flip_sin_to_cos = true;
  double freq_shift = 0;
  int64_t conv_in_kernel = 3, conv_out_kernel = 3;
  int64_t downsample_padding = 1;
  double mid_block_scale_factor = 1.0;
  int64_t sample_size = 64;

  // Throws ConfigError naming `what` and the key for invalid or unsupported settings.
  static UNetConfig from_json(const Json& j, const std::string& what);
  static UNetConfig sd15();  // Stable Diffusion 1.x
};

struct UNetDownBlockImpl : torch::nn::Module {
  UNetDownBlockImpl(const UNetConfig& c, size_t index, int64_t in, int64_t out, int64_t temb, bool cross_attention,
                    bool add_downsample);
  // Returns the block output; appends the skip connections to `skips`.
  at::Tensor forward(at::Tensor x, const at::Tensor& temb, const at::Tensor& context, std::vector<at::Tensor>& skips,
                     Recorder* rec, const std::string& path);
  std::vector<ResnetBlock2D> resnets;
  std::vector<Transformer2D> attentions;
  Downsample2D downsampler{nullptr};
};
TORCH_MODULE(UNetDownBlock);

struct UNetUpBlockImpl : torch::nn::Module {
  UNetUpBlockImpl(const UNetConfig& c, size_t index, int64_t in, int64_t prev_out, int64_t out, int64_t temb,
                  bool cross_attention, bool add_upsample);
  at::Tensor forward(at::Tensor x, const at::Tensor& temb, const at::Tensor& context, std::vector<at::Tensor>& skips,
                     c10::optional<std::vector<int64_t>> upsample_size, Recorder* rec, const std::string& path);
  std::vector<ResnetBlock2D> resnets;
  std::vector<Transformer2D> attentions;
  Upsample2D upsampler{nullptr};
};
TORCH_MODULE(UNetUpBlock);

struct UNetMidBlockImpl : torch::nn::Module {
  UNetMidBlockImpl(const UNetConfig& c, int64_t channels, int64_t temb);
  at::Tensor forward(at::Tensor x, const at::Tensor& temb, const at::Tensor& context, Recorder* rec,
                     const std::string& path);
  std::vector<ResnetBlock2D> resnets;
  std::vector<Transformer2D> attentions;
};
TORCH_MODULE(UNetMidBlock);

class UNet2DConditionImpl : public torch::nn::Module {
 public:
  explicit UNet2DConditionImpl(const UNetConfig& config);
  // sample: [B, in, H, W]; timestep: [B] or [1] or [] (any numeric dtype);
  // context: [B, L, cross_attention_dim] -> [B, out, H, W]
  at::Tensor forward(const at::Tensor& sample, const at::Tensor& timestep, const at::Tensor& context,
                     Recorder* rec = nullptr);
  const UNetConfig& config() const { return config_; }
  // Every cross-attention (attn2) layer in diffusers' attention-processor order: down
  // blocks, up blocks, mid block last. Adapters index their per-layer weights by this.
  std::vector<std::pair<std::string, Attention>> cross_attention_layers() const;

 private:
  UNetConfig config_;
  torch::nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  TimestepEmbedding time_embedding{nullptr};
  std::vector<UNetDownBlock> down_blocks;
  std::vector<UNetUpBlock> up_blocks;
  UNetMidBlock mid_block{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
};
TORCH_MODULE(UNet2DCondition);

}  // namespace iris
