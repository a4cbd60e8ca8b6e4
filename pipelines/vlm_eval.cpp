#include "pipelines/vlm_eval.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>

#include "core/error.h"
#include "pipelines/vqa.h"
#include "world/dataset.h"
#include "world/render.h"

namespace iris {

namespace {

const char* const kPopeSplits[] = {"random", "popular", "adversarial"};

bool is_space(char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }

// Lowercase ASCII words: runs of letters (digits and punctuation split words).
std::vector<std::string> words_of(const std::string& text) {
  std::vector<std::string> out;
  std::string w;
  for (char c : text) {
    if (std::isalpha(static_cast<unsigned char>(c))) {
      w += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    } else if (!w.empty()) {
      out.push_back(std::move(w));
      w.clear();
    }
  }
  if (!w.empty()) out.push_back(std::move(w));
  return out;
}

// The words of the first sentence (up to the first . ! ? or newline).
std::vector<std::string> first_sentence_words(const std::string& answer) {
  const size_t end = answer.find_first_of(".!?\n");
  return words_of(answer.substr(0, end));
}

bool has_word(const std::vector<std::string>& words, const char* w) {
  return std::find(words.begin(), words.end(), w) != words.end();
}

double ratio(double a, double b) { return b > 0 ? a / b : 0.0; }

// Word -> vocabulary entry, built from the world's names (so the parser follows vocab.h).
template <class T>
std::optional<T> lookup(const std::vector<T>& all, const std::string& word) {
  for (T v : all)
    if (word == world::name(v)) return v;
  return std::nullopt;
}
std::optional<world::Shape> shape_word(const std::string& w) {
  for (world::Shape s : world::all_shapes())
    if (w == world::name(s) || w == world::plural(s)) return s;
  return std::nullopt;
}

int word_count(const std::string& text) {
  int n = 0;
  bool in_word = false;
  for (char c : text) {
    if (!is_space(c) && !in_word) ++n;
    in_word = !is_space(c);
  }
  return n;
}

bool is_pope(const VlmEvalRecord& r) { return r.kind == "exists"; }
bool is_describe(const VlmEvalRecord& r) { return r.kind == "describe"; }

}  // namespace

// ---- Single answers ----------------------------------------------------------------------------

std::string normalize_answer(const std::string& text) {
  std::string out;
  bool pending_space = false;
  for (char c : text) {
    if (is_space(c)) {
      pending_space = !out.empty();
      continue;
    }
    if (pending_space) out += ' ';
    pending_space = false;
    out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  while (!out.empty() && (std::string(".,!?;:").find(out.back()) != std::string::npos || out.back() == ' '))
    out.pop_back();
  return out;
}

bool answers_match(const std::string& got, const std::string& expected) {
  return normalize_answer(got) == normalize_answer(expected);
}

bool pope_reads_yes(const std::string& answer) {
  const std::vector<std::string> w = first_sentence_words(answer);
  return !has_word(w, "no") && !has_word(w, "not");
}

bool pope_answer_is_clear(const std::string& answer) {
  const std::vector<std::string> w = first_sentence_words(answer);
  return has_word(w, "yes") || has_word(w, "no") || has_word(w, "not");
}

void PopeCounts::add(bool truth_yes, const std::string& answer) {
  const bool yes = pope_reads_yes(answer);
  if (!pope_answer_is_clear(answer)) ++unclear;
  if (truth_yes) (yes ? tp : fn) += 1;
  else (yes ? fp : tn) += 1;
}

double PopeCounts::accuracy() const { return ratio(tp + tn, total()); }
double PopeCounts::precision() const { return ratio(tp, tp + fp); }
double PopeCounts::recall() const { return ratio(tp, tp + fn); }
double PopeCounts::f1() const {
  const double p = precision(), r = recall();
  return ratio(2 * p * r, p + r);
}
double PopeCounts::yes_ratio() const { return ratio(tp + fp, total()); }

// ---- CHAIR -------------------------------------------------------------------------------------

std::vector<MentionedObject> parse_object_mentions(const std::string& text) {
  const std::vector<std::string> w = words_of(text);
  std::vector<MentionedObject> out;
  size_t free_from = 0;  // words before this belong to an earlier mention
  for (size_t i = 0; i < w.size(); ++i) {
    MentionedObject m;
    size_t noun_end = i + 1;  // one past the noun
    if (w[i] == "stick" && i + 1 < w.size() && (w[i + 1] == "figure" || w[i + 1] == "figures")) {
      m.figure = true;
      noun_end = i + 2;
    } else if (auto s = shape_word(w[i])) {
      m.shape = s;
    } else {
      continue;
    }
    // Modifiers right before the noun: colour and size words, nearest first.
    size_t start = i;
    while (start > free_from) {
      const std::string& prev = w[start - 1];
      const auto c = lookup(world::all_colors(), prev);
      const auto z = m.figure ? std::nullopt : lookup(world::all_sizes(), prev);
      if (c && !m.color) m.color = c;
      else if (z && !m.size) m.size = z;
      else break;
      --start;
    }
    for (size_t k = start; k < noun_end; ++k) m.phrase += (k > start ? " " : "") + w[k];
    out.push_back(std::move(m));
    free_from = noun_end;
    i = noun_end - 1;
  }
  return out;
}

ChairCounts chair_counts(const world::Scene& scene, const std::vector<MentionedObject>& mentions) {
  ChairCounts c;
  c.objects = static_cast<int>(scene.objects.size()) + (scene.figure ? 1 : 0);
  std::vector<bool> recalled(scene.objects.size(), false);
  bool figure_recalled = false;
  for (const MentionedObject& m : mentions) {
    ++c.mentions;
    if (m.figure) {
      const bool there = scene.figure && (!m.color || *m.color == scene.figure->color);
      if (!there) ++c.hallucinated;
      figure_recalled = figure_recalled || there;
      continue;
    }
    bool there = false, size_right = false;
    for (size_t k = 0; k < scene.objects.size(); ++k) {
      const world::Object& o = scene.objects[k];
      if (o.shape != *m.shape || (m.color && *m.color != o.color)) continue;
      there = true;
      size_right = size_right || !m.size || *m.size == o.size;
      if (m.color) recalled[k] = true;
    }
    if (!there) ++c.hallucinated;
    else if (!size_right) ++c.size_errors;
  }
  c.recalled = static_cast<int>(std::count(recalled.begin(), recalled.end(), true)) + (figure_recalled ? 1 : 0);
  return c;
}

void ChairTally::add(const ChairCounts& c, int word_count) {
  ++descriptions;
  with_hallucination += c.hallucinated > 0 ? 1 : 0;
  mentions += c.mentions;
  hallucinated += c.hallucinated;
  size_errors += c.size_errors;
  objects += c.objects;
  recalled += c.recalled;
  words += word_count;
}
double ChairTally::chair_i() const { return ratio(hallucinated, mentions); }
double ChairTally::chair_s() const { return ratio(with_hallucination, descriptions); }
double ChairTally::recall() const { return ratio(recalled, objects); }
double ChairTally::mean_words() const { return ratio(static_cast<double>(words), descriptions); }

// ---- The evaluation ----------------------------------------------------------------------------

VlmAnswerFn greedy_vqa_answerer(VqaModel& model) { return vqa_answerer(model, VqaOptions{}); }

VlmAnswerFn vqa_answerer(VqaModel& model, const VqaOptions& options, VqaTally* tally) {
  return [&model, options, tally](const std::string& question, const Image& image, int64_t max_new_tokens) {
    VqaOptions v = options;
    v.max_new_tokens = max_new_tokens;  // sampling defaults to greedy; EOS ends the answer
    const auto t0 = std::chrono::steady_clock::now();
    const VqaAnswer a = ask(model, image, question, v);
    if (tally) {
      tally->answers += 1;
      tally->generated_tokens += static_cast<int64_t>(a.tokens.size());
      tally->seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      tally->var_rows_changed += a.var_rows_changed;
      tally->var_rows_examined += a.var_rows_examined;
      tally->sgrs += a.sgrs;
    }
    return a.text;
  };
}

void validate(const VlmEvalOptions& o) {
  constexpr int kMost = 100000;
  auto range = [](const char* flag, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi)
      throw ConfigError(std::string("eval vlm: ") + flag + " " + std::to_string(v) + ": must be in " +
                        std::to_string(lo) + ".." + std::to_string(hi));
  };
  range("--questions", o.questions, 0, kMost);
  range("--describe", o.describe, 0, kMost);
  range("--per-scene", o.per_scene, 1, 12);
  range("--max-new-tokens", o.short_max_new_tokens, 1, 4096);
  range("--describe-max-new-tokens", o.describe_max_new_tokens, 1, 4096);
  if (o.questions == 0 && o.describe == 0)
    throw ConfigError("eval vlm: --questions and --describe are both 0: nothing to ask");
}

VlmEvalPlan plan_vlm_eval(const VlmEvalOptions& o) {
  validate(o);
  world::DatasetOptions d;
  d.base_seed = o.base_seed;
  d.split = world::Split::HeldOut;
  d.questions_per_image = o.per_scene;
  d.question.max_questions = o.per_scene;
  // The held-out seeds in dataset order; the list grows (same prefix) when more are needed.
  std::vector<uint64_t> seeds;
  auto seed_at = [&](size_t k) {
    while (k >= seeds.size()) {
      d.count = static_cast<int>(std::max<size_t>(64, 2 * seeds.size()));
      seeds = world::split_seeds(d);
    }
    return seeds[k];
  };

  VlmEvalPlan plan;
  for (size_t k = 0; plan.short_questions < o.questions || static_cast<int>(k) < o.describe; ++k) {
    const world::Sample s = world::make_sample(seed_at(k), d);
    const bool want_short = plan.short_questions < o.questions;
    for (const world::Question& q : s.questions) {
      VlmEvalItem item{plan.scenes.size(), q, o.short_max_new_tokens};
      if (q.kind == "exists") {
        ++plan.pope_probes;
      } else if (q.kind == "describe") {
        if (static_cast<int>(k) >= o.describe) continue;
        item.max_new_tokens = o.describe_max_new_tokens;
        ++plan.descriptions;
      } else if (want_short) {
        ++plan.short_questions;
      } else {
        continue;
      }
      plan.items.push_back(std::move(item));
    }
    plan.scenes.push_back(s.scene);
    plan.novel_combo.push_back(s.novel_combo);
  }
  return plan;
}

VlmEvalResult score_vlm_records(std::vector<VlmEvalRecord> records, int scenes) {
  VlmEvalResult r;
  r.scenes = scenes;
  for (const char* s : kPopeSplits) r.pope[s];
  r.pope["all"];
  for (const VlmEvalRecord& x : records) {
    if (is_pope(x)) {
      const bool truth = normalize_answer(x.expected) == "yes";
      r.pope["all"].add(truth, x.got);
      if (x.pope == "positive") {
        for (const char* s : kPopeSplits) r.pope[s].add(true, x.got);  // positives shared by every split
      } else if (r.pope.count(x.pope) && x.pope != "all") {
        r.pope[x.pope].add(false, x.got);
      }
    } else if (is_describe(x)) {
      r.chair.add(x.chair, x.words);
    } else {
      const bool ok = answers_match(x.got, x.expected);
      r.short_answers.add(ok);
      r.by_kind[x.kind].add(ok);
      (x.held_out_template ? r.held_out_templates : r.seen_templates).add(ok);
      if (x.novel_combo) r.novel_combo_scenes.add(ok);
    }
  }
  r.records = std::move(records);
  return r;
}

VlmEvalResult run_vlm_eval(const VlmAnswerFn& answer, const VlmEvalOptions& o) {
  if (!answer) throw ConfigError("eval vlm: no answer function");
  const VlmEvalPlan plan = plan_vlm_eval(o);
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<VlmEvalRecord> records;
  records.reserve(plan.items.size());
  Image image;
  size_t image_scene = SIZE_MAX;
  const int total = static_cast<int>(plan.items.size());
  for (int i = 0; i < total; ++i) {
    o.progress.check_cancel();
    const VlmEvalItem& item = plan.items[static_cast<size_t>(i)];
    const world::Scene& scene = plan.scenes[item.scene];
    if (item.scene != image_scene) {
      image = world::render_scene(scene);
      image_scene = item.scene;
    }
    const world::Question& q = item.question;
    VlmEvalRecord rec;
    rec.seed = scene.seed;
    rec.kind = q.kind;
    rec.question = q.question;
    rec.expected = q.answer;
    rec.template_id = q.template_id;
    rec.pope = q.pope;
    rec.held_out_template = q.held_out_template;
    rec.novel_combo = plan.novel_combo[item.scene];
    rec.got = answer(q.question, image, item.max_new_tokens);
    if (is_pope(rec)) {
      rec.correct = pope_reads_yes(rec.got) == (normalize_answer(rec.expected) == "yes");
    } else if (is_describe(rec)) {
      rec.chair = chair_counts(scene, parse_object_mentions(rec.got));
      rec.words = word_count(rec.got);
      rec.correct = rec.chair.hallucinated == 0;
    } else {
      rec.correct = answers_match(rec.got, rec.expected);
    }
    if (o.log)
      o.log("[eval] " + std::to_string(i + 1) + "/" + std::to_string(total) + " " + rec.kind + " " +
            (rec.correct ? "ok  " : "MISS") + "  " + rec.question + " -> " + rec.got +
            (is_describe(rec) ? "" : "  (expected " + rec.expected + ")"));
    records.push_back(std::move(rec));
    o.progress.report(i + 1, total, "eval vlm");
  }
  VlmEvalResult r = score_vlm_records(std::move(records), static_cast<int>(plan.scenes.size()));
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

// ---- Reports -----------------------------------------------------------------------------------

namespace {

Json tally_json(const world::Tally& t) { return {{"correct", t.correct}, {"total", t.total}, {"accuracy", t.rate()}}; }

Json pope_json(const PopeCounts& p) {
  return {{"tp", p.tp},
          {"fp", p.fp},
          {"tn", p.tn},
          {"fn", p.fn},
          {"unclear", p.unclear},
          {"total", p.total()},
          {"accuracy", p.accuracy()},
          {"precision", p.precision()},
          {"recall", p.recall()},
          {"f1", p.f1()},
          {"yes_ratio", p.yes_ratio()}};
}

std::string tally_row(const std::string& label, const world::Tally& t) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "  %-24s %6d / %-6d %7.2f%%\n", label.c_str(), t.correct, t.total, 100.0 * t.rate());
  return buf;
}

}  // namespace

