#include "core/attention.h"

#include <cmath>

#include "core/error.h"
#include "core/torch_compat.h"

namespace iris {

namespace {

double effective_scale(const at::Tensor& q, const AttentionOptions& opt) {
  return opt.scale > 0 ? opt.scale : 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
}

void check_shapes(const at::Tensor& q, const at::Tensor& k, const at::Tensor* v) {
  if (q.dim() != 4 || k.dim() != 4 || (v && v->dim() != 4))
    throw ShapeError("attention expects [B, H, L, D] tensors, got q " + std::to_string(q.dim()) + "-d, k " +
                     std::to_string(k.dim()) + "-d");
  if (q.size(-1) != k.size(-1) || (v && k.size(-2) != v->size(-2)))
    throw ShapeError("attention: q/k head dims or k/v lengths differ");
}

// Causal mask aligned to the end: with a KV cache, Lk >= Lq and query i is at position Lk - Lq + i.
at::Tensor causal_mask(int64_t lq, int64_t lk, const at::TensorOptions& opts) {
  return at::ones({lq, lk}, opts.dtype(at::kBool)).tril(lk - lq);
}

at::Tensor as_additive(const at::Tensor& mask, at::ScalarType dtype) {
  if (mask.scalar_type() != at::kBool) return mask.to(dtype);
  return at::zeros(mask.sizes(), mask.options().dtype(dtype))
      .masked_fill(mask.logical_not(), -std::numeric_limits<float>::infinity());
}

}  // namespace

at::Tensor attention_weights(const at::Tensor& q, const at::Tensor& k, const AttentionOptions& opt) {
  check_shapes(q, k, nullptr);
  // matmul, not baddbmm: baddbmm(beta=0) reads uninitialised memory on 1.13 CPU (NOTES.md).
  at::Tensor scores = at::matmul(q, k.transpose(-2, -1)) * effective_scale(q, opt);
  if (opt.mask) scores = scores + as_additive(*opt.mask, scores.scalar_type());
  if (opt.causal)
    scores = scores.masked_fill(causal_mask(q.size(-2), k.size(-2), q.options()).logical_not(),
                                -std::numeric_limits<float>::infinity());
  at::Tensor w = at::softmax(scores, -1);
  // A row with every key masked is NaN after softmax; it attends to nothing.
  return at::nan_to_num(w, 0.0);
}

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionOptions& opt) {
  check_shapes(q, k, &v);
#if IRIS_HAS_FUSED_SDPA
  if (!opt.force_explicit) {
    c10::optional<at::Tensor> mask = opt.mask;
    bool causal = opt.causal;
    // The fused kernel's is_causal is top-left aligned and may not combine with a mask: with
    // a cache (Lk > Lq) or an extra mask, pass one end-aligned mask explicitly.
    if (causal && (q.size(-2) != k.size(-2) || mask)) {
      at::Tensor cm = causal_mask(q.size(-2), k.size(-2), q.options());
      mask = mask ? (as_additive(*mask, q.scalar_type()) + as_additive(cm, q.scalar_type())) : c10::optional<at::Tensor>(cm);
      causal = false;
    }
    return at::scaled_dot_product_attention(q, k, v, mask, 0.0, causal, effective_scale(q, opt));
  }
#endif
  return at::matmul(attention_weights(q, k, opt), v);
}

bool attention_is_fused() {
#if IRIS_HAS_FUSED_SDPA
  return true;
#else
  return false;
#endif
}

}  // namespace iris
