#include "pipelines/diffusion_eval.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "pipelines/stable_diffusion.h"
#include "world/dataset.h"
#include "world/render.h"
#include "world/rng.h"

namespace iris {

namespace {

struct TaskInfo {
  EvalTask task;
  const char* name;
  const char* what;  // the table's first line
};
constexpr TaskInfo kTasks[] = {
    {EvalTask::TextToImage, "t2i", "text-to-image on held-out captions"},
    {EvalTask::ImagePrompt, "ip", "IP-Adapter, image prompt only; reference: a held-out render"},
    {EvalTask::ImagePromptText, "ip-text", "IP-Adapter, image prompt + a text that changes one attribute"},
    {EvalTask::Style, "style", "PokeFusion style bank, each Tinyworld style in turn"},
    {EvalTask::Skeleton, "skeleton", "SK-Adapter, the reference figure's skeleton (PCK@0.1)"},
    {EvalTask::Autoencoder, "vae", "VAE round trip of held-out renders, every attribute"},
};

const TaskInfo& info(EvalTask t) {
  for (const TaskInfo& i : kTasks)
    if (i.task == t) return i;
  return kTasks[0];
}

world::Tally described_of(const world::SceneScore& s) {
  world::Tally t = s.object_attributes();
  for (const world::Tally* x : {&s.count, &s.style, &s.background, &s.figure, &s.figure_color, &s.arms, &s.legs,
                                &s.joints})
    t += *x;
  return t;
}

world::Tally objects_and_count(const world::SceneScore& s) {
  world::Tally t = s.object_attributes();
  t += s.count;
  return t;
}

world::Tally headline_of(EvalTask task, const world::SceneScore& s, const world::Tally& change) {
  switch (task) {
    case EvalTask::TextToImage: return described_of(s);
    case EvalTask::ImagePrompt: return objects_and_count(s);
    case EvalTask::ImagePromptText: return change;
    case EvalTask::Style: return s.style;
    case EvalTask::Skeleton: return s.joints;
    case EvalTask::Autoencoder: return described_of(s);
  }
  return {};
}

// ---- ip-text: one attribute of one reference object changed ----------------------------------

constexpr ObjectAttribute kAttributes[] = {ObjectAttribute::Color, ObjectAttribute::Shape, ObjectAttribute::Size, ObjectAttribute::Position};

template <class T>
T other_than(T current, const std::vector<T>& all, world::Rng& rng) {
  std::vector<T> rest;
  for (T v : all)
    if (v != current) rest.push_back(v);
  return rng.pick(rest);
}

// Sets attribute `a` of object k to another value. Positions move to a free cell the sampler
// could have used (the object column when there is a figure); false when there is none.
bool change_attribute(world::Scene& s, size_t k, ObjectAttribute a, world::Rng& rng) {
  world::Object& o = s.objects[k];
  switch (a) {
    case ObjectAttribute::Color: o.color = other_than(o.color, world::all_colors(), rng); return true;
    case ObjectAttribute::Shape: o.shape = other_than(o.shape, world::all_shapes(), rng); return true;
    case ObjectAttribute::Size: o.size = other_than(o.size, world::all_sizes(), rng); return true;
    case ObjectAttribute::Position: {
      std::vector<int> free;
      for (int c = 0; c < world::kNumCells; ++c) {
        if (s.figure && world::cell_col(c) != world::cell_col(o.cell)) continue;
        if (std::none_of(s.objects.begin(), s.objects.end(), [&](const world::Object& x) { return x.cell == c; }))
          free.push_back(c);
      }
      if (free.empty()) return false;
      o.cell = rng.pick(free);
      return true;
    }
  }
  return false;
}

const world::Tally& attribute_tally(const world::SceneScore& s, ObjectAttribute a) {
  switch (a) {
    case ObjectAttribute::Color: return s.color;
    case ObjectAttribute::Shape: return s.shape;
    case ObjectAttribute::Size: return s.size;
    case ObjectAttribute::Position: break;
  }
  return s.position;
}

bool& mention_flag(world::ObjectMention& m, ObjectAttribute a) {
  switch (a) {
    case ObjectAttribute::Color: return m.color;
    case ObjectAttribute::Shape: return m.shape;
    case ObjectAttribute::Size: return m.size;
    case ObjectAttribute::Position: break;
  }
  return m.position;
}

// A caption that states every attribute of every object (and the count).
world::Caption full_object_caption(const world::Scene& s) {
  world::Caption c;
  for (size_t i = 0; i < s.objects.size(); ++i) c.mentions.push_back({static_cast<int>(i), true, true, true, true});
  c.count = true;
  return c;
}

// ---- one prompt of a task ----------------------------------------------------------------------

double ip_scale(const DiffusionEvalOptions& o) {
  if (o.ip_scale >= 0) return o.ip_scale;
  return o.task == EvalTask::ImagePromptText ? 0.5 : 1.0;
}

world::DatasetOptions dataset_options(const DiffusionEvalOptions& o) {
  world::DatasetOptions d;
  d.base_seed = o.base_seed;
  d.count = o.n;
  d.split = world::Split::HeldOut;
  d.sampler.resolution = o.resolution;
  if (o.task == EvalTask::Skeleton) d.sampler.figure_probability = 1.0;
  d.caption.pose = o.pose_in_prompt;
  return d;
}

}  // namespace

std::vector<uint64_t> eval_scene_seeds(const DiffusionEvalOptions& o) {
  if (o.n < 1) throw ConfigError("eval: --n must be at least 1, got " + std::to_string(o.n));
  return world::split_seeds(dataset_options(o));
}

EvalPrompt make_eval_prompt(const DiffusionEvalOptions& o, int i, uint64_t scene_seed) {
  const world::Sample s = world::make_sample(scene_seed, dataset_options(o));
  EvalPrompt it;
  it.index = i;
  it.scene_seed = scene_seed;
  GenerationParams& p = it.params;
  p.sampler = o.sampler;
  p.steps = o.steps;
  p.cfg_scale = o.cfg_scale;
  p.seed = o.seed + static_cast<uint64_t>(i);
  p.width = p.height = o.resolution;
  it.target = s.scene;
  it.described = s.caption;
  p.prompt = s.caption.text;
  switch (o.task) {
    case EvalTask::TextToImage: {
      world::Rng rng(world::hash_combine(scene_seed, 0x57f1e));
      if (rng.chance(o.style_fraction)) {
        p.prompt = s.caption_with_style;
        it.described.style = true;
      }
      break;
    }
    case EvalTask::ImagePrompt:
    case EvalTask::ImagePromptText: {
      it.reference = world::render_scene(s.scene);
      ImagePrompt ip;
      ip.image = it.reference;
      ip.name = "heldout-" + std::to_string(scene_seed) + ".png";
      ip.scale = ip_scale(o);
      ip.preset = o.ip_preset;
      p.image_prompts.push_back(ip);
      p.prompt.clear();
      if (o.task == EvalTask::ImagePrompt) {
        it.score_everything = true;
        break;
      }
      world::Rng rng(world::hash_combine(scene_seed, 0x1f7e47));
      it.changed_object = static_cast<size_t>(rng.below(s.scene.objects.size()));
      it.changed = kAttributes[i % 4];
      if (!change_attribute(it.target, it.changed_object, it.changed, rng)) {
        it.changed = ObjectAttribute::Color;
        change_attribute(it.target, it.changed_object, it.changed, rng);
      }
      const world::Object& changed = it.target.objects[it.changed_object];
      p.prompt = world::object_phrase(changed, true, true) + " " + world::position_phrase(changed.cell);
      // The other attributes are scored against the (changed) target, which keeps them.
      it.described = full_object_caption(it.target);
      for (world::ObjectMention& m : it.described.mentions)
        if (static_cast<size_t>(m.object) == it.changed_object) mention_flag(m, it.changed) = false;
      break;
    }
    case EvalTask::Style: {
      const world::Style style = world::all_styles()[static_cast<size_t>(i) % world::all_styles().size()];
      it.target.style = style;
      it.described.style = true;
      p.style = world::name(style);
      p.style_strength = o.style_strength;
      break;
    }
    case EvalTask::Skeleton: {
      if (!s.scene.figure)  // the sampler was asked for a figure in every scene
        throw ConfigError("eval --task skeleton: held-out scene " + std::to_string(scene_seed) + " has no figure");
      p.skeleton = s.scene.figure->skeleton;
      p.skeleton_name = "heldout-" + std::to_string(scene_seed) + ".json";
      p.skeleton_scale = o.skeleton_scale;
      it.reference = world::render_skeleton_map(*p.skeleton, o.resolution);
      break;
    }
    case EvalTask::Autoencoder:
      it.reference = world::render_scene(s.scene);
      it.score_everything = true;
      p.prompt.clear();
      break;
  }
  return it;
}

namespace {

world::SceneScore score_item(const EvalPrompt& it, const world::AnalyzedScene& a) {
  world::ScoreOptions so;
  if (!it.score_everything) so.caption = &it.described;
  return world::score_scene(it.target, a, so);
}

// ip-text: was the changed attribute honoured? Matching uses all attributes of the changed object.
world::Tally score_change(const EvalPrompt& it, const world::AnalyzedScene& a) {
  world::Caption c;
  c.mentions.push_back({static_cast<int>(it.changed_object), true, true, true, true});
  world::ScoreOptions so;
  so.caption = &c;
  return attribute_tally(world::score_scene(it.target, a, so), it.changed);
}

void require_adapters(SdModel& model, const DiffusionEvalOptions& o) {
  const std::string task = std::string("eval --task ") + eval_task_name(o.task);
  switch (o.task) {
    case EvalTask::TextToImage:
    case EvalTask::Autoencoder: return;
    case EvalTask::ImagePrompt:
    case EvalTask::ImagePromptText:
      if (!model.ip_adapter || !model.image_encoder)
        throw ConfigError(task + ": the model has no IP-Adapter; load one with --ip-adapter FILE");
      return;
    case EvalTask::Style:
      if (!model.style_adapter)
        throw ConfigError(task + ": the model has no style adapter; load one with --style-adapter FILE");
      for (world::Style s : world::all_styles()) {
        try {
          resolve_style(model.style_adapter, world::name(s), model.style_adapter_path);
        } catch (const ConfigError& e) {
          throw ConfigError(task + ": every Tinyworld style is needed: " + e.what());
        }
      }
      return;
    case EvalTask::Skeleton:
      if (!model.sk_adapter)
        throw ConfigError(task + ": the model has no SK-Adapter; load one with --sk-adapter FILE");
      return;
  }
}

std::string eta_text(double elapsed, int done, int total) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "ETA %.0f s", elapsed / done * (total - done));
  return buf;
}

}  // namespace

