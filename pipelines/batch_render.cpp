#include "pipelines/batch_render.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/image.h"
#include "core/mmap_file.h"
#include "pipelines/image_size.h"
#include "world/skeleton.h"

namespace iris {

namespace fs = std::filesystem;

namespace {

const std::set<std::string>& known_job_keys() {
  static const std::set<std::string> keys{
      "id",   "prompt", "negative", "seed",     "sampler",       "karras", "eta",   "steps",
      "cfg",  "size",   "width",    "height",   "count",         "init",   "strength",
      "image_prompts",  "style",    "style_strength", "skeleton", "skeleton_scale", "skeleton_camera_distance"};
  return keys;
}

bool id_char_ok(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.'; }

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::string resolve(const std::string& base_dir, const std::string& p) {
  if (p.empty() || fs::path(p).is_absolute() || base_dir.empty()) return p;
  return (fs::path(base_dir) / p).string();
}

void require_file(const std::string& path, const std::string& key, const std::string& what) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw IoError(what + ": \"" + key + "\": " + path + ": no such file");
}

// The manifest line of one finished image: a function of the job alone (no times, no host), so
// shards' manifests join into a single run's.
Json manifest_entry(const BatchJob& job, int k) {
  Json e = Json::object();
  e["id"] = job.id;
  e["line"] = job.line;
  e["index"] = k;
  e["seed"] = job.params.seed + static_cast<uint64_t>(k);
  e["file"] = batch_image_name(job, k);
  e["prompt"] = job.params.prompt;
  return e;
}

void write_manifest(const std::string& path, const std::vector<Json>& entries) {
  std::string text;
  for (const Json& e : entries) text += e.dump() + "\n";
  write_file_atomic(path, text.data(), text.size());
}

}  // namespace

bool in_shard(const std::string& id, int shard_index, int shard_count) {
  if (shard_count < 1 || shard_index < 0 || shard_index >= shard_count)
    throw ConfigError("shard " + std::to_string(shard_index) + "/" + std::to_string(shard_count) +
                      ": expected K/N with 0 <= K < N");
  return fnv1a(id) % static_cast<uint64_t>(shard_count) == static_cast<uint64_t>(shard_index);
}

BatchJob parse_batch_job(const Json& j, int line, const std::string& base_dir, const std::string& what) {
  if (!j.is_object()) throw FormatError(what + ": a job must be a JSON object");
  for (auto it = j.begin(); it != j.end(); ++it)
    if (!known_job_keys().count(it.key())) throw ConfigError(what + ": unknown key \"" + it.key() + "\"");
  BatchJob job;
  job.line = line;
  job.id = json_string(j, "id", "line" + std::to_string(line), what);
  if (job.id.empty() || job.id.size() > 128 || !std::all_of(job.id.begin(), job.id.end(), id_char_ok) ||
      job.id[0] == '.')
    throw ConfigError(what + ": \"id\": \"" + job.id + "\" must be 1-128 characters of A-Z a-z 0-9 . _ - (it names files)");
  GenerationParams& p = job.params;
  p.prompt = json_require_string(j, "prompt", what);
  p.negative_prompt = json_string(j, "negative", "", what);
  // No seed: one derived from the id, so that every run (and every shard) agrees.
  p.seed = j.contains("seed") ? static_cast<uint64_t>(json_int(j, "seed", 0, what)) : fnv1a(job.id) & 0x7fffffff;
  if (j.contains("seed") && json_int(j, "seed", 0, what) < 0) throw ConfigError(what + ": \"seed\" must be >= 0");
  p.sampler = json_string(j, "sampler", p.sampler, what);
  p.karras = json_bool(j, "karras", false, what);
  p.eta = json_number(j, "eta", 0.0, what);
  p.steps = static_cast<int>(std::clamp<int64_t>(json_int(j, "steps", p.steps, what), -1, 1 << 20));
  p.cfg_scale = json_number(j, "cfg", p.cfg_scale, what);
  if (j.contains("size")) {
    if (j.contains("width") || j.contains("height")) throw ConfigError(what + ": give \"size\" or \"width\"/\"height\", not both");
    std::tie(p.width, p.height) = parse_image_size(json_string(j, "size", "", what), what + ": \"size\"");
  } else {
    p.width = static_cast<int>(std::clamp<int64_t>(json_int(j, "width", p.width, what), -1, 1 << 20));
    p.height = static_cast<int>(std::clamp<int64_t>(json_int(j, "height", p.height, what), -1, 1 << 20));
  }
  const int64_t count = json_int(j, "count", 1, what);
  if (count < 1 || count > 10000) throw ConfigError(what + ": \"count\": " + std::to_string(count) + " must be in 1..10000");
  job.count = static_cast<int>(count);
  p.strength = json_number(j, "strength", p.strength, what);
  if (j.contains("init")) {
    job.init_path = resolve(base_dir, json_string(j, "init", "", what));
    require_file(job.init_path, "init", what);
    p.init_image_name = fs::path(job.init_path).filename().string();
  } else if (j.contains("strength")) {
    throw ConfigError(what + ": \"strength\" needs an \"init\" image");
  }
  if (j.contains("image_prompts")) {
    const Json& list = j["image_prompts"];
    if (!list.is_array()) throw FormatError(what + ": \"image_prompts\" must be a list of objects");
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string w = what + ": image_prompts[" + std::to_string(i) + "]";
      if (!list[i].is_object()) throw FormatError(w + ": must be an object {\"image\": ..., \"scale\": ...}");
      for (auto it = list[i].begin(); it != list[i].end(); ++it)
        if (it.key() != "image" && it.key() != "scale" && it.key() != "preset")
          throw ConfigError(w + ": unknown key \"" + it.key() + "\"");
      BatchJob::ImagePromptSpec s;
      s.path = resolve(base_dir, json_require_string(list[i], "image", w));
      require_file(s.path, "image", w);
      s.scale = json_number(list[i], "scale", 1.0, w);
      s.preset = json_string(list[i], "preset", "all", w);
      if (s.preset != "all" && s.preset != "style" && s.preset != "composition")
        throw ConfigError(w + ": \"preset\": \"" + s.preset + "\" is not all, style or composition");
      if (!std::isfinite(s.scale) || std::abs(s.scale) > 100) throw ConfigError(w + ": \"scale\" must be in -100..100");
      job.image_prompts.push_back(s);
    }
  }
  p.style = json_string(j, "style", "", what);
  p.style_strength = json_number(j, "style_strength", p.style_strength, what);
  if (j.contains("skeleton")) {
    job.skeleton_path = resolve(base_dir, json_string(j, "skeleton", "", what));
    require_file(job.skeleton_path, "skeleton", what);
    p.skeleton_name = fs::path(job.skeleton_path).filename().string();
  }
  p.skeleton_scale = json_number(j, "skeleton_scale", p.skeleton_scale, what);
  p.skeleton_camera_distance = json_number(j, "skeleton_camera_distance", 0.0, what);
  // Everything that does not need the model: size multiple of 8 is checked again against the
  // model's VAE factor when the job runs.
  GenerationParams probe = p;
  if (!job.init_path.empty()) probe.init_image = Image(8, 8, 3);  // validate() only looks at presence
  if (probe.width == 0) probe.width = 8;  // 0 (no size, or "auto"): the model's native size
  if (probe.height == 0) probe.height = 8;
  try {
    probe.validate(8);
  } catch (const ConfigError& e) {
    throw ConfigError(what + ": " + e.what());
  }
  return job;
}

