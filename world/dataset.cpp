#include "world/dataset.h"

#include <cstdio>
#include <filesystem>
#include <sstream>

#include "core/error.h"
#include "core/json_util.h"
#include "core/mmap_file.h"
#include "world/render.h"

namespace iris::world {

namespace fs = std::filesystem;

namespace {

// Stream keys: captions and questions draw from their own streams of the scene's seed, so
// adding questions never changes a caption.
constexpr uint64_t kCaptionStream = 0xCA7110ull, kQuestionStream = 0x9E5710ull;

std::string index_name(int i) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%06d", i);
  return buf;
}

void write_text(const std::string& path, const std::string& text) { write_file_atomic(path, text.data(), text.size()); }

Json mentions_json(const Caption& c) {
  Json m = Json::array();
  for (const auto& x : c.mentions)
    m.push_back(
        {{"object", x.object}, {"color", x.color}, {"shape", x.shape}, {"size", x.size}, {"position", x.position}});
  return m;
}

}  // namespace

Sample make_sample(uint64_t seed, const DatasetOptions& opt) {
  Sample s;
  s.scene = sample_scene(seed, opt.sampler);
  s.split = scene_split(s.scene, opt.policy);
  s.novel_combo = has_heldout_combo(s.scene, opt.policy);
  CaptionOptions co = opt.caption;
  co.split = s.split;
  Rng crng(hash_combine(seed, kCaptionStream));
  s.caption = make_caption(s.scene, crng, co);
  s.caption_with_style =
      s.caption.text + (s.caption.style ? "" : ", in the " + std::string(name(s.scene.style)) + " style");
  if (opt.questions_per_image > 0) {
    QuestionOptions qo = opt.question;
    qo.split = s.split;
    qo.max_questions = std::min(qo.max_questions, opt.questions_per_image);
    Rng qrng(hash_combine(seed, kQuestionStream));
    s.questions = make_questions(s.scene, qrng, qo);
  }
  return s;
}

std::vector<uint64_t> split_seeds(const DatasetOptions& opt) {
  if (opt.count < 0) throw ConfigError("dataset: count must be >= 0");
  std::vector<uint64_t> seeds;
  const uint64_t limit = static_cast<uint64_t>(opt.count) * 1000 + 1000;
  for (uint64_t i = 0; static_cast<int>(seeds.size()) < opt.count; ++i) {
    if (i >= limit)
      throw ConfigError(std::string("dataset: the ") + name(opt.split) +
                        " split is (nearly) empty under this split policy");
    const uint64_t seed = sample_seed(opt.base_seed, i);
    // The seed hash decides most scenes without sampling; combos need the scene itself.
    if (opt.split == Split::Train && seed_held_out(seed, opt.policy)) continue;
    if (scene_split(sample_scene(seed, opt.sampler), opt.policy) == opt.split) seeds.push_back(seed);
  }
  return seeds;
}

