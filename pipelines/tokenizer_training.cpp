#include "pipelines/tokenizer_training.h"

#include <filesystem>
#include <map>
#include <set>

#include "core/clip_tokenizer.h"
#include "core/error.h"
#include "core/json_util.h"
#include "core/mmap_file.h"
#include "world/dataset.h"

namespace fs = std::filesystem;

namespace iris {

namespace {

constexpr const char* kEndOfWord = "</w>";

// A distinct piece and how often it occurs, as its current symbol sequence.
struct Word {
  std::vector<std::string> symbols;
  int64_t count = 0;
};

std::vector<Word> count_words(const std::vector<std::string>& texts) {
  std::map<std::string, int64_t> counts;
  for (const std::string& t : texts)
    for (const std::string& piece : clip_pre_tokenize(t)) ++counts[piece];
  std::vector<Word> words;
  for (const auto& [piece, n] : counts) {
    Word w;
    w.count = n;
    for (unsigned char b : piece) w.symbols.push_back(clip_byte_symbol(b));
    if (w.symbols.empty()) continue;
    w.symbols.back() += kEndOfWord;
    words.push_back(std::move(w));
  }
  return words;
}

}  // namespace

BpeModel train_bpe(const std::vector<std::string>& texts, const TokenizerTrainOptions& options) {
  std::vector<Word> words = count_words(texts);
  if (words.empty()) throw ConfigError("tokenizer training: the corpus has no words");
  BpeModel m;
  const std::vector<uint8_t> order = clip_byte_vocab_order();
  for (uint8_t b : order) m.vocab.push_back(clip_byte_symbol(b));
  for (uint8_t b : order) m.vocab.push_back(clip_byte_symbol(b) + kEndOfWord);
  std::set<std::string> known(m.vocab.begin(), m.vocab.end());

  while (static_cast<int>(m.merges.size()) < options.max_merges) {
    std::map<std::pair<std::string, std::string>, int64_t> pairs;
    for (const Word& w : words)
      for (size_t i = 0; i + 1 < w.symbols.size(); ++i) pairs[{w.symbols[i], w.symbols[i + 1]}] += w.count;
    // Most frequent; std::map order makes the smallest pair win ties.
    const std::pair<std::string, std::string>* best = nullptr;
    int64_t best_count = 0;
    for (const auto& [p, n] : pairs)
      if (n > best_count) {
        best = &p;
        best_count = n;
      }
    if (!best || best_count < options.min_frequency) break;
    const auto [left, right] = *best;
    const std::string merged = left + right;
    for (Word& w : words) {
      std::vector<std::string> out;
      out.reserve(w.symbols.size());
      for (size_t i = 0; i < w.symbols.size(); ++i) {
        if (i + 1 < w.symbols.size() && w.symbols[i] == left && w.symbols[i + 1] == right) {
          out.push_back(merged);
          ++i;
        } else {
          out.push_back(w.symbols[i]);
        }
      }
      w.symbols = std::move(out);
    }
    m.merges.emplace_back(left, right);
    if (known.insert(merged).second) m.vocab.push_back(merged);
    if (options.log && m.merges.size() % 100 == 0)
      options.log("[tokenizer] " + std::to_string(m.merges.size()) + " merges, last \"" + left + " " + right +
                  "\" (" + std::to_string(best_count) + " times)");
  }
  m.vocab.push_back("<|startoftext|>");
  m.vocab.push_back("<|endoftext|>");
  if (options.log)
    options.log("[tokenizer] " + std::to_string(m.merges.size()) + " merges, vocabulary of " +
                std::to_string(m.vocab.size()) + " tokens");
  return m;
}

void write_bpe(const BpeModel& model, const std::string& dir) {
  fs::create_directories(dir);
  Json vocab = Json::object();
  for (size_t i = 0; i < model.vocab.size(); ++i) vocab[model.vocab[i]] = static_cast<int64_t>(i);
  const std::string v = vocab.dump();
  write_file_atomic((fs::path(dir) / "vocab.json").string(), v.data(), v.size());
  std::string merges = "#version: 0.2\n";
  for (const auto& [l, r] : model.merges) merges += l + " " + r + "\n";
  write_file_atomic((fs::path(dir) / "merges.txt").string(), merges.data(), merges.size());
}

std::vector<std::string> dataset_caption_corpus(const std::string& data_dir) {
  if (!fs::is_directory(data_dir)) throw IoError(data_dir + ": no such dataset folder (export one with `iris world export`)");
  std::vector<std::string> texts;
  for (const world::DatasetEntry& e : world::load_dataset(data_dir)) {
    texts.push_back(e.caption);
    if (e.caption_with_style != e.caption) texts.push_back(e.caption_with_style);
  }
  if (texts.empty()) throw ConfigError(data_dir + ": the dataset has no captions");
  return texts;
}

}  // namespace iris
