#include "vlm/ftz.h"

#include <algorithm>
#include <cmath>

#include <ATen/core/grad_mode.h>
#include <torch/nn/init.h>

#include "core/attention.h"
#include "core/error.h"

namespace iris {

namespace {

std::string str(int64_t v) { return std::to_string(v); }

void require_positive_key(int64_t v, const char* key, const std::string& what) {
  if (v <= 0) throw ConfigError(join_context(what, std::string("key \"") + key + "\" must be positive, found " + str(v)));
}

// Pixels for an encoder of another resolution: bilinear resize to its image_size.
at::Tensor fit_pixels(const at::Tensor& px, int64_t size) {
  if (px.dim() == 4 && px.size(2) == size && px.size(3) == size) return px;
  if (px.dim() != 4) throw ShapeError("FtZ: pixel_values must be [B, C, H, W]");
  return at::upsample_bilinear2d(px, {size, size}, /*align_corners=*/false);
}

}  // namespace

// =============================================================================================
// Layered encoders

std::vector<at::Tensor> LayeredVisionEncoder::hidden_states(const at::Tensor& pixel_values, int64_t n) {
  if (n < 0 || n > num_layers())
    throw ConfigError("vision encoder: depth " + str(n) + " is out of range 0.." + str(num_layers()));
  std::vector<at::Tensor> out;
  out.push_back(embed(pixel_values));
  for (int64_t i = 0; i < n; ++i) out.push_back(layer(i, out.back()));
  return out;
}

at::Tensor ClipLayeredEncoder::embed(const at::Tensor& pixel_values) {
  // hidden_states[0] through the tower's own checks (no encoder layer runs).
  return model_->vision_model->hidden_state(pixel_values, 0);
}

at::Tensor ClipLayeredEncoder::layer(int64_t i, const at::Tensor& x) {
  return model_->vision_model->encoder->layer(i)->forward(x, AttentionOptions());  // bidirectional
}

ConvEncoderConfig ConvEncoderConfig::from_json(const Json& j, const std::string& what) {
  if (!j.is_object()) throw ConfigError(join_context(what, "expected a JSON object"));
  ConvEncoderConfig c;
  c.num_channels = json_int(j, "num_channels", c.num_channels, what);
  c.image_size = json_int(j, "image_size", c.image_size, what);
  c.patch_size = json_int(j, "patch_size", c.patch_size, what);
  c.hidden_size = json_int(j, "hidden_size", c.hidden_size, what);
  c.num_layers = json_int(j, "num_layers", c.num_layers, what);
  c.norm_groups = json_int(j, "norm_groups", c.norm_groups, what);
  if (auto it = j.find("position_embedding"); it != j.end()) {
    if (!it->is_boolean()) throw ConfigError(join_context(what, "key \"position_embedding\" must be true or false"));
    c.position_embedding = it->get<bool>();
  }
  c.validate(what);
  return c;
}

void ConvEncoderConfig::validate(const std::string& what) const {
  require_positive_key(num_channels, "num_channels", what);
  require_positive_key(image_size, "image_size", what);
  require_positive_key(patch_size, "patch_size", what);
  require_positive_key(hidden_size, "hidden_size", what);
  require_positive_key(norm_groups, "norm_groups", what);
  if (num_layers < 0) throw ConfigError(join_context(what, "key \"num_layers\" must be >= 0"));
  if (image_size % patch_size != 0)
    throw ConfigError(join_context(what, "image_size " + str(image_size) + " is not a multiple of patch_size " +
                                             str(patch_size)));
  if (hidden_size % norm_groups != 0)
    throw ConfigError(join_context(what, "hidden_size " + str(hidden_size) + " is not divisible by norm_groups " +
                                             str(norm_groups)));
}

ConvVisionEncoderImpl::ConvVisionEncoderImpl(const ConvEncoderConfig& cfg) : cfg_(cfg) {
  cfg_.validate("conv encoder config");
  stem = register_module("stem", torch::nn::Conv2d(torch::nn::Conv2dOptions(cfg.num_channels, cfg.hidden_size,
                                                                            cfg.patch_size).stride(cfg.patch_size)));
  if (cfg.position_embedding) {
    const int64_t g = cfg.image_size / cfg.patch_size;
    position_embedding = register_parameter("position_embedding", at::zeros({g * g, cfg.hidden_size}));
  }
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    auto block = std::make_shared<torch::nn::Module>();
    norms_.push_back(block->register_module(
        "norm", torch::nn::GroupNorm(torch::nn::GroupNormOptions(cfg.norm_groups, cfg.hidden_size))));
    convs_.push_back(block->register_module(
        "conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(cfg.hidden_size, cfg.hidden_size, 3).padding(1))));
    layers->push_back(block);
  }
}

at::Tensor ConvVisionEncoderImpl::embed(const at::Tensor& pixel_values) {
  const at::Tensor& w = stem->weight;
  if (!pixel_values.defined() || pixel_values.dim() != 4 || pixel_values.size(1) != cfg_.num_channels ||
      pixel_values.size(2) % cfg_.patch_size != 0 || pixel_values.size(3) % cfg_.patch_size != 0)
    throw ShapeError("conv encoder: pixel_values must be [B, " + str(cfg_.num_channels) +
                     ", H, W] with H and W multiples of " + str(cfg_.patch_size));
  at::Tensor f = stem(pixel_values.to(w.device(), w.scalar_type()));  // [B, D, g, g]
  at::Tensor tokens = f.flatten(2).transpose(1, 2);                    // [B, g*g, D]
  if (position_embedding.defined()) {
    if (tokens.size(1) != position_embedding.size(0))
      throw ShapeError("conv encoder: " + str(pixel_values.size(3)) + "x" + str(pixel_values.size(2)) +
                       " pixels give " + str(tokens.size(1)) + " tokens, the position embedding has " +
                       str(position_embedding.size(0)) + " (image_size " + str(cfg_.image_size) + ")");
    tokens = tokens + position_embedding;
  }
  return tokens.contiguous();
}

at::Tensor ConvVisionEncoderImpl::layer(int64_t i, const at::Tensor& x) {
  const int64_t b = x.size(0), n = x.size(1), d = x.size(2);
  const int64_t g = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(n))));
  if (g * g != n) throw ShapeError("conv encoder: " + str(n) + " tokens do not form a square map");
  const at::Tensor map = x.transpose(1, 2).reshape({b, d, g, g});  // [B, D, g, g]
  const size_t k = static_cast<size_t>(i);
  const at::Tensor y = map + convs_.at(k)(at::gelu(norms_.at(k)(map)));
  return y.flatten(2).transpose(1, 2).contiguous();  // [B, g*g, D]
}