Json vlm_eval_json(const VlmEvalResult& r, const VlmEvalOptions& o) {
  Json by_kind = Json::object();
  for (const auto& [kind, t] : r.by_kind) by_kind[kind] = tally_json(t);
  Json pope = Json::object();
  for (const auto& [split, p] : r.pope) pope[split] = pope_json(p);
  const ChairTally& c = r.chair;
  const size_t answers = r.records.size();
  return {{"split", world::name(world::Split::HeldOut)},
          {"scenes", r.scenes},
          {"answers", answers},
          {"seconds", r.seconds},
          {"seconds_per_answer", answers ? r.seconds / static_cast<double>(answers) : 0.0},
          {"short",
           {{"all", tally_json(r.short_answers)},
            {"by_kind", by_kind},
            {"seen_templates", tally_json(r.seen_templates)},
            {"held_out_templates", tally_json(r.held_out_templates)},
            {"novel_combo_scenes", tally_json(r.novel_combo_scenes)}}},
          {"pope", pope},
          {"describe",
           {{"descriptions", c.descriptions},
            {"chair_i", c.chair_i()},
            {"chair_s", c.chair_s()},
            {"recall", c.recall()},
            {"mentions", c.mentions},
            {"hallucinated", c.hallucinated},
            {"with_hallucination", c.with_hallucination},
            {"size_errors", c.size_errors},
            {"objects", c.objects},
            {"recalled", c.recalled},
            {"mean_words", c.mean_words()}}},
          {"options",
           {{"questions", o.questions},
            {"describe", o.describe},
            {"per_scene", o.per_scene},
            {"seed", o.base_seed},
            {"max_new_tokens", o.short_max_new_tokens},
            {"describe_max_new_tokens", o.describe_max_new_tokens}}}};
}

