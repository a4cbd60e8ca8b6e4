#pragma once
// Tinyworld datasets: samples made from seeds, and the folder layout the trainers read.
//
// export_dataset(dir, options) writes:
//   dir/dataset.json           {"format": "iris.tinyworld", "version": 1, "count": N, "split": "train",
//                               "base_seed": S, "resolution": 64, "styles": [...], ...}
//   dir/images/000000.png      RGB render; PNG text "tinyworld" = the scene JSON, "caption"
//   dir/skeletons/000000.json  the figure's skeleton (skeleton.h format), only when there is one
//   dir/captions.jsonl         one JSON object per image, in index order:
//     {"index": 0, "id": "000000", "image": "images/000000.png", "seed": 123, "split": "train",
//      "caption": "a small red circle at the top left", "caption_template": "cap.list",
//      "caption_held_out_template": false, "caption_with_style": "..., in the outlined style",
//      "mentions": [{"object": 0, "color": true, "shape": true, "size": true, "position": true}],
//      "style": "outlined", "background": "gray", "novel_combo": false,
//      "skeleton": "skeletons/000000.json" or null, "scene": {...scene.h JSON...}}
//   dir/questions.jsonl        one question per line (when options.questions_per_image > 0):
//     {"index": 0, "image": "images/000000.png", "split": "train", "kind": "color",
//      "question": "What color is the circle?", "answer": "red", "template": "q.color.what",
//      "held_out_template": false, "pope": ""}
// Paths inside the files are relative to dir. Sample k of a split is the k-th seed of
// sample_seed(base_seed, 0, 1, 2, ...) whose scene belongs to that split, so a train and a
// held-out export with the same base seed never share a scene, and both are reproducible.
#include <optional>
#include <string>
#include <vector>

#include "core/image.h"
#include "core/progress.h"
#include "world/captions.h"
#include "world/scene.h"

namespace iris::world {

struct DatasetOptions {
  uint64_t base_seed = 0;
  int count = 1000;
  Split split = Split::Train;
  SamplerOptions sampler;
  SplitPolicy policy;
  CaptionOptions caption;    // its split field is overridden by the sample's split
  QuestionOptions question;  // likewise; questions_per_image bounds max_questions
  int questions_per_image = 0;
};

// Everything generated for one scene.
struct Sample {
  Scene scene;
  Split split = Split::Train;
  bool novel_combo = false;  // contains a held-out (colour, shape) pair
  Caption caption;
  std::string caption_with_style;  // caption + ", in the <style> style"
  std::vector<Question> questions;
};

// The sample of one seed (whatever its split; captions and questions use that split's
// templates). Deterministic in (seed, options).
Sample make_sample(uint64_t seed, const DatasetOptions& options);
// The first options.count seeds of options.split, in order. Throws ConfigError when the split
// is (nearly) empty under the policy.
std::vector<uint64_t> split_seeds(const DatasetOptions& options);

// Writes the folder described above (created if needed; existing files are overwritten).
// Reports progress per image ("tinyworld"). Throws IoError / ConfigError.
void export_dataset(const std::string& dir, const DatasetOptions& options, const Progress& progress = {});

// One line of captions.jsonl, read back.
struct DatasetEntry {
  int index = 0;
  std::string image;  // absolute or dir-joined path of the PNG
  std::string caption, caption_with_style;
  Split split = Split::Train;
  Style style = Style::Flat;
  Scene scene;
  std::optional<Skeleton> skeleton;  // loaded from skeletons/ when present
};
// Reads dir/captions.jsonl (and the skeleton files it names). Throws IoError / FormatError
// naming the file and line.
std::vector<DatasetEntry> load_dataset(const std::string& dir);

}  // namespace iris::world
