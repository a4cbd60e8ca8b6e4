#pragma once
// Batch rendering: a JSONL file of jobs, one per line, rendered with one loaded model.
//
// A job line is a JSON object:
//   {"id": "cat-1", "prompt": "...", "negative": "...", "seed": 7, "sampler": "euler_a",
//    "karras": false, "eta": 0, "steps": 25, "cfg": 7.5, "size": "512x512" (or "width"/"height"),
//    "count": 2, "init": "img.png", "strength": 0.6,
//    "image_prompts": [{"image": "ref.png", "scale": 0.8, "preset": "style"}],
//    "style": "outlined", "style_strength": 1.0, "skeleton": "pose.json", "skeleton_scale": 1.0}
// Without a size (or with "size": "auto"): the model's native size (512x512 for SD 1.5, 64x64 for the starter pack).
// Only "prompt" is required. Paths are relative to the jobs file's folder. Unknown keys are
// errors (a typo must not silently render something else). Without "id" a job is "line<N>";
// without "seed" its seed is derived from its id, so a job renders the same on every run.
//
// Outputs: <out>/<id>.png (count 1) or <out>/<id>-<k>.png, each written atomically with its
// parameters as PNG metadata, and a manifest (<out>/manifest.jsonl, or
// manifest-<K>-of-<N>.jsonl for a shard) listing every finished image in job order. Every image
// is rendered alone (batch 1, seed + k), so an image is the same bytes whether its job ran
// whole, was resumed, or ran in another shard.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/json_util.h"
#include "core/progress.h"
#include "pipelines/sd_model.h"
#include "pipelines/stable_diffusion.h"

namespace iris {

struct BatchJob {
  int line = 0;            // 1-based line in the jobs file
  std::string id;          // file-name safe: [A-Za-z0-9._-], unique in the file
  int count = 1;           // images: seeds seed, seed + 1, ...
  GenerationParams params; // images not loaded yet (init, image prompts, skeleton: paths below)
  std::string init_path, skeleton_path;
  struct ImagePromptSpec {
    std::string path, preset = "all";
    double scale = 1.0;
  };
  std::vector<ImagePromptSpec> image_prompts;
};

struct BatchLineError {
  int line = 0;
  std::string message;
};

struct BatchFile {
  std::string path;
  std::vector<BatchJob> jobs;            // the good lines, in file order
  std::vector<BatchLineError> errors;    // the bad ones (blank lines and # comments are skipped)
};

// Reads and validates a jobs file. Throws IoError when it cannot be read at all; a bad line is
// recorded in `errors` with its line number and the rest are still read. `max_jobs` bounds the
// file (absurd inputs).
BatchFile read_batch_file(const std::string& path, size_t max_jobs = 1000000);

// One job line (for tests and the studio); throws ConfigError/FormatError naming the key.
BatchJob parse_batch_job(const Json& j, int line, const std::string& base_dir, const std::string& what);

// Shard K of N (0 <= K < N): the jobs whose id hashes (FNV-1a 64) to K mod N. Stable: the same
// id lands in the same shard whatever the other lines are.
bool in_shard(const std::string& id, int shard_index, int shard_count);

struct BatchOptions {
  std::string out_dir;
  bool resume = false;     // keep finished images (files present), render the rest
  int shard_index = 0, shard_count = 1;
  std::string model_name;  // for the metadata
};

struct BatchCallbacks {
  // An image is done (or skipped as already done): done / total images of this run.
  std::function<void(int done, int total, const std::string& file, bool skipped)> on_image;
  // Denoising progress of the current image, and cancel.
  Progress progress;
  std::function<void(const std::string&)> warn;
  // A job failed (its line and why); the run goes on.
  std::function<void(int line, const std::string& id, const std::string& message)> on_job_error;
};

struct BatchSummary {
  int images_total = 0, images_rendered = 0, images_skipped = 0;
  int jobs_total = 0, jobs_failed = 0;
  std::vector<BatchLineError> failures;  // failed jobs (line, message), in order
  std::string manifest;                  // its path
  bool ok() const { return jobs_failed == 0; }
};

std::string manifest_path(const BatchOptions& options);
// The file name of image k of a job.
std::string batch_image_name(const BatchJob& job, int k);

// Renders the jobs of this shard into options.out_dir. Throws ConfigError when out_dir already
// holds a manifest and `resume` is off (no silent overwrite), IoError when it cannot be
// written. A job that fails is reported through on_job_error and counted; the rest go on.
BatchSummary run_batch(SdModel& model, const std::vector<BatchJob>& jobs, const BatchOptions& options,
                       const BatchCallbacks& callbacks = {});

}  // namespace iris
