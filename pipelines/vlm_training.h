#pragma once
// The starter pack's VLM (issue 9): a LLaVA-1.5-layout model trained from scratch on Tinyworld,
// in stages, each resumable from its Trainer checkpoint in work_dir/<stage> and skipped once done:
//
//   augment   (FtZ only) the augmenting conv encoder + a linear patch decoder, trained to
//             reconstruct the 64x64 render from the encoder's tokens (pixel-level perception);
//             with augment_labels also linear heads reading each token's patch labels
//   vision    (optional, vision_steps > 0) the anchor vision tower alone, with linear heads
//             reading each patch's labels (colour, shape, size of the item covering it) from
//             the features the projector takes: perception before the LM learns to read it
//   text      the LLaMA decoder alone, language modelling on Tinyworld text laid out like the
//             VQA prompts with a scene description or caption where the image goes:
//               <s> USER: {description}\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>...
//             (loss on every token): the LM learns the language and to answer from scene content
//   grid      (optional, grid_steps > 0) the LLaMA decoder alone on the image sequences, with a
//             *symbolic image* where the image features go: per patch, the sum of the LM's own
//             embeddings of the words naming what covers it (colour, shape, size; the scene's
//             style and background) and a learned per-patch position vector. The LM learns to
//             read a patch grid from clean symbols, where it learns fast, before it meets the
//             noisy vision features (see VlmTrainOptions::align_grid)
//   align     projector (+ FtZ fusion) with LM and vision frozen (LLaVA stage 1); after a grid
//             stage also pulled towards the symbolic image of the same scene
//   finetune  LM + projector (+ fusion; + vision with train_vision) (LLaVA stage 2)
//
// Image sequences (align, finetune), one per image, questions in a random order:
//   first turn: exactly vqa_prompt_ids (BOS, "USER: <image>\n{q} ASSISTANT:" split at <image>,
//               pieces encoded with SentencePiece defaults), then encode(answer) + EOS
//   each further turn: encode("USER: {q} ASSISTANT:") then encode(answer) + EOS
//   loss on every answer token and its EOS; turns are added while the text fits max_text_tokens.
// Questions are world::make_questions on training-split scenes with training templates: every
// kind, the POPE existence probes and (with describe_probability) "Describe the image.".
// Data of step s depends on (seed, s) only, so a resumed run continues bit for bit.
//
// Output folder (VqaModel::load / `iris ask` read it): config.json (LlavaConfig with the
// encoder's vision_config, text_config, image_token_index, optional "ftz" block),
// model.safetensors (F16), tokenizer.model, preprocessor_config.json, generation_config.json.
// The image token is the tokenizer's user symbol "<image>" when it has one, else id
// vocab_size (the LM's vocabulary is then one larger).
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/json_util.h"
#include "core/progress.h"
#include "core/sentencepiece.h"
#include "pipelines/patch_labels.h"
#include "world/captions.h"

