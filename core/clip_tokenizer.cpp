#include "core/clip_tokenizer.h"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "core/error.h"
#include "core/mmap_file.h"
#include "core/unicode.h"

namespace iris {
namespace {

constexpr std::string_view kStartOfText = "<|startoftext|>";
constexpr std::string_view kEndOfText = "<|endoftext|>";
constexpr std::string_view kEndOfWord = "</w>";
// simple_tokenizer.py: merges = lines[1 : 49152 - 256 - 2 + 1].
constexpr size_t kClipMergeCount = 49152 - 256 - 2;
// Pieces longer than this are not cached (they are rare and would bloat the cache).
constexpr size_t kMaxCachedPieceBytes = 128;
constexpr size_t kMaxCacheEntries = 1 << 16;
// The real file inflates to ~3 MiB; a cap keeps a hostile file from exhausting memory.
constexpr size_t kMaxBpeFileBytes = size_t{256} << 20;

// GPT-2/CLIP bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the
// other 68 bytes for U+0100.. in byte order; the vocabulary lists them printable first.
struct ByteSymbols {
  std::array<uint8_t, 256> order{};          // vocab order (id -> byte)
  std::array<char32_t, 256> code_point{};    // byte -> the character standing for it
  std::unordered_map<char32_t, uint8_t> byte_of;  // inverse of code_point
};

const ByteSymbols& byte_symbols() {
  static const ByteSymbols table = [] {
    ByteSymbols t;
    auto printable = [](int b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE); };
    size_t n = 0;
    for (int b = 0; b < 256; ++b) {
      if (printable(b)) {
        t.order[n++] = static_cast<uint8_t>(b);
        t.code_point[b] = static_cast<char32_t>(b);
      }
    }
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      if (!printable(b)) {
        t.order[n++] = static_cast<uint8_t>(b);
        t.code_point[b] = next++;
      }
    }
    for (int b = 0; b < 256; ++b) t.byte_of[t.code_point[b]] = static_cast<uint8_t>(b);
    return t;
  }();
  return table;
}

std::string byte_symbol(uint8_t b) {
  std::string s;
  unicode::append_utf8(s, byte_symbols().code_point[b]);
  return s;
}

// One merge rule as read from a file, with its line number for error messages.
struct MergeLine {
  std::string left, right;
  size_t line;
};

std::string_view trim_cr(std::string_view line) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return line;
}

bool is_ascii_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

// Python str.split() on a merge line; merge symbols never contain ASCII whitespace.
std::vector<std::string_view> split_fields(std::string_view line) {
  std::vector<std::string_view> fields;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && is_ascii_space(line[i])) ++i;
    size_t j = i;
    while (j < line.size() && !is_ascii_space(line[j])) ++j;
    if (j > i) fields.push_back(line.substr(i, j - i));
    i = j;
  }
  return fields;
}

MergeLine parse_merge(std::string_view line, size_t line_no, const std::string& path) {
  auto fields = split_fields(line);
  if (fields.size() != 2) {
    throw FormatError(path + ":" + std::to_string(line_no) + ": expected a merge \"left right\" (2 fields), found " +
                      std::to_string(fields.size()) + " fields");
  }
  return {std::string(fields[0]), std::string(fields[1]), line_no};
}

// Calls fn(line, 1-based line number) for each '\n'-separated line (Python split('\n')).
template <typename Fn>
void for_each_line(std::string_view text, Fn&& fn) {
  size_t line_no = 1, start = 0;
  while (true) {
    const size_t end = text.find('\n', start);
    if (!fn(text.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start), line_no)) return;
    if (end == std::string_view::npos) return;
    start = end + 1;
    ++line_no;
  }
}