EvalTask parse_eval_task(const std::string& s) {
  for (const TaskInfo& i : kTasks)
    if (s == i.name) return i.task;
  throw ConfigError("--task \"" + s + "\": expected t2i, ip, ip-text, style, skeleton or vae");
}

const char* eval_task_name(EvalTask t) { return info(t).name; }

world::Tally DiffusionEvalResult::described() const { return described_of(score); }

world::Tally DiffusionEvalResult::headline() const { return headline_of(task, score, change); }

namespace {

// "style flat", "style pixelated", ...: how often the analyzer read each requested style.
void push_style_rows(std::vector<EvalFigure>& f, const std::vector<std::pair<std::string, world::Tally>>& per_style) {
  for (const auto& [name, t] : per_style)
    if (t.total > 0) f.push_back({"style " + name, t, 0});
}

}  // namespace

std::vector<EvalFigure> DiffusionEvalResult::figures() const {
  std::vector<EvalFigure> f;
  switch (task) {
    case EvalTask::TextToImage:
      f.push_back({"described (all)", described(), 85});
      for (const auto& [name, t] : per_group)
        if (t.total > 0) f.push_back({name, t, 0});
      push_style_rows(f, per_style);
      break;
    case EvalTask::ImagePrompt:
      f.push_back({"reference match", headline(), 80});
      push_style_rows(f, per_style);
      break;
    case EvalTask::ImagePromptText:
      f.push_back({"change honoured", change, 70});
      f.push_back({"others kept", objects_and_count(score), 0});
      break;
    case EvalTask::Style: {
      f.push_back({"style recognised", score.style, 90});
      world::Tally content = described();  // the caption's attributes other than the style
      content.correct -= score.style.correct;
      content.total -= score.style.total;
      f.push_back({"content", content, 80});
      push_style_rows(f, per_style);
      break;
    }
    case EvalTask::Skeleton:
      f.push_back({"PCK@0.1 adapter", score.joints, 80});
      if (has_baseline) f.push_back({"PCK@0.1 without", baseline.joints, 0});
      f.push_back({"limbs adapter", score.limb_joints, 0});
      if (has_baseline) f.push_back({"limbs without", baseline.limb_joints, 0});
      break;
    case EvalTask::Autoencoder:
      f.push_back({"round trip", headline(), 0});
      push_style_rows(f, per_style);
      break;
  }
  return f;
}

