// Native SentencePiece: model reader, normalizer, BPE / unigram / word / char encoders, decoder.
// Behaviour follows libsentencepiece 0.1.97 (the version the golden tables come from); the
// comments name the reference behaviour each part reproduces.
#include "core/sentencepiece.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <queue>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "core/error.h"
#include "core/mmap_file.h"

namespace iris {

namespace {

using PieceType = SentencePieceTokenizer::PieceType;
using ModelType = SentencePieceTokenizer::ModelType;

constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";  // U+2581, stands for ' '
constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD
constexpr float kUnkPenalty = 10.0f;

// Length of the UTF-8 character that starts with byte `c`, judged by its lead byte only
// (continuation and invalid lead bytes count as 1; libsentencepiece's OneCharLen).
inline size_t one_char_len(unsigned char c) {
  static constexpr unsigned char kLen[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLen[c >> 4];
}

inline bool is_trail(unsigned char c) { return (c & 0xC0) == 0x80; }
inline bool valid_codepoint(uint32_t c) { return c < 0xD800 || (c >= 0xE000 && c <= 0x10FFFF); }

// Decodes one UTF-8 character at the start of `s` (non-empty). Returns false for a malformed
// sequence, with *len = 1. An encoded U+FFFD counts as valid.
bool decode_utf8(std::string_view s, size_t* len) {
  const auto b = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char c0 = b(0);
  if (c0 < 0x80) {
    *len = 1;
    return true;
  }
  if (s.size() >= 2 && (c0 & 0xE0) == 0xC0) {
    const uint32_t cp = ((c0 & 0x1Fu) << 6) | (b(1) & 0x3Fu);
    if (is_trail(b(1)) && cp >= 0x80 && valid_codepoint(cp)) {
      *len = 2;
      return true;
    }
  } else if (s.size() >= 3 && (c0 & 0xF0) == 0xE0) {
    const uint32_t cp = ((c0 & 0x0Fu) << 12) | ((b(1) & 0x3Fu) << 6) | (b(2) & 0x3Fu);
    if (is_trail(b(1)) && is_trail(b(2)) && cp >= 0x800 && valid_codepoint(cp)) {
      *len = 3;
      return true;
    }
  } else if (s.size() >= 4 && (c0 & 0xF8) == 0xF0) {
    const uint32_t cp = ((c0 & 0x07u) << 18) | ((b(1) & 0x3Fu) << 12) | ((b(2) & 0x3Fu) << 6) | (b(3) & 0x3Fu);
    if (is_trail(b(1)) && is_trail(b(2)) && is_trail(b(3)) && cp >= 0x10000 && valid_codepoint(cp)) {
      *len = 4;
      return true;
    }
  }
  *len = 1;
  return false;
}

std::string byte_piece(unsigned char b) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string s = "<0x00>";
  s[3] = kHex[b >> 4];
  s[4] = kHex[b & 15];
  return s;
}

// "<0xNN>" with upper-case hex -> NN, else -1 (libsentencepiece accepts exactly its own spelling).
int piece_to_byte(std::string_view p) {
  if (p.size() != 6 || p.substr(0, 3) != "<0x" || p[5] != '>') return -1;
  int v = 0;
  for (size_t i = 3; i < 5; ++i) {
    const char c = p[i];
    int d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
    else return -1;
    v = v * 16 + d;
  }
  return v;
}

bool starts_with(std::string_view s, std::string_view p) { return s.size() >= p.size() && s.compare(0, p.size(), p) == 0; }
bool ends_with(std::string_view s, std::string_view p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

// ---------------------------------------------------------------------------------------------
// Protobuf wire format reader (proto2; only what sentencepiece_model.proto needs). Every read is
// bounds-checked; any violation throws FormatError "<file>: malformed SentencePiece model: ...".

enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLen = 2, kStartGroup = 3, kEndGroup = 4, kFixed32 = 5 };

class WireReader {
 public:
  WireReader(std::string_view data, const std::string& what, std::string context)
      : p_(data.data()), end_(data.data() + data.size()), what_(what), context_(std::move(context)) {}

  bool at_end() const { return p_ == end_; }

  void tag(uint32_t* field, uint32_t* wire_type) {
    const uint64_t t = varint();
    if (t >> 32) fail("field tag out of range");
    *field = static_cast<uint32_t>(t >> 3);
    *wire_type = static_cast<uint32_t>(t & 7);
    if (*field == 0) fail("field number 0");
  }

  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
      if (p_ == end_) fail("truncated varint");
      const auto b = static_cast<unsigned char>(*p_++);
      if (shift == 63 && b > 1) fail("varint overflows 64 bits");
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    fail("varint longer than 10 bytes");
  }

  std::string_view bytes() {
    const uint64_t n = varint();
    const auto left = static_cast<uint64_t>(end_ - p_);
    if (n > left) fail("length " + std::to_string(n) + " exceeds the " + std::to_string(left) + " bytes left");
    std::string_view s(p_, static_cast<size_t>(n));
    p_ += n;
    return s;
  }

  uint32_t fixed32() {
    if (end_ - p_ < 4) fail("truncated fixed32");
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p_[i]);
    p_ += 4;
    return v;
  }

  void skip(uint32_t field, uint32_t wire_type) {
    switch (wire_type) {
      case kVarint: varint(); return;
      case kFixed64:
        if (end_ - p_ < 8) fail("truncated fixed64 in field " + std::to_string(field));
        p_ += 8;
        return;
      case kLen: bytes(); return;
      case kFixed32: fixed32(); return;
      case kStartGroup:
      case kEndGroup: fail("field " + std::to_string(field) + " uses the unsupported group wire type");
      default: fail("field " + std::to_string(field) + " has invalid wire type " + std::to_string(wire_type));
    }
  }

