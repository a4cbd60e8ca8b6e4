#pragma once
// Attention hooks for the decoder (DESIGN.md "Attention hooks in the VLM").
//
// Decoder attention has two paths. Without hooks it takes the fast path (a fused kernel on
// LibTorch >= 2.1; on 1.13 an in-place matmul-softmax that never exposes its weights). When a
// hook wants a layer, that layer takes the explicit path: it builds the post-softmax weights
//   W: [B, H, Lq, Lk]   (rows sum to 1 over the keys a query may see)
// runs every installed hook on them in order, and multiplies the (possibly changed) weights
// with the values. VAR and LocoRE redistribute W; saliency (SGRS, the studio's maps) records W
// and, with gradients on, its gradient.
//
// A hook is a small object; the decoder knows nothing about what it does. Install hooks on a
// model (`model->attention_hooks().add(...)`) or pass a list for one forward call.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>

namespace iris {

// What a hook knows about the attention call it sees.
struct HookContext {
  int layer = 0;            // decoder layer index
  int num_layers = 0;
  int64_t num_heads = 0;    // H (query heads)
  int64_t num_kv_heads = 0;
  bool prefill = false;     // the pass started from an empty cache (a whole prompt)
  bool decode = false;      // one new token per row on top of a cache
  int64_t past_length = 0;  // keys already cached before this pass
  int64_t query_length = 0; // Lq (new tokens in this pass)
  int64_t key_length = 0;   // Lk = past_length + Lq
  at::Tensor query_positions;  // [B, Lq] int64: RoPE positions of the queries
  at::Tensor image_keys;       // [B, Lk] bool: true at image-token keys; undefined when none
  at::Tensor key_valid;        // [B, Lk] bool: false at left padding; undefined when none
  at::Tensor hidden_states;    // [B, Lq, hidden]: the layer's input (residual stream, before its norm)
};

class AttentionHook {
 public:
  virtual ~AttentionHook() = default;
  // Whether this hook acts on `layer` in this call. Layers no hook wants stay on the fast path.
  virtual bool wants(int layer, const HookContext& ctx) const {
    (void)layer;
    (void)ctx;
    return true;
  }
  // weights: [B, H, Lq, Lk] post-softmax. Change them in place or assign a new tensor of the
  // same shape. With autograd on (SGRS), assign instead of changing in place: softmax keeps
  // its output for the backward pass.
  virtual void on_weights(int layer, at::Tensor& weights, const HookContext& ctx) = 0;
};

// An ordered list of hooks (the order they run in).
class AttentionHookList {
 public:
  void add(std::shared_ptr<AttentionHook> hook);
  // Removes one hook (by identity); false when it was not installed.
  bool remove(const AttentionHook* hook);
  void clear() { hooks_.clear(); }
  bool empty() const { return hooks_.empty(); }
  size_t size() const { return hooks_.size(); }
  const std::vector<std::shared_ptr<AttentionHook>>& hooks() const { return hooks_; }

  bool wants(int layer, const HookContext& ctx) const;
  // Runs the hooks that want this layer, in order.
  void run(int layer, at::Tensor& weights, const HookContext& ctx) const;

 private:
  std::vector<std::shared_ptr<AttentionHook>> hooks_;
};

// A hook from a function, for one-off uses (tests, the studio's overlays).
class FunctionHook : public AttentionHook {
 public:
  using Fn = std::function<void(int layer, at::Tensor& weights, const HookContext& ctx)>;
  using Filter = std::function<bool(int layer, const HookContext& ctx)>;
  explicit FunctionHook(Fn fn, Filter filter = nullptr) : fn_(std::move(fn)), filter_(std::move(filter)) {}
  bool wants(int layer, const HookContext& ctx) const override { return !filter_ || filter_(layer, ctx); }
  void on_weights(int layer, at::Tensor& weights, const HookContext& ctx) override { fn_(layer, weights, ctx); }

 private:
  Fn fn_;
  Filter filter_;
};

// Records attention weights, for saliency maps and SGRS.
//   keep_graph = false: detached copies (safe to keep across steps).
//   keep_graph = true:  the live tensor that the layer goes on to use, with retain_grad() when
//                       it requires grad, so after loss.backward() `record.weights.grad()` is
//                       dL/dW. Install it last, so no later hook replaces what it recorded.
class AttentionRecorder : public AttentionHook {
 public:
  struct Options {
    std::vector<int> layers;  // empty: every layer
    bool keep_graph = false;
  };
  struct Record {
    int layer = 0;
    bool prefill = false;
    int64_t past_length = 0;
    at::Tensor weights;  // [B, H, Lq, Lk]
  };

  AttentionRecorder() = default;
  explicit AttentionRecorder(Options options) : options_(std::move(options)) {}

  bool wants(int layer, const HookContext& ctx) const override;
  void on_weights(int layer, at::Tensor& weights, const HookContext& ctx) override;

  const std::vector<Record>& records() const { return records_; }
  // The most recent record of `layer`; throws ConfigError when there is none.
  const Record& last(int layer) const;
  void clear() { records_.clear(); }

 private:
  Options options_;
  std::vector<Record> records_;
};

}  // namespace iris
