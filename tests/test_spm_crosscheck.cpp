// Cross-check of Iris's native SentencePiece tokenizer against libsentencepiece (Debian 0.1.97).
// Trains small models at test time on a generated corpus, then compares encode (ids and pieces),
// decode (of the encodings and of random id sequences), and the vocabulary (piece, score, type,
// special ids) on a few hundred varied strings.
//
// Links libsentencepiece + libsentencepiece_train and must NOT link LibTorch (NOTES.md).
#include <gtest/gtest.h>
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstdint>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include <stdlib.h>  // mkdtemp

#include "core/error.h"
#include "core/sentencepiece.h"

namespace {

using iris::SentencePieceTokenizer;

std::string escaped(const std::string& s) {
  std::string out;
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7F && c != '\\') {
      out += c;
    } else {
      static const char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[u >> 4];
      out += kHex[u & 15];
    }
  }
  return out;
}

template <class T>
std::string join(const std::vector<T>& v) {
  std::ostringstream ss;
  ss << "[";
  for (size_t i = 0; i < v.size(); ++i) ss << (i ? ", " : "") << v[i];
  ss << "]";
  return ss.str();
}
std::string join_pieces(const std::vector<std::string>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", \"" : "\"") + escaped(v[i]) + "\"";
  return s + "]";
}

// Deterministic random numbers independent of the standard library's distributions.
struct Rng {
  std::mt19937 gen;
  explicit Rng(uint32_t seed) : gen(seed) {}
  size_t below(size_t n) { return static_cast<size_t>(gen() % n); }
  template <class T>
  const T& pick(const std::vector<T>& v) { return v[below(v.size())]; }
};

const std::vector<std::string>& words() {
  static const std::vector<std::string> w = {
      "the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from",
      "image", "images", "diffusion", "model", "models", "token", "tokens", "tokenizer", "prompt", "prompts",
      "painting", "portrait", "landscape", "mountain", "river", "city", "night", "light", "lighting", "cat",
      "dog", "castle", "forest", "ocean", "sunset", "detailed", "highly", "realistic", "photo", "art",
      "style", "studio", "camera", "lens", "color", "colors", "colour", "blue", "red", "green", "golden",
      "hour", "dream", "dreams", "walking", "running", "played", "playing", "player", "players", "unbelievable",
      "international", "internationalization", "New", "York", "London", "Paris", "Tokyo", "The", "A", "An",
      "I", "We", "It", "This", "café", "naïve", "résumé", "Übermäßig", "straße", "façade", "niño", "año",
      "привет", "мир", "модель", "слово", "καλημέρα", "κόσμος", "日本語", "テキスト", "東京", "中文", "你好",
      "世界", "한국어", "안녕", "עברית", "مرحبا", "नमस्ते", "ไทย", "1", "2", "3", "10", "42", "100", "2024",
      "3.14", "1,000", "50%", "$20", "#1", "@home", "e-mail", "co-op", "don't", "it's", "we're", "x", "y", "z",
      ",", ".", "!", "?", ":", ";", "(", ")", "[", "]", "\"", "'", "-", "--", "...", "/", "&", "+", "=", "*",
      "aa", "aaaa", "oooo", "zz", "hmm", "hmmmm", "lolol", "abab", "Ｆｕｌｌ", "ｗｉｄｔｈ", "１２３", "ｶﾀｶﾅ", "①", "ﬁne", "™", "½", "x²", "Ⅻ", "ﾟ", "㍿"};
  return w;
}

