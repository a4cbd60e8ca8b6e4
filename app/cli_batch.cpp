// iris batch: render a JSONL file of jobs with one loaded model (pipelines/batch_render.h).
#include <cstdio>
#include <filesystem>

#include "app/cli.h"
#include "app/progress_bar.h"
#include "core/error.h"
#include "core/runtime.h"
#include "pipelines/batch_render.h"

namespace iris::cli {

namespace {

// "K/N" -> (K, N), 0 <= K < N.
std::pair<int, int> parse_shard(const std::string& s) {
  int k = -1, n = 0;
  char slash = 0, extra = 0;
  if (std::sscanf(s.c_str(), "%d%c%d%c", &k, &slash, &n, &extra) != 3 || slash != '/' || n < 1 || k < 0 || k >= n)
    throw ConfigError("--shard \"" + s + "\": expected K/N with 0 <= K < N (e.g. $SLURM_ARRAY_TASK_ID/8)");
  return {k, n};
}

}  // namespace

void add_batch_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("batch", "Render every job of a JSONL file (one job per line)");
  struct Opts {
    SdModelCliOptions m;
    std::string jobs, out, shard;
    bool resume = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("jobs", o->jobs, "Jobs file (.jsonl): one JSON object per line")->required();
  cmd->add_option("--out", o->out, "Output folder (images + manifest.jsonl)")->required();
  add_sd_model_options(cmd, o->m);
  cmd->add_flag("--resume", o->resume, "Keep the images already in --out and render the rest");
  cmd->add_option("--shard", o->shard, "K/N: render only the K-th of N disjoint slices of the jobs (0-based)");
  cmd->callback([o] {
    set_threads(o->m.threads);
    BatchOptions bo;
    bo.out_dir = o->out;
    bo.resume = o->resume;
    if (!o->shard.empty()) std::tie(bo.shard_index, bo.shard_count) = parse_shard(o->shard);
    bo.model_name = std::filesystem::path(o->m.model).filename().string();

    BatchFile file = read_batch_file(o->jobs);
    for (const BatchLineError& e : file.errors) std::fprintf(stderr, "error: %s\n", e.message.c_str());
    if (file.jobs.empty()) throw ConfigError(o->jobs + ": no job to render");

    SdModel model = SdModel::load(o->m.model, o->m.load_options());

    ProgressBar bar;
    int images_done = 0, images_total = 0;
    BatchCallbacks cb;
    cb.on_image = [&](int done, int total, const std::string&, bool) {
      images_done = done;
      images_total = total;
    };
    cb.progress.on_step = [&](int s, int t, const std::string&) {
      bar.update(s, t, "image " + std::to_string(images_done + 1) + "/" + std::to_string(std::max(images_total, 1)));
    };
    cb.progress.should_cancel = cancel_on_interrupt();
    cb.warn = [](const std::string& s) { std::fprintf(stderr, "\nwarning: %s\n", s.c_str()); };
    cb.on_job_error = [&](int line, const std::string& id, const std::string& msg) {
      std::fprintf(stderr, "\nerror: %s:%d (job %s): %s\n", o->jobs.c_str(), line, id.c_str(), msg.c_str());
    };
    BatchSummary s = run_batch(model, file.jobs, bo, cb);
    bar.finish();
    std::printf("%d images: %d rendered, %d already done; %d of %d jobs failed; %zu bad lines; manifest %s\n",
                s.images_total, s.images_rendered, s.images_skipped, s.jobs_failed, s.jobs_total, file.errors.size(),
                s.manifest.c_str());
    if (!s.ok() || !file.errors.empty())
      throw Error(std::to_string(s.jobs_failed + static_cast<int>(file.errors.size())) +
                  " job(s) failed or were malformed (listed above); the others were rendered");
  });
}

}  // namespace iris::cli
