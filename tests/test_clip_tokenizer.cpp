// CLIP BPE tokenizer: golden ids from openai/CLIP simple_tokenizer.py (ftfy = identity)
// for both vocabulary sources, padding, decoding, error paths, and the Unicode helpers.
#include <gtest/gtest.h>
#include <zlib.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/clip_tokenizer.h"
#include "core/error.h"
#include "core/mmap_file.h"
#include "core/unicode.h"

#ifndef IRIS_FIXTURES_DIR
#error "IRIS_FIXTURES_DIR must be defined (path of shared/fixtures)"
#endif

namespace iris {
namespace {

const std::string kFixtures = IRIS_FIXTURES_DIR;
const std::string kHfDir = kFixtures + "/data/clip_tokenizer";
const std::string kBpeGz = kFixtures + "/data/bpe_simple_vocab_16e6.txt.gz";

struct GoldenRow {
  std::string text;
  std::vector<int> ids;
};

std::vector<GoldenRow> load_golden() {
  const std::string path = kFixtures + "/clip_tokenizer_golden.jsonl";
  std::istringstream in(read_text_file(path));
  std::vector<GoldenRow> rows;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line);
    rows.push_back({j.at("text").get<std::string>(), j.at("ids").get<std::vector<int>>()});
  }
  return rows;
}

const ClipTokenizer& hf_tokenizer() {
  static const ClipTokenizer tok = ClipTokenizer::from_files(kHfDir + "/vocab.json", kHfDir + "/merges.txt");
  return tok;
}

const ClipTokenizer& gz_tokenizer() {
  static const ClipTokenizer tok = ClipTokenizer::from_bpe_gz(kBpeGz);
  return tok;
}

std::string temp_path(const std::string& name) { return testing::TempDir() + "/iris_clip_tok_" + name; }

std::string write_temp_file(const std::string& name, const std::string& content) {
  const std::string path = temp_path(name);
  std::ofstream(path, std::ios::binary) << content;
  return path;
}

std::string ids_to_string(const std::vector<int>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? ", " : "") + std::to_string(ids[i]);
  return s + "]";
}

// Every golden row, reporting each failing row with its text and both id lists.
void expect_golden(const ClipTokenizer& tok, const char* source) {
  const auto rows = load_golden();
  ASSERT_EQ(rows.size(), 201u);
  size_t passed = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto got = tok.encode_with_special(rows[i].text);
    if (got == rows[i].ids) {
      ++passed;
    } else {
      ADD_FAILURE() << source << " row " << i << " text " << nlohmann::json(rows[i].text).dump()
                    << "\n  expected " << ids_to_string(rows[i].ids) << "\n  got      " << ids_to_string(got);
    }
  }
  std::cout << "[ golden ] " << source << ": " << passed << "/" << rows.size() << " rows equal\n";
  EXPECT_EQ(passed, rows.size());
}

TEST(ClipTokenizerGolden, VocabJsonAndMerges) { expect_golden(hf_tokenizer(), "vocab.json+merges.txt"); }

TEST(ClipTokenizerGolden, BpeSimpleVocabGz) { expect_golden(gz_tokenizer(), "bpe_simple_vocab_16e6.txt.gz"); }

TEST(ClipTokenizer, BothSourcesAgree) {
  const auto& a = hf_tokenizer();
  const auto& b = gz_tokenizer();
  EXPECT_EQ(a.vocab_size(), 49408u);
  EXPECT_EQ(b.vocab_size(), 49408u);
  EXPECT_EQ(a.bos_id(), 49406);
  EXPECT_EQ(b.bos_id(), 49406);
  EXPECT_EQ(a.eos_id(), 49407);
  EXPECT_EQ(b.eos_id(), 49407);
  for (int id = 0; id < 49408; ++id) {
    ASSERT_EQ(a.decode({id}), b.decode({id})) << "id " << id;
  }
}

TEST(ClipTokenizer, FromFolder) {
  const auto golden = load_golden();
  const auto hf = ClipTokenizer::from_folder(kHfDir);
  const auto gz = ClipTokenizer::from_folder(kFixtures + "/data");
  for (const auto& row : golden) {
    EXPECT_EQ(hf.encode_with_special(row.text), row.ids);
    EXPECT_EQ(gz.encode_with_special(row.text), row.ids);
  }
  EXPECT_THROW(ClipTokenizer::from_folder(testing::TempDir() + "/no_such_tokenizer_dir"), IoError);
}

