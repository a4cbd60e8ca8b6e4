// iris train spm --text FILE | --data DIR | --scenes N --vocab N [--user-symbol S] --out DIR:
// trains a SentencePiece BPE tokenizer (Llama layout, byte fallback) and writes
// DIR/tokenizer.model and DIR/tokenizer_config.json.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "app/cli.h"
#include "core/error.h"
#include "core/sentencepiece.h"
#include "core/sentencepiece_trainer.h"
#include "pipelines/tinyworld_text.h"

namespace iris::cli {

namespace {

struct TrainSpmArgs {
  std::vector<std::string> text_files, user_symbols;
  std::string data_dir, out;
  int scenes = 0;
  double paraphrase = 0.0;
  uint64_t seed = 0;
  int vocab = 512;
  int64_t max_sentences = 0;
  double coverage = 0.9995;
  bool no_byte_fallback = false;
};

void run_train_spm(const TrainSpmArgs& a) {
  std::vector<std::string> corpus;
  for (const std::string& f : a.text_files) {
    const std::vector<std::string> lines = read_sentence_lines(f);
    corpus.insert(corpus.end(), lines.begin(), lines.end());
  }
  if (!a.data_dir.empty()) {
    const std::vector<std::string> text = tinyworld_dataset_text(a.data_dir);
    corpus.insert(corpus.end(), text.begin(), text.end());
  }
  if (a.scenes > 0) {
    const std::vector<std::string> text = tinyworld_text_corpus(a.seed, a.scenes, a.paraphrase);
    corpus.insert(corpus.end(), text.begin(), text.end());
  }
  if (a.text_files.empty() && a.data_dir.empty() && a.scenes <= 0)
    throw ConfigError("iris train spm: give the text with --text FILE, --data DIR or --scenes N");

  SpmTrainOptions o;
  o.vocab_size = a.vocab;
  o.byte_fallback = !a.no_byte_fallback;
  o.user_defined_symbols = a.user_symbols;
  o.max_sentences = a.max_sentences;
  o.character_coverage = a.coverage;
  o.log = [](const std::string& line) {
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  };
  const auto t0 = std::chrono::steady_clock::now();
  const std::string model = train_sentencepiece_bpe(corpus, o);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  write_sentencepiece_tokenizer(a.out, model);
  const SentencePieceTokenizer tok = SentencePieceTokenizer::from_bytes(model, a.out + "/tokenizer.model");
  std::printf("[spm] trained on %zu sentences in %.3f s; wrote %s/tokenizer.model (%zu pieces)\n", corpus.size(), seconds,
              a.out.c_str(), tok.vocab_size());
  const std::string& sample = corpus.front();
  std::string pieces;
  for (const std::string& p : tok.encode_pieces(sample)) pieces += (pieces.empty() ? "" : " ") + p;
  std::printf("[spm] \"%s\" -> %s\n", sample.c_str(), pieces.c_str());
}

}  // namespace

void add_train_spm_command(CLI::App& app) {
  auto* cmd = train_command(app)->add_subcommand(
      "spm", "Train a SentencePiece BPE tokenizer (Llama layout: <unk> <s> </s>, byte fallback)");
  auto a = std::make_shared<TrainSpmArgs>();
  cmd->add_option("--text", a->text_files, "Text file, one sentence per line (repeatable)");
  cmd->add_option("--data", a->data_dir, "Tinyworld dataset folder: its captions, questions and answers");
  cmd->add_option("--scenes", a->scenes, "Generate the text of N Tinyworld training scenes (no export needed)");
  cmd->add_option("--seed", a->seed, "Base seed for --scenes")->capture_default_str();
  cmd->add_option("--paraphrase", a->paraphrase,
                  "With --scenes: each scene's caption and description once more in other words, each synonym swapped "
                  "with this probability (0: off)")
      ->capture_default_str();
  cmd->add_option("--vocab", a->vocab, "Vocabulary size, special and byte pieces included")->capture_default_str();
  cmd->add_option("--user-symbol", a->user_symbols, "A symbol that is always one piece, e.g. <image> (repeatable)");
  cmd->add_option("--max-sentences", a->max_sentences, "Train on the first N sentences (0: all)")->capture_default_str();
  cmd->add_option("--coverage", a->coverage, "Share of the characters the alphabet covers")->capture_default_str();
  cmd->add_flag("--no-byte-fallback", a->no_byte_fallback, "Unknown characters become <unk> instead of bytes");
  cmd->add_option("--out", a->out, "Output folder (tokenizer.model, tokenizer_config.json)")->required();
  cmd->callback([a] { run_train_spm(*a); });
}

}  // namespace iris::cli