void export_dataset(const std::string& dir, const DatasetOptions& opt, const Progress& progress) {
  std::error_code ec;
  fs::create_directories(fs::path(dir) / "images", ec);
  if (!ec) fs::create_directories(fs::path(dir) / "skeletons", ec);
  if (ec) throw IoError(dir + ": cannot create folder: " + ec.message());

  const std::vector<uint64_t> seeds = split_seeds(opt);
  std::string captions, questions;
  int figures = 0;
  for (size_t k = 0; k < seeds.size(); ++k) {
    progress.check_cancel();
    const int idx = static_cast<int>(k);
    const std::string id = index_name(idx);
    const Sample s = make_sample(seeds[k], opt);
    const Json scene = scene_to_json(s.scene);
    const std::string image_rel = "images/" + id + ".png";
    save_png((fs::path(dir) / image_rel).string(), render_scene(s.scene),
             {{"tinyworld", scene.dump()}, {"caption", s.caption.text}});
    Json skel = nullptr;
    if (s.scene.figure) {
      const std::string rel = "skeletons/" + id + ".json";
      write_text((fs::path(dir) / rel).string(), skeleton_to_json(s.scene.figure->skeleton).dump(2) + "\n");
      skel = rel;
      ++figures;
    }
    const Json rec = {{"index", idx},
                      {"id", id},
                      {"image", image_rel},
                      {"seed", seeds[k]},
                      {"split", name(s.split)},
                      {"caption", s.caption.text},
                      {"caption_template", s.caption.template_id},
                      {"caption_held_out_template", s.caption.held_out_template},
                      {"caption_with_style", s.caption_with_style},
                      {"mentions", mentions_json(s.caption)},
                      {"style", name(s.scene.style)},
                      {"background", name(s.scene.background)},
                      {"novel_combo", s.novel_combo},
                      {"skeleton", skel},
                      {"scene", scene}};
    captions += rec.dump() + "\n";
    for (const auto& q : s.questions) {
      const Json qj = {{"index", idx},
                       {"image", image_rel},
                       {"split", name(s.split)},
                       {"kind", q.kind},
                       {"question", q.question},
                       {"answer", q.answer},
                       {"template", q.template_id},
                       {"held_out_template", q.held_out_template},
                       {"pope", q.pope}};
      questions += qj.dump() + "\n";
    }
    progress.report(idx + 1, static_cast<int>(seeds.size()), "tinyworld");
  }
  write_text((fs::path(dir) / "captions.jsonl").string(), captions);
  if (opt.questions_per_image > 0) write_text((fs::path(dir) / "questions.jsonl").string(), questions);

  Json styles = Json::array();
  for (Style st : opt.sampler.styles) styles.push_back(name(st));
  Json combos = Json::array();
  for (const auto& [c, sh] : opt.policy.heldout_combos) combos.push_back(std::string(name(c)) + " " + name(sh));
  const Json manifest = {{"format", "iris.tinyworld"},
                         {"version", 1},
                         {"count", seeds.size()},
                         {"split", name(opt.split)},
                         {"base_seed", opt.base_seed},
                         {"resolution", opt.sampler.resolution},
                         {"styles", styles},
                         {"figures", figures},
                         {"heldout_percent", opt.policy.heldout_percent},
                         {"heldout_combos", combos},
                         {"files",
                          {{"captions", "captions.jsonl"},
                           {"questions", opt.questions_per_image > 0 ? Json("questions.jsonl") : Json(nullptr)},
                           {"images", "images/"},
                           {"skeletons", "skeletons/"}}}};
  write_text((fs::path(dir) / "dataset.json").string(), manifest.dump(2) + "\n");
}

std::vector<DatasetEntry> load_dataset(const std::string& dir) {
  const std::string path = (fs::path(dir) / "captions.jsonl").string();
  std::istringstream in(read_text_file(path));
  std::vector<DatasetEntry> out;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    const std::string what = path + ":" + std::to_string(n);
    const Json j = parse_json(line, what);
    try {
      const std::string w;  // context is added once, by rethrow_with_context below
      DatasetEntry e;
      e.index = static_cast<int>(json_require_int(j, "index", w));
      e.image = (fs::path(dir) / json_require_string(j, "image", w)).string();
      e.caption = json_require_string(j, "caption", w);
      e.caption_with_style = json_string(j, "caption_with_style", e.caption, w);
      e.split = parse_split(json_require_string(j, "split", w), "split");
      e.style = parse_style(json_require_string(j, "style", w), "style");
      if (!j.contains("scene")) throw FormatError("missing key \"scene\"");
      e.scene = scene_from_json(j["scene"], "scene");
      if (j.contains("skeleton") && j["skeleton"].is_string())
        e.skeleton = load_skeleton((fs::path(dir) / j["skeleton"].get<std::string>()).string());
      out.push_back(std::move(e));
    } catch (...) {
      rethrow_with_context(what);
    }
  }
  return out;
}

}  // namespace iris::world
