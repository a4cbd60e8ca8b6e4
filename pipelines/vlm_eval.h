#pragma once
// `iris eval vlm`: a Tinyworld VLM on held-out scenes (issue 9's acceptance figures).
//
// What is asked, per held-out scene (world::Split::HeldOut, the k-th scene being the k-th
// held-out seed of world::sample_seed(base_seed, ...) exactly as world::export_dataset picks
// them, so no scene is ever a training one; questions from world::make_questions with the
// held-out split, held-out templates mixed in as the world does):
//  * up to `per_scene` short questions (colour, shape, size, count, position, relation, style,
//    background, figure), scenes being added until there are at least `questions` of them;
//  * every scene's POPE probes (one positive, one random, one popular, one adversarial);
//  * the first `describe` scenes' description question ("Describe the image." etc.).
// The image is the world's render of the scene (64x64 by default).
//
// How it is scored:
//  * short answers: exact match after normalize_answer() on both sides;
//  * POPE: the answer read as yes/no the POPE way (pope_reads_yes); per negative split
//    (random, popular, adversarial) with the positives shared by every split, as POPE does;
//    accuracy, precision, recall, F1, yes-ratio;
//  * descriptions: CHAIR over object mentions (parse_object_mentions): CHAIR_I = hallucinated
//    mentions / mentions, CHAIR_S = descriptions with >= 1 hallucination / descriptions, and
//    the recall of the scene's objects.
//
// The model is reached only through a VlmAnswerFn, so other decoders (ViSpec, VISOR, ...)
// plug in without touching the loop; greedy_vqa_answerer() is the plain one.
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/image.h"
#include "core/json_util.h"
#include "core/progress.h"
#include "vlm/sgrs.h"
#include "world/analyzer.h"
#include "world/captions.h"
#include "world/scene.h"

