// SentencePiece BPE training (see sentencepiece_trainer.h for the algorithm and the layout).
#include "core/sentencepiece_trainer.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <set>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "core/error.h"
#include "core/json_util.h"
#include "core/mmap_file.h"
#include "core/sentencepiece.h"
#include "core/unicode.h"

namespace fs = std::filesystem;

namespace iris {

namespace {

using PieceType = SentencePieceTokenizer::PieceType;

constexpr char32_t kSpaceChar = 0x2581;                    // U+2581 stands for ' '
constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";  // its UTF-8
constexpr const char* kUnk = "<unk>";
constexpr const char* kBos = "<s>";
constexpr const char* kEos = "</s>";
constexpr const char* kPad = "<pad>";
constexpr char32_t kTab = 0x09;
constexpr int kSpecialPieces = 3;  // <unk>, <s>, </s>
constexpr int kBytePieces = 256;

std::string byte_piece(unsigned b) {
  static const char kHex[] = "0123456789ABCDEF";
  return std::string("<0x") + kHex[(b >> 4) & 15] + kHex[b & 15] + ">";
}

// ---------------------------------------------------------------------------------------------
// Protobuf wire format, writing side: the field kinds sentencepiece_model.proto uses.

class ProtoWriter {
 public:
  void add_varint(uint32_t field, uint64_t v) {
    key(field, 0);
    varint(v);
  }
  // int32 fields: a negative value is written as its 64-bit two's complement (10 bytes), as
  // protobuf does.
  void add_int32(uint32_t field, int32_t v) { add_varint(field, static_cast<uint64_t>(static_cast<int64_t>(v))); }
  void add_bool(uint32_t field, bool v) { add_varint(field, v ? 1 : 0); }
  void add_float(uint32_t field, float v) {
    key(field, 5);
    uint32_t bits = 0;
    std::memcpy(&bits, &v, sizeof bits);
    for (int i = 0; i < 4; ++i) out_ += static_cast<char>((bits >> (8 * i)) & 0xFF);  // little-endian
  }
  void add_bytes(uint32_t field, std::string_view b) {
    key(field, 2);
    varint(b.size());
    out_.append(b.data(), b.size());
  }
  const std::string& bytes() const { return out_; }