BatchFile read_batch_file(const std::string& path, size_t max_jobs) {
  BatchFile file;
  file.path = path;
  const std::string text = read_text_file(path);
  const std::string base_dir = fs::path(path).parent_path().string();
  std::istringstream in(text);
  std::string line;
  std::set<std::string> ids;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const size_t first = line.find_first_not_of(" \t");
    if (first == std::string::npos || line[first] == '#') continue;
    const std::string what = path + ":" + std::to_string(n);
    try {
      if (file.jobs.size() >= max_jobs) throw ConfigError(what + ": more than " + std::to_string(max_jobs) + " jobs");
      BatchJob job = parse_batch_job(parse_json(line, what), n, base_dir, what);
      if (!ids.insert(job.id).second) throw ConfigError(what + ": \"id\": \"" + job.id + "\" is used by an earlier line");
      file.jobs.push_back(std::move(job));
    } catch (const Error& e) {
      file.errors.push_back({n, e.what()});
    }
  }
  return file;
}

std::string manifest_path(const BatchOptions& o) {
  const std::string name = o.shard_count > 1 ? "manifest-" + std::to_string(o.shard_index) + "-of-" +
                                                   std::to_string(o.shard_count) + ".jsonl"
                                             : "manifest.jsonl";
  return (fs::path(o.out_dir) / name).string();
}

std::string batch_image_name(const BatchJob& job, int k) {
  return job.count == 1 ? job.id + ".png" : job.id + "-" + std::to_string(k) + ".png";
}

