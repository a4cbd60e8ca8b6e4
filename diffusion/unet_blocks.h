#pragma once
// Building blocks of diffusers' UNet2DConditionModel and AutoencoderKL, registered under the
// diffusers module names (resnets.0.norm1, attentions.0.transformer_blocks.0.attn2.to_k, ...).
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

namespace iris {

// Optional recording of intermediate outputs by module path (parity debugging).
using Recorder = std::map<std::string, at::Tensor>;

// Sinusoidal timestep embedding (diffusers get_timestep_embedding).
// t: [B] -> [B, dim]
at::Tensor timestep_embedding(const at::Tensor& t, int64_t dim, bool flip_sin_to_cos, double freq_shift,
                              double max_period = 10000.0);

// linear_1 -> SiLU -> linear_2
struct TimestepEmbeddingImpl : torch::nn::Module {
  TimestepEmbeddingImpl(int64_t in, int64_t dim);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::Linear linear_1{nullptr}, linear_2{nullptr};
};
TORCH_MODULE(TimestepEmbedding);

struct ResnetBlock2DImpl : torch::nn::Module {
  // temb_channels <= 0: no time embedding (VAE).
  ResnetBlock2DImpl(int64_t in, int64_t out, int64_t temb_channels, int64_t groups, double eps,
                    double output_scale_factor = 1.0);
  // x: [B, in, H, W], temb: [B, temb] or undefined -> [B, out, H, W]
  at::Tensor forward(const at::Tensor& x, const at::Tensor& temb = {});
  torch::nn::GroupNorm norm1{nullptr}, norm2{nullptr};
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv_shortcut{nullptr};
  torch::nn::Linear time_emb_proj{nullptr};
  double output_scale_factor;
};
TORCH_MODULE(ResnetBlock2D);

struct Downsample2DImpl : torch::nn::Module {
  // padding 1: symmetric (UNet); padding 0: pad right/bottom by 1 first (VAE encoder).
  Downsample2DImpl(int64_t channels, int64_t padding);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::Conv2d conv{nullptr};
  int64_t padding;
};
TORCH_MODULE(Downsample2D);

struct Upsample2DImpl : torch::nn::Module {
  explicit Upsample2DImpl(int64_t channels);
  // Nearest 2x, or to `size` ({H, W}) when the skip connection is odd-sized.
  at::Tensor forward(const at::Tensor& x, c10::optional<std::vector<int64_t>> size = c10::nullopt);
  torch::nn::Conv2d conv{nullptr};
};
TORCH_MODULE(Upsample2D);

// One decoupled conditioning stream read by a cross-attention layer (DESIGN.md): adapter
// tokens with the adapter's own K/V projections for this layer. The layer adds
//   scale * mask * attn(q, to_k(tokens), to_v(tokens))
// to its text attention before to_out. Adapters own the projections (their names, their
// checkpoints); the layer only holds the stream while the adapter is attached.
struct AttentionStream {
  std::string owner;                        // which adapter attached it ("ip_adapter.0", "style", ...)
  torch::nn::Linear to_k{nullptr}, to_v{nullptr};
  at::Tensor tokens;                        // [B, N, D_s] (with CFG: [uncond; cond] along B)
  double scale = 1.0;                       // this layer's scale; 0 skips the stream entirely
  at::Tensor mask;                          // optional [B, 1, Hm, Wm] in [0, 1], resized per layer
  at::Tensor key_mask;                      // optional [B, N] bool: false = token ignored (e.g. a
                                            // missing joint); every row needs one true entry
};

// diffusers Attention: to_q/to_k/to_v (bias optional), to_out.0; multi-head SDPA.
struct AttentionImpl : torch::nn::Module {
  AttentionImpl(int64_t query_dim, int64_t context_dim, int64_t heads, int64_t head_dim, bool bias);
  // x: [B, Lq, query_dim], context: [B, Lk, context_dim] (undefined: self-attention)
  at::Tensor forward(const at::Tensor& x, const at::Tensor& context = {});
  torch::nn::Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr};
  torch::nn::ModuleList to_out;
  torch::nn::Linear out_proj{nullptr};  // = to_out[0]
  int64_t heads, head_dim;
  // Decoupled cross-attention streams; empty (or all scale 0) = the plain layer, bit for bit.
  std::vector<std::shared_ptr<AttentionStream>> streams;
};
TORCH_MODULE(Attention);

// A [B, 1, Hm, Wm] mask brought to a layer's L = h*w token grid (h/w close to Hm/Wm),
// nearest-exact, as [B, L, 1] for broadcasting over the attention output.
at::Tensor mask_for_tokens(const at::Tensor& mask, int64_t tokens);

// GEGLU feed-forward: net.0.proj (dim -> 2*inner), gelu gate, net.2 (inner -> dim).
struct FeedForwardImpl : torch::nn::Module {
  FeedForwardImpl(int64_t dim, int64_t mult);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::Linear proj{nullptr}, out{nullptr};
};
TORCH_MODULE(FeedForward);

struct BasicTransformerBlockImpl : torch::nn::Module {
  BasicTransformerBlockImpl(int64_t dim, int64_t heads, int64_t head_dim, int64_t cross_dim, bool only_cross_attention);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& context, Recorder* rec, const std::string& path);
  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr}, norm3{nullptr};
  Attention attn1{nullptr}, attn2{nullptr};
  FeedForward ff{nullptr};
  bool only_cross_attention;
};
TORCH_MODULE(BasicTransformerBlock);

// Transformer2DModel (continuous input): GroupNorm, proj_in (1x1 conv or linear),
// transformer blocks, proj_out, residual.
struct Transformer2DImpl : torch::nn::Module {
  Transformer2DImpl(int64_t channels, int64_t heads, int64_t layers, int64_t cross_dim, int64_t groups,
                    bool use_linear_projection, bool only_cross_attention);
  // x: [B, C, H, W], context: [B, L, cross_dim]
  at::Tensor forward(const at::Tensor& x, const at::Tensor& context, Recorder* rec, const std::string& path);
  torch::nn::GroupNorm norm{nullptr};
  torch::nn::Conv2d proj_in_conv{nullptr}, proj_out_conv{nullptr};
  torch::nn::Linear proj_in_linear{nullptr}, proj_out_linear{nullptr};
  std::vector<BasicTransformerBlock> blocks;
  bool linear;
};
TORCH_MODULE(Transformer2D);

// VAE mid-block attention (diffusers Attention with group_norm and residual_connection):
// heads of head_dim over all pixels; names group_norm, to_q, to_k, to_v, to_out.0.
struct SpatialSelfAttentionImpl : torch::nn::Module {
  SpatialSelfAttentionImpl(int64_t channels, int64_t groups, double eps, int64_t head_dim);
  // x: [B, C, H, W] -> [B, C, H, W]
  at::Tensor forward(const at::Tensor& x);
  torch::nn::GroupNorm group_norm{nullptr};
  torch::nn::Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr}, out_proj{nullptr};
  torch::nn::ModuleList to_out;
  int64_t heads;
};
TORCH_MODULE(SpatialSelfAttention);

}  // namespace iris
