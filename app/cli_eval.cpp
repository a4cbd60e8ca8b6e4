// `iris eval diffusion`: scores a pipeline's text-to-image, or one of its adapters (--task), on
// held-out Tinyworld scenes (pipelines/diffusion_eval.h); writes a contact sheet and a JSON file.
#include <cstdio>
#include <filesystem>
#include <memory>

#include "app/cli.h"
#include "app/progress_bar.h"
#include "core/error.h"
#include "core/mmap_file.h"
#include "core/runtime.h"
#include "pipelines/diffusion_eval.h"

namespace iris::cli {

namespace {

// The adapter option a task needs, or "" for t2i and vae.
std::string needed_adapter(EvalTask t, const SdModelCliOptions& m, std::string* option) {
  switch (t) {
    case EvalTask::ImagePrompt:
    case EvalTask::ImagePromptText: *option = "--ip-adapter"; return m.ip_adapter;
    case EvalTask::Style: *option = "--style-adapter"; return m.style_adapter;
    case EvalTask::Skeleton: *option = "--sk-adapter"; return m.sk_adapter;
    case EvalTask::TextToImage:
    case EvalTask::Autoencoder: break;
  }
  return "";
}

// Fails before the (slow) model load when the task's adapter option is missing or its file is not there.
void check_adapter_option(EvalTask t, const SdModelCliOptions& m) {
  std::string option;
  const std::string path = needed_adapter(t, m, &option);
  if (option.empty()) return;
  if (path.empty())
    throw ConfigError(std::string("--task ") + eval_task_name(t) + " needs " + option + " FILE");
  if (!std::filesystem::is_regular_file(path)) throw IoError(option + " " + path + ": no such file");
}

void write_text_file(const std::string& path, const std::string& text) {
  const auto dir = std::filesystem::path(path).parent_path();
  if (!dir.empty() && !std::filesystem::is_directory(dir))
    throw IoError(path + ": folder " + dir.string() + " does not exist");
  write_file_atomic(path, text.data(), text.size());
}

}  // namespace

void add_eval_diffusion_command(CLI::App& app) {
  auto* cmd = eval_command(app)->add_subcommand(
      "diffusion", "Text-to-image and adapter accuracy on held-out Tinyworld scenes, read back by the analyzer");
  struct Opts {
    SdModelCliOptions m;
    std::string task = "t2i", sheet, json;
    DiffusionEvalOptions e;
    bool verbose = false, no_baseline = false, unnamed_pose = false;
  };
  auto o = std::make_shared<Opts>();
  add_sd_model_options(cmd, o->m);
  cmd->add_option("--task", o->task,
                  "t2i | ip (image prompt only) | ip-text (image + a text that changes one attribute) | "
                  "style (each Tinyworld style from the bank) | skeleton (SK-Adapter PCK@0.1, and without it) | "
                  "vae (held-out renders through the VAE only: the ceiling of any generator with it)")
      ->capture_default_str();
  cmd->add_option("--n", o->e.n, "Held-out prompts")->capture_default_str();
  cmd->add_option("--seed", o->e.seed, "Seed of the first image (image i: seed + i)")->capture_default_str();
  cmd->add_option("--scene-seed", o->e.base_seed, "Base seed of the held-out scenes")->capture_default_str();
  cmd->add_option("--sampler", o->e.sampler, "ddim | euler | euler_a | dpmpp_2m")->capture_default_str();
  cmd->add_option("--steps", o->e.steps, "Denoising steps")->capture_default_str();
  cmd->add_option("--cfg", o->e.cfg_scale, "Classifier-free guidance scale")->capture_default_str();
  cmd->add_option("--size", o->e.resolution, "Image side in pixels")->capture_default_str();
  cmd->add_option("--style-fraction", o->e.style_fraction, "t2i: share of prompts that also name a style")
      ->capture_default_str();
  cmd->add_option("--ip-scale", o->e.ip_scale, "IP-Adapter scale (default: 1 for ip, 0.5 for ip-text)");
  cmd->add_option("--ip-preset", o->e.ip_preset, "Per-layer IP scales: all | style | composition")
      ->capture_default_str();
  cmd->add_option("--style-strength", o->e.style_strength, "Style strength")->capture_default_str();
  cmd->add_option("--skeleton-scale", o->e.skeleton_scale, "Skeleton stream scale")->capture_default_str();
  cmd->add_flag("--no-baseline", o->no_baseline, "skeleton: skip the same prompts without the adapter");
  cmd->add_flag("--unnamed-pose", o->unnamed_pose,
                "skeleton: prompts name the figure's colour and side but not its pose (the skeleton alone sets it)");
  cmd->add_option("--contact-sheet", o->sheet, "Write the images as a grid PNG (prompts in its text)");
  cmd->add_option("--json", o->json, "Write every figure (and per-prompt scores) as JSON");
  cmd->add_flag("-v,--verbose", o->verbose, "One line per prompt");
  cmd->callback([o] {
    set_threads(o->m.threads);
    DiffusionEvalOptions e = o->e;
    e.task = parse_eval_task(o->task);
    e.skeleton_baseline = !o->no_baseline;
    e.pose_in_prompt = !o->unnamed_pose;
    if (o->unnamed_pose && e.task != EvalTask::Skeleton)
      throw ConfigError("--unnamed-pose applies to --task skeleton only, not " + o->task);
    check_adapter_option(e.task, o->m);
    SdModel model = SdModel::load(o->m.model, o->m.load_options());
    ProgressBar bar;
    if (o->verbose) {
      e.log = [](const std::string& s) {
        std::printf("%s\n", s.c_str());
        std::fflush(stdout);
      };
    } else {
      e.progress.on_step = [&bar](int s, int t, const std::string& stage) { bar.update(s, t, stage); };
    }
    e.progress.should_cancel = cancel_on_interrupt();
    const DiffusionEvalResult r = eval_diffusion(model, e);
    bar.finish();
    std::printf("%s", format_eval_table(r).c_str());
    if (!o->sheet.empty()) {
      PngText text;
      std::string prompts;
      for (size_t i = 0; i < r.prompts.size(); ++i) prompts += std::to_string(i) + ": " + r.prompts[i] + "\n";
      text.push_back({"prompts", prompts});
      text.push_back({"layout", r.references.empty() ? "generated"
                                : r.baseline_images.empty() ? "reference, generated"
                                                            : "pose map, with adapter, without adapter"});
      save_png(o->sheet, eval_contact_sheet(r), text);
      std::printf("contact sheet: %s\n", o->sheet.c_str());
    }
    if (!o->json.empty()) {
      write_text_file(o->json, eval_result_json(r, e).dump(2) + "\n");
      std::printf("json: %s\n", o->json.c_str());
    }
  });
}

}  // namespace iris::cli
