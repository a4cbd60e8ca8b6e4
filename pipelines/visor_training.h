#pragma once
// Training a VISOR model (vlm/visor.h) from a trained LLaVA folder, on Tinyworld VQA:
//
//   1. init      the LLaVA folder's modules (the LM layers become the text-only layers), VISOR
//                blocks from init_from_language_model: the model starts as the text-only LM
//   2. universal every step samples one budget b uniformly in 0 .. S (METHODS.md: one feasible
//                self-attention configuration per step) and trains the LM, projector and VISOR
//                blocks (vision tower and router frozen) on a batch of single-turn questions:
//                  prompt = vqa_prompt_ids (LLaVA-1.5 template), target = encode(answer) + EOS,
//                  cross-entropy on the answer tokens
//   3. labels    on `router_examples` fresh training questions: the greedy answer at every
//                budget; pseudo-label (router_label) = the cheapest budget as right as the full
//                budget (METHODS.md; budget 0 when the full budget is wrong), or the cheapest
//                budget whose answer equals the full budget's; router input features (pooled
//                prompt text + pooled image at the router's slot) kept with it
//                (work_dir/router_data-correct.safetensors, or router_data.safetensors for the other rule)
//   4. router    cross-entropy of the router MLP on the pseudo-labels (everything else frozen)
//   5. export    out_dir = a VISOR folder (the LLaVA folder's tokenizer and preprocessor copied);
//                with eval_questions > 0, held-out questions answered by the original LLaVA and
//                by VISOR at every budget and with the router: accuracy and mean visual FLOPs
//                (out_dir/visor_eval.json)
// Every phase resumes from work_dir (Trainer checkpoints in work_dir/universal, work_dir/router;
// the labels file); the data of a step depends on (seed, step) only. A call that runs universal
// steps drops the labels and the router state (they belong to the previous universal model).
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "core/image.h"
#include "core/json_util.h"
#include "core/progress.h"
#include "pipelines/visor_vqa.h"
#include "world/captions.h"
#include "world/scene.h"