// A few thousand generated sentences; one rare character appears once so character_coverage
// drops it (it then encodes as unknown / byte fallback).
std::string write_corpus(const std::string& dir) {
  const std::string path = dir + "/corpus.txt";
  std::ofstream f(path, std::ios::binary);
  Rng rng(1234);
  // Pseudo-words from syllables give the trainers enough material for a vocabulary of ~1000.
  const std::vector<std::string> onsets = {"", "b", "k", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "v",
                                           "st", "tr", "pl", "ch", "sh", "gr", "br", "th"};
  const std::vector<std::string> nuclei = {"a", "e", "i", "o", "u", "ai", "ea", "ou", "io", "y"};
  const std::vector<std::string> codas = {"", "", "n", "r", "s", "t", "l", "m", "ng", "ck", "st", "nd"};
  std::vector<std::string> pseudo;
  for (int i = 0; i < 600; ++i) {
    std::string w;
    const size_t syllables = 1 + rng.below(4);
    for (size_t k = 0; k < syllables; ++k) w += rng.pick(onsets) + rng.pick(nuclei) + rng.pick(codas);
    pseudo.push_back(w);
  }
  for (int line = 0; line < 4000; ++line) {
    const size_t n = 3 + rng.below(14);
    std::string s;
    for (size_t i = 0; i < n; ++i) {
      if (i) s += rng.below(25) == 0 ? "  " : " ";
      // Zipf-like: low indices much more frequent.
      if (rng.below(2)) s += pseudo[rng.below(1 + rng.below(pseudo.size()))];
      else s += rng.pick(words());
    }
    f << s << "\n";
  }
  f << "a rare glyph \xF0\x93\x80\x80 appears once\n";  // U+13000 (Egyptian hieroglyph)
  return path;
}

// Custom normalization / denormalization rules (sentencepiece TSV: source code points, TAB,
// target code points; an empty target deletes).
std::string write_rules(const std::string& dir) {
  const std::string norm = dir + "/norm.tsv";
  std::ofstream f(norm, std::ios::binary);
  f << "41\t61\n";           // A -> a
  f << "42 43\t78 79 7A\n";  // "BC" -> "xyz" (multi-character source)
  f << "44\t\n";             // D -> deleted
  f << "9\t20\n";            // TAB -> space
  f << "3000\t20\n";         // ideographic space -> space
  f << "FF21\t41\n";         // fullwidth A -> A (not re-normalized: the map is applied once)
  f << "E9\t65 301\n";       // é -> e + combining acute
  f << "2460\t28 31 29\n";   // ① -> (1)
  f.close();
  const std::string denorm = dir + "/denorm.tsv";
  std::ofstream g(denorm, std::ios::binary);
  g << "61\t41\n";            // a -> A on decode
  g << "65 301\tE9\n";        // e + combining acute -> é
  return norm + "|" + denorm;
}