BatchSummary run_batch(SdModel& model, const std::vector<BatchJob>& jobs, const BatchOptions& o,
                       const BatchCallbacks& cb) {
  if (o.out_dir.empty()) throw ConfigError("batch: no output folder");
  std::error_code ec;
  fs::create_directories(o.out_dir, ec);
  if (ec || !fs::is_directory(o.out_dir)) throw IoError(o.out_dir + ": cannot create the output folder: " + ec.message());
  BatchSummary s;
  s.manifest = manifest_path(o);
  if (!o.resume && fs::exists(s.manifest))
    throw ConfigError(s.manifest + " exists: this folder holds an earlier run (use --resume to finish it, or "
                      "another --out)");
  // A kill during a write leaves "<file>.tmp" (save_png writes atomically): never a result.
  for (const auto& entry : fs::directory_iterator(o.out_dir, ec))
    if (entry.path().extension() == ".tmp") fs::remove(entry.path(), ec);

  std::vector<const BatchJob*> mine;
  for (const BatchJob& j : jobs)
    if (in_shard(j.id, o.shard_index, o.shard_count)) mine.push_back(&j);
  s.jobs_total = static_cast<int>(mine.size());
  for (const BatchJob* j : mine) s.images_total += j->count;

  // Finished images are the files present (each was renamed into place whole). The manifest is
  // rebuilt from them, appended to as images finish, and rewritten whole in job order at the end.
  std::vector<Json> entries;
  auto done_file = [&](const BatchJob& j, int k) { return fs::is_regular_file(fs::path(o.out_dir) / batch_image_name(j, k)); };
  for (const BatchJob* j : mine)
    for (int k = 0; k < j->count; ++k)
      if (o.resume && done_file(*j, k)) entries.push_back(manifest_entry(*j, k));
  write_manifest(s.manifest, entries);
  std::ofstream manifest(s.manifest, std::ios::app);

  int done = 0;
  for (const BatchJob* jp : mine) {
    const BatchJob& job = *jp;
    try {
      GenerationParams p = job.params;
      p.batch = 1;
      if (p.model_name.empty()) p.model_name = o.model_name;
      bool loaded = false;
      for (int k = 0; k < job.count; ++k) {
        const std::string file = (fs::path(o.out_dir) / batch_image_name(job, k)).string();
        if (o.resume && done_file(job, k)) {
          ++done;
          ++s.images_skipped;
          if (cb.on_image) cb.on_image(done, s.images_total, file, true);
          continue;
        }
        if (!loaded) {  // images only for jobs that still have work
          if (!job.init_path.empty()) p.init_image = load_image(job.init_path);
          for (const auto& spec : job.image_prompts)
            p.image_prompts.push_back(load_image_prompt(spec.path, spec.scale, spec.preset));
          if (!job.skeleton_path.empty()) p.skeleton = world::load_skeleton(job.skeleton_path);
          loaded = true;
        }
        GenerationParams one = with_native_size(model, p);  // no size given: the model's own
        one.seed = job.params.seed + static_cast<uint64_t>(k);
        GenerationCallbacks gcb;
        gcb.progress = cb.progress;
        gcb.warn = cb.warn;
        std::vector<GeneratedImage> images = generate(model, one, gcb);
        save_png(file, images.at(0).image, generation_metadata(one, one.seed));
        const Json entry = manifest_entry(job, k);
        manifest << entry.dump() << "\n" << std::flush;
        entries.push_back(entry);
        ++done;
        ++s.images_rendered;
        if (cb.on_image) cb.on_image(done, s.images_total, file, false);
      }
    } catch (const Cancelled&) {
      throw;
    } catch (const std::exception& e) {
      ++s.jobs_failed;
      s.failures.push_back({job.line, e.what()});
      if (cb.on_job_error) cb.on_job_error(job.line, job.id, e.what());
      // Its images count as done for the progress total (they will not come).
      for (int k = 0; k < job.count; ++k)
        if (!done_file(job, k)) ++done;
    }
  }
  manifest.close();
  // Job order, whatever order the entries arrived in (resume appends after the old ones).
  std::map<std::pair<int, int>, Json> ordered;
  for (const Json& e : entries) ordered[{e["line"].get<int>(), e["index"].get<int>()}] = e;
  std::vector<Json> sorted;
  for (auto& kv : ordered) sorted.push_back(kv.second);
  write_manifest(s.manifest, sorted);
  return s;
}

}  // namespace iris
