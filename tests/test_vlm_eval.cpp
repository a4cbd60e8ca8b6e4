// `iris eval vlm` (pipelines/vlm_eval.h):
//  * the metrics on hand-made inputs: answer normalisation, POPE's yes/no reading and its
//    figures (checked by hand), the CHAIR mention parser and counts;
//  * the plan: held-out scenes only, enough short questions, every scene's POPE probes;
//  * the loop with stand-in answerers (an oracle scores 100%, "always yes" the POPE way);
//  * end to end on a tiny random LLaVA folder, through the library and the CLI, and the CLI's
//    errors (missing model folder, bad --questions).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "core/error.h"
#include "core/json_util.h"
#include "pipelines/random_model.h"
#include "pipelines/vlm_eval.h"
#include "pipelines/vqa.h"
#include "tests/test_util.h"
#include "world/captions.h"
#include "world/render.h"

namespace fs = std::filesystem;
using namespace iris;
using world::Color;
using world::Shape;
using world::Size;

namespace {

world::Scene scene_of(std::vector<world::Object> objects, std::optional<Color> figure = std::nullopt) {
  world::Scene s;
  s.objects = std::move(objects);
  if (figure) {
    world::Figure f;
    f.color = *figure;
    s.figure = f;
  }
  return s;
}

world::Object object(Color c, Shape sh, Size z = Size::Medium, int cell = 4) {
  world::Object o;
  o.color = c;
  o.shape = sh;
  o.size = z;
  o.cell = cell;
  return o;
}

ChairCounts chair_of(const world::Scene& s, const std::string& text) {
  return chair_counts(s, parse_object_mentions(text));
}

VlmEvalOptions small_options() {
  VlmEvalOptions o;
  o.questions = 8;
  o.describe = 2;
  o.per_scene = 4;
  o.short_max_new_tokens = 4;
  o.describe_max_new_tokens = 12;
  return o;
}

std::string key_of(const std::string& question, const Image& image) {
  return question + "|" + std::string(image.pixels.begin(), image.pixels.end());
}

std::string slurp(const std::string& p) {
  std::ifstream f(p);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(line);
  return out;
}

std::string tiny_llava(const std::string& name) {
  const std::string dir = testing_util::scratch(name);
  RandomLlavaSpec spec = tiny_llava_spec();
  spec.seed = 5;
  write_random_llava(dir, spec);
  return dir;
}

}  // namespace

// ---- Single answers ----------------------------------------------------------------------------

TEST(VlmEvalMetrics, NormalisationLowercasesTrimsCollapsesAndStripsTrailingPunctuation) {
  EXPECT_EQ(normalize_answer("  The Red\t circle. "), "the red circle");
  EXPECT_EQ(normalize_answer("Yes!?"), "yes");
  EXPECT_EQ(normalize_answer("top   left ;"), "top left");
  EXPECT_EQ(normalize_answer(""), "");
  EXPECT_EQ(normalize_answer(" ...\n"), "");
  EXPECT_EQ(normalize_answer("e.g. red"), "e.g. red");  // only trailing punctuation goes
  EXPECT_TRUE(answers_match("Two.", "two"));
  EXPECT_TRUE(answers_match("the red circle and\nthe blue square", "the red circle and the blue square"));
  EXPECT_FALSE(answers_match("twenty", "two"));
  EXPECT_FALSE(answers_match("red circle", "the red circle"));
}

TEST(VlmEvalMetrics, PopeReadsTheFirstSentence) {
  EXPECT_TRUE(pope_reads_yes("Yes"));
  EXPECT_TRUE(pope_reads_yes("yes, there is."));
  EXPECT_FALSE(pope_reads_yes("No."));
  EXPECT_FALSE(pope_reads_yes("There is not a red circle"));
  EXPECT_TRUE(pope_reads_yes("Yes. There is no blue square."));  // only the first sentence counts
  EXPECT_TRUE(pope_reads_yes("nothing"));                       // "nothing" is not the word "no"
  EXPECT_TRUE(pope_reads_yes("circle"));                        // neither: yes, as POPE counts it...
  EXPECT_FALSE(pope_answer_is_clear("circle"));                 // ...but flagged unclear
  EXPECT_TRUE(pope_answer_is_clear("No"));
}