// A private directory under testing::TempDir() for this process (ctest may run the tests of
// this file as parallel processes), removed at exit.
class ScratchDir {
 public:
  ScratchDir() {
    std::string tmpl = testing::TempDir();
    if (tmpl.empty()) tmpl = "/tmp/";
    if (tmpl.back() != '/') tmpl += '/';
    tmpl += "iris_spm_XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (::mkdtemp(buf.data()) != nullptr) path_ = buf.data();
  }
  ~ScratchDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string temp_dir() {
  static ScratchDir dir;
  EXPECT_FALSE(dir.path().empty()) << "cannot create a scratch directory under " << testing::TempDir();
  return dir.path();
}

const std::string& corpus() {
  static const std::string p = write_corpus(temp_dir());
  return p;
}

std::string train(const std::string& name, std::unordered_map<std::string, std::string> args) {
  const std::string prefix = temp_dir() + "/" + name;
  args["input"] = corpus();
  args["model_prefix"] = prefix;
  args["minloglevel"] = "2";
  args["num_threads"] = "2";
  if (!args.count("hard_vocab_limit")) args["hard_vocab_limit"] = "false";
  const auto status = sentencepiece::SentencePieceTrainer::Train(args);
  EXPECT_TRUE(status.ok()) << name << ": " << status.ToString();
  return prefix + ".model";
}

// The strings every model is checked on: hand-picked edge cases plus random mixtures.
std::vector<std::string> test_strings(const std::vector<std::string>& model_specific) {
  std::vector<std::string> s = {
      "", " ", "  ", "   ", "\t", "\n", " \t \n ", "a", "A", "hello", "Hello world", "hello  world",
      "hello   world  ", "  leading spaces", "trailing spaces   ", " a b  c   d    e ", "the image of the city",
      "The painting was highly detailed.", "don't stop", "it's 2024!", "3.14159 and 1,000,000", "e-mail@home",
      "co-op (x+y)=z*2", "unbelievable internationalization", "unseen words: zyzzyva quokka flummox",
      "café naïve résumé Übermäßig straße façade", "привет, мир! модель", "καλημέρα κόσμος", "日本語のテキスト",
      "東京タワー", "你好，世界", "한국어 안녕하세요", "עברית مرحبا नमस्ते ไทย",
      "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３", "ｶﾀｶﾅ ﾊﾟﾋﾟﾌﾟ", "① ② ⑳", "ﬁne ﬂow ﬀ", "™ ½ x² Ⅻ ㍿", "ＡＢＣ", "Ａ　Ｂ",
      "ideographic\u3000space", "nbsp\u00A0here", "zero\u200Bwidth\u200Djoiner", "soft\u00ADhyphen",
      "bom\uFEFFmark", "rtl\u200Fmark", "combining e\u0301 vs \u00E9", "A\u030A vs \u00C5", "\u2581", "\u2581x\u2581 y",
      "x \u2581 y", "😀", "😀😀😀", "👍🏽", "👨‍👩‍👧", "🇯🇵", "❤️", "a😀b", "glyph \xF0\x93\x80\x80 once",
      "\xF0\x93\x80\x80\xF0\x93\x80\x81\xF0\x93\x80\x82", "ᚠᛇᚻ ᛒᛦᚦ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𠀀𠀁", "\u00FF\u0100\u017F",
      "tab\tseparated\tvalues", "line1\nline2\r\nline3", "ctrl\x01\x02\x1F chars", "del\x7F", "esc\x1B[0m",
      std::string("nul\0inside", 10), "\xEF\xBF\xBD replacement", "<unk> <s> </s> <pad>", "<sep> and [MASK] and @@", "<sep><sep>",
      "[MASK]x[MASK]", "@@@", "a<sep>b", "ABCD BCD ABC DDD", "\xE9t\xE9", "(1) ①", "AAAA", "aaaa",
      "bad \xFF utf8", "\xC0\xAF overlong", "\xED\xA0\x80 surrogate", "truncated \xE3\x81", "\xE3\x81",
      "\x80\x80\x80", "\xF4\x90\x80\x80 too big", "\xF8\x88\x80\x80\x80", "x\xC3", "\xC3(", "lone \xBF",
      "aaa", "aaaaa", "ooooooo", "zzz", "hmmmmm", "lololol", "abababa", "mmmmmmmmm", "a a a aaa",
      std::string(300, 'a'), std::string(301, 'a'), std::string(200, ' '), std::string(60, 'x') + " " + std::string(60, 'y'),
  };
  s.insert(s.end(), model_specific.begin(), model_specific.end());
  // Random mixtures.
  const std::vector<std::string> extra = {" ", "  ", "\t", "\n", "\u3000", "\u00A0", "😀", "\xF0\x93\x80\x80",
                                          "\xFF", "\xE3\x81", "Ａ", "ﾀ", "①", "\u2581", "é", "e\u0301", "<sep>",
                                          "[MASK]", "BC", "D", "A"};
  Rng rng(99);
  for (int i = 0; i < 260; ++i) {
    const size_t n = 1 + rng.below(12);
    std::string t;
    if (rng.below(6) == 0) t += " ";
    for (size_t k = 0; k < n; ++k) {
      if (k && rng.below(3) != 0) t += rng.below(8) == 0 ? "  " : " ";
      t += rng.below(4) == 0 ? rng.pick(extra) : rng.pick(words());
    }
    if (rng.below(6) == 0) t += " ";
    s.push_back(t);
  }
  return s;
}

struct Counts {
  int strings = 0, encode_ok = 0, decode_ok = 0, random_decode = 0, random_decode_ok = 0;
};

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Compares Iris and libsentencepiece on the serialized model `model`.
Counts crosscheck_bytes(const std::string& name, const std::string& model, const std::vector<std::string>& specific) {
  Counts c;
  sentencepiece::SentencePieceProcessor sp;
  const auto st = sp.LoadFromSerializedProto(model);
  EXPECT_TRUE(st.ok()) << name << ": " << st.ToString();
  if (!st.ok()) return c;
  const SentencePieceTokenizer tok = SentencePieceTokenizer::from_bytes(model, name);

  // Vocabulary and special ids.
  EXPECT_EQ(tok.vocab_size(), static_cast<size_t>(sp.GetPieceSize())) << name;
  EXPECT_EQ(tok.bos_id(), sp.bos_id()) << name;
  EXPECT_EQ(tok.eos_id(), sp.eos_id()) << name;
  EXPECT_EQ(tok.unk_id(), sp.unk_id()) << name;
  EXPECT_EQ(tok.pad_id(), sp.pad_id()) << name;
  int vocab_bad = 0;
  for (int id = 0; id < sp.GetPieceSize(); ++id) {
    const bool same = tok.piece(id) == sp.IdToPiece(id) && tok.score(id) == sp.GetScore(id) &&
                      tok.is_control(id) == sp.IsControl(id) && tok.is_unknown(id) == sp.IsUnknown(id) &&
                      tok.is_unused(id) == sp.IsUnused(id) && tok.is_byte(id) == sp.IsByte(id) &&
                      tok.piece_to_id(tok.piece(id)) == sp.PieceToId(sp.IdToPiece(id));
    if (!same && ++vocab_bad <= 5) ADD_FAILURE() << name << ": vocabulary entry " << id << " differs";
  }

  // Encode / decode.
  int shown = 0;
  for (const std::string& text : test_strings(specific)) {
    ++c.strings;
    std::vector<int> want_ids;
    std::vector<std::string> want_pieces;
    EXPECT_TRUE(sp.Encode(text, &want_ids).ok());
    EXPECT_TRUE(sp.Encode(text, &want_pieces).ok());
    std::vector<int> ids;
    std::vector<std::string> pieces;
    tok.encode(text, &ids, &pieces);
    if (ids == want_ids && pieces == want_pieces) {
      ++c.encode_ok;
    } else if (++shown <= 8) {
      ADD_FAILURE() << name << ": encode(\"" << escaped(text) << "\")\n  normalized: \"" << escaped(tok.normalize(text))
                    << "\"\n  iris: " << join(ids) << " " << join_pieces(pieces) << "\n  spm:  " << join(want_ids) << " "
                    << join_pieces(want_pieces);
    }
    std::string want_text;
    EXPECT_TRUE(sp.Decode(want_ids, &want_text).ok());
    const std::string text_back = tok.decode(want_ids);
    if (text_back == want_text) {
      ++c.decode_ok;
    } else if (++shown <= 8) {
      ADD_FAILURE() << name << ": decode(" << join(want_ids) << ") of \"" << escaped(text) << "\"\n  iris: \""
                    << escaped(text_back) << "\"\n  spm:  \"" << escaped(want_text) << "\"";
    }
  }

  // Decode of random id sequences: control, unknown, byte (also invalid UTF-8 runs) and normal ids.
  std::vector<int> special;
  for (int id = 0; id < sp.GetPieceSize(); ++id)
    if (sp.IsControl(id) || sp.IsUnknown(id) || sp.IsByte(id) || sp.IsUnused(id)) special.push_back(id);
  Rng rng(7);
  for (int i = 0; i < 300; ++i) {
    std::vector<int> ids;
    const size_t n = 1 + rng.below(10);
    for (size_t k = 0; k < n; ++k)
      ids.push_back(!special.empty() && rng.below(2) ? rng.pick(special) : static_cast<int>(rng.below(sp.GetPieceSize())));
    std::string want;
    EXPECT_TRUE(sp.Decode(ids, &want).ok());
    ++c.random_decode;
    const std::string got = tok.decode(ids);
    if (got == want) {
      ++c.random_decode_ok;
    } else if (++shown <= 8) {
      ADD_FAILURE() << name << ": decode(" << join(ids) << ")\n  iris: \"" << escaped(got) << "\"\n  spm:  \""
                    << escaped(want) << "\"";
    }
  }
  std::printf("[ crosscheck ] %-16s vocab %5d  encode %d/%d  decode %d/%d  random-id decode %d/%d\n", name.c_str(),
              sp.GetPieceSize(), c.encode_ok, c.strings, c.decode_ok, c.strings, c.random_decode_ok, c.random_decode);
  EXPECT_EQ(c.encode_ok, c.strings) << name;
  EXPECT_EQ(c.decode_ok, c.strings) << name;
  EXPECT_EQ(c.random_decode_ok, c.random_decode) << name;
  return c;
}

// The same from a model file; Iris reads it with load().
Counts crosscheck(const std::string& name, const std::string& path, const std::vector<std::string>& specific) {
  const std::string bytes = read_file(path);
  EXPECT_FALSE(bytes.empty()) << path;
  const SentencePieceTokenizer tok = SentencePieceTokenizer::load(path);
  EXPECT_EQ(tok.source(), path);
  return crosscheck_bytes(name, bytes, specific);
}

// UNUSED pieces: libsentencepiece's SetVocabulary() marks every multi-character piece outside
// the given list UNUSED. BPE must then split merges that produce UNUSED pieces back into their
// parts, unigram must skip them. The restricted model is reloaded from its serialized bytes on
// both sides (so unigram's min/max scores are computed the same way).
void crosscheck_unused(const std::string& name, const std::string& path) {
  sentencepiece::SentencePieceProcessor sp;
  ASSERT_TRUE(sp.Load(path).ok());
  std::vector<std::string> keep;
  int dropped = 0;
  for (int id = 0; id < sp.GetPieceSize(); ++id) {
    if (id % 3 == 0) ++dropped;
    else keep.push_back(sp.IdToPiece(id));
  }
  const std::vector<absl::string_view> keep_views(keep.begin(), keep.end());
  ASSERT_TRUE(sp.SetVocabulary(keep_views).ok());
  const std::string restricted = sp.serialized_model_proto();
  const SentencePieceTokenizer tok = SentencePieceTokenizer::from_bytes(restricted, name);
  int unused = 0;
  for (int id = 0; id < static_cast<int>(tok.vocab_size()); ++id) unused += tok.is_unused(id);
  EXPECT_GT(unused, 50) << name;
  crosscheck_bytes(name, restricted, {});
}

// ---------------------------------------------------------------------------------------------
// Hand-built models for corner cases trained models rarely reach: float/double rounding in the
// unigram path scores, an unknown character that a longer piece covers (so the unk penalty
// matters), positive scores (user-defined bonus), equal BPE scores, unknown-word runs.

std::string varint(uint64_t v) {
  std::string s;
  while (v >= 0x80) {
    s += static_cast<char>((v & 0x7F) | 0x80);
    v >>= 7;
  }
  s += static_cast<char>(v);
  return s;
}
std::string f_varint(uint32_t field, uint64_t v) { return varint(field << 3) + varint(v); }
std::string f_bytes(uint32_t field, const std::string& b) { return varint((field << 3) | 2) + varint(b.size()) + b; }
std::string f_float(uint32_t field, float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  std::string s = varint((field << 3) | 5);
  for (int i = 0; i < 4; ++i) s += static_cast<char>((bits >> (8 * i)) & 0xFF);
  return s;
}

struct HandPiece {
  std::string piece;
  float score;
  int type;  // 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused
};

std::string hand_model(int model_type, const std::vector<HandPiece>& extra, bool add_dummy_prefix) {
  std::vector<HandPiece> pieces = {{"<unk>", 0, 2}, {"<s>", 0, 3}, {"</s>", 0, 3}};
  pieces.insert(pieces.end(), extra.begin(), extra.end());
  std::string m;
  for (const auto& p : pieces) m += f_bytes(1, f_bytes(1, p.piece) + f_float(2, p.score) + f_varint(3, p.type));
  m += f_bytes(2, f_varint(3, model_type));
  m += f_bytes(3, f_bytes(1, "identity") + f_varint(3, add_dummy_prefix));
  return m;
}

TEST(SpmCrosscheck, HandBuiltCornerCases) {
  const float tiny = -1.5f * std::ldexp(1.0f, -24);
  const float just_below = -(1.0f + std::ldexp(1.0f, -23));
  struct Case {
    const char* name;
    std::string model;
    std::vector<std::string> texts;
  };
  const std::vector<Case> cases = {
      // a + b summed in double beats ab; summed in float it would tie (and ab would stay).
      {"precision", hand_model(1, {{"a", -1.0f, 1}, {"b", tiny, 1}, {"ab", just_below, 1}}, false),
       {"ab", "abab", "aab", "ba"}},
      // x has no piece of its own, but xb covers it: unk(x) + bc must beat xb + c.
      {"unk_penalty", hand_model(1, {{"xb", -100, 1}, {"b", -1, 1}, {"c", -20, 1}, {"bc", -9.5f, 1}}, false),
       {"xbc", "xb", "xbcxb", "xx", "bxc"}},
      {"positive_scores",
       hand_model(1, {{"a", 2.0f, 1}, {"b", 0.5f, 1}, {"ab", 4.5f, 1}, {"<u>", -50, 4}, {"<", 1, 1}, {"u", 1, 1}, {">", 1, 1}},
                  true),
       {"a<u>b", "<u><u>", "ab<u", "<uab>", "a b"}},
      {"bpe_ties", hand_model(2, {{"a", 0, 1}, {"b", 0, 1}, {"c", 0, 1}, {"ab", -1, 1}, {"bc", -1, 1}, {"ca", -1, 1},
                                  {"abc", -1, 1}, {"cab", -1, 1}},
                              false),
       {"abc", "cabc", "abcabcabc", "bcab", "aaabbbccc", "cacacab"}},
      {"word_unknowns", hand_model(3, {{"\xE2\x96\x81" "a", -1, 1}, {"\xE2\x96\x81" "b", -1, 1}}, true),
       {"a x y b", "x y", "a b a", "  x  "}},
  };
  for (const Case& c : cases) {
    sentencepiece::SentencePieceProcessor sp;
    const auto st = sp.LoadFromSerializedProto(c.model);
    ASSERT_TRUE(st.ok()) << c.name << ": " << st.ToString();
    const SentencePieceTokenizer tok = SentencePieceTokenizer::from_bytes(c.model, c.name);
    for (const std::string& text : c.texts) {
      std::vector<std::string> want;
      ASSERT_TRUE(sp.Encode(text, &want).ok());
      std::vector<int> want_ids;
      ASSERT_TRUE(sp.Encode(text, &want_ids).ok());
      EXPECT_EQ(tok.encode_pieces(text), want) << c.name << ": \"" << text << "\"";
      EXPECT_EQ(tok.encode(text), want_ids) << c.name << ": \"" << text << "\"";
      std::string back;
      ASSERT_TRUE(sp.Decode(want_ids, &back).ok());
      EXPECT_EQ(tok.decode(want_ids), back) << c.name;
    }
  }
  // The precision case really depends on double arithmetic.
  const SentencePieceTokenizer p = SentencePieceTokenizer::from_bytes(cases[0].model, "precision");
  EXPECT_EQ(p.encode_pieces("ab"), (std::vector<std::string>{"a", "b"}));
  const SentencePieceTokenizer u = SentencePieceTokenizer::from_bytes(cases[1].model, "unk_penalty");
  EXPECT_EQ(u.encode_pieces("xbc"), (std::vector<std::string>{"x", "bc"}));
}

TEST(SpmCrosscheck, UnigramNmtNfkc) {
  const std::string path = train("unigram", {{"model_type", "unigram"},
                                             {"vocab_size", "1000"},
                                             {"user_defined_symbols", "<sep>,[MASK],@@"},
                                             {"control_symbols", "<ctl>"}});
  crosscheck("unigram", path, {"<ctl> is control", "x<ctl>y"});
  crosscheck_unused("unigram_unused", path);
}

TEST(SpmCrosscheck, UnigramByteFallbackNfkcCf) {
  const std::string path = train("unigram_bytes", {{"model_type", "unigram"},
                                                   {"vocab_size", "1000"},
                                                   {"byte_fallback", "true"},
                                                   {"normalization_rule_name", "nmt_nfkc_cf"},
                                                   {"pad_id", "3"},
                                                   {"unk_surface", "<?>"}});
  crosscheck("unigram_bytes", path, {"CASE Folding ÀÉÎ ΣΑΣ ẞ"});
}

TEST(SpmCrosscheck, Bpe) {
  const std::string path = train("bpe", {{"model_type", "bpe"}, {"vocab_size", "1000"}, {"user_defined_symbols", "<sep>"}});
  crosscheck("bpe", path, {});
  crosscheck_unused("bpe_unused", path);
}

TEST(SpmCrosscheck, BpeByteFallbackWhitespaceSuffix) {
  const std::string path = train("bpe_suffix", {{"model_type", "bpe"},
                                                {"vocab_size", "800"},
                                                {"byte_fallback", "true"},
                                                {"treat_whitespace_as_suffix", "true"},
                                                {"split_digits", "true"}});
  crosscheck("bpe_suffix", path, {});
}

TEST(SpmCrosscheck, UnigramIdentityKeepWhitespace) {
  const std::string path = train("identity", {{"model_type", "unigram"},
                                              {"vocab_size", "800"},
                                              {"normalization_rule_name", "identity"},
                                              {"remove_extra_whitespaces", "false"}});
  crosscheck("identity", path, {});
}

TEST(SpmCrosscheck, UnigramIdentityNoDummyPrefix) {
  const std::string path = train("identity_nodummy", {{"model_type", "unigram"},
                                                      {"vocab_size", "800"},
                                                      {"normalization_rule_name", "identity"},
                                                      {"add_dummy_prefix", "false"},
                                                      {"byte_fallback", "true"}});
  crosscheck("identity_nodummy", path, {});
}

TEST(SpmCrosscheck, CustomRulesAndDenormalizer) {
  const std::string rules = write_rules(temp_dir());
  const std::string norm = rules.substr(0, rules.find('|'));
  const std::string denorm = rules.substr(rules.find('|') + 1);
  const std::string path = train("rules", {{"model_type", "unigram"},
                                           {"vocab_size", "800"},
                                           {"normalization_rule_tsv", norm},
                                           {"denormalization_rule_tsv", denorm}});
  crosscheck("rules", path, {"ABCD\tBC\u3000A", "DDDD", "D D D", "\u00E9\u00E9 e\u0301", "Ａ① ①①", "aAbBcCdD"});
}

TEST(SpmCrosscheck, CharAndWordModels) {
  const std::string c = train("char", {{"model_type", "char"}, {"vocab_size", "300"}});
  crosscheck("char", c, {});
  const std::string w = train("word", {{"model_type", "word"}, {"vocab_size", "500"}, {"user_defined_symbols", "<sep>"}});
  crosscheck("word", w, {});
}

}  // namespace
