#pragma once
// Captions (text-to-image prompts) and question/answer pairs (VQA, POPE probes, long
// descriptions) generated from Tinyworld scenes.
//
// Every sentence comes from a named template. Some templates are held out: they are only used
// for held-out scenes, so an evaluation can measure generalisation to unseen phrasing
// (Caption::held_out_template / Question::held_out_template say which were used). For
// training scenes (Split::Train) only training templates are drawn; for held-out scenes any
// template is, held-out ones with probability options.held_out_template_probability.
//
// Answers are short lowercase words or phrases: colours ("red"), shapes ("circle"), sizes,
// positions ("top left"), counts as words ("two"), "yes"/"no", styles, background names;
// relation answers name objects ("the red circle", "the red circle and the blue square") or
// "nothing"; "Describe the image." answers with several sentences.
#include <string>
#include <utility>
#include <vector>

#include "world/rng.h"
#include "world/scene.h"

namespace iris::world {

// Which attributes of one object a caption states.
struct ObjectMention {
  int object = 0;  // index into Scene::objects
  bool color = false, shape = false, size = false, position = false;
};

struct Caption {
  std::string text;
  std::string template_id;
  bool held_out_template = false;
  std::vector<ObjectMention> mentions;  // one per object, in the order the caption names them
  bool count = false;                   // states the number of objects ("two objects: ...")
  bool style = false, background = false;
  bool figure = false, figure_color = false, arms = false, legs = false;
};

struct CaptionOptions {
  Split split = Split::Train;
  double held_out_template_probability = 0.5;  // held-out scenes only
  double style_probability = 0.0;              // append "in the outlined style" etc.
  double size_probability = 0.8;               // per object: state its size
  double position_probability = 0.85;          // per object: state its position
  // The stick figure's arms and legs in words ("raising its left arm"). Off, the caption names
  // the figure's colour and side only, and every other word and random draw stays the same: a
  // pose control (SK-Adapter) is then the only source of the pose.
  bool pose = true;
};

struct TemplateInfo {
  std::string id, kind, text;  // kind: "caption" or a question kind; text: the pattern
  bool held_out = false;
};
// Every caption and question template, for documentation and split checks.
const std::vector<TemplateInfo>& all_templates();

// A caption for `scene`, drawn with `rng` (seed it from the scene for reproducibility).
Caption make_caption(const Scene& scene, Rng& rng, const CaptionOptions& options = {});

// The one caption of `scene` that states everything the picture shows, always worded the same
// way: the "{list} on a {bg} background" template, the objects in reading order of their cells
// (top left first), each with colour, size, shape and position, the stick figure (colour, side,
// arms and legs) after them, then the style. Two scenes that look alike get the same text, so it is a target
// an image can be mapped onto (the IP-Adapter's caption regression); make_caption's random
// template, order and wording would make it a mean of many.
Caption complete_caption(const Scene& scene);

// ---- Questions ---------------------------------------------------------------------------------

struct Question {
  std::string kind;  // color, shape, size, count, position, relation, exists, style, background,
                     // figure, describe
  std::string question, answer;
  std::string template_id;
  bool held_out_template = false;
  // Existence probes: "positive" (the object is there) or the POPE negative sampling used for
  // an absent object: "random", "popular" or "adversarial" (an object that differs from a
  // present one in one attribute). Empty for other kinds.
  std::string pope;
  // The scene items the answer is read from: indices into Scene::objects, objects.size() for
  // the stick figure. Empty when no single set of items holds the answer (absent-object
  // probes, counts of absent things, style, background, descriptions), and for relations
  // unless QuestionOptions::relations.items asks for them. Training uses it to tell the LM
  // where in the image to look.
  std::vector<int> items;
};

struct QuestionOptions {
  Split split = Split::Train;
  double held_out_template_probability = 0.5;  // held-out scenes only
  int max_questions = 12;                      // besides the existence probes and the description
  bool existence = true;                       // POPE probes: one positive + random, popular, adversarial negatives
  bool describe = true;                        // one "Describe the image." question with a long answer
  // POPE "popular" negatives: (colour, shape) pairs, most frequent first. Empty: the ranking
  // of object_popularity() over the default sampler.
  std::vector<std::pair<Color, Shape>> popularity;
  // Training scenes (Split::Train): no absent-object probe names one of these (colour, shape)
  // pairs. They are the split's held-out combinations, which no training scene shows; asking
  // about them anyway would teach a model that such an object is never there ("Is there a purple
  // triangle?" -> always "no"), and the held-out scenes that do show one would measure that
  // prior instead of whether the model combines a colour and a shape it knows.
  std::vector<std::pair<Color, Shape>> never_probed_in_training = default_heldout_combos();
  // Relation questions. The defaults draw one "What is <rel> the X?" and one "Is the A <rel>
  // the B?" per scene with a uniformly drawn relation, so about two in three yes/no relation
  // questions answer "no" (the relation must hold for that pair and that direction), and the
  // questions name no items. A training mix may drill relations harder:
  struct Relations {
    int rounds = 1;          // (what, yes/no) question pairs per scene, each with its own draw
    double yes_share = -1;   // >= 0: a yes/no question answers "yes" with this probability
                             // (when the pair allows it); < 0: the relation drawn uniformly
    bool items = false;      // name the items the answer is read from: the reference object and
                             // the objects related to it ("what"), or both objects ("yes/no")
  } relations;
};

std::vector<Question> make_questions(const Scene& scene, Rng& rng, const QuestionOptions& options = {});

// Drops absent-object probes (answer "no"), chosen at random, until no more remain than
// present-object ones, as POPE's own splits are 50/50: make_questions probes one present object
// and up to three absent ones, and a model trained on that mix learns "no" as a 75 % prior.
// Other questions and their order are kept.
void balance_existence_probes(std::vector<Question>& questions, Rng& rng);

// A long description (several sentences: objects, figure, background, style).
std::string describe_scene(const Scene& scene, Rng& rng, bool allow_held_out_templates = false);

// The same description or caption in other words: each word of a small synonym lexicon
// (large -> big/huge, small -> little/tiny, image -> picture/scene, shows -> contains/displays,
// raising -> lifting/holding up, drawn -> rendered/painted, objects -> things/shapes, ...) is
// swapped with probability p, and an object's position may be introduced by "located",
// "placed", "positioned" or "situated" ("a big red circle located at the top left"); articles
// follow the new words. Meaning is kept: a reader (the analyzer, or a question about the text)
// finds the same objects, colours, sizes and positions.
//
// Why: the VLM's language model is trained from scratch on Tinyworld text only, so a word the
// templates never use is, to it, an unknown string of characters. Real LLaVA-style models meet
// synonyms in their LM's pretraining; this is the pack's stand-in for that, a text corpus with
// a richer vocabulary. No question template (training or held-out) is produced by it.
std::string paraphrase(const std::string& text, Rng& rng, double p = 0.5);

// (colour, shape) pairs ranked by how often they occur in `n` training-split scenes of
// `sampler` (ties broken by vocabulary order): POPE's "popular" objects.
std::vector<std::pair<Color, Shape>> object_popularity(const SamplerOptions& sampler = {}, int n = 2000,
                                                       uint64_t base_seed = 0);

// Noun phrase of an object: "a small red circle", with optional article/size; helpers the
// tests and the eval use to build prompts.
std::string object_phrase(const Object& o, bool size, bool article);
// "at the top left", "in the center", "on the left", "at the bottom".
std::string position_phrase(int cell);
// "a" or "an" for the following word.
const char* article_for(const std::string& next_word);

}  // namespace iris::world
