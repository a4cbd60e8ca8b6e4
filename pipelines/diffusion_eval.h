#pragma once
// `iris eval diffusion`: text-to-image on held-out Tinyworld captions, read back by the
// Tinyworld analyzer and scored against the scenes the captions describe (only the attributes
// a caption states count). Fixed seeds: the same model gives the same table.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/image.h"
#include "core/progress.h"
#include "pipelines/sd_model.h"
#include "world/analyzer.h"

namespace iris {

struct DiffusionEvalOptions {
  int n = 200;                  // prompts
  uint64_t base_seed = 20240;   // held-out scenes: world::split_seeds(base_seed, HeldOut)
  uint64_t seed = 0;            // image i uses seed + i
  std::string sampler = "euler";
  int steps = 20;
  double cfg_scale = 4.0;
  int resolution = 64;
  double style_fraction = 0.25;  // this share of prompts also names the style (then scored)
  std::function<void(const std::string&)> log;  // one line per prompt when set
  Progress progress;
};

struct DiffusionEvalResult {
  world::SceneScore score;
  std::vector<std::string> prompts;
  std::vector<Image> images;
  double seconds_per_image = 0;
  // Every described attribute together (objects, count, style, background, figure, PCK).
  world::Tally described() const;
};

// Throws ConfigError for n < 1 or a resolution the model cannot make.
DiffusionEvalResult eval_text_to_image(SdModel& model, const DiffusionEvalOptions& options);

// The analyzer's table plus the described-attribute total.
std::string format_eval_table(const DiffusionEvalResult& r);

// Images in a grid (`columns` per row, 2-px gaps of `gap` grey), all the size of the first.
Image contact_sheet(const std::vector<Image>& images, int columns, uint8_t gap = 40);

}  // namespace iris
