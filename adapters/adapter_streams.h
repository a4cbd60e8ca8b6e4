#pragma once
// Helpers shared by the token-stream adapters (PokeFusion style attention, SK-Adapter): which
// attn2 layers a stream touches, attaching per-layer K/V projections as AttentionStreams, the
// per-row gate that switches a stream off in the unconditional half of a CFG batch, and the
// strict adapter-file format (tensors + a JSON config in the safetensors metadata).
#include <map>
#include <string>
#include <vector>

#include <torch/nn/modules/linear.h>

#include "core/json_util.h"
#include "diffusion/unet.h"

namespace iris {

// Indices (attention-processor order) of the attn2 layers in the UNet's up blocks (decoder).
std::vector<int64_t> decoder_cross_attention_layers(UNet2DCondition& unet);
// All attn2 layers: 0, 1, ..., n-1.
std::vector<int64_t> all_cross_attention_layers(UNet2DCondition& unet);
// Hidden width (to_q output features) of each listed attn2 layer.
std::vector<int64_t> cross_attention_widths(UNet2DCondition& unet, const std::vector<int64_t>& layers);

// Sets stream K/V projections (one per listed layer, bias-free cross_dim -> width) to copies of
// the layers' own to_k / to_v weights (IP-Adapter's recipe; the stream tokens live in the
// text-token space, so the copy starts them reading like the text path).
void copy_layer_kv(UNet2DCondition& unet, const std::vector<int64_t>& layers,
                   const std::vector<torch::nn::Linear>& to_k, const std::vector<torch::nn::Linear>& to_v);

// [B, 1, 1, 1] float: 0 for the rows where `on` is false, 1 elsewhere (undefined when every row
// is on: no gate needed). Used as a stream's
// `mask`, it switches the stream off for those rows (the unconditional CFG half, dropped
// conditions in training): term * 0 adds +0 to the text attention, leaving it unchanged.
at::Tensor row_gate(const std::vector<bool>& on, const c10::Device& device);
// The CFG layout [uncond x batch; cond x batch] when `guided`, else all rows on.
std::vector<bool> cfg_rows(int batch, bool guided);

// What attach_token_stream puts on a layer (everything but the projections).
struct StreamInputs {
  at::Tensor tokens;    // [B, N, C]
  at::Tensor gate;      // optional [B, 1, 1, 1] (row_gate)
  at::Tensor key_mask;  // optional [B, N] bool
};

// Attaches one stream per listed layer: layers[i] gets to_k[i] / to_v[i] and scales[i]
// (scales.size() == 1: the same scale everywhere). Any stream of `owner` is removed first.
void attach_token_stream(UNet2DCondition& unet, const std::string& owner, const std::vector<int64_t>& layers,
                         const std::vector<torch::nn::Linear>& to_k, const std::vector<torch::nn::Linear>& to_v,
                         const StreamInputs& inputs, const std::vector<double>& scales);

// ---- adapter files ------------------------------------------------------------------------
// A safetensors file whose metadata holds "iris.adapter" = kind and "iris.config" = the
// adapter's config as JSON; the tensors are the module's parameters under their own names.

void save_adapter_file(const std::string& path, torch::nn::Module& module, const std::string& kind,
                       const Json& config, const std::map<std::string, std::string>& extra_metadata = {});
// The config of an adapter file of this kind. Throws IoError / FormatError (not an Iris adapter
// file, another kind, bad JSON) naming the file.
Json read_adapter_config(const std::string& path, const std::string& kind);
// Loads the file's tensors into `module` strictly (missing, unexpected or mis-shaped keys throw
// CheckpointError naming the file, key and shapes), sets eval mode and moves it to the UNet's device.
void load_adapter_weights(torch::nn::Module& module, const std::string& path, UNet2DCondition& unet);

// Required JSON arrays of an adapter config; FormatError naming `what` and the key.
std::vector<int64_t> json_int_list(const Json& j, const std::string& key, const std::string& what);
std::vector<std::string> json_string_list(const Json& j, const std::string& key, const std::string& what);

// Checks an adapter file's layers (attn2 indices), their widths and its cross-attention width
// against the UNet, whose attn2 layers `expected` the adapter must cover. CheckpointError naming
// `what` when they differ.
void check_adapter_layers(const std::vector<int64_t>& layers, const std::vector<int64_t>& layer_widths,
                          int64_t cross_dim, UNet2DCondition& unet, const std::vector<int64_t>& expected,
                          const std::string& what);

}  // namespace iris
