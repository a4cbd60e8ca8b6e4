// `iris eval diffusion`: scores a pipeline's text-to-image on held-out Tinyworld captions
// (pipelines/diffusion_eval.h) and writes a contact sheet.
#include <cstdio>
#include <filesystem>
#include <memory>

#include "app/cli.h"
#include "app/progress_bar.h"
#include "core/error.h"
#include "core/runtime.h"
#include "pipelines/diffusion_eval.h"

namespace iris::cli {

void add_eval_diffusion_command(CLI::App& app) {
  auto* cmd = eval_command(app)->add_subcommand("diffusion", "Text-to-image accuracy read back by the Tinyworld analyzer");
  struct Opts {
    std::string model, sheet, device = "cpu";
    DiffusionEvalOptions e;
    int threads = 0;
    bool verbose = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--model", o->model, "Diffusers pipeline folder (e.g. the starter pack)")->required();
  cmd->add_option("--n", o->e.n, "Held-out prompts")->capture_default_str();
  cmd->add_option("--seed", o->e.seed, "Seed of the first image (image i: seed + i)")->capture_default_str();
  cmd->add_option("--scene-seed", o->e.base_seed, "Base seed of the held-out scenes")->capture_default_str();
  cmd->add_option("--sampler", o->e.sampler, "ddim | euler | euler_a | dpmpp_2m")->capture_default_str();
  cmd->add_option("--steps", o->e.steps, "Denoising steps")->capture_default_str();
  cmd->add_option("--cfg", o->e.cfg_scale, "Classifier-free guidance scale")->capture_default_str();
  cmd->add_option("--size", o->e.resolution, "Image side in pixels")->capture_default_str();
  cmd->add_option("--style-fraction", o->e.style_fraction, "Share of prompts that also name a style")->capture_default_str();
  cmd->add_option("--contact-sheet", o->sheet, "Write the images as a grid PNG (prompts in its text)");
  cmd->add_option("--device", o->device, "cpu | cuda | cuda:N | auto")->capture_default_str();
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores)");
  cmd->add_flag("-v,--verbose", o->verbose, "One line per prompt");
  cmd->callback([o] {
    set_threads(o->threads);
    SdLoadOptions lo;
    lo.device = o->device;
    SdModel model = SdModel::load(o->model, lo);
    DiffusionEvalOptions e = o->e;
    ProgressBar bar;
    if (o->verbose) e.log = [](const std::string& s) { std::printf("%s\n", s.c_str()); };
    else e.progress.on_step = [&bar](int s, int t, const std::string& stage) { bar.update(s, t, stage); };
    const DiffusionEvalResult r = eval_text_to_image(model, e);
    bar.finish();
    std::printf("%s", format_eval_table(r).c_str());
    if (!o->sheet.empty()) {
      PngText text;
      std::string prompts;
      for (size_t i = 0; i < r.prompts.size(); ++i) prompts += std::to_string(i) + ": " + r.prompts[i] + "\n";
      text.push_back({"prompts", prompts});
      save_png(o->sheet, contact_sheet(r.images, 16), text);
      std::printf("contact sheet: %s\n", o->sheet.c_str());
    }
  });
}

}  // namespace iris::cli