 private:
  void key(uint32_t field, uint32_t wire_type) { varint((static_cast<uint64_t>(field) << 3) | wire_type); }
  void varint(uint64_t v) {
    while (v >= 0x80) {
      out_ += static_cast<char>((v & 0x7F) | 0x80);
      v >>= 7;
    }
    out_ += static_cast<char>(v);
  }
  std::string out_;
};

struct ModelPiece {
  std::string piece;
  float score = 0;
  PieceType type = PieceType::kNormal;
};

// NormalizerSpec (field numbers: name 1, add_dummy_prefix 3, remove_extra_whitespaces 4,
// escape_whitespaces 5). "identity": no precompiled_charsmap, so no character mapping.
std::string normalizer_spec(const SpmTrainOptions& o) {
  ProtoWriter w;
  w.add_bytes(1, "identity");
  w.add_bool(3, true);
  w.add_bool(4, o.remove_extra_whitespaces);
  w.add_bool(5, true);
  return w.bytes();
}

// TrainerSpec, fields in number order (sentencepiece_model.proto).
std::string trainer_spec(const SpmTrainOptions& o, int vocab_size) {
  ProtoWriter w;
  w.add_varint(3, 2);  // model_type: BPE
  w.add_int32(4, vocab_size);
  w.add_float(10, static_cast<float>(o.character_coverage));
  if (o.max_sentences > 0) w.add_varint(11, static_cast<uint64_t>(o.max_sentences));  // input_sentence_size
  w.add_int32(20, o.max_piece_length);                                                // max_sentencepiece_length
  w.add_bool(21, true);                                                               // split_by_unicode_script
  w.add_bool(22, true);                                                               // split_by_whitespace
  w.add_bool(23, true);                                                               // split_by_number
  w.add_bool(24, false);                                                              // treat_whitespace_as_suffix
  w.add_bool(25, o.split_digits);
  for (const std::string& s : o.user_defined_symbols) w.add_bytes(31, s);
  w.add_bool(33, o.hard_vocab_limit);
  w.add_bool(35, o.byte_fallback);
  w.add_int32(40, 0);   // unk_id
  w.add_int32(41, 1);   // bos_id
  w.add_int32(42, 2);   // eos_id
  w.add_int32(43, -1);  // pad_id: none
  w.add_bytes(45, kUnk);
  w.add_bytes(46, kBos);
  w.add_bytes(47, kEos);
  w.add_bytes(48, kPad);
  return w.bytes();
}

// ModelProto: pieces 1 (SentencePiece: piece 1, score 2, type 3), trainer_spec 2,
// normalizer_spec 3. NORMAL, the default type, is left implicit as libsentencepiece does.
std::string model_proto(const std::vector<ModelPiece>& pieces, const std::string& trainer, const std::string& normalizer) {
  ProtoWriter m;
  for (const ModelPiece& p : pieces) {
    ProtoWriter sp;
    sp.add_bytes(1, p.piece);
    sp.add_float(2, p.score);
    if (p.type != PieceType::kNormal) sp.add_varint(3, static_cast<uint64_t>(p.type));
    m.add_bytes(1, sp.bytes());
  }
  m.add_bytes(2, trainer);
  m.add_bytes(3, normalizer);
  return m.bytes();
}

// ---------------------------------------------------------------------------------------------
// Piece validity (libsentencepiece's TrainerInterface::IsValidSentencePiece with
// split_by_whitespace, split_by_unicode_script and split_by_number on).

constexpr int kAnyScript = -1, kInherited = -2, kByBlock = -3, kLettersLatin = -4;
constexpr int kCommon = 0, kLatin = 1, kGreek = 2, kCyrillic = 3, kArmenian = 4, kHebrew = 5, kArabic = 6, kThai = 7,
              kGeorgian = 8, kHangul = 9, kHan = 10;  // Han includes Hiragana and Katakana, as libsentencepiece

// The Unicode Script property, approximated by code-point blocks: enough to keep letters apart
// from digits and punctuation (Common) and the major scripts apart from each other. Letters in
// unlisted blocks take their 128-code-point block as their script.
int script_of(char32_t c) {
  struct Range {
    char32_t lo, hi;
    int script;
  };
  static constexpr Range kRanges[] = {
      {0x0080, 0x024F, kLettersLatin}, {0x0250, 0x02AF, kLatin},     {0x02B0, 0x02FF, kCommon},
      {0x0300, 0x036F, kInherited},    {0x0370, 0x03FF, kGreek},     {0x0400, 0x052F, kCyrillic},
      {0x0530, 0x058F, kArmenian},     {0x0590, 0x05FF, kHebrew},    {0x0600, 0x06FF, kArabic},
      {0x0750, 0x077F, kArabic},       {0x08A0, 0x08FF, kArabic},    {0x0900, 0x0DFF, kByBlock},
      {0x0E00, 0x0E7F, kThai},         {0x10A0, 0x10FF, kGeorgian},  {0x1100, 0x11FF, kHangul},
      {0x1AB0, 0x1AFF, kInherited},    {0x1C80, 0x1C8F, kCyrillic},  {0x1D00, 0x1DBF, kLatin},
      {0x1DC0, 0x1DFF, kInherited},    {0x1E00, 0x1EFF, kLatin},     {0x1F00, 0x1FFF, kGreek},
      {0x2000, 0x20CF, kCommon},       {0x20D0, 0x20FF, kInherited}, {0x2100, 0x2BFF, kCommon},
      {0x2C60, 0x2C7F, kLatin},        {0x2DE0, 0x2DFF, kCyrillic},  {0x2E00, 0x2E7F, kCommon},
      {0x3000, 0x303F, kCommon},       {0x3040, 0x30FF, kHan},       {0x3130, 0x318F, kHangul},
      {0x31F0, 0x31FF, kHan},          {0x3400, 0x4DBF, kHan},       {0x4E00, 0x9FFF, kHan},
      {0xA640, 0xA69F, kCyrillic},     {0xA720, 0xA7FF, kLatin},     {0xAC00, 0xD7AF, kHangul},
      {0xF900, 0xFAFF, kHan},          {0xFB50, 0xFDFF, kArabic},    {0xFE00, 0xFE0F, kInherited},
      {0xFE20, 0xFE2F, kInherited},    {0xFE70, 0xFEFE, kArabic},    {0xFF01, 0xFF20, kCommon},
      {0xFF21, 0xFF3A, kLatin},        {0xFF3B, 0xFF40, kCommon},    {0xFF41, 0xFF5A, kLatin},
      {0xFF5B, 0xFF65, kCommon},       {0xFF66, 0xFF9F, kHan},       {0x1F000, 0x1FAFF, kCommon},
      {0x20000, 0x3FFFF, kHan},        {0xE0100, 0xE01EF, kInherited},
  };
  const int by_block = 100 + static_cast<int>(c >> 7);
  if (c < 0x80) return ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') ? kLatin : kCommon;
  const auto it = std::upper_bound(std::begin(kRanges), std::end(kRanges), c,
                                   [](char32_t v, const Range& r) { return v < r.lo; });
  if (it != std::begin(kRanges) && c <= std::prev(it)->hi) {
    const int s = std::prev(it)->script;
    if (s == kLettersLatin) return unicode::is_letter(c) ? kLatin : kCommon;
    if (s == kByBlock) return by_block;
    return s;
  }
  return unicode::is_letter(c) ? by_block : kCommon;
}

// libsentencepiece's is_unicode_decimal_number: ASCII and full-width digits.
bool is_decimal_digit(char32_t c) { return (c >= '0' && c <= '9') || (c >= 0xFF10 && c <= 0xFF19); }

bool valid_piece(const std::u32string& p, const SpmTrainOptions& o) {
  if (p.empty() || p.size() > static_cast<size_t>(o.max_piece_length)) return false;
  int prev = kAnyScript;
  for (size_t i = 0; i < p.size(); ++i) {
    const char32_t c = p[i];
    if (c == kSpaceChar) {
      if (i > 0) return false;  // whitespace only as a prefix
      continue;
    }
    if (o.split_digits && is_decimal_digit(c) && p.size() > 1) return false;
    int s = script_of(c);
    if (s == kInherited) s = prev;  // combining marks join the preceding character
    if (prev != kAnyScript && s != prev) return false;
    prev = s;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Corpus: the distinct words of the normalized sentences with their counts.

struct WordCount {
  std::string text;  // normalized UTF-8, e.g. "▁circle"
  int64_t count = 0;
};

// Length of the UTF-8 character starting with lead byte `c` (the text is valid UTF-8 here).
size_t utf8_len(unsigned char c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

std::vector<WordCount> count_words(const std::vector<std::string>& sentences, const SpmTrainOptions& o,
                                   int64_t* used_sentences) {
  // A model with just <unk> and the user-defined symbols normalizes exactly as the trained
  // model's encoder will (same normalizer spec, same user-symbol matching).
  std::vector<ModelPiece> pieces{{kUnk, 0, PieceType::kUnknown}};
  for (const std::string& s : o.user_defined_symbols) pieces.push_back({s, 0, PieceType::kUserDefined});
  ProtoWriter bpe;
  bpe.add_varint(3, 2);  // trainer_spec.model_type: BPE (no byte pieces, so no byte_fallback)
  const SentencePieceTokenizer normalizer = SentencePieceTokenizer::from_bytes(
      model_proto(pieces, bpe.bytes(), normalizer_spec(o)), "sentencepiece trainer normalizer");
  // User-defined symbols are matched longest first, as the encoder's trie does.
  std::vector<std::string> user = o.user_defined_symbols;
  std::sort(user.begin(), user.end(), [](const std::string& a, const std::string& b) {
    return a.size() != b.size() ? a.size() > b.size() : a < b;
  });
  const auto user_match = [&](const std::string& s, size_t pos) -> size_t {
    for (const std::string& u : user)
      if (s.compare(pos, u.size(), u) == 0) return u.size();
    return 0;
  };

  size_t n = sentences.size();
  if (o.max_sentences > 0) n = std::min(n, static_cast<size_t>(o.max_sentences));
  std::unordered_map<std::string, int64_t> counts;
  int64_t used = 0;
  for (size_t k = 0; k < n; ++k) {
    const std::string norm = normalizer.normalize(sentences[k]);
    if (norm.empty()) continue;
    ++used;
    size_t begin = 0, pos = 0;
    const auto flush = [&](size_t end) {
      if (end > begin) ++counts[norm.substr(begin, end - begin)];
    };
    while (pos < norm.size()) {
      if (const size_t u = user.empty() ? 0 : user_match(norm, pos)) {  // cut out, never merged
        flush(pos);
        pos += u;
        begin = pos;
        continue;
      }
      if (pos > begin && norm.compare(pos, kSpaceSymbol.size(), kSpaceSymbol) == 0) {  // a word starts
        flush(pos);
        begin = pos;
      }
      pos += std::min(norm.size() - pos, utf8_len(static_cast<unsigned char>(norm[pos])));
    }
    flush(pos);
  }
  *used_sentences = used;
  std::vector<WordCount> words;
  words.reserve(counts.size());
  for (auto& [text, count] : counts) words.push_back({text, count});
  std::sort(words.begin(), words.end(), [](const WordCount& a, const WordCount& b) { return a.text < b.text; });
  return words;
}

// ---------------------------------------------------------------------------------------------
// The merge loop. Symbols are ints (the alphabet first, then one per merge); a word is its
// current symbol sequence; every adjacent pair keeps its total count and the words it occurs
// in, and the pairs with a positive count sit in an ordered queue, best first.

class BpeMerger {
 public:
  BpeMerger(const SpmTrainOptions& o, std::unordered_set<std::string> reserved)
      : o_(o), reserved_(std::move(reserved)) {}

  int add_symbol(std::u32string chars) {
    symbols_.push_back(std::move(chars));
    return static_cast<int>(symbols_.size()) - 1;
  }

  // `syms`: the word's characters as symbols, -1 for a character outside the alphabet (no
  // pair spans it).
  void add_word(std::vector<int> syms, int64_t count) {
    words_.push_back({std::move(syms), count});
    count_pairs(static_cast<int>(words_.size()) - 1, +1);
  }

  // Runs up to `max_merges` merges; returns the new pieces in merge order.
  std::vector<std::string> run(int max_merges) {
    flush();
    std::vector<std::string> merged_pieces;
    std::unordered_set<std::string> emitted;
    while (static_cast<int>(merged_pieces.size()) < max_merges && !queue_.empty()) {
      Pair* best = queue_.begin()->pair;
      const int64_t freq = best->queued;
      retire(best);
      // Reached before through another split ("aa"+"a" vs "a"+"aa"): libsentencepiece skips it.
      if (!emitted.insert(best->merged).second) continue;
      merged_pieces.push_back(best->merged);
      const int sym = add_symbol(symbols_[best->left] + symbols_[best->right]);
      apply(*best, sym);
      if (o_.log && merged_pieces.size() % 100 == 0)
        o_.log("[spm] " + std::to_string(merged_pieces.size()) + " merges, last \"" + best->merged + "\" (" +
               std::to_string(freq) + " times)");
    }
    return merged_pieces;
  }

 private:
  struct Word {
    std::vector<int> syms;
    int64_t count = 0;
  };
  struct Pair {
    int left = 0, right = 0;
    bool valid = false;
    bool retired = false;   // merged or skipped: never queued again
    bool touched = false;   // count changed since the last flush()
    int64_t freq = 0;       // occurrences over all words, times their counts
    int64_t queued = 0;     // the count it is queued under (0: not queued)
    std::string merged;     // UTF-8 of left + right
    size_t length = 0;      // characters
    std::vector<int> words; // words that held it at some point (stale entries are checked)
  };
  struct QueueEntry {
    int64_t freq;
    Pair* pair;
  };
  // libsentencepiece's order: most frequent; then the shorter piece; then the smaller string.
  // The left symbol decides between two splits of one string.
  struct QueueOrder {
    bool operator()(const QueueEntry& a, const QueueEntry& b) const {
      if (a.freq != b.freq) return a.freq > b.freq;
      if (a.pair->length != b.pair->length) return a.pair->length < b.pair->length;
      if (const int c = a.pair->merged.compare(b.pair->merged)) return c < 0;
      return a.pair->left < b.pair->left;
    }
  };

  // The pair (left, right), created on first sight; null when it may not be merged.
  Pair* pair_for(int left, int right) {
    if (left < 0 || right < 0) return nullptr;
    const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
    auto [it, inserted] = pairs_.try_emplace(key);
    Pair& p = it->second;
    if (inserted) {
      p.left = left;
      p.right = right;
      const std::u32string chars = symbols_[left] + symbols_[right];
      p.length = chars.size();
      p.merged = unicode::encode_utf8(chars);
      p.valid = valid_piece(chars, o_) && !reserved_.count(p.merged);
    }
    return p.valid ? &p : nullptr;
  }

  // Adds (sign +1) or removes (-1) word `w`'s pair occurrences. Overlapping occurrences of one
  // pair ("a a a") count as the merges they allow, left to right (1 for three a's, 2 for four),
  // as libsentencepiece 0.1.97 counts them.
  void count_pairs(int w, int sign) {
    const Word& word = words_[w];
    bool counted_prev = false;
    for (size_t i = 0; i + 1 < word.syms.size(); ++i) {
      const bool overlaps = counted_prev && word.syms[i - 1] == word.syms[i] && word.syms[i] == word.syms[i + 1];
      counted_prev = !overlaps;
      if (overlaps) continue;
      Pair* p = pair_for(word.syms[i], word.syms[i + 1]);
      if (!p || p->retired) continue;
      p->freq += sign * word.count;
      if (sign > 0 && (p->words.empty() || p->words.back() != w)) p->words.push_back(w);
      if (!p->touched) {
        p->touched = true;
        touched_.push_back(p);
      }
    }
  }

  // Requeues every pair whose count changed.
  void flush() {
    for (Pair* p : touched_) {
      p->touched = false;
      if (p->retired || p->queued == p->freq) continue;
      if (p->queued > 0) queue_.erase({p->queued, p});
      p->queued = 0;
      if (p->freq > 0) {
        queue_.insert({p->freq, p});
        p->queued = p->freq;
      }
    }
    touched_.clear();
  }

  void retire(Pair* p) {
    if (p->queued > 0) queue_.erase({p->queued, p});
    p->queued = 0;
    p->retired = true;
  }

  // Replaces every occurrence of the pair, left to right, by `sym` and updates the counts of
  // the pairs around it.
  void apply(Pair& p, int sym) {
    std::vector<int> ws = std::move(p.words);
    std::sort(ws.begin(), ws.end());
    ws.erase(std::unique(ws.begin(), ws.end()), ws.end());
    for (const int w : ws) {
      std::vector<int>& s = words_[w].syms;
      bool found = false;
      for (size_t i = 0; i + 1 < s.size() && !found; ++i) found = s[i] == p.left && s[i + 1] == p.right;
      if (!found) continue;  // a stale entry
      count_pairs(w, -1);
      std::vector<int> out;
      out.reserve(s.size());
      for (size_t i = 0; i < s.size(); ++i) {
        if (i + 1 < s.size() && s[i] == p.left && s[i + 1] == p.right) {
          out.push_back(sym);
          ++i;
        } else {
          out.push_back(s[i]);
        }
      }
      s = std::move(out);
      count_pairs(w, +1);
    }
    flush();
  }

  const SpmTrainOptions& o_;
  std::unordered_set<std::string> reserved_;  // special pieces: never a merge result
  std::vector<std::u32string> symbols_;
  std::vector<Word> words_;
  std::unordered_map<uint64_t, Pair> pairs_;  // node-based: Pair pointers stay valid
  std::set<QueueEntry, QueueOrder> queue_;
  std::vector<Pair*> touched_;
};

void check_options(const SpmTrainOptions& o) {
  const auto bad = [](const std::string& why) { throw ConfigError("sentencepiece training: " + why); };
  if (o.vocab_size <= 0) bad("vocab_size must be positive, got " + std::to_string(o.vocab_size));
  if (!(o.character_coverage > 0 && o.character_coverage <= 1))
    bad("character_coverage must be in (0, 1], got " + std::to_string(o.character_coverage));
  if (o.max_piece_length < 1) bad("max_piece_length must be at least 1, got " + std::to_string(o.max_piece_length));
  if (o.max_sentences < 0) bad("max_sentences must be >= 0, got " + std::to_string(o.max_sentences));
  std::set<std::string> seen;
  for (const std::string& s : o.user_defined_symbols) {
    const std::string what = "user-defined symbol \"" + s + "\"";
    if (s.empty()) bad("a user-defined symbol is empty");
    if (unicode::encode_utf8(unicode::decode_utf8(s)) != s) bad(what + " is not valid UTF-8");
    if (s.find(' ') != std::string::npos || s.find(kSpaceSymbol) != std::string::npos)
      bad(what + " contains a space (the normalizer splits text there)");
    if (s == kUnk || s == kBos || s == kEos) bad(what + " is already a special piece (" + s + ")");
    if (s.size() == 6 && s.compare(0, 3, "<0x") == 0 && s.back() == '>') bad(what + " looks like a byte piece");
    if (!seen.insert(s).second) bad(what + " is given twice");
  }
  const int fixed = kSpecialPieces + static_cast<int>(o.user_defined_symbols.size()) + (o.byte_fallback ? kBytePieces : 0);
  if (o.vocab_size <= fixed)
    bad("vocab_size " + std::to_string(o.vocab_size) + " is too small: " + std::to_string(kSpecialPieces) + " special + " +
        std::to_string(o.user_defined_symbols.size()) + " user-defined" +
        (o.byte_fallback ? " + " + std::to_string(kBytePieces) + " byte" : std::string()) + " pieces = " +
        std::to_string(fixed) + " leave no room for characters");
}

}  // namespace

std::string train_sentencepiece_bpe(const std::vector<std::string>& sentences, const SpmTrainOptions& o) {
  check_options(o);
  int64_t used_sentences = 0;
  const std::vector<WordCount> words = count_words(sentences, o, &used_sentences);
  if (words.empty())
    throw ConfigError("sentencepiece training: the corpus has no text (" + std::to_string(sentences.size()) +
                      " sentences, all empty after normalization)");

  // Alphabet: characters by count (ties: smaller code point), until character_coverage of all
  // characters is reached. As in libsentencepiece, NUL is not counted and a tab counts towards
  // the coverage but is never a piece (it marks piece boundaries there): both go to bytes.
  std::unordered_map<char32_t, int64_t> char_counts;
  std::vector<std::u32string> word_chars;
  word_chars.reserve(words.size());
  int64_t total_chars = 0;
  for (const WordCount& w : words) {
    word_chars.push_back(unicode::decode_utf8(w.text));
    for (const char32_t c : word_chars.back()) {
      if (c == 0) continue;
      char_counts[c] += w.count;
      total_chars += w.count;
    }
  }
  std::vector<std::pair<char32_t, int64_t>> by_count(char_counts.begin(), char_counts.end());
  std::sort(by_count.begin(), by_count.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  });
  std::vector<std::pair<char32_t, int64_t>> alphabet;
  int64_t covered = 0;
  for (const auto& cc : by_count) {
    if (static_cast<double>(covered) / static_cast<double>(total_chars) >= o.character_coverage) break;
    covered += cc.second;
    if (cc.first != kTab) alphabet.push_back(cc);
  }

  const int users = static_cast<int>(o.user_defined_symbols.size());
  const int fixed = kSpecialPieces + users + (o.byte_fallback ? kBytePieces : 0);
  const int chars = static_cast<int>(alphabet.size());
  if (o.vocab_size < fixed + chars)
    throw ConfigError("sentencepiece training: vocab_size " + std::to_string(o.vocab_size) + " is too small: the model needs " +
                      std::to_string(kSpecialPieces) + " special + " + std::to_string(users) + " user-defined + " +
                      std::to_string(o.byte_fallback ? kBytePieces : 0) + " byte + " + std::to_string(chars) +
                      " character pieces = " + std::to_string(fixed + chars) +
                      " (raise vocab_size or lower character_coverage)");
  if (o.log)
    o.log("[spm] " + std::to_string(used_sentences) + " sentences, " + std::to_string(words.size()) + " distinct words, " +
          std::to_string(chars) + " of " + std::to_string(by_count.size()) + " characters (" +
          std::to_string(100.0 * static_cast<double>(covered) / static_cast<double>(total_chars)) + "% of the text)");

  std::unordered_set<std::string> reserved{kUnk, kBos, kEos};
  for (const std::string& s : o.user_defined_symbols) reserved.insert(s);
  if (o.byte_fallback)
    for (unsigned b = 0; b < 256; ++b) reserved.insert(byte_piece(b));
  BpeMerger merger(o, reserved);
  std::unordered_map<char32_t, int> char_symbol;
  for (const auto& [c, n] : alphabet) char_symbol[c] = merger.add_symbol(std::u32string(1, c));
  for (size_t i = 0; i < words.size(); ++i) {
    std::vector<int> syms;
    syms.reserve(word_chars[i].size());
    for (const char32_t c : word_chars[i]) {
      const auto it = char_symbol.find(c);
      syms.push_back(it == char_symbol.end() ? -1 : it->second);
    }
    merger.add_word(std::move(syms), words[i].count);
  }
  const int wanted_merges = o.vocab_size - fixed - chars;
  const std::vector<std::string> merges = merger.run(wanted_merges);
  const int vocab_size = fixed + chars + static_cast<int>(merges.size());
  if (static_cast<int>(merges.size()) < wanted_merges && o.hard_vocab_limit)
    throw ConfigError("sentencepiece training: the corpus yields only " + std::to_string(vocab_size) + " pieces (" +
                      std::to_string(fixed) + " fixed + " + std::to_string(chars) + " characters + " +
                      std::to_string(merges.size()) + " merges before no pair is left), fewer than vocab_size " +
                      std::to_string(o.vocab_size) + " (lower vocab_size or give more text)");

  std::vector<ModelPiece> pieces;
  pieces.reserve(static_cast<size_t>(vocab_size));
  pieces.push_back({kUnk, 0, PieceType::kUnknown});
  pieces.push_back({kBos, 0, PieceType::kControl});
  pieces.push_back({kEos, 0, PieceType::kControl});
  for (const std::string& s : o.user_defined_symbols) pieces.push_back({s, 0, PieceType::kUserDefined});
  if (o.byte_fallback)
    for (unsigned b = 0; b < 256; ++b) pieces.push_back({byte_piece(b), 0, PieceType::kByte});
  float rank = 0;  // merge k scores -k; the alphabet continues the sequence
  for (const std::string& m : merges) pieces.push_back({m, -rank++, PieceType::kNormal});
  for (const auto& [c, n] : alphabet) pieces.push_back({unicode::encode_utf8(std::u32string(1, c)), -rank++, PieceType::kNormal});
  if (o.log)
    o.log("[spm] vocabulary of " + std::to_string(pieces.size()) + " pieces (" + std::to_string(merges.size()) + " merges)");
  return model_proto(pieces, trainer_spec(o, vocab_size), normalizer_spec(o));
}

void write_sentencepiece_model(const std::string& path, const std::string& model_bytes) {
  const fs::path parent = fs::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    fs::create_directories(parent, ec);
    if (ec) throw IoError(parent.string() + ": cannot create folder: " + ec.message());
  }
  write_file_atomic(path, model_bytes.data(), model_bytes.size());
}

void write_sentencepiece_tokenizer(const std::string& dir, const std::string& model_bytes) {
  write_sentencepiece_model((fs::path(dir) / "tokenizer.model").string(), model_bytes);
  const Json config = {{"tokenizer_class", "LlamaTokenizer"},
                       {"add_bos_token", true},
                       {"add_eos_token", false},
                       {"bos_token", kBos},
                       {"eos_token", kEos},
                       {"unk_token", kUnk},
                       {"pad_token", nullptr},
                       {"clean_up_tokenization_spaces", false},
                       {"sp_model_kwargs", Json::object()}};
  const std::string text = config.dump(2) + "\n";
  write_file_atomic((fs::path(dir) / "tokenizer_config.json").string(), text.data(), text.size());
}

std::vector<std::string> read_sentence_lines(const std::string& path) {
  const std::string text = read_text_file(path);
  std::vector<std::string> lines;
  size_t begin = 0;
  while (begin < text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    size_t stop = end;
    if (stop > begin && text[stop - 1] == '\r') --stop;
    if (stop > begin) lines.push_back(text.substr(begin, stop - begin));
    begin = end + 1;
  }
  return lines;
}

}  // namespace iris