// Whole-file gzip decompression (concatenated members allowed); detects corrupt and
// truncated data.
std::string gunzip(const std::string& data, const std::string& path) {
  if (data.size() < 2 || static_cast<uint8_t>(data[0]) != 0x1F || static_cast<uint8_t>(data[1]) != 0x8B) {
    throw FormatError(path + ": not a gzip file");
  }
  if (data.size() > kMaxBpeFileBytes) throw FormatError(path + ": too large for a BPE vocabulary");
  z_stream zs{};
  if (inflateInit2(&zs, 15 + 16) != Z_OK) throw FormatError(path + ": cannot initialise zlib");
  std::string out;
  std::array<char, 1 << 16> buf;
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  zs.avail_in = static_cast<uInt>(data.size());
  int rc = Z_OK;
  while (true) {
    zs.next_out = reinterpret_cast<Bytef*>(buf.data());
    zs.avail_out = static_cast<uInt>(buf.size());
    rc = inflate(&zs, Z_NO_FLUSH);
    out.append(buf.data(), buf.size() - zs.avail_out);
    if (out.size() > kMaxBpeFileBytes) {
      inflateEnd(&zs);
      throw FormatError(path + ": decompresses to more than " + std::to_string(kMaxBpeFileBytes >> 20) + " MiB");
    }
    if (rc == Z_STREAM_END) {
      if (zs.avail_in == 0) break;
      inflateReset(&zs);  // another gzip member follows
      continue;
    }
    if (rc == Z_OK) continue;
    if (rc == Z_BUF_ERROR && zs.avail_in == 0) {
      inflateEnd(&zs);
      throw FormatError(path + ": truncated gzip data (after " + std::to_string(out.size()) + " decompressed bytes)");
    }
    const std::string msg = zs.msg ? zs.msg : ("zlib error " + std::to_string(rc));
    inflateEnd(&zs);
    throw FormatError(path + ": corrupt gzip data: " + msg);
  }
  inflateEnd(&zs);
  return out;
}

}  // namespace

struct ClipTokenizer::Impl {
  struct Merge {
    int rank;
    int merged_id;
  };

  std::unordered_map<std::string, int> encoder;  // token string (byte symbols) -> id
  std::vector<std::string> decoded;              // id -> raw bytes ("</w>" kept as is)
  std::vector<bool> has_id;                      // ids that some token uses
  std::unordered_map<uint64_t, Merge> merges;    // (left id, right id) -> rule
  std::array<int, 256> byte_id{};                // byte -> id of its symbol
  std::array<int, 256> byte_end_id{};            // byte -> id of its symbol + "</w>"
  int bos = -1, eos = -1;

  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int>> cache;

  static uint64_t pair_key(int left, int right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }

  // (token, id) pairs; ids must be unique. When a token string repeats (possible in the
  // vocabulary derived from a .gz), the later id wins the encoder like Python's
  // dict(zip(vocab, range(...))); every id stays decodable.
  void set_vocab(const std::vector<std::pair<std::string, int>>& tokens, const std::string& source);
  void set_merges(const std::vector<MergeLine>& lines, const std::string& source);

  void bpe(std::string_view piece, std::vector<int>& out) const;
  void bpe_uncached(std::string_view piece, std::vector<int>& out) const;
};

void ClipTokenizer::Impl::set_vocab(const std::vector<std::pair<std::string, int>>& tokens,
                                    const std::string& source) {
  int max_id = -1;
  for (const auto& t : tokens) max_id = std::max(max_id, t.second);
  decoded.assign(static_cast<size_t>(max_id + 1), std::string());
  has_id.assign(static_cast<size_t>(max_id + 1), false);
  const auto& bs = byte_symbols();
  for (const auto& [token, id] : tokens) {
    if (has_id[id]) throw FormatError(source + ": id " + std::to_string(id) + " is used by more than one token");
    has_id[id] = true;
    encoder[token] = id;
    // Undo the byte-to-character mapping; characters outside it (none in CLIP) are
    // kept as their UTF-8 bytes.
    std::string raw;
    for (char32_t c : unicode::decode_utf8(token)) {
      auto it = bs.byte_of.find(c);
      if (it != bs.byte_of.end()) {
        raw.push_back(static_cast<char>(it->second));
      } else {
        unicode::append_utf8(raw, c);
      }
    }
    decoded[id] = std::move(raw);
  }
  for (int b = 0; b < 256; ++b) {
    const std::string sym = byte_symbol(static_cast<uint8_t>(b));
    auto it = encoder.find(sym);
    auto it_end = encoder.find(sym + std::string(kEndOfWord));
    if (it == encoder.end() || it_end == encoder.end()) {
      throw FormatError(source + ": the vocabulary lacks the byte symbol \"" + sym + "\" or \"" + sym +
                        std::string(kEndOfWord) + "\" (byte " + std::to_string(b) + ")");
    }
    byte_id[b] = it->second;
    byte_end_id[b] = it_end->second;
  }
  auto special = [&](std::string_view name) {
    auto it = encoder.find(std::string(name));
    if (it == encoder.end()) throw FormatError(source + ": the vocabulary lacks " + std::string(name));
    return it->second;
  };
  bos = special(kStartOfText);
  eos = special(kEndOfText);
}

