#pragma once
// Pre-allocated key/value cache for a decoder-only transformer (LLaMA and its drafts).
//
// Per layer, keys and values live in one buffer each, allocated once:
//   K[l], V[l]: [B, kv_heads, capacity, head_dim]
// A forward pass over n new tokens writes slots [length, length + n) of every layer and
// attends over slots [0, length + n); nothing is concatenated per token. After the pass the
// cache commits the n slots (length += n).
//
// Besides K/V the cache remembers, per row and slot, what later passes need:
//   * the RoPE position of the slot (the next token's position continues from the last one,
//     also for left-padded rows and after a token-tree verification),
//   * whether the slot is a real token or left padding (only when some row is padded),
//   * whether the slot is an image token (only when a caller marked some; attention hooks
//     such as VAR read it).
//
// Speculative decoding rolls the cache back with truncate(n) (a chain of drafted tokens) or
// keep_slots(start, slots) (the accepted path of a token tree, compacted to consecutive slots).
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>

namespace iris {

class KVCache {
 public:
  KVCache() = default;
  // Throws ConfigError when a size is not positive.
  KVCache(int64_t num_layers, int64_t batch, int64_t kv_heads, int64_t capacity, int64_t head_dim,
          const at::TensorOptions& options = at::TensorOptions().dtype(at::kFloat));

  bool defined() const { return !keys_.empty(); }
  int64_t num_layers() const { return static_cast<int64_t>(keys_.size()); }
  int64_t batch() const { return batch_; }
  int64_t kv_heads() const { return kv_heads_; }
  int64_t head_dim() const { return head_dim_; }
  int64_t capacity() const { return capacity_; }
  int64_t length() const { return length_; }
  int64_t remaining() const { return capacity_ - length_; }
  bool empty() const { return length_ == 0; }
  at::TensorOptions options() const;
  // Bytes held by the K/V buffers.
  int64_t memory_bytes() const;

  // ---- reading ----
  // Whole buffers [B, kv_heads, capacity, head_dim] (slots past length() are stale).
  const at::Tensor& key_buffer(int64_t layer) const;
  const at::Tensor& value_buffer(int64_t layer) const;
  // Views of the first `n` slots (default: length()): [B, kv_heads, n, head_dim]. No copy.
  at::Tensor keys(int64_t layer, int64_t n = -1) const;
  at::Tensor values(int64_t layer, int64_t n = -1) const;

  // RoPE position of every committed slot: [B, length] int64 (CPU).
  at::Tensor positions() const;
  // Position the next token of each row takes: last slot's position + 1 (0 when empty).
  std::vector<int64_t> next_positions() const;
  // [B, length] bool, true = real token; undefined when no row has padding.
  at::Tensor valid_mask() const;
  // [B, length] bool, true = image token; undefined when no slot was marked.
  at::Tensor image_mask() const;
  bool has_padding() const { return valid_.defined(); }

  // ---- writing (used by the decoder layers) ----
  // Throws ConfigError naming the sizes when `n` more slots do not fit.
  void check_room(int64_t n, const std::string& what = "KV cache") const;
  // Stores k/v [B, kv_heads, n, head_dim] at slots [start, start + n) of `layer` (start is
  // normally length(); nothing is committed yet).
  void write(int64_t layer, int64_t start, const at::Tensor& k, const at::Tensor& v);
  // Commits n slots written at [length, length + n): positions [B, n] int64; valid [B, n] bool
  // (undefined = all real); image [B, n] bool (undefined = none).
  void commit(int64_t n, const at::Tensor& positions, const at::Tensor& valid = {}, const at::Tensor& image = {});

  // ---- rolling back ----
  // Keeps the first n slots (n <= length()).
  void truncate(int64_t n);
  // Keeps slots [0, start) followed by `slots` (absolute indices >= start, strictly
  // increasing, < length()), compacted to [start, start + slots.size()). This is how the
  // accepted path of a verified token tree stays in the cache.
  void keep_slots(int64_t start, const std::vector<int64_t>& slots);
  // Empties the cache (buffers stay allocated).
  void reset();

 private:
  int64_t batch_ = 0, kv_heads_ = 0, capacity_ = 0, head_dim_ = 0, length_ = 0;
  std::vector<at::Tensor> keys_, values_;  // per layer [B, kv_heads, capacity, head_dim]
  std::vector<int64_t> positions_;         // [B * capacity], row-major
  at::Tensor valid_;                       // [B, capacity] bool (CPU), allocated on first padding
  at::Tensor image_;                       // [B, capacity] bool (CPU), allocated on first image slot
};

}  // namespace iris