  void expect(uint32_t field, uint32_t wire_type, uint32_t want, const char* name) {
    if (wire_type != want)
      fail(std::string(name) + " (field " + std::to_string(field) + ") has wire type " + std::to_string(wire_type) +
           ", expected " + std::to_string(want));
  }

  bool boolean() { return varint() != 0; }
  int64_t enum_value() { return static_cast<int64_t>(varint()); }

  [[noreturn]] void fail(const std::string& why) const {
    throw FormatError(what_ + ": malformed SentencePiece model: " + context_ + ": " + why);
  }

 private:
  const char* p_;
  const char* end_;
  const std::string& what_;
  std::string context_;
};

// ---------------------------------------------------------------------------------------------
// A byte trie over a fixed key set (pieces, user-defined symbols). Nodes keep their children in
// one sorted, contiguous range. Built iteratively: keys may be long, recursion is not safe.

class ByteTrie {
 public:
  void build(std::vector<std::pair<std::string_view, int>> keys) {
    nodes_.clear();
    labels_.clear();
    targets_.clear();
    std::sort(keys.begin(), keys.end());  // string_view compares bytes as unsigned
    nodes_.push_back(Node{});
    struct Job {
      uint32_t node;
      size_t begin, end, depth;
    };
    std::vector<Job> stack;
    if (!keys.empty()) stack.push_back({0, 0, keys.size(), 0});
    while (!stack.empty()) {
      const Job j = stack.back();
      stack.pop_back();
      size_t i = j.begin;
      if (keys[i].first.size() == j.depth) {  // sorted: the key ending here comes first
        nodes_[j.node].value = keys[i].second;
        ++i;
      }
      // Group the remaining keys by their byte at `depth`; children are allocated contiguously.
      const auto first_child = static_cast<uint32_t>(labels_.size());
      std::vector<Job> children;
      while (i < j.end) {
        const auto c = static_cast<unsigned char>(keys[i].first[j.depth]);
        size_t k = i + 1;
        while (k < j.end && static_cast<unsigned char>(keys[k].first[j.depth]) == c) ++k;
        const auto child = static_cast<uint32_t>(nodes_.size());
        nodes_.push_back(Node{});
        labels_.push_back(c);
        targets_.push_back(child);
        children.push_back({child, i, k, j.depth + 1});
        i = k;
      }
      nodes_[j.node].first = first_child;
      nodes_[j.node].count = static_cast<uint32_t>(labels_.size() - first_child);
      for (auto it = children.rbegin(); it != children.rend(); ++it) stack.push_back(*it);
    }
    has_keys_ = !keys.empty();
  }

  bool empty() const { return !has_keys_; }

  // Calls f(end_offset, value) for every key that is a prefix of s[begin..], shortest first.
  template <class F>
  void prefixes(std::string_view s, size_t begin, F&& f) const {
    if (!has_keys_) return;
    uint32_t node = 0;
    for (size_t i = begin; i < s.size(); ++i) {
      node = child(node, static_cast<unsigned char>(s[i]));
      if (node == kNone) return;
      if (nodes_[node].value >= 0) f(i + 1, nodes_[node].value);
    }
  }

  // Length of the longest key that is a prefix of s (0 if none).
  size_t longest_prefix(std::string_view s) const {
    size_t best = 0;
    prefixes(s, 0, [&](size_t end, int) { best = end; });
    return best;
  }

 private:
  static constexpr uint32_t kNone = 0xFFFFFFFFu;
  struct Node {
    int value = -1;
    uint32_t first = 0;
    uint32_t count = 0;
  };
  uint32_t child(uint32_t node, unsigned char c) const {
    const Node& n = nodes_[node];
    const unsigned char* b = labels_.data() + n.first;
    const unsigned char* e = b + n.count;
    const unsigned char* it = std::lower_bound(b, e, c);
    if (it == e || *it != c) return kNone;
    return targets_[n.first + static_cast<uint32_t>(it - b)];
  }
  std::vector<Node> nodes_;
  std::vector<unsigned char> labels_;
  std::vector<uint32_t> targets_;
  bool has_keys_ = false;
};

// ---------------------------------------------------------------------------------------------
// precompiled_charsmap: <uint32 LE trie size><Darts-clone double array (uint32 units)><pool of
// NUL-terminated replacement strings>. Trie values are offsets into the pool.

class CharsMap {
 public:
  bool empty() const { return units_.empty(); }

  void load(std::string_view blob, const std::string& what, const std::string& field) {
    const auto bad = [&](const std::string& why) -> void {
      throw FormatError(what + ": malformed SentencePiece model: " + field + ".precompiled_charsmap: " + why);
    };
    if (blob.size() <= 4) bad("blob of " + std::to_string(blob.size()) + " bytes is too short");
    uint32_t trie_size = 0;
    for (int i = 3; i >= 0; --i) trie_size = (trie_size << 8) | static_cast<unsigned char>(blob[i]);
    if (trie_size > blob.size() - 4)
      bad("trie size " + std::to_string(trie_size) + " exceeds the blob (" + std::to_string(blob.size()) + " bytes)");
    if (trie_size == 0 || trie_size % 4 != 0) bad("trie size " + std::to_string(trie_size) + " is not a positive multiple of 4");
    units_.resize(trie_size / 4);
    for (size_t u = 0; u < units_.size(); ++u) {
      const char* p = blob.data() + 4 + 4 * u;
      units_[u] = static_cast<uint32_t>(static_cast<unsigned char>(p[0])) |
                  static_cast<uint32_t>(static_cast<unsigned char>(p[1])) << 8 |
                  static_cast<uint32_t>(static_cast<unsigned char>(p[2])) << 16 |
                  static_cast<uint32_t>(static_cast<unsigned char>(p[3])) << 24;
    }
    pool_.assign(blob.data() + 4 + trie_size, blob.size() - 4 - trie_size);
    const size_t nul = pool_.rfind('\0');
    pool_limit_ = nul == std::string::npos ? 0 : nul + 1;  // values must be < pool_limit_
    validate(bad);
  }

