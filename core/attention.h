#pragma once
// Scaled dot-product attention, the one helper every network calls.
// Fused kernel on LibTorch >= 2.1 (no weights materialised); explicit matmul-softmax
// elsewhere, and whenever the caller needs the post-softmax weights.
#include <ATen/ATen.h>

namespace iris {

struct AttentionOptions {
  // Additive float mask broadcastable to [B, H, Lq, Lk], or a bool mask (true = attend).
  c10::optional<at::Tensor> mask;
  bool causal = false;          // query i sees keys j <= i + (Lk - Lq) (cache-aware)
  double scale = 0.0;           // 0: 1/sqrt(head_dim)
  bool force_explicit = false;  // always take the matmul-softmax path
};

// q: [B, H, Lq, D], k/v: [B, H, Lk, D] -> [B, H, Lq, D]
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionOptions& opt = {});

// Post-softmax weights: [B, H, Lq, Lk] (rows sum to 1; fully masked rows are 0).
at::Tensor attention_weights(const at::Tensor& q, const at::Tensor& k, const AttentionOptions& opt = {});

// True when attention() uses a fused kernel in this build.
bool attention_is_fused();

}  // namespace iris
