// `iris eval diffusion` and its adapter tasks: the scoring on hand-made cases (renders of the
// targets score ~100%, images that ignore the request score low), every task end to end on a
// tiny random pipeline with all three adapters, the table / JSON / contact sheet, and the
// error paths (missing adapter, unknown task, missing file).
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include "core/error.h"
#include "pipelines/diffusion_eval.h"
#include "pipelines/random_model.h"
#include "tests/test_util.h"
#include "world/render.h"

namespace fs = std::filesystem;
using namespace iris;
using iris::testing_util::scratch;
using iris::testing_util::expect_error;
using iris::testing_util::scratch_dir;

namespace {

const std::string kTokenizer = std::string(IRIS_FIXTURES_DIR) + "/data/clip_tokenizer";

struct TinyPack {
  std::string dir, ip, style, sk;
};

// A tiny random pipeline with an IP-Adapter, a style adapter whose bank has every Tinyworld
// style (also exported as styles/<name>.safetensors) and an SK-Adapter; made once per process.
const TinyPack& tiny_pack() {
  static const TinyPack pack = [] {
    TinyPack p;
    p.dir = (fs::temp_directory_path() / ("iris_eval_sd_" + std::to_string(getpid()))).string();
    write_random_sd_pipeline(p.dir, tiny_sd_spec(kTokenizer, true));
    p.ip = p.dir + "/ip-adapter.safetensors";
    p.style = p.dir + "/style-adapter.safetensors";
    p.sk = p.dir + "/sk-adapter.safetensors";
    SdModel plain = SdModel::load(p.dir);
    std::vector<std::string> styles;
    for (world::Style s : world::all_styles()) styles.push_back(world::name(s));
    StyleAdapter style = make_style_adapter(plain.unet, styles);
    save_style_adapter(style, p.style);
    export_bank_styles(style, p.dir + "/styles");
    SkeletonAdapter sk = make_skeleton_adapter(plain.unet, default_joint_types());
    save_skeleton_adapter(sk, p.sk);
    return p;
  }();
  return pack;
}

SdModel& tiny_model() {
  static SdModel model = [] {
    SdLoadOptions lo;
    lo.ip_adapter = tiny_pack().ip;
    lo.style_adapter = tiny_pack().style;
    lo.sk_adapter = tiny_pack().sk;
    return SdModel::load(tiny_pack().dir, lo);
  }();
  return model;
}

DiffusionEvalOptions options(EvalTask task, int n, int resolution = 64) {
  DiffusionEvalOptions o;
  o.task = task;
  o.n = n;
  o.steps = 2;
  o.resolution = resolution;
  return o;
}

// A perfect generator: the target scene rendered.
Image render_target(const EvalPrompt& p, bool) { return world::render_scene(p.target); }

// An image with nothing on it.
Image blank(const EvalPrompt& p, bool) {
  Image img(p.params.width, p.params.height, 3);
  std::fill(img.pixels.begin(), img.pixels.end(), uint8_t{128});
  return img;
}

// The target with its stick figure moved `dx` toward the image centre.
world::Scene figure_moved(world::Scene s, double dx) {
  if (!s.figure) return s;
  const double d = s.figure->side == world::Side::Left ? dx : -dx;
  for (world::Joint& j : s.figure->skeleton.joints) j.x += d;
  return s;
}

double rate(const world::Tally& t) { return t.rate(); }

void expect_well_formed(const DiffusionEvalResult& r, const DiffusionEvalOptions& o) {
  const std::string table = format_eval_table(r);
  EXPECT_NE(table.find(std::string("task: ") + eval_task_name(o.task)), std::string::npos) << table;
  EXPECT_NE(table.find("attribute        correct / total"), std::string::npos) << table;
  for (const EvalFigure& f : r.figures()) EXPECT_NE(table.find(f.name), std::string::npos) << f.name << "\n" << table;
  EXPECT_EQ(r.prompts.size(), static_cast<size_t>(o.n));
  EXPECT_EQ(r.images.size(), static_cast<size_t>(o.n));
  const Json j = eval_result_json(r, o);
  EXPECT_EQ(j["task"], eval_task_name(o.task));
  EXPECT_EQ(j["items"].size(), static_cast<size_t>(o.n));
  int correct = 0, total = 0;
  for (const Json& it : j["items"]) correct += it["correct"].get<int>(), total += it["total"].get<int>();
  EXPECT_EQ(j["headline"]["correct"].get<int>(), correct);
  EXPECT_EQ(j["headline"]["total"].get<int>(), total);
  EXPECT_GT(total, 0);
  EXPECT_EQ(j["figures"].size(), r.figures().size());
}

}  // namespace