  // Longest rule matching a prefix of `s`: returns its length (0 if none) and replacement.
  size_t longest_match(std::string_view s, std::string_view* replacement) const {
    const size_t n = units_.size();
    size_t pos = offset(units_[0]);
    size_t best = 0;
    for (size_t i = 0; i < s.size(); ++i) {
      const auto c = static_cast<unsigned char>(s[i]);
      pos ^= c;
      if (pos >= n) break;
      const uint32_t unit = units_[pos];
      if (label(unit) != c) break;
      pos ^= offset(unit);
      if (has_leaf(unit)) {
        if (pos >= n) break;
        const uint32_t v = value(units_[pos]);
        if (v >= pool_limit_) break;  // unreachable after validate(); kept as a guard
        best = i + 1;
        *replacement = std::string_view(pool_.data() + v);
      }
    }
    return best;
  }

 private:
  static uint32_t offset(uint32_t u) { return (u >> 10) << ((u & (1u << 9)) >> 6); }
  static uint32_t label(uint32_t u) { return u & ((1u << 31) | 0xFFu); }
  static bool has_leaf(uint32_t u) { return (u >> 8) & 1; }
  static uint32_t value(uint32_t u) { return u & ((1u << 31) - 1); }

  // Walks every state reachable from the root (the same transitions longest_match takes) and
  // checks that every rule's value points at a NUL-terminated string in the pool. States are
  // identified by their base; shared (DAWG) states are visited once.
  template <class Bad>
  void validate(const Bad& bad) const {
    const size_t n = units_.size();
    const size_t limit = (n + 255) & ~static_cast<size_t>(255);
    std::vector<bool> seen(limit, false);
    std::vector<uint32_t> stack;
    const uint32_t root = offset(units_[0]);
    if (root < limit) {
      seen[root] = true;
      stack.push_back(root);
    }
    while (!stack.empty()) {
      const uint32_t base = stack.back();
      stack.pop_back();
      for (uint32_t c = 0; c < 256; ++c) {
        const uint32_t pos = base ^ c;
        if (pos >= n) continue;
        const uint32_t unit = units_[pos];
        if (label(unit) != c) continue;
        const uint32_t next = pos ^ offset(unit);
        if (has_leaf(unit)) {
          if (next >= n) bad("rule value unit " + std::to_string(next) + " is outside the trie");
          const uint32_t v = value(units_[next]);
          if (v >= pool_limit_) bad("rule value " + std::to_string(v) + " is outside the string pool");
        }
        if (next < limit && !seen[next]) {
          seen[next] = true;
          stack.push_back(next);
        }
      }
    }
  }

  std::vector<uint32_t> units_;
  std::string pool_;
  size_t pool_limit_ = 0;
};

// ---------------------------------------------------------------------------------------------

struct NormalizerSpec {
  std::string name;
  std::string charsmap;
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = true;
  bool escape_whitespaces = true;
  bool present = false;
};

class Normalizer {
 public:
  void init(const NormalizerSpec& spec, bool treat_ws_as_suffix, const std::string& what, const std::string& field) {
    add_dummy_prefix_ = spec.add_dummy_prefix;
    remove_extra_ws_ = spec.remove_extra_whitespaces;
    escape_ws_ = spec.escape_whitespaces;
    suffix_ = treat_ws_as_suffix;
    if (!spec.charsmap.empty()) map_.load(spec.charsmap, what, field);
  }

  // One normalization step: the replacement for a prefix of `in` (non-empty) and the number of
  // input bytes it consumes (always >= 1). User-defined symbols bypass the charsmap.
  std::pair<std::string_view, size_t> prefix(std::string_view in, const ByteTrie* user) const {
    if (user && !user->empty()) {
      const size_t n = user->longest_prefix(in);
      if (n > 0) return {in.substr(0, n), n};
    }
    if (!map_.empty()) {
      std::string_view rep;
      const size_t n = map_.longest_match(in, &rep);
      if (n > 0) return {rep, n};
    }
    size_t len = 1;
    if (!decode_utf8(in, &len)) return {kReplacementChar, 1};
    return {in.substr(0, len), len};
  }

  std::string normalize(std::string_view in, const ByteTrie* user) const {
    std::string out;
    if (in.empty()) return out;
    if (remove_extra_ws_) {  // drop leading whitespace
      while (!in.empty()) {
        const auto p = prefix(in, user);
        if (p.first != " ") break;
        in.remove_prefix(p.second);
      }
    }
    if (in.empty()) return out;
    out.reserve(in.size() * 3);
    const auto add_ws = [&] { out += escape_ws_ ? kSpaceSymbol : std::string_view(" "); };
    if (!suffix_ && add_dummy_prefix_) add_ws();
    bool prev_space = remove_extra_ws_;
    while (!in.empty()) {
      const auto p = prefix(in, user);
      std::string_view sp = p.first;
      while (prev_space && !sp.empty() && sp.front() == ' ') sp.remove_prefix(1);
      if (!sp.empty()) {
        for (const char c : sp) {
          if (escape_ws_ && c == ' ') out += kSpaceSymbol;
          else out += c;
        }
        prev_space = sp.back() == ' ';
      }
      in.remove_prefix(p.second);
      if (!remove_extra_ws_) prev_space = false;
    }
    if (remove_extra_ws_) {  // drop trailing whitespace
      const std::string_view space = escape_ws_ ? kSpaceSymbol : std::string_view(" ");
      while (ends_with(out, space)) out.resize(out.size() - space.size());
    }
    if (suffix_ && add_dummy_prefix_) add_ws();
    return out;
  }

 private:
  CharsMap map_;
  bool add_dummy_prefix_ = true;
  bool remove_extra_ws_ = true;
  bool escape_ws_ = true;
  bool suffix_ = false;
};

