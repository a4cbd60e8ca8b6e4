#include "pipelines/diffusion_eval.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "core/error.h"
#include "pipelines/stable_diffusion.h"
#include "world/dataset.h"
#include "world/rng.h"

namespace iris {

world::Tally DiffusionEvalResult::described() const {
  world::Tally t = score.object_attributes();
  for (const world::Tally* x : {&score.count, &score.style, &score.background, &score.figure, &score.figure_color,
                                &score.arms, &score.legs, &score.joints})
    t += *x;
  return t;
}

DiffusionEvalResult eval_text_to_image(SdModel& model, const DiffusionEvalOptions& o) {
  if (o.n < 1) throw ConfigError("eval: --n must be at least 1, got " + std::to_string(o.n));
  world::DatasetOptions d;
  d.base_seed = o.base_seed;
  d.count = o.n;
  d.split = world::Split::HeldOut;
  d.sampler.resolution = o.resolution;
  const std::vector<uint64_t> seeds = world::split_seeds(d);
  DiffusionEvalResult r;
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < seeds.size(); ++i) {
    o.progress.check_cancel();
    const world::Sample s = world::make_sample(seeds[i], d);
    world::Caption caption = s.caption;
    std::string prompt = caption.text;
    world::Rng rng(world::hash_combine(seeds[i], 0x57f1e));
    if (rng.chance(o.style_fraction)) {
      prompt = s.caption_with_style;
      caption.style = true;
    }
    GenerationParams p;
    p.prompt = prompt;
    p.sampler = o.sampler;
    p.steps = o.steps;
    p.cfg_scale = o.cfg_scale;
    p.seed = o.seed + i;
    p.width = p.height = o.resolution;
    const Image img = generate(model, p).at(0).image;
    world::ScoreOptions so;
    so.caption = &caption;
    const world::SceneScore sc = world::score_scene(s.scene, world::analyze_image(img), so);
    r.score += sc;
    r.prompts.push_back(prompt);
    r.images.push_back(img);
    if (o.log) {
      const world::Tally obj = sc.object_attributes();
      o.log("[eval] " + std::to_string(i + 1) + "/" + std::to_string(seeds.size()) + "  " +
            std::to_string(obj.correct) + "/" + std::to_string(obj.total) + "  " + prompt);
    }
    o.progress.report(static_cast<int>(i + 1), static_cast<int>(seeds.size()), "eval");
  }
  r.seconds_per_image = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() /
                        static_cast<double>(seeds.size());
  return r;
}

std::string format_eval_table(const DiffusionEvalResult& r) {
  std::string out = world::format_score_table(r.score);
  const world::Tally t = r.described();
  char buf[160];
  std::snprintf(buf, sizeof buf, "%-16s %7d / %-7d %7.2f%%\n", "described (all)", t.correct, t.total, 100.0 * t.rate());
  out += buf;
  std::snprintf(buf, sizeof buf, "%zu prompts, %.2f s per image\n", r.prompts.size(), r.seconds_per_image);
  out += buf;
  return out;
}

Image contact_sheet(const std::vector<Image>& images, int columns, uint8_t gap) {
  if (images.empty()) return Image();
  const int w = images[0].width, h = images[0].height, g = 2;
  const int cols = std::max(1, std::min(columns, static_cast<int>(images.size())));
  const int rows = (static_cast<int>(images.size()) + cols - 1) / cols;
  Image sheet(cols * w + (cols + 1) * g, rows * h + (rows + 1) * g, 3);
  std::fill(sheet.pixels.begin(), sheet.pixels.end(), gap);
  for (size_t k = 0; k < images.size(); ++k) {
    const Image& im = images[k];
    if (im.width != w || im.height != h || im.channels != 3)
      throw ShapeError("contact sheet: image " + std::to_string(k) + " is not " + std::to_string(w) + "x" +
                       std::to_string(h) + " RGB");
    const int x0 = g + static_cast<int>(k % cols) * (w + g), y0 = g + static_cast<int>(k / cols) * (h + g);
    for (int y = 0; y < h; ++y) std::copy(im.row(y), im.row(y) + im.row_bytes(), sheet.row(y0 + y) + x0 * 3);
  }
  return sheet;
}

}  // namespace iris