TEST(DiffusionEval, TaskNames) {
  for (EvalTask t : {EvalTask::TextToImage, EvalTask::ImagePrompt, EvalTask::ImagePromptText, EvalTask::Style,
                     EvalTask::Skeleton, EvalTask::Autoencoder})
    EXPECT_EQ(parse_eval_task(eval_task_name(t)), t);
  expect_error<ConfigError>([] { parse_eval_task("inpaint"); },
                            "\"inpaint\": expected t2i, ip, ip-text, style, skeleton or vae");
  EXPECT_THROW(eval_scene_seeds(options(EvalTask::TextToImage, 0)), ConfigError);
}

TEST(DiffusionEval, PromptsPerTask) {
  // ip: no text; the reference is the target rendered.
  const DiffusionEvalOptions ip = options(EvalTask::ImagePrompt, 4);
  for (uint64_t seed : eval_scene_seeds(ip)) {
    const EvalPrompt p = make_eval_prompt(ip, 0, seed);
    EXPECT_TRUE(p.params.prompt.empty());
    ASSERT_EQ(p.params.image_prompts.size(), 1u);
    EXPECT_EQ(p.params.image_prompts[0].image.pixels, world::render_scene(p.target).pixels);
    EXPECT_DOUBLE_EQ(p.params.image_prompts[0].scale, 1.0);
  }
  // ip-text: exactly one attribute of one object differs from the reference, the text names
  // the changed object, and the four attributes take turns.
  const DiffusionEvalOptions ipt = options(EvalTask::ImagePromptText, 8);
  std::set<ObjectAttribute> kinds;
  int i = 0;
  for (uint64_t seed : eval_scene_seeds(ipt)) {
    const EvalPrompt p = make_eval_prompt(ipt, i++, seed);
    const world::Scene ref = make_eval_prompt(ip, 0, seed).target;
    ASSERT_EQ(ref.objects.size(), p.target.objects.size());
    int diffs = 0;
    for (size_t k = 0; k < ref.objects.size(); ++k) {
      const world::Object &a = ref.objects[k], &b = p.target.objects[k];
      diffs += (a.color != b.color) + (a.shape != b.shape) + (a.size != b.size) + (a.cell != b.cell);
    }
    EXPECT_EQ(diffs, 1) << p.params.prompt;
    const world::Object& o = p.target.objects[p.changed_object];
    EXPECT_NE(p.params.prompt.find(world::name(o.color)), std::string::npos) << p.params.prompt;
    EXPECT_NE(p.params.prompt.find(world::name(o.shape)), std::string::npos) << p.params.prompt;
    EXPECT_DOUBLE_EQ(p.params.image_prompts.at(0).scale, 0.5);
    kinds.insert(p.changed);
  }
  EXPECT_GE(kinds.size(), 3u);
  // style: the styles in turn, no style phrase in the text; skeleton: every scene has a figure.
  const DiffusionEvalOptions st = options(EvalTask::Style, 4);
  i = 0;
  for (uint64_t seed : eval_scene_seeds(st)) {
    const EvalPrompt p = make_eval_prompt(st, i, seed);
    EXPECT_EQ(p.params.style, world::name(world::all_styles()[i++]));
    EXPECT_EQ(p.params.prompt.find("style"), std::string::npos) << p.params.prompt;
  }
  const DiffusionEvalOptions sk = options(EvalTask::Skeleton, 4);
  for (uint64_t seed : eval_scene_seeds(sk)) {
    const EvalPrompt p = make_eval_prompt(sk, 0, seed);
    ASSERT_TRUE(p.target.figure.has_value());
    ASSERT_TRUE(p.params.skeleton.has_value());
    EXPECT_EQ(p.reference.width, 64);
    EXPECT_NE(p.params.prompt.find(" arm"), std::string::npos) << p.params.prompt;
  }
  // --unnamed-pose: the same scenes and skeletons, the prompt without the pose words.
  DiffusionEvalOptions unnamed = sk;
  unnamed.pose_in_prompt = false;
  for (uint64_t seed : eval_scene_seeds(sk)) {
    const EvalPrompt named = make_eval_prompt(sk, 0, seed);
    const EvalPrompt p = make_eval_prompt(unnamed, 0, seed);
    EXPECT_EQ(p.params.skeleton->joints.size(), named.params.skeleton->joints.size());
    EXPECT_EQ(p.params.prompt.find(" arm"), std::string::npos) << p.params.prompt;
    EXPECT_NE(p.params.prompt.find("stick figure"), std::string::npos) << p.params.prompt;
    EXPECT_FALSE(p.described.arms);
  }
}