struct RawPiece {
  std::string_view piece;  // a slice of the normalized text
  int id;
};

}  // namespace

// ---------------------------------------------------------------------------------------------

struct SentencePieceTokenizer::Model {
  Model() = default;
  Model(const Model&) = delete;  // the maps below hold views into `pieces`
  Model& operator=(const Model&) = delete;

  std::string what;
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<PieceType> types;
  std::vector<int16_t> byte_value;  // BYTE pieces: their byte; others -1

  ModelType model_type = ModelType::kUnigram;
  bool byte_fallback = false;
  bool treat_ws_as_suffix = false;
  bool add_dummy_prefix = true;  // normalizer_spec, also used by decode
  bool remove_extra_ws = true;
  std::string unk_piece, bos_piece, eos_piece, pad_piece;
  std::string unk_surface;  // decode's text for the unknown piece (default " \xE2\x81\x87 ")

  // NORMAL, USER_DEFINED and UNUSED pieces / CONTROL, UNKNOWN and BYTE pieces (as libsentencepiece).
  std::unordered_map<std::string_view, int> normal_map, reserved_map;
  int unk = -1;
  int byte_ids[256] = {};
  ByteTrie piece_trie;  // unigram: every piece of normal_map
  ByteTrie user_trie;   // user-defined symbols
  float min_score = 0, max_score = 0;

  Normalizer normalizer;
  bool has_denormalizer = false;
  Normalizer denormalizer;

  // libsentencepiece's PieceToId: reserved pieces first, then normal ones, else unk.
  int spm_piece_to_id(std::string_view p) const {
    auto it = reserved_map.find(p);
    if (it != reserved_map.end()) return it->second;
    auto it2 = normal_map.find(p);
    if (it2 != normal_map.end()) return it2->second;
    return unk;
  }
  PieceType type_of(int id) const { return types[static_cast<size_t>(id)]; }

  // Splits off the next symbol: the longest user-defined symbol (frozen) or one character.
  size_t next_symbol(std::string_view s, bool* is_user) const {
    const size_t n = user_trie.empty() ? 0 : user_trie.longest_prefix(s);
    *is_user = n > 0;
    if (n > 0) return n;
    return std::min(s.size(), one_char_len(static_cast<unsigned char>(s[0])));
  }

  std::vector<RawPiece> encode_bpe(std::string_view normalized) const;
  std::vector<RawPiece> encode_unigram(std::string_view normalized) const;
  std::vector<RawPiece> encode_word(std::string_view normalized) const;
  std::vector<RawPiece> encode_char(std::string_view normalized) const;
  void encode(const std::string& text, std::vector<int>* ids, std::vector<std::string>* out_pieces) const;
  std::string decode(const std::vector<int>& ids) const;
  [[noreturn]] void bad_id(int id) const {
    throw FormatError(what + ": token id " + std::to_string(id) + " is out of range (vocabulary of " +
                      std::to_string(pieces.size()) + " pieces)");
  }
};

// BPE (bpe_model.cc): start from characters (user-defined symbols are single frozen symbols),
// repeatedly merge the adjacent pair whose concatenation is the highest-scoring vocabulary piece
// (ties: leftmost), then split any UNUSED result back into the pieces it was merged from.
std::vector<RawPiece> SentencePieceTokenizer::Model::encode_bpe(std::string_view normalized) const {
  struct Symbol {
    int prev, next;
    bool freeze;
    size_t begin, len;
  };
  struct Pair {
    int left, right;
    float score;
    size_t size;
  };
  struct Lower {
    bool operator()(const Pair& a, const Pair& b) const {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    }
  };
  std::vector<Symbol> sym;
  for (size_t pos = 0; pos < normalized.size();) {
    bool user = false;
    const size_t n = next_symbol(normalized.substr(pos), &user);
    const int idx = static_cast<int>(sym.size());
    sym.push_back({idx - 1, pos + n < normalized.size() ? idx + 1 : -1, user, pos, n});
    pos += n;
  }
  if (sym.empty()) return {};

  std::priority_queue<Pair, std::vector<Pair>, Lower> agenda;
  std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>> rev_merge;
  const auto view = [&](const Symbol& s) { return normalized.substr(s.begin, s.len); };
  const auto try_pair = [&](int left, int right) {
    if (left < 0 || right < 0 || sym[left].freeze || sym[right].freeze) return;
    const std::string_view merged = normalized.substr(sym[left].begin, sym[left].len + sym[right].len);
    const auto it = normal_map.find(merged);
    if (it == normal_map.end()) return;
    agenda.push({left, right, scores[it->second], merged.size()});
    if (type_of(it->second) == PieceType::kUnused) rev_merge[merged] = {view(sym[left]), view(sym[right])};
  };
  for (size_t i = 1; i < sym.size(); ++i) try_pair(static_cast<int>(i) - 1, static_cast<int>(i));

  while (!agenda.empty()) {
    const Pair top = agenda.top();
    agenda.pop();
    Symbol& l = sym[top.left];
    Symbol& r = sym[top.right];
    if (l.len == 0 || r.len == 0 || l.len + r.len != top.size) continue;  // stale
    l.len += r.len;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = top.left;
    r.len = 0;
    try_pair(l.prev, top.left);
    try_pair(top.left, l.next);
  }

  std::vector<RawPiece> out;
  std::vector<std::string_view> stack;
  for (int i = 0; i != -1; i = sym[i].next) {
    stack.push_back(view(sym[i]));
    while (!stack.empty()) {
      const std::string_view w = stack.back();
      stack.pop_back();
      const int id = spm_piece_to_id(w);
      if (type_of(id) == PieceType::kUnused) {
        const auto it = rev_merge.find(w);
        if (it != rev_merge.end()) {
          stack.push_back(it->second.second);
          stack.push_back(it->second.first);
          continue;
        }
      }
      out.push_back({w, id});
    }
  }
  return out;
}

