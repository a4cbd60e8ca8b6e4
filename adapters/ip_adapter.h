#pragma once
// IP-Adapter: an image prompt as extra tokens read by every cross-attention layer of the
// UNet through its own K/V projections (decoupled cross-attention, DESIGN.md).
//
// Canonical parameter names (ours): image_proj.* (the projection), layers.<i>.to_k_ip.weight /
// layers.<i>.to_v_ip.weight for the i-th attn2 layer in diffusers' attention-processor order
// (down blocks, up blocks, mid block last). Both released layouts load through rename tables:
//   original:  image_proj.{proj,norm}.*, ip_adapter.<2i+1>.to_{k,v}_ip.weight (Plus: image_proj.latents,
//              proj_in, proj_out, norm_out, layers.<j>.0.{norm1,norm2,to_q,to_kv,to_out}, layers.<j>.1.{0,1,3})
//   diffusers: encoder_hid_proj.image_projection_layers.0.*, <attn2 path>.processor.to_{k,v}_ip.0.weight
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "core/safetensors.h"
#include "diffusion/unet.h"

namespace iris {

// Base: image_embeds [B, D_img] -> Linear -> [B, T, C] -> LayerNorm. Names: image_embeds, norm.
struct IpImageProjectionImpl : torch::nn::Module {
  IpImageProjectionImpl(int64_t image_dim, int64_t tokens, int64_t cross_dim);
  at::Tensor forward(const at::Tensor& image_embeds);  // [B, D_img] -> [B, T, C]
  torch::nn::Linear image_embeds{nullptr};
  torch::nn::LayerNorm norm{nullptr};
  int64_t tokens, cross_dim;
};
TORCH_MODULE(IpImageProjection);

// Plus: a Perceiver resampler over CLIP's penultimate hidden states (diffusers
// IPAdapterPlusImageProjection names: latents, proj_in, layers.<j>.{ln0, ln1, attn, ff}, proj_out, norm_out).
struct IpResamplerImpl : torch::nn::Module {
  IpResamplerImpl(int64_t embed_dim, int64_t hidden, int64_t output_dim, int64_t depth, int64_t dim_head,
                  int64_t heads, int64_t num_queries, int64_t ffn_ratio);
  at::Tensor forward(const at::Tensor& hidden_states);  // [B, L, embed_dim] -> [B, num_queries, output_dim]
  at::Tensor latents;
  torch::nn::Linear proj_in{nullptr}, proj_out{nullptr};
  torch::nn::LayerNorm norm_out{nullptr};
  struct Block {
    torch::nn::LayerNorm ln0{nullptr}, ln1{nullptr}, ff_norm{nullptr};
    torch::nn::Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr}, to_out{nullptr}, ff_in{nullptr}, ff_out{nullptr};
  };
  std::vector<Block> blocks;
  int64_t heads, dim_head;
  std::vector<at::Tensor> inter;  // per-block latents of the last forward (parity debugging)
};
TORCH_MODULE(IpResampler);

enum class IpVariant { Base, Plus };

struct IpAdapterConfig {
  IpVariant variant = IpVariant::Base;
  int64_t image_dim = 1024;  // CLIP image_embeds width (base) or hidden width (Plus)
  int64_t tokens = 4;
  int64_t cross_dim = 768;
  // Plus only
  int64_t hidden = 768, depth = 4, dim_head = 64, heads = 12, ffn_ratio = 4;
  std::vector<int64_t> layer_dims;  // hidden width of each attn2 layer (to_k_ip out features)
};

class IpAdapterImpl : public torch::nn::Module {
 public:
  explicit IpAdapterImpl(const IpAdapterConfig& c);
  const IpAdapterConfig& config() const { return config_; }
  // Base: image_embeds [B, D_img]; Plus: penultimate hidden states [B, L, D]. -> [B, T, C]
  at::Tensor image_tokens(const at::Tensor& image_input);
  IpImageProjection base_proj{nullptr};
  IpResampler plus_proj{nullptr};
  std::vector<torch::nn::Linear> to_k_ip, to_v_ip;  // one per attn2 layer

 private:
  IpAdapterConfig config_;
};
TORCH_MODULE(IpAdapter);

// Reads an IP-Adapter from tensors in either release layout (keys may carry a prefix, e.g.
// "ipa_orig." or a UNet's own names); detects the variant from the keys and checks every
// layer against `unet`. Throws CheckpointError naming keys and shapes.
IpAdapter load_ip_adapter(const std::map<std::string, at::Tensor>& tensors, UNet2DCondition& unet,
                          const std::string& prefix, const std::string& what);
IpAdapter load_ip_adapter_file(const std::string& path, UNet2DCondition& unet);

// Writes the adapter in the original release layout (image_proj.*, ip_adapter.<2i+1>.*), which
// other tools read too; f16: F16 storage (the loader reads any float type).
void save_ip_adapter(IpAdapter& adapter, const std::string& path, bool f16 = false);

// Per-layer scale presets over the attn2 layers (SD1.5 order: down 0-5, mid 6, up 7-15 in
// execution order). "all": every layer; "style" / "composition" as ComfyUI defines them.
std::vector<double> ip_layer_scales(const std::string& preset, double scale, UNet2DCondition& unet);

// Attaches the adapter's tokens as a stream on every attn2 layer. tokens: [B, T, C] for the
// whole UNet batch (with CFG: [uncond; cond]). `scales` per layer (empty: `scale` everywhere).
// mask: optional [B, 1, H, W]. `owner` distinguishes several image prompts.
void attach_ip_adapter(IpAdapter& adapter, UNet2DCondition& unet, const at::Tensor& tokens, double scale,
                       const std::vector<double>& scales = {}, const at::Tensor& mask = {},
                       const std::string& owner = "ip_adapter");
// Removes every stream `owner` attached.
void detach_streams(UNet2DCondition& unet, const std::string& owner);

}  // namespace iris
