#include "diffusion/unet.h"

#include <ATen/ATen.h>

#include "core/error.h"

namespace iris {

namespace nn = torch::nn;

namespace {

// An int or a list of ints, expanded to `n` entries.
std::vector<int64_t> int_or_list(const Json& j, const std::string& key, std::vector<int64_t> fallback, size_t n,
                                 const std::string& what) {
  auto it = j.find(key);
  std::vector<int64_t> out;
  if (it == j.end() || it->is_null()) {
    out = std::move(fallback);
  } else if (it->is_number_integer()) {
    out.assign(n, it->get<int64_t>());
  } else if (it->is_array()) {
    for (const Json& v : *it) {
      if (!v.is_number_integer())
        throw ConfigError(join_context(what, "key \"" + key + "\": expected integers, found " + it->dump()));
      out.push_back(v.get<int64_t>());
    }
  } else {
    throw ConfigError(join_context(what, "key \"" + key + "\": expected an integer or a list, found " + it->dump()));
  }
  if (out.size() == 1 && n > 1) out.assign(n, out[0]);
  if (out.size() != n)
    throw ConfigError(join_context(what, "key \"" + key + "\" has " + std::to_string(out.size()) +
                                             " entries for " + std::to_string(n) + " blocks"));
  for (int64_t v : out)
    if (v <= 0) throw ConfigError(join_context(what, "key \"" + key + "\": values must be positive"));
  return out;
}

std::vector<std::string> string_list(const Json& j, const std::string& key, std::vector<std::string> fallback,
                                     const std::string& what) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_array()) throw ConfigError(join_context(what, "key \"" + key + "\": expected a list of strings"));
  std::vector<std::string> out;
  for (const Json& v : *it) {
    if (!v.is_string()) throw ConfigError(join_context(what, "key \"" + key + "\": expected a list of strings"));
    out.push_back(v.get<std::string>());
  }
  return out;
}

// Settings Iris does not implement must fail loudly, not be silently ignored.
void require_default(const Json& j, const std::string& key, const Json& allowed, const std::string& what) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null() || *it == allowed) return;
  throw ConfigError(join_context(what, "key \"" + key + "\" = " + it->dump() + " is not supported (only " +
                                           allowed.dump() + ")"));
}

bool has_cross_attention(const std::string& block_type, const std::string& what) {
  if (block_type == "CrossAttnDownBlock2D" || block_type == "CrossAttnUpBlock2D") return true;
  if (block_type == "DownBlock2D" || block_type == "UpBlock2D") return false;
  throw ConfigError(join_context(what, "block type \"" + block_type + "\" is not supported"));
}

}  // namespace

UNetConfig UNetConfig::sd15() { return UNetConfig(); }

