#include "core/attention.h"

#include <ATen/Context.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/torch_compat.h"

namespace iris {

namespace {

// Score matrices up to this many elements are computed whole (one batched matmul); larger
// ones in row chunks of about kChunkElements per (batch, head), so the [B*H, Lq, Lk] matrix
// (1 GiB at 4096 tokens, batch 2, 8 heads) never exists and each chunk stays in cache.
constexpr int64_t kWholeElements = int64_t(1) << 22;
constexpr int64_t kChunkElements = int64_t(1) << 20;
// oneDNN path: scores of all heads for a block of query rows, about this many elements (32 MB).
constexpr int64_t kOneDnnChunkElements = int64_t(1) << 23;

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

// True when `t` broadcasts to `shape` without growing it.
bool broadcasts_to(const at::Tensor& t, at::IntArrayRef shape) {
  if (t.dim() > static_cast<int64_t>(shape.size())) return false;
  for (int64_t i = 1; i <= t.dim(); ++i)
    if (t.size(-i) != 1 && t.size(-i) != shape[shape.size() - i]) return false;
  return true;
}

// Softmax over the last dim of `scores`, in place, after scaling, masking. `scores` holds
// q k^T (unscaled when scale != 1). Fully masked rows become 0.
void masked_softmax_(at::Tensor& scores, const at::Tensor& additive, const at::Tensor& causal_keep) {
  if (additive.defined()) scores.add_(additive);
  if (causal_keep.defined()) scores.masked_fill_(causal_keep.logical_not(), -std::numeric_limits<float>::infinity());
  at::_softmax_out(scores, scores, -1, false);
  // A row with every key masked is NaN after softmax; it attends to nothing.
  if (additive.defined() || causal_keep.defined()) scores.nan_to_num_(0.0);
}

// Autograd cannot go through the in-place and out= ops below.
bool needs_grad(const at::Tensor& a, const at::Tensor& b, const at::Tensor* c = nullptr) {
  return at::GradMode::is_enabled() && (a.requires_grad() || b.requires_grad() || (c && c->requires_grad()));
}

// Whole-matrix path for small problems: one batched matmul, in-place scale/mask/softmax.
at::Tensor weights_whole(const at::Tensor& q, const at::Tensor& k, const AttentionOptions& opt,
                         const at::Tensor& additive) {
  // matmul, not baddbmm: baddbmm(beta=0) reads uninitialised memory on 1.13 CPU (NOTES.md).
  at::Tensor scores = at::matmul(q, k.transpose(-2, -1));
  at::Tensor keep = opt.causal ? causal_mask(q.size(-2), k.size(-2), q.options()) : at::Tensor();
  if (needs_grad(q, k) || (additive.defined() && !broadcasts_to(additive, scores.sizes())) ||
      (keep.defined() && !broadcasts_to(keep, scores.sizes()))) {
    // Autograd, or a mask wider than q k^T (it broadcasts the batch or heads up): out of place.
    scores = scores * effective_scale(q, opt);
    if (additive.defined()) scores = scores + additive;
    if (keep.defined()) scores = scores.masked_fill(keep.logical_not(), -std::numeric_limits<float>::infinity());
    return at::nan_to_num(at::softmax(scores, -1), 0.0);
  }
  scores.mul_(effective_scale(q, opt));
  masked_softmax_(scores, additive, keep);
  return scores;
}

// Row-chunked path: per (batch, head) and block of query rows, scores = (scale q) k^T into one
// reused buffer, softmax in place, then the rows of the output straight into their place in a
// [B, Lq, H, Dv] tensor (so merging heads afterwards is a view). Returns [B, H, Lq, Dv].
at::Tensor attention_chunked(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionOptions& opt,
                             const at::Tensor& additive) {
  const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), Lk = k.size(2), Dv = v.size(3);
  const double scale = effective_scale(q, opt);
  const at::Tensor qs = scale == 1.0 ? q : q * scale;  // [B, H, Lq, D]: scaling q is cheaper than the scores
  at::Tensor out = at::empty({B, Lq, H, Dv}, q.options());
  const int64_t rows = std::max<int64_t>(1, std::min<int64_t>(Lq, kChunkElements / std::max<int64_t>(Lk, 1)));
  at::Tensor buffer = at::empty({rows, Lk}, q.options());
  at::Tensor mask4 = additive.defined() ? additive.expand({B, H, Lq, Lk}) : at::Tensor();
  at::Tensor key_pos = opt.causal ? at::arange(Lk, q.options().dtype(at::kLong)).unsqueeze(0) : at::Tensor();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      const at::Tensor qb = qs.select(0, b).select(0, h);                                          // [Lq, D]
      const at::Tensor kt = k.select(0, k.size(0) == 1 ? 0 : b).select(0, k.size(1) == 1 ? 0 : h).t();  // [D, Lk]
      const at::Tensor vb = v.select(0, v.size(0) == 1 ? 0 : b).select(0, v.size(1) == 1 ? 0 : h);      // [Lk, Dv]
      at::Tensor ob = out.select(0, b).select(1, h);                                              // [Lq, Dv]
      for (int64_t r0 = 0; r0 < Lq; r0 += rows) {
        const int64_t n = std::min(rows, Lq - r0);
        at::Tensor s = buffer.narrow(0, 0, n);
        at::mm_out(s, qb.narrow(0, r0, n), kt);
        at::Tensor add = mask4.defined() ? mask4.select(0, b).select(0, h).narrow(0, r0, n) : at::Tensor();
        at::Tensor keep;
        if (opt.causal)  // query r sits at key position r + Lk - Lq
          keep = key_pos <= at::arange(r0 + Lk - Lq, r0 + Lk - Lq + n, key_pos.options()).unsqueeze(1);
        masked_softmax_(s, add, keep);
        at::Tensor o = ob.narrow(0, r0, n);
        at::mm_out(o, s, vb);
      }
    }
  }
  return out.transpose(1, 2);
}