TEST(VlmEvalMetrics, PopeFiguresByHand) {
  // truth yes x5: answers yes, yes, yes, no, "blue" (read yes) -> tp 4, fn 1
  // truth no  x4: answers yes, no, no, no                      -> fp 1, tn 3
  PopeCounts p;
  for (const char* a : {"yes", "Yes.", "yes", "no", "blue"}) p.add(true, a);
  for (const char* a : {"yes", "no", "No", "not there"}) p.add(false, a);
  EXPECT_EQ(p.tp, 4);
  EXPECT_EQ(p.fn, 1);
  EXPECT_EQ(p.fp, 1);
  EXPECT_EQ(p.tn, 3);
  EXPECT_EQ(p.unclear, 1);
  EXPECT_DOUBLE_EQ(p.accuracy(), 7.0 / 9);
  EXPECT_DOUBLE_EQ(p.precision(), 0.8);
  EXPECT_DOUBLE_EQ(p.recall(), 0.8);
  EXPECT_NEAR(p.f1(), 0.8, 1e-12);
  EXPECT_DOUBLE_EQ(p.yes_ratio(), 5.0 / 9);
  // Uneven: tp 3, fp 1, tn 2, fn 2 -> precision 0.75, recall 0.6, F1 = 2*0.45/1.35 = 2/3.
  PopeCounts q;
  for (const char* a : {"yes", "yes", "yes", "no", "no"}) q.add(true, a);
  for (const char* a : {"yes", "no", "no"}) q.add(false, a);
  EXPECT_DOUBLE_EQ(q.precision(), 0.75);
  EXPECT_DOUBLE_EQ(q.recall(), 0.6);
  EXPECT_NEAR(q.f1(), 2.0 / 3, 1e-12);
  EXPECT_DOUBLE_EQ(q.accuracy(), 5.0 / 8);
  EXPECT_DOUBLE_EQ(q.yes_ratio(), 0.5);
  // Nothing answered yes: precision and F1 are 0, not NaN.
  PopeCounts none;
  none.add(true, "no");
  EXPECT_EQ(none.precision(), 0.0);
  EXPECT_EQ(none.f1(), 0.0);
  EXPECT_EQ(PopeCounts().accuracy(), 0.0);
}

// ---- CHAIR -------------------------------------------------------------------------------------

TEST(VlmEvalChair, ParserReadsColourSizeShapeAndFigures) {
  const auto m = parse_object_mentions(
      "The image shows a small red circle at the top left, two Blue squares, a triangle and a green stick "
      "figure raising its left arm on a gray background. A red large diamond.");
  ASSERT_EQ(m.size(), 5u);
  EXPECT_EQ(m[0].phrase, "small red circle");
  EXPECT_EQ(m[0].color, Color::Red);
  EXPECT_EQ(m[0].size, Size::Small);
  EXPECT_EQ(m[0].shape, Shape::Circle);
  EXPECT_EQ(m[1].phrase, "blue squares");
  EXPECT_EQ(m[1].shape, Shape::Square);
  EXPECT_FALSE(m[1].size.has_value());
  EXPECT_EQ(m[2].phrase, "triangle");  // a bare shape: no colour
  EXPECT_FALSE(m[2].color.has_value());
  EXPECT_TRUE(m[3].figure);
  EXPECT_EQ(m[3].color, Color::Green);
  EXPECT_EQ(m[3].phrase, "green stick figure");
  EXPECT_EQ(m[4].phrase, "red large diamond");  // size after the colour
  EXPECT_EQ(m[4].size, Size::Large);
  // Colours without a shape noun, positions, the background: no mentions.
  EXPECT_TRUE(parse_object_mentions("A red object at the top left on a gray gradient background.").empty());
  EXPECT_TRUE(parse_object_mentions("").empty());
}