UNetConfig UNetConfig::from_json(const Json& j, const std::string& what) {
  if (!j.is_object()) throw ConfigError(join_context(what, "UNet config must be a JSON object"));
  UNetConfig c;
  for (const char* key : {"class_embed_type", "addition_embed_type", "encoder_hid_dim_type", "time_cond_proj_dim",
                          "num_class_embeds", "time_embedding_act_fn", "timestep_post_act", "cross_attention_norm",
                          "reverse_transformer_layers_per_block"})
    require_default(j, key, nullptr, what);
  require_default(j, "act_fn", "silu", what);
  require_default(j, "resnet_time_scale_shift", "default", what);
  require_default(j, "time_embedding_type", "positional", what);
  require_default(j, "attention_type", "default", what);
  require_default(j, "dual_cross_attention", false, what);
  require_default(j, "center_input_sample", false, what);
  require_default(j, "class_embeddings_concat", false, what);
  require_default(j, "resnet_skip_time_act", false, what);
  require_default(j, "resnet_out_scale_factor", 1.0, what);

  c.in_channels = json_int(j, "in_channels", c.in_channels, what);
  c.out_channels = json_int(j, "out_channels", c.out_channels, what);
  c.down_block_types = string_list(j, "down_block_types", c.down_block_types, what);
  c.up_block_types = string_list(j, "up_block_types", c.up_block_types, what);
  const size_t n = c.down_block_types.size();
  if (n == 0 || c.up_block_types.size() != n)
    throw ConfigError(join_context(what, "down_block_types and up_block_types must be non-empty and of equal length"));
  c.block_out_channels = int_or_list(j, "block_out_channels", c.block_out_channels, n, what);
  c.layers_per_block = int_or_list(j, "layers_per_block", {2}, n, what);
  c.transformer_layers_per_block = int_or_list(j, "transformer_layers_per_block", {1}, n, what);
  // num_attention_heads, else attention_head_dim (which diffusers uses as the head count).
  if (j.contains("num_attention_heads") && !j["num_attention_heads"].is_null())
    c.num_attention_heads = int_or_list(j, "num_attention_heads", {8}, n, what);
  else
    c.num_attention_heads = int_or_list(j, "attention_head_dim", {8}, n, what);
  if (j.contains("cross_attention_dim") && j["cross_attention_dim"].is_array())
    throw ConfigError(join_context(what, "per-block cross_attention_dim lists are not supported"));
  c.cross_attention_dim = json_int(j, "cross_attention_dim", c.cross_attention_dim, what);
  c.norm_num_groups = json_int(j, "norm_num_groups", c.norm_num_groups, what);
  c.norm_eps = json_number(j, "norm_eps", c.norm_eps, what);
  c.use_linear_projection = json_bool(j, "use_linear_projection", c.use_linear_projection, what);
  if (j.contains("only_cross_attention") && j["only_cross_attention"].is_array())
    throw ConfigError(join_context(what, "per-block only_cross_attention lists are not supported"));
  c.only_cross_attention = json_bool(j, "only_cross_attention", c.only_cross_attention, what);
  c.flip_sin_to_cos = json_bool(j, "flip_sin_to_cos", c.flip_sin_to_cos, what);
  c.freq_shift = json_number(j, "freq_shift", c.freq_shift, what);
  c.conv_in_kernel = json_int(j, "conv_in_kernel", c.conv_in_kernel, what);
  c.conv_out_kernel = json_int(j, "conv_out_kernel", c.conv_out_kernel, what);
  c.downsample_padding = json_int(j, "downsample_padding", c.downsample_padding, what);
  c.mid_block_scale_factor = json_number(j, "mid_block_scale_factor", c.mid_block_scale_factor, what);
  c.sample_size = json_int(j, "sample_size", c.sample_size, what);
  auto mid = j.find("mid_block_type");
  if (mid != j.end()) c.mid_block_type = mid->is_null() ? "" : mid->get<std::string>();
  if (!c.mid_block_type.empty() && c.mid_block_type != "UNetMidBlock2DCrossAttn")
    throw ConfigError(join_context(what, "mid_block_type \"" + c.mid_block_type + "\" is not supported"));
  if (j.contains("time_embedding_dim") && !j["time_embedding_dim"].is_null())
    throw ConfigError(join_context(what, "a custom time_embedding_dim is not supported"));
  for (const auto& t : c.down_block_types) has_cross_attention(t, what);
  for (const auto& t : c.up_block_types) has_cross_attention(t, what);
  if (c.conv_in_kernel % 2 == 0 || c.conv_out_kernel % 2 == 0)
    throw ConfigError(join_context(what, "conv_in_kernel / conv_out_kernel must be odd"));
  return c;
}

UNetDownBlockImpl::UNetDownBlockImpl(const UNetConfig& c, size_t i, int64_t in, int64_t out, int64_t temb,
                                     bool cross_attention, bool add_downsample) {
  auto resnet_list = register_module("resnets", nn::ModuleList());
  nn::ModuleList attention_list;
  if (cross_attention) attention_list = register_module("attentions", nn::ModuleList());
  for (int64_t l = 0; l < c.layers_per_block[i]; ++l) {
    resnets.push_back(ResnetBlock2D(l == 0 ? in : out, out, temb, c.norm_num_groups, c.norm_eps));
    resnet_list->push_back(resnets.back());
    if (cross_attention) {
      attentions.push_back(Transformer2D(out, c.num_attention_heads[i], c.transformer_layers_per_block[i],
                                         c.cross_attention_dim, c.norm_num_groups, c.use_linear_projection,
                                         c.only_cross_attention));
      attention_list->push_back(attentions.back());
    }
  }
  if (add_downsample) {
    downsampler = Downsample2D(out, c.downsample_padding);
    register_module("downsamplers", nn::ModuleList(downsampler));
  }
}

at::Tensor UNetDownBlockImpl::forward(at::Tensor x, const at::Tensor& temb, const at::Tensor& context,
                                      std::vector<at::Tensor>& skips, Recorder* rec, const std::string& path) {
  for (size_t l = 0; l < resnets.size(); ++l) {
    x = resnets[l]->forward(x, temb);
    if (!attentions.empty()) x = attentions[l]->forward(x, context, rec, path + ".attentions." + std::to_string(l));
    skips.push_back(x);
  }
  if (downsampler) {
    x = downsampler->forward(x);
    skips.push_back(x);
  }
  return x;
}