std::string format_vlm_eval_table(const VlmEvalResult& r, const VlmEvalOptions& o) {
  std::string out;
  char buf[256];
  std::snprintf(buf, sizeof buf, "held-out split: %d scenes (seed %llu), %zu answers\n\n", r.scenes,
                static_cast<unsigned long long>(o.base_seed), r.records.size());
  out += buf;
  out += "short answers (exact match)   correct / total    accuracy\n";
  out += tally_row("all", r.short_answers);
  for (const auto& [kind, t] : r.by_kind) out += tally_row("  " + kind, t);
  out += tally_row("seen templates", r.seen_templates);
  out += tally_row("held-out templates", r.held_out_templates);
  out += tally_row("novel-combo scenes", r.novel_combo_scenes);

  out += "\nPOPE (positives shared)   n   accuracy  precision  recall      F1   yes-ratio  unclear\n";
  auto pope_row = [&](const std::string& split) {
    const auto it = r.pope.find(split);
    if (it == r.pope.end()) return;
    const PopeCounts& p = it->second;
    std::snprintf(buf, sizeof buf, "  %-18s %6d %9.2f%% %9.2f%% %7.2f%% %7.2f%% %9.2f%% %7d\n", split.c_str(), p.total(),
                  100 * p.accuracy(), 100 * p.precision(), 100 * p.recall(), 100 * p.f1(), 100 * p.yes_ratio(),
                  p.unclear);
    out += buf;
  };
  for (const char* s : kPopeSplits) pope_row(s);
  pope_row("all");

  const ChairTally& c = r.chair;
  std::snprintf(buf, sizeof buf, "\ndescriptions: %d (at most %lld new tokens, %.1f words on average)\n", c.descriptions,
                static_cast<long long>(o.describe_max_new_tokens), c.mean_words());
  out += buf;
  std::snprintf(buf, sizeof buf, "  CHAIR_I  %6.2f%%  (%d hallucinated / %d object mentions)\n", 100 * c.chair_i(),
                c.hallucinated, c.mentions);
  out += buf;
  std::snprintf(buf, sizeof buf, "  CHAIR_S  %6.2f%%  (%d / %d descriptions)\n", 100 * c.chair_s(), c.with_hallucination,
                c.descriptions);
  out += buf;
  std::snprintf(buf, sizeof buf, "  recall   %6.2f%%  (%d / %d scene objects named); size errors %d\n", 100 * c.recall(),
                c.recalled, c.objects, c.size_errors);
  out += buf;
  const size_t n = r.records.size();
  std::snprintf(buf, sizeof buf, "\n%.1f s, %.3f s per answer\n", r.seconds, n ? r.seconds / static_cast<double>(n) : 0.0);
  out += buf;
  return out;
}

std::string vlm_eval_samples_jsonl(const VlmEvalResult& r) {
  std::string out;
  for (const VlmEvalRecord& x : r.records) {
    Json j = {{"seed", x.seed},         {"kind", x.kind},         {"question", x.question},
              {"expected", x.expected}, {"got", x.got},           {"correct", x.correct},
              {"template", x.template_id}, {"held_out_template", x.held_out_template},
              {"novel_combo", x.novel_combo}};
    if (is_pope(x)) j["pope"] = x.pope;
    if (is_describe(x))
      j["chair"] = {{"mentions", x.chair.mentions},
                    {"hallucinated", x.chair.hallucinated},
                    {"size_errors", x.chair.size_errors},
                    {"objects", x.chair.objects},
                    {"recalled", x.chair.recalled},
                    {"words", x.words}};
    // Model text may hold broken UTF-8: replace it rather than fail the report.
    out += j.dump(-1, ' ', false, Json::error_handler_t::replace) + "\n";
  }
  return out;
}

}  // namespace iris