TEST(VlmEvalChair, HallucinationsAndRecallOnHandMadeSentences) {
  const world::Scene s =
      scene_of({object(Color::Red, Shape::Circle, Size::Small), object(Color::Blue, Shape::Square, Size::Large)},
               Color::Green);
  // Faithful: 3 mentions, nothing invented, all 3 things named.
  ChairCounts c = chair_of(s, "A small red circle, a large blue square and a green stick figure.");
  EXPECT_EQ(c.mentions, 3);
  EXPECT_EQ(c.hallucinated, 0);
  EXPECT_EQ(c.objects, 3);
  EXPECT_EQ(c.recalled, 3);
  // A yellow triangle and a purple stick figure are not there; the square is left out.
  c = chair_of(s, "A red circle, a yellow triangle and a purple stick figure.");
  EXPECT_EQ(c.mentions, 3);
  EXPECT_EQ(c.hallucinated, 2);
  EXPECT_EQ(c.recalled, 1);
  // Right colour, wrong shape; wrong size is only a size error.
  c = chair_of(s, "A red square and a large red circle.");
  EXPECT_EQ(c.hallucinated, 1);
  EXPECT_EQ(c.size_errors, 1);
  EXPECT_EQ(c.recalled, 1);
  // A bare shape counts when any object has it, but recalls nothing.
  c = chair_of(s, "There is a circle and a diamond.");
  EXPECT_EQ(c.mentions, 2);
  EXPECT_EQ(c.hallucinated, 1);
  EXPECT_EQ(c.recalled, 0);
  // A stick figure where there is none.
  c = chair_of(scene_of({object(Color::Red, Shape::Circle)}), "A red circle and a stick figure.");
  EXPECT_EQ(c.hallucinated, 1);
  EXPECT_EQ(c.objects, 1);

  ChairTally t;
  t.add(chair_of(s, "A small red circle."), 4);
  t.add(chair_of(s, "A yellow triangle and a blue square."), 7);
  EXPECT_EQ(t.descriptions, 2);
  EXPECT_EQ(t.with_hallucination, 1);
  EXPECT_DOUBLE_EQ(t.chair_i(), 1.0 / 3);
  EXPECT_DOUBLE_EQ(t.chair_s(), 0.5);
  EXPECT_DOUBLE_EQ(t.recall(), 2.0 / 6);
  EXPECT_DOUBLE_EQ(t.mean_words(), 5.5);
}

// The world's own descriptions are faithful and complete; another scene's are not.
TEST(VlmEvalChair, WorldDescriptionsScoreZeroHallucinationsAndFullRecall) {
  int hallucinated_elsewhere = 0;
  for (uint64_t seed = 0; seed < 300; ++seed) {
    const world::Scene s = world::sample_scene(seed), other = world::sample_scene(seed + 1000);
    world::Rng rng(seed);
    const std::string d = world::describe_scene(s, rng, /*allow_held_out_templates=*/true);
    const ChairCounts c = chair_of(s, d);
    ASSERT_EQ(c.hallucinated, 0) << d;
    ASSERT_EQ(c.size_errors, 0) << d;
    ASSERT_EQ(c.recalled, c.objects) << d;
    ASSERT_EQ(c.mentions, c.objects) << d;
    hallucinated_elsewhere += chair_of(other, d).hallucinated > 0;
  }
  EXPECT_GT(hallucinated_elsewhere, 200);
}

// ---- Plan and loop -----------------------------------------------------------------------------

