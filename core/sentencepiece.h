#pragma once
// Native SentencePiece tokenizer: reads a SentencePiece `.model` file (a small protobuf, parsed
// here by a hand-written wire-format reader) and encodes/decodes text exactly as
// libsentencepiece 0.1.97 does with default options (no BOS/EOS, no sampling).
//
// Why native: libsentencepiece and LibTorch cannot live in one process (their protobufs clash,
// see NOTES.md). Supported models: BPE (Llama 2), unigram (the trainer's default), word, char;
// byte fallback, user-defined symbols, UNUSED pieces, the `nmt_nfkc`-style precompiled charsmap
// normalizer, add_dummy_prefix / remove_extra_whitespaces / escape_whitespaces /
// treat_whitespace_as_suffix, and a denormalizer charsmap on decode.
//
// Every malformed model throws iris::FormatError naming the file; a missing/unreadable file
// throws iris::IoError. Encoding accepts any bytes: invalid UTF-8 becomes U+FFFD per bad byte,
// as in libsentencepiece. Instances are immutable, cheap to copy and safe to share across
// threads.
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

namespace iris {

class SentencePieceTokenizer {
 public:
  enum class ModelType { kUnigram = 1, kBpe = 2, kWord = 3, kChar = 4 };
  enum class PieceType { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

  // Reads and parses `model_path`. Throws IoError (cannot read) or FormatError (bad model).
  static SentencePieceTokenizer load(const std::string& model_path);
  // Parses model bytes; `what` names the source in error messages (usually the file name).
  static SentencePieceTokenizer from_bytes(const std::string& bytes, const std::string& what);

  // Token ids of `utf8`, without BOS/EOS (libsentencepiece's default).
  std::vector<int> encode(const std::string& utf8) const;
  // The same segmentation as piece strings ("▁Hello", "<0xE2>", or the raw text of an unknown run).
  std::vector<std::string> encode_pieces(const std::string& utf8) const;
  // Both at once; either pointer may be null.
  void encode(const std::string& utf8, std::vector<int>* ids, std::vector<std::string>* pieces) const;
  // Text of `ids`: control ids vanish, byte pieces are reassembled (invalid sequences become
  // U+FFFD), unk becomes " ⁇ " (the model's unk_surface), the dummy-prefix space is removed.
  // Throws FormatError naming the model for an id outside [0, vocab_size()).
  std::string decode(const std::vector<int>& ids) const;
  // The normalized text the model segments (dummy prefix, U+2581 for spaces, charsmap applied).
  std::string normalize(const std::string& utf8) const;

  // Piece string of `id`; throws FormatError for an id outside [0, vocab_size()).
  const std::string& piece(int id) const;
  // Id of a piece string, or -1 when the vocabulary has no such piece.
  int piece_to_id(const std::string& piece) const;
  float score(int id) const;     // 0 for an out-of-range id
  PieceType type(int id) const;  // kNormal for an out-of-range id
  bool is_byte(int id) const;
  bool is_control(int id) const;
  bool is_unknown(int id) const;
  bool is_unused(int id) const;
  bool is_user_defined(int id) const;

  // As libsentencepiece: the id of trainer_spec's bos/eos/pad piece ("<s>", "</s>", "<pad>" by
  // default) when that piece is a control symbol, else -1; unk_id() is the UNKNOWN piece.
  int bos_id() const;
  int eos_id() const;
  int unk_id() const;
  int pad_id() const;
  size_t vocab_size() const;
  ModelType model_type() const;
  bool byte_fallback() const;
  // The `what` given at load (the file name).
  const std::string& source() const;

  struct Model;  // implementation detail (sentencepiece.cpp)

 private:
  explicit SentencePieceTokenizer(std::shared_ptr<const Model> m) : m_(std::move(m)) {}
  std::shared_ptr<const Model> m_;
};

}  // namespace iris
