#include "pipelines/tinyworld_text.h"

#include <filesystem>
#include <sstream>

#include "core/error.h"
#include "core/json_util.h"
#include "core/mmap_file.h"
#include "world/dataset.h"

namespace fs = std::filesystem;

namespace iris {

namespace {

// Questions per scene: make_questions' default budget, besides the probes and the description.
constexpr int kQuestionsPerScene = 12;

void add_caption(std::vector<std::string>& out, const std::string& caption, const std::string& with_style) {
  out.push_back(caption);
  if (!with_style.empty() && with_style != caption) out.push_back(with_style);
}

}  // namespace

std::vector<std::string> tinyworld_text_corpus(uint64_t seed, int scenes, double paraphrase) {
  if (scenes < 1) throw ConfigError("tinyworld text corpus: scenes must be at least 1, got " + std::to_string(scenes));
  if (!(paraphrase >= 0 && paraphrase <= 1))
    throw ConfigError("tinyworld text corpus: paraphrase must be in [0, 1], got " + std::to_string(paraphrase));
  world::DatasetOptions d;
  d.base_seed = seed;
  d.count = scenes;
  d.split = world::Split::Train;
  d.questions_per_image = kQuestionsPerScene;
  std::vector<std::string> out;
  for (const uint64_t s : world::split_seeds(d)) {
    const world::Sample sample = world::make_sample(s, d);
    add_caption(out, sample.caption.text, sample.caption_with_style);
    for (const world::Question& q : sample.questions) {
      out.push_back(q.question);
      out.push_back(q.answer);
    }
    if (paraphrase > 0) {  // the caption and the description once more, in other words
      world::Rng rng(world::hash_combine(s, 0x9a7aull));
      out.push_back(world::paraphrase(sample.caption.text, rng, paraphrase));
      for (const world::Question& q : sample.questions)
        if (q.kind == "describe") out.push_back(world::paraphrase(q.answer, rng, paraphrase));
    }
  }
  return out;
}

std::vector<std::string> tinyworld_dataset_text(const std::string& data_dir) {
  if (!fs::is_directory(data_dir))
    throw IoError(data_dir + ": no such dataset folder (export one with `iris world export`)");
  std::vector<std::string> out;
  for (const world::DatasetEntry& e : world::load_dataset(data_dir)) add_caption(out, e.caption, e.caption_with_style);
  const fs::path questions = fs::path(data_dir) / "questions.jsonl";
  if (fs::exists(questions)) {
    std::istringstream in(read_text_file(questions.string()));
    std::string line;
    for (int n = 1; std::getline(in, line); ++n) {
      if (line.empty()) continue;
      const std::string what = questions.string() + ":" + std::to_string(n);
      const Json j = parse_json(line, what);
      out.push_back(json_require_string(j, "question", what));
      out.push_back(json_require_string(j, "answer", what));
    }
  }
  if (out.empty()) throw ConfigError(data_dir + ": the dataset has no captions or questions");
  return out;
}

}  // namespace iris