TEST(VlmEvalPlan, HeldOutScenesEnoughQuestionsAndEveryProbe) {
  VlmEvalOptions o = small_options();
  o.questions = 30;
  o.describe = 3;
  const VlmEvalPlan p = plan_vlm_eval(o);
  EXPECT_GE(p.short_questions, 30);
  EXPECT_LT(p.short_questions, 30 + o.per_scene);
  EXPECT_EQ(p.descriptions, 3);
  EXPECT_GE(p.scenes.size(), 30u / o.per_scene);
  int positives = 0, short_q = 0;
  std::map<size_t, int> per_scene;
  for (const VlmEvalItem& it : p.items) {
    EXPECT_EQ(world::scene_split(p.scenes[it.scene]), world::Split::HeldOut);
    if (it.question.kind == "exists") positives += it.question.pope == "positive";
    else if (it.question.kind != "describe") ++short_q, ++per_scene[it.scene];
    EXPECT_EQ(it.max_new_tokens, it.question.kind == "describe" ? 12 : 4);
  }
  EXPECT_EQ(short_q, p.short_questions);
  EXPECT_EQ(positives, static_cast<int>(p.scenes.size()));  // one positive probe per scene
  for (const auto& [scene, n] : per_scene) EXPECT_LE(n, o.per_scene);
  // Deterministic, and a prefix of a larger plan's scenes.
  const VlmEvalPlan again = plan_vlm_eval(o);
  ASSERT_EQ(again.items.size(), p.items.size());
  for (size_t i = 0; i < p.items.size(); ++i) EXPECT_EQ(again.items[i].question.question, p.items[i].question.question);
  o.questions = 60;
  const VlmEvalPlan bigger = plan_vlm_eval(o);
  for (size_t k = 0; k < p.scenes.size(); ++k) EXPECT_EQ(bigger.scenes[k].seed, p.scenes[k].seed);
  // Other base seeds give other scenes.
  o.base_seed = 99;
  EXPECT_NE(plan_vlm_eval(o).scenes[0].seed, p.scenes[0].seed);
}

TEST(VlmEvalPlan, BadOptionsAreConfigErrors) {
  auto expect_bad = [](VlmEvalOptions o, const std::string& flag) {
    try {
      plan_vlm_eval(o);
      ADD_FAILURE() << "no error for " << flag;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(flag), std::string::npos) << e.what();
    }
  };
  VlmEvalOptions o = small_options();
  o.questions = -1;
  expect_bad(o, "--questions");
  o = small_options();
  o.per_scene = 0;
  expect_bad(o, "--per-scene");
  o = small_options();
  o.describe_max_new_tokens = 0;
  expect_bad(o, "--describe-max-new-tokens");
  o = small_options();
  o.questions = o.describe = 0;
  expect_bad(o, "nothing to ask");
}

