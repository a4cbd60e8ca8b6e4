// Iris's native SentencePiece tokenizer (core/sentencepiece.h), without libsentencepiece:
//  * the Llama 2 golden table (python sentencepiece 0.1.97): ids and pieces of all 201 rows,
//    decode, special ids;
//  * hand-built models (a small protobuf writer below) for the encoder semantics: BPE merges,
//    ties, user-defined and UNUSED pieces, unigram Viterbi, unknown runs, byte fallback, the
//    normalizer options and a precompiled charsmap (a Darts-clone double array built here);
//  * every error path: missing file, truncated/garbage bytes, malformed protobuf, invalid
//    vocabularies, corrupt charsmaps. All must throw iris::FormatError / IoError naming the file.
// The comparison with libsentencepiece itself is tests/test_spm_crosscheck.cpp.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <queue>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <stdlib.h>  // mkdtemp

#include "core/error.h"
#include "core/sentencepiece.h"

#ifndef IRIS_FIXTURES_DIR
#error "IRIS_FIXTURES_DIR must be defined (path of shared/fixtures)"
#endif

namespace {

using iris::SentencePieceTokenizer;
using PieceType = SentencePieceTokenizer::PieceType;
using ModelType = SentencePieceTokenizer::ModelType;

const std::string kFixtures = IRIS_FIXTURES_DIR;
const std::string kLlamaModel = kFixtures + "/data/llama2_tokenizer.model";
const std::string kGolden = kFixtures + "/llama_tokenizer_golden.jsonl";

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t pos = 0; (pos = s.find(from, pos)) != std::string::npos; pos += to.size()) s.replace(pos, from.size(), to);
  return s;
}

const SentencePieceTokenizer& llama() {
  static const SentencePieceTokenizer tok = SentencePieceTokenizer::load(kLlamaModel);
  return tok;
}

struct GoldenRow {
  std::string text;
  std::vector<int> ids;
  std::vector<std::string> pieces;
};

const std::vector<GoldenRow>& golden() {
  static const std::vector<GoldenRow> rows = [] {
    std::vector<GoldenRow> r;
    std::ifstream f(kGolden);
    std::string line;
    while (std::getline(f, line)) {
      if (line.empty()) continue;
      const auto j = nlohmann::json::parse(line);
      r.push_back({j.at("text").get<std::string>(), j.at("ids").get<std::vector<int>>(),
                   j.at("pieces").get<std::vector<std::string>>()});
    }
    return r;
  }();
  return rows;
}

// ---------------------------------------------------------------------------------------------
// Protobuf writer for hand-built models.

std::string varint(uint64_t v) {
  std::string s;
  while (v >= 0x80) {
    s += static_cast<char>((v & 0x7F) | 0x80);
    v >>= 7;
  }
  s += static_cast<char>(v);
  return s;
}
std::string tag(uint32_t field, uint32_t wire_type) { return varint((static_cast<uint64_t>(field) << 3) | wire_type); }
std::string f_varint(uint32_t field, uint64_t v) { return tag(field, 0) + varint(v); }
std::string f_bytes(uint32_t field, const std::string& b) { return tag(field, 2) + varint(b.size()) + b; }
std::string f_float(uint32_t field, float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  std::string s = tag(field, 5);
  for (int i = 0; i < 4; ++i) s += static_cast<char>((bits >> (8 * i)) & 0xFF);
  return s;
}

struct P {
  std::string piece;
  float score;
  PieceType type;
};

struct Spec {
  std::vector<P> pieces;
  ModelType model_type = ModelType::kUnigram;
  bool byte_fallback = false;
  bool treat_ws_as_suffix = false;
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = true;
  bool escape_whitespaces = true;
  std::string charsmap;
  std::string unk_surface;  // empty: default
  std::string extra_trainer, extra_normalizer, extra_model;  // raw fields appended
};

std::string piece_msg(const P& p) {
  std::string m = f_bytes(1, p.piece) + f_float(2, p.score);
  if (p.type != PieceType::kNormal) m += f_varint(3, static_cast<uint64_t>(p.type));
  return m;
}

std::string build(const Spec& s) {
  std::string out;
  for (const P& p : s.pieces) out += f_bytes(1, piece_msg(p));
  std::string trainer = f_varint(3, static_cast<uint64_t>(s.model_type));
  if (s.byte_fallback) trainer += f_varint(35, 1);
  if (s.treat_ws_as_suffix) trainer += f_varint(24, 1);
  if (!s.unk_surface.empty()) trainer += f_bytes(44, s.unk_surface);
  trainer += s.extra_trainer;
  out += f_bytes(2, trainer);
  std::string norm = f_bytes(1, s.charsmap.empty() ? "identity" : "custom");
  if (!s.charsmap.empty()) norm += f_bytes(2, s.charsmap);
  norm += f_varint(3, s.add_dummy_prefix) + f_varint(4, s.remove_extra_whitespaces) + f_varint(5, s.escape_whitespaces);
  norm += s.extra_normalizer;
  out += f_bytes(3, norm);
  out += s.extra_model;
  return out;
}