DiffusionEvalResult eval_diffusion(const DiffusionEvalOptions& o, const EvalGenerator& generate_image) {
  const std::vector<uint64_t> seeds = eval_scene_seeds(o);
  const int n = static_cast<int>(seeds.size());
  const std::string stage = std::string("eval ") + eval_task_name(o.task);
  DiffusionEvalResult r;
  r.task = o.task;
  r.has_baseline = o.task == EvalTask::Skeleton && o.skeleton_baseline;
  for (world::Style s : world::all_styles()) r.per_style.emplace_back(world::name(s), world::Tally());
  if (o.task == EvalTask::TextToImage)
    for (const char* g : {"seen templates", "unseen templates", "1 object", "2 objects", "3 objects", "with a figure",
                          "no figure"})
      r.per_group.emplace_back(g, world::Tally());
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) {
    o.progress.check_cancel();
    const EvalPrompt it = make_eval_prompt(o, i, seeds[i]);
    const Image img = generate_image(it, false);
    const world::AnalyzedScene analyzed = world::analyze_image(img);
    const world::SceneScore sc = score_item(it, analyzed);
    world::Tally change;
    if (o.task == EvalTask::ImagePromptText) change = score_change(it, analyzed);
    r.score += sc;
    r.change += change;
    // Styles are all_styles()' order; a task that does not score the style adds nothing.
    r.per_style[static_cast<size_t>(it.target.style)].second += sc.style;
    if (r.has_baseline) {
      const Image base = generate_image(it, true);
      r.baseline += score_item(it, world::analyze_image(base));
      r.baseline_images.push_back(base);
    }
    r.prompts.push_back(it.params.prompt);
    r.scene_seeds.push_back(seeds[i]);
    r.item_scores.push_back(headline_of(o.task, sc, change));
    if (o.task == EvalTask::TextToImage) {  // per_group's order: templates, objects, figure
      const world::Tally& t = r.item_scores.back();
      r.per_group[it.described.held_out_template ? 1 : 0].second += t;
      const size_t objects = it.described.mentions.size();
      if (objects >= 1 && objects <= 3) r.per_group[1 + objects].second += t;
      r.per_group[it.described.figure ? 5 : 6].second += t;
    }
    r.images.push_back(img);
    if (it.reference.width > 0) r.references.push_back(it.reference);
    if (o.log) {
      const world::Tally& t = r.item_scores.back();
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      o.log("[" + stage + "] " + std::to_string(i + 1) + "/" + std::to_string(n) + "  " + std::to_string(t.correct) +
            "/" + std::to_string(t.total) + "  " + eta_text(elapsed, i + 1, n) + "  " +
            (it.params.prompt.empty() ? "(image prompt only)" : it.params.prompt));
    }
    o.progress.report(i + 1, n, stage);
  }
  const double images = static_cast<double>(r.images.size() + r.baseline_images.size());
  r.seconds_per_image = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / images;
  return r;
}

