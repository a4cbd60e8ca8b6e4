#include "vlm/kv_cache.h"

#include <ATen/core/grad_mode.h>

#include "core/error.h"

namespace iris {

namespace {

std::string str(int64_t v) { return std::to_string(v); }

void require_positive(int64_t v, const char* name) {
  if (v <= 0) throw ConfigError(std::string("KV cache: ") + name + " must be positive, got " + str(v));
}

}  // namespace

KVCache::KVCache(int64_t num_layers, int64_t batch, int64_t kv_heads, int64_t capacity, int64_t head_dim,
                 const at::TensorOptions& options)
    : batch_(batch), kv_heads_(kv_heads), capacity_(capacity), head_dim_(head_dim) {
  require_positive(num_layers, "num_layers");
  require_positive(batch, "batch");
  require_positive(kv_heads, "kv_heads");
  require_positive(capacity, "capacity");
  require_positive(head_dim, "head_dim");
  at::NoGradGuard no_grad;
  const at::TensorOptions opts = options.requires_grad(false);
  keys_.reserve(num_layers);
  values_.reserve(num_layers);
  for (int64_t l = 0; l < num_layers; ++l) {
    // Zero-filled so stale slots never hold NaN (a masked key still enters a matmul).
    keys_.push_back(at::zeros({batch, kv_heads, capacity, head_dim}, opts));
    values_.push_back(at::zeros({batch, kv_heads, capacity, head_dim}, opts));
  }
  positions_.assign(static_cast<size_t>(batch * capacity), 0);
}

at::TensorOptions KVCache::options() const {
  return defined() ? keys_.front().options() : at::TensorOptions().dtype(at::kFloat);
}

int64_t KVCache::memory_bytes() const {
  int64_t n = 0;
  for (size_t l = 0; l < keys_.size(); ++l) n += keys_[l].nbytes() + values_[l].nbytes();
  return n;
}

const at::Tensor& KVCache::key_buffer(int64_t layer) const {
  if (layer < 0 || layer >= num_layers())
    throw ShapeError("KV cache: layer " + str(layer) + " out of range [0, " + str(num_layers()) + ")");
  return keys_[layer];
}

const at::Tensor& KVCache::value_buffer(int64_t layer) const {
  key_buffer(layer);  // range check
  return values_[layer];
}

at::Tensor KVCache::keys(int64_t layer, int64_t n) const {
  return key_buffer(layer).narrow(2, 0, n < 0 ? length_ : n);
}

at::Tensor KVCache::values(int64_t layer, int64_t n) const {
  return value_buffer(layer).narrow(2, 0, n < 0 ? length_ : n);
}

at::Tensor KVCache::positions() const {
  at::Tensor all = at::from_blob(const_cast<int64_t*>(positions_.data()), {batch_, capacity_}, at::kLong);
  return all.narrow(1, 0, length_).clone();
}

std::vector<int64_t> KVCache::next_positions() const {
  std::vector<int64_t> out(static_cast<size_t>(batch_), 0);
  if (length_ == 0) return out;
  for (int64_t b = 0; b < batch_; ++b) out[b] = positions_[b * capacity_ + length_ - 1] + 1;
  return out;
}

at::Tensor KVCache::valid_mask() const { return valid_.defined() ? valid_.narrow(1, 0, length_) : at::Tensor(); }

at::Tensor KVCache::image_mask() const { return image_.defined() ? image_.narrow(1, 0, length_) : at::Tensor(); }

void KVCache::check_room(int64_t n, const std::string& what) const {
  if (!defined()) throw ConfigError(what + ": the KV cache was never allocated");
  if (length_ + n > capacity_)
    throw ConfigError(what + ": " + str(n) + " new token(s) on top of " + str(length_) +
                      " cached exceed the KV cache capacity of " + str(capacity_) + " tokens");
}

void KVCache::write(int64_t layer, int64_t start, const at::Tensor& k, const at::Tensor& v) {
  const at::Tensor& kb = key_buffer(layer);
  const int64_t n = k.size(2);
  if (k.dim() != 4 || k.sizes() != v.sizes() || k.size(0) != batch_ || k.size(1) != kv_heads_ || k.size(3) != head_dim_)
    throw ShapeError("KV cache: write expects [" + str(batch_) + ", " + str(kv_heads_) + ", n, " + str(head_dim_) +
                     "] keys and values");
  if (start < 0 || start + n > capacity_)
    throw ConfigError("KV cache: slots [" + str(start) + ", " + str(start + n) + ") exceed the capacity of " +
                      str(capacity_) + " tokens");
  at::NoGradGuard no_grad;  // the cache holds values, never autograd history
  kb.narrow(2, start, n).copy_(k);
  values_[layer].narrow(2, start, n).copy_(v);
}

void KVCache::commit(int64_t n, const at::Tensor& positions, const at::Tensor& valid, const at::Tensor& image) {
  check_room(n);
  at::Tensor pos = positions.to(at::kCPU, at::kLong).contiguous();
  if (pos.dim() != 2 || pos.size(0) != batch_ || pos.size(1) != n)
    throw ShapeError("KV cache: commit expects positions [" + str(batch_) + ", " + str(n) + "]");
  const int64_t* p = pos.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch_; ++b)
    for (int64_t i = 0; i < n; ++i) positions_[b * capacity_ + length_ + i] = p[b * n + i];