// Unigram (unigram_model.cc, the "optimized" Viterbi encoder): best-scoring segmentation over
// all vocabulary pieces; a character no piece covers becomes unk with score min_score - 10.
// User-defined symbols score length * max_score - 0.1. The float/double mix reproduces the
// reference's arithmetic exactly (its score expression is a double, path scores are floats).
std::vector<RawPiece> SentencePieceTokenizer::Model::encode_unigram(std::string_view normalized) const {
  if (normalized.empty()) return {};
  struct Best {
    int id = -1;
    float score = 0;
    long starts_at = -1;
  };
  const size_t size = normalized.size();
  const float unk_score = min_score - kUnkPenalty;
  std::vector<Best> best(size + 1);
  size_t start = 0;
  while (start < size) {
    const float till_here = best[start].score;
    bool has_single = false;
    const size_t mblen = std::min(one_char_len(static_cast<unsigned char>(normalized[start])), size - start);
    piece_trie.prefixes(normalized, start, [&](size_t end, int id) {
      const PieceType t = type_of(id);
      if (t == PieceType::kUnused) return;
      Best& target = best[end];
      const size_t length = end - start;
      const double score = t == PieceType::kUserDefined
                               ? static_cast<double>(static_cast<float>(length) * max_score) - 0.1
                               : static_cast<double>(scores[id]);
      const double candidate = score + static_cast<double>(till_here);
      if (target.starts_at == -1 || candidate > static_cast<double>(target.score)) {
        target.score = static_cast<float>(candidate);
        target.starts_at = static_cast<long>(start);
        target.id = id;
      }
      if (!has_single && length == mblen) has_single = true;
    });
    if (!has_single) {
      Best& target = best[start + mblen];
      const float candidate = unk_score + till_here;
      if (target.starts_at == -1 || candidate > target.score) {
        target.score = candidate;
        target.starts_at = static_cast<long>(start);
        target.id = unk;
      }
    }
    start += mblen;
  }
  std::vector<RawPiece> out;
  size_t end = size;
  while (end > 0) {
    const Best& node = best[end];
    if (node.starts_at < 0 || static_cast<size_t>(node.starts_at) >= end) break;  // cannot happen
    out.push_back({normalized.substr(static_cast<size_t>(node.starts_at), end - static_cast<size_t>(node.starts_at)), node.id});
    end = static_cast<size_t>(node.starts_at);
  }
  std::reverse(out.begin(), out.end());
  return out;
}

// Word model: a word starts at the beginning and at every U+2581; each word is looked up whole.
std::vector<RawPiece> SentencePieceTokenizer::Model::encode_word(std::string_view normalized) const {
  std::vector<RawPiece> out;
  size_t word = 0;
  for (size_t pos = 0; pos < normalized.size();) {
    const size_t n = std::min(normalized.size() - pos, one_char_len(static_cast<unsigned char>(normalized[pos])));
    if (pos > 0 && normalized.substr(pos, n) == kSpaceSymbol) {
      out.push_back({normalized.substr(word, pos - word), 0});
      word = pos;
    }
    pos += n;
  }
  if (!normalized.empty()) out.push_back({normalized.substr(word), 0});
  for (auto& p : out) p.id = spm_piece_to_id(p.piece);
  return out;
}

// Char model: one piece per character (user-defined symbols whole).
std::vector<RawPiece> SentencePieceTokenizer::Model::encode_char(std::string_view normalized) const {
  std::vector<RawPiece> out;
  for (size_t pos = 0; pos < normalized.size();) {
    bool user = false;
    const size_t n = next_symbol(normalized.substr(pos), &user);
    const std::string_view w = normalized.substr(pos, n);
    out.push_back({w, spm_piece_to_id(w)});
    pos += n;
  }
  return out;
}

// The processor layer (SentencePieceProcessor::Encode): normalize, segment, then either spell
// unknown pieces as <0xNN> byte pieces (byte fallback) or merge runs of unknown pieces into one.
void SentencePieceTokenizer::Model::encode(const std::string& text, std::vector<int>* ids,
                                           std::vector<std::string>* out_pieces) const {
  if (ids) ids->clear();
  if (out_pieces) out_pieces->clear();
  const std::string normalized = normalizer.normalize(text, &user_trie);
  std::vector<RawPiece> raw;
  switch (model_type) {
    case ModelType::kBpe: raw = encode_bpe(normalized); break;
    case ModelType::kUnigram: raw = encode_unigram(normalized); break;
    case ModelType::kWord: raw = encode_word(normalized); break;
    case ModelType::kChar: raw = encode_char(normalized); break;
  }
  bool prev_unk = false;
  for (const RawPiece& p : raw) {
    const bool is_unk = type_of(p.id) == PieceType::kUnknown;
    if (is_unk && byte_fallback) {
      for (const char c : p.piece) {
        const auto b = static_cast<unsigned char>(c);
        if (ids) ids->push_back(byte_ids[b]);
        if (out_pieces) out_pieces->push_back(byte_piece(b));
      }
    } else if (is_unk && prev_unk) {
      if (out_pieces) out_pieces->back().append(p.piece.data(), p.piece.size());
    } else {
      if (ids) ids->push_back(p.id);
      if (out_pieces) out_pieces->emplace_back(p.piece);
    }
    prev_unk = is_unk;
  }
}

