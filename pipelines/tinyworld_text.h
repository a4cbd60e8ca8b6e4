#pragma once
// Text corpora from Tinyworld: the sentences a tokenizer (and the VLM's language side) learns
// from. Captions, captions with their style, every question and answer (colour, shape, count,
// position, relation, existence probes) and the long "Describe the image." descriptions.
#include <cstdint>
#include <string>
#include <vector>

namespace iris {

// The text of the first `scenes` training-split scenes of base seed `seed`, generated directly
// (no export): per scene, in order, the caption, the caption with its style (when it differs),
// then each question followed by its answer (up to 12 questions, the existence probes and the
// description). Each scene's text is drawn from its own seed, exactly as `iris world export
// --seed S --questions 12` writes it. paraphrase > 0: each scene then adds its caption and
// description once more, reworded by world::paraphrase with that probability per synonym (a
// richer vocabulary for the tokenizer and the VLM's LM). Throws ConfigError for scenes < 1 or
// paraphrase outside [0, 1].
std::vector<std::string> tinyworld_text_corpus(uint64_t seed, int scenes, double paraphrase = 0.0);

// The same sentences read from an exported dataset folder: captions.jsonl ("caption" and
// "caption_with_style") and, when present, questions.jsonl ("question" and "answer"). Throws
// IoError (no such folder / file), FormatError or ConfigError (a bad line or missing key, naming
// file and line; no text at all).
std::vector<std::string> tinyworld_dataset_text(const std::string& data_dir);

}  // namespace iris