namespace iris {

struct VqaModel;
struct VqaOptions;

// ---- Metrics on single answers -------------------------------------------------------------

// Lowercase (ASCII), trimmed, runs of whitespace collapsed to one space, trailing punctuation
// (. , ! ? ; :) stripped: "  The Red  circle. " -> "the red circle".
std::string normalize_answer(const std::string& text);
bool answers_match(const std::string& got, const std::string& expected);

// POPE's reading of a yes/no answer: its first sentence says no when it holds the word "no" or
// "not", yes otherwise (so an answer that says neither counts as yes, as in POPE's own script).
bool pope_reads_yes(const std::string& answer);
// Whether the first sentence says "yes", "no" or "not" at all (answers that do not are counted
// apart as `unclear`, on top of being read as yes).
bool pope_answer_is_clear(const std::string& answer);

// One POPE confusion matrix ("yes" is the positive class).
struct PopeCounts {
  int tp = 0, fp = 0, tn = 0, fn = 0;
  int unclear = 0;  // answers saying neither yes nor no (read as yes)
  void add(bool truth_yes, const std::string& answer);
  int total() const { return tp + fp + tn + fn; }
  double accuracy() const;
  double precision() const;  // 0 when nothing was answered yes
  double recall() const;
  double f1() const;         // 0 when precision + recall is 0
  double yes_ratio() const;  // share of answers read as yes
};

// An object named in free text: "a small red circle", "two blue squares", "the triangle",
// "a green stick figure". Size may stand before or after the colour ("red small circle").
// Bare shapes ("the circle") count as mentions with no colour; colours without a shape noun
// ("a red object", "a gray background") do not. Negation is not understood ("there is no red
// circle" mentions a red circle).
struct MentionedObject {
  bool figure = false;  // a stick figure (no shape, no size)
  std::optional<world::Color> color;
  std::optional<world::Shape> shape;
  std::optional<world::Size> size;
  std::string phrase;  // the words it was read from, lowercase: "small red circle"
};
std::vector<MentionedObject> parse_object_mentions(const std::string& text);

// CHAIR counts of one description against its scene. A mention is hallucinated when the scene
// has no object of its shape (and colour, when named), or, for a stick figure, no figure (or
// one of another colour). A size that no such object has is a size error, not a hallucination.
// The scene's objects (and its figure) count as recalled when a mention names their colour and
// shape (any stick-figure mention of the right colour, or with none, recalls the figure).
struct ChairCounts {
  int mentions = 0, hallucinated = 0, size_errors = 0;
  int objects = 0, recalled = 0;  // the scene's objects + figure, and how many were named
};
ChairCounts chair_counts(const world::Scene& scene, const std::vector<MentionedObject>& mentions);

struct ChairTally {
  int descriptions = 0, with_hallucination = 0;
  int mentions = 0, hallucinated = 0, size_errors = 0, objects = 0, recalled = 0;
  long words = 0;
  void add(const ChairCounts& c, int word_count);
  double chair_i() const;  // hallucinated / mentions (0 without mentions)
  double chair_s() const;  // with_hallucination / descriptions
  double recall() const;   // recalled / objects
  double mean_words() const;
};

// ---- The evaluation ------------------------------------------------------------------------

// (question, image, most new tokens) -> answer text. The plain greedy model, a speculative
// decoder, a VISOR variant: anything that answers.
using VlmAnswerFn = std::function<std::string(const std::string& question, const Image& image, int64_t max_new_tokens)>;

// Greedy decoding with the model's own chat template, stopping at EOS (pipelines/vqa.h ask()).
VlmAnswerFn greedy_vqa_answerer(VqaModel& model);

// What answering cost: answers, tokens generated (EOS included) and wall time of ask() calls.
struct VqaTally {
  int64_t answers = 0, generated_tokens = 0;
  double seconds = 0;
  int64_t var_rows_changed = 0, var_rows_examined = 0;  // VAR's attention rows (when on)
  SgrsStats sgrs;                                        // SGRS' draws (when on)
  double tokens_per_second() const { return seconds > 0 ? generated_tokens / seconds : 0.0; }
};
// ask() with `options` (sampling, faithfulness methods, ...) and the per-question token budget;
// counts into `tally` when given (it must outlive the answerer).
VlmAnswerFn vqa_answerer(VqaModel& model, const VqaOptions& options, VqaTally* tally = nullptr);

struct VlmEvalOptions {
  int questions = 500;        // at least this many short questions (0: none)
  int describe = 50;          // descriptions (0: none)
  int per_scene = 6;          // short questions kept per scene (1..12)
  uint64_t base_seed = 20240; // held-out scenes, as in `iris eval diffusion`
  int64_t short_max_new_tokens = 16;
  int64_t describe_max_new_tokens = 96;
  std::function<void(const std::string&)> log;  // one line per answer when set
  Progress progress;                             // stage "eval vlm", one step per answer
};
// ConfigError naming the option (--questions, --describe, ...) on a value out of range.
void validate(const VlmEvalOptions& options);

// One thing to ask.
struct VlmEvalItem {
  size_t scene = 0;  // index into VlmEvalPlan::scenes
  world::Question question;
  int64_t max_new_tokens = 0;
};
struct VlmEvalPlan {
  std::vector<world::Scene> scenes;
  std::vector<bool> novel_combo;  // per scene: holds a held-out (colour, shape) pair
  std::vector<VlmEvalItem> items; // scene by scene
  int short_questions = 0, pope_probes = 0, descriptions = 0;
};
// Deterministic in the options. Throws ConfigError (validate()).
VlmEvalPlan plan_vlm_eval(const VlmEvalOptions& options);

// One answer, scored.
struct VlmEvalRecord {
  uint64_t seed = 0;  // the scene's seed (world::sample_scene(seed) redraws it)
  std::string kind, question, expected, got, template_id, pope;
  bool held_out_template = false, novel_combo = false;
  bool correct = false;  // short: exact match; POPE: read the right way; describe: no hallucination
  ChairCounts chair;     // describe only
  int words = 0;         // describe only
};

struct VlmEvalResult {
  int scenes = 0;
  world::Tally short_answers;                  // every short question
  std::map<std::string, world::Tally> by_kind; // per question kind
  world::Tally seen_templates, held_out_templates, novel_combo_scenes;
  std::map<std::string, PopeCounts> pope;      // "random", "popular", "adversarial", "all"
  ChairTally chair;
  double seconds = 0;
  std::vector<VlmEvalRecord> records;
};

// The figures from records alone (what run_vlm_eval ends with; tests feed it hand-made ones).
VlmEvalResult score_vlm_records(std::vector<VlmEvalRecord> records, int scenes);

// Asks every item of the plan with `answer` and scores it. Cancellable between answers.
VlmEvalResult run_vlm_eval(const VlmAnswerFn& answer, const VlmEvalOptions& options);

// Every figure (the options that made them under "options").
Json vlm_eval_json(const VlmEvalResult& r, const VlmEvalOptions& options);
// The readable table.
std::string format_vlm_eval_table(const VlmEvalResult& r, const VlmEvalOptions& options);
// One JSON object per line: seed, kind, question, expected, got, correct, template, pope...
std::string vlm_eval_samples_jsonl(const VlmEvalResult& r);

}  // namespace iris