  auto store_flags = [&](at::Tensor& buf, const at::Tensor& flags, bool fill_default) {
    if (!flags.defined()) {
      if (buf.defined()) buf.narrow(1, length_, n).fill_(fill_default);
      return;
    }
    at::Tensor f = flags.to(at::kCPU).to(at::kBool);
    if (f.dim() != 2 || f.size(0) != batch_ || f.size(1) != n)
      throw ShapeError("KV cache: commit expects masks [" + str(batch_) + ", " + str(n) + "]");
    if (!buf.defined()) {
      // Allocated on first need; every earlier slot takes the default.
      buf = at::full({batch_, capacity_}, fill_default, at::TensorOptions().dtype(at::kBool));
    }
    buf.narrow(1, length_, n).copy_(f);
  };
  // Padding is tracked only when some slot is padding.
  if (valid.defined() && !valid.to(at::kBool).all().item<bool>()) store_flags(valid_, valid, true);
  else store_flags(valid_, at::Tensor(), true);
  if (image.defined() && image.to(at::kBool).any().item<bool>()) store_flags(image_, image, false);
  else store_flags(image_, at::Tensor(), false);
  length_ += n;
}

void KVCache::truncate(int64_t n) {
  if (n < 0 || n > length_)
    throw ConfigError("KV cache: cannot truncate to " + str(n) + " slots, it holds " + str(length_));
  length_ = n;
}

void KVCache::keep_slots(int64_t start, const std::vector<int64_t>& slots) {
  if (start < 0 || start > length_)
    throw ConfigError("KV cache: keep_slots start " + str(start) + " outside [0, " + str(length_) + "]");
  int64_t prev = start - 1;
  for (int64_t s : slots) {
    if (s <= prev || s >= length_)
      throw ConfigError("KV cache: keep_slots needs increasing slots in [" + str(start) + ", " + str(length_) +
                        "), got " + str(s));
    prev = s;
  }
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < slots.size(); ++i) {
    const int64_t from = slots[i], to = start + static_cast<int64_t>(i);
    if (from == to) continue;  // increasing slots never overwrite one still to be moved
    for (int64_t l = 0; l < num_layers(); ++l) {
      keys_[l].narrow(2, to, 1).copy_(keys_[l].narrow(2, from, 1));
      values_[l].narrow(2, to, 1).copy_(values_[l].narrow(2, from, 1));
    }
    for (int64_t b = 0; b < batch_; ++b) positions_[b * capacity_ + to] = positions_[b * capacity_ + from];
    if (valid_.defined()) valid_.select(1, to).copy_(valid_.select(1, from));
    if (image_.defined()) image_.select(1, to).copy_(image_.select(1, from));
  }
  length_ = start + static_cast<int64_t>(slots.size());
}

void KVCache::reset() {
  length_ = 0;
  valid_ = at::Tensor();
  image_ = at::Tensor();
}

}  // namespace iris