void ClipTokenizer::Impl::set_merges(const std::vector<MergeLine>& lines, const std::string& source) {
  merges.reserve(lines.size());
  int rank = 0;
  for (const MergeLine& m : lines) {
    auto left = encoder.find(m.left);
    auto right = encoder.find(m.right);
    auto merged = encoder.find(m.left + m.right);
    if (left == encoder.end() || right == encoder.end() || merged == encoder.end()) {
      const std::string missing = left == encoder.end() ? m.left : right == encoder.end() ? m.right : m.left + m.right;
      throw FormatError(source + ":" + std::to_string(m.line) + ": merge \"" + m.left + " " + m.right +
                        "\" uses \"" + missing + "\", which is not in the vocabulary");
    }
    // A repeated rule takes its last rank, like Python's dict(zip(merges, range(...))).
    merges[pair_key(left->second, right->second)] = Merge{rank++, merged->second};
  }
}

// One BPE word as a doubly linked list of symbols over the piece's bytes.
// Semantics of simple_tokenizer.bpe(): repeatedly take the adjacent pair with the
// lowest merge rank and merge all its non-overlapping occurrences left to right, then
// look again. A min-heap of (rank, position) gives O(n log n) instead of O(n^2); all
// entries of one rank are drained before new pairs are considered, which keeps the
// "one bigram per pass" semantics even for unusual merge lists.
void ClipTokenizer::Impl::bpe_uncached(std::string_view piece, std::vector<int>& out) const {
  const size_t n = piece.size();
  if (n == 0) return;
  std::vector<int> id(n), prev(n), next(n);
  for (size_t i = 0; i < n; ++i) {
    const auto b = static_cast<uint8_t>(piece[i]);
    id[i] = (i + 1 == n) ? byte_end_id[b] : byte_id[b];
    prev[i] = static_cast<int>(i) - 1;
    next[i] = (i + 1 == n) ? -1 : static_cast<int>(i) + 1;
  }
  struct Candidate {
    int rank, pos, left, right, merged;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto push = [&](int pos) {
    if (pos < 0 || next[pos] < 0) return;
    auto it = merges.find(pair_key(id[pos], id[next[pos]]));
    if (it != merges.end()) heap.push({it->second.rank, pos, id[pos], id[next[pos]], it->second.merged_id});
  };
  for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int>(i));

  std::vector<Candidate> batch;
  while (!heap.empty()) {
    const int rank = heap.top().rank;
    batch.clear();
    while (!heap.empty() && heap.top().rank == rank) {
      batch.push_back(heap.top());
      heap.pop();
    }
    // batch is in left-to-right order (positions are original byte offsets).
    for (const Candidate& c : batch) {
      const int r = next[c.pos];
      // Stale when a symbol was merged since: ids only ever get longer, never repeat.
      if (id[c.pos] != c.left || r < 0 || id[r] != c.right) continue;
      id[c.pos] = c.merged;
      next[c.pos] = next[r];
      if (next[r] >= 0) prev[next[r]] = c.pos;
      id[r] = -1;
      push(prev[c.pos]);
      push(c.pos);
    }
  }
  for (int i = 0; i >= 0; i = next[i]) out.push_back(id[i]);
}

