#pragma once
// FtZ: fusing a second ("augmenting") vision encoder into the LLaVA vision tower (the "anchor")
// by multi-head cross-attention at chosen depths (METHODS.md, FtZ).
//
// For every configured pair (i, j): the anchor's hidden state at depth i (hidden_states[i],
// 0 = embeddings, i = output of layer i) is the query; the augmenting encoder's hidden state at
// depth j, projected to the anchor's width, is key and value:
//
//     a_i  <-  a_i + out_proj(MHA(q = a_i, k = v = proj(g_j)))            (residual, no norm)
//
// and the anchor continues its forward from the fused a_i. The fused state at LLaVA's
// vision_feature_layer then feeds the projector. With every out_proj at zero the result is the
// anchor-only path, bit for bit.
//
// Config (a "ftz" block in the checkpoint's config.json):
//   "ftz": {
//     "augmenting_encoder": {"model_type": "clip_vision_model", <CLIPVisionConfig keys>}
//                         | {"model_type": "conv", "num_channels": 3, "image_size": 32,
//                            "patch_size": 4, "hidden_size": 48, "num_layers": 4, "norm_groups": 8,
//                            "position_embedding": false},
//     "pairs": [[3, 6], [6, 12], ...],   // (anchor depth, augmenting depth)
//     "heads": 8                         // divides the anchor width
//   }
// Parameter names (under "ftz." in a LLaVA checkpoint):
//   augmenting_encoder.vision_model.*             (CLIP-style ViT, transformers names)
//   augmenting_encoder.{stem, layers.<l>.{norm, conv}}.*   (conv encoder)
//   augmenting_encoder.position_embedding          [g*g, D]  (conv, "position_embedding": true)
//   fusions.<k>.proj.{weight, bias}                [Da, Dg] / [Da]
//   fusions.<k>.attn.{in_proj_weight, in_proj_bias} [3 Da, Da] / [3 Da]   (torch MultiheadAttention)
//   fusions.<k>.attn.out_proj.{weight, bias}        [Da, Da] / [Da]
//
// The augmenting encoder sees the anchor's pixel_values, resized (bilinear) when its
// image_size differs.
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include "core/json_util.h"
#include "diffusion/clip.h"

namespace iris {

// ---------------------------------------------------------------------------------------------
// A vision encoder seen as a stack of layers over tokens (what FtZ fuses through).

class LayeredVisionEncoder {
 public:
  virtual ~LayeredVisionEncoder() = default;
  virtual int64_t num_layers() const = 0;
  virtual int64_t hidden_size() const = 0;
  virtual int64_t image_size() const = 0;
  // pixel_values [B, C, S, S] -> hidden_states[0]: [B, N, D]
  virtual at::Tensor embed(const at::Tensor& pixel_values) = 0;
  // Layer i (0-based): hidden_states[i] -> hidden_states[i + 1], [B, N, D] -> [B, N, D].
  virtual at::Tensor layer(int64_t i, const at::Tensor& x) = 0;
  // hidden_states[0 .. n] (n + 1 tensors): the first n layers run.
  std::vector<at::Tensor> hidden_states(const at::Tensor& pixel_values, int64_t n);
};

// A CLIP vision tower as a layer stack (the anchor, or a CLIP-style augmenting encoder).
// Shares the module; hidden_states follow transformers (embeddings after pre_layrnorm first).
class ClipLayeredEncoder : public LayeredVisionEncoder {
 public:
  explicit ClipLayeredEncoder(ClipVisionModel model) : model_(std::move(model)) {}
  int64_t num_layers() const override { return model_->config().num_hidden_layers; }
  int64_t hidden_size() const override { return model_->config().hidden_size; }
  int64_t image_size() const override { return model_->config().image_size; }
  at::Tensor embed(const at::Tensor& pixel_values) override;
  at::Tensor layer(int64_t i, const at::Tensor& x) override;

 private:
  ClipVisionModel model_;
};

// A small convolutional encoder: a patchifying stem, then residual blocks
// x + conv3x3(gelu(groupnorm(x))); tokens are the feature map's positions, row-major.
struct ConvEncoderConfig {
  int64_t num_channels = 3;
  int64_t image_size = 224;
  int64_t patch_size = 16;
  int64_t hidden_size = 256;
  int64_t num_layers = 4;
  int64_t norm_groups = 8;
  // A learned embedding per token position, added after the stem ("position_embedding" [g*g, D],
  // g = image_size / patch_size). Convolutions alone barely know where a token is, and FtZ's
  // cross-attention can then only match anchor and augmenting tokens by content.
  bool position_embedding = false;
  static ConvEncoderConfig from_json(const Json& j, const std::string& what);
  void validate(const std::string& what) const;
};

class ConvVisionEncoderImpl : public torch::nn::Module, public LayeredVisionEncoder {
 public:
  explicit ConvVisionEncoderImpl(const ConvEncoderConfig& cfg);
  int64_t num_layers() const override { return cfg_.num_layers; }
  int64_t hidden_size() const override { return cfg_.hidden_size; }
  int64_t image_size() const override { return cfg_.image_size; }
  at::Tensor embed(const at::Tensor& pixel_values) override;  // [B, C, S, S] -> [B, (S/P)^2, D]
  at::Tensor layer(int64_t i, const at::Tensor& x) override;