// SentencePieceProcessor::Decode: control pieces vanish, unk becomes unk_surface, runs of byte
// pieces are decoded as UTF-8 (each malformed byte -> U+FFFD), U+2581 -> ' ', and the first
// piece's leading U+2581 (the dummy prefix) is dropped when add_dummy_prefix or
// remove_extra_whitespaces is set.
std::string SentencePieceTokenizer::Model::decode(const std::vector<int>& in_ids) const {
  std::vector<int> ids(in_ids.size());
  for (size_t i = 0; i < in_ids.size(); ++i) {
    const int id = in_ids[i];
    if (id < 0 || static_cast<size_t>(id) >= pieces.size()) bad_id(id);
    ids[i] = spm_piece_to_id(pieces[static_cast<size_t>(id)]);  // as the reference: id -> piece -> id
  }
  std::string text;
  const auto flush_bytes = [&](size_t begin, size_t end) {
    if (begin >= end) return;
    std::string bytes;
    for (size_t i = begin; i < end; ++i) bytes.push_back(static_cast<char>(byte_value[static_cast<size_t>(ids[i])]));
    std::string_view rest(bytes);
    while (!rest.empty()) {
      size_t len = 1;
      if (decode_utf8(rest, &len)) text.append(rest.data(), len);
      else text += kReplacementChar;
      rest.remove_prefix(len);
    }
  };
  const bool strip_bos_ws = add_dummy_prefix || remove_extra_ws;
  size_t byte_start = 0;
  bool is_bos_ws = true;
  bool bos_ws_seen = false;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int id = ids[i];
    const PieceType t = type_of(id);
    if (t == PieceType::kByte) continue;
    flush_bytes(byte_start, i);
    if (bos_ws_seen || !text.empty()) is_bos_ws = false;
    byte_start = i + 1;
    std::string_view piece = pieces[static_cast<size_t>(in_ids[i])];
    bos_ws_seen = false;
    if (t == PieceType::kControl) continue;
    if (t == PieceType::kUnknown) {
      if (pieces[static_cast<size_t>(id)] == piece) text += unk_surface;
      else text.append(piece.data(), piece.size());
      continue;
    }
    if (is_bos_ws && strip_bos_ws) {
      if (starts_with(piece, kSpaceSymbol)) {
        piece.remove_prefix(kSpaceSymbol.size());
        bos_ws_seen = !remove_extra_ws;
      }
    }
    while (!piece.empty()) {
      if (starts_with(piece, kSpaceSymbol)) {
        text += ' ';
        piece.remove_prefix(kSpaceSymbol.size());
      } else {
        text += piece.front();
        piece.remove_prefix(1);
      }
    }
  }
  flush_bytes(byte_start, ids.size());
  if (has_denormalizer) text = denormalizer.normalize(text, nullptr);
  return text;
}

// ---------------------------------------------------------------------------------------------
// Model file parsing (sentencepiece_model.proto, proto2):
//   ModelProto      { repeated SentencePiece pieces = 1; TrainerSpec trainer_spec = 2;
//                     NormalizerSpec normalizer_spec = 3; SelfTestData self_test_data = 4;
//                     NormalizerSpec denormalizer_spec = 5; }
//   SentencePiece   { string piece = 1; float score = 2; Type type = 3 [default NORMAL]; }
//   TrainerSpec     { ModelType model_type = 3 [UNIGRAM]; bool treat_whitespace_as_suffix = 24;
//                     bool byte_fallback = 35; string unk_surface = 44; string unk_piece = 45;
//                     string bos_piece = 46; string eos_piece = 47; string pad_piece = 48; ... }
//   NormalizerSpec  { string name = 1; bytes precompiled_charsmap = 2; bool add_dummy_prefix = 3
//                     [true]; bool remove_extra_whitespaces = 4 [true]; bool escape_whitespaces = 5
//                     [true]; ... }
// Other fields are skipped (after checking their framing). Repeated occurrences of a message
// merge and a repeated scalar keeps the last value, as protobuf does.

namespace {

struct ParsedPiece {
  std::string piece;
  float score = 0;
  PieceType type = PieceType::kNormal;
};

struct ParsedTrainer {
  ModelType model_type = ModelType::kUnigram;
  bool treat_ws_as_suffix = false;
  bool byte_fallback = false;
  std::string unk_surface = " \xE2\x81\x87 ";  // "⁇" between spaces, the proto default
  std::string unk_piece, bos_piece, eos_piece, pad_piece;
};

ParsedPiece parse_piece(std::string_view data, const std::string& what, size_t index) {
  ParsedPiece p;
  WireReader r(data, what, "pieces[" + std::to_string(index) + "]");
  while (!r.at_end()) {
    uint32_t f = 0, wt = 0;
    r.tag(&f, &wt);
    switch (f) {
      case 1:
        r.expect(f, wt, kLen, "piece");
        p.piece = std::string(r.bytes());
        break;
      case 2: {
        r.expect(f, wt, kFixed32, "score");
        const uint32_t bits = r.fixed32();
        std::memcpy(&p.score, &bits, sizeof bits);
        break;
      }
      case 3: {
        r.expect(f, wt, kVarint, "type");
        const int64_t t = r.enum_value();
        if (t < 1 || t > 6) r.fail("unknown piece type " + std::to_string(t));
        p.type = static_cast<PieceType>(t);
        break;
      }
      default: r.skip(f, wt);
    }
  }
  return p;
}

void parse_trainer(std::string_view data, const std::string& what, ParsedTrainer* t) {
  WireReader r(data, what, "trainer_spec");
  while (!r.at_end()) {
    uint32_t f = 0, wt = 0;
    r.tag(&f, &wt);
    switch (f) {
      case 3: {
        r.expect(f, wt, kVarint, "model_type");
        const int64_t v = r.enum_value();
        if (v < 1 || v > 4) r.fail("unknown model_type " + std::to_string(v));
        t->model_type = static_cast<ModelType>(v);
        break;
      }
      case 24: r.expect(f, wt, kVarint, "treat_whitespace_as_suffix"); t->treat_ws_as_suffix = r.boolean(); break;
      case 35: r.expect(f, wt, kVarint, "byte_fallback"); t->byte_fallback = r.boolean(); break;
      case 44:
        r.expect(f, wt, kLen, "unk_surface");
        t->unk_surface = std::string(r.bytes());
        break;
      case 45: r.expect(f, wt, kLen, "unk_piece"); t->unk_piece = std::string(r.bytes()); break;
      case 46: r.expect(f, wt, kLen, "bos_piece"); t->bos_piece = std::string(r.bytes()); break;
      case 47: r.expect(f, wt, kLen, "eos_piece"); t->eos_piece = std::string(r.bytes()); break;
      case 48: r.expect(f, wt, kLen, "pad_piece"); t->pad_piece = std::string(r.bytes()); break;
      default: r.skip(f, wt);
    }
  }
}

void parse_normalizer(std::string_view data, const std::string& what, const char* name, NormalizerSpec* n) {
  n->present = true;
  WireReader r(data, what, name);
  while (!r.at_end()) {
    uint32_t f = 0, wt = 0;
    r.tag(&f, &wt);
    switch (f) {
      case 1: r.expect(f, wt, kLen, "name"); n->name = std::string(r.bytes()); break;
      case 2: r.expect(f, wt, kLen, "precompiled_charsmap"); n->charsmap = std::string(r.bytes()); break;
      case 3: r.expect(f, wt, kVarint, "add_dummy_prefix"); n->add_dummy_prefix = r.boolean(); break;
      case 4: r.expect(f, wt, kVarint, "remove_extra_whitespaces"); n->remove_extra_whitespaces = r.boolean(); break;
      case 5: r.expect(f, wt, kVarint, "escape_whitespaces"); n->escape_whitespaces = r.boolean(); break;
      default: r.skip(f, wt);
    }
  }
}

std::string printable(const std::string& piece) {
  std::string s;
  for (const char c : piece.substr(0, 64)) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7F) {
      static const char kHex[] = "0123456789abcdef";
      s += "\\x";
      s += kHex[u >> 4];
      s += kHex[u & 15];
    } else {
      s += c;
    }
  }
  return "\"" + s + (piece.size() > 64 ? "...\"" : "\"");
}

}  // namespace

