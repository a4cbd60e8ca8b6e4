#pragma once
// PokeFusion-style attention (arXiv 2602.03220; no public code): reference-free style
// conditioning. A style is a learned embedding (a few tokens), not a reference image; a compact
// projection turns it into style tokens in the text-token space, and the decoder's (up-block)
// cross-attention layers read those tokens through their own K/V projections, decoupled from
// the text:  out = attn(q, K_txt, V_txt) + strength * attn(q, K_style, V_style)  (DESIGN.md).
// The UNet stays frozen; the bank, the projection and the decoder K/V are trained.
//
// Choices (the paper publishes no sizes; these are ours):
//   - a style embedding is K = 4 tokens of width E = 64 (`tokens`, `embed_dim`);
//   - projection (per token): fc1 Linear(E -> hidden 256) -> GELU -> fc2 Linear(hidden -> C)
//     -> LayerNorm(C), C = the UNet's cross_attention_dim: K style tokens [B, K, C];
//   - style K/V on the up-block attn2 layers only, bias-free Linear(C -> layer width),
//     initialised as copies of the layer's to_k / to_v (the IP-Adapter recipe);
//   - classifier-free guidance: the unconditional branch has NO style (the stream is gated off
//     for those rows; training drops the style the same way), so guidance pushes toward the style
//     as it does toward the prompt.
//
// Files:
//   adapter (one file): parameters style_bank.embeddings [N, K, E], style_proj.fc1.{weight,bias},
//     style_proj.fc2.{weight,bias}, style_proj.norm.{weight,bias}, layers.<j>.to_k_style.weight,
//     layers.<j>.to_v_style.weight (j-th decoder attn2 layer in attention-processor order);
//     metadata "iris.adapter" = "style", "iris.config" = StyleAdapterConfig as JSON (style
//     names in bank order, sizes, the attn2 layer indices and widths).
//   a style (styles/NAME.safetensors, small and shareable): tensor "style.embedding" [K, E];
//     metadata "iris.style" = NAME, "iris.embed_dim", "iris.tokens", optional "description".
// Loading is strict: unknown or missing keys and wrong shapes throw CheckpointError.
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "core/json_util.h"
#include "diffusion/unet.h"

namespace iris {

struct StyleAdapterConfig {
  int64_t tokens = 4;        // K: tokens per style
  int64_t embed_dim = 64;    // E: width of a style embedding token
  int64_t hidden = 256;      // projection MLP width
  int64_t cross_dim = 768;   // C: the UNet's cross_attention_dim
  std::vector<std::string> styles;   // bank entries (N), in order
  std::vector<int64_t> layers;       // attn2 indices (processor order): the decoder's
  std::vector<int64_t> layer_widths; // their hidden widths (style K/V out features)

  Json to_json() const;
  // Throws FormatError naming `what` and the key.
  static StyleAdapterConfig from_json(const Json& j, const std::string& what);
};

// Style embedding -> style tokens. Names: fc1, fc2, norm.
struct StyleProjectionImpl : torch::nn::Module {
  StyleProjectionImpl(int64_t embed_dim, int64_t hidden, int64_t cross_dim);
  at::Tensor forward(const at::Tensor& embeddings);  // [B, K, E] -> [B, K, C]
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  torch::nn::LayerNorm norm{nullptr};
};
TORCH_MODULE(StyleProjection);

class StyleAdapterImpl : public torch::nn::Module {
 public:
  explicit StyleAdapterImpl(const StyleAdapterConfig& c);
  const StyleAdapterConfig& config() const { return config_; }
  // Index of a bank style, or -1.
  int find_style(const std::string& name) const;
  // [K, E] embedding of a bank style; ConfigError listing the known names when unknown.
  at::Tensor bank_embedding(const std::string& name) const;
  // embeddings [B, K, E] -> style tokens [B, K, C]
  at::Tensor style_tokens(const at::Tensor& embeddings);

  at::Tensor bank;  // "style_bank.embeddings" [N, K, E]
  StyleProjection style_proj{nullptr};
  std::vector<torch::nn::Linear> to_k_style, to_v_style;  // one per decoder attn2 layer

 private:
  StyleAdapterConfig config_;
};
TORCH_MODULE(StyleAdapter);

// A new adapter for `unet` with a bank of `styles` (random N(0, 1/E) embeddings), the
// projection initialised at random, style K/V copied from the decoder layers' to_k / to_v.
StyleAdapter make_style_adapter(UNet2DCondition& unet, const std::vector<std::string>& styles,
                                StyleAdapterConfig sizes = {});

void save_style_adapter(StyleAdapter& adapter, const std::string& path);
// Strict: checks the file's layers against the UNet. CheckpointError / FormatError naming the file.
StyleAdapter load_style_adapter(const std::string& path, UNet2DCondition& unet);

// One shareable style.
struct StyleFile {
  std::string name;
  at::Tensor embedding;  // [K, E]
  std::string description;
};
void save_style(const std::string& path, const StyleFile& style);
// Throws FormatError for an empty file, a missing "style.embedding", unknown tensors or a
// non-finite embedding.
StyleFile load_style(const std::string& path);
// Writes every bank style as <dir>/<name>.safetensors.
void export_bank_styles(StyleAdapter& adapter, const std::string& dir);

// Resolves `spec`: a path to a .safetensors style file, a bank style's name, or NAME found as
// styles/NAME.safetensors next to the adapter file (`adapter_path`). Checks its size against
// the adapter. ConfigError (naming the known styles) when nothing matches.
StyleFile resolve_style(StyleAdapter& adapter, const std::string& spec, const std::string& adapter_path);

// Attaches the style stream (owner "style") to the decoder attn2 layers. tokens: [B_unet, K, C];
// rows: which UNet batch rows get the style (cfg_rows(batch, guided) at inference).
void attach_style(StyleAdapter& adapter, UNet2DCondition& unet, const at::Tensor& tokens, double strength,
                  const std::vector<bool>& rows);
void detach_style(UNet2DCondition& unet);

}  // namespace iris
