#pragma once
// `iris eval diffusion`: a pipeline (and its adapters) on held-out Tinyworld scenes, read back
// by the Tinyworld analyzer and scored against the scenes the prompts ask for. Fixed seeds: the
// same model gives the same table. Tasks:
//
//   t2i       text only: the caption's attributes (only the ones it states count).
//   ip        image prompt only (empty text), reference = a held-out render: the reference's
//             object attributes (colour, shape, size, position) and object count.
//   ip-text   image prompt + a text that changes one attribute of one reference object
//             ("a small blue circle at the top left" for a red one; colour, shape, size and
//             position in turn): how often the change is honoured, and how many of the other
//             object attributes (and the count) stay as in the reference.
//   style     caption (no style phrase) + each Tinyworld style in turn from the style bank:
//             how often the analyzer recognises the requested style, and the caption's
//             content attributes as in t2i.
//   skeleton  a caption with a stick figure + that figure's skeleton: PCK@0.1 of the joints the
//             analyzer reads, with the SK-Adapter and (same prompts and seeds) without it; also
//             of the limb joints alone (elbows, wrists, knees, ankles: the ones a pose moves).
//   vae       no generation: each held-out render through the VAE (encode, mean latent, decode),
//             every attribute of the scene scored. The ceiling any latent generator with this
//             VAE can reach, so a low t2i figure can be told apart from a lossy autoencoder.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/image.h"
#include "core/json_util.h"
#include "core/progress.h"
#include "pipelines/sd_model.h"
#include "pipelines/stable_diffusion.h"
#include "world/analyzer.h"

namespace iris {

enum class EvalTask { TextToImage, ImagePrompt, ImagePromptText, Style, Skeleton, Autoencoder };
// "t2i" | "ip" | "ip-text" | "style" | "skeleton" | "vae"; ConfigError listing them otherwise.
EvalTask parse_eval_task(const std::string& s);
const char* eval_task_name(EvalTask t);

struct DiffusionEvalOptions {
  EvalTask task = EvalTask::TextToImage;
  int n = 200;                  // prompts
  uint64_t base_seed = 20240;   // held-out scenes: world::split_seeds(base_seed, HeldOut)
  uint64_t seed = 0;            // image i uses seed + i (the skeleton baseline too)
  std::string sampler = "euler";
  int steps = 20;
  double cfg_scale = 4.0;
  int resolution = 64;
  double style_fraction = 0.25;  // t2i: this share of prompts also names the style (then scored)
  // Adapters. ip_scale < 0: the task's default, 1.0 for ip and 0.5 for ip-text (the IP-Adapter
  // authors' advice for image + text prompts).
  double ip_scale = -1;
  std::string ip_preset = "all";
  double style_strength = 1.0;
  double skeleton_scale = 1.0;
  bool skeleton_baseline = true;  // skeleton: also render every prompt without the adapter
  // skeleton: the prompts name the figure's pose in words ("raising its left arm"), as the
  // training captions do. Off, they name its colour and side only, so that the skeleton is the
  // only source of the pose and the baseline shows what the text model draws without it.
  bool pose_in_prompt = true;
  std::function<void(const std::string&)> log;  // one line per prompt when set
  Progress progress;                             // one report per prompt ("eval <task>")
};

// A named figure of a result; `goal` is the acceptance threshold in percent (0: none).
struct EvalFigure {
  std::string name;
  world::Tally tally;
  double goal = 0;
};

struct DiffusionEvalResult {
  EvalTask task = EvalTask::TextToImage;
  // Generated images against their targets (ip-text: the attributes the text leaves alone).
  world::SceneScore score;
  world::SceneScore baseline;  // skeleton: the same prompts and seeds without the adapter
  bool has_baseline = false;
  world::Tally change;         // ip-text: the text's change honoured
  // Style recognition per requested style (all_styles()' order), wherever the task scores the
  // style: style, t2i prompts that name one, ip and vae (which score everything).
  std::vector<std::pair<std::string, world::Tally>> per_style;
  // t2i: the headline split by what the prompt is like — seen / unseen caption templates,
  // 1 / 2 / 3 objects named, a stick figure or not (where a weak model loses its attributes).
  std::vector<std::pair<std::string, world::Tally>> per_group;
  std::vector<std::string> prompts;
  std::vector<uint64_t> scene_seeds;
  std::vector<world::Tally> item_scores;  // per prompt: its share of headline()
  std::vector<Image> images;
  std::vector<Image> references;       // ip, ip-text: the image prompts; skeleton: pose maps
  std::vector<Image> baseline_images;  // skeleton without the adapter
  double seconds_per_image = 0;        // per prompt (the skeleton baseline included)

  // Every described attribute together (objects, count, style, background, figure, PCK).
  world::Tally described() const;
  // The task's main figure: t2i described(); ip object attributes + count; ip-text change;
  // style recognition; skeleton PCK with the adapter; vae every attribute.
  world::Tally headline() const;
  // The rows printed under the attribute table (headline first).
  std::vector<EvalFigure> figures() const;
};

// ---- the prompts and the loop, for tests and other generators ----

enum class ObjectAttribute { Color, Shape, Size, Position };

// One prompt of a task: what the generator is asked for and what its image must show.
struct EvalPrompt {
  int index = 0;
  uint64_t scene_seed = 0;
  GenerationParams params;        // prompt, seed, size and the adapter inputs (image, style, skeleton)
  world::Scene target;            // the scene the image should show
  world::Caption described;       // which of its attributes are scored
  bool score_everything = false;  // ip: every attribute of the reference (no caption filter)
  Image reference;                // the image prompt (ip, ip-text), pose map (skeleton) or render (vae); else empty
  // ip-text: the reference object the text changes, and how.
  size_t changed_object = 0;
  ObjectAttribute changed = ObjectAttribute::Color;
};

// Held-out scene seeds of a run (every one with a stick figure for the skeleton task).
std::vector<uint64_t> eval_scene_seeds(const DiffusionEvalOptions& options);
EvalPrompt make_eval_prompt(const DiffusionEvalOptions& options, int index, uint64_t scene_seed);

// The image for a prompt; `baseline`: the skeleton task's same prompt without the adapter.
using EvalGenerator = std::function<Image(const EvalPrompt& prompt, bool baseline)>;
// The eval loop over any generator (a test can pass renders of the targets).
DiffusionEvalResult eval_diffusion(const DiffusionEvalOptions& options, const EvalGenerator& generate);

// With the model's pipeline. Throws ConfigError for n < 1, a resolution the model cannot make,
// or a task whose adapter the model lacks (naming the --option that loads it; style: every
// Tinyworld style must resolve).
DiffusionEvalResult eval_diffusion(SdModel& model, const DiffusionEvalOptions& options);
// eval_diffusion with options.task = t2i.
DiffusionEvalResult eval_text_to_image(SdModel& model, const DiffusionEvalOptions& options);

// The analyzer's table, the task's figures and the timing.
std::string format_eval_table(const DiffusionEvalResult& r);
// Every figure as JSON: task, options, figures, headline, attribute tallies (and the baseline's),
// per-prompt scores.
Json eval_result_json(const DiffusionEvalResult& r, const DiffusionEvalOptions& options);

// Images in a grid (`columns` per row, 2-px gaps of `gap` grey), all the size of the first.
Image contact_sheet(const std::vector<Image>& images, int columns, uint8_t gap = 40);
// The result's images, one group per prompt: [reference] generated [baseline]; about `columns`
// images per row, never splitting a group.
Image eval_contact_sheet(const DiffusionEvalResult& r, int columns = 16);

}  // namespace iris