DiffusionEvalResult eval_diffusion(SdModel& model, const DiffusionEvalOptions& o) {
  if (o.n < 1) throw ConfigError("eval: --n must be at least 1, got " + std::to_string(o.n));
  require_adapters(model, o);
  return eval_diffusion(o, [&model, task = o.task](const EvalPrompt& prompt, bool baseline) {
    if (task == EvalTask::Autoencoder) {
      // vae: the render's mean latent, decoded (no noise: the autoencoder's own loss).
      torch::NoGradGuard no_grad;
      const at::Tensor pixels = image_to_tensor(prompt.reference).to(model.device);
      return to_images(model.vae->decode(model.vae->encode(pixels).mean)).at(0);
    }
    GenerationParams p = prompt.params;
    if (baseline) {  // the skeleton task's run without the adapter
      p.skeleton.reset();
      p.skeleton_name.clear();
    }
    return generate(model, p).at(0).image;
  });
}

DiffusionEvalResult eval_text_to_image(SdModel& model, const DiffusionEvalOptions& options) {
  DiffusionEvalOptions o = options;
  o.task = EvalTask::TextToImage;
  return eval_diffusion(model, o);
}

std::string format_eval_table(const DiffusionEvalResult& r) {
  std::string out = std::string("task: ") + eval_task_name(r.task) + " (" + info(r.task).what + ")\n";
  out += world::format_score_table(r.score);
  char buf[200];
  for (const EvalFigure& f : r.figures()) {
    const int len = std::snprintf(buf, sizeof buf, "%-16s %7d / %-7d %7.2f%%", f.name.c_str(), f.tally.correct,
                                  f.tally.total, 100.0 * f.tally.rate());
    out.append(buf, static_cast<size_t>(std::max(0, len)));
    if (f.goal > 0) {
      std::snprintf(buf, sizeof buf, "   goal >= %.0f%%", f.goal);
      out += buf;
    }
    out += "\n";
  }
  const size_t images = r.images.size() + r.baseline_images.size();
  std::snprintf(buf, sizeof buf, "%zu prompts, %zu images, %.2f s per image\n", r.prompts.size(), images,
                r.seconds_per_image);
  out += buf;
  return out;
}