// =============================================================================================
// Config

FtzConfig FtzConfig::from_json(const Json& j, const std::string& what_in) {
  const std::string what = join_context(what_in, "ftz");
  if (!j.is_object()) throw ConfigError(join_context(what, "expected a JSON object"));
  FtzConfig c;
  auto enc = j.find("augmenting_encoder");
  if (enc == j.end() || !enc->is_object())
    throw ConfigError(join_context(what, "key \"augmenting_encoder\" must be an object (the encoder's config)"));
  c.augmenting_encoder = *enc;
  const std::string type = c.augmenting_type();
  if (type != "clip_vision_model" && type != "conv")
    throw ConfigError(join_context(what, "augmenting_encoder \"model_type\": \"" + type +
                                             "\" is not supported (supported: \"clip_vision_model\", \"conv\")"));
  c.heads = json_int(j, "heads", c.heads, what);
  require_positive_key(c.heads, "heads", what);
  auto pairs = j.find("pairs");
  if (pairs == j.end() || !pairs->is_array() || pairs->empty())
    throw ConfigError(join_context(what, "key \"pairs\" must be a non-empty list of [anchor_depth, augmenting_depth]"));
  for (const Json& p : *pairs) {
    if (!p.is_array() || p.size() != 2 || !p[0].is_number_integer() || !p[1].is_number_integer())
      throw ConfigError(join_context(what, "key \"pairs\": each entry must be [anchor_depth, augmenting_depth], found " +
                                               p.dump()));
    const int64_t i = p[0].get<int64_t>(), jd = p[1].get<int64_t>();
    if (i < 0 || jd < 0) throw ConfigError(join_context(what, "key \"pairs\": depths must be >= 0, found " + p.dump()));
    if (!c.pairs.empty() && i <= c.pairs.back().first)
      throw ConfigError(join_context(what, "key \"pairs\": anchor depths must be strictly increasing, found " +
                                               str(i) + " after " + str(c.pairs.back().first)));
    c.pairs.emplace_back(i, jd);
  }
  return c;
}

