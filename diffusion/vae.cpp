#include "diffusion/vae.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>

#include "core/error.h"
#include "diffusion/noise.h"

namespace iris {

namespace nn = torch::nn;

namespace {

// On the CPU the blocks compute in channels-last (oneDNN's fast convolution layout, see
// unet_blocks.cpp) and keep the layout of their input: the encoder and decoder convert once
// after conv_in and give a standard contiguous tensor back at the end.
bool channels_last_cpu(const at::Tensor& x) {
  return !at::GradMode::is_enabled() && x.is_cpu() && x.dim() == 4 && x.scalar_type() == at::kFloat &&
         at::hasMKLDNN() && at::globalContext().userEnabledMkldnn();
}

at::Tensor to_block_layout(const at::Tensor& x) {
  return channels_last_cpu(x) ? x.contiguous(at::MemoryFormat::ChannelsLast) : x;
}

// conv_out(silu(conv_norm_out(x))), the SiLU in place, x released first.
at::Tensor norm_silu_conv(nn::GroupNorm& norm, nn::Conv2d& conv, at::Tensor x) {
  at::Tensor h = norm(x);
  x = at::Tensor();
  if (at::GradMode::is_enabled()) return conv(at::silu(h));
  return conv(at::silu_(h)).contiguous();
}
void require_list_of(const Json& j, const std::string& key, const std::string& allowed, const std::string& what) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return;
  if (!it->is_array()) throw ConfigError(join_context(what, "key \"" + key + "\": expected a list"));
  for (const Json& v : *it)
    if (!v.is_string() || v.get<std::string>() != allowed)
      throw ConfigError(join_context(what, "key \"" + key + "\": block type " + v.dump() + " is not supported (only " +
                                               allowed + ")"));
}
}  // namespace

VaeConfig VaeConfig::sd() { return VaeConfig(); }

VaeConfig VaeConfig::from_json(const Json& j, const std::string& what) {
  if (!j.is_object()) throw ConfigError(join_context(what, "VAE config must be a JSON object"));
  VaeConfig c;
  c.in_channels = json_int(j, "in_channels", c.in_channels, what);
  c.out_channels = json_int(j, "out_channels", c.out_channels, what);
  c.latent_channels = json_int(j, "latent_channels", c.latent_channels, what);
  c.layers_per_block = json_int(j, "layers_per_block", c.layers_per_block, what);
  c.norm_num_groups = json_int(j, "norm_num_groups", c.norm_num_groups, what);
  c.scaling_factor = json_number(j, "scaling_factor", c.scaling_factor, what);
  c.shift_factor = json_number(j, "shift_factor", c.shift_factor, what);
  c.use_quant_conv = json_bool(j, "use_quant_conv", c.use_quant_conv, what);
  c.use_post_quant_conv = json_bool(j, "use_post_quant_conv", c.use_post_quant_conv, what);
  c.mid_block_add_attention = json_bool(j, "mid_block_add_attention", c.mid_block_add_attention, what);
  c.sample_size = json_int(j, "sample_size", c.sample_size, what);
  if (j.contains("act_fn") && j["act_fn"] != "silu") throw ConfigError(join_context(what, "act_fn must be silu"));
  if (j.contains("block_out_channels")) {
    c.block_out_channels.clear();
    if (!j["block_out_channels"].is_array() || j["block_out_channels"].empty())
      throw ConfigError(join_context(what, "key \"block_out_channels\": expected a non-empty list"));
    for (const Json& v : j["block_out_channels"]) {
      if (!v.is_number_integer() || v.get<int64_t>() <= 0)
        throw ConfigError(join_context(what, "key \"block_out_channels\": expected positive integers"));
      c.block_out_channels.push_back(v.get<int64_t>());
    }
  }
  require_list_of(j, "down_block_types", "DownEncoderBlock2D", what);
  require_list_of(j, "up_block_types", "UpDecoderBlock2D", what);
  for (const char* key : {"down_block_types", "up_block_types"})
    if (j.contains(key) && j[key].is_array() && j[key].size() != c.block_out_channels.size())
      throw ConfigError(join_context(what, std::string("key \"") + key + "\" must have one entry per block_out_channels"));
  if (c.layers_per_block <= 0) throw ConfigError(join_context(what, "layers_per_block must be positive"));
  return c;
}

VaeMidBlockImpl::VaeMidBlockImpl(int64_t ch, int64_t groups, bool add_attention) {
  auto resnet_list = register_module("resnets", nn::ModuleList());
  for (int k = 0; k < 2; ++k) {
    resnets.push_back(ResnetBlock2D(ch, ch, 0, groups, 1e-6));
    resnet_list->push_back(resnets.back());
  }
  if (add_attention) {
    // attention_head_dim = channels: a single head.
    attention = SpatialSelfAttention(ch, groups, 1e-6, ch);
    register_module("attentions", nn::ModuleList(attention));
  }
}

at::Tensor VaeMidBlockImpl::forward(at::Tensor x) {
  x = resnets[0]->forward(x);  // reassigning frees each input as soon as the next output exists
  if (attention) x = attention->forward(x);
  return resnets[1]->forward(x);
}

VaeBlockImpl::VaeBlockImpl(int64_t in, int64_t out, int64_t layers, int64_t groups, bool down, bool add_sampler) {
  auto resnet_list = register_module("resnets", nn::ModuleList());
  for (int64_t l = 0; l < layers; ++l) {
    resnets.push_back(ResnetBlock2D(l == 0 ? in : out, out, 0, groups, 1e-6));
    resnet_list->push_back(resnets.back());
  }
  if (add_sampler && down) {
    downsampler = Downsample2D(out, 0);
    register_module("downsamplers", nn::ModuleList(downsampler));
  } else if (add_sampler) {
    upsampler = Upsample2D(out);
    register_module("upsamplers", nn::ModuleList(upsampler));
  }
}

