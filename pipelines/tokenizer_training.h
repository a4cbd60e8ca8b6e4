#pragma once
// Training a CLIP byte-level BPE tokenizer on a text corpus, written as the vocab.json +
// merges.txt pair ClipTokenizer::from_files reads.
//
// Same pre-tokenization as the loader (clip_pre_tokenize); each piece's UTF-8 bytes become
// byte symbols with "</w>" on the last one. Vocabulary layout as CLIP's: ids 0..255 the byte
// symbols in CLIP order, 256..511 the same with "</w>", then one token per merge (in merge
// order, skipping results already present), then <|startoftext|> and <|endoftext|>.
// Merges: repeatedly the most frequent adjacent pair (ties: the smaller "left right" string),
// until max_merges or no pair occurs min_frequency times. Deterministic.
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace iris {

struct TokenizerTrainOptions {
  int max_merges = 2000;
  int min_frequency = 2;  // a pair must occur at least this often (counting repeated texts)
  std::function<void(const std::string&)> log;  // progress lines; none when empty
};

struct BpeModel {
  std::vector<std::string> vocab;                          // index = id
  std::vector<std::pair<std::string, std::string>> merges;  // highest priority first
  int bos_id() const { return static_cast<int>(vocab.size()) - 2; }
  int eos_id() const { return static_cast<int>(vocab.size()) - 1; }
};

// Throws ConfigError when `texts` holds no word.
BpeModel train_bpe(const std::vector<std::string>& texts, const TokenizerTrainOptions& options = {});

// Writes dir/vocab.json and dir/merges.txt (atomically; dir created).
void write_bpe(const BpeModel& model, const std::string& dir);

// The captions of a Tinyworld dataset folder (captions.jsonl: "caption" and
// "caption_with_style" of every line). Throws IoError (no such folder / file) or ConfigError
// (no captions).
std::vector<std::string> dataset_caption_corpus(const std::string& data_dir);

}  // namespace iris