UNetUpBlockImpl::UNetUpBlockImpl(const UNetConfig& c, size_t i, int64_t in, int64_t prev_out, int64_t out,
                                 int64_t temb, bool cross_attention, bool add_upsample) {
  const size_t r = c.block_out_channels.size() - 1 - i;  // index of the matching down block
  const int64_t layers = c.layers_per_block[r] + 1;
  auto resnet_list = register_module("resnets", nn::ModuleList());
  nn::ModuleList attention_list;
  if (cross_attention) attention_list = register_module("attentions", nn::ModuleList());
  for (int64_t l = 0; l < layers; ++l) {
    const int64_t skip = l == layers - 1 ? in : out;
    const int64_t resnet_in = l == 0 ? prev_out : out;
    resnets.push_back(ResnetBlock2D(resnet_in + skip, out, temb, c.norm_num_groups, c.norm_eps));
    resnet_list->push_back(resnets.back());
    if (cross_attention) {
      attentions.push_back(Transformer2D(out, c.num_attention_heads[r], c.transformer_layers_per_block[r],
                                         c.cross_attention_dim, c.norm_num_groups, c.use_linear_projection,
                                         c.only_cross_attention));
      attention_list->push_back(attentions.back());
    }
  }
  if (add_upsample) {
    upsampler = Upsample2D(out);
    register_module("upsamplers", nn::ModuleList(upsampler));
  }
}

at::Tensor UNetUpBlockImpl::forward(at::Tensor x, const at::Tensor& temb, const at::Tensor& context,
                                    std::vector<at::Tensor>& skips, c10::optional<std::vector<int64_t>> upsample_size,
                                    Recorder* rec, const std::string& path) {
  for (size_t l = 0; l < resnets.size(); ++l) {
    x = at::cat({x, skips.back()}, 1);
    skips.pop_back();
    x = resnets[l]->forward(x, temb);
    if (!attentions.empty()) x = attentions[l]->forward(x, context, rec, path + ".attentions." + std::to_string(l));
  }
  if (upsampler) x = upsampler->forward(x, upsample_size);
  return x;
}

UNetMidBlockImpl::UNetMidBlockImpl(const UNetConfig& c, int64_t ch, int64_t temb) {
  auto resnet_list = register_module("resnets", nn::ModuleList());
  auto attention_list = register_module("attentions", nn::ModuleList());
  const size_t last = c.block_out_channels.size() - 1;
  for (int k = 0; k < 2; ++k) {
    resnets.push_back(ResnetBlock2D(ch, ch, temb, c.norm_num_groups, c.norm_eps, c.mid_block_scale_factor));
    resnet_list->push_back(resnets.back());
  }
  attentions.push_back(Transformer2D(ch, c.num_attention_heads[last], c.transformer_layers_per_block[last],
                                     c.cross_attention_dim, c.norm_num_groups, c.use_linear_projection, false));
  attention_list->push_back(attentions.back());
}

at::Tensor UNetMidBlockImpl::forward(at::Tensor x, const at::Tensor& temb, const at::Tensor& context, Recorder* rec,
                                     const std::string& path) {
  x = resnets[0]->forward(x, temb);
  x = attentions[0]->forward(x, context, rec, path + ".attentions.0");
  return resnets[1]->forward(x, temb);
}

UNet2DConditionImpl::UNet2DConditionImpl(const UNetConfig& c) : config_(c) {
  const auto& boc = c.block_out_channels;
  const size_t n = boc.size();
  const int64_t temb = boc[0] * 4;
  conv_in = register_module("conv_in", nn::Conv2d(nn::Conv2dOptions(c.in_channels, boc[0], c.conv_in_kernel)
                                                      .padding(c.conv_in_kernel / 2)));
  time_embedding = register_module("time_embedding", TimestepEmbedding(boc[0], temb));

  auto down_list = register_module("down_blocks", nn::ModuleList());
  int64_t out = boc[0];
  for (size_t i = 0; i < n; ++i) {
    const int64_t in = out;
    out = boc[i];
    down_blocks.push_back(UNetDownBlock(c, i, in, out, temb, has_cross_attention(c.down_block_types[i], ""), i + 1 < n));
    down_list->push_back(down_blocks.back());
  }
  if (!c.mid_block_type.empty()) mid_block = register_module("mid_block", UNetMidBlock(c, boc[n - 1], temb));

  auto up_list = register_module("up_blocks", nn::ModuleList());
  out = boc[n - 1];
  for (size_t i = 0; i < n; ++i) {
    const int64_t prev_out = out;
    out = boc[n - 1 - i];
    const int64_t in = boc[n - 1 - std::min(i + 1, n - 1)];
    up_blocks.push_back(
        UNetUpBlock(c, i, in, prev_out, out, temb, has_cross_attention(c.up_block_types[i], ""), i + 1 < n));
    up_list->push_back(up_blocks.back());
  }
  conv_norm_out = register_module(
      "conv_norm_out", nn::GroupNorm(nn::GroupNormOptions(c.norm_num_groups, boc[0]).eps(c.norm_eps)));
  conv_out = register_module("conv_out", nn::Conv2d(nn::Conv2dOptions(boc[0], c.out_channels, c.conv_out_kernel)
                                                        .padding(c.conv_out_kernel / 2)));
}