void ClipTokenizer::Impl::bpe(std::string_view piece, std::vector<int>& out) const {
  // The reference seeds its cache with the two special tokens: they map to their ids.
  if (piece == kStartOfText) {
    out.push_back(bos);
    return;
  }
  if (piece == kEndOfText) {
    out.push_back(eos);
    return;
  }
  const bool cacheable = piece.size() <= kMaxCachedPieceBytes;
  std::string key;
  if (cacheable) {
    key.assign(piece);
    std::lock_guard<std::mutex> lock(cache_mutex);
    auto it = cache.find(key);
    if (it != cache.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t start = out.size();
  bpe_uncached(piece, out);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex);
    if (cache.size() >= kMaxCacheEntries) cache.clear();
    cache.emplace(std::move(key), std::vector<int>(out.begin() + static_cast<std::ptrdiff_t>(start), out.end()));
  }
}

namespace {

// Case-insensitive match of an ASCII lowercase literal at text[i...], as the `regex`
// module does with IGNORECASE: after lower() the only other character that still
// matches one of these letters is U+017F LATIN SMALL LETTER LONG S (its simple case
// folding is 's').
bool matches_literal(std::u32string_view text, size_t i, std::string_view literal) {
  if (text.size() - i < literal.size()) return false;
  for (size_t k = 0; k < literal.size(); ++k) {
    const char32_t c = text[i + k];
    const char32_t want = static_cast<unsigned char>(literal[k]);
    if (c != want && !(want == 's' && c == 0x17F)) return false;
  }
  return true;
}

// [^\s\p{L}\p{N}] under IGNORECASE: the `regex` module tests every case variant of the
// character against the set, so U+0345 COMBINING GREEK YPOGEGRAMMENI (whose variants
// include the letter iota) is excluded although it is not a letter itself. It is then
// matched by no alternative and dropped, like a space. ([\p{L}] alone compiles to a
// plain property test, which ignores case variants.)
bool is_other(char32_t c) {
  return !unicode::is_white_space(c) && !unicode::is_letter(c) && !unicode::is_number(c) && c != 0x345;
}

// re.findall of the CLIP pattern over cleaned, lower-cased text. Returns [begin, end)
// index pairs into `text`.
std::vector<std::pair<size_t, size_t>> split_pieces(std::u32string_view text) {
  static constexpr std::string_view kContractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
  std::vector<std::pair<size_t, size_t>> pieces;
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const char32_t c = text[i];
    size_t len = 0;
    if (c == '<') {
      if (matches_literal(text, i, kStartOfText)) {
        len = kStartOfText.size();
      } else if (matches_literal(text, i, kEndOfText)) {
        len = kEndOfText.size();
      }
    } else if (c == '\'') {
      for (std::string_view con : kContractions) {
        if (matches_literal(text, i, con)) {
          len = con.size();
          break;
        }
      }
    }
    if (len == 0) {
      if (unicode::is_letter(c)) {
        while (i + len < n && unicode::is_letter(text[i + len])) ++len;
      } else if (unicode::is_number(c)) {
        len = 1;
      } else if (is_other(c)) {
        while (i + len < n && is_other(text[i + len])) ++len;
      }
    }
    if (len == 0) {
      ++i;  // white space (or U+0345): not part of any piece
      continue;
    }
    pieces.emplace_back(i, i + len);
    i += len;
  }
  return pieces;
}

// basic_clean + whitespace_clean + lower() of the reference:
//   html.unescape(html.unescape(t)).strip(), regex.sub(r'\s+', ' ', t).strip(), lower().
// `regex` (imported as re in simple_tokenizer.py) takes \s as White_Space, while
// str.strip() uses str.isspace(), which also covers U+001C..U+001F.
std::u32string clean_text(const std::string& utf8) {
  const std::u32string unescaped = unicode::html_unescape(unicode::html_unescape(unicode::decode_utf8(utf8)));
  const std::u32string_view stripped = unicode::strip(unescaped);
  std::u32string collapsed;
  collapsed.reserve(stripped.size());
  for (size_t i = 0; i < stripped.size();) {
    if (unicode::is_white_space(stripped[i])) {
      collapsed.push_back(' ');
      while (i < stripped.size() && unicode::is_white_space(stripped[i])) ++i;
    } else {
      collapsed.push_back(stripped[i++]);
    }
  }
  return unicode::to_lower(unicode::strip(collapsed));
}

}  // namespace

