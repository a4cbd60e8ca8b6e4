// SentencePiece BPE training (core/sentencepiece_trainer.h) and the Tinyworld text corpus
// (pipelines/tinyworld_text.h): the trained bytes load in the native tokenizer, encode/decode
// round-trips, special ids, user symbols, byte fallback, exact merges on a hand-worked corpus,
// determinism, error paths; libsentencepiece's spm_encode agrees where it is installed; and
// `iris train spm` writes a tokenizer folder.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/json_util.h"
#include "core/mmap_file.h"
#include "core/sentencepiece.h"
#include "core/sentencepiece_trainer.h"
#include "pipelines/tinyworld_text.h"
#include "tests/test_util.h"
#include "world/captions.h"
#include "world/dataset.h"
#include "world/rng.h"

namespace {

namespace fs = std::filesystem;
using iris::ConfigError;
using iris::SentencePieceTokenizer;
using iris::SpmTrainOptions;
using iris::train_sentencepiece_bpe;

const std::string kWs = "\xE2\x96\x81";  // U+2581

// One model shared by the tests that only read it: 60 Tinyworld training scenes, 400 pieces.
const std::string& tinyworld_model() {
  static const std::string bytes = [] {
    SpmTrainOptions o;
    o.vocab_size = 400;
    o.user_defined_symbols = {"<image>"};
    return train_sentencepiece_bpe(iris::tinyworld_text_corpus(7, 60), o);
  }();
  return bytes;
}

SentencePieceTokenizer tinyworld_tokenizer() { return SentencePieceTokenizer::from_bytes(tinyworld_model(), "trained"); }

TEST(SpmTraining, LlamaLayoutSpecialIdsAndBytePieces) {
  const SentencePieceTokenizer tok = tinyworld_tokenizer();
  EXPECT_EQ(tok.vocab_size(), 400u);
  EXPECT_EQ(tok.model_type(), SentencePieceTokenizer::ModelType::kBpe);
  EXPECT_TRUE(tok.byte_fallback());
  EXPECT_EQ((std::vector<int>{tok.unk_id(), tok.bos_id(), tok.eos_id(), tok.pad_id()}), (std::vector<int>{0, 1, 2, -1}));
  using Type = SentencePieceTokenizer::PieceType;
  const std::vector<std::pair<std::string, Type>> first = {
      {"<unk>", Type::kUnknown}, {"<s>", Type::kControl}, {"</s>", Type::kControl}, {"<image>", Type::kUserDefined}};
  for (int id = 0; id < 4; ++id) {
    EXPECT_EQ(tok.piece(id), first[id].first);
    EXPECT_EQ(tok.type(id), first[id].second) << id;
  }
  for (int b = 0; b < 256; ++b) {
    char want[8];
    std::snprintf(want, sizeof want, "<0x%02X>", b);
    ASSERT_EQ(tok.piece(4 + b), want);
    ASSERT_TRUE(tok.is_byte(4 + b));
  }
  // Normal pieces follow, scores strictly decreasing (merge order, then the alphabet).
  for (int id = 261; id < 400; ++id) {
    ASSERT_EQ(tok.type(id), SentencePieceTokenizer::PieceType::kNormal) << id;
    ASSERT_LT(tok.score(id), tok.score(id - 1)) << tok.piece(id);
  }
}

TEST(SpmTraining, CommonWordsAreSinglePiecesAndUserSymbolIsOnePiece) {
  const SentencePieceTokenizer tok = tinyworld_tokenizer();
  for (const char* w : {"the", "circle", "red", "What", "image", "triangle", "left"}) {
    const std::vector<std::string> pieces = tok.encode_pieces(w);
    ASSERT_EQ(pieces.size(), 1u) << w;
    EXPECT_EQ(pieces[0], kWs + w);
  }
  const std::vector<std::string> p = tok.encode_pieces("<image> What color is the circle?");
  EXPECT_EQ(std::count(p.begin(), p.end(), "<image>"), 1);
  const std::vector<int> ids = tok.encode("<image>\nWhat is this?<image>");
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 3), 2);
  EXPECT_EQ(tok.decode(ids), "<image>\nWhat is this?<image>");
}