// oneDNN path for float tensors on the CPU. Debian's LibTorch 1.13 multiplies matrices with
// OpenBLAS's AVX2 kernels, which run the thin products of attention (head dims 40-160) slowly,
// while its convolutions go through oneDNN's AVX-512 kernels. Per batch item and block of m
// query rows, both products are grouped 1x1 convolutions (one group per head) over channels-last
// views: the queries [m, H*D] row-major are a [1, H*D, m, 1] channels-last image;
// with K as the [H*Lk, D, 1, 1] weight the output is [1, H*Lk, m, 1] channels-last, i.e. the
// scores [m, H, Lk] row-major, softmaxed in place; with V^T as the [H*Dv, Lk, 1, 1] weight
// that gives [m, H*Dv], the rows of the merged-heads output. Measured here (SD1.5 level-0
// self-attention, 2 x 8 heads x 4096 tokens): ~30-40% less CPU time than the row-chunked
// OpenBLAS path below. Returns [B, H, Lq, Dv] (a view of a [B, Lq, H, Dv] tensor).
bool onednn_usable(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  for (const at::Tensor* t : {&q, &k, &v})
    if (!t->is_cpu() || t->scalar_type() != at::kFloat) return false;
  return at::hasMKLDNN() && at::globalContext().userEnabledMkldnn();
}