SentencePieceTokenizer SentencePieceTokenizer::from_bytes(const std::string& bytes, const std::string& what) {
  auto m = std::make_shared<Model>();
  m->what = what;
  ParsedTrainer trainer;
  NormalizerSpec norm, denorm;
  std::vector<ParsedPiece> parsed;
  {
    WireReader r(bytes, what, "ModelProto");
    while (!r.at_end()) {
      uint32_t f = 0, wt = 0;
      r.tag(&f, &wt);
      switch (f) {
        case 1: r.expect(f, wt, kLen, "pieces"); parsed.push_back(parse_piece(r.bytes(), what, parsed.size())); break;
        case 2: r.expect(f, wt, kLen, "trainer_spec"); parse_trainer(r.bytes(), what, &trainer); break;
        case 3: r.expect(f, wt, kLen, "normalizer_spec"); parse_normalizer(r.bytes(), what, "normalizer_spec", &norm); break;
        case 5:
          r.expect(f, wt, kLen, "denormalizer_spec");
          parse_normalizer(r.bytes(), what, "denormalizer_spec", &denorm);
          break;
        default: r.skip(f, wt);
      }
    }
  }
  const auto invalid = [&](const std::string& why) -> void {
    throw FormatError(what + ": invalid SentencePiece model: " + why);
  };
  if (parsed.empty()) invalid("the vocabulary is empty");
  if (parsed.size() > 0x7FFFFFFF) invalid("too many pieces");

  m->model_type = trainer.model_type;
  m->byte_fallback = trainer.byte_fallback;
  m->treat_ws_as_suffix = trainer.treat_ws_as_suffix;
  m->unk_piece = trainer.unk_piece.empty() ? "<unk>" : trainer.unk_piece;
  m->bos_piece = trainer.bos_piece.empty() ? "<s>" : trainer.bos_piece;
  m->eos_piece = trainer.eos_piece.empty() ? "</s>" : trainer.eos_piece;
  m->pad_piece = trainer.pad_piece.empty() ? "<pad>" : trainer.pad_piece;
  m->unk_surface = trainer.unk_surface;
  m->add_dummy_prefix = norm.add_dummy_prefix;
  m->remove_extra_ws = norm.remove_extra_whitespaces;

  // ModelInterface::InitializePieces checks.
  const size_t n = parsed.size();
  m->pieces.reserve(n);
  m->scores.reserve(n);
  m->types.reserve(n);
  m->byte_value.assign(n, -1);
  for (auto& p : parsed) {
    m->pieces.push_back(std::move(p.piece));
    m->scores.push_back(p.score);
    m->types.push_back(p.type);
  }
  parsed.clear();
  bool byte_found[256] = {};
  std::vector<std::pair<std::string_view, int>> user_defined;
  for (size_t i = 0; i < n; ++i) {
    const int id = static_cast<int>(i);
    const std::string& piece = m->pieces[i];
    const PieceType t = m->types[i];
    if (piece.empty()) invalid("piece " + std::to_string(i) + " is empty");
    const bool normal = t == PieceType::kNormal || t == PieceType::kUserDefined || t == PieceType::kUnused;
    auto& map = normal ? m->normal_map : m->reserved_map;
    if (!map.emplace(std::string_view(piece), id).second)
      invalid("piece " + printable(piece) + " (id " + std::to_string(i) + ") is defined twice");
    if (t == PieceType::kUserDefined) user_defined.emplace_back(piece, id);
    if (t == PieceType::kUnknown) {
      if (m->unk >= 0) invalid("more than one unknown piece (ids " + std::to_string(m->unk) + " and " + std::to_string(i) + ")");
      m->unk = id;
    }
    if (t == PieceType::kByte) {
      if (!trainer.byte_fallback) invalid("byte piece " + printable(piece) + " although byte_fallback is off");
      const int b = piece_to_byte(piece);
      if (b < 0) invalid("byte piece " + printable(piece) + " (id " + std::to_string(i) + ") is not <0xNN>");
      byte_found[b] = true;
      m->byte_value[i] = static_cast<int16_t>(b);
    }
  }
  if (m->unk < 0) invalid("no unknown piece (<unk>) is defined");
  if (trainer.byte_fallback) {
    for (int b = 0; b < 256; ++b)
      if (!byte_found[b]) invalid("byte_fallback is on but byte piece " + byte_piece(static_cast<unsigned char>(b)) + " is missing");
  }
  for (int b = 0; b < 256; ++b) m->byte_ids[b] = m->spm_piece_to_id(byte_piece(static_cast<unsigned char>(b)));
  m->user_trie.build(user_defined);

  if (m->model_type == ModelType::kUnigram) {
    if (m->normal_map.empty()) invalid("a unigram model needs at least one normal piece");
    // As the reference: FLT_MAX / FLT_MIN (the smallest positive float) as starting points.
    float lo = 3.402823466e+38F, hi = 1.175494351e-38F;
    for (size_t i = 0; i < n; ++i) {
      if (m->types[i] != PieceType::kNormal) continue;
      lo = std::min(lo, m->scores[i]);
      hi = std::max(hi, m->scores[i]);
    }
    m->min_score = lo;
    m->max_score = hi;
    std::vector<std::pair<std::string_view, int>> keys(m->normal_map.begin(), m->normal_map.end());
    m->piece_trie.build(std::move(keys));
  }

  m->normalizer.init(norm, m->treat_ws_as_suffix, what, "normalizer_spec");
  if (denorm.present && !denorm.charsmap.empty()) {
    m->has_denormalizer = true;
    m->denormalizer.init(denorm, false, what, "denormalizer_spec");
  }
  return SentencePieceTokenizer(std::move(m));
}