at::Tensor VaeBlockImpl::forward(at::Tensor x) {
  for (auto& r : resnets) x = r->forward(x);
  if (downsampler) x = downsampler->forward(x);
  if (upsampler) x = upsampler->forward(x);
  return x;
}

VaeEncoderImpl::VaeEncoderImpl(const VaeConfig& c) {
  const auto& boc = c.block_out_channels;
  const size_t n = boc.size();
  conv_in = register_module("conv_in", nn::Conv2d(nn::Conv2dOptions(c.in_channels, boc[0], 3).padding(1)));
  auto list = register_module("down_blocks", nn::ModuleList());
  int64_t out = boc[0];
  for (size_t i = 0; i < n; ++i) {
    const int64_t in = out;
    out = boc[i];
    blocks.push_back(VaeBlock(in, out, c.layers_per_block, c.norm_num_groups, true, i + 1 < n));
    list->push_back(blocks.back());
  }
  mid_block = register_module("mid_block", VaeMidBlock(boc[n - 1], c.norm_num_groups, c.mid_block_add_attention));
  conv_norm_out = register_module("conv_norm_out",
                                  nn::GroupNorm(nn::GroupNormOptions(c.norm_num_groups, boc[n - 1]).eps(1e-6)));
  conv_out = register_module("conv_out", nn::Conv2d(nn::Conv2dOptions(boc[n - 1], 2 * c.latent_channels, 3).padding(1)));
}

at::Tensor VaeEncoderImpl::forward(const at::Tensor& image) {
  at::Tensor x = to_block_layout(conv_in(image));
  for (auto& b : blocks) x = b->forward(std::move(x));  // moved: the block's input dies inside it
  x = mid_block->forward(std::move(x));
  return norm_silu_conv(conv_norm_out, conv_out, std::move(x));
}

VaeDecoderImpl::VaeDecoderImpl(const VaeConfig& c) {
  const auto& boc = c.block_out_channels;
  const size_t n = boc.size();
  conv_in = register_module("conv_in", nn::Conv2d(nn::Conv2dOptions(c.latent_channels, boc[n - 1], 3).padding(1)));
  mid_block = register_module("mid_block", VaeMidBlock(boc[n - 1], c.norm_num_groups, c.mid_block_add_attention));
  auto list = register_module("up_blocks", nn::ModuleList());
  int64_t out = boc[n - 1];
  for (size_t i = 0; i < n; ++i) {
    const int64_t prev = out;
    out = boc[n - 1 - i];
    blocks.push_back(VaeBlock(prev, out, c.layers_per_block + 1, c.norm_num_groups, false, i + 1 < n));
    list->push_back(blocks.back());
  }
  conv_norm_out = register_module("conv_norm_out",
                                  nn::GroupNorm(nn::GroupNormOptions(c.norm_num_groups, boc[0]).eps(1e-6)));
  conv_out = register_module("conv_out", nn::Conv2d(nn::Conv2dOptions(boc[0], c.out_channels, 3).padding(1)));
}

at::Tensor VaeDecoderImpl::forward(const at::Tensor& z) {
  at::Tensor x = to_block_layout(conv_in(z));
  x = mid_block->forward(std::move(x));
  for (auto& b : blocks) x = b->forward(std::move(x));  // moved: the block's input dies inside it
  return norm_silu_conv(conv_norm_out, conv_out, std::move(x));
}

at::Tensor LatentDistribution::sample(at::Generator& gen) const {
  return mean + std * seeded_randn(mean.sizes(), gen, mean.device());
}

AutoencoderKLImpl::AutoencoderKLImpl(const VaeConfig& c) : config_(c) {
  encoder = register_module("encoder", VaeEncoder(c));
  decoder = register_module("decoder", VaeDecoder(c));
  const int64_t z = c.latent_channels;
  if (c.use_quant_conv) quant_conv = register_module("quant_conv", nn::Conv2d(nn::Conv2dOptions(2 * z, 2 * z, 1)));
  if (c.use_post_quant_conv) post_quant_conv = register_module("post_quant_conv", nn::Conv2d(nn::Conv2dOptions(z, z, 1)));
}

LatentDistribution AutoencoderKLImpl::encode(const at::Tensor& image) {
  const int64_t s = config_.scale();
  if (image.dim() != 4 || image.size(1) != config_.in_channels || image.size(2) % s || image.size(3) % s)
    throw ShapeError("VAE encode: image must be [B, " + std::to_string(config_.in_channels) +
                     ", H, W] with H and W multiples of " + std::to_string(s) + ", got " + c10::str(image.sizes()));
  at::Tensor moments = encoder(image);
  if (quant_conv) moments = quant_conv(moments);
  auto parts = moments.chunk(2, 1);
  LatentDistribution d;
  d.mean = parts[0];
  d.logvar = at::clamp(parts[1], -30.0, 20.0);
  d.std = at::exp(0.5 * d.logvar);
  return d;
}

at::Tensor AutoencoderKLImpl::decode(const at::Tensor& z) {
  if (z.dim() != 4 || z.size(1) != config_.latent_channels)
    throw ShapeError("VAE decode: latents must be [B, " + std::to_string(config_.latent_channels) + ", h, w], got " +
                     c10::str(z.sizes()));
  return decoder(post_quant_conv ? post_quant_conv(z) : z);
}

at::Tensor AutoencoderKLImpl::to_diffusion_space(const at::Tensor& z) const {
  return (z - config_.shift_factor) * config_.scaling_factor;
}

at::Tensor AutoencoderKLImpl::from_diffusion_space(const at::Tensor& latents) const {
  return latents / config_.scaling_factor + config_.shift_factor;
}

}  // namespace iris