namespace {

Json tally_json(const world::Tally& t) {
  return {{"correct", t.correct}, {"total", t.total}, {"rate", t.rate()}};
}

Json score_json(const world::SceneScore& s) {
  const std::pair<const char*, const world::Tally*> rows[] = {
      {"color", &s.color},   {"shape", &s.shape},         {"size", &s.size},     {"position", &s.position},
      {"count", &s.count},   {"style", &s.style},         {"background", &s.background},
      {"figure", &s.figure}, {"figure_color", &s.figure_color}, {"arms", &s.arms}, {"legs", &s.legs},
      {"joints_pck", &s.joints}, {"limb_joints_pck", &s.limb_joints}};
  Json j = Json::object();
  for (const auto& [name, t] : rows)
    if (t->total) j[name] = tally_json(*t);
  j["objects"] = tally_json(s.object_attributes());
  j["described"] = tally_json(described_of(s));
  return j;
}

}  // namespace

Json eval_result_json(const DiffusionEvalResult& r, const DiffusionEvalOptions& o) {
  Json j;
  j["task"] = eval_task_name(r.task);
  j["description"] = info(r.task).what;
  j["options"] = {{"n", o.n},
                  {"scene_seed", o.base_seed},
                  {"seed", o.seed},
                  {"sampler", o.sampler},
                  {"steps", o.steps},
                  {"cfg", o.cfg_scale},
                  {"size", o.resolution}};
  switch (r.task) {
    case EvalTask::TextToImage: j["options"]["style_fraction"] = o.style_fraction; break;
    case EvalTask::ImagePrompt:
    case EvalTask::ImagePromptText:
      j["options"]["ip_scale"] = ip_scale(o);
      j["options"]["ip_preset"] = o.ip_preset;
      break;
    case EvalTask::Style: j["options"]["style_strength"] = o.style_strength; break;
    case EvalTask::Skeleton:
      j["options"]["skeleton_scale"] = o.skeleton_scale;
      j["options"]["pose_in_prompt"] = o.pose_in_prompt;
      break;
    case EvalTask::Autoencoder: break;
  }
  Json head = tally_json(r.headline());
  head["name"] = r.figures().front().name;
  head["goal"] = r.figures().front().goal;
  j["headline"] = head;
  j["figures"] = Json::array();
  for (const EvalFigure& f : r.figures()) {
    Json x = tally_json(f.tally);
    x["name"] = f.name;
    if (f.goal > 0) x["goal"] = f.goal;
    j["figures"].push_back(x);
  }
  j["score"] = score_json(r.score);
  if (r.has_baseline) j["baseline"] = score_json(r.baseline);
  j["seconds_per_image"] = r.seconds_per_image;
  j["items"] = Json::array();
  for (size_t i = 0; i < r.prompts.size(); ++i)
    j["items"].push_back({{"index", i},
                          {"scene_seed", r.scene_seeds[i]},
                          {"seed", o.seed + i},
                          {"prompt", r.prompts[i]},
                          {"correct", r.item_scores[i].correct},
                          {"total", r.item_scores[i].total}});
  return j;
}