TEST(ClipTokenizer, KnownIds) {
  const auto& tok = hf_tokenizer();
  EXPECT_EQ(tok.encode(""), std::vector<int>{});
  EXPECT_EQ(tok.encode("   "), std::vector<int>{});
  EXPECT_EQ(tok.encode("<|endoftext|>"), std::vector<int>{49407});
  EXPECT_EQ(tok.encode("<|startoftext|>"), std::vector<int>{49406});
  EXPECT_EQ(tok.encode("a photo of a cat"), tok.encode("  A   PHOTO\tof a\n cat "));
  EXPECT_EQ(tok.encode_with_special("a photo of a cat"),
            (std::vector<int>{49406, 320, 1125, 539, 320, 2368, 49407}));
}

// Corner cases of the reference's `regex` pattern that no golden row covers. The ids come
// from a Python re-implementation that encodes the `regex` module's IGNORECASE rules as
// read from its source (mrab-regex _regex.c): literals match any simple-case-folding
// variant, sets test every case variant of the character, a one-item set is a plain
// property test.
TEST(ClipTokenizer, RegexModuleCornerCases) {
  const auto& tok = hf_tokenizer();
  // U+017F LONG S matches 's' in "'s" and in "<|startoftext|>" (then BPE'd as text).
  EXPECT_EQ(tok.encode("it'\u017F"), (std::vector<int>{585, 6, 129, 379}));
  EXPECT_EQ(tok.encode("it' \u017F"), (std::vector<int>{585, 262, 129, 379}));
  EXPECT_EQ(tok.encode("<|\u017Ftartoftext|>"), (std::vector<int>{27, 91, 129, 123, 2002, 6659, 18169, 91, 285}));
  // U+0345 (case variants include iota) is in neither [\p{L}]+ nor [^\s\p{L}\p{N}]+: dropped.
  EXPECT_EQ(tok.encode("a\u0345b"), (std::vector<int>{320, 321}));
  EXPECT_EQ(tok.encode("\u0391\u03A3\u0345 x"), (std::vector<int>{138, 109, 139, 480, 343}));
  // regex's \s is White_Space (no U+001C..U+001F) but str.strip() removes them at the ends.
  EXPECT_EQ(tok.encode("a\x1c" "b"), (std::vector<int>{320, 472, 321}));
  EXPECT_EQ(tok.encode("\x1c" "ab\x1c"), (std::vector<int>{3937}));
}

TEST(ClipTokenizer, Padded) {
  const auto& tok = hf_tokenizer();
  const auto body = tok.encode("a photo of a cat");
  const auto ids = tok.encode_padded("a photo of a cat");
  ASSERT_EQ(ids.size(), 77u);
  EXPECT_EQ(ids[0], 49406);
  EXPECT_EQ(std::vector<int>(ids.begin() + 1, ids.begin() + 1 + body.size()), body);
  for (size_t i = 1 + body.size(); i < ids.size(); ++i) EXPECT_EQ(ids[i], 49407);

  // Truncated to 75 + bos + eos, eos last.
  std::string long_text;
  for (int i = 0; i < 300; ++i) long_text += "x ";
  const auto full = tok.encode(long_text);
  ASSERT_EQ(full.size(), 300u);
  const auto trunc = tok.encode_padded(long_text);
  ASSERT_EQ(trunc.size(), 77u);
  EXPECT_EQ(trunc.front(), 49406);
  EXPECT_EQ(trunc.back(), 49407);
  EXPECT_EQ(std::vector<int>(trunc.begin() + 1, trunc.end() - 1), std::vector<int>(full.begin(), full.begin() + 75));

  // openai/CLIP clip.tokenize style: pad with 0, other lengths.
  const auto zero_pad = tok.encode_padded("a cat", 8, 0);
  EXPECT_EQ(zero_pad, (std::vector<int>{49406, 320, 2368, 49407, 0, 0, 0, 0}));
  EXPECT_EQ(tok.encode_padded("a cat", 2), (std::vector<int>{49406, 49407}));
  EXPECT_EQ(tok.encode_padded("", 4), (std::vector<int>{49406, 49407, 49407, 49407}));
  EXPECT_THROW(tok.encode_padded("a cat", 1), ConfigError);
}