at::Tensor UNet2DConditionImpl::forward(const at::Tensor& sample, const at::Tensor& timestep, const at::Tensor& context,
                                        Recorder* rec) {
  if (sample.dim() != 4 || sample.size(1) != config_.in_channels)
    throw ShapeError("UNet: sample must be [B, " + std::to_string(config_.in_channels) + ", H, W], got " +
                     c10::str(sample.sizes()));
  if (context.dim() != 3 || context.size(0) != sample.size(0) || context.size(2) != config_.cross_attention_dim)
    throw ShapeError("UNet: encoder_hidden_states must be [" + std::to_string(sample.size(0)) + ", L, " +
                     std::to_string(config_.cross_attention_dim) + "], got " + c10::str(context.sizes()));
  const int64_t B = sample.size(0);
  at::Tensor t = timestep.dim() == 0 ? timestep.unsqueeze(0) : timestep;
  if (t.numel() != 1 && t.numel() != B)
    throw ShapeError("UNet: " + std::to_string(t.numel()) + " timesteps for a batch of " + std::to_string(B));
  t = t.to(sample.device()).expand({B});

  const auto& boc = config_.block_out_channels;
  at::Tensor emb = time_embedding(timestep_embedding(t, boc[0], config_.flip_sin_to_cos, config_.freq_shift));
  if (rec) (*rec)["time_embedding"] = emb;

  at::Tensor x = conv_in(sample);
  if (rec) (*rec)["conv_in"] = x;
  std::vector<at::Tensor> skips = {x};
  for (size_t i = 0; i < down_blocks.size(); ++i) {
    const std::string path = "down_blocks." + std::to_string(i);
    x = down_blocks[i]->forward(x, emb, context, skips, rec, path);
    if (rec) (*rec)[path] = x;
  }
  if (mid_block) {
    x = mid_block->forward(x, emb, context, rec, "mid_block");
    if (rec) (*rec)["mid_block"] = x;
  }
  // Latents whose size is not a multiple of 2^(upsamplers) need explicit upsample sizes.
  const int64_t factor = int64_t(1) << (boc.size() - 1);
  const bool explicit_sizes = sample.size(2) % factor != 0 || sample.size(3) % factor != 0;
  for (size_t i = 0; i < up_blocks.size(); ++i) {
    const std::string path = "up_blocks." + std::to_string(i);
    const size_t consumed = up_blocks[i]->resnets.size();
    c10::optional<std::vector<int64_t>> size;
    if (explicit_sizes && i + 1 < up_blocks.size()) {
      const at::Tensor& next_skip = skips[skips.size() - consumed - 1];
      size = std::vector<int64_t>{next_skip.size(2), next_skip.size(3)};
    }
    x = up_blocks[i]->forward(x, emb, context, skips, size, rec, path);
    if (rec) (*rec)[path] = x;
  }
  x = conv_norm_out(x);
  if (rec) (*rec)["conv_norm_out"] = x;
  x = conv_out(at::silu(x));
  if (rec) (*rec)["conv_out"] = x;
  return x;
}

std::vector<std::pair<std::string, Attention>> UNet2DConditionImpl::cross_attention_layers() const {
  std::vector<std::pair<std::string, Attention>> out;
  auto add = [&](const std::string& prefix, const std::vector<Transformer2D>& attns) {
    for (size_t a = 0; a < attns.size(); ++a)
      for (size_t b = 0; b < attns[a]->blocks.size(); ++b)
        out.emplace_back(prefix + ".attentions." + std::to_string(a) + ".transformer_blocks." + std::to_string(b) + ".attn2",
                         attns[a]->blocks[b]->attn2);
  };
  for (size_t i = 0; i < down_blocks.size(); ++i) add("down_blocks." + std::to_string(i), down_blocks[i]->attentions);
  for (size_t i = 0; i < up_blocks.size(); ++i) add("up_blocks." + std::to_string(i), up_blocks[i]->attentions);
  if (mid_block) add("mid_block", mid_block->attentions);
  return out;
}

}  // namespace iris