std::vector<int> ClipTokenizer::encode(const std::string& utf8) const {
  const std::u32string text = clean_text(utf8);
  std::vector<int> ids;
  std::string piece;
  for (const auto& [begin, end] : split_pieces(text)) {
    piece = unicode::encode_utf8(std::u32string_view(text).substr(begin, end - begin));
    impl_->bpe(piece, ids);
  }
  return ids;
}

std::vector<std::string> clip_pre_tokenize(const std::string& utf8) {
  const std::u32string text = clean_text(utf8);
  std::vector<std::string> pieces;
  for (const auto& [begin, end] : split_pieces(text))
    pieces.push_back(unicode::encode_utf8(std::u32string_view(text).substr(begin, end - begin)));
  return pieces;
}

std::string clip_byte_symbol(uint8_t byte) { return byte_symbol(byte); }

std::vector<uint8_t> clip_byte_vocab_order() {
  const auto& order = byte_symbols().order;
  return std::vector<uint8_t>(order.begin(), order.end());
}

std::vector<int> ClipTokenizer::encode_with_special(const std::string& utf8) const {
  std::vector<int> ids{impl_->bos};
  const std::vector<int> body = encode(utf8);
  ids.insert(ids.end(), body.begin(), body.end());
  ids.push_back(impl_->eos);
  return ids;
}

std::vector<int> ClipTokenizer::encode_padded(const std::string& utf8, int max_length, int pad_id) const {
  if (max_length < 2) {
    throw ConfigError("CLIP tokenizer: max_length must be at least 2 (bos + eos), got " + std::to_string(max_length));
  }
  std::vector<int> body = encode(utf8);
  body.resize(std::min(body.size(), static_cast<size_t>(max_length - 2)));
  std::vector<int> ids;
  ids.reserve(static_cast<size_t>(max_length));
  ids.push_back(impl_->bos);
  ids.insert(ids.end(), body.begin(), body.end());
  ids.push_back(impl_->eos);
  ids.resize(static_cast<size_t>(max_length), pad_id);
  return ids;
}

std::string ClipTokenizer::decode(const std::vector<int>& ids, bool skip_special) const {
  std::string bytes;
  for (int id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= impl_->has_id.size() || !impl_->has_id[id]) {
      throw FormatError("CLIP tokenizer: token id " + std::to_string(id) + " is not in the vocabulary");
    }
    if (skip_special && (id == impl_->bos || id == impl_->eos)) continue;
    bytes += impl_->decoded[id];
  }
  std::string text = unicode::encode_utf8(unicode::decode_utf8(bytes));
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    if (text.compare(i, kEndOfWord.size(), kEndOfWord) == 0) {
      out.push_back(' ');
      i += kEndOfWord.size();
    } else {
      out.push_back(text[i++]);
    }
  }
  return out;
}

int ClipTokenizer::bos_id() const { return impl_->bos; }
int ClipTokenizer::eos_id() const { return impl_->eos; }
size_t ClipTokenizer::vocab_size() const { return impl_->has_id.size(); }