TEST(ClipTokenizer, DecodeRoundTrip) {
  const auto& tok = gz_tokenizer();
  // Like openai/CLIP: every word ends with a space.
  EXPECT_EQ(tok.decode(tok.encode("a photo of a cat")), "a photo of a cat ");
  EXPECT_EQ(tok.decode(tok.encode("Hello, World!")), "hello , world ! ");
  EXPECT_EQ(tok.decode(tok.encode("café 中文 😀")), "café 中文 😀 ");
  EXPECT_EQ(tok.decode(tok.encode_with_special("a cat")), "<|startoftext|>a cat <|endoftext|>");
  EXPECT_EQ(tok.decode(tok.encode_padded("a cat"), /*skip_special=*/true), "a cat ");
  // Id 160 is the byte 0xE4 alone: an incomplete UTF-8 sequence, U+FFFD (errors="replace").
  EXPECT_EQ(tok.decode({160}), "\xEF\xBF\xBD");
  EXPECT_THROW(tok.decode({-1}), FormatError);
  EXPECT_THROW(tok.decode({49408}), FormatError);
}

TEST(ClipTokenizer, InvalidUtf8IsReplacementChar) {
  const auto& tok = hf_tokenizer();
  const std::string fffd = "\xEF\xBF\xBD";
  EXPECT_EQ(tok.encode("a\xFF" "b"), tok.encode("a" + fffd + "b"));
  EXPECT_EQ(tok.encode("a\xE4\xB8" "b"), tok.encode("a" + fffd + "b"));           // truncated 3-byte sequence
  EXPECT_EQ(tok.encode("\xC0\xAF"), tok.encode(fffd + fffd));                      // overlong '/'
  EXPECT_EQ(tok.encode("\xED\xA0\x80x"), tok.encode(fffd + fffd + fffd + "x"));   // UTF-16 surrogate
  EXPECT_EQ(tok.encode("\xF4\x90\x80\x80"), tok.encode(fffd + fffd + fffd + fffd));  // > U+10FFFF
  EXPECT_EQ(tok.encode("end\xF0\x9F\x98"), tok.encode("end" + fffd));
  std::string all_bytes;
  for (int b = 0; b < 256; ++b) all_bytes.push_back(static_cast<char>(b));
  EXPECT_FALSE(tok.encode(all_bytes).empty());
}

TEST(ClipTokenizer, ConcurrentEncode) {
  const auto golden = load_golden();
  const auto tok = ClipTokenizer::from_files(kHfDir + "/vocab.json", kHfDir + "/merges.txt");  // cold cache
  std::vector<std::thread> threads;
  std::vector<int> failures(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 3; ++rep) {
        for (const auto& row : golden) failures[t] += tok.encode_with_special(row.text) != row.ids;
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int f : failures) EXPECT_EQ(f, 0);
}

// simple_tokenizer.bpe() merges every occurrence of the best pair before it looks at
// the pairs that creates, even when one of those has a better rank (possible with an
// unusual merges.txt). Merges: "ab a" (rank 0), "a b" (rank 1).
//   "ababab" -> a b a b a b</w> -> ab ab a b</w> -> ab aba b</w>
TEST(ClipTokenizer, BpeMergesAllOccurrencesOfAPairFirst) {
  const auto merges = write_temp_file("order_merges.txt", "#version: 0.2\nab a\na b\n");
  const auto tok = ClipTokenizer::from_files(kHfDir + "/vocab.json", merges);
  const auto ids = tok.encode("ababab");
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_EQ(tok.decode({ids[0]}), "ab");
  EXPECT_EQ(tok.decode({ids[1]}), "aba");
  EXPECT_EQ(tok.decode({ids[2]}), "b ");
}

// --- error paths -------------------------------------------------------------------