TEST(VlmEvalRun, AnOracleScoresPerfectlyAndAlwaysYesScoresLikePope) {
  const VlmEvalOptions o = small_options();
  // The oracle knows each (question, image)'s answer (with noise normalisation must absorb).
  std::map<std::string, std::string> truth;
  const VlmEvalPlan plan = plan_vlm_eval(o);
  for (const VlmEvalItem& it : plan.items) {
    const std::string a = it.question.answer;
    truth[key_of(it.question.question, world::render_scene(plan.scenes[it.scene]))] =
        it.question.kind == "describe" ? a : "  " + std::string(1, static_cast<char>(std::toupper(a[0]))) + a.substr(1) + ".";
  }
  int calls = 0;
  const VlmEvalResult r = run_vlm_eval(
      [&](const std::string& q, const Image& img, int64_t) {
        ++calls;
        return truth.at(key_of(q, img));
      },
      o);
  EXPECT_EQ(calls, static_cast<int>(plan.items.size()));
  EXPECT_EQ(r.short_answers.total, plan.short_questions);
  EXPECT_EQ(r.short_answers.correct, r.short_answers.total);
  int by_kind = 0;
  for (const auto& [kind, t] : r.by_kind) by_kind += t.total;
  EXPECT_EQ(by_kind, r.short_answers.total);
  EXPECT_EQ(r.seen_templates.total + r.held_out_templates.total, r.short_answers.total);
  for (const char* split : {"random", "popular", "adversarial", "all"}) {
    EXPECT_DOUBLE_EQ(r.pope.at(split).f1(), 1.0) << split;
    EXPECT_EQ(r.pope.at(split).tp, static_cast<int>(plan.scenes.size())) << split;  // positives shared
  }
  EXPECT_EQ(r.pope.at("all").total(), plan.pope_probes);
  EXPECT_EQ(r.chair.descriptions, 2);
  EXPECT_EQ(r.chair.hallucinated, 0);
  EXPECT_DOUBLE_EQ(r.chair.recall(), 1.0);

  // "Yes" to everything: POPE recall 1, yes-ratio 1, precision = positives / probes.
  const VlmEvalResult y = run_vlm_eval([](const std::string&, const Image&, int64_t) { return "Yes"; }, o);
  const PopeCounts& p = y.pope.at("random");
  EXPECT_DOUBLE_EQ(p.recall(), 1.0);
  EXPECT_DOUBLE_EQ(p.yes_ratio(), 1.0);
  EXPECT_EQ(p.tn, 0);
  EXPECT_DOUBLE_EQ(p.precision(), static_cast<double>(p.tp) / p.total());
  EXPECT_LT(y.short_answers.rate(), 0.5);
  EXPECT_EQ(y.chair.mentions, 0);

  // Cancelled before the first answer.
  VlmEvalOptions c = o;
  c.progress.should_cancel = [] { return true; };
  EXPECT_THROW(run_vlm_eval([](const std::string&, const Image&, int64_t) { return ""; }, c), Cancelled);
}

TEST(VlmEvalRun, ScoresHandMadeRecords) {
  auto rec = [](const char* kind, const char* expected, const char* got, const char* pope = "") {
    VlmEvalRecord r;
    r.kind = kind;
    r.expected = expected;
    r.got = got;
    r.pope = pope;
    return r;
  };
  std::vector<VlmEvalRecord> v = {rec("color", "red", "Red."),
                                  rec("color", "red", "blue"),
                                  rec("count", "two", "two"),
                                  rec("exists", "yes", "yes", "positive"),
                                  rec("exists", "yes", "no", "positive"),
                                  rec("exists", "no", "yes", "random"),
                                  rec("exists", "no", "no", "adversarial")};
  v[1].held_out_template = true;
  const VlmEvalResult r = score_vlm_records(v, 2);
  EXPECT_EQ(r.short_answers.correct, 2);
  EXPECT_EQ(r.short_answers.total, 3);
  EXPECT_EQ(r.by_kind.at("color").correct, 1);
  EXPECT_EQ(r.held_out_templates.total, 1);
  EXPECT_EQ(r.held_out_templates.correct, 0);
  // random: 2 shared positives (1 tp, 1 fn) + 1 negative answered yes (fp).
  const PopeCounts& rnd = r.pope.at("random");
  EXPECT_EQ(rnd.tp, 1);
  EXPECT_EQ(rnd.fn, 1);
  EXPECT_EQ(rnd.fp, 1);
  EXPECT_EQ(rnd.tn, 0);
  EXPECT_DOUBLE_EQ(rnd.f1(), 0.5);
  // popular: the positives only; adversarial: + a true negative.
  EXPECT_EQ(r.pope.at("popular").total(), 2);
  EXPECT_EQ(r.pope.at("adversarial").tn, 1);
  EXPECT_EQ(r.pope.at("all").total(), 4);
}

// ---- End to end --------------------------------------------------------------------------------

