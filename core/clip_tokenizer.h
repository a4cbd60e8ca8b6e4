#pragma once
// CLIP byte-level BPE tokenizer (openai/CLIP simple_tokenizer.py, as used by Stable
// Diffusion's text encoder), exact against the reference with ftfy as identity:
//   html.unescape twice, strip, collapse White_Space runs to one space, Python lower(),
//   split by  <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+
//   (case-insensitive, Unicode 14.0), UTF-8 bytes -> byte symbols, BPE with "</w>" on
//   the last symbol of each piece.
// Input text is UTF-8; invalid UTF-8 is decoded like Python's errors="replace" (each
// ill-formed sequence becomes U+FFFD) before anything else, so encode never fails.
// Instances are immutable after loading and cheap to copy (shared state); encode is
// thread-safe (the per-piece BPE cache is locked).
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace iris {

class ClipTokenizer {
 public:
  // Hugging Face / Stable Diffusion layout: vocab.json ({token: id}) + merges.txt
  // ("#version" header line, then one "left right" merge per line, highest priority
  // first). Throws IoError (unreadable file) or FormatError (naming file and line).
  static ClipTokenizer from_files(const std::string& vocab_json, const std::string& merges_txt);
  // openai/CLIP bpe_simple_vocab_16e6.txt.gz: uses the first 48894 merges after the
  // header line; the vocabulary is derived from them as the reference does.
  static ClipTokenizer from_bpe_gz(const std::string& bpe_simple_vocab_gz);
  // Looks in `dir`, then in `dir`/tokenizer, for vocab.json + merges.txt, else for
  // bpe_simple_vocab_16e6.txt.gz. Throws IoError when none is there.
  static ClipTokenizer from_folder(const std::string& dir);

  // Token ids of the text, without start/end tokens, not truncated.
  std::vector<int> encode(const std::string& utf8) const;
  // [bos] + encode(text) + [eos]; what the golden tables hold.
  std::vector<int> encode_with_special(const std::string& utf8) const;
  // Stable Diffusion text-encoder input: [bos] + encode(text) truncated to
  // max_length - 2 + [eos], then padded with pad_id up to max_length.
  // Throws ConfigError when max_length < 2.
  std::vector<int> encode_padded(const std::string& utf8, int max_length = 77, int pad_id = 49407) const;

  // openai/CLIP decode: token strings concatenated, bytes restored, UTF-8 decoded with
  // U+FFFD for invalid sequences, "</w>" replaced by a space (so words end with a
  // space, including the last one). skip_special drops bos/eos ids (e.g. SD padding).
  // Throws FormatError for an id that is not in the vocabulary.
  std::string decode(const std::vector<int>& ids, bool skip_special = false) const;

  int bos_id() const;  // <|startoftext|>, 49406 for CLIP
  int eos_id() const;  // <|endoftext|>, 49407 for CLIP
  size_t vocab_size() const;  // ids are 0 .. vocab_size() - 1 (49408 for CLIP)

 private:
  struct Impl;
  explicit ClipTokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

// Tokenizer training support (pipelines/tokenizer_training): the pieces encode() runs BPE on
// (cleaned, lower-cased, split by the pattern above), each as UTF-8; and the vocabulary symbol
// (UTF-8) that stands for one byte, with the bytes in CLIP's vocabulary order.
std::vector<std::string> clip_pre_tokenize(const std::string& utf8);
std::string clip_byte_symbol(uint8_t byte);
std::vector<uint8_t> clip_byte_vocab_order();

}  // namespace iris