// Runs fn, expects exception E whose message contains every `needles` entry.
template <typename E, typename Fn>
void expect_error(Fn&& fn, const std::vector<std::string>& needles) {
  try {
    fn();
    ADD_FAILURE() << "no exception";
  } catch (const E& e) {
    for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

TEST(ClipTokenizerErrors, MissingFiles) {
  const std::string missing = temp_path("missing_vocab.json");
  expect_error<IoError>([&] { ClipTokenizer::from_files(missing, kHfDir + "/merges.txt"); }, {missing});
  const std::string missing_merges = temp_path("missing_merges.txt");
  expect_error<IoError>([&] { ClipTokenizer::from_files(kHfDir + "/vocab.json", missing_merges); }, {missing_merges});
  const std::string missing_gz = temp_path("missing.txt.gz");
  expect_error<IoError>([&] { ClipTokenizer::from_bpe_gz(missing_gz); }, {missing_gz});
}

TEST(ClipTokenizerErrors, MalformedVocabJson) {
  const std::string merges = kHfDir + "/merges.txt";
  const auto bad_json = write_temp_file("bad.json", "{\"a\": 1,\n \"b\": ");
  expect_error<FormatError>([&] { ClipTokenizer::from_files(bad_json, merges); }, {bad_json, "JSON"});
  const auto array_json = write_temp_file("array.json", "[1, 2, 3]");
  expect_error<FormatError>([&] { ClipTokenizer::from_files(array_json, merges); }, {array_json});
  const auto string_id = write_temp_file("string_id.json", "{\"a\": \"1\"}");
  expect_error<FormatError>([&] { ClipTokenizer::from_files(string_id, merges); }, {string_id, "\"a\""});
  const auto negative_id = write_temp_file("negative_id.json", "{\"a\": -5}");
  expect_error<FormatError>([&] { ClipTokenizer::from_files(negative_id, merges); }, {negative_id});
  const auto sparse_id = write_temp_file("sparse_id.json", "{\"a\": 0, \"b\": 7}");
  expect_error<FormatError>([&] { ClipTokenizer::from_files(sparse_id, merges); }, {sparse_id, "\"b\""});
  const auto same_id = write_temp_file("same_id.json", "{\"a\": 0, \"b\": 0}");
  expect_error<FormatError>([&] { ClipTokenizer::from_files(same_id, merges); }, {same_id, "more than one"});
  // Valid JSON but not a CLIP vocabulary (no byte symbols).
  const auto tiny = write_temp_file("tiny.json", "{\"a\": 0, \"b\": 1}");
  expect_error<FormatError>([&] { ClipTokenizer::from_files(tiny, merges); }, {tiny, "byte symbol"});
}

TEST(ClipTokenizerErrors, BadMergesLine) {
  const std::string vocab = kHfDir + "/vocab.json";
  const auto three_fields = write_temp_file("three.txt", "#version: 0.2\ni n\nt h e\n");
  expect_error<FormatError>([&] { ClipTokenizer::from_files(vocab, three_fields); }, {three_fields + ":3:", "3 fields"});
  const auto one_field = write_temp_file("one.txt", "#version: 0.2\ni n\r\nth\r\n");
  expect_error<FormatError>([&] { ClipTokenizer::from_files(vocab, one_field); }, {one_field + ":3:"});
  const auto unknown = write_temp_file("unknown.txt", "#version: 0.2\ni n\nqq zz\n");
  expect_error<FormatError>([&] { ClipTokenizer::from_files(vocab, unknown); }, {unknown + ":3:", "qq"});
  // The header alone is a valid (merge-less) tokenizer: every byte is its own token.
  const auto header_only = write_temp_file("header.txt", "#version: 0.2\n");
  const auto tok = ClipTokenizer::from_files(vocab, header_only);
  EXPECT_EQ(tok.encode("ab"), (std::vector<int>{64, 321}));  // 'a', 'b</w>' ('!' is id 0)
}

std::string gzip_bytes(const std::string& content) {
  const std::string path = temp_path("gzip_scratch.gz");
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, content.data(), static_cast<unsigned>(content.size()));
  gzclose(f);
  return read_text_file(path);
}

TEST(ClipTokenizerErrors, BadGzip) {
  const std::string good = read_text_file(kBpeGz);
  const auto truncated = write_temp_file("truncated.gz", good.substr(0, good.size() / 2));
  expect_error<FormatError>([&] { ClipTokenizer::from_bpe_gz(truncated); }, {truncated, "truncated"});
  const auto empty = write_temp_file("empty.gz", "");
  expect_error<FormatError>([&] { ClipTokenizer::from_bpe_gz(empty); }, {empty});
  const auto not_gzip = write_temp_file("plain.gz", "#version: 0.2\ni n\n");
  expect_error<FormatError>([&] { ClipTokenizer::from_bpe_gz(not_gzip); }, {not_gzip, "not a gzip"});
  std::string damaged = good;
  for (size_t i = damaged.size() / 3; i < damaged.size() / 3 + 64; ++i) damaged[i] = static_cast<char>(~damaged[i]);
  const auto corrupt = write_temp_file("corrupt.gz", damaged);
  expect_error<FormatError>([&] { ClipTokenizer::from_bpe_gz(corrupt); }, {corrupt});
  const auto short_list = write_temp_file("short.gz", gzip_bytes("#version: 0.2\ni n\nt h\n"));
  expect_error<FormatError>([&] { ClipTokenizer::from_bpe_gz(short_list); }, {short_list, "48894"});
  const auto bad_line = write_temp_file("badline.gz", gzip_bytes("#version: 0.2\ni n\nt h e\n"));
  expect_error<FormatError>([&] { ClipTokenizer::from_bpe_gz(bad_line); }, {bad_line + ":3:"});
}

// --- Unicode helpers (expected values from Python 3.11) ------------------------------

std::u32string U(const std::string& utf8) { return unicode::decode_utf8(utf8); }
std::string S(const std::u32string& s) { return unicode::encode_utf8(s); }

TEST(Unicode, PythonLower) {
  EXPECT_EQ(S(unicode::to_lower(U("ΟΔΟΣ final ΣΑΣ Σ aΣ'"))), "οδος final σας σ aς'");
  EXPECT_EQ(S(unicode::to_lower(U("AΣ\u0301b"))), "aσ\u0301b");   // case-ignorable skipped, cased follows
  EXPECT_EQ(S(unicode::to_lower(U("AΣ\u0301."))), "aς\u0301.");    // '.' is case-ignorable (MidNumLet)
  EXPECT_EQ(S(unicode::to_lower(U("ⒶΣ"))), "ⓐς");                   // circled letters are cased
  EXPECT_EQ(S(unicode::to_lower(U("İ"))), "i\u0307");
  EXPECT_EQ(S(unicode::to_lower(U("ǅ ẞ Ω K Å"))), "ǆ ß ω k å");
  EXPECT_EQ(S(unicode::to_lower(U("\U00010570"))), "\U00010597");    // Vithkuqi, new in Unicode 14
}

TEST(Unicode, Classes) {
  EXPECT_TRUE(unicode::is_letter(U'a'));
  EXPECT_TRUE(unicode::is_letter(0x4E2D));
  EXPECT_TRUE(unicode::is_letter(0x20000));
  EXPECT_FALSE(unicode::is_letter(0x31350));  // CJK Ext-H: Unicode 15, unassigned in 14
  EXPECT_FALSE(unicode::is_number(0x11F50));  // Kawi digit: Unicode 15
  EXPECT_TRUE(unicode::is_letter(0x10570));   // Unicode 14 (fails with utf8proc < 2.7)
  EXPECT_TRUE(unicode::is_number(0xBD));
  EXPECT_TRUE(unicode::is_number(0x216B));
  EXPECT_TRUE(unicode::is_python_space(0x1C));
  EXPECT_FALSE(unicode::is_white_space(0x1C));
  EXPECT_TRUE(unicode::is_white_space(0x3000));
  EXPECT_FALSE(unicode::is_white_space(0x200B));
}

TEST(Unicode, HtmlUnescapeLikePython) {
  auto un = [](const std::string& s) { return S(unicode::html_unescape(U(s))); };
  EXPECT_EQ(un("&amp;"), "&");
  EXPECT_EQ(un("&amp"), "&");
  EXPECT_EQ(un("&ampx;"), "&x;");               // legacy name, longest prefix
  EXPECT_EQ(un("&notit;"), "¬it;");
  EXPECT_EQ(un("&notin;"), "∉");
  EXPECT_EQ(un("&bogus;"), "&bogus;");
  EXPECT_EQ(un("&#39;&#x27;&#X27"), "'''");
  EXPECT_EQ(un("&#0;"), "\uFFFD");
  EXPECT_EQ(un("&#128;&#x9f;"), "€Ÿ");
  EXPECT_EQ(un("&#1;x"), "x");                   // invalid code point: dropped
  EXPECT_EQ(un("&#xD800;&#x110000;"), "\uFFFD\uFFFD");
  EXPECT_EQ(un("&#99999999999999999999;"), "\uFFFD");
  EXPECT_EQ(un("&#x1F600;"), "😀");
  EXPECT_EQ(un("&#;&#x;&#xg;&;& &"), "&#;&#x;&#xg;&;& &");
  EXPECT_EQ(un("&amp;amp;"), "&amp;");
  EXPECT_EQ(un("&NotNestedGreaterGreater;"), "⪢\u0338");
  EXPECT_EQ(un("&CounterClockwiseContourIntegral;"), "∳");
}

}  // namespace
}  // namespace iris