at::Tensor attention_onednn(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionOptions& opt,
                            const at::Tensor& additive) {
  const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), D = q.size(3), Lk = k.size(2), Dv = v.size(3);
  const double scale = effective_scale(q, opt);
  at::Tensor out = at::empty({B, Lq, H * Dv}, q.options());
  const int64_t rows = std::max<int64_t>(1, std::min<int64_t>(Lq, kOneDnnChunkElements / std::max<int64_t>(H * Lk, 1)));
  at::Tensor mask4 = additive.defined() ? additive.expand({B, H, Lq, Lk}) : at::Tensor();
  at::Tensor key_pos = opt.causal ? at::arange(Lk, q.options().dtype(at::kLong)) : at::Tensor();
  const std::array<int64_t, 1> one_{1}, zero_{0};  // stride / dilation 1, padding 0
  const at::IntArrayRef one(one_), zero(zero_);
  for (int64_t b = 0; b < B; ++b) {
    // [Lq, H, D] row-major, scaled (scaling q is cheaper than scaling the scores).
    at::Tensor qb = at::empty({Lq, H, D}, q.options());
    qb.copy_(q.select(0, b).transpose(0, 1));
    if (scale != 1.0) qb.mul_(scale);
    const at::Tensor kw = k.select(0, k.size(0) == 1 ? 0 : b).expand({H, Lk, D}).contiguous().view({H * Lk, D, 1, 1});
    const at::Tensor vw =
        v.select(0, v.size(0) == 1 ? 0 : b).expand({H, Lk, Dv}).transpose(1, 2).contiguous().view({H * Dv, Lk, 1, 1});
    for (int64_t r0 = 0; r0 < Lq; r0 += rows) {
      const int64_t m = std::min(rows, Lq - r0);
      at::Tensor qi = qb.as_strided({1, H * D, m, 1}, {m * H * D, 1, H * D, H * D}, qb.storage_offset() + r0 * H * D);
      at::Tensor s = at::conv2d(qi, kw, at::Tensor(), one, zero, one, H).permute({0, 2, 3, 1}).reshape({m, H, Lk});
      at::Tensor add = mask4.defined() ? mask4.select(0, b).narrow(1, r0, m).transpose(0, 1) : at::Tensor();
      at::Tensor keep;
      if (opt.causal)  // query r sits at key position r + Lk - Lq
        keep = (key_pos.unsqueeze(0) <= at::arange(r0 + Lk - Lq, r0 + Lk - Lq + m, key_pos.options()).unsqueeze(1))
                   .unsqueeze(1);  // [m, 1, Lk]
      masked_softmax_(s, add, keep);
      at::Tensor pi = s.as_strided({1, H * Lk, m, 1}, {m * H * Lk, 1, H * Lk, H * Lk}, s.storage_offset());
      at::Tensor o = at::conv2d(pi, vw, at::Tensor(), one, zero, one, H);  // [1, H*Dv, m, 1]
      out.select(0, b).narrow(0, r0, m).copy_(o.permute({0, 2, 3, 1}).reshape({m, H * Dv}));
    }
  }
  return out.view({B, Lq, H, Dv}).transpose(1, 2);
}

}  // namespace

at::Tensor attention_weights(const at::Tensor& q, const at::Tensor& k, const AttentionOptions& opt) {
  check_shapes(q, k, nullptr);
  return weights_whole(q, k, opt, opt.mask ? as_additive(*opt.mask, q.scalar_type()) : at::Tensor());
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
  at::Tensor additive = opt.mask ? as_additive(*opt.mask, q.scalar_type()) : at::Tensor();
  const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), Lk = k.size(2);
  auto fits = [&](const at::Tensor& t) {  // k / v / mask broadcast into [B, H, *, *] without growing it
    return (t.size(0) == B || t.size(0) == 1) && (t.size(1) == H || t.size(1) == 1);
  };
  const bool chunk = !needs_grad(q, k, &v) && B * H * Lq * Lk > kWholeElements && fits(k) && fits(v) && q.scalar_type() == k.scalar_type() &&
                     q.scalar_type() == v.scalar_type() &&
                     (!additive.defined() || broadcasts_to(additive, {B, H, Lq, Lk}));
  if (chunk) return onednn_usable(q, k, v) ? attention_onednn(q, k, v, opt, additive)
                                          : attention_chunked(q, k, v, opt, additive);
  return at::matmul(weights_whole(q, k, opt, additive), v);
}

bool attention_is_fused() {
#if IRIS_HAS_FUSED_SDPA
  return true;
#else
  return false;
#endif
}

}  // namespace iris