TEST(DiffusionEval, PckOfHandMadeSkeletons) {
  const world::Skeleton& s = world::default_skeleton_2d();
  std::vector<world::JointEstimate> same, shifted, near;
  for (const world::Joint& j : s.joints) {
    same.push_back({j.x, j.y, true});
    shifted.push_back({j.x + 0.15, j.y, true});
    near.push_back({j.x + 0.05, j.y - 0.05, true});
  }
  EXPECT_DOUBLE_EQ(world::pck(s, same).rate(), 1.0);
  EXPECT_DOUBLE_EQ(world::pck(s, shifted).rate(), 0.0);
  EXPECT_DOUBLE_EQ(world::pck(s, near).rate(), 1.0);  // 0.071 <= 0.1
  EXPECT_DOUBLE_EQ(world::pck(s, {}).rate(), 0.0);    // nothing found
  // Limb joints: the 8 elbows, wrists, knees and ankles. Torso joints right and limbs moved:
  // all-joint PCK 6/14, limb PCK 0.
  std::vector<world::JointEstimate> limbs_moved = same;
  for (size_t i = 0; i < s.joints.size(); ++i) {
    const std::string& type = s.joints[i].type;
    if (type == "elbow" || type == "wrist" || type == "knee" || type == "ankle") limbs_moved[i].x += 0.15;
  }
  EXPECT_EQ(world::pck_limbs(s, same).total, 8);
  EXPECT_DOUBLE_EQ(world::pck_limbs(s, same).rate(), 1.0);
  EXPECT_DOUBLE_EQ(world::pck_limbs(s, limbs_moved).rate(), 0.0);
  EXPECT_EQ(world::pck(s, limbs_moved).correct, 6);
}

TEST(DiffusionEval, RendersOfTheTargetsScoreFullMarksAndWrongImagesDoNot) {
  // t2i, ip and vae: a render of the target is read back; a blank image is not.
  for (EvalTask t : {EvalTask::TextToImage, EvalTask::ImagePrompt, EvalTask::Autoencoder}) {
    const DiffusionEvalOptions o = options(t, 8);
    const DiffusionEvalResult good = eval_diffusion(o, render_target);
    EXPECT_GE(rate(good.headline()), 0.95) << format_eval_table(good);
    expect_well_formed(good, o);
    EXPECT_LE(rate(eval_diffusion(o, blank).headline()), 0.3) << eval_task_name(t);
  }
  // ip-text: the changed target is honoured; echoing the reference keeps everything else but
  // never the change.
  {
    const DiffusionEvalOptions o = options(EvalTask::ImagePromptText, 8);
    const DiffusionEvalResult good = eval_diffusion(o, render_target);
    EXPECT_GE(rate(good.change), 0.95) << format_eval_table(good);
    EXPECT_EQ(good.change.total, 8);
    const DiffusionEvalResult echo =
        eval_diffusion(o, [](const EvalPrompt& p, bool) { return p.reference; });
    EXPECT_EQ(echo.change.correct, 0) << format_eval_table(echo);
    EXPECT_GE(rate(echo.figures().at(1).tally), 0.95) << format_eval_table(echo);  // others kept
    expect_well_formed(echo, o);
  }
  // style: the requested style is recognised; renders always flat are recognised only for flat.
  {
    const DiffusionEvalOptions o = options(EvalTask::Style, 8);
    const DiffusionEvalResult good = eval_diffusion(o, render_target);
    EXPECT_GE(rate(good.score.style), 0.95) << format_eval_table(good);
    const DiffusionEvalResult flat = eval_diffusion(o, [](const EvalPrompt& p, bool) {
      world::Scene s = p.target;
      s.style = world::Style::Flat;
      return world::render_scene(s);
    });
    ASSERT_EQ(flat.per_style.size(), 4u);
    EXPECT_EQ(flat.per_style[0].first, "flat");
    EXPECT_EQ(flat.per_style[0].second.total, 2);
    EXPECT_GE(rate(flat.per_style[0].second), 0.99);
    for (size_t k = 1; k < 4; ++k) EXPECT_LE(rate(flat.per_style[k].second), 0.01) << flat.per_style[k].first;
    EXPECT_GE(rate(flat.figures().at(1).tally), 0.9) << format_eval_table(flat);  // content unchanged
    expect_well_formed(flat, o);
  }
  // skeleton: the figure where the skeleton asks scores ~1; moved by 0.15 (the baseline here) ~0.
  {
    const DiffusionEvalOptions o = options(EvalTask::Skeleton, 6);
    const DiffusionEvalResult r = eval_diffusion(o, [](const EvalPrompt& p, bool baseline) {
      return world::render_scene(baseline ? figure_moved(p.target, 0.15) : p.target);
    });
    EXPECT_GE(rate(r.score.joints), 0.95) << format_eval_table(r);
    EXPECT_LE(rate(r.baseline.joints), 0.1) << format_eval_table(r);
    EXPECT_EQ(r.score.joints.total, 6 * 14);
    EXPECT_EQ(r.score.limb_joints.total, 6 * 8);
    EXPECT_GE(rate(r.score.limb_joints), 0.95) << format_eval_table(r);
    EXPECT_LE(rate(r.baseline.limb_joints), 0.1) << format_eval_table(r);
    EXPECT_EQ(r.baseline_images.size(), 6u);
    expect_well_formed(r, o);
    const std::string table = format_eval_table(r);
    EXPECT_NE(table.find("PCK@0.1 without"), std::string::npos) << table;
  }
}