SentencePieceTokenizer SentencePieceTokenizer::load(const std::string& model_path) {
  return from_bytes(read_text_file(model_path), model_path);
}

std::vector<int> SentencePieceTokenizer::encode(const std::string& utf8) const {
  std::vector<int> ids;
  m_->encode(utf8, &ids, nullptr);
  return ids;
}

std::vector<std::string> SentencePieceTokenizer::encode_pieces(const std::string& utf8) const {
  std::vector<std::string> pieces;
  m_->encode(utf8, nullptr, &pieces);
  return pieces;
}

void SentencePieceTokenizer::encode(const std::string& utf8, std::vector<int>* ids, std::vector<std::string>* pieces) const {
  m_->encode(utf8, ids, pieces);
}

std::string SentencePieceTokenizer::decode(const std::vector<int>& ids) const { return m_->decode(ids); }

std::string SentencePieceTokenizer::normalize(const std::string& utf8) const {
  return m_->normalizer.normalize(utf8, &m_->user_trie);
}

const std::string& SentencePieceTokenizer::piece(int id) const {
  if (id < 0 || static_cast<size_t>(id) >= m_->pieces.size()) m_->bad_id(id);
  return m_->pieces[static_cast<size_t>(id)];
}

int SentencePieceTokenizer::piece_to_id(const std::string& piece) const {
  auto it = m_->reserved_map.find(piece);
  if (it != m_->reserved_map.end()) return it->second;
  auto it2 = m_->normal_map.find(piece);
  if (it2 != m_->normal_map.end()) return it2->second;
  return -1;
}

float SentencePieceTokenizer::score(int id) const {
  return id >= 0 && static_cast<size_t>(id) < m_->scores.size() ? m_->scores[static_cast<size_t>(id)] : 0.0f;
}

SentencePieceTokenizer::PieceType SentencePieceTokenizer::type(int id) const {
  return id >= 0 && static_cast<size_t>(id) < m_->types.size() ? m_->types[static_cast<size_t>(id)] : PieceType::kNormal;
}

bool SentencePieceTokenizer::is_byte(int id) const {
  return id >= 0 && static_cast<size_t>(id) < m_->types.size() && type(id) == PieceType::kByte;
}
bool SentencePieceTokenizer::is_control(int id) const {
  return id >= 0 && static_cast<size_t>(id) < m_->types.size() && type(id) == PieceType::kControl;
}
bool SentencePieceTokenizer::is_unknown(int id) const {
  return id >= 0 && static_cast<size_t>(id) < m_->types.size() && type(id) == PieceType::kUnknown;
}
bool SentencePieceTokenizer::is_unused(int id) const {
  return id >= 0 && static_cast<size_t>(id) < m_->types.size() && type(id) == PieceType::kUnused;
}
bool SentencePieceTokenizer::is_user_defined(int id) const {
  return id >= 0 && static_cast<size_t>(id) < m_->types.size() && type(id) == PieceType::kUserDefined;
}

int SentencePieceTokenizer::bos_id() const {
  const int id = m_->spm_piece_to_id(m_->bos_piece);
  return is_control(id) ? id : -1;
}
int SentencePieceTokenizer::eos_id() const {
  const int id = m_->spm_piece_to_id(m_->eos_piece);
  return is_control(id) ? id : -1;
}
int SentencePieceTokenizer::pad_id() const {
  const int id = m_->spm_piece_to_id(m_->pad_piece);
  return is_control(id) ? id : -1;
}
int SentencePieceTokenizer::unk_id() const {
  const int id = m_->spm_piece_to_id(m_->unk_piece);
  return is_unknown(id) ? id : -1;
}
size_t SentencePieceTokenizer::vocab_size() const { return m_->pieces.size(); }
SentencePieceTokenizer::ModelType SentencePieceTokenizer::model_type() const { return m_->model_type; }
bool SentencePieceTokenizer::byte_fallback() const { return m_->byte_fallback; }
const std::string& SentencePieceTokenizer::source() const { return m_->what; }

}  // namespace iris