Json FtzConfig::to_json() const {
  Json p = Json::array();
  for (const auto& [i, j] : pairs) p.push_back({i, j});
  return {{"augmenting_encoder", augmenting_encoder}, {"pairs", p}, {"heads", heads}};
}

std::string FtzConfig::augmenting_type() const {
  return json_string(augmenting_encoder, "model_type", "clip_vision_model", "ftz augmenting_encoder");
}

void FtzConfig::validate(int64_t anchor_layers, int64_t anchor_dim, int64_t aug_layers, const std::string& what_in) const {
  const std::string what = join_context(what_in, "ftz");
  if (anchor_dim % heads != 0)
    throw ConfigError(join_context(what, "heads " + str(heads) + " does not divide the anchor width " + str(anchor_dim)));
  for (const auto& [i, j] : pairs) {
    if (i > anchor_layers)
      throw ConfigError(join_context(what, "pair [" + str(i) + ", " + str(j) + "]: anchor depth " + str(i) +
                                               " is beyond the anchor's " + str(anchor_layers) + " layers"));
    if (j > aug_layers)
      throw ConfigError(join_context(what, "pair [" + str(i) + ", " + str(j) + "]: augmenting depth " + str(j) +
                                               " is beyond the augmenting encoder's " + str(aug_layers) + " layers"));
  }
}

// =============================================================================================
// Fusion modules

FtzCrossAttentionImpl::FtzCrossAttentionImpl(int64_t anchor_dim, int64_t aug_dim, int64_t heads)
    : heads_(heads), head_dim_(anchor_dim / heads) {
  if (heads <= 0 || anchor_dim % heads != 0)
    throw ConfigError("FtZ: heads " + str(heads) + " must divide the anchor width " + str(anchor_dim));
  proj = register_module("proj", torch::nn::Linear(aug_dim, anchor_dim));
  attn = register_module("attn", std::make_shared<Attn>());
  attn->in_proj_weight = attn->register_parameter("in_proj_weight", at::zeros({3 * anchor_dim, anchor_dim}));
  attn->in_proj_bias = attn->register_parameter("in_proj_bias", at::zeros({3 * anchor_dim}));
  attn->out_proj = attn->register_module("out_proj", torch::nn::Linear(anchor_dim, anchor_dim));
}

at::Tensor FtzCrossAttentionImpl::attend(const at::Tensor& anchor, const at::Tensor& aug) {
  if (anchor.dim() != 3 || aug.dim() != 3 || anchor.size(0) != aug.size(0))
    throw ShapeError("FtZ fusion: anchor [B, Na, Da] and augmenting [B, Nb, Dg] states expected");
  const int64_t b = anchor.size(0), na = anchor.size(1), nb = aug.size(1), d = heads_ * head_dim_;
  const at::Tensor kv_in = proj(aug.to(anchor.scalar_type()));  // [B, Nb, Da]
  const at::Tensor w = attn->in_proj_weight, bias = attn->in_proj_bias;
  const at::Tensor q = at::linear(anchor, w.narrow(0, 0, d), bias.narrow(0, 0, d));      // [B, Na, Da]
  const at::Tensor k = at::linear(kv_in, w.narrow(0, d, d), bias.narrow(0, d, d));       // [B, Nb, Da]
  const at::Tensor v = at::linear(kv_in, w.narrow(0, 2 * d, d), bias.narrow(0, 2 * d, d));
  auto heads = [&](const at::Tensor& t, int64_t n) { return t.view({b, n, heads_, head_dim_}).transpose(1, 2); };
  const at::Tensor o = attention(heads(q, na), heads(k, nb), heads(v, nb));  // [B, H, Na, Dh]
  return attn->out_proj(o.transpose(1, 2).reshape({b, na, d}));             // [B, Na, Da]
}

at::Tensor FtzCrossAttentionImpl::forward(const at::Tensor& anchor, const at::Tensor& aug) {
  return anchor + attend(anchor, aug);  // residual, no norm (as the authors' code)
}