  torch::nn::Conv2d stem{nullptr};
  torch::nn::ModuleList layers{nullptr};  // layers.<i>.norm (GroupNorm), layers.<i>.conv (3x3)
  at::Tensor position_embedding;          // [g*g, D], defined with cfg.position_embedding

 private:
  ConvEncoderConfig cfg_;
  std::vector<torch::nn::GroupNorm> norms_;
  std::vector<torch::nn::Conv2d> convs_;
};
TORCH_MODULE(ConvVisionEncoder);

// ---------------------------------------------------------------------------------------------
// Config

struct FtzConfig {
  Json augmenting_encoder;                         // the encoder's config (model_type selects it)
  std::vector<std::pair<int64_t, int64_t>> pairs;  // (anchor depth i, augmenting depth j), i increasing
  int64_t heads = 8;

  // `what` names the source in errors. Checks the block's own form (pairs, heads, encoder type).
  static FtzConfig from_json(const Json& j, const std::string& what);
  Json to_json() const;
  // Checks depths and widths against the encoders (ConfigError naming the pair / key).
  void validate(int64_t anchor_layers, int64_t anchor_dim, int64_t aug_layers, const std::string& what) const;
  std::string augmenting_type() const;  // "clip_vision_model" or "conv"
};

// ---------------------------------------------------------------------------------------------
// Modules

// One fusion site: anchor + out_proj(MHA(anchor, proj(aug))). The attention is
// torch.nn.MultiheadAttention's (packed in_proj, biases, dropout 0).
class FtzCrossAttentionImpl : public torch::nn::Module {
 public:
  FtzCrossAttentionImpl(int64_t anchor_dim, int64_t aug_dim, int64_t heads);
  // anchor: [B, Na, Da], aug: [B, Nb, Dg] -> [B, Na, Da]
  at::Tensor forward(const at::Tensor& anchor, const at::Tensor& aug);
  // The attention term alone (before the residual): [B, Na, Da].
  at::Tensor attend(const at::Tensor& anchor, const at::Tensor& aug);

  torch::nn::Linear proj{nullptr};
  struct Attn : torch::nn::Module {
    at::Tensor in_proj_weight, in_proj_bias;
    torch::nn::Linear out_proj{nullptr};
  };
  std::shared_ptr<Attn> attn;

 private:
  int64_t heads_, head_dim_;
};
TORCH_MODULE(FtzCrossAttention);

class FtzFusionImpl : public torch::nn::Module {
 public:
  // The anchor's layer count and width size the fusions; validates the config against them.
  FtzFusionImpl(const FtzConfig& cfg, int64_t anchor_layers, int64_t anchor_dim);

  // The anchor's hidden_states[index] (Python-style index, as vision_feature_layer) with the
  // fusions at depths <= the index applied. Runs only the layers it needs, of both encoders.
  at::Tensor hidden_state(LayeredVisionEncoder& anchor, const at::Tensor& pixel_values, int64_t index);
  // Every fused anchor hidden state (num_layers + 1 tensors), for tests and inspection.
  std::vector<at::Tensor> hidden_states(LayeredVisionEncoder& anchor, const at::Tensor& pixel_values);

  LayeredVisionEncoder& augmenting() { return *aug_; }
  FtzCrossAttention fusion(size_t k) const { return fusion_list_.at(k); }
  size_t num_fusions() const { return fusion_list_.size(); }
  const FtzConfig& config() const { return cfg_; }
  // Random init (normal(0, std) weights, zero biases, unit norms) of the fusions and the
  // augmenting encoder; with zero_out_proj the fusions start as the identity.
  void init_weights(uint64_t seed, double std = 0.02, bool zero_out_proj = false);

  std::shared_ptr<torch::nn::Module> augmenting_encoder;  // registered as "augmenting_encoder"
  torch::nn::ModuleList fusions{nullptr};

 private:
  // Runs the anchor to depth `depth` (0..num_layers) applying the fusions on the way; with
  // `all`, collects every state.
  at::Tensor run(LayeredVisionEncoder& anchor, const at::Tensor& pixel_values, int64_t depth,
                 std::vector<at::Tensor>* all);

  FtzConfig cfg_;
  std::shared_ptr<LayeredVisionEncoder> aug_;
  std::vector<FtzCrossAttention> fusion_list_;
};
TORCH_MODULE(FtzFusion);

}  // namespace iris