TEST(SpmTraining, RoundTripsHeldOutTextAndUnseenCharactersThroughBytes) {
  const SentencePieceTokenizer tok = tinyworld_tokenizer();
  // Sentences of other scenes (another seed) and text the corpus never had.
  std::vector<std::string> held_out = iris::tinyworld_text_corpus(99, 5);
  held_out.insert(held_out.end(), {"h\xC3\xA9llo \xF0\x9F\x99\x82", "Zebra 42 quickly jumps over 7 lazy dogs!",
                                   "\xE4\xBD\xA0\xE5\xA5\xBD, \xD0\xBC\xD0\xB8\xD1\x80", "tab\there", "UPPER case Words"});
  for (const std::string& s : held_out) {
    const std::vector<int> ids = tok.encode(s);
    ASSERT_FALSE(ids.empty()) << s;
    EXPECT_EQ(std::count(ids.begin(), ids.end(), 0), 0) << "unk in " << s;
    EXPECT_EQ(tok.decode(ids), s);
  }
  // "é" and the emoji never occur in Tinyworld: they are spelled as UTF-8 byte pieces.
  const std::vector<std::string> pieces = tok.encode_pieces("h\xC3\xA9llo \xF0\x9F\x99\x82");
  for (const char* b : {"<0xC3>", "<0xA9>", "<0xF0>", "<0x9F>", "<0x99>", "<0x82>"})
    EXPECT_EQ(std::count(pieces.begin(), pieces.end(), b), 1) << b;
}

// "ab ab ab ac": words ▁ab x3, ▁ac x1. Characters: a 4, ▁ 4, b 3, c 1 (ties: smaller code point
// first). Merges: ▁+a (4 times), ▁a+b (3), ▁a+c (1); then no pair is left.
TEST(SpmTraining, ExactMergesOnAHandWorkedCorpus) {
  SpmTrainOptions o;
  o.vocab_size = 10;
  o.byte_fallback = false;
  o.character_coverage = 1.0;
  const SentencePieceTokenizer tok = SentencePieceTokenizer::from_bytes(train_sentencepiece_bpe({"ab ab", "ab  ac "}, o), "toy");
  const std::vector<std::pair<std::string, float>> want = {
      {"<unk>", 0}, {"<s>", 0}, {"</s>", 0}, {kWs + "a", 0}, {kWs + "ab", -1}, {kWs + "ac", -2},
      {"a", -3},    {kWs, -4},  {"b", -5},   {"c", -6}};
  ASSERT_EQ(tok.vocab_size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(tok.piece(static_cast<int>(i)), want[i].first) << i;
    EXPECT_EQ(tok.score(static_cast<int>(i)), want[i].second) << i;
  }
  EXPECT_EQ(tok.encode_pieces("ab ac ca"), (std::vector<std::string>{kWs + "ab", kWs + "ac", kWs, "c", "a"}));
  EXPECT_EQ(tok.encode("x"), (std::vector<int>{7, 0}));  // no byte fallback: an unknown character is <unk>

  // One piece more than the corpus can give: an error under hard_vocab_limit, else a smaller model.
  o.vocab_size = 11;
  try {
    train_sentencepiece_bpe({"ab ab", "ab  ac "}, o);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("only 10 pieces"), std::string::npos) << e.what();
  }
  o.hard_vocab_limit = false;
  EXPECT_EQ(SentencePieceTokenizer::from_bytes(train_sentencepiece_bpe({"ab ab", "ab  ac "}, o), "toy").vocab_size(), 10u);
}