FtzFusionImpl::FtzFusionImpl(const FtzConfig& cfg, int64_t anchor_layers, int64_t anchor_dim) : cfg_(cfg) {
  const std::string what = "ftz augmenting_encoder";
  const std::string type = cfg_.augmenting_type();
  if (type == "conv") {
    ConvVisionEncoder conv(ConvEncoderConfig::from_json(cfg_.augmenting_encoder, what));
    augmenting_encoder = register_module("augmenting_encoder", conv.ptr());
    aug_ = conv.ptr();
  } else if (type == "clip_vision_model") {
    ClipVisionModel clip(ClipVisionConfig::from_json(cfg_.augmenting_encoder, what), false);
    augmenting_encoder = register_module("augmenting_encoder", clip.ptr());
    aug_ = std::make_shared<ClipLayeredEncoder>(clip);
  } else {
    throw ConfigError(what + ": \"model_type\": \"" + type + "\" is not supported");
  }
  cfg_.validate(anchor_layers, anchor_dim, aug_->num_layers(), "FtZ config");
  fusions = register_module("fusions", torch::nn::ModuleList());
  for (size_t k = 0; k < cfg_.pairs.size(); ++k) {
    fusion_list_.push_back(FtzCrossAttention(anchor_dim, aug_->hidden_size(), cfg_.heads));
    fusions->push_back(fusion_list_.back());
  }
}

at::Tensor FtzFusionImpl::run(LayeredVisionEncoder& anchor, const at::Tensor& pixel_values, int64_t depth,
                              std::vector<at::Tensor>* all) {
  // The augmenting encoder runs only as deep as the fusions up to `depth` need.
  int64_t aug_depth = -1;
  for (const auto& [i, j] : cfg_.pairs)
    if (i <= depth) aug_depth = std::max(aug_depth, j);
  std::vector<at::Tensor> aug;
  if (aug_depth >= 0) aug = aug_->hidden_states(fit_pixels(pixel_values, aug_->image_size()), aug_depth);

  size_t next = 0;  // pairs are sorted by anchor depth
  auto fuse_at = [&](int64_t d, at::Tensor x) {
    while (next < cfg_.pairs.size() && cfg_.pairs[next].first == d) {
      x = fusion_list_[next]->forward(x, aug[static_cast<size_t>(cfg_.pairs[next].second)]);
      ++next;
    }
    if (all) all->push_back(x);
    return x;
  };
  at::Tensor x = fuse_at(0, anchor.embed(pixel_values));  // [B, N, D]
  for (int64_t l = 0; l < depth; ++l) x = fuse_at(l + 1, anchor.layer(l, x));
  return x;
}

at::Tensor FtzFusionImpl::hidden_state(LayeredVisionEncoder& anchor, const at::Tensor& pixel_values, int64_t index) {
  const int64_t depth = clip_layers_for_hidden_state(index, anchor.num_layers(), "FtZ anchor");
  return run(anchor, pixel_values, depth, nullptr);
}

std::vector<at::Tensor> FtzFusionImpl::hidden_states(LayeredVisionEncoder& anchor, const at::Tensor& pixel_values) {
  std::vector<at::Tensor> all;
  run(anchor, pixel_values, anchor.num_layers(), &all);
  return all;
}

void FtzFusionImpl::init_weights(uint64_t seed, double std, bool zero_out_proj) {
  at::NoGradGuard no_grad;
  at::Generator gen = at::detail::createCPUGenerator(seed);
  for (auto& p : named_parameters(/*recurse=*/true)) {
    const std::string& name = p.key();
    at::Tensor& t = p.value();
    const bool bias = name.size() >= 4 && (name.compare(name.size() - 4, 4, "bias") == 0);
    const bool norm = name.find("norm") != std::string::npos;
    const bool out_proj = name.rfind("fusions.", 0) == 0 && name.find(".attn.out_proj.") != std::string::npos;
    if (bias || (out_proj && zero_out_proj)) t.zero_();
    else if (norm) t.fill_(1.0);
    else t.copy_(at::empty(t.sizes(), t.options().device(at::kCPU)).normal_(0.0, std, gen));
  }
}

}  // namespace iris