Image contact_sheet(const std::vector<Image>& images, int columns, uint8_t gap) {
  if (images.empty()) return Image();
  const int w = images[0].width, h = images[0].height, g = 2;
  const int cols = std::max(1, std::min(columns, static_cast<int>(images.size())));
  const int rows = (static_cast<int>(images.size()) + cols - 1) / cols;
  Image sheet(cols * w + (cols + 1) * g, rows * h + (rows + 1) * g, 3);
  std::fill(sheet.pixels.begin(), sheet.pixels.end(), gap);
  for (size_t k = 0; k < images.size(); ++k) {
    const Image& im = images[k];
    if (im.width != w || im.height != h || im.channels != 3)
      throw ShapeError("contact sheet: image " + std::to_string(k) + " is not " + std::to_string(w) + "x" +
                       std::to_string(h) + " RGB");
    const int x0 = g + static_cast<int>(k % cols) * (w + g), y0 = g + static_cast<int>(k / cols) * (h + g);
    for (int y = 0; y < h; ++y) std::copy(im.row(y), im.row(y) + im.row_bytes(), sheet.row(y0 + y) + x0 * 3);
  }
  return sheet;
}

Image eval_contact_sheet(const DiffusionEvalResult& r, int columns) {
  const bool refs = r.references.size() == r.images.size() && !r.references.empty();
  const bool base = r.baseline_images.size() == r.images.size() && !r.baseline_images.empty();
  const int group = 1 + refs + base;
  std::vector<Image> flat;
  for (size_t i = 0; i < r.images.size(); ++i) {
    if (refs) flat.push_back(r.references[i]);
    flat.push_back(r.images[i]);
    if (base) flat.push_back(r.baseline_images[i]);
  }
  return contact_sheet(flat, std::max(1, columns / group) * group);
}

}  // namespace iris