namespace iris {

struct VisorTrainOptions {
  std::string llava_dir;  // the LLaVA folder to start from (VqaModel::load reads it)
  std::string out_dir;    // the VISOR folder written
  std::string work_dir;   // checkpoints and labels ("" = not resumable)
  // Layout: 0 = defaults (cross: half the LM layers, rounded up; self: as many as cross).
  int64_t cross_layers = 0, self_layers = -1;  // self -1 = default, 0 = none (no router)
  int64_t sa_intermediate = 0;                 // 0: the LM's intermediate_size
  int64_t router_hidden = 64;
  // Kernel of the image tokens' depthwise position convolution (0: VisorConfig's default). With
  // zero padding, a kernel that spans the patch grid (2 * side - 1) can encode absolute position,
  // which cross-attention needs: its image keys carry no RoPE positions.
  int64_t position_kernel = 0;
  // A learned position embedding per image token (VisorConfig::position_embedding).
  bool position_embedding = false;
  // Universal training.
  int64_t steps = 1500, batch = 8, warmup = 50;  // batch: scenes per step
  // Questions asked about each scene of a step (distinct; each its own sequence, the image
  // encoded once): more supervision per step at little more cost than one.
  int64_t questions_per_image = 1;
  double lr = 3e-4;
  bool train_language_model = true;  // false: only the VISOR blocks and the projector
  double describe_probability = 0.0; // chance a question is "Describe the image." (long answer)
  // Universal training's questions drawn after world::balance_existence_probes, as the pack
  // VLM's fine-tune saw them (the router's labels keep the natural mix it meets at inference).
  bool balance_existence = false;
  // Lookup loss (the pack VLM's --lookup, read through cross-attention): at the text position
  // that predicts an answer's first token, head 0 of cross-attention block `lookup_block` (-1:
  // the last) is asked to put its weight on the image tokens of the patches the answer is read
  // from (world::Question::items, patch_owners): + lookup_weight * -log(weight there). 0: off.
  double lookup_weight = 0.0;
  int64_t lookup_block = -1;
  // Router.
  int64_t router_examples = 256, router_steps = 300;
  // How a question's pseudo-label is made (visor_pseudo_label): kCorrect, METHODS.md's rule
  // (the cheapest budget reaching the full budget's accuracy on it: right where the full
  // budget is right, else budget 0), or kSameAnswer (the cheapest budget whose greedy answer
  // equals the full budget's, right or wrong; what Iris did before, and the only rule for
  // questions without a known answer).
  enum class RouterLabel { kCorrect, kSameAnswer };
  RouterLabel router_label = RouterLabel::kCorrect;
  double router_lr = 3e-3;
  // Evaluation (0: none) and answers.
  int64_t eval_questions = 200, max_new_tokens = 16;
  uint64_t seed = 0;
  bool f16 = false;  // exported weights as F16
  int64_t log_every = 25, checkpoint_every = 250;
  std::function<void(const std::string&)> log;  // stdout when empty
  Progress progress;
};

// One row of the evaluation table.
struct VisorEvalRow {
  std::string name;       // "llava", "budget 0", ..., "router"
  int64_t budget = -1;    // -2: the LLaVA path; -1: the router
  int64_t asked = 0, correct = 0;
  double mean_visual_flops = 0;
  std::vector<int64_t> chosen;  // router row: how often each budget was chosen
  // question kind ("color", "exists", ...) -> (correct, asked): the table mixes every kind
  // make_questions asks, existence probes included, unlike `iris eval vlm`'s short answers
  std::map<std::string, std::pair<int64_t, int64_t>> by_kind;
  double accuracy() const { return asked ? static_cast<double>(correct) / static_cast<double>(asked) : 0.0; }
};

struct VisorTrainReport {
  std::vector<double> universal_losses;  // per step this call ran
  int64_t universal_step = 0;
  std::vector<int64_t> label_counts;     // pseudo-labels per budget
  std::vector<double> router_losses;
  double router_train_accuracy = 0;      // on its pseudo-labels, after training
  std::vector<VisorEvalRow> eval;        // empty without eval_questions
  std::string output;
};

// Runs the phases above. ConfigError for bad options (naming them), IoError / CheckpointError
// for a bad LLaVA folder, Cancelled when progress asks to stop (checkpoints kept).
VisorTrainReport train_visor(const VisorTrainOptions& options);

// ---- Pieces (tests use them) ----------------------------------------------------------------

// One Tinyworld question about a rendered scene.
struct VisorVqaItem {
  world::Scene scene;
  world::Question question;
  Image image;
};
// `count` questions, `per_scene` distinct ones per scene (the last scene may give fewer; the
// items of one scene are consecutive), from scenes of `split` drawn from `seed` (questions of
// that split's templates; describe questions with the given probability; with
// balance_existence picked after world::balance_existence_probes). The first question of each
// scene does not depend on per_scene.
std::vector<VisorVqaItem> visor_vqa_items(uint64_t seed, int64_t count, world::Split split, double describe_probability,
                                          bool balance_existence = false, int64_t per_scene = 1);

// Mean answer-token cross-entropy of a batch at one budget (differentiable): the vision tower
// runs without gradients (once per scene: consecutive items of one scene share it), the
// projector, LM and VISOR blocks with them.
// With lookup_weight > 0, plus lookup_weight times the lookup loss of cross-attention block
// `lookup_block` (-1: the last; VisorTrainOptions::lookup_weight) over the questions with items;
// `lookup_mass` gets head 0's mean weight on those items' patches (-1 when no question has any).
at::Tensor visor_answer_loss(VisorModel& m, const std::vector<VisorVqaItem>& batch, int64_t budget,
                             double lookup_weight = 0.0, int64_t lookup_block = -1, double* lookup_mass = nullptr);

// Pseudo-label of one question under `rule`: kCorrect, the cheapest budget whose greedy answer
// is right (answers_match) when the full budget's is, else 0; kSameAnswer, the cheapest budget
// whose greedy answer equals the full budget's. `features` gets the router's input [2H].
int64_t visor_pseudo_label(VisorModel& m, const VisorVqaItem& item, int64_t max_new_tokens, at::Tensor* features,
                           VisorTrainOptions::RouterLabel rule);

// Accuracy and mean visual FLOPs of VISOR at every budget and with the router (and of the
// LLaVA path when `llava` is given) on `items` (exact match, case and final punctuation ignored).
std::vector<VisorEvalRow> evaluate_visor(VisorModel& m, VqaModel* llava, const std::vector<VisorVqaItem>& items,
                                         int64_t max_new_tokens);
std::string format_visor_eval(const std::vector<VisorEvalRow>& rows);
Json visor_eval_json(const std::vector<VisorEvalRow>& rows);

}  // namespace iris