ClipTokenizer ClipTokenizer::from_files(const std::string& vocab_json, const std::string& merges_txt) {
  auto impl = std::make_shared<Impl>();

  nlohmann::json vocab;
  try {
    vocab = nlohmann::json::parse(read_text_file(vocab_json));
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(vocab_json + ": invalid JSON: " + e.what());
  }
  if (!vocab.is_object() || vocab.empty()) {
    throw FormatError(vocab_json + ": expected a non-empty JSON object {token: id}");
  }
  std::vector<std::pair<std::string, int>> tokens;
  tokens.reserve(vocab.size());
  // Ids must be 0 .. N-1 (checked for duplicates in set_vocab): the decoder and the
  // text encoder's embedding table are indexed by id.
  const auto count = static_cast<int64_t>(vocab.size());
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= count) {
      throw FormatError(vocab_json + ": token \"" + token + "\": id must be an integer in [0, " +
                        std::to_string(count - 1) + "], got " + id.dump());
    }
    tokens.emplace_back(token, static_cast<int>(id.get<int64_t>()));
  }
  impl->set_vocab(tokens, vocab_json);

  const std::string text = read_text_file(merges_txt);
  std::vector<MergeLine> merges;
  for_each_line(text, [&](std::string_view line, size_t line_no) {
    line = trim_cr(line);
    // The "#version: 0.2" header. Other lines starting with '#' are merges ('#' is a
    // byte symbol).
    if (line_no == 1 && line.substr(0, 8) == "#version") return true;
    if (split_fields(line).empty()) return true;  // blank (e.g. the final newline)
    merges.push_back(parse_merge(line, line_no, merges_txt));
    return true;
  });
  impl->set_merges(merges, merges_txt);
  return ClipTokenizer(std::move(impl));
}

ClipTokenizer ClipTokenizer::from_bpe_gz(const std::string& path) {
  const std::string data = gunzip(read_text_file(path), path);
  // simple_tokenizer.py: gzip.open(path).read().decode("utf-8").split('\n')[1:48895].
  // (A final newline does not start another line here, so a short file is reported
  // by its merge count rather than as an empty merge.)
  std::string_view text = data;
  if (!text.empty() && text.back() == '\n') text.remove_suffix(1);
  std::vector<MergeLine> merges;
  merges.reserve(kClipMergeCount);
  for_each_line(text, [&](std::string_view line, size_t line_no) {
    if (line_no == 1) return true;  // "#version: 0.2"
    if (merges.size() == kClipMergeCount) return false;
    if (unicode::encode_utf8(unicode::decode_utf8(line)) != line) {
      throw FormatError(path + ":" + std::to_string(line_no) + ": invalid UTF-8");
    }
    merges.push_back(parse_merge(line, line_no, path));
    return true;
  });
  if (merges.size() != kClipMergeCount) {
    throw FormatError(path + ": expected " + std::to_string(kClipMergeCount) + " merges after the header line, found " +
                      std::to_string(merges.size()));
  }

  // vocab = byte symbols, the same + "</w>", the merged pairs, then the two specials.
  std::vector<std::pair<std::string, int>> tokens;
  tokens.reserve(2 * 256 + merges.size() + 2);
  const auto& bs = byte_symbols();
  for (uint8_t b : bs.order) tokens.emplace_back(byte_symbol(b), static_cast<int>(tokens.size()));
  for (uint8_t b : bs.order) tokens.emplace_back(byte_symbol(b) + std::string(kEndOfWord), static_cast<int>(tokens.size()));
  for (const MergeLine& m : merges) tokens.emplace_back(m.left + m.right, static_cast<int>(tokens.size()));
  tokens.emplace_back(std::string(kStartOfText), static_cast<int>(tokens.size()));
  tokens.emplace_back(std::string(kEndOfText), static_cast<int>(tokens.size()));

  auto impl = std::make_shared<Impl>();
  impl->set_vocab(tokens, path);
  impl->set_merges(merges, path);
  return ClipTokenizer(std::move(impl));
}

ClipTokenizer ClipTokenizer::from_folder(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  for (const fs::path& d : {fs::path(dir), fs::path(dir) / "tokenizer"}) {
    if (fs::is_regular_file(d / "vocab.json", ec) && fs::is_regular_file(d / "merges.txt", ec)) {
      return from_files((d / "vocab.json").string(), (d / "merges.txt").string());
    }
    if (fs::is_regular_file(d / "bpe_simple_vocab_16e6.txt.gz", ec)) {
      return from_bpe_gz((d / "bpe_simple_vocab_16e6.txt.gz").string());
    }
  }
  throw IoError(dir + ": no CLIP tokenizer found (looked for vocab.json + merges.txt, tokenizer/vocab.json + "
                "tokenizer/merges.txt, bpe_simple_vocab_16e6.txt.gz)");
}

}  // namespace iris