namespace iris {

struct VqaModel;

// Model sizes; a field left at 0 takes the default of resolve(tiny) (feature_layer and
// tie_embeddings are used as given).
struct VlmModelSizes {
  int64_t hidden = 0, layers = 0, heads = 0, kv_heads = 0, intermediate = 0, max_positions = 0;
  bool tie_embeddings = true;
  int64_t feature_layer = -2;  // LLaVA's vision_feature_layer (hidden_states index of the tower)
  // FtZ augmenting encoder (conv) and fusion.
  int64_t aug_hidden = 0, aug_layers = 0, aug_patch = 0, aug_groups = 0, ftz_heads = 0;
  bool aug_position = false;  // the conv encoder's learned position embedding (ConvEncoderConfig)
  // LlavaConfig::image_position_embedding: a learned embedding per image token added to the
  // projector's output (trained in align and finetune with the projector).
  bool image_position = false;
  // Zero fields take the defaults for full-size or test-sized (`tiny`) models.
  VlmModelSizes resolve(bool tiny) const;
};

// One stage's schedule: steps < 0 = the default, 0 = skip the stage; lr 0 = default;
// warmup < 0 = default.
struct VlmStageSchedule {
  int64_t steps = -1;
  double lr = 0;
  int64_t warmup = -1;
  int64_t batch = 0;  // 0: the run's batch (images for augment, sequences otherwise)
};

struct VlmTrainOptions {
  std::string encoder_dir;     // CLIP vision encoder folder (config.json, weights, preprocessor_config.json)
  std::string tokenizer_path;  // SentencePiece tokenizer.model (copied into out_dir)
  std::string out_dir;         // the LLaVA folder written
  std::string work_dir;        // checkpoints (work_dir/<stage>); "" = not resumable
  // Start from a trained LLaVA folder (e.g. the pack's vlm/) instead of a fresh LM: its LM,
  // projector and vision tower (FtZ parts too) are loaded, and the stages before the fine-tune
  // default to 0 steps (given steps still run). Its config must be the one these options build
  // (same encoder config, tokenizer, sizes); the first differing key is named.
  std::string init_dir;
  // With init_dir: the vision tower comes from encoder_dir instead (e.g. an encoder trained
  // further elsewhere, such as the IP-Adapter's); the LM and projector from init_dir.
  bool encoder_over_init = false;
  bool tiny = false;           // test-sized models and batches
  bool ftz = false;            // FtZ: conv augmenting encoder + fusion
  bool train_vision = false;   // finetune also trains the vision tower (and the augmenting encoder)
  // augment also predicts, per token, what its patch shows (colour, shape and size of the item
  // covering most of it, from world::render_owner_map): dense labels, besides reconstruction.
  bool augment_labels = false;
  // > 0 (needs train_vision): the fine-tune adds this weight x the same dense patch labels read
  // linearly from the vision features the projector takes (the vision path learns to localise).
  double finetune_labels = 0.0;
  // The vision stage's and the fine-tune's patch labels add each scene's drawing style and
  // background, read from every patch (the object labels alone let the tower drop them).
  bool scene_labels = false;
  // After a grid stage: weight of the align stage's regression of the projected image tokens
  // onto the scene's symbolic image (relative squared error), besides the answers' loss: the
  // projector learns to say, patch by patch, what the LM has learned to read.
  double align_grid = 1.0;
  // The symbolic image names each label with a learned vector of its own (random start) rather
  // than the LM's word embeddings (where words used alike, e.g. all colours, lie close together).
  bool grid_own_table = false;
  // > 0: the grid, align and fine-tune stages add this weight x a *lookup* loss: at the
  // position that predicts an answer's first token, one attention head (head 0 of layer
  // lookup_layer; < 0 counts from the last) is asked to put its weight on the image tokens of
  // the patches that show what the answer is read from (world::Question::items, patches as
  // the patch labels assign them): -log(weight on those patches). A small LM trained from
  // scratch does not find that lookup ("What colour is the circle?" -> attend where the
  // circle is, read its colour) from the answers alone; it answers with the prior instead.
  double lookup_weight = 0.0;
  int64_t lookup_layer = -1;
  // The image sequences of the grid, align and fine-tune stages isolate their turns
  // (vlm_image_sequence's `isolated`): with shared context a small LM learns to copy colours
  // and positions from earlier questions and descriptions instead of reading the image.
  bool isolated_turns = false;
  // > 0: the text stage's contexts (descriptions and captions standing where the image goes)
  // are reworded by world::paraphrase with this probability per synonym, so that the LM meets
  // words the question templates it trains on never use ("big", "located", ...), as an LM's
  // pretraining would show them. Answers stay in the eval's words.
  double paraphrase = 0.0;
  // > 0: this share of the fine-tune's steps are text-stage steps (contexts reworded when
  // paraphrase > 0) instead of image steps, so that what the text stage taught is not forgotten
  // over thousands of image steps that never use those words.
  double finetune_text_share = 0.0;
  VlmModelSizes sizes;
  VlmStageSchedule augment, vision, text, grid, align, finetune;  // vision, grid: 0 steps unless set
  int64_t batch = 0;            // sequences per step (0: 8, tiny 2)
  int64_t max_text_tokens = 0;  // text tokens per sequence (0: 192, tiny 64); images add their features
  int64_t scenes = 0;           // training scenes to draw from (0: a fresh scene every time)
  double describe_probability = 0.5;  // a sequence includes "Describe the image." and its long answer
  // Image sequences keep as many absent-object probes ("Is there a red circle?" -> no) as
  // present ones (make_questions draws 1 present, up to 3 absent); the text stage is unchanged.
  bool balance_existence = false;
  // Image sequences drill relations: two (what, yes/no) relation question pairs per scene,
  // yes/no ones answered "yes" half the time (the natural draw answers "no" two times in
  // three, and a small LM learns to always say "no"), and the lookup names both objects
  // (world::QuestionOptions::relations). The text stage is unchanged.
  bool relation_drill = false;
  double finetune_ema = 0.0;    // > 0: EMA of the finetune parameters, exported instead of the live ones
  uint64_t seed = 0;
  int64_t log_every = 25, checkpoint_every = 200;
  int64_t check = 0;            // > 0: answer this many held-out questions at the end (exact match)
  bool fixed_batch = false;     // every step of a stage sees the same data (tests)
  bool f16 = true;              // exported weights as F16
  std::function<void(const std::string&)> log;  // stdout when empty
  Progress progress;            // per step of each stage; cancellation between steps
};

struct VlmStageReport {
  std::string name;
  bool skipped = false;         // 0 steps, or already done in work_dir
  int64_t start_step = 0, final_step = 0;
  double seconds_per_step = 0;  // mean over the steps this call ran
  std::vector<double> losses;   // per step this call ran
};

struct VlmCheckReport {
  int64_t questions = 0, correct = 0;
  std::map<std::string, std::pair<int64_t, int64_t>> by_kind;  // kind -> (correct, asked)
  std::vector<std::string> examples;                            // a few "Q -> answer (want)" lines
  double accuracy() const { return questions ? static_cast<double>(correct) / static_cast<double>(questions) : 0.0; }
};

struct VlmTrainReport {
  std::vector<VlmStageReport> stages;
  VlmCheckReport check;
  int64_t parameters = 0;  // exported model's parameter count
  std::string output;
};

// Runs the stages (see the top of this file), exports out_dir, and checks it when asked.
// Throws IoError for a missing encoder folder / tokenizer file, ConfigError for bad options or
// a work_dir made with other sizes, Cancelled when progress asks to stop (checkpoints kept).
VlmTrainReport train_vlm(const VlmTrainOptions& options);

// ---- Pieces, public for tests and the eval ------------------------------------------------

// The tokenizer with the ids the model uses.
struct VlmVocab {
  SentencePieceTokenizer tokenizer;
  int64_t image_token = 0, bos = -1, eos = -1;
  int64_t vocab_size = 0;  // the LM's vocabulary (tokenizer pieces, + 1 when <image> is appended)
  // Throws IoError (missing file) / FormatError (bad model) / ConfigError (no EOS piece).
  static VlmVocab load(const std::string& tokenizer_path);
  std::vector<int64_t> encode(const std::string& text) const;
};

// One training sequence: text token ids (the <image> token once for image sequences) and which
// of them are loss targets (target[k]: ids[k] is predicted from position k - 1).
struct VlmSequence {
  std::vector<int64_t> ids;
  std::vector<uint8_t> target;
  int64_t image_position = -1;  // index of the <image> token; -1 for text sequences
  int64_t turns = 0;
  // Per answer whose question names the items it is read from (world::Question::items): the
  // index in ids of its first token, and the items.
  struct Lookup {
    int64_t answer_start = 0;
    std::vector<int> items;
  };
  std::vector<Lookup> lookups;
  // Isolated turns (vlm_image_sequence with isolated = true): per id, 0 for the shared prefix
  // (BOS, "USER:", <image>) and k >= 1 for the tokens of turn k, which see the prefix and
  // their own turn only. Empty: every token sees every earlier one.
  std::vector<int32_t> turn_of;
};
// A training scene's questions (make_questions on the training split), shuffled; "describe"
// kept with probability describe_p; balance_existence: as many absent-object probes as present
// ones (VlmTrainOptions::balance_existence); relation_drill: VlmTrainOptions::relation_drill.
std::vector<world::Question> vlm_training_questions(const world::Scene& scene, world::Rng& rng, double describe_p,
                                                   bool balance_existence = false, bool relation_drill = false);
// The image sequence of the questions (in the given order; at least the first one, its answer
// cut when even it does not fit).
// isolated: every turn is laid out as a first turn ("\n{q} ASSISTANT: {a}</s>" after the
// shared "<s> USER: <image>") and sees only that prefix and itself (VlmSequence::turn_of), so
// no answer can be copied from another turn's text; it is then read from the image, as the
// eval asks it.
VlmSequence vlm_image_sequence(const VlmVocab& v, const std::vector<world::Question>& questions, int64_t max_text_tokens,
                               bool isolated = false);
// The text-stage sequence: `context` (a description or caption) where the image goes.
VlmSequence vlm_text_sequence(const VlmVocab& v, const std::string& context, const std::vector<world::Question>& questions,
                              int64_t max_text_tokens);

// The lookup loss's target over those patches: 1 where one of `items` owns the patch, else 0;
// empty when no item owns any patch (too small), so the question gets no lookup term.
std::vector<float> lookup_patch_row(const std::vector<int>& owners, const std::vector<int>& items);

// The LLaVA config.json object for an encoder's vision config, the sizes and the vocabulary.
Json vlm_llava_config(const Json& vision_config, const VlmModelSizes& sizes, const VlmVocab& vocab, bool ftz);

// Answers `n` questions about held-out scenes (held-out templates included; descriptions
// excluded) greedily and counts exact matches (answers_match of pipelines/vlm_eval.h).
VlmCheckReport check_vlm(VqaModel& model, int64_t n, uint64_t seed = 0);

// "kind  correct/asked  acc" lines and the total.
std::string format_check_report(const VlmCheckReport& r);

}  // namespace iris
