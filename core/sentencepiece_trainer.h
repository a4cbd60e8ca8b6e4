#pragma once
// Training a SentencePiece BPE model (the `.model` file SentencePieceTokenizer and
// libsentencepiece load), natively: libsentencepiece's trainer cannot live in a process with
// LibTorch (NOTES.md), and the starter pack's VLM needs a tokenizer trained by the project.
//
// The algorithm is libsentencepiece's BPE trainer (bpe_model_trainer.cc):
//   - each sentence is normalized as the encoder will normalize it (identity rules: the
//     dummy-prefix space, whitespace runs collapsed, ' ' -> U+2581) and cut into words, a new
//     word at every U+2581; user-defined symbols are cut out (they are never merged);
//   - the alphabet is the most frequent characters covering `character_coverage` of the text
//     (ties: smaller code point first); rarer characters, tabs and NUL are left to byte
//     fallback (or <unk>);
//   - repeatedly the most frequent adjacent pair of symbols is merged (ties: the shorter result,
//     then the byte-wise smaller string, then the smaller left symbol), counting its
//     occurrences in every word times the word's count (overlapping ones, "a a a", as the
//     merges they allow). A pair is never merged when the result would be an invalid piece:
//     longer than max_piece_length characters, U+2581 anywhere but first, characters of two
//     Unicode scripts (letters vs digits/punctuation count as two; the Script property is
//     approximated by code-point blocks), or a digit in a longer piece when split_digits. A
//     result already in the vocabulary (reached through another split) is skipped, as
//     libsentencepiece does;
//   - merge k becomes a normal piece with score -k, so the BPE encoder (which merges the
//     highest-scoring piece first) replays the merges in training order; then the alphabet,
//     most frequent first, continuing the scores.
// Vocabulary layout (as Llama 2's tokenizer.model): 0 "<unk>" (UNKNOWN), 1 "<s>", 2 "</s>"
// (CONTROL), the user-defined symbols (USER_DEFINED), the 256 byte pieces "<0x00>".."<0xFF>"
// (BYTE) when byte_fallback, then the merges and the alphabet; every special piece scores 0.
// trainer_spec: BPE, vocab_size, byte_fallback, unk/bos/eos/pad ids 0/1/2/-1 and the options
// below; normalizer_spec: "identity" without charsmap, add_dummy_prefix, escape_whitespaces.
// Standard field numbers (sentencepiece_model.proto), so libsentencepiece accepts the file too.
//
// Deterministic: the same sentences and options give the same bytes. Corpus order does not
// matter except through max_sentences (libsentencepiece samples sentences at random instead).
// Checked against spm_train 0.1.97 (bpe, identity normalization, split_digits, byte fallback,
// no shuffling): the same pieces, scores and order on Tinyworld text and on mixed-script text
// up to 2000 pieces; on 9 MB of licence texts at 8000 pieces 7998 pieces agree and the order
// drifts slightly after merge ~900 (libsentencepiece recounts pairs lazily, over a sampled
// candidate set).
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace iris {

struct SpmTrainOptions {
  int vocab_size = 512;  // total pieces, special ones included
  bool byte_fallback = true;
  std::vector<std::string> user_defined_symbols;  // e.g. "<image>": always one piece each
  int64_t max_sentences = 0;                      // train on the first N sentences (0: all)
  double character_coverage = 0.9995;             // share of the text the alphabet covers, (0, 1]
  int max_piece_length = 16;                      // characters
  bool split_digits = true;                       // digits are single pieces (as Llama)
  bool remove_extra_whitespaces = true;           // normalizer: collapse runs of spaces
  // Throw when the corpus cannot fill vocab_size (libsentencepiece's hard_vocab_limit); when
  // false the model is simply smaller.
  bool hard_vocab_limit = true;
  std::function<void(const std::string&)> log;  // progress lines; none when empty
};

// Serialized ModelProto bytes. Throws ConfigError for bad options (vocab_size too small for the
// required pieces, naming the counts; a user-defined symbol that is empty, holds a space,
// repeats or collides with a special piece), an empty corpus, or one too small to fill
// vocab_size under hard_vocab_limit.
std::string train_sentencepiece_bpe(const std::vector<std::string>& sentences, const SpmTrainOptions& options = {});

// Writes `model_bytes` to `path` atomically (parent folders created). Throws IoError.
void write_sentencepiece_model(const std::string& path, const std::string& model_bytes);

// Writes dir/tokenizer.model and dir/tokenizer_config.json (Llama's: bos "<s>", eos "</s>",
// unk "<unk>", add_bos_token true, add_eos_token false, no pad token), dir created.
void write_sentencepiece_tokenizer(const std::string& dir, const std::string& model_bytes);

// The non-empty lines of a text file ("\r\n" endings accepted): one sentence each. Throws
// IoError when the file cannot be read.
std::vector<std::string> read_sentence_lines(const std::string& path);

}  // namespace iris