std::vector<P> base_pieces() {
  return {{"<unk>", 0, PieceType::kUnknown}, {"<s>", 0, PieceType::kControl}, {"</s>", 0, PieceType::kControl}};
}

std::vector<P> byte_pieces() {
  std::vector<P> v;
  static const char kHex[] = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b) v.push_back({std::string("<0x") + kHex[b >> 4] + kHex[b & 15] + ">", 0, PieceType::kByte});
  return v;
}

SentencePieceTokenizer make(const Spec& s) { return SentencePieceTokenizer::from_bytes(build(s), "test.model"); }

// Darts-clone compatible double array + string pool: the precompiled_charsmap layout.
std::string build_charsmap(const std::vector<std::pair<std::string, std::string>>& rules) {
  struct Node {
    std::map<unsigned char, int> kids;
    int value = -1;
  };
  std::string pool;
  std::vector<Node> nodes(1);
  for (const auto& r : rules) {
    int n = 0;
    for (const char c : r.first) {
      const auto u = static_cast<unsigned char>(c);
      auto it = nodes[n].kids.find(u);
      if (it == nodes[n].kids.end()) {
        nodes.push_back(Node{});
        it = nodes[n].kids.emplace(u, static_cast<int>(nodes.size()) - 1).first;
      }
      n = it->second;
    }
    nodes[n].value = static_cast<int>(pool.size());
    pool += r.second;
    pool += '\0';
  }
  std::vector<uint32_t> units(256, 0);
  std::vector<bool> used(256, false), base_used(256, false);
  const auto grow = [&](size_t n) {
    while (units.size() <= n) {
      units.resize(units.size() + 256, 0);
      used.resize(units.size(), false);
      base_used.resize(units.size(), false);
    }
  };
  used[0] = true;
  std::queue<std::pair<int, uint32_t>> todo;  // node, its unit position
  todo.push({0, 0});
  while (!todo.empty()) {
    const auto [n, p] = todo.front();
    todo.pop();
    uint32_t b = 1;
    for (;; ++b) {
      grow(b | 255);
      if (base_used[b] || used[b]) continue;
      bool ok = true;
      for (const auto& k : nodes[n].kids) ok = ok && !used[b ^ k.first];
      if (ok) break;
    }
    base_used[b] = true;
    used[b] = true;  // the node's value slot (also keeps a NUL byte from matching)
    units[p] |= (p ^ b) << 10;
    if (nodes[n].value >= 0) {
      units[p] |= 1u << 8;
      units[b] = static_cast<uint32_t>(nodes[n].value) | 0x80000000u;
    } else {
      units[b] = 0x80000000u;
    }
    for (const auto& k : nodes[n].kids) {
      used[b ^ k.first] = true;
      units[b ^ k.first] = k.first;
      todo.push({k.second, b ^ k.first});
    }
  }
  for (size_t i = 1; i < units.size(); ++i)
    if (!used[i]) units[i] = 0x80000000u;  // unused: a label that never matches
  std::string blob;
  const auto put32 = [&](uint32_t v) {
    for (int i = 0; i < 4; ++i) blob += static_cast<char>((v >> (8 * i)) & 0xFF);
  };
  put32(static_cast<uint32_t>(units.size() * 4));
  for (const uint32_t u : units) put32(u);
  return blob + pool;
}