TEST(VlmEvalEndToEnd, TinyRandomLlavaGivesAWellFormedReport) {
  VqaModel m = VqaModel::load(tiny_llava("llava"));
  const VlmEvalOptions o = small_options();
  int steps = 0;
  VlmEvalOptions counted = o;
  counted.progress.on_step = [&](int s, int t, const std::string& stage) {
    EXPECT_EQ(stage, "eval vlm");
    EXPECT_EQ(s, ++steps);
    EXPECT_GE(t, s);
  };
  const VlmEvalResult r = run_vlm_eval(greedy_vqa_answerer(m), counted);
  const VlmEvalPlan plan = plan_vlm_eval(o);
  EXPECT_EQ(steps, static_cast<int>(plan.items.size()));
  EXPECT_EQ(r.records.size(), plan.items.size());
  EXPECT_EQ(r.short_answers.total, plan.short_questions);
  EXPECT_EQ(r.chair.descriptions, 2);
  EXPECT_GT(r.chair.words, 0) << "the random model should say something";

  const std::string table = format_vlm_eval_table(r, o);
  for (const char* s : {"short answers", "held-out templates", "random", "popular", "adversarial", "CHAIR_I", "CHAIR_S"})
    EXPECT_NE(table.find(s), std::string::npos) << s << "\n" << table;
  const Json j = parse_json(vlm_eval_json(r, o).dump(), "report");
  EXPECT_EQ(j["short"]["all"]["total"].get<int>(), plan.short_questions);
  for (const char* split : {"random", "popular", "adversarial", "all"})
    for (const char* k : {"accuracy", "precision", "recall", "f1", "yes_ratio"}) EXPECT_TRUE(j["pope"][split][k].is_number());
  EXPECT_TRUE(j["describe"]["chair_i"].is_number());
  const std::vector<std::string> lines = lines_of(vlm_eval_samples_jsonl(r));
  ASSERT_EQ(lines.size(), r.records.size());
  const Json first = parse_json(lines[0], "sample");
  for (const char* k : {"seed", "question", "expected", "got", "correct"}) EXPECT_TRUE(first.contains(k)) << k;

  // Greedy: the same run gives the same answers.
  const VlmEvalResult again = run_vlm_eval(greedy_vqa_answerer(m), o);
  for (size_t i = 0; i < r.records.size(); ++i) EXPECT_EQ(again.records[i].got, r.records[i].got);
}

#ifdef IRIS_CLI
namespace {
struct CliRun {
  int code;
  std::string out, err;
};
CliRun run_cli(const std::string& args) {
  const std::string out = testing_util::scratch("cli.out"), err = testing_util::scratch("cli.err");
  const int status = std::system((std::string(IRIS_CLI) + " " + args + " >" + out + " 2>" + err).c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
}
}  // namespace

TEST(VlmEvalCli, WritesTableJsonAndSamples) {
  const std::string model = tiny_llava("llava"), json = testing_util::scratch("eval.json"),
                    samples = testing_util::scratch("samples.jsonl");
  const CliRun r = run_cli("eval vlm --model " + model + " --questions 3 --describe 1 --per-scene 3 --max-new-tokens 3 "
                        "--describe-max-new-tokens 6 --threads 1 --json " + json + " --samples " + samples);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("CHAIR_I"), std::string::npos) << r.out;
  const Json j = read_json_file(json);
  EXPECT_EQ(j["model"].get<std::string>(), model);
  EXPECT_GE(j["short"]["all"]["total"].get<int>(), 3);
  EXPECT_EQ(j["describe"]["descriptions"].get<int>(), 1);
  EXPECT_EQ(lines_of(slurp(samples)).size(), j["answers"].get<size_t>());
}

TEST(VlmEvalCli, MissingModelFolderIsNamed) {
  const CliRun r = run_cli("eval vlm --model /nonexistent/vlm --questions 5");
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find("/nonexistent/vlm"), std::string::npos) << r.err;
}

TEST(VlmEvalCli, BadQuestionsFailsBeforeTheModelLoads) {
  // The folder does not exist either: the option's error comes first.
  const CliRun r = run_cli("eval vlm --model /nonexistent/vlm --questions -4");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--questions -4"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("/nonexistent/vlm"), std::string::npos) << r.err;
}
#endif
