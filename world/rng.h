#pragma once
// Deterministic, platform-independent randomness for Tinyworld.
//
// std::mt19937_64 is specified bit-for-bit by the C++ standard, but the std::uniform_*
// distributions are not (libstdc++, libc++ and MSVC return different values), so every
// conversion from raw 64-bit words to ints/doubles is written here.
#include <cstdint>
#include <random>
#include <vector>

namespace iris::world {

// SplitMix64 finaliser: a bijective 64-bit mix used to derive seeds and hash-based splits.
inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
inline uint64_t hash_combine(uint64_t a, uint64_t b) { return mix64(a ^ (mix64(b) + 0x632be59bd9b4e019ull)); }

class Rng {
 public:
  explicit Rng(uint64_t seed) : gen_(seed) {}

  uint64_t next() { return gen_(); }
  // Uniform integer in [0, n), unbiased (rejection of the top partial range). n > 0.
  uint64_t below(uint64_t n) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;  // multiple of n
    uint64_t x;
    do x = gen_();
    while (x >= limit);
    return x % n;
  }
  // Uniform integer in [lo, hi], inclusive.
  int range(int lo, int hi) { return lo + static_cast<int>(below(static_cast<uint64_t>(hi - lo) + 1)); }
  // Uniform double in [0, 1) from the top 53 bits (exact, no rounding differences).
  double uniform() { return static_cast<double>(gen_() >> 11) * (1.0 / 9007199254740992.0); }
  double uniform(double a, double b) { return a + (b - a) * uniform(); }
  bool chance(double p) { return uniform() < p; }
  template <class T>
  const T& pick(const std::vector<T>& v) {
    return v[static_cast<size_t>(below(v.size()))];
  }
  // Fisher-Yates with below(): same order on every platform (std::shuffle is not portable).
  template <class T>
  void shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[static_cast<size_t>(below(i))]);
  }

 private:
  std::mt19937_64 gen_;
};

}  // namespace iris::world