TEST(DiffusionEval, TextToImageSplitsItsHeadlineByTemplateObjectsAndFigure) {
  // Right renders for prompts in held-out templates only, blank images for the rest: the split
  // shows where the points were lost, and each split adds up to the headline.
  const DiffusionEvalOptions o = options(EvalTask::TextToImage, 24);
  const DiffusionEvalResult r = eval_diffusion(o, [](const EvalPrompt& p, bool b) {
    return p.described.held_out_template ? render_target(p, b) : blank(p, b);
  });
  ASSERT_EQ(r.per_group.size(), 7u);
  const auto group = [&](const std::string& name) {
    for (const auto& [n, t] : r.per_group)
      if (n == name) return t;
    ADD_FAILURE() << "no group " << name;
    return world::Tally();
  };
  const world::Tally seen = group("seen templates"), unseen = group("unseen templates");
  ASSERT_GT(seen.total, 0);
  ASSERT_GT(unseen.total, 0);
  EXPECT_GE(rate(unseen), 0.95) << format_eval_table(r);
  EXPECT_LE(rate(seen), 0.3) << format_eval_table(r);
  const world::Tally all = r.headline();
  EXPECT_EQ(seen.total + unseen.total, all.total);
  EXPECT_EQ(seen.correct + unseen.correct, all.correct);
  EXPECT_EQ(group("with a figure").total + group("no figure").total, all.total);
  int by_objects = 0;
  for (const char* g : {"1 object", "2 objects", "3 objects"}) by_objects += group(g).total;
  EXPECT_LE(by_objects, all.total);  // a figure-only caption names no object
  EXPECT_GT(by_objects, all.total / 2);
  const std::string table = format_eval_table(r);
  EXPECT_NE(table.find("unseen templates"), std::string::npos) << table;
  // Prompts that name a style are tallied by the style they name, and add up to the style row.
  ASSERT_EQ(r.per_style.size(), 4u);
  int styled = 0, styled_right = 0;
  for (const auto& [name, t] : r.per_style) {
    styled += t.total;
    styled_right += t.correct;
  }
  EXPECT_EQ(styled, r.score.style.total);
  EXPECT_EQ(styled_right, r.score.style.correct);
  EXPECT_GT(styled, 0) << "no prompt of 24 named a style";
  // Other tasks have no such split.
  EXPECT_TRUE(eval_diffusion(options(EvalTask::ImagePrompt, 2), render_target).per_group.empty());
}