// A private directory under testing::TempDir() for this process, removed at exit.
class ScratchDir {
 public:
  ScratchDir() {
    std::string tmpl = testing::TempDir();
    if (tmpl.empty()) tmpl = "/tmp/";
    if (tmpl.back() != '/') tmpl += '/';
    tmpl += "iris_sp_XXXXXX";
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

std::string scratch_dir() {
  static ScratchDir dir;
  EXPECT_FALSE(dir.path().empty());
  return dir.path();
}

// Asserts that `f` throws FormatError whose message names `name`.
template <class F>
void expect_format_error(F&& f, const std::string& name, const std::string& what_contains = "") {
  try {
    f();
    ADD_FAILURE() << "no exception (expected FormatError mentioning \"" << what_contains << "\")";
  } catch (const iris::FormatError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(name), std::string::npos) << msg;
    if (!what_contains.empty()) {
      EXPECT_NE(msg.find(what_contains), std::string::npos) << msg;
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

void expect_bad_model(const std::string& bytes, const std::string& what_contains = "") {
  expect_format_error([&] { SentencePieceTokenizer::from_bytes(bytes, "bad.model"); }, "bad.model", what_contains);
}

// ---------------------------------------------------------------------------------------------
// Golden table (Llama 2 tokenizer, python sentencepiece 0.1.97).

TEST(SentencePieceGolden, EveryRowMatchesIdsAndPieces) {
  const auto& rows = golden();
  ASSERT_EQ(rows.size(), 201u) << kGolden;
  int ok = 0, byte_rows = 0;
  for (const GoldenRow& row : rows) {
    std::vector<int> ids;
    std::vector<std::string> pieces;
    llama().encode(row.text, &ids, &pieces);
    EXPECT_EQ(ids, row.ids) << "text: " << row.text;
    EXPECT_EQ(pieces, row.pieces) << "text: " << row.text;
    EXPECT_EQ(llama().encode(row.text), row.ids);
    EXPECT_EQ(llama().encode_pieces(row.text), row.pieces);
    ok += ids == row.ids && pieces == row.pieces;
    for (const int id : row.ids) {
      if (llama().is_byte(id)) {
        ++byte_rows;
        break;
      }
    }
  }
  EXPECT_EQ(ok, 201);
  EXPECT_EQ(byte_rows, 42);  // as the fixture's sidecar says
  std::printf("[ golden ] %d/%zu rows identical (ids and pieces), %d with byte fallback\n", ok, rows.size(), byte_rows);
}

TEST(SentencePieceGolden, PiecesAgreeWithIds) {
  for (const GoldenRow& row : golden()) {
    ASSERT_EQ(row.ids.size(), row.pieces.size());
    for (size_t i = 0; i < row.ids.size(); ++i) {
      EXPECT_EQ(llama().piece(row.ids[i]), row.pieces[i]);
      EXPECT_EQ(llama().piece_to_id(row.pieces[i]), row.ids[i]);
    }
  }
}

TEST(SentencePieceGolden, DecodeRoundTrips) {
  // The Llama model normalizes nothing but spaces, so spm's decode(encode(x)) == x exactly when
  // x has no literal U+2581 (which decodes as a space). For every row, decode of the golden ids
  // is x with U+2581 replaced by ' '.
  int round_trips = 0;
  for (const GoldenRow& row : golden()) {
    const std::string expected = replace_all(row.text, "\xE2\x96\x81", " ");
    EXPECT_EQ(llama().decode(row.ids), expected) << "text: " << row.text;
    if (expected == row.text) {
      EXPECT_EQ(llama().decode(llama().encode(row.text)), row.text);
      ++round_trips;
    }
    // Control ids are invisible.
    std::vector<int> with_bos_eos = row.ids;
    with_bos_eos.insert(with_bos_eos.begin(), llama().bos_id());
    with_bos_eos.push_back(llama().eos_id());
    EXPECT_EQ(llama().decode(with_bos_eos), expected);
  }
  EXPECT_GE(round_trips, 190);
}

TEST(SentencePieceGolden, VocabularyAndSpecialIds) {
  const SentencePieceTokenizer& t = llama();
  EXPECT_EQ(t.vocab_size(), 32000u);
  EXPECT_EQ(t.model_type(), ModelType::kBpe);
  EXPECT_TRUE(t.byte_fallback());
  EXPECT_EQ(t.unk_id(), 0);
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_EQ(t.pad_id(), -1);
  EXPECT_EQ(t.piece(0), "<unk>");
  EXPECT_EQ(t.piece(1), "<s>");
  EXPECT_EQ(t.piece(2), "</s>");
  EXPECT_TRUE(t.is_unknown(0));
  EXPECT_TRUE(t.is_control(1));
  EXPECT_TRUE(t.is_control(2));
  EXPECT_FALSE(t.is_control(3));
  for (int b = 0; b < 256; ++b) EXPECT_TRUE(t.is_byte(3 + b)) << b;
  EXPECT_EQ(t.piece(3), "<0x00>");
  EXPECT_EQ(t.piece_to_id("<0x0A>"), 13);
  EXPECT_EQ(t.piece_to_id("\xE2\x96\x81"), 29871);
  EXPECT_EQ(t.piece_to_id("no such piece"), -1);
  EXPECT_EQ(t.source(), kLlamaModel);
  EXPECT_FALSE(t.is_byte(-1));
  EXPECT_FALSE(t.is_byte(32000));
  expect_format_error([&] { t.piece(32000); }, kLlamaModel, "out of range");
  expect_format_error([&] { t.piece(-1); }, kLlamaModel, "out of range");
  expect_format_error([&] { t.decode({5, 32000}); }, kLlamaModel, "out of range");
}

TEST(SentencePieceLlama, DecodeSpecialCases) {
  const SentencePieceTokenizer& t = llama();
  const auto id = [&](const std::string& p) { return t.piece_to_id(p); };
  EXPECT_EQ(t.decode({}), "");
  EXPECT_EQ(t.decode({0}), " \xE2\x81\x87 ");  // unk -> " ⁇ "
  EXPECT_EQ(t.decode({1, 2}), "");
  // Byte pieces are reassembled; malformed sequences become U+FFFD per byte.
  EXPECT_EQ(t.decode({id("<0xE2>"), id("<0x82>"), id("<0xAC>")}), "\xE2\x82\xAC");
  EXPECT_EQ(t.decode({id("<0xE2>"), id("<0x82>")}), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(t.decode({id("<0xE2>"), id("\xE2\x96\x81" "a")}), "\xEF\xBF\xBD a");
  EXPECT_EQ(t.decode({id("<0x41>"), id("<0xFF>"), id("<0x42>")}), "A\xEF\xBF\xBD" "B");
  // Only the first piece's dummy-prefix space is removed.
  EXPECT_EQ(t.decode({id("\xE2\x96\x81"), id("\xE2\x96\x81" "a")}), " a");
  EXPECT_EQ(t.decode({id("\xE2\x96\x81" "a"), id("\xE2\x96\x81" "a")}), "a a");
  EXPECT_EQ(t.decode({1, id("\xE2\x96\x81" "a")}), "a");
  EXPECT_EQ(t.decode({id("<0x41>"), id("\xE2\x96\x81" "a")}), "A a");
}

TEST(SentencePieceLlama, InvalidUtf8AndOddInputDoNotCrash) {
  const SentencePieceTokenizer& t = llama();
  // Each malformed byte becomes U+FFFD, as in libsentencepiece.
  EXPECT_EQ(t.decode(t.encode("a\xFF" "b")), "a\xEF\xBF\xBD" "b");
  EXPECT_EQ(t.decode(t.encode("\xE3\x81")), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(t.decode(t.encode("\xED\xA0\x80")), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  EXPECT_EQ(t.decode(t.encode("\xC0\xAF")), "\xEF\xBF\xBD\xEF\xBF\xBD");               // overlong
  EXPECT_EQ(t.normalize("x\xF4\x90\x80\x80"), "\xE2\x96\x81x\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  const std::string nul("a\0b", 3);
  EXPECT_EQ(t.decode(t.encode(nul)), nul);
  std::mt19937 rng(5);
  for (int i = 0; i < 300; ++i) {
    std::string s(rng() % 40, '\0');
    for (char& c : s) c = static_cast<char>(rng() & 0xFF);
    const std::vector<int> ids = t.encode(s);
    for (const int id : ids) ASSERT_TRUE(id >= 0 && id < 32000);
    (void)t.decode(ids);
  }
  const std::string big(100000, 'x');
  EXPECT_FALSE(t.encode(big).empty());
}

TEST(SentencePieceLlama, CopiesShareTheModel) {
  SentencePieceTokenizer a = llama();
  const SentencePieceTokenizer b = a;
  a = SentencePieceTokenizer::load(kLlamaModel);
  EXPECT_EQ(a.encode("Hello world"), b.encode("Hello world"));
  EXPECT_EQ(b.encode("Hello world"), (std::vector<int>{15043, 3186}));
}

// ---------------------------------------------------------------------------------------------
// Hand-built models: encoder semantics.

TEST(SentencePieceBpe, MergesByScoreThenLeftmost) {
  Spec s;
  s.model_type = ModelType::kBpe;
  s.add_dummy_prefix = false;
  s.pieces = base_pieces();
  for (const char* c : {"a", "b", "c"}) s.pieces.push_back({c, -10, PieceType::kNormal});
  s.pieces.push_back({"ab", -1, PieceType::kNormal});
  s.pieces.push_back({"bc", -2, PieceType::kNormal});
  s.pieces.push_back({"aa", -3, PieceType::kNormal});
  const auto t = make(s);
  EXPECT_EQ(t.encode_pieces("abc"), (std::vector<std::string>{"ab", "c"}));  // ab scores higher than bc
  EXPECT_EQ(t.encode_pieces("bcab"), (std::vector<std::string>{"bc", "ab"}));
  EXPECT_EQ(t.encode_pieces("aaa"), (std::vector<std::string>{"aa", "a"}));  // tie: leftmost first
  EXPECT_EQ(t.encode_pieces("aab"), (std::vector<std::string>{"a", "ab"}));
  EXPECT_EQ(t.encode("abc"), (std::vector<int>{6, 5}));
}

TEST(SentencePieceBpe, UnusedPiecesAreSplitBack) {
  Spec s;
  s.model_type = ModelType::kBpe;
  s.add_dummy_prefix = false;
  s.pieces = base_pieces();
  for (const char* c : {"a", "b", "c"}) s.pieces.push_back({c, -10, PieceType::kNormal});
  s.pieces.push_back({"ab", -1, PieceType::kUnused});
  s.pieces.push_back({"abc", -2, PieceType::kNormal});
  s.pieces.push_back({"abab", -0.5f, PieceType::kUnused});
  const auto t = make(s);
  EXPECT_EQ(t.encode_pieces("abc"), (std::vector<std::string>{"abc"}));  // merged through the unused "ab"
  EXPECT_EQ(t.encode_pieces("ab"), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(t.encode_pieces("abab"), (std::vector<std::string>{"a", "b", "a", "b"}));
  EXPECT_TRUE(t.is_unused(6));
}

TEST(SentencePieceBpe, UserDefinedSymbolsAreNeverMerged) {
  Spec s;
  s.model_type = ModelType::kBpe;
  s.pieces = base_pieces();
  for (const char* c : {"\xE2\x96\x81", "a", "b", "<", ">", "x"}) s.pieces.push_back({c, -10, PieceType::kNormal});
  s.pieces.push_back({"<x>", 0, PieceType::kUserDefined});
  s.pieces.push_back({"a<", -0.5f, PieceType::kNormal});
  s.pieces.push_back({"x>", -1, PieceType::kNormal});
  s.pieces.push_back({"\xE2\x96\x81" "a", -1, PieceType::kNormal});
  const auto t = make(s);
  EXPECT_EQ(t.encode_pieces("a<x>b"), (std::vector<std::string>{"\xE2\x96\x81" "a", "<x>", "b"}));
  // Without the user-defined symbol, "a<" (the best pair) merges across the '<'.
  EXPECT_EQ(t.encode_pieces("a<x"), (std::vector<std::string>{"\xE2\x96\x81", "a<", "x"}));
}

TEST(SentencePieceBpe, UnknownRunsMergeWithoutByteFallback) {
  Spec s;
  s.model_type = ModelType::kBpe;
  s.pieces = base_pieces();
  for (const char* c : {"\xE2\x96\x81", "a"}) s.pieces.push_back({c, -10, PieceType::kNormal});
  const auto t = make(s);
  EXPECT_EQ(t.encode_pieces("a\xE2\x98\x83\xE2\x98\x83" "a"),
            (std::vector<std::string>{"\xE2\x96\x81", "a", "\xE2\x98\x83\xE2\x98\x83", "a"}));
  EXPECT_EQ(t.encode("a\xE2\x98\x83\xE2\x98\x83" "a"), (std::vector<int>{3, 4, 0, 4}));
  EXPECT_EQ(t.decode(t.encode("a\xE2\x98\x83\xE2\x98\x83" "a")), "a \xE2\x81\x87 a");
}

TEST(SentencePieceBpe, ByteFallbackSpellsUnknownCharacters) {
  Spec s;
  s.model_type = ModelType::kBpe;
  s.byte_fallback = true;
  s.pieces = base_pieces();
  for (const P& p : byte_pieces()) s.pieces.push_back(p);
  for (const char* c : {"\xE2\x96\x81", "a"}) s.pieces.push_back({c, -10, PieceType::kNormal});
  const auto t = make(s);
  EXPECT_EQ(t.encode_pieces("a\xE2\x98\x83"),
            (std::vector<std::string>{"\xE2\x96\x81", "a", "<0xE2>", "<0x98>", "<0x83>"}));
  EXPECT_EQ(t.encode("a\xE2\x98\x83"), (std::vector<int>{259, 260, 3 + 0xE2, 3 + 0x98, 3 + 0x83}));
  EXPECT_EQ(t.decode(t.encode("a\xE2\x98\x83")), "a\xE2\x98\x83");
}

TEST(SentencePieceUnigram, ViterbiPicksTheBestPath) {
  Spec s;
  s.add_dummy_prefix = false;
  s.pieces = base_pieces();
  s.pieces.push_back({"a", -1, PieceType::kNormal});
  s.pieces.push_back({"b", -1, PieceType::kNormal});
  s.pieces.push_back({"c", -1, PieceType::kNormal});
  s.pieces.push_back({"ab", -3, PieceType::kNormal});  // worse than a + b
  s.pieces.push_back({"bc", -1.5f, PieceType::kNormal});  // better than b + c
  s.pieces.push_back({"abc", -2.6f, PieceType::kNormal});  // a + bc = -2.5 wins
  const auto t = make(s);
  EXPECT_EQ(t.encode_pieces("abc"), (std::vector<std::string>{"a", "bc"}));
  EXPECT_EQ(t.encode_pieces("ab"), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(t.encode_pieces("cab"), (std::vector<std::string>{"c", "a", "b"}));
}

TEST(SentencePieceUnigram, TiesKeepTheFirstPathFound) {
  Spec s;
  s.add_dummy_prefix = false;
  s.pieces = base_pieces();
  s.pieces.push_back({"a", -1, PieceType::kNormal});
  s.pieces.push_back({"b", -1, PieceType::kNormal});
  s.pieces.push_back({"ab", -2, PieceType::kNormal});
  const auto t = make(s);
  EXPECT_EQ(t.encode_pieces("ab"), (std::vector<std::string>{"ab"}));
}

TEST(SentencePieceUnigram, UnknownsUnusedAndUserDefined) {
  Spec s;
  s.pieces = base_pieces();
  s.pieces.push_back({"\xE2\x96\x81", -2, PieceType::kNormal});
  s.pieces.push_back({"a", -1, PieceType::kNormal});
  s.pieces.push_back({"b", -1, PieceType::kNormal});
  s.pieces.push_back({"ab", -0.5f, PieceType::kUnused});  // never produced
  s.pieces.push_back({"<m>", -100, PieceType::kUserDefined});
  const auto t = make(s);
  EXPECT_EQ(t.encode_pieces("ab"), (std::vector<std::string>{"\xE2\x96\x81", "a", "b"}));
  EXPECT_EQ(t.encode_pieces("a<m>b"), (std::vector<std::string>{"\xE2\x96\x81", "a", "<m>", "b"}));
  // Unknown characters: one unk per run.
  EXPECT_EQ(t.encode_pieces("xyz a"), (std::vector<std::string>{"\xE2\x96\x81", "xyz", "\xE2\x96\x81", "a"}));
  EXPECT_EQ(t.encode("xyz a"), (std::vector<int>{3, 0, 3, 4}));
  EXPECT_EQ(t.decode({3, 0, 3, 4}), " \xE2\x81\x87  a");
}

TEST(SentencePieceUnigram, ByteFallbackAndCustomUnkSurface) {
  Spec s;
  s.byte_fallback = true;
  s.unk_surface = "<?>";
  s.pieces = base_pieces();
  for (const P& p : byte_pieces()) s.pieces.push_back(p);
  s.pieces.push_back({"\xE2\x96\x81", -2, PieceType::kNormal});
  s.pieces.push_back({"a", -1, PieceType::kNormal});
  const auto t = make(s);
  EXPECT_EQ(t.encode_pieces("\xC3\xA9" "a"), (std::vector<std::string>{"\xE2\x96\x81", "<0xC3>", "<0xA9>", "a"}));
  EXPECT_EQ(t.decode({0, 260}), "<?>a");
}

TEST(SentencePieceWordAndChar, Segmentation) {
  Spec s;
  s.model_type = ModelType::kWord;
  s.pieces = base_pieces();
  s.pieces.push_back({"\xE2\x96\x81hello", -1, PieceType::kNormal});
  s.pieces.push_back({"\xE2\x96\x81world", -1, PieceType::kNormal});
  const auto w = make(s);
  EXPECT_EQ(w.encode("hello  world there"), (std::vector<int>{3, 4, 0}));
  EXPECT_EQ(w.encode_pieces("hello world"), (std::vector<std::string>{"\xE2\x96\x81hello", "\xE2\x96\x81world"}));
  s.model_type = ModelType::kChar;
  s.pieces = base_pieces();
  s.pieces.push_back({"\xE2\x96\x81", -1, PieceType::kNormal});
  s.pieces.push_back({"h", -1, PieceType::kNormal});
  s.pieces.push_back({"i", -1, PieceType::kNormal});
  const auto c = make(s);
  EXPECT_EQ(c.encode("hi ho"), (std::vector<int>{3, 4, 5, 3, 4, 0}));
}

TEST(SentencePieceNormalizer, WhitespaceOptions) {
  Spec s;
  s.pieces = base_pieces();
  s.pieces.push_back({"a", -1, PieceType::kNormal});
  const std::string sp = "\xE2\x96\x81";
  EXPECT_EQ(make(s).normalize("  a   b  "), sp + "a" + sp + "b");
  EXPECT_EQ(make(s).normalize("   "), "");
  EXPECT_EQ(make(s).normalize(""), "");
  s.remove_extra_whitespaces = false;
  EXPECT_EQ(make(s).normalize(" a  b "), sp + sp + "a" + sp + sp + "b" + sp);
  EXPECT_EQ(make(s).normalize(""), "");
  s.add_dummy_prefix = false;
  EXPECT_EQ(make(s).normalize("a b"), "a" + sp + "b");
  s.escape_whitespaces = false;
  EXPECT_EQ(make(s).normalize("a  b"), "a  b");
  s.remove_extra_whitespaces = true;
  s.add_dummy_prefix = true;
  EXPECT_EQ(make(s).normalize(" a  b "), " a b");
  s.escape_whitespaces = true;
  s.treat_ws_as_suffix = true;
  EXPECT_EQ(make(s).normalize(" a  b "), "a" + sp + "b" + sp);
}

TEST(SentencePieceNormalizer, PrecompiledCharsmapLongestMatch) {
  Spec s;
  s.pieces = base_pieces();
  s.pieces.push_back({"a", -1, PieceType::kNormal});
  s.charsmap = build_charsmap({
      {"\xEF\xBC\xA1", "A"},                          // Ａ -> A
      {"\xEF\xBD\xB6", "\xE3\x82\xAB"},               // ｶ -> カ
      {"\xEF\xBD\xB6\xEF\xBE\x9E", "\xE3\x82\xAC"},   // ｶﾞ -> ガ (longer rule wins)
      {"\xE2\x80\x8B", ""},                           // ZWSP deleted
      {"\t", " "},                                    // tab -> space
      {"\xE3\x80\x80", " "},                          // ideographic space -> space
      {"\xEF\xAC\x81", "fi"},                         // ﬁ -> fi
      {"ab", "X"},                                    // multi-byte ASCII rule
  });
  s.pieces.push_back({"\xEF\xBC\xA1\xEF\xBC\xA1", 0, PieceType::kUserDefined});  // ＡＡ
  const auto t = make(s);
  const std::string sp = "\xE2\x96\x81";
  EXPECT_EQ(t.normalize("\xEF\xBC\xA1" "b"), sp + "Ab");
  EXPECT_EQ(t.normalize("\xEF\xBD\xB6\xEF\xBE\x9E\xEF\xBD\xB6"), sp + "\xE3\x82\xAC\xE3\x82\xAB");
  EXPECT_EQ(t.normalize("x\xE2\x80\x8By"), sp + "xy");
  EXPECT_EQ(t.normalize("\t\xE3\x80\x80x\t\ty\xE3\x80\x80"), sp + "x" + sp + "y");  // mapped spaces collapse
  EXPECT_EQ(t.normalize("\xEF\xAC\x81ne aab"), sp + "fine" + sp + "aX");
  EXPECT_EQ(t.normalize(std::string("a\0b", 3)), sp + std::string("a\0b", 3));
  EXPECT_EQ(t.normalize("\xFF"), sp + "\xEF\xBF\xBD");
  // User-defined symbols bypass the charsmap.
  EXPECT_EQ(t.normalize("\xEF\xBC\xA1\xEF\xBC\xA1\xEF\xBC\xA1"), sp + "\xEF\xBC\xA1\xEF\xBC\xA1" "A");
}

// ---------------------------------------------------------------------------------------------
// Error paths.

TEST(SentencePieceErrors, MissingFileAndDirectory) {
  try {
    SentencePieceTokenizer::load("/nonexistent/dir/tokenizer.model");
    ADD_FAILURE() << "no exception";
  } catch (const iris::IoError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/dir/tokenizer.model"), std::string::npos) << e.what();
  }
  EXPECT_THROW(SentencePieceTokenizer::load(kFixtures), iris::IoError);
}

TEST(SentencePieceErrors, EmptyAndGarbageFiles) {
  const std::string dir = scratch_dir();
  const std::string empty = dir + "/iris_empty.model";
  std::ofstream(empty, std::ios::binary).close();
  expect_format_error([&] { SentencePieceTokenizer::load(empty); }, empty, "vocabulary is empty");
  std::mt19937 rng(11);
  for (int i = 0; i < 200; ++i) {
    std::string g(1 + rng() % 4096, '\0');
    for (char& c : g) c = static_cast<char>(rng() & 0xFF);
    expect_bad_model(g);
  }
  const std::string text = dir + "/iris_text.model";
  std::ofstream(text, std::ios::binary) << "this is not a sentencepiece model\n";
  expect_format_error([&] { SentencePieceTokenizer::load(text); }, text);
}

TEST(SentencePieceErrors, TruncatedLlamaModel) {
  const std::string full = read_file(kLlamaModel);
  ASSERT_GT(full.size(), 100000u);
  // Prefixes ending exactly between top-level fields are valid protobufs; every other prefix
  // must be rejected. (A prefix cut after k whole pieces is rejected by the vocabulary checks.)
  std::set<size_t> boundaries;
  size_t pos = 0;
  while (pos < full.size()) {
    pos += 1;  // tags of fields 1..3 with wire type 2 are single bytes
    uint64_t len = 0;
    for (int shift = 0;; shift += 7) {
      const auto b = static_cast<unsigned char>(full[pos++]);
      len |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) break;
    }
    pos += len;
    boundaries.insert(pos);
  }
  ASSERT_EQ(pos, full.size());
  const std::string dir = scratch_dir();
  int rejected = 0, accepted = 0;
  for (size_t n = 0; n < full.size(); n += (n < 64 ? 1 : 4999)) {
    const std::string cut = full.substr(0, n);
    try {
      SentencePieceTokenizer::from_bytes(cut, "truncated.model");
      ++accepted;
      EXPECT_TRUE(boundaries.count(n)) << "prefix of " << n << " bytes accepted";
    } catch (const iris::FormatError& e) {
      ++rejected;
      EXPECT_NE(std::string(e.what()).find("truncated.model"), std::string::npos);
    }
  }
  EXPECT_GT(rejected, 150);
  for (const size_t n : {full.size() - 1, full.size() - 5, full.size() / 2, size_t{1}, size_t{10}}) {
    const std::string path = dir + "/iris_truncated.model";
    std::ofstream(path, std::ios::binary) << full.substr(0, n);
    expect_format_error([&] { SentencePieceTokenizer::load(path); }, path);
  }
}

TEST(SentencePieceErrors, MalformedWireFormat) {
  expect_bad_model(std::string(11, '\xFF'), "varint");
  expect_bad_model(std::string("\x0A\x80", 2), "truncated varint");
  expect_bad_model(std::string("\x08\x01", 2), "wire type");                  // pieces as a varint
  expect_bad_model(std::string("\x0A", 1) + varint(1ull << 40), "exceeds");   // absurd length
  expect_bad_model(std::string("\x0A\x05" "ab", 4), "exceeds");
  expect_bad_model(std::string("\x00\x01", 2), "field number 0");
  expect_bad_model(std::string("\x0B", 1), "wire type");  // pieces with the group wire type
  expect_bad_model(std::string("\x33", 1), "group");      // unknown field 6, group wire type
  expect_bad_model(std::string("\x37", 1), "invalid wire type");
  expect_bad_model(std::string("\x31\x01\x02", 3), "truncated fixed64");
  expect_bad_model(std::string("\x35\x01", 2), "truncated fixed32");
  expect_bad_model(f_bytes(1, f_varint(2, 5)), "score");                       // score as a varint
  expect_bad_model(f_bytes(1, f_bytes(1, "a") + f_varint(3, 9)), "piece type");
  expect_bad_model(f_bytes(1, f_bytes(1, "a") + f_float(2, 0).substr(0, 3)), "truncated fixed32");
  expect_bad_model(f_bytes(1, f_bytes(1, "<unk>") + f_varint(3, 2)) + f_bytes(2, f_varint(3, 7)), "model_type");
  expect_bad_model(f_bytes(1, f_bytes(1, "<unk>") + f_varint(3, 2)) + f_bytes(3, f_bytes(2, "x")).substr(0, 4), "exceeds");
  expect_bad_model(f_bytes(1, f_bytes(1, "<unk>") + f_varint(3, 2)) + f_bytes(3, f_varint(3, 1) + "\x12"));
}

TEST(SentencePieceErrors, InvalidVocabularies) {
  Spec ok;
  ok.pieces = base_pieces();
  ok.pieces.push_back({"a", -1, PieceType::kNormal});
  EXPECT_NO_THROW(make(ok));

  Spec s = ok;
  s.pieces = {};
  expect_bad_model(build(s), "empty");
  s = ok;
  s.pieces.push_back({"", -1, PieceType::kNormal});
  expect_bad_model(build(s), "empty");
  s = ok;
  s.pieces.push_back({"a", -2, PieceType::kNormal});
  expect_bad_model(build(s), "defined twice");
  s = ok;
  s.pieces.erase(s.pieces.begin());
  expect_bad_model(build(s), "unknown piece");
  s = ok;
  s.pieces.push_back({"<unk2>", 0, PieceType::kUnknown});
  expect_bad_model(build(s), "more than one unknown");
  s = ok;
  s.pieces.push_back({"<0x41>", 0, PieceType::kByte});
  expect_bad_model(build(s), "byte_fallback is off");
  s = ok;
  s.byte_fallback = true;
  expect_bad_model(build(s), "<0x00> is missing");
  s.pieces.push_back({"<0xzz>", 0, PieceType::kByte});
  expect_bad_model(build(s), "not <0xNN>");
  s = ok;
  s.pieces = base_pieces();
  expect_bad_model(build(s), "normal piece");  // unigram without pieces to segment with
  s.model_type = ModelType::kBpe;
  EXPECT_NO_THROW(make(s));  // libsentencepiece accepts a BPE model like this
}

TEST(SentencePieceErrors, CorruptCharsmap) {
  Spec s;
  s.pieces = base_pieces();
  s.pieces.push_back({"a", -1, PieceType::kNormal});
  const std::string good = build_charsmap({{"x", "y"}, {"xz", "w"}});
  s.charsmap = good;
  EXPECT_EQ(make(s).normalize("xzx"), "\xE2\x96\x81wy");
  s.charsmap = "\x01\x02\x03";
  expect_bad_model(build(s), "too short");
  s.charsmap = good.substr(0, 4) + "abc";  // trie size larger than the blob
  expect_bad_model(build(s), "exceeds");
  s.charsmap = std::string("\x06\x00\x00\x00", 4) + std::string(8, '\0');
  expect_bad_model(build(s), "multiple of 4");
  s.charsmap = good.substr(0, good.size() - 4);  // pool cut: rule values point past it
  expect_bad_model(build(s), "string pool");
  std::string bad_value = good;
  uint32_t trie_size = 0;
  for (int k = 3; k >= 0; --k) trie_size = (trie_size << 8) | static_cast<unsigned char>(good[k]);
  for (size_t i = 4; i < 4 + trie_size; i += 4) {
    if (static_cast<unsigned char>(bad_value[i + 3]) & 0x80) bad_value[i + 2] = '\x7F';  // value units -> huge
  }
  s.charsmap = bad_value;
  expect_bad_model(build(s), "string pool");
  // Random bytes as a charsmap: rejected or accepted, never a crash; if accepted, usable.
  std::mt19937 rng(3);
  int rejected = 0;
  for (int i = 0; i < 300; ++i) {
    std::string blob(8 + rng() % 2048, '\0');
    for (char& c : blob) c = static_cast<char>(rng() & 0xFF);
    const uint32_t trie = static_cast<uint32_t>((rng() % ((blob.size() - 4) / 4)) * 4 + 4);
    for (int k = 0; k < 4; ++k) blob[k] = static_cast<char>((trie >> (8 * k)) & 0xFF);
    s.charsmap = blob;
    try {
      const auto t = make(s);
      std::string text(64, '\0');
      for (char& c : text) c = static_cast<char>(rng() & 0xFF);
      (void)t.encode(text);
    } catch (const iris::FormatError& e) {
      ++rejected;
      EXPECT_NE(std::string(e.what()).find("test.model"), std::string::npos);
    }
  }
  std::printf("[ charsmap ] %d/300 random charsmaps rejected at load, the rest encode safely\n", rejected);
}

}  // namespace
