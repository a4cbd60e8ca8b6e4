// `iris showcase`: the starter pack's grid of text-to-image, image-prompt, style and skeleton
// results, labelled (pipelines/showcase.h).
#include <cstdio>
#include <memory>

#include "app/cli.h"
#include "app/progress_bar.h"
#include "core/image.h"
#include "core/runtime.h"
#include "pipelines/showcase.h"

namespace iris::cli {

void add_showcase_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("showcase", "Render the labelled grid of what a pack can do (text, image prompt, style, skeleton)");
  struct Opts {
    std::string model = "assets/starter", out = "showcase.png";
    ShowcaseOptions s;
    int threads = 0;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--model", o->model, "Pipeline folder (adapters from its adapters/ folder)")->capture_default_str();
  cmd->add_option("-o,--out", o->out, "Output PNG")->capture_default_str();
  cmd->add_option("--ip-adapter", o->s.ip_adapter, "IP-Adapter file (default: MODEL/adapters/ip-adapter.safetensors)");
  cmd->add_option("--style-adapter", o->s.style_adapter, "Style adapter file (default: MODEL/adapters/style-adapter.safetensors)");
  cmd->add_option("--sk-adapter", o->s.sk_adapter, "SK-Adapter file (default: MODEL/adapters/sk-adapter.safetensors)");
  cmd->add_option("--sampler", o->s.sampler, "ddim | euler | euler_a | dpmpp_2m")->capture_default_str();
  cmd->add_option("--steps", o->s.steps, "Denoising steps")->capture_default_str();
  cmd->add_option("--cfg", o->s.cfg_scale, "Classifier-free guidance scale")->capture_default_str();
  cmd->add_option("--seed", o->s.seed, "Seed of the first picture (picture i: seed + i)")->capture_default_str();
  cmd->add_option("--size", o->s.size, "Generated image side in pixels")->capture_default_str();
  cmd->add_option("--cell-scale", o->s.cell_scale, "Magnification of each picture in the grid")->capture_default_str();
  cmd->add_option("--device", o->s.device, "cpu | cuda | cuda:N | auto")->capture_default_str();
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores)");
  cmd->callback([o] {
    set_threads(o->threads);
    ShowcaseOptions s = o->s;
    ProgressBar bar;
    s.progress.on_step = [&bar](int step, int total, const std::string& stage) { bar.update(step, total, stage); };
    s.progress.should_cancel = cancel_on_interrupt();
    s.log = [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); };
    const std::vector<ShowcaseRow> rows = render_showcase(o->model, s);
    bar.finish();
    PngText text;
    std::string labels;
    for (const ShowcaseRow& r : rows) {
      labels += r.title + ":\n";
      for (const ShowcaseCell& c : r.cells) labels += "  " + c.label + "\n";
    }
    text.push_back({"showcase", labels});
    save_png(o->out, showcase_grid(rows, o->s.cell_scale), text);
    std::printf("showcase: %s\n", o->out.c_str());
  });
}

}  // namespace iris::cli