TEST(DiffusionEval, EveryTaskRunsOnATinyPipeline) {
  SdModel& model = tiny_model();
  for (EvalTask t : {EvalTask::TextToImage, EvalTask::ImagePrompt, EvalTask::ImagePromptText, EvalTask::Style,
                     EvalTask::Skeleton, EvalTask::Autoencoder}) {
    const DiffusionEvalOptions o = options(t, 2, 32);
    int reports = 0;
    DiffusionEvalOptions counted = o;
    counted.progress.on_step = [&](int step, int total, const std::string& stage) {
      ++reports;
      EXPECT_EQ(total, 2);
      EXPECT_LE(step, total);
      EXPECT_EQ(stage, std::string("eval ") + eval_task_name(t));
    };
    const DiffusionEvalResult r = eval_diffusion(model, counted);
    EXPECT_EQ(reports, 2);
    expect_well_formed(r, o);
    EXPECT_EQ(r.images.at(0).width, 32);
    const bool refs = t == EvalTask::ImagePrompt || t == EvalTask::ImagePromptText || t == EvalTask::Skeleton ||
                      t == EvalTask::Autoencoder;
    EXPECT_EQ(r.references.size(), refs ? 2u : 0u) << eval_task_name(t);
    EXPECT_EQ(r.baseline_images.size(), t == EvalTask::Skeleton ? 2u : 0u) << eval_task_name(t);
    const int group = 1 + refs + (t == EvalTask::Skeleton);
    const Image sheet = eval_contact_sheet(r);
    EXPECT_EQ(sheet.width, 2 * group * 32 + (2 * group + 1) * 2) << eval_task_name(t);
    EXPECT_EQ(sheet.height, 32 + 2 * 2);
  }
  // Fixed seeds: the same run gives the same images; the adapter changes the skeleton image.
  const DiffusionEvalOptions o = options(EvalTask::Skeleton, 1, 32);
  const DiffusionEvalResult a = eval_diffusion(model, o), b = eval_diffusion(model, o);
  EXPECT_EQ(a.images[0].pixels, b.images[0].pixels);
  EXPECT_NE(a.images[0].pixels, a.baseline_images[0].pixels);
}

TEST(DiffusionEval, MissingAdaptersNameTheOptionThatLoadsThem) {
  SdModel plain = SdModel::load(tiny_pack().dir);
  const std::pair<EvalTask, const char*> cases[] = {{EvalTask::ImagePrompt, "--ip-adapter"},
                                                    {EvalTask::ImagePromptText, "--ip-adapter"},
                                                    {EvalTask::Style, "--style-adapter"},
                                                    {EvalTask::Skeleton, "--sk-adapter"}};
  for (const auto& [task, option] : cases)
    expect_error<ConfigError>([&, task = task] { eval_diffusion(plain, options(task, 1, 32)); }, option);
  // A style bank without every Tinyworld style (and no styles/ files beside it).
  const std::string path = scratch("style-adapter.safetensors");
  StyleAdapter two = make_style_adapter(plain.unet, {"flat", "outlined"});
  save_style_adapter(two, path);
  SdLoadOptions lo;
  lo.style_adapter = path;
  SdModel partial = SdModel::load(tiny_pack().dir, lo);
  expect_error<ConfigError>([&] { eval_diffusion(partial, options(EvalTask::Style, 1, 32)); }, "\"striped\"");
  // A missing adapter file fails at load time, naming the file.
  SdLoadOptions missing;
  missing.sk_adapter = scratch("nope.safetensors");
  expect_error<Error>([&] { SdModel::load(tiny_pack().dir, missing); }, "nope.safetensors");
}

// ---- the command line ----------------------------------------------------------------------------

namespace {

using iris::testing_util::run_cli;

void expect_one_line_error(const testing_util::CliRun& r, const std::string& what) {
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find(what), std::string::npos) << r.err;
}

}  // namespace

TEST(DiffusionEvalCli, ErrorsAreOneLineAndNameTheCulprit) {
  const std::string model = "eval diffusion --model " + tiny_pack().dir + " --n 1 --steps 1 --size 32";
  expect_one_line_error(run_cli(model + " --task inpaint"), "inpaint");
  expect_one_line_error(run_cli(model + " --task ip"), "--ip-adapter");
  expect_one_line_error(run_cli(model + " --task skeleton --sk-adapter " + scratch("gone.safetensors")),
                        "gone.safetensors");
  expect_one_line_error(run_cli(model + " --task t2i --unnamed-pose"), "--unnamed-pose applies to --task skeleton");
}

TEST(DiffusionEvalCli, StyleTaskWritesTableSheetAndJson) {
  const std::string json = scratch("style.json"), sheet = scratch("style.png");
  const testing_util::CliRun r = run_cli("eval diffusion --model " + tiny_pack().dir + " --style-adapter " + tiny_pack().style +
                            " --task style --n 4 --steps 1 --size 32 --threads 1 --json " + json +
                            " --contact-sheet " + sheet);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("style recognised"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("style pixelated"), std::string::npos) << r.out;
  const Json j = parse_json(testing_util::slurp(json), json);
  EXPECT_EQ(j["task"], "style");
  EXPECT_EQ(j["headline"]["name"], "style recognised");
  EXPECT_EQ(j["headline"]["total"], 4);
  EXPECT_EQ(j["items"].size(), 4u);
  const Image png = load_image(sheet);
  EXPECT_EQ(png.width, 4 * 32 + 5 * 2);
}