TEST(SpmTraining, NoPieceMixesScriptsDigitsOrInnerSpaces) {
  SpmTrainOptions o;
  o.vocab_size = 320;
  o.hard_vocab_limit = false;
  const std::vector<std::string> corpus(20, "F1 race, 2024: cars ran 300km! caf\xC3\xA9s.");
  const SentencePieceTokenizer tok = SentencePieceTokenizer::from_bytes(train_sentencepiece_bpe(corpus, o), "mixed");
  for (int id = 0; id < static_cast<int>(tok.vocab_size()); ++id) {
    if (tok.type(id) != SentencePieceTokenizer::PieceType::kNormal) continue;
    const std::string& p = tok.piece(id);
    const std::string body = p.compare(0, kWs.size(), kWs) == 0 ? p.substr(kWs.size()) : p;
    EXPECT_EQ(body.find(kWs), std::string::npos) << p;
    const bool digit = std::any_of(body.begin(), body.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (digit) {
      EXPECT_EQ(p.size(), 1u) << p;  // split_digits: a digit is always alone
    }
    const bool letter = std::any_of(body.begin(), body.end(), [](char c) { return std::isalpha(static_cast<unsigned char>(c)); });
    const bool punct = std::any_of(body.begin(), body.end(), [](char c) { return std::ispunct(static_cast<unsigned char>(c)); });
    EXPECT_FALSE(letter && punct) << p;
  }
  EXPECT_GE(tok.piece_to_id(kWs + "caf\xC3\xA9s"), 0);  // é is Latin: it joins the word
  EXPECT_EQ(tok.encode_pieces("2024"), (std::vector<std::string>{kWs, "2", "0", "2", "4"}));
}

TEST(SpmTraining, DeterministicAndIndependentOfSentenceOrder) {
  std::vector<std::string> corpus = iris::tinyworld_text_corpus(7, 60);
  SpmTrainOptions o;
  o.vocab_size = 400;
  o.user_defined_symbols = {"<image>"};
  EXPECT_EQ(train_sentencepiece_bpe(corpus, o), tinyworld_model());
  iris::world::Rng rng(3);
  rng.shuffle(corpus);
  EXPECT_EQ(train_sentencepiece_bpe(corpus, o), tinyworld_model());
  // max_sentences takes a prefix: a different prefix gives a different model.
  o.max_sentences = 200;
  EXPECT_NE(train_sentencepiece_bpe(corpus, o), tinyworld_model());
}

void expect_config_error(const std::vector<std::string>& corpus, const SpmTrainOptions& o, const std::string& needle) {
  try {
    train_sentencepiece_bpe(corpus, o);
    ADD_FAILURE() << "expected ConfigError containing \"" << needle << "\"";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(SpmTraining, ErrorsNameTheProblem) {
  const std::vector<std::string> corpus = {"a red circle", "a blue square"};
  SpmTrainOptions o;
  o.vocab_size = 200;  // < 3 special + 256 byte pieces
  expect_config_error(corpus, o, "= 259");
  o.vocab_size = 262;  // room for 2 characters; the corpus has 11 letters and U+2581
  expect_config_error(corpus, o, "+ 12 character pieces = 271");
  o.vocab_size = 512;
  expect_config_error({}, o, "no text");
  expect_config_error({"", "   "}, o, "no text");
  o.user_defined_symbols = {"a b"};
  expect_config_error(corpus, o, "contains a space");
  o.user_defined_symbols = {"<x>", "<x>"};
  expect_config_error(corpus, o, "twice");
  o.user_defined_symbols = {"</s>"};
  expect_config_error(corpus, o, "special piece");
  o.user_defined_symbols = {};
  o.character_coverage = 0;
  expect_config_error(corpus, o, "character_coverage");
}

// libsentencepiece (Debian's spm_encode, when installed) accepts the file and segments as the
// native encoder does.
TEST(SpmTraining, LibsentencepieceAgrees) {
  if (!fs::exists("/usr/bin/spm_encode")) GTEST_SKIP() << "spm_encode is not installed";
  const std::string model = iris::testing_util::scratch("tokenizer.model");
  iris::write_sentencepiece_model(model, tinyworld_model());
  std::vector<std::string> text = iris::tinyworld_text_corpus(99, 3);
  text.insert(text.end(), {"h\xC3\xA9llo \xF0\x9F\x99\x82", "<image> Zebra 42!", "  spaces   between  "});
  const std::string input = iris::testing_util::scratch("input.txt");
  {
    std::ofstream f(input, std::ios::binary);
    for (const std::string& s : text) f << s << "\n";
  }
  const std::string out = iris::testing_util::scratch("ids.txt");
  ASSERT_EQ(std::system(("/usr/bin/spm_encode --model=" + model + " --output_format=id < " + input + " > " + out +
                         " 2>/dev/null")
                            .c_str()),
            0);
  std::istringstream lines(iris::read_text_file(out));
  const SentencePieceTokenizer tok = tinyworld_tokenizer();
  std::string line;
  for (const std::string& s : text) {
    ASSERT_TRUE(std::getline(lines, line)) << s;
    std::istringstream ids(line);
    std::vector<int> theirs;
    for (int id; ids >> id;) theirs.push_back(id);
    EXPECT_EQ(tok.encode(s), theirs) << s;
  }
}

TEST(TinyworldText, CorpusMatchesAnExportAndHasEveryKind) {
  const std::vector<std::string> corpus = iris::tinyworld_text_corpus(5, 4);
  EXPECT_EQ(corpus, iris::tinyworld_text_corpus(5, 4));
  EXPECT_NE(corpus, iris::tinyworld_text_corpus(6, 4));
  // A "describe" question in one of its training phrasings.
  bool describe = false;
  for (const auto& t : iris::world::all_templates())
    if (t.kind == "describe" && !t.held_out) describe = describe || std::count(corpus.begin(), corpus.end(), t.text) > 0;
  EXPECT_TRUE(describe);
  EXPECT_NE(std::find(corpus.begin(), corpus.end(), "yes"), corpus.end());
  EXPECT_THROW(iris::tinyworld_text_corpus(5, 0), ConfigError);
  // With paraphrase: the same sentences, then per scene its caption and description reworded.
  const std::vector<std::string> more = iris::tinyworld_text_corpus(5, 4, 1.0);
  EXPECT_GT(more.size(), corpus.size());
  for (const std::string& line : corpus) EXPECT_NE(std::find(more.begin(), more.end(), line), more.end()) << line;
  bool synonym = false;
  for (const std::string& line : more)
    synonym = synonym || line.find(" located ") != std::string::npos || line.find(" placed ") != std::string::npos ||
              line.find(" positioned ") != std::string::npos || line.find(" situated ") != std::string::npos;
  EXPECT_TRUE(synonym);
  EXPECT_THROW(iris::tinyworld_text_corpus(5, 4, 1.5), ConfigError);
  EXPECT_THROW(iris::tinyworld_text_corpus(5, 4, -0.1), ConfigError);

  iris::world::DatasetOptions d;
  d.base_seed = 5;
  d.count = 4;
  d.questions_per_image = 12;
  const std::string dir = iris::testing_util::scratch("export");
  iris::world::export_dataset(dir, d);
  std::vector<std::string> exported = iris::tinyworld_dataset_text(dir);
  std::vector<std::string> generated = corpus;
  std::sort(exported.begin(), exported.end());
  std::sort(generated.begin(), generated.end());
  EXPECT_EQ(exported, generated);
  EXPECT_THROW(iris::tinyworld_dataset_text(dir + "/missing"), iris::IoError);
}

TEST(TinyworldText, CliWritesATokenizerFolder) {
  const std::string out = iris::testing_util::scratch("tok");
  const std::string log = iris::testing_util::scratch("log.txt");
  const std::string cmd = std::string(IRIS_CLI) + " train spm --scenes 40 --seed 1 --vocab 380 --user-symbol '<image>' --out " +
                          out + " > " + log + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << iris::read_text_file(log);
  const SentencePieceTokenizer tok = SentencePieceTokenizer::load(out + "/tokenizer.model");
  EXPECT_EQ(tok.vocab_size(), 380u);
  EXPECT_EQ(tok.piece(3), "<image>");
  const iris::Json cfg = iris::read_json_file(out + "/tokenizer_config.json");
  EXPECT_EQ(cfg["bos_token"], "<s>");
  EXPECT_EQ(cfg["eos_token"], "</s>");
  EXPECT_EQ(cfg["unk_token"], "<unk>");
  EXPECT_EQ(cfg["add_bos_token"], true);
  EXPECT_NE(iris::read_text_file(log).find("380 pieces"), std::string::npos);
}

}  // namespace
